/**
 * Server settings (src/server/settings.ts and GET/PATCH /api/settings): what the pure parts
 * decide, then on a real server on 127.0.0.1 that each setting takes effect where the server
 * uses it (a new automatic session's trigger, a new session's naming template and the name a
 * joining workstation then gets, the compression of an upload and of a live master, the
 * history kept), that refusals say why and store nothing, that only an admin may read or
 * change them, and that they outlive a restart. The multicast send is a stand-in that never
 * starts: what is checked is what the server decides, not the transport.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { test, type TestContext } from 'node:test';
import { pino } from 'pino';

import type {
  HistoryEntry,
  JoinView,
  MasterView,
  Session,
  SettingsView,
  Upload,
  Workstation,
} from '../../src/api/schemas.ts';
import { startServer, type RunningServer } from '../../src/server/server.ts';
import type { SendSession } from '../../src/server/sessions.ts';
import { historyCutoff, mergeStored, namesProblem, SETTING_DEFAULTS } from '../../src/server/settings.ts';
import { call, ok, refused, register } from '../helpers/api-calls.ts';
import { tempDir } from '../helpers/env.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const IMG = join(ROOT, 'bin/img.js');
const ENV = { ...process.env, PATH: `${join(ROOT, 'node_modules/.bin')}:${process.env.PATH ?? ''}` };
const DAY = 24 * 3600_000;

const idle: SendSession = (plan) =>
  new Promise((_r, reject) =>
    plan.signal.addEventListener('abort', () => reject(plan.signal.reason as Error)),
  );

interface Fixture {
  t: TestContext;
  dir: string;
  server: RunningServer;
}

async function start(t: TestContext, dir: string): Promise<RunningServer> {
  const server = await startServer({
    dataDir: join(dir, 'data'),
    imagesDir: join(dir, 'images'),
    bootenvDir: join(dir, 'bootenv'),
    host: '127.0.0.1',
    port: 0,
    range: { firstGroup: '239.77.16.1', firstPort: 31700, slots: 3 },
    version: 'test',
    name: 'settings-test',
    logger: pino({ level: 'silent' }),
    send: idle,
    kernelArgs: 'imgcast.done=poweroff',
  });
  t.after(() => server.close());
  return server;
}

async function fixture(t: TestContext): Promise<Fixture> {
  const dir = await tempDir(t, 'imgcast-settings-');
  const folder = join(dir, 'folder');
  mkdirSync(join(folder, 'etc'), { recursive: true });
  writeFileSync(join(folder, 'etc/hostname'), 'lab\n');
  mkdirSync(join(dir, 'images'));
  execFileSync(IMG, ['make', folder, join(dir, 'images', 'lab.imgc')], { env: ENV, stdio: 'pipe' });
  return { t, dir, server: await start(t, dir) };
}

const settingsOf = async (f: Fixture) => (await ok<SettingsView>(f, 'GET', '/api/settings')).settings;

// ---------------------------------------------------------------- pure parts

test('stored values over the defaults; a value that no longer fits is passed over with the reason', () => {
  assert.deepEqual(mergeStored([]), { settings: { ...SETTING_DEFAULTS }, ignored: [] });
  const { settings, ignored } = mergeStored([
    { name: 'autoClients', value: '12' },
    { name: 'level', value: '"size"' },
    { name: 'historyDays', value: '-3' },
    { name: 'names', value: 'not json' },
    { name: 'colour', value: '"blue"' },
  ]);
  assert.deepEqual(settings, { ...SETTING_DEFAULTS, autoClients: 12, level: 'size' });
  assert.deepEqual(ignored, [
    'historyDays: -3 does not fit',
    'names: not JSON',
    'colour: not a setting of this version',
  ]);
});

test('history cutoff: none for 0 days, else that many days before now; naming templates checked', () => {
  assert.equal(historyCutoff(0, 1e12), null);
  assert.equal(historyCutoff(30, 1e12), 1e12 - 30 * DAY);
  assert.equal(namesProblem(''), null);
  assert.equal(namesProblem('lab-{nn}'), null);
  assert.match(namesProblem('lab-{x}') ?? '', /unknown field \{x\}/);
  assert.match(namesProblem('lab') ?? '', /give a number/);
});

// ---------------------------------------------------------------- the API

test('the settings and how the server was started, for admins only; refusals say why and store nothing', async (t) => {
  const f = await fixture(t);
  const v = await ok<SettingsView>(f, 'GET', '/api/settings');
  assert.deepEqual(v.settings, SETTING_DEFAULTS);
  assert.deepEqual(v.defaults, SETTING_DEFAULTS);
  const port = Number(new URL(f.server.url).port);
  assert.deepEqual(v.server.listen, { host: '127.0.0.1', port });
  assert.equal(v.server.dataDir, f.server.dataDir);
  assert.equal(v.server.imagesDir, f.server.imagesDir);
  assert.deepEqual(v.server.multicast, {
    interface: null,
    firstGroup: '239.77.16.1',
    lastGroup: '239.77.16.3',
    firstPort: 31700,
    lastPort: 31705,
    slots: 3,
  });
  assert.equal(v.server.discovery, null);
  assert.deepEqual(v.server.boot, {
    bootenvDir: join(f.dir, 'bootenv'),
    bootenvVersion: null,
    kernelArgs: 'imgcast.done=poweroff',
    pxe: null,
  });
  assert.equal(v.server.version, 'test');
  // An environment built since the start shows its version at the next look.
  mkdirSync(join(f.dir, 'bootenv'));
  writeFileSync(join(f.dir, 'bootenv', 'bootenv.json'), JSON.stringify({ imgcast: '0.9.1' }));
  assert.equal((await ok<SettingsView>(f, 'GET', '/api/settings')).server.boot.bootenvVersion, '0.9.1');

  const ws = await register(f, 'pc1');
  for (const [method, body] of [
    ['GET', undefined],
    ['PATCH', { autoClients: 9 }],
  ] as const) {
    await refused(f, 'E_FORBIDDEN', 403, method, '/api/settings', { token: ws.token, body });
    await refused(f, 'E_UNAUTHORIZED', 401, method, '/api/settings', { token: null, body });
  }
  const bad: Array<[unknown, RegExp]> = [
    [{ autoClients: 0 }, /body\/autoClients must be >= 1/],
    [{ autoClients: 2.5 }, /body\/autoClients must be integer/],
    [{ autoWaitMinutes: -1 }, /body\/autoWaitMinutes must be >= 0/],
    [{ level: 'fast' }, /body\/level/],
    [{ historyDays: -1 }, /body\/historyDays must be >= 0/],
    [{ colour: 'blue' }, /additional properties/],
    [{}, /nothing to change/],
    // A good value beside a bad one: neither is stored.
    [{ autoClients: 7, names: 'lab-{x}' }, /naming template lab-\{x\}: unknown field \{x\}/],
  ];
  for (const [body, why] of bad) {
    const r = await refused(f, 'E_BAD_REQUEST', 400, 'PATCH', '/api/settings', { body });
    assert.match(r.message, why);
  }
  const named = await call<{ field?: string }>(f, 'PATCH', '/api/settings', { body: { names: 'pc' } });
  assert.equal(named.body.field, 'names', 'the console shows the reason by the field it names');
  assert.deepEqual(await settingsOf(f), SETTING_DEFAULTS, 'nothing stored');
});

test('the trigger of a new automatic session given none is the settings; given one, its own', async (t) => {
  const f = await fixture(t);
  let s = await ok<Session>(f, 'POST', '/api/auto-sessions', { body: { name: 'before', image: 'lab.imgc' } });
  assert.deepEqual([s.clientCount, s.waitMs], [5, 15 * 60_000], 'the specification defaults');
  const v = await ok<SettingsView>(f, 'PATCH', '/api/settings', {
    body: { autoClients: 8, autoWaitMinutes: 2.5 },
  });
  assert.deepEqual([v.settings.autoClients, v.settings.autoWaitMinutes], [8, 2.5]);
  assert.deepEqual(v.defaults, SETTING_DEFAULTS, 'the defaults stay what they were');
  s = await ok<Session>(f, 'POST', '/api/auto-sessions', { body: { name: 'after', image: 'lab.imgc' } });
  assert.deepEqual([s.clientCount, s.waitMs], [8, 150_000]);
  s = await ok<Session>(f, 'POST', '/api/auto-sessions', {
    body: { name: 'own', image: 'lab.imgc', clientCount: 3, waitSeconds: 30 },
  });
  assert.deepEqual([s.clientCount, s.waitMs], [3, 30_000]);
  const before = await ok<Session>(f, 'GET', '/api/sessions/before');
  assert.deepEqual([before.clientCount, before.waitMs], [5, 15 * 60_000], 'made before: unchanged');
});

test('a new session given no naming template takes the default, and names the workstation that joins it', async (t) => {
  const f = await fixture(t);
  await ok(f, 'PATCH', '/api/settings', { body: { names: 'room4-{nn}' } });
  const s = await ok<Session>(f, 'POST', '/api/sessions', {
    body: { name: 'room4', image: 'lab.imgc', clientCount: 5 },
  });
  assert.equal(s.names, 'room4-{nn}');
  const own = await ok<Session>(f, 'POST', '/api/sessions', {
    body: { name: 'own', image: 'lab.imgc', names: 'pc-{mac}' },
  });
  assert.equal(own.names, 'pc-{mac}');
  const auto = await ok<Session>(f, 'POST', '/api/auto-sessions', {
    body: { name: 'auto', image: 'lab.imgc' },
  });
  assert.equal(auto.names, 'room4-{nn}');

  const ws = await register(f, 'unnamed-pc');
  const joined = await ok<JoinView>(f, 'POST', '/api/sessions/room4/join', { token: ws.token });
  assert.equal(joined.state, 'waiting');
  assert.equal((await ok<Workstation>(f, 'GET', `/api/workstations/${ws.id}`)).name, 'room4-01');

  await ok(f, 'PATCH', '/api/settings', { body: { names: '' } });
  const none = await ok<Session>(f, 'POST', '/api/sessions', { body: { name: 'plain', image: 'lab.imgc' } });
  assert.equal(none.names, null, "'' is no template");
});

test('an upload or a live master that gives no compression level gets the default', async (t) => {
  const f = await fixture(t);
  const up = async (name: string, level?: string) => {
    const u = await ok<Upload>(f, 'POST', '/api/uploads', { body: { name, ...(level ? { level } : {}) } });
    await ok(f, 'DELETE', `/api/uploads/${u.id}`);
    return u.level;
  };
  assert.equal(await up('a'), 'balanced');
  await ok(f, 'PATCH', '/api/settings', { body: { level: 'size' } });
  assert.equal(await up('b'), 'size');
  assert.equal(await up('c', 'speed'), 'speed', 'its own level wins');

  const master = await register(f, 'master-pc');
  const m = await ok<MasterView>(f, 'POST', '/api/sessions/live1/master', { token: master.token, body: {} });
  assert.equal(m.level, 'size');
  const other = await register(f, 'master-2');
  const m2 = await ok<MasterView>(f, 'POST', '/api/sessions/live2/master', {
    token: other.token,
    body: { level: 'none' },
  });
  assert.equal(m2.level, 'none');
});

test('history: runs older than the days kept go when the days are set and at the next start; 0 keeps all; the settings outlive a restart', async (t) => {
  const f = await fixture(t);
  for (const name of ['old', 'recent', 'older']) {
    await ok(f, 'POST', '/api/sessions', { body: { name, image: 'lab.imgc', clientCount: 3 } });
    await ok(f, 'POST', `/api/sessions/${name}/stop`, { body: { delete: true } });
  }
  const runs = async () => (await ok<HistoryEntry[]>(f, 'GET', '/api/history')).map((h) => h.session).sort();
  assert.deepEqual(await runs(), ['old', 'older', 'recent']);
  // Time cannot pass in a test: the runs are made older where they are kept.
  const age = (session: string, days: number) =>
    f.server.db
      .updateTable('history')
      .set({ finished_at: Date.now() - days * DAY })
      .where('session', '=', session)
      .execute();
  await age('old', 3);
  await age('older', 10);
  await ok(f, 'PATCH', '/api/settings', { body: { historyDays: 5 } });
  assert.deepEqual(await runs(), ['old', 'recent'], 'the 10-day-old run went when the setting changed');
  await ok(f, 'PATCH', '/api/settings', { body: { historyDays: 0 } });
  await age('recent', 400);
  await ok(f, 'PATCH', '/api/settings', { body: { level: 'speed' } });
  assert.deepEqual(await runs(), ['old', 'recent'], '0 keeps them all');
  await ok(f, 'PATCH', '/api/settings', { body: { historyDays: 2, autoClients: 11 } });
  assert.deepEqual(await runs(), []);

  // A run that ages past the days kept while the server is down goes at its next start.
  await ok(f, 'PATCH', '/api/settings', { body: { historyDays: 30 } });
  await ok(f, 'POST', '/api/sessions', { body: { name: 'last', image: 'lab.imgc', clientCount: 3 } });
  await ok(f, 'POST', '/api/sessions/last/stop', { body: { delete: true } });
  assert.deepEqual(await runs(), ['last']);
  await age('last', 40);
  await f.server.close();
  f.server = await start(t, f.dir);
  assert.deepEqual(await runs(), [], 'trimmed at the start');
  assert.deepEqual(await settingsOf(f), {
    ...SETTING_DEFAULTS,
    level: 'speed',
    autoClients: 11,
    historyDays: 30,
  });
});
