/**
 * Automatic sessions and the workstation registry through the HTTP API: `startServer` on
 * 127.0.0.1 (port 0) with a small image made by `img make` of a folder, called with fetch as
 * the CLI and workstations call it. The multicast send is a stand-in that reports every joined
 * workstation as received (the real one is in test/cli/auto-sessions.test.ts), since what is
 * checked here is which session a workstation gets, who may join, what a finished run leaves,
 * and that every refusal changes nothing.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';

import type {
  AutoChoice,
  HistoryEntry,
  Imported,
  JoinView,
  Session,
  Workstation,
  WorkstationDetail,
} from '../../src/api/schemas.ts';
import { MIGRATIONS, openDatabase } from '../../src/server/db.ts';
import { startServer, type RunningServer } from '../../src/server/server.ts';
import type { SendSession } from '../../src/server/sessions.ts';
import type { SenderResult } from '../../src/transport/types.ts';
import { tempDir } from '../helpers/env.ts';
import {
  call,
  ok,
  refused,
  register as registerWorkstation,
  snapshot,
  type Refusal,
} from '../helpers/api-calls.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const IMG = join(ROOT, 'bin/img.js');
const ENV = { ...process.env, PATH: `${join(ROOT, 'node_modules/.bin')}:${process.env.PATH ?? ''}` };

/** Every joined workstation "receives" the image at once and then writes it (the test reports for it). */
const fakeSend: SendSession = async () => {
  await sleep(10);
  const names = [...receivers];
  return {
    ok: true,
    receivers: names.map((name) => ({ name, state: 'ok', bytes: 1000, totalBytes: 1000, rateMbit: 1 })),
  } as unknown as SenderResult;
};
const receivers: string[] = [];

interface Fixture {
  t: TestContext;
  dir: string;
  server: RunningServer;
}

let imageDir: string | undefined;

async function fixture(t: TestContext): Promise<Fixture> {
  const dir = await tempDir(t, 'imgcast-auto-');
  const images = join(dir, 'images');
  mkdirSync(images);
  const folder = join(dir, 'folder');
  mkdirSync(join(folder, 'etc'), { recursive: true });
  writeFileSync(join(folder, 'etc/hostname'), 'lab\n');
  execFileSync(IMG, ['make', folder, join(images, 'lab.imgc')], { env: ENV, stdio: 'pipe' });
  imageDir = images;
  const server = await startServer({
    dataDir: join(dir, 'data'),
    imagesDir: images,
    host: '127.0.0.1',
    port: 0,
    range: { firstGroup: '239.77.9.1', firstPort: 31100, slots: 4 },
    version: 'test',
    name: 'auto-test',
    logger: pino({ level: 'silent' }),
    send: fakeSend,
  });
  t.after(() => server.close());
  return { t, dir, server };
}

/** Registers a workstation as `img session` / `img auto` do; the stand-in sender then names it. */
async function register(f: Fixture, hostname: string, o: Parameters<typeof registerWorkstation>[2] = {}) {
  const r = await registerWorkstation(f, hostname, o);
  receivers.push(`${r.name}/${r.mac}`);
  return r;
}

const addAuto = (f: Fixture, body: Record<string, unknown>) =>
  ok<Session>(f, 'POST', '/api/auto-sessions', { body: { image: 'lab.imgc', ...body } });

const auto = (f: Fixture, token: string) => ok<AutoChoice>(f, 'GET', '/api/auto', { token });

async function waitFor(f: Fixture, name: string, check: (s: Session) => boolean): Promise<Session> {
  const end = Date.now() + 5000;
  for (;;) {
    const s = await ok<Session>(f, 'GET', `/api/sessions/${name}`);
    if (check(s)) return s;
    assert.ok(Date.now() < end, `session ${name} stayed ${s.state}: ${JSON.stringify(s)}`);
    await sleep(20);
  }
}

// ---------------------------------------------------------------- choosing

