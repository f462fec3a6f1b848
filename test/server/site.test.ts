/**
 * A site of two imaging servers sharing one PostgreSQL database (site.ts), on a throwaway
 * cluster, through the HTTP API of `startServer` on 127.0.0.1: each runs its own sessions,
 * refers workstations asking for the other's to it (E_REFERRED, counted as a client referral),
 * refuses a session name the other holds, shows the other in its status, and keeps its own
 * counters. And a server renamed keeps what it had: on a shared database when it is the same
 * machine and data folder, on its embedded file always.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { test, type TestContext } from 'node:test';
import { pino } from 'pino';

import { ApiClient } from '../../src/api/client.ts';
import type { JoinView, Registered, Status } from '../../src/api/schemas.ts';
import { followReferrals } from '../../src/client/server-link.ts';
import { startServer, type RunningServer } from '../../src/server/server.ts';
import type { SendSession } from '../../src/server/sessions.ts';
import { tempDir } from '../helpers/env.ts';
import { postgresPerFile } from '../helpers/postgres.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const IMG = join(ROOT, 'bin/img.js');
const ENV = { ...process.env, PATH: `${join(ROOT, 'node_modules/.bin')}:${process.env.PATH ?? ''}` };
const pg = postgresPerFile();

/** Sessions here never start (count 5): the tests are about who runs them, not the send. */
const neverSends: SendSession = () => Promise.reject(new Error('no session of these tests starts'));

interface Site {
  dir: string;
  database: string;
  a: RunningServer;
  b: RunningServer;
  start(name: string, dataDir: string): Promise<RunningServer>;
}

type DatabaseMaker = (t: TestContext, dir: string) => Promise<string | undefined>;
/** An embedded file is one server's alone; the site tests share PostgreSQL, as sites do. */
const DATABASES: Array<[string, DatabaseMaker]> = [['PostgreSQL', (t) => pg.database(t)]];

/** Two servers, a and b, on one database, each with its own data folder and image folder. */
async function site(
  t: TestContext,
  makeDatabase: DatabaseMaker,
  o: { realSend?: { group: string; port: number } } = {},
): Promise<Site | undefined> {
  const dir = await tempDir(t, 'imgcast-site-');
  const database = await makeDatabase(t, dir);
  if (database === undefined) return undefined;
  const folder = join(dir, 'folder');
  mkdirSync(folder);
  writeFileSync(join(folder, 'hostname'), 'lab\n');
  writeFileSync(join(folder, 'data.bin'), randomBytes(2 * 1024 * 1024));
  for (const s of ['a', 'b']) {
    mkdirSync(join(dir, s, 'images'), { recursive: true });
    execFileSync(IMG, ['make', folder, join(dir, s, 'images', 'lab.imgc')], { env: ENV, stdio: 'pipe' });
  }
  const start = async (name: string, dataDir: string) => {
    const server = await startServer({
      dataDir,
      imagesDir: join(dir, name, 'images'),
      database,
      host: '127.0.0.1',
      port: 0,
      version: 'test',
      name,
      logger: pino({ level: 'silent' }),
      siteHeartbeatMs: 200,
      ...(o.realSend
        ? {
            interface: '127.0.0.1',
            range: { firstGroup: o.realSend.group, firstPort: o.realSend.port, slots: 2 },
          }
        : { range: { firstGroup: '239.77.9.1', firstPort: 31100, slots: 4 }, send: neverSends }),
    });
    t.after(() => server.close());
    return server;
  };
  const a = await start('a', join(dir, 'a', 'data'));
  const b = await start('b', join(dir, 'b', 'data'));
  return { dir, database, a, b, start };
}

