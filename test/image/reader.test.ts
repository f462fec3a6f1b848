import assert from 'node:assert/strict';
import { open, readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { crc32 } from 'node:zlib';

import { ImageError } from '../../src/image/errors.ts';
import { HEADER_SIZE, RECORD_HEADER_SIZE, TRAILER_SIZE } from '../../src/image/format.ts';
import { ImageReader } from '../../src/image/reader.ts';
import { CHUNK_SIZE } from '../../src/image/types.ts';
import { chunkUsage } from '../../src/image/usage.ts';
import { type FileVolume } from '../../src/image/types.ts';
import { ImageWriter } from '../../src/image/writer.ts';
import { tempDir } from '../helpers/env.ts';
import { fileEntry, manifestOf, smallImage, textData } from './fixtures.ts';

function isCode(...codes: string[]) {
  return (err: unknown) => {
    assert.ok(err instanceof ImageError, `expected ImageError, got ${String(err)}`);
    assert.ok(codes.includes(err.code), `${err.code}: ${err.message}`);
    return true;
  };
}

test('stats count every chunk read and which ids', async (t) => {
  const dir = await tempDir(t);
  const { path, manifest } = await smallImage(dir);
  const r = await ImageReader.open(path);
  t.after(() => r.close());
  assert.equal(r.stats.chunksRead, 0, 'open reads no chunk');
  const entry = (manifest.volumes[0] as FileVolume).entries.find((e) => e.path === 'bin/tool')!;
  const id = entry.extents![0]!.chunk;
  await r.readChunk(id);
  await r.readChunk(id);
  await r.readStored(id);
  assert.equal(r.stats.chunksRead, 3);
  assert.deepEqual([...r.stats.idsRead], [id]);
});

test('reader exposes the index: chunk info, ids and file size', async (t) => {
  const dir = await tempDir(t);
  const { path, files } = await smallImage(dir, 'none');
  const r = await ImageReader.open(path);
  t.after(() => r.close());
  const ids = [...r.chunkIds()];
  assert.deepEqual(ids, [...ids].sort());
  assert.equal(ids.length, 5);
  const info = r.chunk(ids[0]!)!;
  assert.equal(info.id, ids[0]);
  assert.ok(info.offset >= HEADER_SIZE);
  assert.equal(r.chunk('0'.repeat(64)), undefined);
  assert.equal(r.chunk('not an id'), undefined);
  assert.equal(r.fileSize, (await readFile(path)).length);
  const tool = (r.manifest.volumes[0] as FileVolume).entries.find((e) => e.path === 'bin/tool')!;
  const { info: ti, stored } = await r.readStored(tool.extents![0]!.chunk);
  assert.deepEqual(stored, files.get('bin/tool'));
  assert.equal(ti.codec, 0);
  await assert.rejects(r.readChunk('0'.repeat(64)), isCode('E_CHUNK_MISSING'));
});

test('a flipped bit in a chunk is reported with the chunk and the files that use it', async (t) => {
  const dir = await tempDir(t);
  const { path, manifest } = await smallImage(dir);
  const entry = (manifest.volumes[0] as FileVolume).entries.find((e) => e.path === 'usr/share/doc.txt')!;
  const id = entry.extents![1]!.chunk;
  let r = await ImageReader.open(path);
  const info = r.chunk(id)!;
  await r.close();
  const fh = await open(path, 'r+');
  const b = Buffer.alloc(1);
  const at = info.offset + RECORD_HEADER_SIZE + Math.floor(info.storedLength / 2);
  await fh.read(b, 0, 1, at);
  b[0]! ^= 0x04;
  await fh.write(b, 0, 1, at);
  await fh.close();

  r = await ImageReader.open(path);
  t.after(() => r.close());
  await assert.rejects(r.readChunk(id), (err: unknown) => {
    isCode('E_CHUNK_CORRUPT')(err);
    const e = err as ImageError;
    assert.match(e.message, new RegExp(id));
    assert.match(e.message, /usr\/share\/doc\.txt/);
    assert.match(e.message, /volume 0/);
    assert.equal(e.details.chunk, id);
    assert.deepEqual(e.details.usage, chunkUsage(manifest, id));
    return true;
  });
  // Other chunks still read fine.
  const other = (manifest.volumes[0] as FileVolume).entries.find((e) => e.path === 'etc/passwd')!;
  assert.equal((await r.readChunk(other.extents![0]!.chunk)).length, 5000);
});

test('files that are not images, newer versions and missing files get clear codes', async (t) => {
  const dir = await tempDir(t);
  const junk = join(dir, 'junk.imgc');
  await writeFile(junk, 'hello, I am a text file and not an image at all'.repeat(10));
  await assert.rejects(ImageReader.open(junk), isCode('E_IMAGE_MAGIC'));
  await assert.rejects(ImageReader.open(join(dir, 'none.imgc')), (err: unknown) => {
    isCode('E_IMAGE_IO')(err);
    assert.match((err as Error).message, /no such file/);
    return true;
  });
  await assert.rejects(ImageReader.open(dir), isCode('E_IMAGE_IO', 'E_IMAGE_MAGIC'));
  const empty = join(dir, 'empty.imgc');
  await writeFile(empty, '');
  await assert.rejects(ImageReader.open(empty), isCode('E_IMAGE_TRUNCATED'));

  const { path } = await smallImage(dir);
  const data = await readFile(path);
  data.writeUInt16LE(9, 8);
  data.writeUInt32LE(crc32(data.subarray(0, 60)), 60);
  await writeFile(path, data);
  await assert.rejects(ImageReader.open(path), (err: unknown) => {
    isCode('E_IMAGE_VERSION')(err);
    assert.match((err as Error).message, /version 9/);
    return true;
  });
});

test('truncation at any point gives E_IMAGE_TRUNCATED or E_IMAGE_CORRUPT, or the older generation', async (t) => {
  const dir = await tempDir(t);
  const { path } = await smallImage(dir);
  const gen1Length = (await readFile(path)).length;
  const { writer, manifest } = await ImageWriter.append(path);
  const ref = await writer.putChunk(textData(40_000, 11));
  (manifest.volumes[0] as FileVolume).entries.push(fileEntry('later', [ref]));
  await writer.commit(manifest);
  const full = await readFile(path);
  const cut = join(dir, 'cut.imgc');
  const points = new Set<number>([0, 1, 7, 8, 63, 64, 65, gen1Length - 1, gen1Length + 1, full.length - 1]);
  for (let n = 0; n < full.length; n += 997) points.add(n);
  for (let n = full.length - TRAILER_SIZE - 64; n < full.length; n += 7) points.add(n);
  let older = 0;
  for (const n of [...points].sort((a, b) => a - b)) {
    await writeFile(cut, full.subarray(0, n));
    try {
      const r = await ImageReader.open(cut);
      await r.close();
      assert.equal(n, gen1Length, `only the end of generation 1 is a valid cut, not ${n}`);
      assert.equal(r.generation, 1);
      older++;
    } catch (err) {
      isCode('E_IMAGE_TRUNCATED', 'E_IMAGE_CORRUPT', 'E_IMAGE_MAGIC')(err);
      if (n >= HEADER_SIZE) isCode('E_IMAGE_TRUNCATED', 'E_IMAGE_CORRUPT')(err);
    }
  }
  await writeFile(cut, full.subarray(0, gen1Length));
  const r = await ImageReader.open(cut);
  t.after(() => r.close());
  assert.equal(r.generation, 1);
  assert.ok(older <= 1);
  await truncate(cut, 10);
  await assert.rejects(ImageReader.open(cut), isCode('E_IMAGE_TRUNCATED'));
});

test('an image written with a UUID keeps it in the header, a mismatch is corruption', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'u.imgc');
  const w = await ImageWriter.create(path, { level: 'none' });
  const ref = await w.putChunk(Buffer.from('x'));
  const m = manifestOf([fileEntry('x', [ref])], 'none', '12345678-1234-4234-8234-123456789abc');
  await w.commit(m);
  const data = await readFile(path);
  assert.equal(data.subarray(16, 32).toString('hex'), '12345678123442348234123456789abc');
  data[20] = data[20]! ^ 1;
  data.writeUInt32LE(crc32(data.subarray(0, 60)), 60);
  await writeFile(path, data);
  await assert.rejects(ImageReader.open(path), isCode('E_IMAGE_CORRUPT'));
});