test('of two enabled sessions whose rules match, the first is answered; after `down` the other; a disabled one never', async (t) => {
  const f = await fixture(t);
  const pc = await register(f, 'lab1-07', { cores: 8 });
  // First in the list, listing it explicitly, but disabled.
  const off = await addAuto(f, { name: 'off', enabled: false });
  await ok(f, 'POST', '/api/sessions/off/include', { body: { workstations: ['lab1-07'] } });
  assert.deepEqual([off.auto?.position, off.auto?.enabled], [1, false]);
  const a = await addAuto(f, { name: 'a', rules: ['name = "lab1-*"'] });
  const b = await addAuto(f, { name: 'b', rules: ['cores >= 4 and vendor = "Dell*"'] });
  assert.deepEqual(
    [a.clientCount, a.waitMs, a.auto?.position, b.auto?.position],
    [5, 15 * 60_000, 2, 3],
    'the defaults: 5 clients or 15 minutes; placed last',
  );

  let c = await auto(f, pc.token);
  assert.deepEqual([c.session, 'role' in c && c.role], ['a', 'client']);
  assert.match(c.why, /^a \(2nd\): matches name = "lab1-\*"/);
  assert.match(c.why, /also matches b \(3rd\), which comes later/);
  assert.match(c.why, /off \(1st\) would take it but is disabled/);
  // The administrator sees the same answer.
  const shown = await ok<WorkstationDetail>(f, 'GET', '/api/workstations/lab1-07');
  assert.deepEqual(shown.auto, c);

  const moved = await ok<Session>(f, 'POST', '/api/sessions/a/down');
  assert.equal(moved.auto?.position, 3);
  assert.deepEqual(
    (await ok<Session[]>(f, 'GET', '/api/auto-sessions')).map((s) => s.name),
    ['off', 'b', 'a'],
  );
  c = await auto(f, pc.token);
  assert.equal(c.session, 'b');
  assert.match(c.why, /^b \(2nd\): matches cores >= 4 and vendor = "Dell\*"; also matches a \(3rd\)/);
  // The last stays last; up moves it back.
  await ok(f, 'POST', '/api/sessions/a/down');
  await ok(f, 'POST', '/api/sessions/a/up');
  assert.equal((await auto(f, pc.token)).session, 'a');

  // Disabled sessions are never joined, not even one listing it first.
  await ok(f, 'POST', '/api/sessions/a/disable');
  await ok(f, 'POST', '/api/sessions/b/disable');
  c = await auto(f, pc.token);
  assert.equal(c.session, null);
  assert.match(
    c.why,
    /^no automatic session is enabled; off \(1st\), a \(2nd\) and b \(3rd\) would take it but are disabled$/,
  );
  const e = await refused(f, 'E_NOT_QUALIFIED', 409, 'POST', '/api/sessions/off/join', { token: pc.token });
  assert.match(e.message, /session off is disabled/);
  await ok(f, 'POST', '/api/sessions/off/enable');
  c = await auto(f, pc.token);
  assert.equal(c.session, 'off');
  assert.match(c.why, /listed explicitly as 02:00:00:00:01:[0-9a-f]{2}$/);
});

test('an automatic session keeps its naming template and post-imaging scripts, and names a workstation the administrator has not named when it joins', async (t) => {
  const f = await fixture(t);
  const s = await addAuto(f, {
    name: 'named',
    rules: ['mac = 02:00:00'],
    names: 'lab1-{nn}',
    scripts: [{ name: 'hello.sh', content: '#!/bin/sh\necho hello\n' }],
  });
  assert.deepEqual([s.names, s.scripts], ['lab1-{nn}', ['hello.sh']]);
  const pc = await register(f, '(none)');
  const c = await auto(f, pc.token);
  assert.equal(c.session, 'named');
  await ok(f, 'POST', '/api/sessions/named/join', { token: pc.token });
  const ws = await ok<WorkstationDetail>(f, 'GET', `/api/workstations/${pc.mac}`);
  assert.deepEqual([ws.name, ws.named], ['lab1-01', true]);
});

