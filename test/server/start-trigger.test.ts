import assert from 'node:assert/strict';
import { test } from 'node:test';

import { startTrigger } from '../../src/server/start-trigger.ts';

const base = { clientCount: 3, waitMs: 60_000, joined: 0, lastJoinAt: null, now: 1_000_000 };

test('nobody joined: never starts, no countdown, all still needed', () => {
  assert.deepEqual(startTrigger({ ...base, now: base.now + 10 * 3600_000 }), {
    start: false,
    why: null,
    needed: 3,
    startsInMs: null,
  });
});

test('count reached: starts at once', () => {
  assert.deepEqual(startTrigger({ ...base, joined: 3, lastJoinAt: base.now }), {
    start: true,
    why: 'count',
    needed: 0,
    startsInMs: 0,
  });
  assert.equal(startTrigger({ ...base, joined: 5, lastJoinAt: base.now }).why, 'count');
});

test('the wait runs from the last join, not the first', () => {
  const lastJoinAt = base.now - 50_000;
  const t = startTrigger({ ...base, joined: 2, lastJoinAt });
  assert.equal(t.start, false);
  assert.equal(t.needed, 1);
  assert.equal(t.startsInMs, 10_000);
  const later = startTrigger({ ...base, joined: 2, lastJoinAt, now: lastJoinAt + 60_000 });
  assert.deepEqual(later, { start: true, why: 'time', needed: 1, startsInMs: 0 });
});

test('a wait of 0 starts with the first client', () => {
  assert.equal(startTrigger({ ...base, waitMs: 0, joined: 1, lastJoinAt: base.now }).why, 'time');
});

test('count only: the wait never fires however long the lab waits', () => {
  const t = startTrigger({ ...base, by: 'count', joined: 2, lastJoinAt: base.now - 10 * 3600_000 });
  assert.deepEqual(t, { start: false, why: null, needed: 1, startsInMs: null });
  assert.equal(startTrigger({ ...base, by: 'count', joined: 3, lastJoinAt: base.now }).why, 'count');
});

test('time only: no count is needed, the wait runs from the last join', () => {
  const many = startTrigger({ ...base, by: 'time', joined: 50, lastJoinAt: base.now - 1000 });
  assert.deepEqual(many, { start: false, why: null, needed: 0, startsInMs: 59_000 });
  assert.equal(startTrigger({ ...base, by: 'time', joined: 1, lastJoinAt: base.now - 60_000 }).why, 'time');
});

test('command only: neither trigger ever starts it', () => {
  for (const joined of [0, 3, 500]) {
    const t = startTrigger({ ...base, by: 'command', joined, lastJoinAt: base.now - 10 * 3600_000 });
    assert.deepEqual(t, { start: false, why: null, needed: 0, startsInMs: null });
  }
});