test('a chunk read and decoded by a pool worker reports damage like one read here', async (t) => {
  const dir = await tempDir(t);
  const { path, manifest, files } = await smallImage(dir);
  const doc = (manifest.volumes[0] as FileVolume).entries.find((e) => e.path === 'usr/share/doc.txt')!;
  const [first, second, third] = doc.extents!.map((x) => x.chunk);
  const shared = () => Buffer.from(new SharedArrayBuffer(CHUNK_SIZE + 1));
  let r = await ImageReader.open(path);
  const infos = [first, second, third].map((id) => r.chunk(id!)!);
  // Intact: the worker's read gives the same bytes.
  const raw = await r.readChunk(first!, shared());
  assert.deepEqual(raw, files.get('usr/share/doc.txt')!.subarray(0, raw.length));
  await r.close();

  const flip = async (at: number) => {
    const fh = await open(path, 'r+');
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, at);
    b[0]! ^= 0x10;
    await fh.write(b, 0, 1, at);
    await fh.close();
  };
  // A bit of the first record's header (its id), and one of the second record's stored bytes.
  await flip(infos[0]!.offset + 20);
  await flip(infos[1]!.offset + RECORD_HEADER_SIZE + Math.floor(infos[1]!.storedLength / 2));
  r = await ImageReader.open(path);
  t.after(() => r.close());
  const damaged = (id: string, reason: RegExp) => (err: unknown) => {
    isCode('E_CHUNK_CORRUPT')(err);
    const e = err as ImageError;
    assert.equal(e.details.chunk, id);
    assert.match(String(e.details.reason), reason);
    assert.match(e.message, /usr\/share\/doc\.txt/);
    return true;
  };
  await assert.rejects(r.readChunk(first!, shared()), damaged(first!, /record header is damaged/));
  await assert.rejects(
    r.readChunk(second!, shared()),
    damaged(second!, /does not decompress|does not match its SHA-256/),
  );
  // The file cut short under an open reader: the record ends early.
  await truncate(path, infos[2]!.offset + RECORD_HEADER_SIZE + 10);
  await assert.rejects(r.readChunk(third!, shared()), damaged(third!, /file ends inside its record/));
});
