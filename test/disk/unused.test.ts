import assert from 'node:assert/strict';
import { test } from 'node:test';

import { findUnused, parseDomainLog } from '../../src/disk/unused.ts';

test('parseDomainLog keeps only the blocks marked unused, merged, and skips the position line', () => {
  const log = [
    '# Domain logfile created by unset_name v0.3.23',
    '# Source: n.img',
    '# current_pos  current_status',
    '0x03FFF000     ?',
    '#      pos        size  status',
    '0x00000000  0x00003000  +',
    '0x00003000  0x00001000  ?',
    '0x00004000  0x00013000  +',
    '0x00017000  0x007EC000  ?',
    '0x00803000  0x00001000  ?',
    'garbage line',
    '0x00900000  0xZZ  ?',
    '0x01FFF000  0x00501000  +',
  ].join('\n');
  assert.deepEqual(parseDomainLog(log), [
    [0x3000, 0x4000],
    [0x17000, 0x804000],
  ]);
  assert.deepEqual(parseDomainLog(''), []);
});

test('findUnused says why when it cannot map a filesystem', async () => {
  const r = await findUnused('/dev/null', { offset: 0, size: 0 }, 'ext4');
  assert.ok('reason' in r && /no block map for ext4/.test(r.reason));
});