async function call<T>(
  server: RunningServer,
  method: string,
  path: string,
  token: string | null,
  body?: unknown,
): Promise<{ status: number; body: T }> {
  const res = await fetch(`${server.url}${path}`, {
    method,
    headers: {
      ...(token === null ? {} : { authorization: `Bearer ${token}` }),
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: (text ? JSON.parse(text) : undefined) as T };
}

const admin = <T>(server: RunningServer, method: string, path: string, body?: unknown) =>
  call<T>(server, method, path, server.adminToken, body);

const INVENTORY = {
  hostname: 'pc1',
  mac: '02:00:00:00:09:01',
  addresses: ['127.0.0.9'],
  disks: [{ path: '/dev/sda', sizeBytes: 1e9, removable: false }],
  memoryBytes: 1e9,
  cpu: { model: 'test', cores: 2 },
  dmi: {},
};

async function register(server: RunningServer): Promise<Registered> {
  const r = await call<Registered>(server, 'POST', '/api/workstations/register', null, INVENTORY);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body;
}

type Refusal = { error: string; message: string } & Record<string, unknown>;

/** Runs one of the product's commands as a process (the servers answer meanwhile: nothing blocks). */
function runProcess(
  script: string,
  args: string[],
  env: NodeJS.ProcessEnv,
): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((done) => {
    const child = spawn(process.execPath, [script, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('close', (code) => done({ code, out, err }));
  });
}

for (const [kind, makeDatabase] of DATABASES) {
  test(`${kind}: a workstation asking one server for the other's session is referred there, and joins it there`, async (t) => {
    const s = await site(t, makeDatabase);
    if (!s) return;
    const made = await admin(s.b, 'POST', '/api/sessions', {
      name: 'room1',
      image: 'lab.imgc',
      clientCount: 5,
    });
    assert.equal(made.status, 201, JSON.stringify(made.body));

    const pc = await register(s.a);
    const asked = await call<Refusal>(s.a, 'POST', '/api/sessions/room1/join', pc.token);
    assert.equal(asked.status, 409, JSON.stringify(asked.body));
    assert.equal(asked.body.error, 'E_REFERRED');
    assert.equal(asked.body.server, 'b');
    assert.equal(asked.body.url, s.b.url);
    assert.match(asked.body.message, /session room1 runs on imaging server b at http:\/\/127\.0\.0\.1:\d+$/);
    // A workstation opening a session by that name (img session NAME) is referred too, not given a second one.
    const opened = await call<Refusal>(s.a, 'POST', '/api/sessions/room1/join?open=true', pc.token);
    assert.equal(opened.body.error, 'E_REFERRED');
    // So is its wait and its report: every call about the session names where it runs.
    const waited = await call<Refusal>(s.a, 'GET', '/api/sessions/room1/wait?since=0&timeoutMs=0', pc.token);
    assert.equal(waited.body.error, 'E_REFERRED');
    // The administrator asking the wrong server hears where it runs as well; no referral is counted for that.
    const shown = await admin<Refusal>(s.a, 'GET', '/api/sessions/room1');
    assert.equal(shown.body.error, 'E_REFERRED');

    const statusA = (await admin<Status>(s.a, 'GET', '/api/status')).body;
    assert.equal(statusA.counters.clientReferrals, 3, 'join, open and wait were referrals');
    assert.deepEqual(
      statusA.sessions.map((x) => x.name),
      [],
      'a shows only its own sessions',
    );
    assert.deepEqual(
      statusA.servers.map((x) => [x.name, x.state, x.self, x.url]),
      [
        ['a', 'up', true, s.a.url],
        ['b', 'up', false, s.b.url],
      ],
    );
    const statusB = (await admin<Status>(s.b, 'GET', '/api/status')).body;
    assert.equal(statusB.counters.clientReferrals, 0, 'b counts its own');
    assert.deepEqual(
      statusB.sessions.map((x) => x.name),
      ['room1'],
    );

    // The workstation's token from a works on b (the same database holds it); the client
    // follows the referral by registering there, as img session does.
    const direct = await call<JoinView>(s.b, 'POST', '/api/sessions/room1/join', pc.token);
    assert.equal(direct.status, 200, JSON.stringify(direct.body));
    const notes: string[] = [];
    const first = { api: new ApiClient(s.a.url, pc.token), reg: pc };
    const joined = await followReferrals<{ v: JoinView; at: string }>(
      first,
      INVENTORY,
      { onNote: (l) => notes.push(l) },
      ({ api }) =>
        api.request<JoinView>('POST', '/api/sessions/room1/join').then((v) => ({ v, at: api.baseUrl })),
    );
    assert.equal(joined.at, s.b.url);
    assert.equal(joined.v.state, 'waiting');
    assert.equal(notes.length, 1);
    assert.match(notes[0]!, /runs on imaging server b .*: going on there$/);
    const room = (await admin<Status>(s.b, 'GET', '/api/status')).body.sessions.find(
      (x) => x.name === 'room1',
    );
    assert.deepEqual(
      room?.clients.map((c) => c.mac),
      [INVENTORY.mac],
    );
    assert.equal((await admin<Status>(s.a, 'GET', '/api/status')).body.counters.clientReferrals, 4);

    // imgcast status on a: its counters, and the other server of the site.
    const cli = await runProcess(join(ROOT, 'bin/imgcast.js'), ['status'], {
      ...ENV,
      IMGCAST_SERVER: s.a.url.replace('http://', ''),
      IMGCAST_TOKEN: s.a.adminToken,
      XDG_CONFIG_HOME: join(s.dir, 'config'),
    });
    assert.equal(cli.code, 0, cli.err);
    const lines = cli.out.split('\n');
    assert.match(lines[1]!, /client referrals 4 · errors 0$/);
    assert.deepEqual(lines.slice(2, 4), [
      'site: 2 servers share this database; this one shows its own sessions',
      `  b at ${s.b.url}: up`,
    ]);
  });

  test(`${kind}: a session name one server holds is refused on the other; each server keeps and reloads only its own`, async (t) => {
    const s = await site(t, makeDatabase);
    if (!s) return;
    assert.equal(
      (await admin(s.a, 'POST', '/api/sessions', { name: 'mine', image: 'lab.imgc', clientCount: 5 })).status,
      201,
    );
    const again = await admin<Refusal>(s.b, 'POST', '/api/sessions', {
      name: 'mine',
      image: 'lab.imgc',
      clientCount: 5,
    });
    assert.equal(again.status, 409);
    assert.equal(again.body.error, 'E_SESSION_EXISTS');
    assert.match(again.body.message, /already exists on imaging server a \(http/);
    // b may not stop, start or delete a's session: it says where it runs and changes nothing.
    const stop = await admin<Refusal>(s.b, 'DELETE', '/api/sessions/mine');
    assert.equal(stop.body.error, 'E_REFERRED');
    assert.equal((await admin<Status>(s.a, 'GET', '/api/status')).body.sessions[0]?.state, 'waiting');

    // Restarted, each loads its own sessions only, and shows the other stopped while it is.
    await s.b.close();
    const statusA = (await admin<Status>(s.a, 'GET', '/api/status')).body;
    const b = await s.start('b', join(s.dir, 'b', 'data'));
    assert.deepEqual(
      (await admin<Status>(b, 'GET', '/api/status')).body.sessions.map((x) => x.name),
      [],
    );
    assert.equal(
      (await admin(b, 'POST', '/api/sessions', { name: 'theirs', image: 'lab.imgc', clientCount: 5 })).status,
      201,
    );
    await s.a.close();
    const a = await s.start('a', join(s.dir, 'a', 'data'));
    assert.deepEqual(
      (await admin<Status>(a, 'GET', '/api/status')).body.sessions.map((x) => x.name),
      ['mine'],
    );
    // a's status as b stopped, read at a's start or heartbeat: stopped, not down.
    assert.equal(statusA.servers.find((x) => x.name === 'b')?.state, 'stopped');
    const seenByB = (await admin<Status>(b, 'GET', '/api/status')).body.servers;
    assert.deepEqual(
      seenByB.map((x) => [x.name, x.self]),
      [
        ['b', true],
        ['a', false],
      ],
    );
  });

  test(`${kind}: a second server under a running server's name is refused; the same one restarting is not`, async (t) => {
    const s = await site(t, makeDatabase);
    if (!s) return;
    await assert.rejects(s.start('a', join(s.dir, 'intruder')), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'E_SERVER_NAME_TAKEN');
      assert.match(
        err.message,
        /another imaging server named a is running on this database .*give this one another --name/,
      );
      return true;
    });
    // The refused start took nothing: a still answers, under its URL.
    const status = (await admin<Status>(s.a, 'GET', '/api/status')).body;
    assert.equal(status.servers.find((x) => x.name === 'a')?.url, s.a.url);
    // The same data folder (the server restarting, here without closing first, as after a crash) is let in.
    const again = await s.start('a', join(s.dir, 'a', 'data'));
    assert.equal((await admin<Status>(again, 'GET', '/api/status')).body.server.name, 'a');
  });
}

test('PostgreSQL: a server restarted under a new name on the same machine and data folder keeps its sessions and counters; the other keeps its own', async (t) => {
  const s = await site(t, DATABASES[0]![1]);
  if (!s) return;
  assert.equal(
    (await admin(s.a, 'POST', '/api/sessions', { name: 'mine', image: 'lab.imgc', clientCount: 5 })).status,
    201,
  );
  assert.equal(
    (await admin(s.b, 'POST', '/api/sessions', { name: 'theirs', image: 'lab.imgc', clientCount: 5 })).status,
    201,
  );
  const pc = await register(s.a);
  await call(s.a, 'POST', '/api/sessions/theirs/join', pc.token);
  const before = (await admin<Status>(s.a, 'GET', '/api/status')).body.counters;
  assert.equal(before.clientReferrals, 1);
  await s.a.close();
  const renamed = await s.start('a-renamed', join(s.dir, 'a', 'data'));
  const status = (await admin<Status>(renamed, 'GET', '/api/status')).body;
  assert.deepEqual(
    status.sessions.map((x) => x.name),
    ['mine'],
  );
  assert.equal(status.counters.clientReferrals, 1);
  assert.ok(status.counters.requestsReceived >= before.requestsReceived);
  assert.deepEqual(
    status.servers.map((x) => [x.name, x.state]),
    [
      ['a-renamed', 'up'],
      ['b', 'up'],
    ],
    'the old name is gone from the site',
  );
  // A workstation asking b for it now is referred to the renamed server.
  const asked = await call<Refusal>(s.b, 'POST', '/api/sessions/mine/join', pc.token);
  assert.equal(asked.body.error, 'E_REFERRED');
  assert.equal(asked.body.url, renamed.url);
  assert.deepEqual(
    (await admin<Status>(s.b, 'GET', '/api/status')).body.sessions.map((x) => x.name),
    ['theirs'],
  );
});

test('SQLite: on its embedded file, a server started under another name keeps its sessions and counters', async (t) => {
  const dir = await tempDir(t, 'imgcast-site-');
  const folder = join(dir, 'folder');
  mkdirSync(join(dir, 'images'), { recursive: true });
  mkdirSync(folder);
  writeFileSync(join(folder, 'hostname'), 'lab\n');
  execFileSync(IMG, ['make', folder, join(dir, 'images', 'lab.imgc')], { env: ENV, stdio: 'pipe' });
  const start = async (name: string) => {
    const server = await startServer({
      dataDir: join(dir, 'data'),
      imagesDir: join(dir, 'images'),
      host: '127.0.0.1',
      port: 0,
      range: { firstGroup: '239.77.9.1', firstPort: 31100, slots: 4 },
      version: 'test',
      name,
      logger: pino({ level: 'silent' }),
      send: neverSends,
    });
    t.after(() => server.close());
    return server;
  };
  const first = await start('old-host-name');
  assert.equal(
    (await admin(first, 'POST', '/api/sessions', { name: 'mine', image: 'lab.imgc', clientCount: 5 })).status,
    201,
  );
  const pc = await register(first);
  await call(first, 'POST', '/api/sessions/mine/join', pc.token);
  const before = (await admin<Status>(first, 'GET', '/api/status')).body.counters.requestsReceived;
  assert.ok(before >= 1);
  await first.close();
  const again = await start('new-host-name');
  const status = (await admin<Status>(again, 'GET', '/api/status')).body;
  assert.deepEqual(
    status.sessions.map((x) => [x.name, x.joined]),
    [['mine', 1]],
  );
  assert.equal(status.counters.requestsReceived, before);
  assert.deepEqual(
    status.servers.map((x) => x.name),
    ['new-host-name'],
  );
});

test('PostgreSQL: img session NAME pointed at the wrong server of the site is referred, receives from the right one over multicast, and both servers count it', async (t) => {
  const group = `239.77.${11 + Math.floor(Math.random() * 200)}.9`;
  const port = 36000 + 2 * Math.floor(Math.random() * 1000);
  const s = await site(t, DATABASES[0]![1], { realSend: { group, port } });
  if (!s) return;
  const made = await admin(s.b, 'POST', '/api/sessions', {
    name: 'room2',
    image: 'lab.imgc',
    clientCount: 1,
  });
  assert.equal(made.status, 201, JSON.stringify(made.body));
  const target = join(s.dir, 'target');
  mkdirSync(target);
  const r = await runProcess(
    IMG,
    [
      'session',
      'room2',
      '--server',
      s.a.url.replace('http://', ''),
      '--disk',
      target,
      '--interface',
      '127.0.0.1',
      '--json',
      '-v',
    ],
    ENV,
  );
  assert.equal(r.code, 0, `${r.err}\n${r.out}`);
  // (--json keeps the note "… runs on imaging server b at URL: going on there" off stderr; the followReferrals test above reads it.)
  const result = JSON.parse(r.out) as { session: string; server: string; receive: { ok: boolean } };
  assert.deepEqual([result.session, result.server], ['room2', s.b.url]);
  for (const file of ['hostname', 'data.bin'])
    assert.deepEqual(readFileSync(join(target, file)), readFileSync(join(s.dir, 'folder', file)), file);
  const statusA = (await admin<Status>(s.a, 'GET', '/api/status')).body;
  const statusB = (await admin<Status>(s.b, 'GET', '/api/status')).body;
  assert.equal(statusA.counters.clientReferrals, 1);
  assert.equal(statusB.counters.clientReferrals, 0);
  assert.equal(statusB.counters.imagesSent, 1);
  const room = statusB.sessions.find((x) => x.name === 'room2');
  assert.equal(room?.state, 'done', JSON.stringify(room));
  assert.deepEqual(
    room?.clients.map((c) => c.state),
    ['ok'],
  );
});

test('PostgreSQL: what the servers share and keep in memory follows a change made on the other within a heartbeat: settings, a workstation named or removed', async (t) => {
  const s = await site(t, DATABASES[0]![1]);
  if (!s) return;
  const pc = await register(s.b);
  // a learns of the workstation b registered, and of the administrator naming it there.
  const named = await admin(s.b, 'PATCH', `/api/workstations/${pc.id}`, { name: 'lab2-07' });
  assert.equal(named.status, 200, JSON.stringify(named.body));
  const changed = await admin(s.a, 'PATCH', '/api/settings', { autoClients: 9, names: 'lab-{nn}' });
  assert.equal(changed.status, 200, JSON.stringify(changed.body));
  const until = async (what: string, ok: () => Promise<boolean>) => {
    const end = Date.now() + 5000;
    while (!(await ok())) {
      assert.ok(Date.now() < end, `${what} within 5 s (heartbeat 200 ms)`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  await until("b has a's settings", async () => {
    const v = (await admin<{ settings: { autoClients: number; names: string } }>(s.b, 'GET', '/api/settings'))
      .body;
    return v.settings.autoClients === 9 && v.settings.names === 'lab-{nn}';
  });
  await until('a knows the workstation by the name given on b', async () => {
    const r = await admin<{ name: string }>(s.a, 'GET', `/api/workstations/${pc.id}`);
    return r.status === 200 && r.body.name === 'lab2-07';
  });
  // Removed on a: b stops taking its token.
  assert.equal((await admin(s.a, 'DELETE', `/api/workstations/${pc.id}`)).status, 200);
  await until("b no longer takes the removed workstation's token", async () => {
    const r = await call<Refusal>(s.b, 'GET', '/api/auto', pc.token);
    return r.status === 401;
  });
});
