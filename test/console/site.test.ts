/**
 * The console's Server page for a site of servers (src/console/server.js) in real headless
 * Chromium: with another server sharing the PostgreSQL database, the page lists both with
 * their addresses and states, live: the other shows up when it starts and as stopped when it
 * stops, with no reload; and the client referrals it counts show in its counters.
 */
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { pino } from 'pino';

import type { Registered } from '../../src/api/schemas.ts';
import { startServer, type RunningServer } from '../../src/server/server.ts';
import { call, ok } from '../helpers/api-calls.ts';
import { consoleLab, makeImage, shot, signIn, tab, type ConsoleLab } from '../helpers/console-browser.ts';
import { postgresUnavailable, startPostgres, type PostgresCluster } from '../helpers/postgres.ts';

let lab: ConsoleLab | undefined;
let cluster: PostgresCluster | undefined;
let database = '';
let skip: string | undefined;

before(async () => {
  skip = postgresUnavailable();
  if (skip) return;
  cluster = await startPostgres();
  database = await cluster.createDatabase();
  const got = await consoleLab({
    name: 'console-site',
    images: async (images, dir) => {
      await mkdir(join(dir, 'src'), { recursive: true });
      await writeFile(join(dir, 'src', 'hostname'), 'lab\n');
      makeImage(join(dir, 'src'), join(images, 'lab.imgc'));
    },
    server: { database, siteHeartbeatMs: 200 },
  });
  if (typeof got === 'string') skip = got;
  else lab = got;
});
after(async () => {
  await lab?.close();
  cluster?.stop();
});

test('a site: the Server page lists the other server live (up, then stopped) and counts the workstations referred to it', async (t) => {
  if (skip) return t.skip(skip);
  const l = lab!;
  const other: RunningServer = await startServer({
    dataDir: join(l.dir, 'other-data'),
    imagesDir: join(l.dir, 'images'),
    database,
    host: '127.0.0.1',
    port: 0,
    publicUrl: 'http://198.18.7.5:7740',
    range: { firstGroup: '239.78.250.1', firstPort: 33900, slots: 2 },
    version: 'test',
    name: 'lab-b',
    logger: pino({ level: 'silent' }),
    siteHeartbeatMs: 200,
    send: () => Promise.reject(new Error('no session of this test starts')),
  });
  let otherClosed = false;
  t.after(() => (otherClosed ? undefined : other.close()));
  await ok({ server: other }, 'POST', '/api/sessions', {
    body: { name: 'room-b', image: 'lab.imgc', clientCount: 5 },
  });
  const pc = await ok<Registered>({ server: l.server }, 'POST', '/api/workstations/register', {
    token: null,
    body: {
      hostname: 'pc1',
      mac: '02:00:00:00:0a:01',
      addresses: ['127.0.0.10'],
      disks: [{ path: '/dev/sda', sizeBytes: 1e9, removable: false }],
      memoryBytes: 1e9,
      cpu: { model: 'test', cores: 2 },
      dmi: {},
    },
  });
  const referred = await call<{ error: string }>({ server: l.server }, 'POST', '/api/sessions/room-b/join', {
    token: pc.token,
  });
  assert.equal(referred.body.error, 'E_REFERRED');

  const page = await tab(t, l);
  await signIn(page, l);
  await page.getByRole('heading', { name: 'Sessions', level: 1 }).waitFor();
  await page.getByRole('link', { name: 'Server' }).click();
  await page.getByRole('heading', { name: 'Site', level: 2 }).waitFor();
  const row = (name: string) => page.locator(`[data-server="${name}"]`);
  assert.equal(
    (await row('console-site').locator('td').first().innerText()).trim(),
    'console-site (this one)',
  );
  assert.equal(await row('lab-b').getByRole('link').getAttribute('href'), 'http://198.18.7.5:7740');
  assert.equal(await row('lab-b').locator('[data-state]').getAttribute('data-state'), 'up');
  assert.equal((await page.locator('[data-counter="clientReferrals"] dd').innerText()).trim(), '1');
  assert.equal((await page.locator('[data-fixed="database"]').innerText()).trim(), database);
  await shot(page, 'server-site');

  // Stopped: the page says so by itself, within a few heartbeats.
  await other.close();
  otherClosed = true;
  await row('lab-b').locator('[data-state="stopped"]').waitFor({ timeout: 10_000 });
  assert.match(await row('lab-b').locator('[data-state]').innerText(), /^stopped, last seen /);
});
