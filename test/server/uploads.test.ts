/**
 * Uploads against a real server (startServer, real HTTP, real image folder): chunks proved
 * against their ids before they are stored, nothing listed before the commit, names kept
 * inside the image directory, other uploaders kept out, idle and interrupted uploads leaving
 * nothing behind.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';

import { ApiClient, ApiError } from '../../src/api/client.ts';
import type { Image, Registered, Status, Upload, UploadCommitted } from '../../src/api/schemas.ts';
import { CODEC_NONE, chunkId, encodeChunk } from '../../src/image/codec.ts';
import { ImageReader } from '../../src/image/reader.ts';
import { CHUNK_SIZE, type ChunkRef, type CompressionLevel } from '../../src/image/types.ts';
import { verifyImage } from '../../src/image/verify.ts';
import { fileEntry, manifestOf, textData } from '../image/fixtures.ts';
import { tempDir } from '../helpers/env.ts';
import { uploadServer } from '../helpers/upload-server.ts';

const serve = uploadServer;

async function workstation(url: string, n: number): Promise<ApiClient> {
  const api = new ApiClient(url);
  const r = await api.request<Registered>('POST', '/api/workstations/register', {
    body: {
      hostname: `pc${n}`,
      mac: `02:00:00:00:00:0${n}`,
      addresses: [],
      disks: [],
      memoryBytes: 1,
      cpu: { model: 'test', cores: 1 },
      dmi: {},
    },
  });
  api.token = r.token;
  return api;
}

function put(api: ApiClient, id: string, chunk: string, codec: number, rawLength: number, stored: Buffer) {
  return api.request<{ chunk: string; stored: boolean }>('PUT', `/api/uploads/${id}/chunks/${chunk}`, {
    bytes: stored,
    headers: { 'x-imgcast-codec': String(codec), 'x-imgcast-raw-length': String(rawLength) },
  });
}

/** Sends `raw` as a client would: named and compressed here. */
async function send(api: ApiClient, id: string, raw: Buffer, level: CompressionLevel = 'speed') {
  const { codec, stored } = encodeChunk(raw, level);
  const ref: ChunkRef = { id: chunkId(raw), rawLength: raw.length };
  const r = await put(api, id, ref.id, codec, raw.length, stored);
  assert.equal(r.chunk, ref.id);
  return { ref, stored: r.stored };
}

function code(c: string, status?: number) {
  return (err: unknown) => {
    assert.ok(err instanceof ApiError, `expected ApiError, got ${String(err)}`);
    assert.equal(err.code, c, err.message);
    if (status !== undefined) assert.equal(err.status, status);
    return true;
  };
}

const listed = async (admin: ApiClient) =>
  (await admin.request<Image[]>('GET', '/api/images')).map((i) => i.name);

/** Every file under the image directory, hidden ones included. */
async function filesIn(dir: string): Promise<string[]> {
  return (await readdir(dir, { recursive: true, withFileTypes: true }))
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name).slice(dir.length + 1))
    .sort();
}

