import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { open, readFile, stat } from 'node:fs/promises';
import { test } from 'node:test';

import { compactImage } from '../../src/image/compact.ts';
import { ImageError } from '../../src/image/errors.ts';
import { RECORD_HEADER_SIZE } from '../../src/image/format.ts';
import { ImageReader } from '../../src/image/reader.ts';
import type { FileVolume } from '../../src/image/types.ts';
import { verifyImage } from '../../src/image/verify.ts';
import { ImageWriter } from '../../src/image/writer.ts';
import { tempDir } from '../helpers/env.ts';
import { smallImage } from './fixtures.ts';

test('compact drops chunks only removed files used; the rest reads identically', async (t) => {
  const dir = await tempDir(t);
  const { path, files } = await smallImage(dir);
  const { writer, manifest } = await ImageWriter.append(path);
  const vol = manifest.volumes[0] as FileVolume;
  const removed = vol.entries.find((e) => e.path === 'bin/tool')!;
  vol.entries = vol.entries.filter((e) => e !== removed);
  await writer.commit(manifest);

  const before = await ImageReader.open(path);
  const keptIds = [...before.chunkIds()].filter((id) => id !== removed.extents![0]!.chunk);
  const contents = new Map<string, Buffer>();
  for (const id of keptIds) contents.set(id, await before.readChunk(id));
  const imageId = before.manifest.imageId;
  await before.close();

  const res = await compactImage(path);
  assert.equal(res.chunksDropped, 1);
  assert.equal(res.bytesAfter, (await stat(path)).size);
  assert.ok(res.bytesBefore - res.bytesAfter >= 70_000, `${res.bytesBefore} -> ${res.bytesAfter}`);
  assert.ok(!existsSync(`${path}.compact.partial`));

  const r = await ImageReader.open(path);
  t.after(() => r.close());
  assert.equal(r.generation, 2);
  assert.equal(r.manifest.imageId, imageId);
  assert.deepEqual([...r.chunkIds()].sort(), keptIds.sort());
  for (const [id, data] of contents) assert.deepEqual(await r.readChunk(id), data);
  assert.equal(r.chunk(removed.extents![0]!.chunk), undefined);
  const doc = (r.manifest.volumes[0] as FileVolume).entries.find((e) => e.path === 'usr/share/doc.txt')!;
  const rebuilt = Buffer.concat(await Promise.all(doc.extents!.map((x) => r.readChunk(x.chunk))));
  assert.deepEqual(rebuilt, files.get('usr/share/doc.txt'));
  assert.equal((await verifyImage(path)).ok, true);

  // Appending after compaction still works and continues the generations.
  const again = await ImageWriter.append(path);
  await again.writer.commit(again.manifest);
  const r3 = await ImageReader.open(path);
  t.after(() => r3.close());
  assert.equal(r3.generation, 3);
});

test('compact refuses to copy a damaged chunk and leaves the original untouched', async (t) => {
  const dir = await tempDir(t);
  const { path, manifest } = await smallImage(dir);
  const id = (manifest.volumes[0] as FileVolume).entries.find((e) => e.path === 'etc/passwd')!.extents![0]!
    .chunk;
  const r = await ImageReader.open(path);
  const info = r.chunk(id)!;
  await r.close();
  const fh = await open(path, 'r+');
  await fh.write(Buffer.from([0xff, 0x00, 0xff]), 0, 3, info.offset + RECORD_HEADER_SIZE + 2);
  await fh.close();
  const before = await readFile(path);
  await assert.rejects(compactImage(path), (err: unknown) => {
    assert.ok(err instanceof ImageError && err.code === 'E_CHUNK_CORRUPT', String(err));
    assert.match(err.message, /etc\/passwd/);
    return true;
  });
  assert.deepEqual(await readFile(path), before);
  assert.ok(!existsSync(`${path}.compact.partial`));
});
