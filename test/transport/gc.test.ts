import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runInNewContext } from 'node:vm';

import { collectYoung } from '../../src/transport/gc.ts';

test('collectYoung frees dead datagram-sized buffers without exposing a global gc', () => {
  const before = process.memoryUsage().arrayBuffers;
  for (let i = 0; i < 2000; i++) Buffer.allocUnsafeSlow(8692).fill(i & 0xff);
  collectYoung();
  collectYoung();
  const after = process.memoryUsage().arrayBuffers;
  // 17 MB of dead buffers were allocated; after the collections far less than that is held.
  assert.ok(after - before < 8 * 1024 * 1024, `${((after - before) / 1048576).toFixed(1)} MiB still held`);
  assert.equal(typeof (globalThis as { gc?: unknown }).gc, 'undefined');
  assert.equal(runInNewContext('typeof gc'), 'undefined');
});
