/**
 * flatFileProvider on a real file: chunk ids from the parallel hashing, and readStored
 * reading into a buffer the caller hands back.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { flatFileProvider } from '../../src/transport/index.ts';
import { tempDir } from '../helpers/env.ts';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

test('chunk ids are the SHA-256 of each chunk, in file order, with a short last chunk', async (t) => {
  const dir = await tempDir(t);
  const chunk = 64 * 1024;
  // Eleven chunks: more than the hashing lanes, so each lane hashes several, plus a tail.
  const data = Buffer.concat([randomBytes(10 * chunk), Buffer.alloc(chunk), randomBytes(777)]);
  const path = join(dir, 'f.bin');
  await writeFile(path, data);
  const p = await flatFileProvider(path, chunk);
  t.after(() => p.close?.());
  const want: string[] = [];
  for (let off = 0; off < data.length; off += chunk) want.push(sha(data.subarray(off, off + chunk)));
  assert.deepEqual(
    p.chunks.map((c) => c.id),
    want,
  );
  assert.equal(p.chunks.at(-1)?.storedLength, 777);
  assert.deepEqual((p.meta as { order: string[] }).order, want);
});

test('readStored fills a large enough buffer it is given, and allocates when it is too small', async (t) => {
  const dir = await tempDir(t);
  const chunk = 4096;
  const data = randomBytes(3 * chunk + 100);
  const path = join(dir, 'f.bin');
  await writeFile(path, data);
  const p = await flatFileProvider(path, chunk);
  t.after(() => p.close?.());
  const into = Buffer.alloc(chunk);
  const second = p.chunks[1]!;
  const got = await p.readStored(second.id, into);
  assert.equal(got.buffer, into.buffer);
  assert.deepEqual(got, data.subarray(chunk, 2 * chunk));
  const tail = p.chunks[3]!;
  const gotTail = await p.readStored(tail.id, into);
  assert.equal(gotTail.length, 100);
  assert.deepEqual(gotTail, data.subarray(3 * chunk));
  const small = Buffer.alloc(10);
  const fresh = await p.readStored(second.id, small);
  assert.notEqual(fresh.buffer, small.buffer);
  assert.equal(sha(fresh), second.id);
});

test('an empty file has no chunks', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'empty.bin');
  await writeFile(path, Buffer.alloc(0));
  const p = await flatFileProvider(path);
  t.after(() => p.close?.());
  assert.equal(p.chunks.length, 0);
});
