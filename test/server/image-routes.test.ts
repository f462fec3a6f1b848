/**
 * The image explorer over HTTP (src/server/image-routes.ts) on a real server and a real image
 * made by `img make` of a folder: what it holds, a folder's entries, a folder left out of file
 * set 2 and put back, refusals that change nothing (an image a session waits to send, a path
 * the image lacks, a workstation's token), verify of a sound and of a damaged image, compact,
 * a folder added from the browser and the paths that would leave it, and the progress of
 * verify, compact and adds as the live status carries it.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { open, readFile, readdir } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join, resolve } from 'node:path';
import { test, type TestContext } from 'node:test';
import { pino } from 'pino';

import type {
  ImageDetails,
  ImageFilesAdded,
  ImageJob,
  ImageTree,
  ImageVerifyReport,
  Status,
} from '../../src/api/schemas.ts';
import { RECORD_HEADER_SIZE } from '../../src/image/format.ts';
import { ImageReader } from '../../src/image/reader.ts';
import { startServer, type RunningServer } from '../../src/server/server.ts';
import type { SendSession } from '../../src/server/sessions.ts';
import { call, ok, register } from '../helpers/api-calls.ts';
import { tempDir } from '../helpers/env.ts';
import { openEvents } from '../helpers/events.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const IMG = join(ROOT, 'bin/img.js');
const ENV = { ...process.env, PATH: `${join(ROOT, 'node_modules/.bin')}:${process.env.PATH ?? ''}` };

const idle: SendSession = (plan) =>
  new Promise((_r, reject) =>
    plan.signal.addEventListener('abort', () => reject(plan.signal.reason as Error)),
  );

async function fixture(
  t: TestContext,
  o: { symlink?: boolean; randomBytes?: number; live?: { minIntervalMs: number } } = {},
): Promise<{ server: RunningServer; image: string }> {
  const dir = await tempDir(t, 'imgcast-image-routes-');
  const folder = join(dir, 'folder');
  mkdirSync(join(folder, 'etc', 'ssh'), { recursive: true });
  writeFileSync(join(folder, 'etc', 'hostname'), 'lab\n');
  writeFileSync(join(folder, 'etc', 'ssh', 'sshd_config'), 'Port 22\n');
  writeFileSync(join(folder, 'data.bin'), Buffer.alloc(300_000, 7));
  // A link in the image to a folder of the machine it is restored on.
  if (o.symlink) symlinkSync('/usr/lib', join(folder, 'lib'));
  // Incompressible and deduplicating nothing: a chunk of work each 4 MiB, for progress to show.
  if (o.randomBytes) writeFileSync(join(folder, 'random.bin'), randomBytes(o.randomBytes));
  mkdirSync(join(dir, 'images'));
  const image = join(dir, 'images', 'lab.imgc');
  execFileSync(IMG, ['make', folder, image], { env: ENV, stdio: 'pipe' });
  const server = await startServer({
    dataDir: join(dir, 'data'),
    imagesDir: join(dir, 'images'),
    host: '127.0.0.1',
    port: 0,
    range: { firstGroup: '239.77.15.1', firstPort: 31600, slots: 2 },
    version: 'test',
    name: 'image-routes',
    logger: pino({ level: 'silent' }),
    send: idle,
    ...(o.live ? { live: o.live } : {}),
  });
  t.after(() => server.close());
  return { server, image };
}

const tree = (f: { server: RunningServer }, dir: string, fileset?: number) =>
  ok<ImageTree>(
    f,
    'GET',
    `/api/images/tree?path=lab.imgc&dir=${encodeURIComponent(dir)}${fileset ? `&fileset=${fileset}` : ''}`,
  );
const details = (f: { server: RunningServer }) =>
  ok<ImageDetails>(f, 'GET', '/api/images/details?path=lab.imgc');

test('details and tree of an image; a folder left out of file set 2 and put back; refused while a session waits to send it', async (t) => {
  const f = await fixture(t);
  const d = await details(f);
  assert.equal(d.name, 'lab.imgc');
  assert.equal(d.generation, 1);
  assert.equal(d.disk, undefined, 'a folder capture has no disk layout');
  assert.deepEqual(
    (d.volumes as Array<Record<string, unknown>>).map((v) => [v.kind, v.filesystem, v.entries]),
    [['files', 'directory', 6]],
  );
  assert.ok(d.filesets.every((s) => s.excludedEntries === 0));
  assert.doesNotMatch(JSON.stringify(d), new RegExp(f.image), 'no server path in the answer');

  const root = await tree(f, '.');
  assert.deepEqual(
    root.entries.map((e) => [e.path, e.type, e.size, e.excludedFrom]),
    [
      ['data.bin', 'file', 300_000, []],
      ['etc', 'dir', 0, []],
    ],
  );

  const r = await ok<{ changed: number }>(f, 'POST', '/api/images/exclude', {
    body: { path: 'lab.imgc', fileset: 2, paths: ['etc'], excluded: true },
  });
  assert.equal(r.changed, 4, 'etc, etc/hostname, etc/ssh, etc/ssh/sshd_config');
  assert.deepEqual(
    (await tree(f, 'etc')).entries.map((e) => [e.path, e.excludedFrom]),
    [
      ['etc/hostname', [2]],
      ['etc/ssh', [2]],
    ],
  );
  assert.deepEqual(
    (await tree(f, '.', 2)).entries.map((e) => e.path),
    ['data.bin'],
    'file set 2 no longer holds etc',
  );
  const after = await details(f);
  assert.equal(after.generation, 2);
  assert.deepEqual(
    after.filesets.filter((s) => s.excludedEntries > 0).map((s) => [s.number, s.excludedEntries, s.bytes]),
    [[2, 4, 12]],
  );

  // A session waiting to send the image: no change until it is over; the refusal changes nothing.
  await ok(f, 'POST', '/api/sessions', { body: { name: 'room1', image: 'lab.imgc', clientCount: 3 } });
  const refused = await call<{ error: string; message: string; session: string }>(
    f,
    'POST',
    '/api/images/exclude',
    {
      body: { path: 'lab.imgc', fileset: 2, paths: ['etc'], excluded: false },
    },
  );
  assert.equal(refused.status, 409);
  assert.equal(refused.body.error, 'E_IMAGE_IN_USE');
  assert.equal(refused.body.session, 'room1');
  assert.equal((await call(f, 'POST', '/api/images/compact', { body: { path: 'lab.imgc' } })).status, 409);
  assert.equal((await details(f)).generation, 2, 'unchanged');
  await ok(f, 'DELETE', '/api/sessions/room1');

  await ok(f, 'POST', '/api/images/exclude', {
    body: { path: 'lab.imgc', fileset: 2, paths: ['etc/ssh'], excluded: false },
  });
  assert.deepEqual(
    (await tree(f, 'etc')).entries.map((e) => [e.path, e.excludedFrom]),
    [
      ['etc/hostname', [2]],
      ['etc/ssh', []],
    ],
    'putting a folder back puts back what is below it, and its parents',
  );

  // Bad input: a path the image lacks, a file set out of range, an image outside the directory, a workstation.
  const missing = await call<{ error: string }>(f, 'POST', '/api/images/exclude', {
    body: { path: 'lab.imgc', fileset: 2, paths: ['nope'], excluded: true },
  });
  assert.deepEqual([missing.status, missing.body.error], [422, 'E_PATH_NOT_FOUND']);
  assert.equal(
    (
      await call(f, 'POST', '/api/images/exclude', {
        body: { path: 'lab.imgc', fileset: 11, paths: ['etc'], excluded: true },
      })
    ).status,
    400,
  );
  assert.equal((await call(f, 'GET', '/api/images/tree?path=../x.imgc')).status, 400);
  const ws = await register(f, 'pc1');
  assert.equal((await call(f, 'GET', '/api/images/details?path=lab.imgc', { token: ws.token })).status, 403);
  assert.equal((await details(f)).generation, 3, 'only the one good edit since');
});

test('verify reports a sound image, then the damage of a flipped byte; compact reclaims what edits left behind', async (t) => {
  const f = await fixture(t);
  const sound = await ok<ImageVerifyReport>(f, 'POST', '/api/images/verify', { body: { path: 'lab.imgc' } });
  assert.equal(sound.ok, true);
  assert.ok(sound.chunksChecked >= 1);
  assert.deepEqual(sound.problems, []);

  // Edits append: compact drops the manifests they left behind.
  await ok(f, 'POST', '/api/images/exclude', {
    body: { path: 'lab.imgc', fileset: 3, paths: ['etc'], excluded: true },
  });
  const before = (await readFile(f.image)).length;
  const c = await ok<{ bytesBefore: number; bytesAfter: number }>(f, 'POST', '/api/images/compact', {
    body: { path: 'lab.imgc' },
  });
  assert.equal(c.bytesBefore, before);
  assert.ok(c.bytesAfter < c.bytesBefore, `compact: ${c.bytesBefore} → ${c.bytesAfter}`);
  assert.equal((await details(f)).filesets[2]!.excludedEntries, 4, 'the edit survives compaction');

  const r = await ImageReader.open(f.image);
  const [id] = [...r.chunkIds()];
  const info = r.chunk(id!)!;
  await r.close();
  const fh = await open(f.image, 'r+');
  const b = Buffer.alloc(1);
  const at = info.offset + RECORD_HEADER_SIZE + Math.floor(info.storedLength / 3);
  await fh.read(b, 0, 1, at);
  b[0]! ^= 0x80;
  await fh.write(b, 0, 1, at);
  await fh.close();
  const damaged = await ok<ImageVerifyReport>(f, 'POST', '/api/images/verify', {
    body: { path: 'lab.imgc' },
  });
  assert.equal(damaged.ok, false);
  assert.deepEqual(
    damaged.problems.map((p) => p.code),
    ['E_CHUNK_CORRUPT'],
  );
});

test('a file added from the browser lands in the folder asked, in every file set; a name taken is refused unless replaced', async (t) => {
  const f = await fixture(t);
  const put = (q: string, body: string) =>
    fetch(`${f.server.url}/api/images/files?${q}`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${f.server.adminToken}`, 'content-type': 'application/octet-stream' },
      body,
    });
  await ok(f, 'POST', '/api/images/exclude', {
    body: { path: 'lab.imgc', fileset: 2, paths: ['etc'], excluded: true },
  });
  let r = await put('path=lab.imgc&at=etc/drivers&name=nic.inf', 'driver one\n');
  assert.equal(r.status, 200, await r.clone().text());
  assert.deepEqual(await r.json(), { added: 1, bytes: 11, path: 'etc/drivers/nic.inf' });
  assert.deepEqual(
    (await tree(f, 'etc/drivers')).entries.map((e) => [e.path, e.size, e.excludedFrom]),
    [['etc/drivers/nic.inf', 11, []]],
    'added later: in every file set, even under a folder set 2 leaves out',
  );

  r = await put('path=lab.imgc&at=etc/drivers&name=nic.inf', 'driver two, longer\n');
  assert.equal(r.status, 422);
  assert.equal(((await r.json()) as { error: string }).error, 'E_PATH_EXISTS');
  r = await put('path=lab.imgc&at=etc/drivers&name=nic.inf&replace=true', 'driver two, longer\n');
  assert.equal(r.status, 200);
  assert.deepEqual(
    (await tree(f, 'etc/drivers')).entries.map((e) => [e.path, e.size]),
    [['etc/drivers/nic.inf', 19]],
  );
  for (const bad of ['..', 'a/b', '.']) {
    assert.equal((await put(`path=lab.imgc&name=${encodeURIComponent(bad)}`, 'x')).status, 400, bad);
  }
  // What the image holds is what was sent: extracted with img, byte for byte.
  const out = join(resolve(f.image, '..', '..'), 'out');
  execFileSync(IMG, ['extract', f.image, 'etc/drivers/nic.inf', '--to', out], { env: ENV, stdio: 'pipe' });
  assert.equal(await readFile(join(out, 'etc/drivers/nic.inf'), 'utf8'), 'driver two, longer\n');
  const { readdir } = await import('node:fs/promises');
  assert.deepEqual(await readdir(join(resolve(f.image, '..'))), ['lab.imgc'], 'no upload folder left behind');
});

/** A folder's files as the console sends them (application/x-imgcast-files). */
function filesBody(files: Array<[string, string]>): Buffer {
  return Buffer.concat(
    files.flatMap(([path, content]) => [
      Buffer.from(`${JSON.stringify({ path, size: Buffer.byteLength(content) })}\n`),
      Buffer.from(content),
    ]),
  );
}

