/**
 * The boot phases a workstation reports from the network-booted environment
 * (src/client/phases.ts), to a real server over HTTP: in order, each once, only in the
 * environment, and a server that does not take them never fails the caller.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { join } from 'node:path';
import { pino } from 'pino';

import { ApiClient } from '../../src/api/client.ts';
import type { Workstation } from '../../src/api/schemas.ts';
import { inBootEnvironment, phaseReporter } from '../../src/client/phases.ts';
import { startServer } from '../../src/server/server.ts';
import { tempDir } from '../helpers/env.ts';
import { ok, register } from '../helpers/api-calls.ts';

test('phases go to the server in order and once each; a server that refuses or is gone fails nothing', async (t) => {
  const dir = await tempDir(t, 'imgcast-phases-');
  const server = await startServer({
    dataDir: join(dir, 'data'),
    host: '127.0.0.1',
    port: 0,
    version: 'test',
    logger: pino({ level: 'silent' }),
    range: { firstGroup: '239.77.11.1', firstPort: 31300, slots: 2 },
  });
  t.after(() => server.close());
  const f = { server };
  const pc = await register(f, 'lab6-01', { mac: '52:54:00:66:00:01' });
  const phase = async () => (await ok<Workstation>(f, 'GET', '/api/workstations/lab6-01')).phase;

  // Outside the environment: nothing is sent.
  const off = phaseReporter(new ApiClient(server.url, pc.token), false);
  off.report('joined');
  await off.flush();
  assert.equal(await phase(), null);

  const seen: string[] = [];
  const api = new ApiClient(server.url, pc.token);
  const request = api.request.bind(api);
  api.request = async <T>(method: string, path: string, o?: Parameters<typeof request>[2]) => {
    seen.push((o?.body as { phase: string }).phase);
    return request<T>(method, path, o);
  };
  const on = phaseReporter(api, true);
  for (const p of [
    'environment',
    'joined',
    'joined',
    'imaging',
    'verifying',
    'identity',
    'rebooting',
  ] as const)
    on.report(p);
  await on.flush();
  assert.deepEqual(seen, ['environment', 'joined', 'imaging', 'verifying', 'identity', 'rebooting']);
  assert.equal(await phase(), 'rebooting');

  // A token the server does not know, then no server at all: warned once, never thrown.
  const warnings: string[] = [];
  const bad = phaseReporter(new ApiClient(server.url, 'not-a-token'), true, (l) => warnings.push(l));
  bad.report('environment');
  bad.report('joined');
  await bad.flush();
  assert.equal(warnings.length, 1);
  assert.match(warnings[0]!, /did not take the boot phase environment: the token is not valid/);
  const gone = phaseReporter(new ApiClient('127.0.0.1:9'), true);
  gone.report('imaging');
  await gone.flush();
  assert.equal(await phase(), 'rebooting');
});

test('the environment is recognised by IMGCAST_BOOTENV=1 only', () => {
  assert.equal(inBootEnvironment({ IMGCAST_BOOTENV: '1' }), true);
  assert.equal(inBootEnvironment({ IMGCAST_BOOTENV: '0' }), false);
  assert.equal(inBootEnvironment({}), false);
});
