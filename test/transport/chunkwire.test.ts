import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { test } from 'node:test';
import fc from 'fast-check';
import { GCM_TAG, openChunk, rawDecoder, sealChunk } from '../../src/transport/chunkwire.ts';
import { TransportError } from '../../src/transport/errors.ts';

const key = { key: randomBytes(32), salt: randomBytes(4) };
const rejected = (e: unknown) => e instanceof TransportError && e.code === 'E_CHUNK_REJECTED';

test('sealed chunks open to the same bytes and differ from the plaintext', () => {
  const data = randomBytes(100_000);
  const id = createHash('sha256').update(data).digest('hex');
  const sealed = sealChunk(key, 5, id, data);
  assert.equal(sealed.length, data.length + GCM_TAG);
  assert.notDeepEqual(sealed.subarray(0, 64), data.subarray(0, 64));
  assert.deepEqual(openChunk(key, 5, id, sealed), data);
  // Repairs resend identical ciphertext.
  assert.deepEqual(sealChunk(key, 5, id, data), sealed);
});

test('any tampering, another seq, id or key is rejected', () => {
  const data = randomBytes(5000);
  const id = createHash('sha256').update(data).digest('hex');
  const sealed = sealChunk(key, 1, id, data);
  fc.assert(
    fc.property(fc.nat({ max: sealed.length - 1 }), fc.integer({ min: 1, max: 255 }), (at, x) => {
      const t = Buffer.from(sealed);
      t[at] = (t[at] as number) ^ x;
      assert.throws(() => openChunk(key, 1, id, t), rejected);
    }),
    { numRuns: 200 },
  );
  assert.throws(() => openChunk(key, 2, id, sealed), rejected);
  assert.throws(() => openChunk(key, 1, 'ab'.repeat(32), sealed), rejected);
  assert.throws(() => openChunk({ key: randomBytes(32), salt: key.salt }, 1, id, sealed), rejected);
  assert.throws(() => openChunk(key, 1, id, Buffer.alloc(3)), rejected);
});

test('the raw decoder accepts only bytes that match the id', () => {
  const data = randomBytes(1000);
  const id = createHash('sha256').update(data).digest('hex');
  assert.deepEqual(rawDecoder(id, 0, data, data.length), data);
  const bad = Buffer.from(data);
  bad[10] = (bad[10] as number) ^ 1;
  assert.throws(() => rawDecoder(id, 0, bad, bad.length), rejected);
  assert.throws(() => rawDecoder(id, 0, data, data.length + 1), rejected);
  assert.throws(() => rawDecoder(id, 3, data, data.length), /codec 3/);
});
