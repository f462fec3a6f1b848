import assert from 'node:assert/strict';
import { test } from 'node:test';

import { nextName, parseNameTemplate, TemplateError } from '../../src/server/naming.ts';

test('a counter is padded to its width, counts past it, and skips the names others hold', () => {
  const t = parseNameTemplate('lab1-{nn}');
  assert.equal(nextName(t, '52:54:00:00:00:01', new Set()), 'lab1-01');
  assert.equal(nextName(t, '52:54:00:00:00:01', new Set(['lab1-01', 'LAB1-02', 'pc'])), 'lab1-03');
  const full = new Set(Array.from({ length: 99 }, (_, i) => `lab1-${String(i + 1).padStart(2, '0')}`));
  assert.equal(nextName(t, 'aa', full), 'lab1-100');
  assert.equal(nextName(parseNameTemplate('r{n}x'), 'aa', new Set(['r1x'])), 'r2x');
});

test('{mac} names by the MAC; taken, it is refused rather than renamed', () => {
  const t = parseNameTemplate('pc-{mac}');
  assert.equal(nextName(t, '52:54:00:AB:cd:01', new Set()), 'pc-525400abcd01');
  assert.throws(() => nextName(t, '52:54:00:ab:cd:01', new Set(['pc-525400abcd01'])), /already another/);
});

test('bad templates are refused with the position of the fault', () => {
  const refuse = (text: string, why: RegExp, position: number) =>
    assert.throws(
      () => parseNameTemplate(text),
      (e: unknown) => e instanceof TemplateError && why.test(e.message) && e.position === position,
      text,
    );
  refuse('lab1-{nn', /unclosed "\{" at position 6/, 6);
  refuse('lab}', /"\}" without "\{" at position 4/, 4);
  refuse('lab-{x}', /unknown field \{x\} at position 5/, 5);
  refuse('lab', /give a number/, 1);
  refuse('lab_{nn}', /cannot be host names/, 1);
  refuse(`${'a'.repeat(60)}{nn}`, /cannot be host names/, 1);
});
