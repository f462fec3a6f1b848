import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { test } from 'node:test';
import { ImgcastError } from '../src/errors.ts';
import { count, systemReason, withArticle } from '../src/wording.ts';

test('count says 1 in the singular and every other number in the plural', () => {
  assert.equal(count(1, 'chunk'), '1 chunk');
  assert.equal(count(0, 'chunk'), '0 chunks');
  assert.equal(count(2, 'entry', 'entries'), '2 entries');
  assert.equal(count(1, 'entry', 'entries'), '1 entry');
});

test("systemReason gives a sentence and the code, never Node's raw 'CODE: text, syscall' form", () => {
  let err: unknown;
  try {
    statSync('/nonexistent-imgcast/x');
  } catch (e) {
    err = e;
  }
  assert.equal(systemReason(err), 'no such file or directory (ENOENT)');
  // A code without a sentence of ours keeps libuv's description, without the prefix and syscall.
  const reset = Object.assign(new Error("ECONNRESET: connection reset by peer, read '/x'"), {
    code: 'ECONNRESET',
  });
  assert.equal(systemReason(reset), 'connection reset by peer (ECONNRESET)');
  assert.equal(systemReason(new Error('plain words')), 'plain words');
});

test('withArticle puts "an" before a vowel sound, spelled-out names included', () => {
  assert.equal(withArticle('ext4'), 'an ext4');
  assert.equal(withArticle('exfat'), 'an exfat');
  assert.equal(withArticle('ntfs'), 'an ntfs');
  assert.equal(withArticle('xfs'), 'an xfs');
  assert.equal(withArticle('MBR'), 'an MBR');
  assert.equal(withArticle('vfat'), 'a vfat');
  assert.equal(withArticle('btrfs'), 'a btrfs');
  assert.equal(withArticle('swap'), 'a swap');
  assert.equal(withArticle('udf'), 'a udf');
  assert.equal(withArticle('unknown'), 'an unknown');
});

test('systemReason of an imgcast error is its message, without its E_ code', () => {
  const err = new ImgcastError('E_DISK_COMMAND', 'mount /dev/loop0: mount failed: wrong fs type');
  assert.equal(systemReason(err), 'mount /dev/loop0: mount failed: wrong fs type');
});