test('a workstation nothing matches is told so, with a reason, and may not join an automatic session by name', async (t) => {
  const f = await fixture(t);
  const pc = await register(f, 'office-3', { cores: 2, address: '10.9.0.3', mac: '02:00:00:00:03:03' });
  let c = await auto(f, pc.token);
  assert.deepEqual(c, { session: null, why: 'there are no automatic sessions' });
  await addAuto(f, { name: 'lab1', rules: ['name = "lab1-*"', 'ip = 198.18.0.0/24'] });
  await addAuto(f, { name: 'big', rules: ['cores >= 8'] });
  const empty = await addAuto(f, { name: 'empty' });
  assert.deepEqual([empty.auto?.members, empty.auto?.rules], [[], []]);
  c = await auto(f, pc.token);
  assert.equal(c.session, null);
  assert.equal(
    c.why,
    'office-3 qualifies for none of the enabled automatic sessions (lab1 (1st), big (2nd) and empty (3rd))',
  );
  let e = await refused(f, 'E_NOT_QUALIFIED', 409, 'POST', '/api/sessions/lab1/join', { token: pc.token });
  assert.equal(
    e.message,
    'office-3 (02:00:00:00:03:03) does not take part in session lab1: it is not listed there and matches none of its 2 rules',
  );
  e = await refused(f, 'E_NOT_QUALIFIED', 409, 'POST', '/api/sessions/empty/join', { token: pc.token });
  assert.match(e.message, /takes no workstation yet: it lists none and has no rule/);
  // A session made with imgcast mcast takes anyone who joins.
  await ok(f, 'POST', '/api/sessions', { body: { name: 'plain', image: 'lab.imgc', clientCount: 3 } });
  assert.equal((await ok<JoinView>(f, 'POST', '/api/sessions/plain/join', { token: pc.token })).joined, 1);
  // Once it qualifies, it joins.
  await ok(f, 'POST', '/api/sessions/big/rules', { body: { rule: 'ip = 10.9.0.0/16' } });
  assert.equal((await auto(f, pc.token)).session, 'big');
  assert.equal((await ok<JoinView>(f, 'POST', '/api/sessions/big/join', { token: pc.token })).joined, 1);
});

// ---------------------------------------------------------------- runs

test('a finished run of an automatic session deletes it with delete-when-done (history kept), otherwise reopens it for the next workstations', async (t) => {
  const f = await fixture(t);
  const pc = await register(f, 'lab1-01');
  const late = await register(f, 'lab1-02');
  await addAuto(f, { name: 'once', clientCount: 1, deleteWhenDone: true, include: ['lab1-01'] });
  await addAuto(f, { name: 'again', clientCount: 1, include: ['lab1-02'] });

  const j = await ok<JoinView>(f, 'POST', '/api/sessions/once/join', { token: pc.token });
  await waitFor(f, 'once', (s) => s.clients[0]?.state === 'writing');
  await ok(f, 'POST', '/api/sessions/once/report', { token: pc.token, body: { run: j.run, state: 'ok' } });
  const gone = await call<Refusal>(f, 'GET', '/api/sessions/once');
  assert.equal(gone.body.error, 'E_SESSION_UNKNOWN', 'deleted once its run finished');
  assert.deepEqual(
    (await ok<Session[]>(f, 'GET', '/api/auto-sessions')).map((s) => [s.name, s.auto?.position]),
    [['again', 1]],
  );
  const [h] = await ok<HistoryEntry[]>(f, 'GET', '/api/history');
  assert.deepEqual([h?.session, h?.run, h?.state, h?.clients[0]?.name], ['once', 1, 'done', 'lab1-01']);
  // Its workstation still reads how the run ended.
  const end = await ok<JoinView>(f, 'GET', '/api/sessions/once/wait?since=0&timeoutMs=0', {
    token: pc.token,
  });
  assert.deepEqual([end.state, end.run, end.receiver], ['done', 1, null]);
  assert.equal((await auto(f, pc.token)).session, null);

  const j2 = await ok<JoinView>(f, 'POST', '/api/sessions/again/join', { token: late.token });
  await waitFor(f, 'again', (s) => s.clients[0]?.state === 'writing');
  await ok(f, 'POST', '/api/sessions/again/report', {
    token: late.token,
    body: { run: j2.run, state: 'ok' },
  });
  const reopened = await ok<Session>(f, 'GET', '/api/sessions/again');
  assert.deepEqual([reopened.state, reopened.run, reopened.joined], ['waiting', 2, 0]);
  const past = await ok<JoinView>(f, 'GET', '/api/sessions/again/wait?since=0&timeoutMs=0', {
    token: late.token,
  });
  assert.deepEqual([past.state, past.run], ['done', 1], 'the workstation of run 1 reads its end');
  assert.deepEqual(
    (await ok<HistoryEntry[]>(f, 'GET', '/api/history')).map((x) => [x.session, x.run, x.state]),
    [
      ['again', 1, 'done'],
      ['once', 1, 'done'],
    ],
  );
  // A later workstation is imaged in the next run; the same one may come again too.
  const j3 = await ok<JoinView>(f, 'POST', '/api/sessions/again/join', { token: late.token });
  assert.equal(j3.run, 2);
  await waitFor(f, 'again', (s) => s.run === 2 && s.clients[0]?.state === 'writing');
  // A stopped run stays stopped: the administrator acted.
  await ok(f, 'POST', '/api/sessions/again/stop', { body: {} });
  assert.equal((await ok<Session>(f, 'GET', '/api/sessions/again')).state, 'stopped');
});

