import assert from 'node:assert/strict';
import { mkdirSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  assertEntryPath,
  checkEntryPath,
  makeFolder,
  normalizeImagePath,
  safeJoin,
} from '../../../src/volume/files/paths.ts';
import { tempDir } from '../../helpers/env.ts';

test('normalizeImagePath gives the canonical image path', () => {
  assert.equal(normalizeImagePath('/etc/./x/'), 'etc/x');
  assert.equal(normalizeImagePath(''), '.');
  assert.equal(normalizeImagePath('/'), '.');
  assert.equal(normalizeImagePath('.'), '.');
  assert.equal(normalizeImagePath('a//b///c'), 'a/b/c');
  assert.equal(normalizeImagePath('a/b/../c'), 'a/c');
  assert.equal(normalizeImagePath('a/..'), '.');
  assert.equal(normalizeImagePath(' lead space/-dash'), ' lead space/-dash');
  for (const bad of ['..', '../x', '/..', 'a/../../b', 'a\0b']) {
    assert.throws(() => normalizeImagePath(bad), { code: 'E_PATH_ESCAPE' }, bad);
  }
});

test('normalized paths are canonical and accepted as entry paths', () => {
  const segment = fc.constantFrom('a', 'b', '.', '..', '', 'x y', 'ü');
  fc.assert(
    fc.property(fc.array(segment, { maxLength: 8 }), fc.boolean(), (parts, lead) => {
      let out: string;
      try {
        out = normalizeImagePath((lead ? '/' : '') + parts.join('/'));
      } catch {
        return;
      }
      assert.equal(normalizeImagePath(out), out);
      assert.ok(out === '.' || !out.split('/').some((p) => p === '' || p === '.' || p === '..'));
      checkEntryPath(out);
    }),
  );
});

test('safeJoin keeps paths inside the target and refuses symlinked parents', async (t) => {
  const dir = await tempDir(t);
  const outside = await tempDir(t);
  assert.equal(safeJoin(dir, '.'), dir);
  assert.equal(safeJoin(dir, 'a/b'), join(dir, 'a/b'));
  for (const bad of ['../x', '/etc/passwd', 'a/../b', 'a//b', '', 'a/./b', 'x\0y']) {
    assert.throws(() => safeJoin(dir, bad), { code: 'E_PATH_ESCAPE' }, bad);
  }
  symlinkSync(outside, join(dir, 'link'));
  assert.throws(() => safeJoin(dir, 'link/file'), { code: 'E_PATH_ESCAPE', message: /symlink/ });
  // The last component may be a symlink: callers create it or open it with O_NOFOLLOW.
  assert.equal(safeJoin(dir, 'link'), join(dir, 'link'));
  writeFileSync(join(dir, 'plain'), 'x');
  assert.throws(() => safeJoin(dir, 'plain/under'), { code: 'E_PATH_ESCAPE' });
  mkdirSync(join(dir, 'real'));
  assert.equal(safeJoin(dir, 'real/missing/deeper'), join(dir, 'real/missing/deeper'));
  // A name that is not UTF-8 is an escaped byte (names.ts); a surrogate standing for no byte is a forged path.
  assert.equal(safeJoin(dir, 'real/caf\udce9'), join(dir, 'real/caf\udce9'));
  assert.throws(() => checkEntryPath('real/x\ud800'), { code: 'E_NAME_INVALID' });
});

test('assertEntryPath refuses exactly what checkEntryPath refuses, with the same error', () => {
  const piece = fc.constantFrom(
    'a',
    'bc',
    '.',
    '..',
    '...',
    '',
    '/',
    '\0',
    'ü',
    '\udce9',
    '\ud800',
    '.x',
    'x.',
  );
  fc.assert(
    fc.property(fc.array(piece, { maxLength: 7 }), (pieces) => {
      const p = pieces.join('');
      let want: unknown;
      try {
        checkEntryPath(p);
      } catch (err) {
        want = err;
      }
      let got: unknown;
      try {
        assertEntryPath(p);
      } catch (err) {
        got = err;
      }
      assert.equal(
        (got as { code?: string } | undefined)?.code,
        (want as { code?: string } | undefined)?.code,
        p,
      );
    }),
    { numRuns: 3000 },
  );
});

test('makeFolder makes the missing folders one by one and accepts one that is there', async (t) => {
  const dir = await tempDir(t);
  makeFolder(join(dir, 'a', 'b', 'c'));
  assert.ok(statSync(join(dir, 'a', 'b', 'c')).isDirectory());
  makeFolder(join(dir, 'a', 'b'));
  writeFileSync(join(dir, 'file'), '');
  assert.throws(() => makeFolder(join(dir, 'file', 'x', 'y')), {
    code: 'E_RESTORE_IO',
    message: `cannot create the folder ${join(dir, 'file', 'x', 'y')}: ${join(dir, 'file')}: it is not a folder`,
  });
});
