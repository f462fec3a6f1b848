import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { FileEntry } from '../../../src/image/types.ts';
import { selectEntries } from '../../../src/volume/files/extract.ts';

const e = (path: string, type: FileEntry['type'] = 'file'): FileEntry => ({
  path,
  type,
  mode: 0o644,
  uid: 0,
  gid: 0,
  mtimeNs: '0',
  atimeNs: '0',
});
const entries = [
  e('.', 'dir'),
  e('etc', 'dir'),
  e('etc/ssh', 'dir'),
  e('etc/ssh/sshd_config'),
  e('etc/sshd'),
  e('etc/x'),
  e('usr', 'dir'),
];

test('selectEntries takes each path and everything below it, not its siblings with the same prefix', () => {
  assert.deepEqual(
    selectEntries(entries, ['/etc/ssh/']).map((x) => x.path),
    ['etc/ssh', 'etc/ssh/sshd_config'],
  );
  assert.deepEqual(
    selectEntries(entries, ['etc/x', 'etc/ssh', 'etc/x']).map((x) => x.path),
    ['etc/ssh', 'etc/ssh/sshd_config', 'etc/x'],
  );
  assert.equal(selectEntries(entries, ['/']).length, entries.length);
});

test('selectEntries names a missing path and refuses escapes', () => {
  assert.throws(() => selectEntries(entries, ['etc', 'etc/nope']), {
    code: 'E_PATH_NOT_FOUND',
    message: /etc\/nope/,
  });
  assert.throws(() => selectEntries(entries, ['../etc']), { code: 'E_PATH_ESCAPE' });
});
