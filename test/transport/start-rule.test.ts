import assert from 'node:assert/strict';
import { test } from 'node:test';

import { startDue } from '../../src/transport/start-rule.ts';

const now = 1_000_000;
const open = { joined: 0, wanted: 3, lastJoinAt: 0, waitMs: 15_000, openedAt: now - 60_000, now };

test('nobody joined: never starts, however long it waited', () => {
  assert.equal(startDue({ ...open, now: now + 3600_000 }), false);
});

test('enough receivers: starts at once; fewer: waits from the last join', () => {
  assert.equal(startDue({ ...open, joined: 3, lastJoinAt: now }), true);
  assert.equal(startDue({ ...open, joined: 4, lastJoinAt: now }), true);
  assert.equal(startDue({ ...open, joined: 2, lastJoinAt: now - 14_999 }), false);
  assert.equal(startDue({ ...open, joined: 2, lastJoinAt: now - 15_000 }), true);
});

test('a gate that holds holds: neither the count nor the wait starts the sender', () => {
  const held = { ...open, openedAt: null };
  assert.equal(startDue({ ...held, joined: 3, lastJoinAt: now - 3600_000 }), false);
  assert.equal(startDue({ ...held, joined: 1, lastJoinAt: now - 3600_000 }), false);
});

test('once the gate opens, the wait counts from the opening when the joins came before it', () => {
  // Receivers that joined an hour ago do not make the sender skip the wait for the others.
  const base = { ...open, joined: 2, lastJoinAt: now - 3600_000 };
  assert.equal(startDue({ ...base, openedAt: now - 1000 }), false);
  assert.equal(startDue({ ...base, openedAt: now - 15_000 }), true);
  // A join after the opening restarts the wait, as without a gate.
  assert.equal(startDue({ ...base, openedAt: now - 20_000, lastJoinAt: now - 1000 }), false);
  // The count needs no wait.
  assert.equal(startDue({ ...base, joined: 3, openedAt: now }), true);
});
