/**
 * The server's word on the imaging environment it serves (src/server/bootenv.ts): an environment
 * built for another imgcast version is named at startup (log) and in the status (API), and the
 * warning goes once bootenv.json is rebuilt, while the server runs.
 */
import assert from 'node:assert/strict';
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import { pino } from 'pino';

import type { Status } from '../../src/api/schemas.ts';
import { bootenvProblem, bootenvWarnings } from '../../src/server/bootenv.ts';
import { startServer } from '../../src/server/server.ts';
import { ok } from '../helpers/api-calls.ts';
import { tempDir } from '../helpers/env.ts';

const manifest = (imgcast: unknown) =>
  JSON.stringify({ format: 1, kernel: '6.12.0-1-amd64', imgcast, builtAt: 1, files: {} });

test('bootenvProblem: another version, no version, an unreadable file are named; the same version or no file is fine', () => {
  assert.equal(bootenvProblem(manifest('1.4.0'), '/b', '1.4.0'), null);
  assert.equal(bootenvProblem(null, '/b', '1.4.0'), null);
  assert.equal(
    bootenvProblem(manifest('1.3.2'), '/b', '1.4.0'),
    'the imaging environment in /b was built for imgcast 1.3.2, this server is 1.4.0: network-booted workstations run img 1.3.2 against it; rebuild it (imgcast bootenv build)',
  );
  assert.match(bootenvProblem(manifest(''), '/b', '1.4.0') ?? '', /does not say which imgcast version/);
  assert.match(bootenvProblem(manifest(7), '/b', '1.4.0') ?? '', /does not say which imgcast version/);
  assert.match(bootenvProblem('{"imgcast":', '/b', '1.4.0') ?? '', /unreadable bootenv\.json: rebuild it/);
});

test('a server whose imaging environment was built for another version warns at startup and in its status until it is rebuilt', async (t) => {
  const dir = await tempDir(t, 'imgcast-bootenv-');
  const bootenv = join(dir, 'bootenv');
  mkdirSync(bootenv);
  writeFileSync(join(bootenv, 'bootenv.json'), manifest('0.9.0'));
  const lines: Array<{ level: number; msg: string }> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l) as never);
      done();
    },
  });
  const server = await startServer({
    dataDir: join(dir, 'data'),
    bootenvDir: bootenv,
    host: '127.0.0.1',
    port: 0,
    version: '1.0.0',
    name: 'bootenv-test',
    logger: pino({ level: 'warn' }, sink),
  });
  t.after(() => server.close());
  const said = `the imaging environment in ${bootenv} was built for imgcast 0.9.0, this server is 1.0.0: network-booted workstations run img 0.9.0 against it; rebuild it (imgcast bootenv build)`;
  assert.ok(
    lines.some((l) => l.level === 40 && l.msg === said),
    `a warning in the startup log: ${JSON.stringify(lines)}`,
  );
  assert.deepEqual(server.warnings(), [said]);
  const f = { server };
  assert.deepEqual((await ok<Status>(f, 'GET', '/api/status')).server.warnings, [said]);

  // Rebuilt (a new file, as a build writes it): the warning goes without a restart.
  writeFileSync(join(bootenv, 'bootenv.json.new'), manifest('1.0.0'));
  renameSync(join(bootenv, 'bootenv.json.new'), join(bootenv, 'bootenv.json'));
  assert.deepEqual((await ok<Status>(f, 'GET', '/api/status')).server.warnings, []);
});

test('bootenvWarnings: none without a bootenv.json', async (t) => {
  const dir = await tempDir(t, 'imgcast-bootenv-');
  assert.deepEqual(bootenvWarnings(dir, '1.0.0')(), []);
});
