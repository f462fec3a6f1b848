/**
 * `imgcast settings show | set` (src/cli/settings.ts) run as processes against an imaging
 * server started here on 127.0.0.1: their output and exit codes, the server's reason for a
 * value it refuses, and the settings taking effect for what the CLI then makes without a value
 * of its own: `imgcast session add` given no count, `img make --server` given no level.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { test } from 'node:test';
import { pino } from 'pino';

import type { ImageDetails, SettingsView } from '../../src/api/schemas.ts';
import { startServer } from '../../src/server/server.ts';
import type { SendSession } from '../../src/server/sessions.ts';
import { ok } from '../helpers/api-calls.ts';
import { tempDir } from '../helpers/env.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const IMG = join(ROOT, 'bin/img.js');
const IMGCAST = join(ROOT, 'bin/imgcast.js');

function run(env: NodeJS.ProcessEnv, script: string, args: string[]) {
  return new Promise<{ code: number | null; out: string; err: string }>((done) => {
    const child = spawn(process.execPath, [script, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('close', (code) => done({ code, out, err }));
  });
}

const idle: SendSession = (plan) =>
  new Promise((_r, reject) =>
    plan.signal.addEventListener('abort', () => reject(plan.signal.reason as Error)),
  );

test('imgcast settings show and set: the output, the server refusing a value with its reason, and the new defaults used by session add and img make --server', async (t) => {
  const dir = await tempDir(t, 'imgcast-settings-cli-');
  const src = join(dir, 'src');
  await mkdir(join(src, 'etc'), { recursive: true });
  await writeFile(join(src, 'etc/hostname'), 'lab\n');
  await mkdir(join(dir, 'images'));
  const server = await startServer({
    dataDir: join(dir, 'data'),
    imagesDir: join(dir, 'images'),
    host: '127.0.0.1',
    port: 0,
    range: { firstGroup: '239.77.17.1', firstPort: 31800, slots: 2 },
    version: 'test',
    name: 'settings-cli',
    logger: pino({ level: 'silent' }),
    send: idle,
  });
  t.after(() => server.close());
  const f = { server };
  const env = {
    ...process.env,
    IMGCAST_SERVER: server.url.replace('http://', ''),
    IMGCAST_TOKEN: server.adminToken,
    XDG_CONFIG_HOME: join(dir, 'config'),
  };
  const imgcast = (...args: string[]) => run(env, IMGCAST, args);
  const port = new URL(server.url).port;

  let r = await imgcast('settings', 'show');
  assert.equal(r.code, 0, r.err);
  const lines = r.out.split('\n');
  assert.equal(lines[1], 'fixed until the server is started again:');
  assert.equal(lines[2], `  listen        127.0.0.1:${port}`);
  assert.equal(lines[5], `  database      ${join(server.dataDir, 'imgcast.db')}`);
  assert.equal(
    lines[6],
    '  multicast     groups 239.77.17.1-239.77.17.2, ports 31800-31803 (2 sessions sending at once), from the route to each group',
  );
  assert.deepEqual(lines.slice(10, 16), [
    'settings (imgcast settings set NAME VALUE):',
    '  autoClients      5         a new automatic session starts once this many clients joined',
    '  autoWaitMinutes  15        or this many minutes after its last new client',
    "  names            ''        naming template of a new session that gives none ('' none)",
    '  level            balanced  compression of uploads and live masters that give none',
    '  historyDays      0         days finished runs stay in the history (0: forever)',
  ]);
  r = await imgcast('settings', 'show', '--json');
  assert.deepEqual(JSON.parse(r.out), await ok<SettingsView>(f, 'GET', '/api/settings'));

  r = await imgcast('settings', 'set', 'autoClients', '9');
  assert.deepEqual([r.code, r.out, r.err], [0, 'autoClients: 5 -> 9\n', '']);
  r = await imgcast('settings', 'set', 'autoClients', 'many');
  assert.equal(r.code, 1);
  assert.equal(r.err, 'imgcast: bad body: body/autoClients must be integer [E_BAD_REQUEST]\n');
  r = await imgcast('settings', 'set', 'names', 'lab-{x}');
  assert.equal(r.code, 1);
  assert.match(r.err, /naming template lab-\{x\}: unknown field \{x\}.*\[E_BAD_REQUEST\]/);
  r = await imgcast('settings', 'set', 'colour', 'blue');
  assert.equal(r.code, 2);
  assert.match(
    r.err,
    /no setting colour; the settings are autoClients, autoWaitMinutes, names, level, historyDays/,
  );
  r = await imgcast('settings', 'set', 'level', 'size');
  assert.equal(r.code, 0, r.err);
  r = await imgcast('settings', 'show');
  assert.ok(
    r.out.includes(
      '\n  autoClients      9     a new automatic session starts once this many clients joined (default 5)\n',
    ) &&
      r.out.includes(
        '\n  level            size  compression of uploads and live masters that give none (default balanced)\n',
      ),
    r.out,
  );

  // What the CLI makes without a value of its own takes the settings.
  r = await imgcast('session', 'add', 'lab1', '--image', 'missing.imgc');
  assert.equal(r.code, 1, 'the image must exist');
  await run(env, IMG, ['make', src, join(dir, 'images', 'lab.imgc')]);
  r = await imgcast('session', 'add', 'lab1', '--image', 'lab.imgc');
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /starts once 9 client\(s\) joined, or 15:00 after the last one joined/);
  r = await imgcast('session', 'add', 'lab2', '--image', 'lab.imgc', '-c', '2');
  assert.match(r.out, /starts once 2 client\(s\) joined/);

  r = await run(env, IMG, ['make', src, '--server', env.IMGCAST_SERVER, '--name', 'up1', '--json']);
  assert.equal(r.code, 0, r.err);
  assert.equal((await ok<ImageDetails>(f, 'GET', '/api/images/details?path=up1.imgc')).level, 'size');
  r = await run(env, IMG, ['make', src, '--server', env.IMGCAST_SERVER, '--name', 'up2', '--level', 'speed']);
  assert.equal(r.code, 0, r.err);
  assert.equal((await ok<ImageDetails>(f, 'GET', '/api/images/details?path=up2.imgc')).level, 'speed');
  // Made here, no server: the level of img's own default.
  r = await run(env, IMG, ['make', src, join(dir, 'local.imgc'), '--json']);
  assert.equal(r.code, 0, r.err);
  assert.equal((JSON.parse(r.out) as { level: string }).level, 'balanced');
});