const postFolder = (f: { server: RunningServer }, q: string, body: Buffer, token = f.server.adminToken) =>
  fetch(`${f.server.url}/api/images/folder?${q}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/x-imgcast-files' },
    body,
  });

test('a folder added from the browser lands with its subfolders, byte for byte; paths that would leave it are refused and change nothing', async (t) => {
  const f = await fixture(t, { symlink: true });
  const drivers = filesBody([
    ['drivers/readme.txt', 'read me\n'],
    ['drivers/nic/e1000.inf', '[e1000]\n'],
    ['drivers/nic/intel/i40e.inf', '[i40e]\n'],
  ]);
  const r = await postFolder(f, 'path=lab.imgc&at=etc', drivers);
  assert.equal(r.status, 200, await r.clone().text());
  assert.deepEqual((await r.json()) as ImageFilesAdded, {
    added: 6,
    bytes: 23,
    path: 'etc/drivers',
    files: 3,
  });
  assert.deepEqual(
    (await tree(f, 'etc/drivers/nic')).entries.map((e) => [e.path, e.type]),
    [
      ['etc/drivers/nic/e1000.inf', 'file'],
      ['etc/drivers/nic/intel', 'dir'],
    ],
  );
  const out = join(resolve(f.image, '..', '..'), 'out');
  execFileSync(IMG, ['extract', f.image, 'etc/drivers', '--to', out], { env: ENV, stdio: 'pipe' });
  assert.equal(await readFile(join(out, 'etc/drivers/nic/intel/i40e.inf'), 'utf8'), '[i40e]\n');
  assert.equal(await readFile(join(out, 'etc/drivers/readme.txt'), 'utf8'), 'read me\n');

  // Again: the folder is there; replace=true puts the new one in its place.
  let again = await postFolder(f, 'path=lab.imgc&at=etc', filesBody([['drivers/only.txt', 'x']]));
  assert.equal(again.status, 422);
  assert.equal(((await again.json()) as { error: string }).error, 'E_PATH_EXISTS');
  again = await postFolder(f, 'path=lab.imgc&at=etc&replace=true', filesBody([['drivers/only.txt', 'x']]));
  assert.equal(again.status, 200);
  assert.deepEqual(
    (await tree(f, 'etc/drivers')).entries.map((e) => e.path),
    ['etc/drivers/only.txt'],
  );

  const generation = (await details(f)).generation;
  const refusals: Array<[string, Buffer, number, string, RegExp]> = [
    ['at=etc', filesBody([['drivers/../../../root/x', 'x']]), 400, 'E_PATH_ESCAPE', /goes up with '\.\.'/],
    ['at=etc', filesBody([['/etc/cron.d/x', 'x']]), 400, 'E_PATH_ESCAPE', /is absolute/],
    [
      'at=etc',
      filesBody([
        ['a/x', 'x'],
        ['b/y', 'y'],
      ]),
      400,
      'E_BAD_REQUEST',
      /one folder sent/,
    ],
    // Under a symlink of the image: restored, the files would land where it points (/usr/lib).
    ['at=lib', filesBody([['drivers/x', 'x']]), 400, 'E_PATH_ESCAPE', /"lib" is a symlink in the image/],
    ['at=lib/deeper', filesBody([['drivers/x', 'x']]), 400, 'E_PATH_ESCAPE', /"lib" is a symlink/],
    ['at=data.bin', filesBody([['drivers/x', 'x']]), 422, 'E_PATH_EXISTS', /is a file in the image/],
    ['at=..%2F..', filesBody([['drivers/x', 'x']]), 400, 'E_PATH_ESCAPE', /above the image root/],
    ['at=etc', Buffer.from('{"path":"drivers/x","size":100}\nshort'), 400, 'E_BAD_REQUEST', /ends inside/],
  ];
  for (const [q, body, status, code, why] of refusals) {
    const res = await postFolder(f, `path=lab.imgc&${q}`, body);
    const b = (await res.json()) as { error: string; message: string };
    assert.equal(res.status, status, `${q}: ${JSON.stringify(b)}`);
    assert.equal(b.error, code, `${q}: ${b.message}`);
    assert.match(b.message, why);
  }
  // The file route shares the image-side check.
  const put = await fetch(`${f.server.url}/api/images/files?path=lab.imgc&at=lib&name=x`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${f.server.adminToken}`, 'content-type': 'application/octet-stream' },
    body: 'x',
  });
  assert.equal(put.status, 400);
  assert.equal(((await put.json()) as { error: string }).error, 'E_PATH_ESCAPE');

  const ws = await register(f, 'pc1');
  const asWorkstation = await postFolder(f, 'path=lab.imgc', filesBody([['d/x', 'x']]), ws.token);
  assert.equal(asWorkstation.status, 403);
  const wrongType = await fetch(`${f.server.url}/api/images/folder?path=lab.imgc`, {
    method: 'POST',
    headers: { authorization: `Bearer ${f.server.adminToken}`, 'content-type': 'text/plain' },
    body: 'x',
  });
  assert.equal(wrongType.status, 415);
  assert.equal((await details(f)).generation, generation, 'no refusal changed the image');
  assert.deepEqual(await readdir(resolve(f.image, '..')), ['lab.imgc'], 'no upload folder left behind');
});

