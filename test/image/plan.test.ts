import assert from 'node:assert/strict';
import { test } from 'node:test';

import { PLAN_FIELDS, PlanBuilder, planWrites } from '../../src/image/plan.ts';

test('a plan gives back every write, its ranges and what it carries beyond numbers', () => {
  const b = new PlanBuilder();
  const meta = { uid: 1000, gid: 100, chown: true, mode: 0o4755, atime: 1.5e9 + 0.25, mtime: 1.6e9 + 0.125 };
  b.write({ rel: 'bin/tool', create: true, clear: false, truncate: 70_000, meta });
  b.range(0, 4096, 65_536);
  b.write({ rel: 'usr/share/big', create: false, clear: false });
  b.range(8_388_608, 0, 1_000);
  b.range(8_392_704, 1_000, 3_000);
  const odd = Buffer.from([0x6e, 0xe9]);
  b.write({ rel: 'n\udce9', path: odd, create: true, clear: true, symlink: Buffer.from('target') });
  b.write({ rel: 'etc/link', create: true, clear: false, symlink: '../x', meta: { ...meta, chown: false } });
  assert.equal(b.count, 4);
  const plan = b.done('/mnt/out/', true, 0o022);
  assert.equal(plan.count, 4);
  assert.equal(plan.prefix, '/mnt/out/');
  assert.equal(plan.root, true);
  assert.equal(plan.umask, 0o022);
  assert.equal(plan.nums.length, 4 * PLAN_FIELDS + 3 * 3);
  // The two copies a worker receives: no write is an object of its own.
  assert.ok(plan.nums instanceof Float64Array);
  assert.equal(typeof plan.names, 'string');
  assert.deepEqual(
    plan.extra?.map((x) => x.index),
    [2, 3],
  );
  assert.deepEqual(planWrites(plan), [
    { rel: 'bin/tool', create: true, clear: false, truncate: 70_000, meta, ranges: [0, 4096, 65_536] },
    {
      rel: 'usr/share/big',
      create: false,
      clear: false,
      ranges: [8_388_608, 0, 1_000, 8_392_704, 1_000, 3_000],
    },
    { rel: 'n\udce9', path: odd, create: true, clear: true, symlink: Buffer.from('target'), ranges: [] },
    {
      rel: 'etc/link',
      create: true,
      clear: false,
      symlink: '../x',
      meta: { ...meta, chown: false },
      ranges: [],
    },
  ]);
});

test('an empty plan holds no write, and a range needs a write', () => {
  const b = new PlanBuilder();
  assert.throws(() => b.range(0, 0, 1), /needs a write first/);
  const plan = b.done('/t/', false, 0);
  assert.equal(plan.count, 0);
  assert.equal(plan.extra, undefined);
  assert.deepEqual(planWrites(plan), []);
});
