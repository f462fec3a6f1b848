/**
 * The imaging server's HTTP API from the outside: `startServer` on 127.0.0.1 (port 0) with a
 * data directory and an image directory holding a small image made by `img make` of a folder,
 * called with fetch the way the CLI, the console and workstations call it. No namespaces, no
 * root: the multicast send is replaced by a stand-in that reports every receiver as done, since
 * what is checked here is the API (refusals, authentication, persistence), not the transport.
 *
 * Every refusal must be `{ error: CODE, message }` with the code's status, and change nothing:
 * the sessions, images and history are read before and after each bad call.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { copyFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';

import type { HistoryEntry, Image, JoinView, Session, Status, Workstation } from '../../src/api/schemas.ts';
import { startServer, type RunningServer } from '../../src/server/server.ts';
import type { SendSession } from '../../src/server/sessions.ts';
import type { SenderResult } from '../../src/transport/types.ts';
import { tempDir } from '../helpers/env.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const IMG = join(ROOT, 'bin/img.js');
const ENV = { ...process.env, PATH: `${join(ROOT, 'node_modules/.bin')}:${process.env.PATH ?? ''}` };

// ---------------------------------------------------------------- the server

/** The names the sender knows workstations by (NAME/MAC), of every workstation registered. */
const receiverNames: string[] = [];

/**
 * Stands in for the multicast send: every joined workstation "receives" the whole image at
 * once, so that it then writes, verifies and reports like a real one (here: the test reports).
 * The sender does not know who joined, so it names every registered workstation; the server
 * takes those of the session. `hold` keeps it sending until the session is stopped or the
 * server closes.
 */
function fakeSend(o: { hold?: boolean } = {}): SendSession {
  return async (plan) => {
    const names = [...receiverNames];
    plan.onProgress({
      phase: 'sending',
      bytesSent: 0,
      receivers: names.map((name) => ({ name, state: 'receiving', bytes: 0, totalBytes: 1000 })),
    });
    if (o.hold) {
      await new Promise((_r, reject) =>
        plan.signal.addEventListener('abort', () => reject(plan.signal.reason as Error), { once: true }),
      );
    }
    return {
      ok: true,
      receivers: names.map((name) => ({ name, state: 'ok', bytes: 1000, totalBytes: 1000, rateMbit: 1 })),
    } as unknown as SenderResult;
  };
}

interface Fixture {
  t: TestContext;
  dir: string;
  data: string;
  images: string;
  /** An image file outside the image directory. */
  outside: string;
  server: RunningServer;
}

/** A folder of a few files, captured with `img make` into DIR/images/lab.imgc. */
async function fixture(t: TestContext, send: SendSession = fakeSend()): Promise<Fixture> {
  const dir = await tempDir(t, 'imgcast-api-');
  const folder = join(dir, 'folder');
  mkdirSync(join(folder, 'etc'), { recursive: true });
  writeFileSync(join(folder, 'etc/hostname'), 'lab\n');
  writeFileSync(join(folder, 'data.bin'), Buffer.alloc(100_000, 7));
  const images = join(dir, 'images');
  mkdirSync(join(images, 'sub'), { recursive: true });
  execFileSync(IMG, ['make', folder, join(images, 'lab.imgc')], { env: ENV, stdio: 'pipe' });
  const outsideDir = join(dir, 'elsewhere');
  mkdirSync(outsideDir);
  const outside = join(outsideDir, 'other.imgc');
  await copyFile(join(images, 'lab.imgc'), outside);
  const data = join(dir, 'data');
  const f = { t, dir, data, images, outside, server: undefined as unknown as RunningServer };
  f.server = await start(f, send);
  return f;
}

async function start(f: Pick<Fixture, 't' | 'data' | 'images'>, send: SendSession): Promise<RunningServer> {
  const server = await startServer({
    dataDir: f.data,
    imagesDir: f.images,
    host: '127.0.0.1',
    port: 0,
    range: { firstGroup: '239.77.8.1', firstPort: 31000, slots: 4 },
    version: 'test',
    name: 'api-test',
    logger: pino({ level: 'silent' }),
    send,
  });
  f.t.after(() => server.close());
  return server;
}