test('an upload is listed only once committed, holds the bytes as sent, verifies and counts as received', async (t) => {
  const { admin, images } = await serve(t);
  const ws = await workstation(new URL(admin.baseUrl).host, 1);
  const up = await ws.request<Upload>('POST', '/api/uploads', { body: { name: 'lab', level: 'speed' } });
  assert.equal(up.name, 'lab.imgc', '.imgc is appended');
  assert.equal(up.state, 'open');

  const text = textData(3 * 1024 * 1024, 1);
  const rnd = randomBytes(CHUNK_SIZE);
  const a = await send(ws, up.id, text);
  const b = await send(ws, up.id, rnd);
  assert.deepEqual([a.stored, b.stored], [true, true]);
  assert.equal((await send(ws, up.id, text)).stored, false, 'a chunk sent twice is stored once');
  const have = await ws.request<{ have: string[] }>('POST', `/api/uploads/${up.id}/have`, {
    body: { ids: [a.ref.id, chunkId(Buffer.from('never sent'))] },
  });
  assert.deepEqual(have.have, [a.ref.id]);

  assert.deepEqual(await listed(admin), [], 'nothing is listed before the commit');
  assert.ok(
    (await filesIn(images)).every((f) => f.startsWith('.lab.imgc.upload-')),
    'only the hidden temporary file exists',
  );
  const before = (await admin.request<Status>('GET', '/api/status')).counters.imagesReceived;

  const done = await ws.request<UploadCommitted>('POST', `/api/uploads/${up.id}/commit`, {
    body: { manifest: manifestOf([fileEntry('text', [a.ref]), fileEntry('rnd', [b.ref])], 'speed') },
  });
  assert.equal(done.image.name, 'lab.imgc');
  assert.equal(done.chunks, 2);
  assert.equal(done.image.problem, null);
  assert.deepEqual(await listed(admin), ['lab.imgc']);
  assert.deepEqual(await filesIn(images), ['lab.imgc'], 'no temporary file is left');
  assert.equal((await admin.request<Status>('GET', '/api/status')).counters.imagesReceived, before + 1);

  const path = join(images, 'lab.imgc');
  assert.equal((await verifyImage(path)).ok, true);
  const r = await ImageReader.open(path);
  t.after(() => r.close());
  assert.equal(r.manifest.level, 'speed');
  assert.deepEqual(await r.readChunk(a.ref.id), text);
  assert.deepEqual(await r.readChunk(b.ref.id), rnd);
  assert.equal(r.chunk(a.ref.id)!.storedLength, encodeChunk(text, 'speed').stored.length, 'stored as sent');

  await assert.rejects(
    ws.request('GET', `/api/uploads/${up.id}`),
    (err: unknown) =>
      code('E_UPLOAD_UNKNOWN', 404)(err) && /committed as lab\.imgc/.test((err as Error).message),
  );
});

test('bytes that do not match their chunk id are refused before anything is stored', async (t) => {
  const { admin, images } = await serve(t);
  const up = await admin.request<Upload>('POST', '/api/uploads', { body: { name: 'bad.imgc' } });
  const good = textData(100_000, 2);
  const evil = textData(100_000, 3);
  const packedEvil = encodeChunk(evil, 'speed');
  // Another chunk's bytes under this id, compressed and plain; a damaged frame; a length that lies.
  await assert.rejects(
    put(admin, up.id, chunkId(good), packedEvil.codec, evil.length, packedEvil.stored),
    code('E_CHUNK_INVALID', 422),
  );
  await assert.rejects(
    put(admin, up.id, chunkId(good), CODEC_NONE, evil.length, evil),
    code('E_CHUNK_INVALID'),
  );
  const damaged = Buffer.from(encodeChunk(good, 'speed').stored);
  damaged.fill(0xff, 10, 30);
  await assert.rejects(put(admin, up.id, chunkId(good), 1, good.length, damaged), code('E_CHUNK_INVALID'));
  await assert.rejects(
    put(admin, up.id, chunkId(good), CODEC_NONE, good.length + 1, good),
    code('E_CHUNK_INVALID'),
  );
  const have = await admin.request<{ have: string[] }>('POST', `/api/uploads/${up.id}/have`, {
    body: { ids: [chunkId(good)] },
  });
  assert.deepEqual(have.have, []);
  const view = await admin.request<Upload>('GET', `/api/uploads/${up.id}`);
  assert.equal(view.chunks, 0);
  assert.equal(view.storedBytes, 0);

  // A manifest naming the refused chunk does not commit, and the upload leaves nothing behind.
  await assert.rejects(
    admin.request('POST', `/api/uploads/${up.id}/commit`, {
      body: {
        manifest: manifestOf([fileEntry('f', [{ id: chunkId(good), rawLength: good.length }])], 'speed'),
      },
    }),
    code('E_CHUNK_MISSING', 422),
  );
  assert.deepEqual(await listed(admin), []);
  assert.deepEqual(await filesIn(images), []);
  await assert.rejects(admin.request('GET', `/api/uploads/${up.id}`), code('E_UPLOAD_UNKNOWN'));
});

