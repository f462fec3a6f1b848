/**
 * Property-based robustness: random files and randomly damaged valid images must
 * end in an ImgcastError with a known code, or in correct data — never another
 * exception type, a crash or a hang.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';

import fc from 'fast-check';

import { chunkId, decodeChunk, encodeChunk } from '../../src/image/codec.ts';
import { ImgcastError } from '../../src/errors.ts';
import { HEADER_MAGIC } from '../../src/image/format.ts';
import { ImageReader } from '../../src/image/reader.ts';
import { CHUNK_SIZE, type ChunkRef, type FileVolume } from '../../src/image/types.ts';
import { verifyImage } from '../../src/image/verify.ts';
import { ImageWriter } from '../../src/image/writer.ts';
import { tempDir } from '../helpers/env.ts';
import { fileEntry, manifestOf, textData } from './fixtures.ts';

const KNOWN = new Set([
  'E_IMAGE_MAGIC',
  'E_IMAGE_VERSION',
  'E_IMAGE_TRUNCATED',
  'E_IMAGE_CORRUPT',
  'E_CHUNK_CORRUPT',
  'E_CHUNK_MISSING',
]);
const CASE_TIMEOUT_MS = 5000;

function expectKnown(err: unknown): void {
  assert.ok(err instanceof ImgcastError, `not an ImgcastError: ${(err as Error)?.stack ?? String(err)}`);
  assert.ok(KNOWN.has(err.code), `unexpected code ${err.code}: ${err.message}`);
}

async function withTimeout<T>(p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`case did not finish within ${CASE_TIMEOUT_MS} ms`)),
      CASE_TIMEOUT_MS,
    );
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Opens `path`, reads every chunk; returns how many chunks came back (all verified against originals). */
async function exercise(path: string, originals: Map<string, Buffer>): Promise<number> {
  let reader: ImageReader;
  try {
    reader = await ImageReader.open(path);
  } catch (err) {
    expectKnown(err);
    return 0;
  }
  let good = 0;
  // Every other chunk through a pool worker (shared memory), which reads and checks its record itself.
  const shared = Buffer.from(new SharedArrayBuffer(CHUNK_SIZE + 1));
  let n = 0;
  try {
    for (const id of reader.chunkIds()) {
      try {
        const data = await reader.readChunk(id, n++ % 2 === 1 ? shared : undefined);
        assert.equal(chunkId(data), id);
        const orig = originals.get(id);
        if (orig) assert.deepEqual(data, orig);
        good++;
      } catch (err) {
        expectKnown(err);
      }
    }
  } finally {
    await reader.close();
  }
  return good;
}

/** A small two-generation image with stored and compressed chunks, so mutations hit every structure often. */
async function baseImage(dir: string): Promise<{ bytes: Buffer; originals: Map<string, Buffer> }> {
  const path = join(dir, 'base.imgc');
  const originals = new Map<string, Buffer>();
  const w = await ImageWriter.create(path, { level: 'balanced' });
  const refs: ChunkRef[] = [];
  for (const d of [textData(3000, 1), randomBytes(600), Buffer.alloc(0), textData(1500, 2)]) {
    refs.push(await w.putChunk(d));
    originals.set(chunkId(d), d);
  }
  await w.commit(manifestOf([fileEntry('a', refs.slice(0, 2)), fileEntry('b', refs.slice(2))]));
  const { writer, manifest } = await ImageWriter.append(path);
  const extra = textData(2000, 3);
  originals.set(chunkId(extra), extra);
  (manifest.volumes[0] as FileVolume).entries.push(fileEntry('c', [await writer.putChunk(extra)]));
  await writer.commit(manifest);
  return { bytes: await readFile(path), originals };
}

type Mutation =
  | { kind: 'flip'; at: number[]; bit: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'insert'; at: number; bytes: Uint8Array }
  | { kind: 'delete'; at: number; length: number }
  | { kind: 'copy'; from: number; to: number; length: number }
  | { kind: 'overwrite'; at: number; bytes: Uint8Array };

function mutation(size: number): fc.Arbitrary<Mutation> {
  const pos = fc.nat({ max: size - 1 });
  // Half the positions fall in the last 400 bytes, where trailer, index and manifest live.
  const hot = fc.oneof(pos, fc.integer({ min: Math.max(0, size - 400), max: size - 1 }));
  return fc.oneof(
    fc.record({
      kind: fc.constant('flip' as const),
      at: fc.array(hot, { minLength: 1, maxLength: 4 }),
      bit: fc.nat(7),
    }),
    fc.record({ kind: fc.constant('truncate' as const), at: hot }),
    fc.record({
      kind: fc.constant('insert' as const),
      at: hot,
      bytes: fc.uint8Array({ minLength: 1, maxLength: 64 }),
    }),
    fc.record({ kind: fc.constant('delete' as const), at: hot, length: fc.integer({ min: 1, max: 200 }) }),
    fc.record({
      kind: fc.constant('copy' as const),
      from: pos,
      to: hot,
      length: fc.integer({ min: 1, max: 300 }),
    }),
    fc.record({
      kind: fc.constant('overwrite' as const),
      at: hot,
      bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }),
    }),
  );
}