// ---------------------------------------------------------------- refusals

test('a master conflict is refused both ways, naming the session it conflicts with, and changes nothing', async (t) => {
  const f = await fixture(t);
  await register(f, 'ref-a', { mac: '02:00:00:00:04:01' });
  await register(f, 'ref-b', { mac: '02:00:00:00:04:02' });
  await register(f, 'pc-1', { mac: '02:00:00:00:04:03' });
  await ok(f, 'POST', '/api/auto-sessions', { body: { name: 'ma', master: 'ref-a' } });
  await addAuto(f, { name: 'listb', include: ['ref-b', 'pc-1'] });

  // Master of another session, or listed in another: this one may not have it as master.
  let e = await refused(f, 'E_MASTER_CONFLICT', 409, 'POST', '/api/auto-sessions', {
    body: { name: 'mb', master: 'REF-A' },
  });
  assert.equal(
    e.message,
    'ref-a is already the master of ma; a workstation can be the master of one session only',
  );
  assert.equal(e.conflictsWith, 'ma');
  e = await refused(f, 'E_MASTER_CONFLICT', 409, 'POST', '/api/auto-sessions', {
    body: { name: 'mb', master: '02:00:00:00:04:02' },
  });
  assert.equal(e.message, 'ref-b is listed as a participant of listb, so it cannot be the master of mb');
  assert.equal(e.conflictsWith, 'listb');
  // The other way: listing a master elsewhere.
  e = await refused(f, 'E_MASTER_CONFLICT', 409, 'POST', '/api/sessions/listb/include', {
    body: { workstations: ['ref-a'] },
  });
  assert.equal(e.message, 'ref-a is the master of ma, so it cannot be listed as a participant of listb');
  assert.equal(e.conflictsWith, 'ma');
  e = await refused(f, 'E_MASTER_CONFLICT', 409, 'POST', '/api/auto-sessions', {
    body: { name: 'mc', image: 'lab.imgc', include: ['pc-1', 'ref-a'] },
  });
  assert.equal(e.conflictsWith, 'ma');
  // Its own list, and an edit of the master.
  await refused(f, 'E_MASTER_CONFLICT', 409, 'POST', '/api/sessions/ma/include', {
    body: { workstations: ['ref-a'] },
  });
  e = await refused(f, 'E_MASTER_CONFLICT', 409, 'PATCH', '/api/sessions/ma', { body: { master: 'pc-1' } });
  assert.equal(e.conflictsWith, 'listb');
  // A disabled session counts: enabling it must not bring the conflict back.
  await ok(f, 'POST', '/api/sessions/listb/disable');
  await refused(f, 'E_MASTER_CONFLICT', 409, 'POST', '/api/auto-sessions', {
    body: { name: 'mb', master: 'ref-b' },
  });
  // Once ref-b is off the list, it may be a master.
  await ok(f, 'POST', '/api/sessions/listb/exclude', { body: { workstations: ['ref-b'] } });
  await ok(f, 'POST', '/api/auto-sessions', { body: { name: 'mb', master: 'ref-b' } });
  // A listed workstation in use cannot be forgotten.
  e = await refused(f, 'E_WORKSTATION_IN_USE', 409, 'DELETE', '/api/workstations/pc-1');
  assert.match(e.message, /listed in listb/);
});

