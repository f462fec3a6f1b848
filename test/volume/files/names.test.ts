import assert from 'node:assert/strict';
import { isUtf8 } from 'node:buffer';
import { test } from 'node:test';

import fc from 'fast-check';

import {
  displayName,
  fsPath,
  nameBytes,
  nameFromBytes,
  parseDisplayName,
} from '../../../src/volume/files/names.ts';

const latin1 = (s: string) => Buffer.from(s, 'latin1');

test('any bytes of a name come back exactly, through JSON too', () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 1, maxLength: 64 }), (raw) => {
      const b = Buffer.from(raw);
      const name = nameFromBytes(b);
      assert.deepEqual(nameBytes(name), b);
      const viaJson = JSON.parse(JSON.stringify(name)) as string;
      assert.equal(viaJson, name);
      const p = fsPath(viaJson);
      assert.deepEqual(typeof p === 'string' ? Buffer.from(p, 'utf8') : p, b);
      // A name that is UTF-8 stays the plain string, and is its own filesystem path.
      if (isUtf8(b)) {
        assert.equal(name, b.toString('utf8'));
        assert.equal(p, name);
      } else {
        assert.ok(!name.isWellFormed());
      }
    }),
    { numRuns: 2000 },
  );
});

test('valid UTF-8 of every plane is kept as it is', () => {
  fc.assert(
    fc.property(fc.string({ unit: 'grapheme', minLength: 1 }), (s) => {
      assert.equal(nameFromBytes(Buffer.from(s, 'utf8')), s);
      assert.equal(fsPath(s), s);
    }),
  );
});

test('only the bytes that break UTF-8 are escaped, one surrogate each', () => {
  assert.equal(nameFromBytes(latin1('caf\xe9.txt')), 'caf\udce9.txt');
  // Valid sequences around an invalid byte stay characters.
  assert.equal(nameFromBytes(Buffer.from([0xc3, 0xa9, 0xff, 0xc3, 0xa9])), '\u00e9\udcff\u00e9');
  // A truncated sequence, an overlong form and an encoded surrogate are not UTF-8: byte by byte.
  assert.equal(nameFromBytes(Buffer.from([0x61, 0xe2, 0x82])), 'a\udce2\udc82');
  assert.equal(nameFromBytes(Buffer.from([0xc0, 0xaf])), '\udcc0\udcaf');
  assert.equal(nameFromBytes(Buffer.from([0xed, 0xb2, 0x80])), '\udced\udcb2\udc80');
  assert.equal(nameFromBytes(Buffer.from([0xf4, 0x90, 0x80, 0x80])), '\udcf4\udc90\udc80\udc80');
});

test('a lone surrogate that stands for no byte is refused, not written as something else', () => {
  for (const bad of ['a\ud800b', 'x\udc10', '\udfff']) {
    assert.throws(
      () => fsPath(bad),
      (err: Error & { code?: string }) => err.code === 'E_NAME_INVALID',
    );
  }
  // A proper pair is an ordinary character.
  assert.equal(fsPath('\ud83d\ude00'), '\ud83d\ude00');
});

test('names show on one line with \\xNN for bytes and controls, and parse back', () => {
  assert.equal(displayName('caf\udce9.txt'), 'caf\\xE9.txt');
  assert.equal(displayName('new\nline\ttab\x7f'), 'new\\nline\\ttab\\x7F');
  assert.equal(displayName('ünïcödé ☃ \ud83d\ude00'), 'ünïcödé ☃ \ud83d\ude00');
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 1, maxLength: 40 }), (raw) => {
      const name = nameFromBytes(Buffer.from(raw));
      // Backslashes of the name itself are not escaped, so only names without one parse back exactly.
      if (!name.includes('\\')) assert.equal(parseDisplayName(displayName(name)), name);
    }),
    { numRuns: 1000 },
  );
});