function apply(base: Buffer, m: Mutation): Buffer {
  const b = Buffer.from(base);
  switch (m.kind) {
    case 'flip':
      for (const at of m.at) b[at]! ^= 1 << m.bit;
      return b;
    case 'truncate':
      return b.subarray(0, m.at);
    case 'insert':
      return Buffer.concat([b.subarray(0, m.at), m.bytes, b.subarray(m.at)]);
    case 'delete':
      return Buffer.concat([b.subarray(0, m.at), b.subarray(m.at + m.length)]);
    case 'copy':
      if (m.from < b.length && m.to < b.length)
        b.copy(b, m.to, m.from, Math.min(b.length, m.from + m.length));
      return b;
    case 'overwrite':
      Buffer.from(m.bytes).copy(b, m.at);
      return b;
  }
}

test('randomly mutated images give known errors or correct data', async (t) => {
  const dir = await tempDir(t);
  const { bytes, originals } = await baseImage(dir);
  const path = join(dir, 'mutant.imgc');
  let opened = 0;
  await fc.assert(
    fc.asyncProperty(fc.array(mutation(bytes.length), { minLength: 1, maxLength: 3 }), async (ms) => {
      let b = bytes;
      for (const m of ms) if (b.length > 0) b = apply(b, { ...m } as Mutation);
      await writeFile(path, b);
      if ((await withTimeout(exercise(path, originals))) > 0) opened++;
    }),
    { numRuns: 400 },
  );
  // The property must have exercised chunk reads too, not only failed opens.
  assert.ok(opened > 0);
});

test('verifyImage never throws for damage', async (t) => {
  const dir = await tempDir(t);
  const { bytes } = await baseImage(dir);
  const path = join(dir, 'mutant.imgc');
  await fc.assert(
    fc.asyncProperty(mutation(bytes.length), async (m) => {
      await writeFile(path, apply(bytes, m));
      const report = await withTimeout(verifyImage(path));
      for (const p of report.problems) assert.ok(KNOWN.has(p.code), p.code);
      if (report.ok) assert.equal(report.chunksChecked, report.chunksTotal);
    }),
    { numRuns: 150 },
  );
});

test('random files, with or without the magic, give known errors', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'random.imgc');
  await fc.assert(
    fc.asyncProperty(fc.boolean(), fc.uint8Array({ maxLength: 1200 }), async (magic, body) => {
      const b = magic ? Buffer.concat([HEADER_MAGIC, Buffer.from([1, 0, 0, 0]), body]) : Buffer.from(body);
      await writeFile(path, b);
      await withTimeout(exercise(path, new Map()));
    }),
    { numRuns: 200 },
  );
});

test('decodeChunk on random and damaged input gives E_CHUNK_CORRUPT or the right bytes', () => {
  const raw = textData(5000, 4);
  const id = chunkId(raw);
  const enc = encodeChunk(raw, 'balanced');
  fc.assert(
    fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 2000 }).map((u) => Buffer.from(u)),
        fc.tuple(fc.nat(enc.stored.length - 1), fc.nat(7)).map(([at, bit]) => {
          const b = Buffer.from(enc.stored);
          b[at]! ^= 1 << bit;
          return b;
        }),
        fc.nat(enc.stored.length).map((n) => enc.stored.subarray(0, n)),
      ),
      fc.constantFrom(0, 1, 2, 255),
      fc.oneof(fc.constant(raw.length), fc.integer({ min: -5, max: 1 << 30 })),
      fc.oneof(
        fc.constant(id),
        fc.uint8Array({ minLength: 32, maxLength: 32 }).map((u) => Buffer.from(u).toString('hex')),
      ),
      (stored, codec, rawLength, cid) => {
        try {
          const out = decodeChunk(cid, codec, stored, rawLength);
          assert.equal(out.length, rawLength);
          assert.equal(chunkId(out), cid);
        } catch (err) {
          assert.ok(err instanceof ImgcastError, String(err));
          assert.equal(err.code, 'E_CHUNK_CORRUPT');
        }
      },
    ),
    { numRuns: 1000 },
  );
});