test('malformed rules are refused with E_RULE_INVALID and their position; bad numbers, unknown workstations and bad edits with their codes; none changes anything', async (t) => {
  const f = await fixture(t);
  await register(f, 'pc-1');
  await addAuto(f, { name: 'lab', rules: ['name = "pc-*"'] });
  let e = await refused(f, 'E_RULE_INVALID', 400, 'POST', '/api/sessions/lab/rules', {
    body: { rule: 'name = "lab1-*" and (disk >= 256 GB' },
  });
  assert.deepEqual([e.column, e.position], [34, 33]);
  assert.match(e.message, /write the unit next to the number: 256GB/);
  e = await refused(f, 'E_RULE_INVALID', 400, 'POST', '/api/sessions/lab/rules', {
    body: { rule: 'colour = red' },
  });
  assert.equal(e.column, 1);
  e = await refused(f, 'E_RULE_INVALID', 400, 'POST', '/api/sessions/lab/rules', {
    body: { rule: 'ip = 10.0.0.1/8' },
  });
  assert.match(e.message, /bits set past its prefix length at column 6; the subnet is 10\.0\.0\.0\/8/);
  e = await refused(f, 'E_RULE_INVALID', 400, 'POST', '/api/auto-sessions', {
    body: { name: 'new', image: 'lab.imgc', rules: ['name = x', 'memory >= 8 G'] },
  });
  assert.match(e.message, /^rule 2: /);
  assert.deepEqual([e.index, e.column], [2, 13]);

  for (const body of [
    { name: 'c0', image: 'lab.imgc', clientCount: 0 },
    { name: 'tneg', image: 'lab.imgc', waitMinutes: -1 },
    { name: 'both', image: 'lab.imgc', master: 'pc-1' },
    { name: 'neither' },
    { name: 'waits', image: 'lab.imgc', waitMinutes: 1, waitSeconds: 1 },
    { name: 'bad name', image: 'lab.imgc' },
  ]) {
    await refused(f, 'E_BAD_REQUEST', 400, 'POST', '/api/auto-sessions', { body });
  }
  await refused(f, 'E_BAD_REQUEST', 400, 'PATCH', '/api/sessions/lab', { body: { clientCount: 0 } });
  await refused(f, 'E_BAD_REQUEST', 400, 'PATCH', '/api/sessions/lab', { body: { waitMinutes: -5 } });
  await refused(f, 'E_BAD_REQUEST', 400, 'PATCH', '/api/sessions/lab', { body: {} });
  e = await refused(f, 'E_WORKSTATION_UNKNOWN', 404, 'POST', '/api/sessions/lab/include', {
    body: { workstations: ['pc-1', 'pc-9', '02:00:00:00:09:09'] },
  });
  assert.deepEqual(e.workstations, ['pc-9', '02:00:00:00:09:09']);
  await refused(f, 'E_WORKSTATION_UNKNOWN', 404, 'POST', '/api/auto-sessions', {
    body: { name: 'm', master: 'nobody' },
  });
  await refused(f, 'E_BAD_REQUEST', 400, 'POST', '/api/sessions/lab/exclude', {
    body: { workstations: ['pc-1'] },
  });
  e = await refused(f, 'E_BAD_REQUEST', 400, 'DELETE', '/api/sessions/lab/rules/2');
  assert.match(e.message, /lab has 1 rule\(s\), numbered 1 to 1; there is no rule 2/);
  await refused(f, 'E_SESSION_EXISTS', 409, 'POST', '/api/auto-sessions', {
    body: { name: 'lab', image: 'lab.imgc' },
  });
  // Definitions belong to automatic sessions only.
  await ok(f, 'POST', '/api/sessions', { body: { name: 'plain', image: 'lab.imgc' } });
  await refused(f, 'E_BAD_REQUEST', 400, 'POST', '/api/sessions/plain/rules', {
    body: { rule: 'cores > 1' },
  });
  await refused(f, 'E_BAD_REQUEST', 400, 'POST', '/api/sessions/plain/up');
  await refused(f, 'E_SESSION_UNKNOWN', 404, 'POST', '/api/sessions/nope/enable');
  // Workstations may not define sessions.
  const w = await register(f, 'pc-2');
  await refused(f, 'E_FORBIDDEN', 403, 'POST', '/api/sessions/lab/rules', {
    token: w.token,
    body: { rule: 'cores > 1' },
  });
  await refused(f, 'E_FORBIDDEN', 403, 'GET', '/api/auto');
  // The rules that were accepted are there, as written and as read.
  const s = await ok<Session>(f, 'POST', '/api/sessions/lab/rules', {
    body: { rule: 'DISK>=256gb  and NOT vendor=hp*' },
  });
  assert.deepEqual(s.auto?.rules.at(-1), {
    text: 'DISK>=256gb  and NOT vendor=hp*',
    description: 'disk >= 256GB and not vendor = "hp*"',
    valid: true,
  });
  assert.equal((await ok<Session>(f, 'DELETE', '/api/sessions/lab/rules/1')).auto?.rules.length, 1);
});

