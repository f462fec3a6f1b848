import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DATA_PORTS } from '../../src/transport/index.ts';

import { addressOf, allocate, checkRange } from '../../src/server/address-pool.ts';

const range = { firstGroup: '239.255.43.254', firstPort: 7750, slots: 4 };

test('slots map to consecutive groups (across an octet) and port pairs', () => {
  assert.deepEqual(addressOf(range, 0), { slot: 0, group: '239.255.43.254', port: 7750 });
  assert.deepEqual(addressOf(range, 2), { slot: 2, group: '239.255.44.0', port: 7754 });
});

test('allocate takes the lowest free slot, and none when all are taken', () => {
  assert.equal(allocate(range, new Set())?.slot, 0);
  assert.equal(allocate(range, new Set([0, 1, 3]))?.slot, 2);
  assert.equal(allocate(range, new Set([0, 1, 2, 3])), undefined);
});

test('ranges outside 239/8 or the port space are refused', () => {
  assert.throws(() => checkRange({ ...range, firstGroup: '224.0.0.1' }), /239\.0\.0\.0\/8/);
  assert.throws(() => checkRange({ ...range, firstGroup: '239.255.255.255' }), /239\.0\.0\.0\/8/);
  assert.throws(() => checkRange({ ...range, firstPort: 80 }), /1024\.\.65535/);
  assert.throws(() => checkRange({ ...range, firstPort: 65534 }), /1024\.\.65535/);
  // The last slot's data ports count, not only its control port.
  const lastControl = 65535 - DATA_PORTS - 2 * (range.slots - 1);
  checkRange({ ...range, firstPort: lastControl });
  assert.throws(() => checkRange({ ...range, firstPort: lastControl + 1 }), /1024\.\.65535/);
  checkRange(range);
});
