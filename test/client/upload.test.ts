/**
 * `img make --server` end to end: the real CLI (bin/img.js) in a child process against a
 * real server in this one. A folder and, as root, an ext4 disk on a loop device go onto the
 * server, are listed, verify clean and restore to identical files; a client killed mid-upload
 * or stopped leaves no image; names that are taken or outside the directory are refused
 * before anything is read.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { link, mkdir, readdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';

import { ApiClient, ApiError } from '../../src/api/client.ts';
import type { Image, Upload, Workstation } from '../../src/api/schemas.ts';
import { UploadSink, connect } from '../../src/client/upload.ts';
import { registration } from '../../src/client/registration.ts';
import { mountFilesystem, type Mounted } from '../../src/disk/filesystem.ts';
import { attachLoop, detachLoop } from '../../src/disk/device.ts';
import { chunkId, encodeChunk } from '../../src/image/codec.ts';
import { ImageReader } from '../../src/image/reader.ts';
import { trackedLoops } from '../disk/loops.ts';
import { MiB, mbrExtDisk } from '../engine/disk-fixtures.ts';
import { compareTrees } from '../engine/tree-compare.ts';
import { hasCommand, loopUnavailable, skipUnless, tempDir } from '../helpers/env.ts';
import { uploadServer } from '../helpers/upload-server.ts';
import { fileEntry, manifestOf, textData } from '../image/fixtures.ts';

const BIN = new URL('../../bin/img.js', import.meta.url).pathname;

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  out: string;
  err: string;
}

/** Runs img in a child process without blocking this one (the server answers from here). */
function img(args: string[], opts: { env?: Record<string, string>; onStart?: (pid: number) => void } = {}) {
  const child = spawn(process.execPath, [BIN, ...args], {
    env: { ...process.env, IMGCAST_TOKEN: '', ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const done = new Promise<Run>((resolve) =>
    child.on('close', (code, signal) => resolve({ code, signal, out, err })),
  );
  return { child, done };
}

const run = (args: string[], env?: Record<string, string>) => img(args, { env }).done;

const listed = async (admin: ApiClient) =>
  (await admin.request<Image[]>('GET', '/api/images')).map((i) => i.name);

async function filesIn(dir: string): Promise<string[]> {
  return (await readdir(dir, { recursive: true, withFileTypes: true }))
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name).slice(dir.length + 1))
    .sort();
}

async function until(what: string, check: () => Promise<boolean>, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A folder with what a capture must keep: text, big and random files, a duplicate, links, an empty file. */
async function richFolder(root: string): Promise<void> {
  await mkdir(join(root, 'docs/deep/er'), { recursive: true });
  await mkdir(join(root, 'empty-dir'));
  for (let i = 0; i < 40; i++)
    await writeFile(join(root, 'docs', `note${i}.txt`), textData(3000 + i * 97, i + 1));
  await writeFile(join(root, 'docs/deep/er/big.txt'), textData(9 * MiB + 123, 77));
  await writeFile(join(root, 'docs/deep/er/same.txt'), textData(9 * MiB + 123, 77));
  await writeFile(join(root, 'random.bin'), randomBytes(5 * MiB + 7));
  await writeFile(join(root, 'empty'), '');
  await symlink('docs/note1.txt', join(root, 'link'));
  await link(join(root, 'docs/note2.txt'), join(root, 'hardlink'));
}

test('a folder captured onto the server is listed, verifies clean and restores to identical files', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await richFolder(src);
  const { admin, images, host } = await uploadServer(t);

  const r = await run(['make', src, '--server', host, '--name', 'lab/folder', '--level', 'speed', '--json']);
  assert.equal(r.code, 0, r.err);
  const info = JSON.parse(r.out);
  assert.equal(info.path, 'lab/folder.imgc');
  assert.equal(info.image.name, 'lab/folder.imgc');
  assert.equal(info.server, `http://${host}`);
  assert.equal(info.level, 'speed');
  assert.ok(
    info.upload.chunksDeduplicated >= 3,
    `the duplicate's chunks are sent once: ${JSON.stringify(info.upload)}`,
  );
  assert.ok(info.upload.storedBytesSent < info.upload.rawBytesSent * 0.7, 'compressed on the workstation');
  assert.equal(info.upload.storedBytesSent, info.chunkStoredBytes, 'the server kept the bytes as sent');
  assert.deepEqual(await listed(admin), ['lab/folder.imgc']);
  assert.deepEqual(await filesIn(images), ['lab/folder.imgc'], 'nothing else is left in the image directory');

  // This machine registered itself to upload.
  const ws = await admin.request<Workstation[]>('GET', '/api/workstations');
  assert.equal(ws.length, 1);

  const image = join(images, 'lab/folder.imgc');
  const v = await run(['verify', image, '--json']);
  assert.equal(v.code, 0, v.out + v.err);
  assert.equal(JSON.parse(v.out).ok, true);
  const out = join(dir, 'out');
  const back = await run(['restore', image, out]);
  assert.equal(back.code, 0, back.err);
  assert.deepEqual(await compareTrees(src, out), []);

  // The same with an admin token instead of a registration, in human form.
  const again = await run(['make', src, '--server', host, '--name', 'again'], {
    IMGCAST_TOKEN: admin.token!,
  });
  assert.equal(again.code, 0, again.err);
  assert.match(again.out, /on server: +http:\/\/127\.0\.0\.1:\d+\nimage: +again\.imgc/);
  assert.match(again.out, /sent: +\d+ chunks, [\d.]+ MiB compressed from [\d.]+ MiB/);
  assert.deepEqual(await listed(admin), ['again.imgc', 'lab/folder.imgc']);
});

test('an ext4 disk on a loop device captured onto the server restores to identical files', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  if (!hasCommand('sfdisk')) return void t.skip('needs sfdisk');
  const dir = await tempDir(t);
  const fixture = await mbrExtDisk(dir, { dataBytes: 12 * MiB });
  const loops = trackedLoops(t);
  const dev = await loops.attach(fixture.disk, { readOnly: true });
  const { admin, images, host } = await uploadServer(t);

  const r = await run(['make', dev, '--server', host, '--name', 'mbr', '--json']);
  assert.equal(r.code, 0, r.err);
  const info = JSON.parse(r.out);
  assert.equal(info.source.kind, 'disk');
  assert.deepEqual(await listed(admin), ['mbr.imgc']);
  const image = join(images, 'mbr.imgc');
  const v = await run(['verify', image]);
  assert.equal(v.code, 0, v.out + v.err);

  // The same content as a local capture of the same disk: every chunk id and file the same.
  const [up, local] = await Promise.all([ImageReader.open(image), ImageReader.open(fixture.image)]);
  t.after(() => Promise.all([up.close(), local.close()]));
  const strip = (m: typeof up.manifest) =>
    JSON.stringify(m, (k, v: unknown) =>
      ['imageId', 'createdAt', 'source', 'atimeNs', 'level'].includes(k) ? undefined : v,
    );
  assert.equal(strip(up.manifest), strip(local.manifest));

  const target = join(dir, 'restored.img');
  // The fixture's own layout, so that each partition is where the reference has it.
  const back = await run(['restore', image, target, '--create', '--keep-sizes', '--verify-after']);
  assert.equal(back.code, 0, back.err);
  const mounts: Mounted[] = [];
  t.after(async () => {
    for (const m of mounts.reverse()) await m.unmount().catch(() => {});
  });
  for (const p of fixture.parts) {
    const pair: string[] = [];
    for (const file of [fixture.disk, target]) {
      const loop = await attachLoop(file, { offset: p.start, size: p.size, readOnly: true });
      t.after(() => detachLoop(loop).catch(() => {}));
      const m = await mountFilesystem(loop, 'ext4', { readOnly: true });
      mounts.push(m);
      pair.push(m.dir);
    }
    assert.deepEqual(await compareTrees(pair[0]!, pair[1]!, { ignoreRoot: true }), []);
  }
});

