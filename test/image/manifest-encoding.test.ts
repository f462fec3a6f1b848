import assert from 'node:assert/strict';
import { isAscii } from 'node:buffer';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import zlib from 'node:zlib';

import fc from 'fast-check';

import { CODEC_ZSTD } from '../../src/image/codec.ts';
import { asciiJson, encodeManifest, jsonPieces } from '../../src/image/manifest-encoding.ts';
import type { FileEntry } from '../../src/image/types.ts';
import { manifestOf } from './fixtures.ts';

test('jsonPieces joins to exactly what JSON.stringify writes, for any plain data', () => {
  // Long arrays are where the pieces differ in shape from the recursion; mix them in on purpose.
  const data = fc.letrec((tie) => ({
    node: fc.oneof(
      { depthSize: 'small', withCrossShrink: true },
      fc.jsonValue(),
      fc.array(tie('node'), { maxLength: 100 }),
      fc.dictionary(fc.string(), fc.oneof(tie('node'), fc.constant(undefined))),
      fc.array(fc.oneof(fc.integer(), fc.constant(undefined), fc.string()), {
        minLength: 60,
        maxLength: 200,
      }),
    ),
  })).node;
  fc.assert(
    fc.property(data, (v) => {
      assert.equal([...jsonPieces(v)].join(''), JSON.stringify(v));
    }),
    { numRuns: 300 },
  );
});

test('asciiJson writes only ASCII and parses back to the same value, lone surrogates included', () => {
  const textOf = (...plain: string[]): fc.Arbitrary<string> =>
    fc.string({
      unit: fc.oneof(
        fc.constantFrom(...plain),
        fc.integer({ min: 0xd800, max: 0xdfff }).map((n) => String.fromCharCode(n)),
      ),
    });
  const text = textOf('a', '"', '\\', '\n', 'é', '✓', '\u{1F600}');
  // Keys hold no backslash: V8's JSON.parse (Node 24 and 26, nodejs/node#63785) caches a
  // parsed key holding one, and may then read a later escaped key at the same place in an
  // object as that cached key (after {"\\":0}, {"\u2713":0} parses to {"\\":0}). The
  // oracle here is JSON.parse, so such keys would test V8, not asciiJson. Keys still
  // carry every escape asciiJson writes and JSON.stringify's own ("\"", "\n", surrogates).
  const key = textOf('a', '"', '\n', 'é', '✓', '\u{1F600}');
  fc.assert(
    fc.property(fc.dictionary(key, fc.oneof(text, fc.integer())), (v) => {
      const json = asciiJson(JSON.stringify(v));
      assert.ok(isAscii(Buffer.from(json)), json);
      assert.deepEqual(JSON.parse(json), JSON.parse(JSON.stringify(v)));
    }),
    { numRuns: 300 },
  );
});

test('encodeManifest: the record is zstd of the manifest as ASCII JSON, with its true length and SHA-256', async () => {
  // Enough entries, with non-ASCII names, to cross several 1 MiB staging buffers.
  const entries: FileEntry[] = Array.from({ length: 20_000 }, (_, i) => ({
    path: `dir-${i % 97}/fïle-✓-${i}`,
    type: 'file',
    mode: 0o644,
    uid: i % 7,
    gid: 0,
    mtimeNs: `${1_700_000_000_000_000_000n + BigInt(i)}`,
    atimeNs: '0',
    addedIn: 1,
    size: 10,
    extents: [{ offset: 0, length: 10, chunk: 'ab'.repeat(32), chunkOffset: i * 10 }],
  }));
  const m = manifestOf(entries);
  const json = Buffer.from(asciiJson(JSON.stringify(m)), 'ascii');
  assert.ok(json.includes('f\\u00efle-\\u2713-'), 'non-ASCII names are escaped');
  assert.ok(json.length > 3 << 20, `only ${json.length} bytes of JSON`);
  const enc = await encodeManifest(m);
  assert.equal(enc.codec, CODEC_ZSTD);
  assert.equal(enc.rawLength, json.length);
  assert.deepEqual(enc.sha, createHash('sha256').update(json).digest());
  const stored = Buffer.concat(enc.stored);
  assert.equal(stored.length, enc.storedLength);
  assert.ok(stored.length < json.length / 4);
  assert.deepEqual(zlib.zstdDecompressSync(stored), json);
  assert.deepEqual(JSON.parse(json.toString('latin1')), JSON.parse(JSON.stringify(m)));
});