test('malformed chunk requests are refused with a clear code', async (t) => {
  const { admin } = await serve(t);
  const up = await admin.request<Upload>('POST', '/api/uploads', { body: { name: 'm' } });
  const raw = textData(1000, 4);
  const id = chunkId(raw);
  const url = `${admin.baseUrl}/api/uploads/${up.id}/chunks/${id}`;
  const auth = { authorization: `Bearer ${admin.token}` };
  const h = { 'x-imgcast-codec': '0', 'x-imgcast-raw-length': String(raw.length) };
  const status = async (init: RequestInit) => {
    const res = await fetch(url, { method: 'PUT', ...init });
    return [res.status, ((await res.json()) as { error: string }).error];
  };
  assert.deepEqual(await status({ headers: { ...auth, ...h, 'content-type': 'text/plain' }, body: raw }), [
    415,
    'E_UNSUPPORTED_MEDIA',
  ]);
  assert.deepEqual(
    await status({ headers: { ...auth, ...h, 'content-type': 'application/json' }, body: '{"a":1}' }),
    [415, 'E_UNSUPPORTED_MEDIA'],
  );
  const octet = { ...auth, 'content-type': 'application/octet-stream' };
  assert.deepEqual(await status({ headers: octet, body: raw }), [400, 'E_BAD_REQUEST'], 'no codec header');
  assert.deepEqual(
    await status({ headers: { ...octet, ...h, 'x-imgcast-raw-length': String(CHUNK_SIZE + 1) }, body: raw }),
    [400, 'E_BAD_REQUEST'],
  );
  assert.deepEqual(
    await status({ headers: { ...octet, ...h }, body: Buffer.alloc(CHUNK_SIZE + 128 * 1024) }),
    [413, 'E_TOO_LARGE'],
  );
  assert.deepEqual(
    await status({ headers: { ...h, 'content-type': 'application/octet-stream' }, body: raw }),
    [401, 'E_UNAUTHORIZED'],
  );
  const bad = await fetch(`${admin.baseUrl}/api/uploads/${up.id}/chunks/NOTANID`, {
    method: 'PUT',
    headers: { ...octet, ...h },
    body: raw,
  });
  assert.equal(bad.status, 400);
  // After all that, the good request is taken.
  assert.deepEqual(await status({ headers: { ...octet, ...h }, body: raw }), [200, undefined]);
});

test('names: inside the image directory, not hidden, not taken, not being uploaded', async (t) => {
  const { admin, images } = await serve(t);
  await writeFile(join(images, 'taken.imgc'), 'an image already');
  const outside = await tempDir(t);
  await symlink(outside, join(images, 'elsewhere'));
  const create = (name: string) => admin.request<Upload>('POST', '/api/uploads', { body: { name } });

  await assert.rejects(create('taken'), code('E_IMAGE_EXISTS', 409));
  await assert.rejects(create('taken.imgc'), code('E_IMAGE_EXISTS', 409));
  await assert.rejects(create('../escape'), code('E_IMAGE_OUTSIDE', 400));
  await assert.rejects(create('lab/../../escape.imgc'), code('E_IMAGE_OUTSIDE'));
  await assert.rejects(create('/etc/escape.imgc'), code('E_IMAGE_OUTSIDE'));
  await assert.rejects(create('elsewhere/escape'), code('E_IMAGE_OUTSIDE'));
  await assert.rejects(create('elsewhere/new/escape'), code('E_IMAGE_OUTSIDE'));
  await assert.rejects(create('.hidden'), code('E_BAD_REQUEST'));
  await assert.rejects(create('lab/.hidden/x'), code('E_BAD_REQUEST'));
  await assert.rejects(create('a\u0000b'), code('E_BAD_REQUEST'));
  await assert.rejects(create('x'.repeat(201)), code('E_BAD_REQUEST'));
  await assert.rejects(create(''), code('E_BAD_REQUEST'));
  assert.deepEqual(await readdir(outside), [], 'nothing was made outside');

  const first = await create('lab/room1/win');
  assert.equal(first.name, 'lab/room1/win.imgc', 'folders inside the directory are made');
  await assert.rejects(create('lab/room1/win.imgc'), code('E_IMAGE_EXISTS'), 'being uploaded already');
  await assert.rejects(
    create(join(images, 'lab/room1/win')),
    code('E_IMAGE_EXISTS'),
    'the same by its absolute path',
  );
  await admin.request('DELETE', `/api/uploads/${first.id}`);
  const again = await create(join(images, 'lab/room1/win'));
  assert.equal(again.name, 'lab/room1/win.imgc', 'free again once the first upload was aborted');
});

test('an image that appears under the name during the upload is not replaced', async (t) => {
  const { admin, images } = await serve(t);
  const up = await admin.request<Upload>('POST', '/api/uploads', { body: { name: 'race' } });
  const { ref } = await send(admin, up.id, textData(5000, 5));
  await writeFile(join(images, 'race.imgc'), 'made by someone else meanwhile');
  await assert.rejects(
    admin.request('POST', `/api/uploads/${up.id}/commit`, {
      body: { manifest: manifestOf([fileEntry('f', [ref])]) },
    }),
    code('E_IMAGE_EXISTS'),
  );
  assert.deepEqual(await filesIn(images), ['race.imgc']);
});