test('a chunk whose bytes do not match its id is refused, and nothing is listed', async (t) => {
  const { admin, images, host } = await uploadServer(t);
  const up = await admin.request<Upload>('POST', '/api/uploads', { body: { name: 'forged' } });
  const real = textData(50_000, 1);
  const forged = encodeChunk(textData(50_000, 2), 'speed');
  await assert.rejects(
    admin.request('PUT', `/api/uploads/${up.id}/chunks/${chunkId(real)}`, {
      bytes: forged.stored,
      headers: { 'x-imgcast-codec': String(forged.codec), 'x-imgcast-raw-length': String(real.length) },
    }),
    (err: unknown) => err instanceof ApiError && err.code === 'E_CHUNK_INVALID' && err.status === 422,
  );
  await assert.rejects(
    admin.request('POST', `/api/uploads/${up.id}/commit`, {
      body: { manifest: manifestOf([fileEntry('f', [{ id: chunkId(real), rawLength: real.length }])]) },
    }),
    (err: unknown) => err instanceof ApiError && err.code === 'E_CHUNK_MISSING',
  );
  assert.deepEqual(await listed(admin), []);
  assert.deepEqual(await filesIn(images), []);
  // The server is none the worse: a real capture goes through after it.
  const dir = await tempDir(t);
  await writeFile(join(dir, 'a.txt'), real);
  const r = await run(['make', dir, '--server', host, '--name', 'forged']);
  assert.equal(r.code, 0, r.err);
  assert.deepEqual(await listed(admin), ['forged.imgc']);
});

