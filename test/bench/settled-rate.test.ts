/**
 * bench/lib/tools.ts settledRate: the figure the tbf rows of bench:multicast show beside the
 * wall-clock share of the link.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { settledRate } from '../../bench/lib/tools.ts';

test('settledRate: a steady middle at R counts as R times the file share, whatever the start and end took', () => {
  // 2 s of start-up sending nothing, 10 s at 50 MB/s of wire bytes, 3 s of a slow end.
  const samples: Array<[number, number]> = [];
  for (let t = 0; t <= 2000; t += 50) samples.push([t, 0]);
  for (let t = 2050; t <= 12000; t += 50) samples.push([t, ((t - 2000) / 1000) * 50e6]);
  for (let t = 12050; t <= 15000; t += 50) samples.push([t, 500e6 + ((t - 12000) / 1000) * 1e6]);
  const total = samples[samples.length - 1]![1];
  // The file was 97 % of what was sent.
  const bits = settledRate(samples, 0.97 * total)!;
  assert.ok(Math.abs(bits - 50e6 * 8 * 0.97) / (50e6 * 8) < 0.01, `${bits}`);
});

test('settledRate: too few samples or nothing sent says nothing', () => {
  assert.equal(settledRate([], 100), null);
  assert.equal(
    settledRate(
      [
        [0, 5],
        [50, 5],
        [100, 5],
      ],
      100,
    ),
    null,
  );
});