test('a workstation reaches its own uploads only; without a token, nothing', async (t) => {
  const { admin } = await serve(t);
  const host = new URL(admin.baseUrl).host;
  const one = await workstation(host, 1);
  const two = await workstation(host, 2);
  const up = await one.request<Upload>('POST', '/api/uploads', { body: { name: 'mine' } });
  assert.equal(up.owner, 'workstation:020000000001');
  const raw = textData(2000, 6);
  await assert.rejects(send(two, up.id, raw), code('E_UPLOAD_UNKNOWN', 404));
  await assert.rejects(two.request('DELETE', `/api/uploads/${up.id}`), code('E_UPLOAD_UNKNOWN'));
  await assert.rejects(
    two.request('GET', '/api/uploads'),
    code('E_FORBIDDEN', 403),
    'the list is for admins',
  );
  await assert.rejects(
    new ApiClient(host).request('POST', '/api/uploads', { body: { name: 'x' } }),
    code('E_UNAUTHORIZED'),
  );
  await send(one, up.id, raw);
  const all = await admin.request<Upload[]>('GET', '/api/uploads');
  assert.deepEqual(
    all.map((u) => [u.id, u.chunks]),
    [[up.id, 1]],
  );
  await admin.request('DELETE', `/api/uploads/${up.id}`);
  assert.deepEqual(await admin.request('GET', '/api/uploads'), []);
});

test('an idle upload is aborted and leaves nothing; requests keep it alive', async (t) => {
  const { admin, images } = await serve(t, { idleMs: 400 });
  const idle = await admin.request<Upload>('POST', '/api/uploads', { body: { name: 'idle' } });
  const busy = await admin.request<Upload>('POST', '/api/uploads', { body: { name: 'busy' } });
  assert.equal(idle.idleMs, 400);
  await send(admin, idle.id, textData(10_000, 7));
  for (let i = 0; i < 8; i++) {
    await new Promise((r) => setTimeout(r, 150));
    await admin.request('GET', `/api/uploads/${busy.id}`);
  }
  await assert.rejects(
    admin.request('GET', `/api/uploads/${idle.id}`),
    (err: unknown) =>
      code('E_UPLOAD_UNKNOWN')(err) && /aborted: no request came/.test((err as Error).message),
  );
  assert.equal((await admin.request<Upload>('GET', `/api/uploads/${busy.id}`)).state, 'open');
  assert.deepEqual(
    (await filesIn(images)).filter((f) => f.includes('idle')),
    [],
  );
});

test('what a killed server left is removed at the next start; other files are not', async (t) => {
  const dir = await tempDir(t);
  const images = join(dir, 'images');
  await mkdir(join(images, 'lab'), { recursive: true });
  const hex = 'ab'.repeat(16);
  const leftovers = [`.win.imgc.upload-${hex}.partial`, `lab/.x.imgc.upload-${hex}`];
  const kept = ['.keep', 'lab/notes.txt', 'y.imgc.partial', `.z.imgc.upload-${hex}.bak`];
  for (const f of [...leftovers, ...kept]) await writeFile(join(images, f), 'x');
  const { admin } = await serve(t, {}, dir);
  assert.deepEqual(await filesIn(images), [...kept].sort());
  assert.deepEqual(await listed(admin), []);
});

test('a server that stops aborts its open uploads', async (t) => {
  const dir = await tempDir(t);
  const first = await serve(t, {}, dir);
  const up = await first.admin.request<Upload>('POST', '/api/uploads', { body: { name: 'cut' } });
  await send(first.admin, up.id, textData(10_000, 8));
  assert.equal((await filesIn(first.images)).length, 1);
  await first.s.close();
  assert.deepEqual(await filesIn(first.images), []);
});

test('uploads beyond the limit are refused until one ends', async (t) => {
  const { admin } = await serve(t, { maxUploads: 1 });
  const first = await admin.request<Upload>('POST', '/api/uploads', { body: { name: 'one' } });
  await assert.rejects(
    admin.request('POST', '/api/uploads', { body: { name: 'two' } }),
    code('E_UPLOAD_BUSY', 503),
  );
  await admin.request('DELETE', `/api/uploads/${first.id}`);
  await admin.request('POST', '/api/uploads', { body: { name: 'two' } });
});
