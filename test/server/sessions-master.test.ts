/**
 * Sessions whose master is a workstation (img session NAME master), through the HTTP API as the
 * workstations call it: the server gathers the clients, fires the trigger or waits for the start
 * command, hands the master its group, port and key, tells the clients where the master listens
 * once it says so, and takes the run's end from the master's reports and the clients' results.
 * The master's sender is played by the test (its reports); the real one is in the lab tests.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';

import type { AutoChoice, JoinView, MasterView, Session } from '../../src/api/schemas.ts';
import { startServer } from '../../src/server/server.ts';
import { call, ok, refused, register, type Fixture } from '../helpers/api-calls.ts';
import { tempDir } from '../helpers/env.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const IMG = join(ROOT, 'bin/img.js');
const ENV = { ...process.env, PATH: `${join(ROOT, 'node_modules/.bin')}:${process.env.PATH ?? ''}` };

async function fixture(t: TestContext, o: { masterLostMs?: number } = {}): Promise<Fixture> {
  const dir = await tempDir(t, 'imgcast-master-');
  const images = join(dir, 'images');
  mkdirSync(join(dir, 'folder'), { recursive: true });
  mkdirSync(images);
  writeFileSync(join(dir, 'folder/hello'), 'hello\n');
  execFileSync(IMG, ['make', join(dir, 'folder'), join(images, 'lab.imgc')], { env: ENV, stdio: 'pipe' });
  const server = await startServer({
    dataDir: join(dir, 'data'),
    imagesDir: images,
    host: '127.0.0.1',
    port: 0,
    range: { firstGroup: '239.77.10.1', firstPort: 31200, slots: 4 },
    version: 'test',
    name: 'master-test',
    logger: pino({ level: 'silent' }),
    // Sessions with an image are not what is tested here: their send never ends by itself.
    send: (plan) =>
      new Promise((_r, reject) =>
        plan.signal.addEventListener('abort', () => reject(plan.signal.reason as Error)),
      ),
    ...(o.masterLostMs !== undefined ? { masterLostMs: o.masterLostMs } : {}),
  });
  t.after(() => server.close());
  return { server };
}

const join_ = (f: Fixture, name: string, token: string, open = true) =>
  ok<JoinView>(f, 'POST', `/api/sessions/${name}/join${open ? '?open=true' : ''}`, { token });
const claim = (f: Fixture, name: string, token: string, body: Record<string, unknown> = {}) =>
  ok<MasterView>(f, 'POST', `/api/sessions/${name}/master`, { token, body });
const masterNow = (f: Fixture, name: string, token: string) =>
  ok<MasterView>(f, 'GET', `/api/sessions/${name}/master/wait?since=0&timeoutMs=0`, { token });
const view = (f: Fixture, name: string, token: string) =>
  ok<JoinView>(f, 'GET', `/api/sessions/${name}/wait?since=0&timeoutMs=0`, { token });
const masterReport = (f: Fixture, name: string, token: string, body: Record<string, unknown>) =>
  ok(f, 'POST', `/api/sessions/${name}/master/report`, { token, body });

async function until<T>(what: string, get: () => Promise<T>, check: (v: T) => boolean): Promise<T> {
  const end = Date.now() + 5000;
  for (;;) {
    const v = await get();
    if (check(v)) return v;
    if (Date.now() > end) assert.fail(`${what}: still ${JSON.stringify(v)}`);
    await sleep(50);
  }
}

test('clients that come first open the session and wait for its master; clients=2 starts it; the clients receive from the master once it listens; their results end it', async (t) => {
  const f = await fixture(t);
  const ref = await register(f, 'ref-pc', { address: '198.18.0.5' });
  const a = await register(f, 'lab1-01');
  const b = await register(f, 'lab1-02');

  const first = await join_(f, 'lab', a.token);
  assert.equal(first.state, 'waiting');
  assert.match(first.message ?? '', /no master yet.*img session lab master/);
  const opened = await ok<Session>(f, 'GET', '/api/sessions/lab');
  assert.deepEqual([opened.origin, opened.master, opened.image], ['workstation', null, '']);

  const m = await claim(f, 'lab', ref.token, { clients: 2, level: 'speed' });
  assert.deepEqual(
    [m.state, m.joined, m.needed, m.startBy, m.level, m.send],
    ['waiting', 1, 1, 'count', 'speed', null],
  );
  const s = await ok<Session>(f, 'GET', '/api/sessions/lab');
  assert.equal(s.master?.name, 'ref-pc');
  assert.equal(s.master?.present, true);

  await join_(f, 'lab', b.token);
  const sending = await until(
    'the master is told to send',
    () => masterNow(f, 'lab', ref.token),
    (v) => v.send !== null,
  );
  assert.equal(sending.state, 'sending');
  assert.equal(sending.send!.clients, 2);
  assert.match(sending.send!.group, /^239\.77\.10\./);
  // Not yet listening: the clients wait rather than connect to nobody.
  const early = await view(f, 'lab', a.token);
  assert.deepEqual([early.state, early.receiver], ['sending', null]);

  await masterReport(f, 'lab', ref.token, { run: sending.run, phase: 'listening' });
  const ready = await view(f, 'lab', a.token);
  // Where the master called the server from (its address on the clients' network).
  assert.equal(ready.receiver?.from, `127.0.0.1:${sending.send!.port}`);
  assert.equal(ready.receiver?.key, sending.send!.key);
  assert.equal(ready.receiver?.image, 'the disk of ref-pc');

  const names = [`lab1-01/${a.mac}`, `lab1-02/${b.mac}`];
  await masterReport(f, 'lab', ref.token, {
    run: sending.run,
    phase: 'sending',
    bytesSent: 500,
    receivers: names.map((name) => ({ name, state: 'receiving', bytes: 400, totalBytes: 1000 })),
  });
  const mid = await ok<Session>(f, 'GET', '/api/sessions/lab');
  assert.deepEqual(
    mid.clients.map((c) => [c.name, c.state, c.bytes]),
    [
      ['lab1-01', 'receiving', 400],
      ['lab1-02', 'receiving', 400],
    ],
  );
  await masterReport(f, 'lab', ref.token, {
    run: sending.run,
    phase: 'done',
    bytesSent: 1000,
    receivers: names.map((name) => ({ name, state: 'ok', bytes: 1000, totalBytes: 1000 })),
  });
  await ok(f, 'POST', '/api/sessions/lab/report', {
    token: a.token,
    body: { run: sending.run, state: 'ok' },
  });
  await ok(f, 'POST', '/api/sessions/lab/report', {
    token: b.token,
    body: { run: sending.run, state: 'failed', code: 'E_VERIFY', message: 'partition 2 differs' },
  });
  const end = await until(
    'the run ends',
    () => masterNow(f, 'lab', ref.token),
    (v) => v.state !== 'sending',
  );
  assert.equal(end.state, 'failed');
  assert.deepEqual(
    end.clients.map((c) => [c.name, c.state, c.code, c.reason]),
    [
      ['lab1-01', 'ok', null, null],
      ['lab1-02', 'failed', 'E_VERIFY', 'partition 2 differs'],
    ],
  );
  // The master's next img session lab master opens a new run of the same session.
  const again = await claim(f, 'lab', ref.token, { clients: 2 });
  assert.deepEqual([again.state, again.run, again.joined], ['waiting', 2, 0]);
});

test('without clients= or t= nothing starts it but the master: not the clients, not time', async (t) => {
  const f = await fixture(t);
  const ref = await register(f, 'ref-pc');
  const a = await register(f, 'lab1-01');
  const b = await register(f, 'lab1-02');
  const m = await claim(f, 'manual', ref.token);
  assert.equal(m.startBy, 'command');
  await join_(f, 'manual', a.token);
  await join_(f, 'manual', b.token);
  await sleep(600); // several scheduler ticks
  const still = await masterNow(f, 'manual', ref.token);
  assert.deepEqual([still.state, still.joined, still.send], ['waiting', 2, null]);
  assert.match((await view(f, 'manual', a.token)).message ?? '', /img session start manual/);
  const e = await refused(f, 'E_FORBIDDEN', 403, 'POST', '/api/sessions/manual/start', { token: a.token });
  assert.match(e.message, /only the master of session manual starts it.*ref-pc/);
  await ok(f, 'POST', '/api/sessions/manual/start', { token: ref.token });
  const started = await masterNow(f, 'manual', ref.token);
  assert.equal(started.state, 'sending');
  assert.equal(started.send?.clients, 2);
});

test('bad claims and joins are refused with their reason and change nothing', async (t) => {
  const f = await fixture(t);
  const ref = await register(f, 'ref-pc');
  const other = await register(f, 'ref-2');
  const a = await register(f, 'lab1-01');
  await claim(f, 'lab', ref.token, { clients: 3 });
  await ok(f, 'POST', '/api/sessions', { body: { name: 'server-side', image: 'lab.imgc' } });

  await refused(f, 'E_BAD_REQUEST', 400, 'POST', '/api/sessions/x/master', {
    token: ref.token,
    body: { clients: 0 },
  });
  await refused(f, 'E_BAD_REQUEST', 400, 'POST', '/api/sessions/x/master', {
    token: ref.token,
    body: { waitMinutes: -1 },
  });
  await refused(f, 'E_BAD_REQUEST', 400, 'POST', '/api/sessions/x/master', {
    token: ref.token,
    body: { level: 'fastest' },
  });
  const second = await refused(f, 'E_SESSION_ROLE', 409, 'POST', '/api/sessions/lab/master', {
    token: other.token,
    body: {},
  });
  assert.match(second.message, /already has a master: ref-pc/);
  const image = await refused(f, 'E_SESSION_ROLE', 409, 'POST', '/api/sessions/server-side/master', {
    token: other.token,
    body: {},
  });
  assert.match(image.message, /sends the image lab\.imgc from the server; join it as a client/);
  const self = await refused(f, 'E_SESSION_ROLE', 409, 'POST', '/api/sessions/lab/join?open=true', {
    token: ref.token,
  });
  assert.match(self.message, /is the master of session lab/);
  const conflict = await refused(f, 'E_MASTER_CONFLICT', 409, 'POST', '/api/sessions/lab2/master', {
    token: ref.token,
    body: {},
  });
  assert.match(conflict.message, /is the master of session lab/);
  await join_(f, 'lab', a.token);
  const client = await refused(f, 'E_MASTER_CONFLICT', 409, 'POST', '/api/sessions/lab3/master', {
    token: a.token,
    body: {},
  });
  assert.match(client.message, /takes part in session lab/);
  await refused(f, 'E_SESSION_ROLE', 409, 'GET', '/api/sessions/lab/master/wait?since=0&timeoutMs=0', {
    token: a.token,
  });
  await refused(f, 'E_SESSION_STATE', 409, 'POST', '/api/sessions/lab/master/report', {
    token: ref.token,
    body: { run: 1, phase: 'listening' },
  });
  // Joining a name nobody opened, without asking to open it (img auto): unknown.
  await refused(f, 'E_SESSION_UNKNOWN', 404, 'POST', '/api/sessions/nobody/join', { token: a.token });
});

test('a master that goes silent while sending fails the run, naming it; the clients see why', async (t) => {
  const f = await fixture(t, { masterLostMs: 800 });
  const ref = await register(f, 'ref-pc');
  const a = await register(f, 'lab1-01');
  await claim(f, 'lost', ref.token, { clients: 1 });
  await join_(f, 'lost', a.token);
  const go = await until(
    'sending',
    () => masterNow(f, 'lost', ref.token),
    (v) => v.send !== null,
  );
  await masterReport(f, 'lost', ref.token, { run: go.run, phase: 'listening' });
  const s = await until(
    'the run fails',
    () => ok<Session>(f, 'GET', '/api/sessions/lost'),
    (x) => x.state === 'failed',
  );
  assert.match(s.message ?? '', /the sender failed: the master ref-pc stopped answering the server/);
  assert.equal(s.clients[0]?.state, 'failed');
  assert.match((await view(f, 'lost', a.token)).message ?? '', /stopped answering/);
});

test('stopping a sending master session tells the master; the administrator may adopt a gathering session with an image', async (t) => {
  const f = await fixture(t);
  const ref = await register(f, 'ref-pc');
  const a = await register(f, 'lab1-01');
  await claim(f, 'stopme', ref.token, { waitMinutes: 0 });
  await join_(f, 'stopme', a.token);
  const go = await until(
    'sending',
    () => masterNow(f, 'stopme', ref.token),
    (v) => v.send !== null,
  );
  await ok(f, 'POST', '/api/sessions/stopme/stop', { body: {} });
  const after = await masterNow(f, 'stopme', ref.token);
  assert.deepEqual(
    [after.state, after.run, after.message],
    ['stopped', go.run, 'stopped by the administrator'],
  );
  const late = await call(f, 'POST', '/api/sessions/stopme/master/report', {
    token: ref.token,
    body: { run: go.run, phase: 'done', receivers: [] },
  });
  assert.equal(late.status, 409);

  // Workstations waiting in a session no master took: imgcast mcast gives it an image, and keeps them.
  const b = await register(f, 'lab1-02');
  await join_(f, 'gather', b.token);
  const adopted = await ok<Session>(f, 'POST', '/api/sessions', {
    body: { name: 'gather', image: 'lab.imgc', clientCount: 2 },
  });
  assert.deepEqual(
    [adopted.origin, adopted.image, adopted.joined, adopted.needed, adopted.state],
    ['server', 'lab.imgc', 1, 1, 'waiting'],
  );
});

test('the master of an automatic session is told so by img auto and takes up its place; its clients are chosen by the rules', async (t) => {
  const f = await fixture(t);
  const ref = await register(f, 'ref-pc');
  const pc = await register(f, 'lab1-01');
  await ok<Session>(f, 'POST', '/api/auto-sessions', {
    body: { name: 'live', master: 'ref-pc', rules: ['name = "lab1-*"'], clientCount: 1 },
  });
  const c = await ok<AutoChoice>(f, 'GET', '/api/auto', { token: ref.token });
  assert.deepEqual([c.session, 'role' in c && c.role], ['live', 'master']);
  // Before its master is there, a client may wait in it, but it does not start.
  await ok<JoinView>(f, 'POST', '/api/sessions/live/join', { token: pc.token });
  await sleep(400);
  const waiting = await view(f, 'live', pc.token);
  assert.equal(waiting.state, 'waiting');
  assert.match(waiting.message ?? '', /its master ref-pc is not connected/);
  const m = await claim(f, 'live', ref.token, { clients: 9 });
  // An automatic session keeps the trigger its administrator gave it.
  assert.deepEqual([m.startBy, m.clientCount], ['count-or-time', 1]);
  await until(
    'sending',
    () => masterNow(f, 'live', ref.token),
    (v) => v.send !== null,
  );
});

test('a naming template names the workstations nobody named in join order, for good, and carries the session scripts to them', async (t) => {
  const f = await fixture(t);
  const named = await register(f, 'whatever-1');
  await ok(f, 'PATCH', `/api/workstations/${named.mac}`, { body: { name: 'teacher' } });
  const a = await register(f, 'debian');
  const b = await register(f, 'debian');
  const bad = await refused(f, 'E_BAD_REQUEST', 400, 'POST', '/api/sessions', {
    body: { name: 'named', image: 'lab.imgc', names: 'lab1-{nn' },
  });
  assert.deepEqual([bad.position, /unclosed/.test(bad.message)], [6, true]);
  const s = await ok<Session>(f, 'POST', '/api/sessions', {
    body: {
      name: 'named',
      image: 'lab.imgc',
      clientCount: 3,
      names: 'lab1-{nn}',
      scripts: [{ name: 'hello.sh', content: '#!/bin/sh\necho hi > "$IMGCAST_ROOT/hello"\n' }],
    },
  });
  assert.deepEqual([s.names, s.scripts], ['lab1-{nn}', ['hello.sh']]);
  for (const w of [b, named, a]) await join_(f, 'named', w.token, false);
  const started = await until(
    'the session starts',
    () => ok<Session>(f, 'GET', '/api/sessions/named'),
    (x) => x.state === 'sending',
  );
  assert.deepEqual(
    started.clients.map((c) => c.name),
    ['lab1-01', 'teacher', 'lab1-02'],
  );
  const order = (await view(f, 'named', a.token)).identity;
  assert.equal(order?.name, 'lab1-02');
  assert.deepEqual(
    order?.scripts?.map((x) => x.name),
    ['hello.sh'],
  );
  assert.equal((await view(f, 'named', named.token)).identity?.name, 'teacher');
  // The names stay the workstations' own.
  const list = await ok<Array<{ name: string; mac: string }>>(f, 'GET', '/api/workstations');
  assert.deepEqual(list.map((w) => w.name).sort(), ['lab1-01', 'lab1-02', 'teacher']);
});
