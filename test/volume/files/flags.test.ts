import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseLsattr } from '../../../src/volume/files/flags.ts';

const DOT = Buffer.from('./');

test('parseLsattr matches each name byte for byte: spaces, newlines, non-UTF-8 bytes, names lsattr skipped', () => {
  const latin1 = 'caf\udce9';
  const out = Buffer.concat([
    Buffer.from('--------------e------- .\n'),
    Buffer.from('----i---------e------- ./new\nline\n'),
    // ./fifo: lsattr could not read it and printed nothing here.
    Buffer.from('------d---------------- ./caf'),
    Buffer.of(0xe9),
    Buffer.from('\n-----a-------e------- ./ lead space\n'),
    Buffer.from('------dA------e------- ./dir/sub\n'),
  ]);
  const flags = parseLsattr(out, ['.', 'new\nline', 'fifo', latin1, ' lead space', 'dir/sub'], DOT);
  assert.deepEqual(Object.fromEntries(flags), {
    'new\nline': 'i',
    [latin1]: 'd',
    ' lead space': 'a',
    'dir/sub': 'dA',
  });
});

test('parseLsattr keeps only the flags a restore sets, and refuses output it cannot follow', () => {
  // e (extents), I (indexed), N (inline data), E, V: the filesystem's own.
  const flags = parseLsattr(Buffer.from('---S-a-dA-EjItTeC-FNPVm ./f\n'), ['f'], DOT);
  assert.equal(flags.get('f'), 'SadAjtTCPm');
  assert.throws(() => parseLsattr(Buffer.from('garbage\n'), ['f'], DOT), { code: 'E_INODE_FLAGS' });
});