/** A folder that takes seconds to capture at --level size: eight chunks of text, each different. */
async function slowFolder(root: string): Promise<void> {
  await mkdir(root, { recursive: true });
  for (let i = 0; i < 8; i++) await writeFile(join(root, `part${i}.txt`), textData(4 * MiB, 100 + i));
}

test('a client killed mid-upload leaves no image, and no file once the upload has been idle', async (t) => {
  const dir = await tempDir(t);
  await slowFolder(join(dir, 'src'));
  // Idle after 4 s: the kill, and the checks that the partial file is still there, must fit in
  // it on a loaded machine (1.5 s did not once, with a CI run beside).
  const { admin, images, host } = await uploadServer(t, { idleMs: 4000 });
  const { child, done } = img([
    'make',
    join(dir, 'src'),
    '--server',
    host,
    '--name',
    'killed',
    '--level',
    'size',
  ]);
  await until('the first chunks on the server', async () => {
    const ups = await admin.request<Upload[]>('GET', '/api/uploads');
    return (ups[0]?.chunks ?? 0) >= 2;
  });
  child.kill('SIGKILL');
  const r = await done;
  assert.equal(r.signal, 'SIGKILL');
  assert.deepEqual(await listed(admin), []);
  assert.equal((await filesIn(images)).length, 1, 'the partial upload is there until the idle timeout');
  await until(
    'the idle upload to be aborted',
    async () => (await admin.request<Upload[]>('GET', '/api/uploads')).length === 0,
  );
  assert.deepEqual(await filesIn(images), []);
  assert.deepEqual(await listed(admin), []);
});

test('a client stopped with SIGINT drops its upload on the server at once', async (t) => {
  const dir = await tempDir(t);
  await slowFolder(join(dir, 'src'));
  const { admin, images, host } = await uploadServer(t);
  const { child, done } = img([
    'make',
    join(dir, 'src'),
    '--server',
    host,
    '--name',
    'stopped',
    '--level',
    'size',
  ]);
  await until('the first chunk on the server', async () => {
    const ups = await admin.request<Upload[]>('GET', '/api/uploads');
    return (ups[0]?.chunks ?? 0) >= 1;
  });
  child.kill('SIGINT');
  const r = await done;
  assert.equal(r.code, 130, r.err);
  assert.match(r.err, /interrupted by SIGINT/);
  // The default idle time is minutes: only the client's own abort can have ended it this soon.
  assert.deepEqual(await admin.request('GET', '/api/uploads'), []);
  assert.deepEqual(await filesIn(images), []);
  assert.deepEqual(await listed(admin), []);
});

const SERVER_MAIN = new URL('../helpers/upload-server-main.ts', import.meta.url).pathname;

