import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';

import { CODEC_NONE, CODEC_ZSTD, chunkId, encodeChunk } from '../../src/image/codec.ts';
import { ImageError } from '../../src/image/errors.ts';
import { ImageReader } from '../../src/image/reader.ts';
import { CHUNK_SIZE, COMPRESSION_LEVELS, type ChunkRef, type FileVolume } from '../../src/image/types.ts';
import { IN_FLIGHT_SLOTS, ImageWriter } from '../../src/image/writer.ts';
import { tempDir } from '../helpers/env.ts';
import { fileEntry, manifestOf, smallImage, textData } from './fixtures.ts';

function isCode(code: string) {
  return (err: unknown) => {
    assert.ok(err instanceof ImageError, `expected ImageError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    return true;
  };
}

test('chunks round-trip through an image file at every level', async (t) => {
  const dir = await tempDir(t);
  for (const level of COMPRESSION_LEVELS) {
    const path = join(dir, `${level}.imgc`);
    const w = await ImageWriter.create(path, { level });
    const data = [textData(300_000, 5), randomBytes(200_000), Buffer.alloc(0), Buffer.alloc(4 << 20, 7)];
    const refs: ChunkRef[] = [];
    for (const d of data) refs.push(await w.putChunk(d));
    assert.deepEqual(
      refs.map((r) => r.rawLength),
      data.map((d) => d.length),
    );
    await w.commit(manifestOf([fileEntry('f', refs)], level));
    const r = await ImageReader.open(path);
    t.after(() => r.close());
    assert.equal(r.manifest.level, level);
    assert.equal(r.generation, 1);
    for (const [i, d] of data.entries())
      assert.deepEqual(await r.readChunk(refs[i]!.id), d, `${level} chunk ${i}`);
    const compressible = r.chunk(refs[0]!.id)!;
    if (level === 'none') assert.equal(compressible.storedLength, compressible.rawLength);
    else assert.ok(compressible.storedLength < compressible.rawLength / 2);
    const rnd = r.chunk(refs[1]!.id)!;
    assert.equal(rnd.storedLength, rnd.rawLength, 'incompressible data is stored as is');
  }
});

test('duplicate content is stored once', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'd.imgc');
  const w = await ImageWriter.create(path, { level: 'speed' });
  const a = textData(100_000, 1);
  const b = textData(100_000, 2);
  const refs = [
    await w.putChunk(a),
    await w.putChunk(b),
    await w.putChunk(Buffer.from(a)),
    await w.putChunk(a),
  ];
  assert.equal(refs[0]!.id, refs[2]!.id);
  assert.ok(w.hasChunk(chunkId(b)));
  assert.ok(!w.hasChunk(chunkId(Buffer.from('nope'))));
  await w.commit(manifestOf([fileEntry('x', refs)]));
  assert.equal(w.stats.chunksStored, 2);
  assert.equal(w.stats.chunksDeduplicated, 2);
  assert.equal(w.stats.rawBytes, 200_000);
  const r = await ImageReader.open(path);
  t.after(() => r.close());
  assert.equal([...r.chunkIds()].length, 2);
});

test('a caller may reuse its buffer as soon as putChunk resolves', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'reuse.imgc');
  for (const level of ['none', 'balanced'] as const) {
    const w = await ImageWriter.create(path, { level, overwrite: true });
    const buf = Buffer.alloc(1 << 20);
    const refs: ChunkRef[] = [];
    const expected: Buffer[] = [];
    for (let i = 0; i < 8; i++) {
      buf.fill(i + 1);
      buf.write(`chunk ${i}`, 0);
      expected.push(Buffer.from(buf));
      refs.push(await w.putChunk(buf));
    }
    await w.commit(manifestOf([fileEntry('x', refs)], level));
    const r = await ImageReader.open(path);
    for (const [i, ref] of refs.entries()) assert.deepEqual(await r.readChunk(ref.id), expected[i]);
    await r.close();
  }
});

test('many chunks beyond the in-flight limit are all stored (backpressure)', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'many.imgc');
  const w = await ImageWriter.create(path, { level: 'speed' });
  const refs: ChunkRef[] = [];
  const base = randomBytes(1 << 20);
  for (let i = 0; i < 96; i++) {
    base.writeUInt32LE(i, 0);
    refs.push(await w.putChunk(base));
  }
  await w.commit(manifestOf([fileEntry('big', refs)]));
  assert.equal(w.stats.chunksStored, 96);
  const r = await ImageReader.open(path);
  t.after(() => r.close());
  const got = await r.readChunk(refs[50]!.id);
  assert.equal(got.readUInt32LE(0), 50);
  assert.deepEqual(got.subarray(4), base.subarray(4));
});

test('queueChunk: the buffer is free at once, ids come later, duplicates (also with putChunk) are stored once', async (t) => {
  const dir = await tempDir(t);
  for (const level of ['none', 'balanced'] as const) {
    const path = join(dir, `queue-${level}.imgc`);
    const w = await ImageWriter.create(path, { level });
    const buf = Buffer.alloc(1 << 20);
    const expected: Buffer[] = [];
    const pending: Array<Promise<ChunkRef>> = [];
    // 40 chunks (beyond the in-flight limit), every fourth one a repeat of chunk 0.
    for (let i = 0; i < 40; i++) {
      buf.fill(i % 4 === 0 ? 1 : i + 1);
      buf.write(`chunk ${i % 4 === 0 ? 0 : i}`, 0);
      expected.push(Buffer.from(buf));
      pending.push((await w.queueChunk(buf)).ref);
    }
    const put = await w.putChunk(expected[1]!);
    const refs = await Promise.all(pending);
    assert.equal(put.id, refs[1]!.id);
    refs.forEach((r, i) => assert.equal(r.id, chunkId(expected[i]!), `chunk ${i}`));
    await w.commit(manifestOf([fileEntry('x', refs)], level));
    assert.equal(w.stats.chunksStored, 31);
    assert.equal(w.stats.chunksDeduplicated, 10);
    const r = await ImageReader.open(path);
    t.after(() => r.close());
    assert.equal([...r.chunkIds()].length, 31);
    for (const [i, ref] of refs.entries()) assert.deepEqual(await r.readChunk(ref.id), expected[i]);
  }
});

test('queueChunk after abort is refused, and an aborted create leaves no file', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'q-abort.imgc');
  const w = await ImageWriter.create(path, { level: 'speed' });
  const queued = await w.queueChunk(textData(50_000, 9));
  await w.abort();
  await queued.ref.catch(() => {});
  await assert.rejects(w.queueChunk(Buffer.from('late')), isCode('E_IMAGE_IO'));
  assert.equal(existsSync(path), false);
  assert.equal(existsSync(`${path}.partial`), false);
});

test(
  'leaseChunk: data written into the lent buffer is stored as is; every slot comes back, once',
  { timeout: 60_000 },
  async (t) => {
    const dir = await tempDir(t);
    const path = join(dir, 'lease.imgc');
    const w = await ImageWriter.create(path, { level: 'balanced' });
    const expected: Buffer[] = [];
    const pending: Array<Promise<ChunkRef>> = [];
    // Released and queued leases alike must return their slot: 3 rounds over every slot would hang otherwise.
    for (let i = 0; i < 3 * IN_FLIGHT_SLOTS; i++) {
      const lease = await w.leaseChunk();
      assert.equal(lease.buf.length, CHUNK_SIZE);
      if (i % 3 === 2) {
        lease.release();
        assert.throws(() => lease.queue(10), /already queued or released/);
        continue;
      }
      const data = textData(100_000 + i, i);
      data.copy(lease.buf);
      expected.push(data);
      pending.push(lease.queue(data.length).ref);
      assert.throws(() => lease.release(), /already queued or released/);
    }
    const bad = await w.leaseChunk();
    assert.throws(() => bad.queue(CHUNK_SIZE + 1), RangeError);
    const refs = await Promise.all(pending);
    refs.forEach((r, i) =>
      assert.deepEqual(r, { id: chunkId(expected[i]!), rawLength: expected[i]!.length }),
    );
    await w.commit(manifestOf([fileEntry('x', refs)], 'balanced'));
    const r = await ImageReader.open(path);
    t.after(() => r.close());
    for (const [i, ref] of refs.entries()) assert.deepEqual(await r.readChunk(ref.id), expected[i]);
  },
);

test('a lease taken before abort cannot be queued after it', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'lease-abort.imgc');
  const w = await ImageWriter.create(path, { level: 'speed' });
  const lease = await w.leaseChunk();
  await w.abort();
  assert.throws(() => lease.queue(100), isCode('E_IMAGE_IO'));
  await assert.rejects(w.leaseChunk(), isCode('E_IMAGE_IO'));
  assert.equal(existsSync(`${path}.partial`), false);
});

test('a chunk larger than CHUNK_SIZE is refused', async (t) => {
  const dir = await tempDir(t);
  const w = await ImageWriter.create(join(dir, 'x.imgc'), { level: 'none' });
  t.after(() => w.abort());
  await assert.rejects(w.putChunk(Buffer.alloc((4 << 20) + 1)), isCode('E_CHUNK_SIZE'));
});

test('create writes <path>.partial and renames it on commit; abort leaves nothing', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'p.imgc');
  const w = await ImageWriter.create(path, { level: 'balanced' });
  const ref = await w.putChunk(textData(1000));
  assert.ok(existsSync(`${path}.partial`));
  assert.ok(!existsSync(path));
  await w.commit(manifestOf([fileEntry('a', [ref])]));
  assert.ok(existsSync(path));
  assert.ok(!existsSync(`${path}.partial`));
  await assert.rejects(w.putChunk(Buffer.from('late')), isCode('E_IMAGE_IO'));

  const path2 = join(dir, 'q.imgc');
  const w2 = await ImageWriter.create(path2, { level: 'balanced' });
  await w2.putChunk(textData(1000));
  await w2.abort();
  assert.ok(!existsSync(path2) && !existsSync(`${path2}.partial`));
});

test('an existing image is not overwritten unless asked', async (t) => {
  const dir = await tempDir(t);
  const { path } = await smallImage(dir);
  const before = await readFile(path);
  await assert.rejects(ImageWriter.create(path, { level: 'none' }), isCode('E_IMAGE_EXISTS'));
  const w = await ImageWriter.create(path, { level: 'none', overwrite: true });
  // Until commit the old image is intact.
  assert.deepEqual(await readFile(path), before);
  const ref = await w.putChunk(Buffer.from('new'));
  await w.commit(manifestOf([fileEntry('n', [ref])], 'none'));
  const r = await ImageReader.open(path);
  t.after(() => r.close());
  assert.equal((r.manifest.volumes[0] as FileVolume).entries[0]!.path, 'n');
});

test('commit refuses a manifest that references chunks never stored, leaving no image', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'm.imgc');
  const w = await ImageWriter.create(path, { level: 'balanced' });
  const ref = await w.putChunk(textData(1000));
  const ghost = { id: chunkId(Buffer.from('ghost')), rawLength: 5 };
  await assert.rejects(
    w.commit(manifestOf([fileEntry('etc/ok', [ref]), fileEntry('etc/ghost', [ghost])])),
    (err: unknown) =>
      isCode('E_CHUNK_MISSING')(err) &&
      /: 1 chunk referenced by the manifest was never stored, .*etc\/ghost/.test((err as Error).message),
  );
  assert.ok(!existsSync(path) && !existsSync(`${path}.partial`));
});

test('commit refuses an extent that reaches past its chunk', async (t) => {
  const dir = await tempDir(t);
  const w = await ImageWriter.create(join(dir, 'r.imgc'), { level: 'balanced' });
  const ref = await w.putChunk(textData(1000));
  await assert.rejects(
    w.commit(manifestOf([fileEntry('f', [{ id: ref.id, rawLength: 2000 }])])),
    isCode('E_EXTENT_RANGE'),
  );
});

test('append writes a new generation after the old one and dedups against it', async (t) => {
  const dir = await tempDir(t);
  const { path, files } = await smallImage(dir, 'size');
  const gen1 = await readFile(path);
  const { writer, manifest } = await ImageWriter.append(path);
  assert.equal(writer.level, 'size');
  assert.equal(manifest.generation, 1);
  const added = textData(50_000, 42);
  const refNew = await writer.putChunk(added);
  const refOld = await writer.putChunk(files.get('etc/passwd')!);
  assert.equal(writer.stats.chunksDeduplicated, 1);
  assert.ok(writer.hasChunk(refOld.id));
  const vol = manifest.volumes[0] as FileVolume;
  vol.entries.push(fileEntry('opt/new.txt', [refNew], { addedIn: 2 }));
  await writer.commit(manifest);

  const gen2 = await readFile(path);
  assert.deepEqual(gen2.subarray(0, gen1.length), gen1, 'generation 1 bytes are untouched');
  const r = await ImageReader.open(path);
  t.after(() => r.close());
  assert.equal(r.generation, 2);
  assert.equal(r.manifest.generation, 2);
  assert.equal(r.manifest.imageId, manifest.imageId);
  const paths = (r.manifest.volumes[0] as FileVolume).entries.map((e) => e.path);
  assert.ok(paths.includes('opt/new.txt'));
  assert.deepEqual(await r.readChunk(refNew.id), added);
  assert.deepEqual(await r.readChunk(refOld.id), files.get('etc/passwd'));

  // The old generation is still a valid image on its own.
  const old = join(dir, 'gen1.imgc');
  await writeFile(old, gen1);
  const r1 = await ImageReader.open(old);
  t.after(() => r1.close());
  assert.equal(r1.generation, 1);
  assert.equal(r1.chunk(refNew.id), undefined);
});

test('a failed or aborted append leaves the file exactly as before', async (t) => {
  const dir = await tempDir(t);
  const { path } = await smallImage(dir);
  const before = await readFile(path);

  const a = await ImageWriter.append(path);
  await a.writer.putChunk(randomBytes(300_000));
  const ghost = { id: chunkId(Buffer.from('ghost')), rawLength: 5 };
  (a.manifest.volumes[0] as FileVolume).entries.push(fileEntry('ghost', [ghost]));
  await assert.rejects(a.writer.commit(a.manifest), isCode('E_CHUNK_MISSING'));
  assert.deepEqual(await readFile(path), before);

  const b = await ImageWriter.append(path);
  await b.writer.putChunk(randomBytes(300_000));
  await b.writer.abort();
  assert.deepEqual(await readFile(path), before);

  const c = await ImageWriter.append(path);
  await assert.rejects(
    c.writer.commit({ ...c.manifest, imageId: 'someone-else' }),
    isCode('E_MANIFEST_INVALID'),
  );
  assert.deepEqual(await readFile(path), before);
});

test('concurrent puts without awaiting each other store everything once', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'conc.imgc');
  const w = await ImageWriter.create(path, { level: 'balanced' });
  const data = Array.from({ length: 40 }, (_, i) => textData(200_000, (i % 20) + 1));
  const refs = await Promise.all(data.map((d) => w.putChunk(d)));
  await w.commit(manifestOf([fileEntry('c', refs)]));
  assert.equal(w.stats.chunksStored, 20);
  assert.equal(w.stats.chunksDeduplicated, 20);
  const r = await ImageReader.open(path);
  t.after(() => r.close());
  for (const [i, ref] of refs.entries()) assert.deepEqual(await r.readChunk(ref.id), data[i]);
});

test('putStored keeps chunks compressed elsewhere as they came, dedups, and refuses bytes that are not the chunk', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'stored.imgc');
  const w = await ImageWriter.create(path, { level: 'balanced' });
  const text = textData(300_000, 3);
  const rnd = randomBytes(100_000);
  const packed = encodeChunk(text, 'speed');
  assert.equal(packed.codec, CODEC_ZSTD);
  assert.equal(await w.putStored(chunkId(text), packed.codec, text.length, packed.stored), true);
  assert.equal(await w.putStored(chunkId(rnd), CODEC_NONE, rnd.length, rnd), true);
  assert.equal(await w.putStored(chunkId(text), packed.codec, text.length, packed.stored), false, 'dedup');
  assert.equal(await w.putStored(chunkId(Buffer.alloc(0)), CODEC_NONE, 0, Buffer.alloc(0)), true);

  // Another chunk's bytes under an id, a damaged frame, a wrong length: refused, and the writer goes on.
  // (Bytes sent for a chunk the image holds already are not looked at: nothing is stored.)
  const other = textData(1000, 9);
  const text2 = textData(300_000, 5);
  const packed2 = encodeChunk(text2, 'speed');
  const wrong = [
    () => w.putStored(chunkId(other), packed.codec, text.length, packed.stored),
    () => w.putStored(chunkId(text2), CODEC_ZSTD, text2.length, Buffer.from(packed2.stored).fill(0, 20, 40)),
    () => w.putStored(chunkId(text2), packed2.codec, text2.length - 1, packed2.stored),
    () => w.putStored(chunkId(text2), CODEC_NONE, text2.length, packed2.stored),
    () => w.putStored(chunkId(other), CODEC_NONE, other.length + 1, other),
    () => w.putStored(chunkId(other), 7, other.length, other),
    () => w.putStored('nothex', CODEC_NONE, other.length, other),
  ];
  for (const put of wrong) await assert.rejects(put(), isCode('E_CHUNK_CORRUPT'));
  assert.equal(w.hasChunk(chunkId(other)), false);
  assert.equal(w.hasChunk(chunkId(text2)), false);
  // Concurrent puts of one chunk, the first damaged: the good one is stored all the same.
  const bad = w.putStored(chunkId(other), CODEC_NONE, other.length, Buffer.alloc(other.length));
  const good = w.putStored(chunkId(other), CODEC_NONE, other.length, other);
  await assert.rejects(bad, isCode('E_CHUNK_CORRUPT'));
  assert.equal(await good, true);

  const refs = [text, rnd, other].map((d) => ({ id: chunkId(d), rawLength: d.length }));
  await w.commit(manifestOf([fileEntry('f', refs)], 'balanced'));
  assert.equal(w.stats.chunksStored, 4);
  const r = await ImageReader.open(path);
  t.after(() => r.close());
  assert.deepEqual(await r.readChunk(chunkId(text)), text);
  assert.equal(
    r.chunk(chunkId(text))!.storedLength,
    packed.stored.length,
    'stored as sent, not recompressed',
  );
  assert.deepEqual(await r.readChunk(chunkId(rnd)), rnd);
  assert.deepEqual(await r.readChunk(chunkId(other)), other);
});

test('putStored after abort is refused and leaves no file', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'a.imgc');
  const w = await ImageWriter.create(path, { level: 'speed' });
  const data = textData(10_000, 4);
  await w.abort();
  await assert.rejects(w.putStored(chunkId(data), CODEC_NONE, data.length, data), isCode('E_IMAGE_IO'));
  assert.equal(existsSync(`${path}.partial`), false);
  assert.equal(existsSync(path), false);
});