// ---------------------------------------------------------------- workstations

test('a CSV import with a bad row imports nothing and names each bad line; a good one creates and renames', async (t) => {
  const f = await fixture(t);
  await register(f, 'already', { mac: '02:00:00:00:02:01' });
  const bad = [
    'name,mac,ip',
    'lab1-01,52:54:00:00:00:01,198.18.0.1',
    'lab1-02,52-54-00-00-00-02',
    'lab1-03,52:54:00:00:00:zz,198.18.0.3',
    'lab1-04,52:54:00:00:00:01',
    '',
    '# a comment',
    'lab1-05;5254.0000.0005;198.18.0.500',
    'already,52:54:00:00:00:06',
    'only-one-field',
  ].join('\n');
  const e = await refused(f, 'E_BAD_REQUEST', 400, 'POST', '/api/workstations/import', {
    body: { csv: bad },
  });
  assert.deepEqual(
    (e.rows as Array<{ line: number }>).map((r) => r.line),
    [4, 5, 8, 9, 10],
  );
  assert.match(
    e.message,
    /^nothing imported: 5 bad row\(s\)\nline 4: "52:54:00:00:00:zz" is not a MAC address\nline 5: 52:54:00:00:00:01 is on line 2 already\nline 8: "198.18.0.500" is not an IPv4 or IPv6 address\nline 9: already is already the name of 02:00:00:00:02:01\nline 10: expected name,mac\[,ip\], found 1 field\(s\)$/,
  );

  const good = [
    'Name;MAC',
    'lab1-01;52:54:00:00:00:01;198.18.0.1',
    '"lab1-02","5254.0000.0002"',
    'renamed,02-00-00-00-02-01',
  ].join('\r\n');
  const r = await ok<Imported>(f, 'POST', '/api/workstations/import', { body: { csv: good } });
  assert.deepEqual([r.added, r.updated, r.unchanged], [2, 1, 0]);
  assert.deepEqual(
    r.workstations.map((w) => [w.name, w.mac, w.ip, w.named, w.registeredAt === null]),
    [
      ['lab1-01', '52:54:00:00:00:01', '198.18.0.1', true, true],
      ['lab1-02', '52:54:00:00:00:02', null, true, true],
      ['renamed', '02:00:00:00:02:01', null, true, false],
    ],
  );
  // The same file again changes nothing; a swap of two names within one file is allowed.
  const again = await ok<Imported>(f, 'POST', '/api/workstations/import', { body: { csv: good } });
  assert.deepEqual([again.added, again.updated, again.unchanged], [0, 0, 3]);
  const swap = await ok<Imported>(f, 'POST', '/api/workstations/import', {
    body: { csv: 'lab1-02,52:54:00:00:00:01\nlab1-01,52:54:00:00:00:02\n' },
  });
  assert.deepEqual([swap.updated, swap.workstations.map((w) => w.name)], [2, ['lab1-02', 'lab1-01']]);
  await refused(f, 'E_BAD_REQUEST', 400, 'POST', '/api/workstations/import', {
    body: { csv: 'name,mac\n\n' },
  });
});

