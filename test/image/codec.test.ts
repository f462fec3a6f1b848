import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import zlib from 'node:zlib';

import { CODEC_NONE, CODEC_ZSTD, chunkId, decodeChunk, encodeChunk } from '../../src/image/codec.ts';
import { ImageError } from '../../src/image/errors.ts';
import { COMPRESSION_LEVELS } from '../../src/image/types.ts';
import { textData } from './fixtures.ts';

const SRC_DIR = join(import.meta.dirname, '../../src');

test('chunkId is the lowercase hex SHA-256 of the content', () => {
  assert.equal(
    chunkId(Buffer.from('abc')),
    'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad',
  );
});

test('every level round-trips compressible, incompressible and empty data', () => {
  const samples = [textData(200_000), randomBytes(50_000), Buffer.alloc(0), Buffer.alloc(1 << 20)];
  for (const level of COMPRESSION_LEVELS) {
    for (const raw of samples) {
      const { codec, stored } = encodeChunk(raw, level);
      assert.deepEqual(decodeChunk(chunkId(raw), codec, stored, raw.length), raw, `${level} ${raw.length}`);
      if (level === 'none' || raw.length === 0) assert.equal(codec, CODEC_NONE);
    }
  }
});

test('compressible data is compressed, incompressible data is stored as is', () => {
  const text = encodeChunk(textData(200_000), 'balanced');
  assert.equal(text.codec, CODEC_ZSTD);
  assert.ok(text.stored.length < 100_000);
  const rnd = randomBytes(100_000);
  const r = encodeChunk(rnd, 'size');
  assert.equal(r.codec, CODEC_NONE);
  assert.equal(r.stored.length, rnd.length);
});

test('higher levels do not compress worse on real text and machine code', () => {
  // Real content: synthetic word salad is where zstd's levels 1 and 2 trade places (level 2 looks for longer matches).
  const source = readdirSync(SRC_DIR, { recursive: true, withFileTypes: true })
    .filter((d) => d.isFile() && d.name.endsWith('.ts'))
    .map((d) => readFileSync(join(d.parentPath, d.name)));
  const samples = {
    'imgcast source': Buffer.concat(source),
    'node binary': readFileSync(process.execPath).subarray(0, 1 << 22),
  };
  for (const [what, raw] of Object.entries(samples)) {
    const sizes = (['speed', 'balanced', 'size'] as const).map((l) => encodeChunk(raw, l).stored.length);
    assert.ok(sizes[0]! > sizes[1]! && sizes[1]! > sizes[2]!, `${what}: ${sizes.join(' ')}`);
  }
});

function assertCorrupt(f: () => unknown, pattern?: RegExp): void {
  assert.throws(f, (err: unknown) => {
    assert.ok(err instanceof ImageError);
    assert.equal(err.code, 'E_CHUNK_CORRUPT');
    if (pattern) assert.match(err.message, pattern);
    return true;
  });
}

test('decodeChunk rejects wrong content, wrong length, bad codec and garbage', () => {
  const raw = textData(100_000);
  const id = chunkId(raw);
  const { codec, stored } = encodeChunk(raw, 'balanced');
  const flipped = Buffer.from(stored);
  flipped[flipped.length >> 1]! ^= 0x10;
  assertCorrupt(() => decodeChunk(id, codec, flipped, raw.length), new RegExp(id));
  assertCorrupt(() => decodeChunk(id, codec, stored, raw.length - 1));
  assertCorrupt(() => decodeChunk(id, codec, stored, raw.length + 1));
  assertCorrupt(() => decodeChunk(id, 7, stored, raw.length), /codec/);
  assertCorrupt(() => decodeChunk(id, CODEC_ZSTD, randomBytes(1000), raw.length));
  assertCorrupt(() => decodeChunk('nothex', CODEC_NONE, raw, raw.length));
  assertCorrupt(() => decodeChunk(chunkId(Buffer.from('x')), CODEC_NONE, raw, raw.length), /SHA-256/);
  assertCorrupt(() => decodeChunk(id, CODEC_NONE, raw, -1));
});

test('a decompression bomb stops at the claimed raw length', () => {
  // 64 MiB of zeros compresses to a few KiB; claiming 1000 bytes must not inflate it.
  const bomb = zlib.zstdCompressSync(Buffer.alloc(64 << 20));
  const before = process.memoryUsage().arrayBuffers;
  assertCorrupt(() => decodeChunk(chunkId(Buffer.alloc(1000)), CODEC_ZSTD, bomb, 1000));
  assert.ok(process.memoryUsage().arrayBuffers - before < 32 << 20);
});

test('decodeChunk into a recycled buffer: same bytes, and damage in one chunk does not leak into the next', () => {
  const into = Buffer.alloc((1 << 20) + 1);
  const good = textData(500_000, 11);
  const enc = encodeChunk(good, 'balanced');
  const id = chunkId(good);
  const plain = randomBytes(1000);
  for (let round = 0; round < 3; round++) {
    const out = decodeChunk(id, enc.codec, enc.stored, good.length, into);
    assert.equal(out.buffer, into.buffer, 'decoded into the given buffer');
    assert.deepEqual(out, good);
    // A truncated frame leaves zstd mid-frame; the next decode must start clean.
    assertCorrupt(() =>
      decodeChunk(id, enc.codec, enc.stored.subarray(0, enc.stored.length >> 1), good.length, into),
    );
    assertCorrupt(
      () => decodeChunk(id, enc.codec, enc.stored, good.length - 1, into),
      /instead of|decompress/,
    );
    const none = decodeChunk(chunkId(plain), CODEC_NONE, plain, plain.length, into);
    assert.equal(none.buffer, into.buffer, 'stored chunks are copied, never aliased');
    assert.deepEqual(none, plain);
  }
});

test('decodeChunk into a buffer decodes a frame written as a stream, which states no size', async () => {
  // The manifest is compressed as a stream (its length is unknown until it ends); its
  // frame may leave a last empty block that one decoding call does not consume.
  const raw = textData(12 << 20, 11);
  const z = zlib.createZstdCompress();
  const parts: Buffer[] = [];
  z.on('data', (b: Buffer) => parts.push(b));
  const ended = new Promise((resolve) => z.on('end', resolve));
  for (let i = 0; i < raw.length; i += 1 << 20) z.write(raw.subarray(i, i + (1 << 20)));
  z.end();
  await ended;
  const stored = Buffer.concat(parts);
  const into = Buffer.allocUnsafe(raw.length + 1);
  const out = decodeChunk(chunkId(raw), CODEC_ZSTD, stored, raw.length, into);
  assert.ok(out.equals(raw));
  // And in a pool worker, which decodes the same way.
  const { CompressPool } = await import('../../src/image/pool.ts');
  const pool = new CompressPool(1);
  try {
    const sab = new SharedArrayBuffer(stored.length + raw.length + 1);
    const s = Buffer.from(sab, 0, stored.length);
    stored.copy(s);
    const o = Buffer.from(sab, stored.length, raw.length + 1);
    assert.equal(await pool.decode(chunkId(raw), CODEC_ZSTD, s, o, raw.length), undefined);
    assert.ok(o.subarray(0, raw.length).equals(raw));
  } finally {
    await pool.close();
  }
});