interface Reply<T = unknown> {
  status: number;
  body: T;
}

interface CallOptions {
  token?: string | null;
  body?: unknown;
  /** Sent as is, with content-type application/json. */
  raw?: string;
  headers?: Record<string, string>;
}

/** One API call; the admin token unless `token` says otherwise (null: none). */
async function call<T = unknown>(
  f: Fixture,
  method: string,
  path: string,
  o: CallOptions = {},
): Promise<Reply<T>> {
  const token = o.token === undefined ? f.server.adminToken : o.token;
  const headers: Record<string, string> = { ...o.headers };
  if (token !== null) headers.authorization = `Bearer ${token}`;
  let body: string | undefined;
  if (o.raw !== undefined || o.body !== undefined) {
    headers['content-type'] ??= 'application/json';
    body = o.raw ?? JSON.stringify(o.body);
  }
  const res = await fetch(`${f.server.url}${path}`, { method, headers, body });
  const text = await res.text();
  return { status: res.status, body: (text ? JSON.parse(text) : undefined) as T };
}

async function ok<T>(f: Fixture, method: string, path: string, o: CallOptions = {}): Promise<T> {
  const r = await call<T>(f, method, path, o);
  assert.ok(r.status >= 200 && r.status < 300, `${method} ${path}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

/** What a refusal must leave as it was. */
async function snapshot(f: Fixture): Promise<unknown> {
  return {
    sessions: await ok<Session[]>(f, 'GET', '/api/sessions'),
    images: await ok<Image[]>(f, 'GET', '/api/images'),
    history: await ok<HistoryEntry[]>(f, 'GET', '/api/history'),
    workstations: (await ok<Workstation[]>(f, 'GET', '/api/workstations')).map((w) => [w.id, w.name, w.mac]),
  };
}

/** The call is refused with `code` (and `status`), a message, and changes nothing. */
async function refused(
  f: Fixture,
  code: string,
  status: number,
  method: string,
  path: string,
  o: CallOptions = {},
): Promise<{ error: string; message: string } & Record<string, unknown>> {
  const before = await snapshot(f);
  const r = await call<{ error: string; message: string }>(f, method, path, o);
  const what = `${method} ${path} ${o.raw !== undefined ? `(${o.raw.length} bytes)` : JSON.stringify(o.body ?? '')}`;
  assert.equal(r.body?.error, code, `${what}: ${r.status} ${JSON.stringify(r.body)}`);
  assert.equal(r.status, status, `${what}: the status of ${code}`);
  assert.ok(typeof r.body.message === 'string' && r.body.message.length > 10, `${what}: a message`);
  assert.deepEqual(await snapshot(f), before, `${what} must change nothing`);
  return r.body;
}

let macs = 0;
/** Registers a workstation (as `img session` does); its token. */
async function workstation(f: Fixture, hostname = 'pc'): Promise<{ id: string; token: string }> {
  const n = ++macs;
  const mac = `02:00:00:00:00:${n.toString(16).padStart(2, '0')}`;
  receiverNames.push(`${hostname}${n}/${mac}`);
  const r = await ok<{ id: string; token: string }>(f, 'POST', '/api/workstations/register', {
    token: null,
    body: {
      hostname: `${hostname}${n}`,
      mac,
      addresses: [`127.0.0.${n}`],
      disks: [{ path: '/dev/sda', sizeBytes: 1e9 }],
      memoryBytes: 1e9,
      cpu: { model: 'test', cores: 2 },
      dmi: {},
    },
  });
  return r;
}

const create = (f: Fixture, body: Record<string, unknown>) =>
  ok<Session>(f, 'POST', '/api/sessions', { body });

// ---------------------------------------------------------------- refusals

test('a second session of the same name is refused with E_SESSION_EXISTS', async (t) => {
  const f = await fixture(t);
  await create(f, { name: 'lab1', image: 'lab.imgc', clientCount: 3 });
  const e = await refused(f, 'E_SESSION_EXISTS', 409, 'POST', '/api/sessions', {
    body: { name: 'lab1', image: 'lab.imgc', clientCount: 5 },
  });
  assert.match(e.message, /lab1/);
  const [s] = await ok<Session[]>(f, 'GET', '/api/sessions');
  assert.equal(s?.clientCount, 3, 'the first one keeps its settings');
});

test('images outside the image directory are refused with E_IMAGE_OUTSIDE: ../, absolute paths, a sibling folder, symlinks out', async (t) => {
  const f = await fixture(t);
  symlinkSync(f.outside, join(f.images, 'escape.imgc'));
  symlinkSync(join(f.dir, 'elsewhere'), join(f.images, 'sub', 'linked'));
  mkdirSync(`${f.images}-evil`);
  await copyFile(f.outside, join(`${f.images}-evil`, 'x.imgc'));
  const paths = [
    '../elsewhere/other.imgc',
    'sub/../../elsewhere/other.imgc',
    '..',
    f.outside,
    '/etc/passwd',
    '/',
    `${f.images}-evil/x.imgc`,
    join(f.images, '..', 'elsewhere', 'other.imgc'),
    'escape.imgc',
    join(f.images, 'escape.imgc'),
    'sub/linked/other.imgc',
  ];
  for (const [i, image] of paths.entries()) {
    const e = await refused(f, 'E_IMAGE_OUTSIDE', 400, 'POST', '/api/sessions', {
      body: { name: `out${i}`, image },
    });
    assert.ok(e.message.includes(image), `the message names what was given: ${e.message}`);
    await refused(f, 'E_IMAGE_OUTSIDE', 400, 'GET', `/api/images/info?path=${encodeURIComponent(image)}`);
    await refused(f, 'E_IMAGE_OUTSIDE', 400, 'DELETE', `/api/images?path=${encodeURIComponent(image)}`);
  }
  // Nothing outside was touched by the DELETEs, nor the links leading there.
  for (const path of [f.outside, join(`${f.images}-evil`, 'x.imgc'), join(f.images, 'escape.imgc')])
    assert.ok(existsSync(path), `${path} is still there`);
  // The escaping link is not listed as an image of the directory either.
  const names = (await ok<Image[]>(f, 'GET', '/api/images')).map((i) => i.name);
  assert.deepEqual(names, ['lab.imgc']);
  // Inside it, the same image by its absolute path or a detour that stays inside is accepted.
  const s = await create(f, { name: 'inside', image: join(f.images, 'sub', '..', 'lab.imgc') });
  assert.equal(s.image, 'lab.imgc');
});

test('a file inside the image directory that is no image is refused with E_IMAGE_UNREADABLE, a missing one or a folder with E_IMAGE_UNKNOWN', async (t) => {
  const f = await fixture(t);
  writeFileSync(join(f.images, 'junk.imgc'), Buffer.alloc(4096, 1));
  writeFileSync(join(f.images, 'notes.txt'), 'not an image\n');
  for (const image of ['junk.imgc', 'notes.txt']) {
    const e = await refused(f, 'E_IMAGE_UNREADABLE', 400, 'POST', '/api/sessions', {
      body: { name: 'bad', image },
    });
    assert.ok(e.message.includes(image), e.message);
  }
  for (const image of ['missing.imgc', 'sub', 'sub/'])
    await refused(f, 'E_IMAGE_UNKNOWN', 404, 'POST', '/api/sessions', { body: { name: 'bad', image } });
});

test('file set 0 and 11 are refused with E_BAD_REQUEST, as are other malformed sessions', async (t) => {
  const f = await fixture(t);
  for (const body of [
    { name: 'fs0', image: 'lab.imgc', fileset: 0 },
    { name: 'fs11', image: 'lab.imgc', fileset: 11 },
    { name: 'fsx', image: 'lab.imgc', fileset: 'one' },
    { name: 'c0', image: 'lab.imgc', clientCount: 0 },
    { name: 'tneg', image: 'lab.imgc', waitMinutes: -1 },
    { name: 'both', image: 'lab.imgc', waitMinutes: 1, waitSeconds: 5 },
    { name: 'bad name!', image: 'lab.imgc' },
    { name: '', image: 'lab.imgc' },
    { image: 'lab.imgc' },
    { name: 'extra', image: 'lab.imgc', colour: 'red' },
  ]) {
    await refused(f, 'E_BAD_REQUEST', 400, 'POST', '/api/sessions', { body });
  }
  await create(f, { name: 'w', image: 'lab.imgc' });
  await refused(f, 'E_BAD_REQUEST', 400, 'PATCH', '/api/sessions/w', { body: { clientCount: 0 } });
});

test('a NUL character anywhere in a request, and a fractional byte count, are refused with E_BAD_REQUEST and change nothing (PostgreSQL keeps neither)', async (t) => {
  const f = await fixture(t);
  // Five to start it: the session waits, so nothing but the refused calls could change it.
  await create(f, { name: 'w', image: 'lab.imgc', clientCount: 5 });
  const ws = await workstation(f);
  await refused(f, 'E_BAD_REQUEST', 400, 'POST', '/api/workstations/register', {
    token: null,
    body: {
      hostname: 'pc\u0000x',
      mac: '02:00:00:00:01:ff',
      addresses: [],
      disks: [],
      memoryBytes: 1,
      cpu: { model: 'm', cores: 1 },
      dmi: {},
    },
  });
  await refused(f, 'E_BAD_REQUEST', 400, 'PATCH', '/api/sessions/w', { body: { names: 'lab-{nn}\u0000' } });
  await refused(f, 'E_BAD_REQUEST', 400, 'GET', '/api/sessions/w%00x');
  await refused(f, 'E_BAD_REQUEST', 400, 'POST', '/api/sessions/w/join?open=%00', { token: ws.token });
  const joined = await call<JoinView>(f, 'POST', '/api/sessions/w/join', { token: ws.token });
  assert.equal(joined.status, 200);
  // Joined, the session counts down (snapshots differ by the clock): the client's row is compared.
  const client = async () => (await ok<Session>(f, 'GET', '/api/sessions/w')).clients[0];
  const before = await client();
  for (const body of [
    { run: 1, state: 'receiving', bytes: 10.5, totalBytes: 100 },
    { run: 1, state: 'failed', code: 'E_X', message: 'disk \u0000 gone' },
  ]) {
    const r = await call<{ error: string }>(f, 'POST', '/api/sessions/w/report', { token: ws.token, body });
    assert.deepEqual([r.status, r.body.error], [400, 'E_BAD_REQUEST'], JSON.stringify(body));
  }
  assert.deepEqual(await client(), before);
  assert.equal(before?.state, 'joined');
});

test('an unknown session is refused with E_SESSION_UNKNOWN on show, edit, stop, start, restart, delete, join, wait and report', async (t) => {
  const f = await fixture(t);
  await create(f, { name: 'known', image: 'lab.imgc' });
  const w = await workstation(f);
  await refused(f, 'E_SESSION_UNKNOWN', 404, 'GET', '/api/sessions/nope');
  await refused(f, 'E_SESSION_UNKNOWN', 404, 'PATCH', '/api/sessions/nope', { body: { clientCount: 2 } });
  await refused(f, 'E_SESSION_UNKNOWN', 404, 'POST', '/api/sessions/nope/stop', { body: {} });
  await refused(f, 'E_SESSION_UNKNOWN', 404, 'POST', '/api/sessions/nope/start');
  await refused(f, 'E_SESSION_UNKNOWN', 404, 'POST', '/api/sessions/nope/restart');
  await refused(f, 'E_SESSION_UNKNOWN', 404, 'DELETE', '/api/sessions/nope');
  await refused(f, 'E_SESSION_UNKNOWN', 404, 'POST', '/api/sessions/nope/join', { token: w.token });
  await refused(f, 'E_SESSION_UNKNOWN', 404, 'GET', '/api/sessions/nope/wait?since=0&timeoutMs=0', {
    token: w.token,
  });
  await refused(f, 'E_SESSION_UNKNOWN', 404, 'POST', '/api/sessions/nope/report', {
    token: w.token,
    body: { run: 1, state: 'ok' },
  });
});

test('a body that is not JSON is refused with E_BAD_JSON, one over 1 MiB with E_TOO_LARGE', async (t) => {
  const f = await fixture(t);
  for (const raw of ['{"name": "x", "image": ', '{name: x}', 'nope', '{"name":"x","image":"lab.imgc"}}'])
    await refused(f, 'E_BAD_JSON', 400, 'POST', '/api/sessions', { raw });
  const big = JSON.stringify({ name: 'big', image: 'lab.imgc', pad: 'x'.repeat(2 * 1024 * 1024) });
  await refused(f, 'E_TOO_LARGE', 413, 'POST', '/api/sessions', { raw: big });
  // The server still answers afterwards.
  await create(f, { name: 'after', image: 'lab.imgc' });
});

test('no token and a wrong token are refused with E_UNAUTHORIZED, a workstation on an admin call and an admin joining with E_FORBIDDEN', async (t) => {
  const f = await fixture(t);
  await create(f, { name: 'lab1', image: 'lab.imgc', clientCount: 2 });
  const w = await workstation(f);
  for (const token of [null, 'wrong-token-of-some-length', '']) {
    await refused(f, 'E_UNAUTHORIZED', 401, 'GET', '/api/status', { token });
    await refused(f, 'E_UNAUTHORIZED', 401, 'POST', '/api/sessions', {
      token,
      body: { name: 'sneaky', image: 'lab.imgc' },
    });
    await refused(f, 'E_UNAUTHORIZED', 401, 'POST', '/api/sessions/lab1/stop', { token, body: {} });
    await refused(f, 'E_UNAUTHORIZED', 401, 'POST', '/api/sessions/lab1/join', { token });
  }
  await refused(f, 'E_UNAUTHORIZED', 401, 'GET', '/api/status', {
    token: null,
    headers: { authorization: `Basic ${Buffer.from(`admin:${f.server.adminToken}`).toString('base64')}` },
  });
  for (const [method, path, body] of [
    ['GET', '/api/status', undefined],
    ['GET', '/api/sessions', undefined],
    ['POST', '/api/sessions', { name: 'mine', image: 'lab.imgc' }],
    ['POST', '/api/sessions/lab1/start', undefined],
    ['POST', '/api/sessions/lab1/stop', { delete: true }],
    ['DELETE', '/api/images?path=lab.imgc', undefined],
    ['GET', '/api/workstations', undefined],
    ['POST', '/api/admins', { name: 'pwned', password: 'long enough password' }],
  ] as const) {
    await refused(f, 'E_FORBIDDEN', 403, method, path, { token: w.token, body });
  }
  const e = await refused(f, 'E_FORBIDDEN', 403, 'POST', '/api/sessions/lab1/join');
  assert.match(e.message, /workstations/);
  await refused(f, 'E_FORBIDDEN', 403, 'GET', '/api/sessions/lab1/wait?since=0&timeoutMs=0');
  await refused(f, 'E_FORBIDDEN', 403, 'POST', '/api/sessions/lab1/report', {
    body: { run: 1, state: 'ok' },
  });
  // The workstation's own calls work.
  const v = await ok<JoinView>(f, 'POST', '/api/sessions/lab1/join', { token: w.token });
  assert.equal(v.joined, 1);
});

test('an unknown route is refused with E_NOT_FOUND, whoever asks', async (t) => {
  const f = await fixture(t);
  const w = await workstation(f);
  for (const token of [undefined, w.token, null, 'wrong-token-of-some-length']) {
    await refused(f, 'E_NOT_FOUND', 404, 'GET', '/api/nothing-here', { token });
    await refused(f, 'E_NOT_FOUND', 404, 'GET', '/nothing', { token });
    await refused(f, 'E_NOT_FOUND', 404, 'PUT', '/api/sessions', { token });
    await refused(f, 'E_NOT_FOUND', 404, 'GET', '/api/sessions/a/b/c', { token });
    await refused(f, 'E_NOT_FOUND', 404, 'POST', '/api/no-such-upload', { token, body: { name: 'x' } });
  }
});

test('a refusal in the middle of a session changes nothing of it: join after the start, edit or start of a sending session, report for another run', async (t) => {
  const f = await fixture(t, fakeSend({ hold: true }));
  await create(f, { name: 'lab1', image: 'lab.imgc', clientCount: 1 });
  const [a, b] = [await workstation(f), await workstation(f)];
  await ok(f, 'POST', '/api/sessions/lab1/join', { token: a.token });
  await waitFor(f, 'lab1', (s) => s.state === 'sending');
  await refused(f, 'E_SESSION_STATE', 409, 'POST', '/api/sessions/lab1/join', { token: b.token });
  await refused(f, 'E_SESSION_STATE', 409, 'PATCH', '/api/sessions/lab1', { body: { clientCount: 4 } });
  await refused(f, 'E_SESSION_STATE', 409, 'POST', '/api/sessions/lab1/start');
  await refused(f, 'E_SESSION_STATE', 409, 'POST', '/api/sessions/lab1/restart');
  await refused(f, 'E_IMAGE_IN_USE', 409, 'DELETE', '/api/images?path=lab.imgc');
  await refused(f, 'E_NOT_JOINED', 409, 'POST', '/api/sessions/lab1/report', {
    token: a.token,
    body: { run: 2, state: 'ok' },
  });
  await refused(f, 'E_NOT_JOINED', 409, 'POST', '/api/sessions/lab1/report', {
    token: b.token,
    body: { run: 1, state: 'ok' },
  });
});

async function waitFor(f: Fixture, name: string, ok_: (s: Session) => boolean, ms = 5000): Promise<Session> {
  const until = Date.now() + ms;
  for (;;) {
    const s = await ok<Session>(f, 'GET', `/api/sessions/${name}`);
    if (ok_(s)) return s;
    assert.ok(Date.now() < until, `session ${name} stayed ${s.state}: ${JSON.stringify(s)}`);
    await sleep(50);
  }
}

// ---------------------------------------------------------------- persistence and accounts

test('sessions, workstations, counters and history survive a restart on the same data directory; a session cut off while sending comes back interrupted', async (t) => {
  let hold = false;
  const send: SendSession = (plan) => fakeSend({ hold })(plan);
  const f = await fixture(t, send);
  const [a, b, c] = [await workstation(f, 'a'), await workstation(f, 'b'), await workstation(f, 'c')];

  // done: a joins, the stand-in sends, a reports ok.
  await create(f, { name: 'finished', image: 'lab.imgc', clientCount: 1 });
  const jv = await ok<JoinView>(f, 'POST', '/api/sessions/finished/join', { token: a.token });
  await waitFor(f, 'finished', (s) => s.clients[0]?.state === 'writing');
  await ok(f, 'POST', '/api/sessions/finished/report', {
    token: a.token,
    body: { run: jv.run, state: 'ok', bytes: 1000, totalBytes: 1000 },
  });
  await waitFor(f, 'finished', (s) => s.state === 'done');
  // stopped, into the history too.
  await create(f, { name: 'halted', image: 'lab.imgc', clientCount: 5 });
  await ok(f, 'POST', '/api/sessions/halted/join', { token: b.token });
  await ok(f, 'POST', '/api/sessions/halted/stop', { body: {} });
  // waiting, with a workstation joined and a trigger of its own.
  await create(f, { name: 'waiting', image: 'lab.imgc', clientCount: 4, waitMinutes: 30, fileset: 2 });
  await ok(f, 'POST', '/api/sessions/waiting/join', { token: c.token });
  // sending when the server stops.
  hold = true;
  await create(f, { name: 'cutoff', image: 'lab.imgc', clientCount: 1 });
  await ok(f, 'POST', '/api/sessions/cutoff/join', { token: b.token });
  await waitFor(f, 'cutoff', (s) => s.state === 'sending');

  const before = await ok<Status>(f, 'GET', '/api/status');
  const history = await ok<HistoryEntry[]>(f, 'GET', '/api/history');
  const stations = await ok<Workstation[]>(f, 'GET', '/api/workstations');
  assert.equal(before.counters.imagesSent, 1);
  assert.ok(before.counters.requestsReceived >= 8, `requests counted: ${before.counters.requestsReceived}`);
  await f.server.close();

  f.server = await start(f, send);
  const after = await ok<Status>(f, 'GET', '/api/status');
  // The workstation cut off is one failed result more: an error, counted at the start that found it.
  assert.deepEqual(
    after.counters,
    { ...before.counters, errors: before.counters.errors + 1 },
    'the counters',
  );
  assert.deepEqual(await ok<Workstation[]>(f, 'GET', '/api/workstations'), stations, 'the workstations');
  const byName = (s: Status) => new Map(s.sessions.map((x) => [x.name, x]));
  const [was, is] = [byName(before), byName(after)];
  assert.deepEqual([...is.keys()].sort(), ['cutoff', 'finished', 'halted', 'waiting']);
  for (const name of ['finished', 'halted']) assert.deepEqual(is.get(name), was.get(name), name);
  // The wait's countdown runs on; everything else of the waiting session is as it was.
  const strip = (s: Session | undefined) => ({ ...s, startsInMs: null });
  assert.deepEqual(strip(is.get('waiting')), strip(was.get('waiting')), 'waiting');
  assert.ok((is.get('waiting')!.startsInMs ?? 0) > 29 * 60_000, 'its countdown goes on from its last join');
  const cut = is.get('cutoff')!;
  assert.equal(cut.state, 'interrupted');
  assert.match(cut.message ?? '', /stopped while sending/);
  assert.equal(cut.clients[0]?.state, 'failed');
  assert.equal(cut.clients[0]?.code, 'E_INTERRUPTED');
  const historyAfter = await ok<HistoryEntry[]>(f, 'GET', '/api/history');
  assert.deepEqual(historyAfter.slice(1), history, 'the history, and the interrupted run on top');
  assert.equal(historyAfter[0]?.session, 'cutoff');
  assert.equal(historyAfter[0]?.state, 'interrupted');

  // A workstation's token still works: c waits in its session, and can report nothing yet.
  const v = await ok<JoinView>(f, 'GET', '/api/sessions/waiting/wait?since=0&timeoutMs=0', {
    token: c.token,
  });
  assert.equal(v.state, 'waiting');
  assert.equal(v.joined, 1);
  assert.equal(v.needed, 3);
  // The interrupted session restarts for a new run, which its workstation joins again.
  hold = false;
  const r = await ok<Session>(f, 'POST', '/api/sessions/cutoff/restart');
  assert.equal(r.run, 2);
  await ok(f, 'POST', '/api/sessions/cutoff/join', { token: b.token });
  await waitFor(f, 'cutoff', (s) => s.clients[0]?.state === 'writing');
  await ok(f, 'POST', '/api/sessions/cutoff/report', { token: b.token, body: { run: 2, state: 'ok' } });
  await waitFor(f, 'cutoff', (s) => s.state === 'done');
});

test('an admin account made through the API signs in; a wrong password or an unknown name is refused', async (t) => {
  const f = await fixture(t);
  const name = 'teacher';
  const password = 'correct horse battery staple';
  const made = await call(f, 'POST', '/api/admins', { body: { name, password } });
  assert.equal(made.status, 204, JSON.stringify(made.body));
  const login = await call<{ token: string; expiresAt: number }>(f, 'POST', '/api/login', {
    token: null,
    body: { name, password },
  });
  assert.equal(login.status, 200, JSON.stringify(login.body));
  assert.ok(login.body.expiresAt > Date.now());
  // The login token administers.
  const status = await ok<Status>(f, 'GET', '/api/status', { token: login.body.token });
  assert.equal(status.server.name, 'api-test');
  await ok(f, 'POST', '/api/sessions', {
    token: login.body.token,
    body: { name: 'by-teacher', image: 'lab.imgc' },
  });
  for (const body of [
    { name, password: 'wrong horse battery staple' },
    { name, password: password.toUpperCase() },
    { name: 'nobody', password },
  ]) {
    await refused(f, 'E_UNAUTHORIZED', 401, 'POST', '/api/login', { token: null, body });
  }
  await refused(f, 'E_BAD_REQUEST', 400, 'POST', '/api/admins', {
    body: { name: 'short', password: 'short' },
  });
  // A new password ends the sign-ins made with the old one.
  await ok(f, 'POST', '/api/admins', { body: { name, password: 'another long password' } });
  await refused(f, 'E_UNAUTHORIZED', 401, 'GET', '/api/status', { token: login.body.token });
});

// ---------------------------------------------------------------- identity

test('a workstation is told the name the administrator gave it, reports what it applied, and the server keeps it (across a restart); a malformed report is refused', async (t) => {
  const f = await fixture(t);
  const named = await workstation(f, 'named');
  const unnamed = await workstation(f, 'self');
  await ok(f, 'PATCH', `/api/workstations/${named.id}`, { body: { name: 'lab1-01' } });
  // The stand-in sender knows it by its new name.
  receiverNames.push(`lab1-01/${named.id.replace(/(..)(?!$)/g, '$1:')}`);
  await create(f, { name: 'lab1', image: 'lab.imgc', clientCount: 2 });
  for (const w of [named, unnamed]) await ok(f, 'POST', '/api/sessions/lab1/join', { token: w.token });
  await waitFor(f, 'lab1', (s) => s.clients.length === 2 && s.clients.every((c) => c.state === 'writing'));
  const view = (w: { token: string }) =>
    ok<JoinView>(f, 'GET', '/api/sessions/lab1/wait?since=0&timeoutMs=0', { token: w.token });
  const v = await view(named);
  assert.equal(v.state, 'sending');
  assert.deepEqual(v.identity, { name: 'lab1-01' });
  const u = await view(unnamed);
  assert.equal(u.identity?.name, null);
  assert.match(
    u.identity?.why ?? '',
    /^the administrator has not named this workstation \(it registered as self\d+\); imgcast workstation edit 02:00:00:00:00:\w\w --name NAME names it$/,
  );

  const applied = {
    name: 'lab1-01',
    machineId: '0123456789abcdef0123456789abcdef',
    sshHostKeys: [
      {
        type: 'ed25519',
        bits: 256,
        fingerprint: 'SHA256:rx45PXDZ8GbE9T3Q5VcnKagGG95Q13qRAQd32iFCzhg',
        publicKey:
          'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAmlhwxyRu5zvlVz6O42b4+WDBhxKyyIdCjWAJ0JUPjd root@lab1-01',
      },
    ],
    windowsName: null,
    notes: ['p1: no sysprep answer file'],
  };
  for (const bad of [
    { ...applied, machineId: 'not-an-id' },
    { ...applied, sshHostKeys: [{ ...applied.sshHostKeys[0], fingerprint: 'MD5:aa:bb' }] },
    { ...applied, extra: true },
    { ...applied, name: 'x'.repeat(64) },
  ]) {
    await refused(f, 'E_BAD_REQUEST', 400, 'POST', '/api/sessions/lab1/report', {
      token: named.token,
      body: { run: v.run, state: 'ok', identity: bad },
    });
  }
  await ok(f, 'POST', '/api/sessions/lab1/report', {
    token: named.token,
    body: { run: v.run, state: 'ok', bytes: 1000, totalBytes: 1000, identity: applied },
  });
  const w = await ok<Workstation>(f, 'GET', '/api/workstations/lab1-01');
  const { reportedAt, ...kept } = w.identity!;
  assert.deepEqual(kept, { ...applied, session: 'lab1', image: 'lab.imgc' });
  assert.ok(Math.abs(reportedAt - Date.now()) < 60_000);
  assert.equal((await ok<Workstation>(f, 'GET', `/api/workstations/${unnamed.id}`)).identity, null);

  await f.server.close();
  f.server = await start(f, fakeSend());
  assert.deepEqual(
    (await ok<Workstation>(f, 'GET', '/api/workstations/lab1-01')).identity,
    w.identity,
    'kept across a restart',
  );
});
