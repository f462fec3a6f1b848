/**
 * The network boot's policy (src/server/boot-decision.ts) and the precedence of a one-off task
 * over the automatic sessions (participation.chooseWork): pure functions, given what the
 * server knows, checked on every way a lab left network-first can boot.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { decideBoot } from '../../src/server/boot-decision.ts';
import { chooseWork, type AutoSessionView, type Candidate } from '../../src/server/participation.ts';
import { parseRule } from '../../src/server/rules.ts';

const MAC = '52:54:00:12:34:56';
const ws: Candidate = {
  id: '525400123456',
  name: 'lab1-01',
  mac: MAC,
  addresses: ['198.18.1.21'],
  diskBytes: 0,
  memoryBytes: 0,
  cores: 0,
  cpu: '',
  vendor: '',
  model: '',
  serial: '',
};
const lab: AutoSessionView = {
  name: 'lab1',
  enabled: true,
  explicit: [],
  rules: [parseRule('mac = 52:54:00')],
};
const other: AutoSessionView = {
  name: 'office',
  enabled: true,
  explicit: [],
  rules: [parseRule('name = office-*')],
};

test('a task comes before every automatic session the workstation qualifies for, and says so', () => {
  const task = { session: 'task-525400123456', workstation: ws.id, image: 'win11.imgc' };
  const c = chooseWork([task], [lab], ws);
  assert.equal(c.session, 'task-525400123456');
  assert.ok(c.session !== null && c.task === true && c.role === 'client');
  assert.match(c.why, /one-off task queued for it: image win11\.imgc; it comes before lab1/);
  // Another workstation's task is not this one's: the automatic session decides.
  const elsewhere = chooseWork([{ ...task, workstation: '020000000001' }], [lab], ws);
  assert.equal(elsewhere.session, 'lab1');
  assert.ok(elsewhere.session !== null && elsewhere.task === undefined);
  // No session at all: the task still applies.
  assert.equal(chooseWork([task], [], ws).session, task.session);
});

test('a queued task always images, even a workstation its session imaged before', () => {
  const choice = chooseWork([{ session: 'task-x', workstation: ws.id, image: 'a.imgc' }], [lab], ws);
  const d = decideBoot({ mac: MAC, known: true, choice, imagedAt: 2000, definedAt: 1000 });
  assert.equal(d.action, 'image');
  assert.equal(d.session, 'task-x');
  assert.match(d.why, /^task task-x: a one-off task/);
});

test('an automatic session images a workstation it has not imaged since its definition last changed', () => {
  const choice = chooseWork([], [other, lab], ws);
  const never = decideBoot({ mac: MAC, known: true, choice, imagedAt: null, definedAt: 1000 });
  assert.deepEqual([never.action, never.session], ['image', 'lab1']);
  assert.match(never.why, /lab1 \(2nd\): matches mac = 52:54:00/);
  // Imaged before the session changed (another image, other rules): imaged again.
  const stale = decideBoot({ mac: MAC, known: true, choice, imagedAt: 999, definedAt: 1000 });
  assert.equal(stale.action, 'image');
});

test('a workstation the session imaged since its last change boots its disk: a network-first lab is not imaged on every boot', () => {
  const choice = chooseWork([], [lab], ws);
  for (const imagedAt of [1000, 5000]) {
    const d = decideBoot({ mac: MAC, known: true, choice, imagedAt, definedAt: 1000 });
    assert.deepEqual([d.action, d.session], ['local', null]);
    assert.match(
      d.why,
      /^already imaged by lab1 \(1970-01-01T00:00:0\d\.000Z\) and the session has not changed since$/,
    );
  }
});

test('nothing queued, or an unknown MAC matching no rule: the local disk, with the reason', () => {
  const known = decideBoot({
    mac: MAC,
    known: true,
    choice: chooseWork([], [other], ws),
    imagedAt: null,
    definedAt: null,
  });
  assert.equal(known.action, 'local');
  assert.match(
    known.why,
    /^nothing queued for it: lab1-01 qualifies for none of the enabled automatic sessions \(office \(1st\)\)$/,
  );
  const none = decideBoot({
    mac: MAC,
    known: true,
    choice: chooseWork([], [], ws),
    imagedAt: null,
    definedAt: null,
  });
  assert.equal(none.why, 'nothing queued for it: there are no automatic sessions');
  const stranger = { ...ws, name: MAC };
  const unknown = decideBoot({
    mac: MAC,
    known: false,
    choice: chooseWork([], [other], stranger),
    imagedAt: null,
    definedAt: null,
  });
  assert.equal(unknown.action, 'local');
  assert.match(unknown.why, /^unknown workstation 52:54:00:12:34:56 matching no rule: /);
});

test('an unknown MAC that a rule takes is imaged: it registers itself once img auto runs', () => {
  const stranger = { ...ws, name: MAC };
  const d = decideBoot({
    mac: MAC,
    known: false,
    choice: chooseWork([], [lab], stranger),
    imagedAt: null,
    definedAt: 1,
  });
  assert.deepEqual([d.action, d.session], ['image', 'lab1']);
  assert.match(d.why, /not registered yet: it registers when img auto runs$/);
});

test('the master of an automatic session boots the environment to send its disk until a run it sent succeeds', () => {
  const choice = chooseWork([], [{ ...lab, master: MAC }], ws);
  const first = decideBoot({ mac: MAC, known: true, choice, imagedAt: null, definedAt: 1 });
  assert.deepEqual([first.action, first.session], ['image', 'lab1']);
  assert.match(first.why, /^master of lab1/);
  // It sent before the session changed (another master, other rules): it sends again.
  const stale = decideBoot({ mac: MAC, known: true, choice, imagedAt: 5, definedAt: 6 });
  assert.deepEqual([stale.action, stale.session], ['image', 'lab1']);
});

test('a master whose run succeeded boots its disk like its clients: a network-first master is not sent into the environment forever', () => {
  const choice = chooseWork([], [{ ...lab, master: MAC }], ws);
  for (const f of [
    { imagedAt: 5, definedAt: 1 },
    { imagedAt: 5, definedAt: 5, joinedWaiting: 0 },
    { imagedAt: 5, definedAt: null },
  ]) {
    const d = decideBoot({ mac: MAC, known: true, choice, ...f });
    assert.deepEqual([d.action, d.session], ['local', null], JSON.stringify(f));
    assert.match(
      d.why,
      /^master of lab1, whose run it sent succeeded \(1970-01-01T00:00:00\.005Z\); the session has not changed since and no workstation waits for it$/,
    );
  }
});

test('a master whose run succeeded is sent again while workstations wait in its session for it', () => {
  const choice = chooseWork([], [{ ...lab, master: MAC }], ws);
  const d = decideBoot({ mac: MAC, known: true, choice, imagedAt: 5, definedAt: 1, joinedWaiting: 2 });
  assert.deepEqual([d.action, d.session], ['image', 'lab1']);
  assert.match(d.why, /^master of lab1 .*; 2 workstation\(s\) joined lab1 and wait for their master$/);
  // Clients waiting change nothing for a client that was imaged: it is not their master.
  const client = decideBoot({
    mac: MAC,
    known: true,
    choice: chooseWork([], [lab], ws),
    imagedAt: 5,
    definedAt: 1,
    joinedWaiting: 2,
  });
  assert.equal(client.action, 'local');
});

test('a disabled session images nobody', () => {
  const d = decideBoot({
    mac: MAC,
    known: true,
    choice: chooseWork([], [{ ...lab, enabled: false }], ws),
    imagedAt: null,
    definedAt: null,
  });
  assert.equal(d.action, 'local');
  assert.match(d.why, /no automatic session is enabled; lab1 \(1st\) would take it but is disabled/);
});