test('a workstation created by the administrator keeps its name when it registers, gets its inventory and token then, and rules see it', async (t) => {
  const f = await fixture(t);
  const made = await ok<Workstation>(f, 'POST', '/api/workstations', {
    body: { name: 'lab1-07', mac: '52:54:00:AB:CD:07', ip: '198.18.0.7' },
  });
  assert.deepEqual(
    [made.id, made.mac, made.named, made.hostname, made.inventory, made.registeredAt],
    ['525400abcd07', '52:54:00:ab:cd:07', true, null, null, null],
  );
  await addAuto(f, { name: 'lab1', rules: ['ip = 198.18.0.0/24 and not disk < 100GB'] });
  await addAuto(f, { name: 'listed', include: ['525400abcd07'] });
  // Before it registers, rules see what the administrator gave: the hardware is unknown (0).
  let shown = await ok<WorkstationDetail>(f, 'GET', '/api/workstations/52-54-00-ab-cd-07');
  assert.equal(shown.auto.session, 'listed');
  assert.match(shown.auto.why, /^listed \(2nd\): listed explicitly as 52:54:00:ab:cd:07$/);

  const reg = await register(f, 'localhost-live', { mac: '52:54:00:ab:cd:07', address: '198.18.0.77' });
  assert.deepEqual([reg.id, reg.name], ['525400abcd07', 'lab1-07']);
  shown = await ok<WorkstationDetail>(f, 'GET', '/api/workstations/lab1-07');
  assert.deepEqual(
    [shown.name, shown.hostname, shown.ip, shown.addresses, shown.inventory?.cpu.cores],
    ['lab1-07', 'localhost-live', '198.18.0.7', ['198.18.0.77'], 4],
  );
  assert.equal(shown.auto.session, 'lab1', 'its disk is known now, and the first session takes it');
  assert.equal((await auto(f, reg.token)).session, 'lab1');
  // Registering again keeps the name, and the first token stops working.
  const again = await register(f, 'other-name', { mac: '52:54:00:ab:cd:07' });
  assert.equal(again.name, 'lab1-07');
  await refused(f, 'E_UNAUTHORIZED', 401, 'GET', '/api/auto', { token: reg.token });
  // A machine nobody named takes its host name; renamed, it keeps the new one.
  const plain = await register(f, 'ubuntu');
  assert.equal(plain.name, 'ubuntu');
  await ok(f, 'PATCH', '/api/workstations/ubuntu', { body: { name: 'lab1-08' } });
  assert.equal((await register(f, 'ubuntu', { mac: plain.mac })).name, 'lab1-08');

  // Names are unique, MACs too; a name that reads as a MAC is refused.
  await refused(f, 'E_WORKSTATION_EXISTS', 409, 'POST', '/api/workstations', {
    body: { name: 'LAB1-07', mac: '52:54:00:00:00:99' },
  });
  await refused(f, 'E_WORKSTATION_EXISTS', 409, 'POST', '/api/workstations', {
    body: { name: 'new', mac: '525400ABCD07' },
  });
  await refused(f, 'E_BAD_REQUEST', 400, 'POST', '/api/workstations', {
    body: { name: 'new', mac: '52:54:00' },
  });
  await refused(f, 'E_BAD_REQUEST', 400, 'POST', '/api/workstations', {
    body: { name: 'aabbccddeeff', mac: '52:54:00:00:00:98' },
  });
  await refused(f, 'E_BAD_REQUEST', 400, 'PATCH', '/api/workstations/lab1-07', { body: { ip: '1.2.3' } });
  await refused(f, 'E_WORKSTATION_UNKNOWN', 404, 'GET', '/api/workstations/nobody');
  // Listed in a session: not removed; off the list, removed (its token stops working).
  await refused(f, 'E_WORKSTATION_IN_USE', 409, 'DELETE', '/api/workstations/lab1-07');
  await ok(f, 'POST', '/api/sessions/listed/exclude', { body: { workstations: ['lab1-07'] } });
  await ok(f, 'DELETE', '/api/workstations/lab1-07');
  await refused(f, 'E_UNAUTHORIZED', 401, 'GET', '/api/auto', { token: again.token });
});