/** A server in a child process (so that it can be killed), with its admin client. */
async function serverProcess(t: TestContext, dataDir: string) {
  const child = spawn(process.execPath, [SERVER_MAIN, dataDir], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.after(() => void child.kill('SIGKILL'));
  const line = await new Promise<string>((resolve, reject) => {
    let text = '';
    child.stdout.on('data', (b: Buffer) => {
      text += b.toString();
      if (text.includes('\n')) resolve(text.slice(0, text.indexOf('\n')));
    });
    child.on('exit', (code) => reject(new Error(`the server exited with ${code} before it listened`)));
  });
  const { url, token } = JSON.parse(line) as { url: string; token: string };
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  return { child, exited, admin: new ApiClient(url, token), host: new URL(url).host };
}

test('a server killed mid-upload: the client fails naming the server, the restarted server removes what was left', async (t) => {
  const dir = await tempDir(t);
  await slowFolder(join(dir, 'src'));
  const data = join(dir, 'data');
  const images = join(data, 'images');
  const first = await serverProcess(t, data);
  const { done } = img([
    'make',
    join(dir, 'src'),
    '--server',
    first.host,
    '--name',
    'cut',
    '--level',
    'size',
    '--json',
  ]);
  await until('the first chunk on the server', async () => {
    const ups = await first.admin.request<Upload[]>('GET', '/api/uploads');
    return (ups[0]?.chunks ?? 0) >= 1;
  });
  first.child.kill('SIGKILL');
  await first.exited;
  const r = await done;
  assert.equal(r.code, 1, r.err);
  assert.equal(JSON.parse(r.out).error, 'E_SERVER_UNREACHABLE');
  assert.match(r.err, new RegExp(`imaging server at http://${first.host}`));
  const left = await filesIn(images);
  assert.equal(left.length, 1, 'the killed server could not clean up');
  assert.match(left[0]!, /^\.cut\.imgc\.upload-[0-9a-f]{32}\.partial$/);

  const second = await serverProcess(t, data);
  assert.deepEqual(await filesIn(images), []);
  assert.deepEqual(await listed(second.admin), []);
  second.child.kill('SIGTERM');
  await second.exited;
});

test('the client keeps its upload alive while the capture has nothing to send', async (t) => {
  const { admin, images } = await uploadServer(t, { idleMs: 300 });
  const sink = await UploadSink.create(admin, { name: 'patient', level: 'speed' });
  const raw = textData(100_000, 9);
  const ref = await sink.putChunk(raw);
  // A capture reading a big disk that is mostly zeros sends nothing for a long time.
  await new Promise((r) => setTimeout(r, 1500));
  const done = await sink.commit(manifestOf([fileEntry('f', [ref])]));
  assert.equal(done.image.name, 'patient.imgc');
  assert.equal(sink.stats.chunksSent, 1);
  assert.deepEqual(await filesIn(images), ['patient.imgc']);
});

test('an upload goes on when another process of this workstation registers it again (a new token)', async (t) => {
  const { host, images } = await uploadServer(t);
  const { api, register } = await connect(host);
  const sink = await UploadSink.create(api, { name: 'twice', level: 'speed', register });
  const refs = [await sink.putChunk(textData(20_000, 1))];
  // What a second `img make --server` (or `img session`) on this machine does first.
  await new ApiClient(host).request('POST', '/api/workstations/register', { body: await registration() });
  refs.push(await sink.putChunk(textData(20_000, 2)), await sink.putChunk(textData(20_000, 3)));
  const done = await sink.commit(manifestOf([fileEntry('f', refs)]));
  assert.equal(done.chunks, 3);
  assert.ok(sink.stats.retries >= 1, 'the refused request was sent again');
  assert.deepEqual(await filesIn(images), ['twice.imgc']);
});

test('a name that is taken or outside the image directory is refused before the source is read', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(src);
  await writeFile(join(src, 'a.txt'), 'a');
  const { admin, images, host } = await uploadServer(t);
  assert.equal((await run(['make', src, '--server', host, '--name', 'lab'])).code, 0);

  for (const [name, code] of [
    ['lab', 'E_IMAGE_EXISTS'],
    ['lab.imgc', 'E_IMAGE_EXISTS'],
    ['../outside', 'E_IMAGE_OUTSIDE'],
    ['/tmp/outside.imgc', 'E_IMAGE_OUTSIDE'],
  ] as const) {
    const r = await run(['make', src, '--server', host, '--name', name, '--json']);
    assert.equal(r.code, 1, `${name}: ${r.err}`);
    assert.equal(JSON.parse(r.out).error, code, name);
  }
  assert.deepEqual(await listed(admin), ['lab.imgc']);
  assert.deepEqual(await filesIn(images), ['lab.imgc']);
  assert.deepEqual(await admin.request('GET', '/api/uploads'), []);
});

test('--server and --name go together, and not with an image file or --force', async (t) => {
  const dir = await tempDir(t);
  for (const [args, why] of [
    [['--server', '127.0.0.1:1'], /--server needs --name/],
    [['--name', 'x'], /give --server HOST too/],
    [[join(dir, 'x.imgc'), '--server', '127.0.0.1:1', '--name', 'x'], /not both/],
    [['--server', '127.0.0.1:1', '--name', 'x', '--force'], /--force is for image files/],
    [['--server', 'a:b:c', '--name', 'x'], /not a server address/],
    [[], /give the image file to create, or --server HOST --name IMAGE/],
  ] as const) {
    const r = await run(['make', dir, ...args]);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.err}`);
    assert.match(r.err, why);
  }
  // A server that is not there: a clear failure naming it.
  const r = await run(['make', dir, '--server', '127.0.0.1:1', '--name', 'x', '--json']);
  assert.equal(r.code, 1, r.err);
  assert.equal(JSON.parse(r.out).error, 'E_SERVER_UNREACHABLE');
});