test('verify, compact and an add are jobs of the live status while they run, with their progress, gone once they answer', async (t) => {
  // 10 chunks of 4 MiB, and every change a status event of its own.
  const f = await fixture(t, { randomBytes: 40 * 1024 * 1024, live: { minIntervalMs: 0 } });
  const s = await openEvents(f, f.server.adminToken, 30_000);
  t.after(() => s.close());
  await s.until(() => s.events.length > 0, 'the first status');
  const jobs = (kind: string) =>
    s.events
      .filter((e) => e.event === 'status')
      .flatMap((e) => (e.data as Status).jobs)
      .filter((j: ImageJob) => j.kind === kind);
  const settled = () => {
    const last = s.events.filter((e) => e.event === 'status').at(-1);
    return last !== undefined && (last.data as Status).jobs.length === 0;
  };

  const report = await ok<ImageVerifyReport>(f, 'POST', '/api/images/verify', { body: { path: 'lab.imgc' } });
  await s.until(settled, 'the verify gone from the status');
  const verify = jobs('verify');
  t.diagnostic(`verify progress seen: ${verify.map((j) => `${j.done}/${j.total}`).join(' ')}`);
  assert.ok(report.chunksTotal >= 10);
  assert.ok(verify.every((j) => j.image === 'lab.imgc' && j.unit === 'chunks'));
  assert.equal(new Set(verify.map((j) => j.id)).size, 1, 'one job');
  assert.ok(
    verify.some((j) => j.done > 0 && j.done < j.total && j.total === report.chunksTotal),
    'progress between the start and the end',
  );
  assert.deepEqual(
    verify.map((j) => j.done),
    verify.map((j) => j.done).sort((a, b) => a - b),
    'never backwards',
  );
  assert.equal(verify.at(-1)!.done, report.chunksTotal);

  await ok(f, 'POST', '/api/images/compact', { body: { path: 'lab.imgc' } });
  await s.until(settled, 'the compact gone from the status');
  const compact = jobs('compact');
  t.diagnostic(`compact progress seen: ${compact.map((j) => `${j.done}/${j.total}`).join(' ')}`);
  assert.ok(compact.some((j) => j.done > 0 && j.done < j.total));

  const big = randomBytes(12 * 1024 * 1024);
  const put = await fetch(`${f.server.url}/api/images/files?path=lab.imgc&name=big.bin`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${f.server.adminToken}`, 'content-type': 'application/octet-stream' },
    body: big,
  });
  assert.equal(put.status, 200, await put.clone().text());
  await s.until(settled, 'the add gone from the status');
  const add = jobs('add');
  t.diagnostic(`add progress seen: ${add.map((j) => `${j.done}/${j.total}`).join(' ')}`);
  const sized = add.filter((j) => j.total > 0);
  assert.ok(sized.length > 0 && sized.every((j) => j.unit === 'bytes' && j.total === big.length));
  assert.ok(
    sized.some((j) => j.done > 0 && j.done < j.total),
    'the add has progress between its start and its end',
  );
  assert.equal((await ok<Status>(f, 'GET', '/api/status')).jobs.length, 0);
});