test('definitions and pre-created workstations survive a restart; a database of schema 2 is brought to 3 with its workstations', async (t) => {
  const f = await fixture(t);
  await ok(f, 'POST', '/api/workstations', { body: { name: 'lab1-01', mac: '52:54:00:00:00:01' } });
  await addAuto(f, { name: 'a', rules: ['name = lab1-*'], include: ['lab1-01'], deleteWhenDone: true });
  await addAuto(f, { name: 'b', enabled: false });
  await ok(f, 'POST', '/api/sessions/b/up');
  const before = await snapshot(f);
  await f.server.close();
  f.server = await startServer({
    dataDir: join(f.dir, 'data'),
    imagesDir: imageDir!,
    host: '127.0.0.1',
    port: 0,
    range: { firstGroup: '239.77.9.1', firstPort: 31100, slots: 4 },
    version: 'test',
    logger: pino({ level: 'silent' }),
    send: fakeSend,
  });
  t.after(() => f.server.close());
  const after = await snapshot(f);
  const strip = (x: unknown) => JSON.parse(JSON.stringify(x).replace(/"startsInMs":\d+/g, '"startsInMs":0'));
  assert.deepEqual(strip(after), strip(before));

  // Schema 2, as an older server left it, with a registered workstation.
  const file = join(f.dir, 'old.db');
  const raw = new DatabaseSync(file);
  raw.exec('CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)');
  for (const [i, m] of MIGRATIONS.slice(0, 2).entries()) {
    for (const stmt of m) raw.exec(stmt);
    raw.prepare('INSERT INTO schema_migrations VALUES (?, 0)').run(i + 1);
  }
  raw
    .prepare(
      `INSERT INTO workstations VALUES ('525400000001', 'pc1', '52:54:00:00:00:01', 'pc1', '[]', '10.0.0.1', '{}', 'h', 100, 200)`,
    )
    .run();
  raw
    .prepare(
      `INSERT INTO sessions (name, image, fileset, client_count, wait_ms, state, run, created_at) VALUES ('s', 'x.imgc', 1, 1, 0, 'done', 1, 5)`,
    )
    .run();
  raw.close();
  const db = await openDatabase(file);
  t.after(() => db.destroy());
  const w = await db.selectFrom('workstations').selectAll().executeTakeFirstOrThrow();
  assert.deepEqual(
    [
      w.name,
      w.named,
      w.ip,
      w.token_hash,
      Number(w.created_at),
      Number(w.registered_at),
      Number(w.last_seen_at),
    ],
    ['pc1', 0, null, 'h', 100, 100, 200],
  );
  const s = await db.selectFrom('sessions').selectAll().executeTakeFirstOrThrow();
  assert.deepEqual(
    [s.auto, s.enabled, s.position, s.master, s.members, s.rules],
    [0, 1, null, null, '[]', '[]'],
  );
});
