import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { zstdDecompressSync } from 'node:zlib';

import { CODEC_NONE, CODEC_ZSTD, chunkId, decodeChunk } from '../../src/image/codec.ts';
import { CompressPool } from '../../src/image/pool.ts';
import { textData } from './fixtures.ts';

test('the pool compresses slots of shared memory in place', async (t) => {
  const pool = new CompressPool(2);
  t.after(() => pool.close());
  const sab = new SharedArrayBuffer(3 * 65536);
  const raws = [
    textData(60_000, 1),
    Buffer.from(crypto.getRandomValues(new Uint8Array(60_000))),
    textData(100, 2),
  ];
  raws.forEach((r, i) => r.copy(Buffer.from(sab, i * 65536, 65536)));
  const res = await Promise.all(raws.map((r, i) => pool.compress(sab, i * 65536, r.length, 'balanced')));
  assert.equal(res[0]!.codec, CODEC_ZSTD);
  assert.equal(res[1]!.codec, CODEC_NONE);
  for (const [i, r] of raws.entries()) {
    const stored = Buffer.from(sab, i * 65536, res[i]!.storedLength);
    assert.deepEqual(decodeChunk(chunkId(r), res[i]!.codec, Buffer.from(stored), r.length), r);
  }
});

test('with hash, a job also names the raw bytes, before compressing them in place', async (t) => {
  const pool = new CompressPool(1);
  t.after(() => pool.close());
  const raw = textData(200_000, 5);
  const sab = new SharedArrayBuffer(raw.length);
  raw.copy(Buffer.from(sab));
  const r = await pool.compress(sab, 0, raw.length, 'speed', { hash: true });
  assert.equal(r.id, chunkId(raw));
  assert.equal(r.codec, CODEC_ZSTD);
  assert.deepEqual(
    decodeChunk(r.id!, r.codec, Buffer.from(Buffer.from(sab, 0, r.storedLength)), raw.length),
    raw,
  );
  const none = await pool.compress(sab, 0, 1000, 'none', { hash: true });
  assert.equal(none.codec, CODEC_NONE);
  assert.equal(none.id, chunkId(Buffer.from(sab, 0, 1000)));
});

test('one worker keeps every frame intact across levels, sizes and incompressible jobs', async (t) => {
  // The worker reuses its zstd contexts and output buffer from job to job: a frame must never carry state over.
  const pool = new CompressPool(1);
  t.after(() => pool.close());
  const SLOT = 300_000;
  const jobs = Array.from({ length: 24 }, (_, i) => {
    const len = [1, 17, 4096, 299_999, 300_000][i % 5]!;
    const raw = i % 3 === 2 ? randomBytes(len) : textData(len, i + 1);
    return { raw, level: (['speed', 'balanced', 'size'] as const)[i % 3]! };
  });
  const sab = new SharedArrayBuffer(jobs.length * SLOT);
  jobs.forEach((j, i) => j.raw.copy(Buffer.from(sab, i * SLOT, SLOT)));
  const res = await Promise.all(jobs.map((j, i) => pool.compress(sab, i * SLOT, j.raw.length, j.level)));
  for (const [i, j] of jobs.entries()) {
    const r = res[i]!;
    if (i % 3 === 2 && j.raw.length > 100) assert.equal(r.codec, CODEC_NONE, `job ${i} is random`);
    const stored = Buffer.from(Buffer.from(sab, i * SLOT, r.storedLength));
    assert.deepEqual(decodeChunk(chunkId(j.raw), r.codec, stored, j.raw.length), j.raw, `job ${i}`);
  }
});

test('a chunk is stored the same whatever its worker compressed before, incompressible chunks included', async (t) => {
  // An incompressible chunk once reset the worker's zstd context, which then forgot its
  // parameters and compressed everything after it at zstd's default level.
  const raw = textData(1 << 20, 7);
  const SLOT = raw.length;
  const storedAfter = async (before: Buffer[], level: 'speed' | 'balanced' | 'size'): Promise<Buffer> => {
    const pool = new CompressPool(1);
    t.after(() => pool.close());
    const sab = new SharedArrayBuffer(SLOT);
    for (const b of before) {
      b.copy(Buffer.from(sab));
      await pool.compress(sab, 0, b.length, level);
    }
    raw.copy(Buffer.from(sab));
    const r = await pool.compress(sab, 0, raw.length, level);
    assert.equal(r.codec, CODEC_ZSTD);
    return Buffer.from(Buffer.from(sab, 0, r.storedLength));
  };
  for (const level of ['speed', 'balanced', 'size'] as const) {
    const fresh = await storedAfter([], level);
    const afterRandom = await storedAfter([randomBytes(SLOT), textData(5000, 3), randomBytes(70_000)], level);
    // equals(), not deepEqual: a diff of two large buffers takes minutes to print.
    assert.ok(
      afterRandom.equals(fresh),
      `${level}: ${afterRandom.length} stored bytes after incompressible chunks, ${fresh.length} on a fresh worker`,
    );
  }
});

test('a text stream is hashed and compressed as one zstd frame while it is written', async (t) => {
  const pool = new CompressPool(1);
  t.after(() => pool.close());
  const parts = [
    '{"a":',
    JSON.stringify('ünïcödé ✓'.repeat(5000)),
    ',"b":[',
    textData(300_000, 9).toString('latin1'),
    ']}',
  ];
  const stream = pool.textStream('balanced');
  for (const p of parts) stream.write(p);
  const r = await stream.end();
  const raw = Buffer.from(parts.join(''), 'utf8');
  assert.equal(r.rawLength, raw.length);
  assert.deepEqual(r.sha, createHash('sha256').update(raw).digest());
  assert.ok(r.stored.length < raw.length / 2);
  assert.ok(zstdDecompressSync(r.stored).equals(raw));
  await assert.rejects(stream.end(), /already ended/);
  assert.throws(() => stream.write('more'), /already ended/);
});

test('a text stream whose worker is gone fails at end instead of waiting forever', async () => {
  const pool = new CompressPool(1);
  const stream = pool.textStream('speed');
  stream.write('some text');
  await pool.close();
  await assert.rejects(stream.end(), /worker exited/);
  // An aborted stream is dropped quietly, whether or not its worker is alive.
  const pool2 = new CompressPool(1);
  const s2 = pool2.textStream('balanced');
  s2.write('x');
  s2.abort();
  s2.abort();
  await pool2.close();
});

test('makeDirs makes folders in order with the mode given, and names the first it cannot make', async (t) => {
  const pool = new CompressPool(1);
  t.after(() => pool.close());
  const root = mkdtempSync(join(tmpdir(), 'imgcast-pool-'));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  const made = await pool.makeDirs(
    [join(root, 'a'), join(root, 'a/b'), Buffer.from(join(root, 'a/b/\xff'), 'latin1')],
    0o700,
  );
  assert.deepEqual(made, { ok: true });
  assert.equal(statSync(join(root, 'a/b')).mode & 0o777, 0o700 & ~process.umask());
  assert.ok(readdirSync(join(root, 'a/b'), { encoding: 'buffer' })[0]!.equals(Buffer.from([0xff])));
  const failed = await pool.makeDirs([join(root, 'c'), join(root, 'missing/d'), join(root, 'e')], 0o755);
  assert.equal(failed.ok, false);
  assert.ok(!failed.ok && failed.index === 1 && failed.code === 'ENOENT', JSON.stringify(failed));
  assert.ok(statSync(join(root, 'c')).isDirectory());
  assert.throws(() => statSync(join(root, 'e')), /ENOENT/);
});
