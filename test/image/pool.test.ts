import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runInNewContext } from 'node:vm';
import { Worker } from 'node:worker_threads';

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

test('the workers do not leave a global gc for other code', async (t) => {
  const pool = new CompressPool(2);
  t.after(() => pool.close());
  const sab = new SharedArrayBuffer(2048);
  await Promise.all([pool.compress(sab, 0, 1000, 'speed'), pool.compress(sab, 1024, 1000, 'speed')]);
  assert.equal(runInNewContext('typeof gc'), 'undefined');
  const w = new Worker(`let gc = 'mine'; require('node:worker_threads').parentPort.postMessage(gc);`, {
    eval: true,
  });
  const msg = await new Promise((resolve, reject) => {
    w.once('message', resolve);
    w.once('error', reject);
  });
  await w.terminate();
  assert.equal(msg, 'mine');
});
