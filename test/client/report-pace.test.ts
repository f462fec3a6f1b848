import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PROGRESS_REPORT_MS, reportPace } from '../../src/client/report-pace.ts';

/** The times at which a pace polled every `step` ms from `start` to `end` says a report is due. */
function reportsBetween(
  pace: ReturnType<typeof reportPace>,
  start: number,
  end: number,
  step: number,
): number[] {
  const at: number[] = [];
  for (let now = start; now <= end; now += step) if (pace.due(now)) at.push(now);
  return at;
}

test('the first report falls at the workstation’s own point of the first interval, then one per interval', () => {
  const pace = reportPace(10_000, 1000, () => 0.25);
  assert.deepEqual(reportsBetween(pace, 10_000, 13_900, 50), [10_250, 11_250, 12_250, 13_250]);
});

test('a lab woken at one moment reports spread over the interval, not in one burst', () => {
  // 500 workstations woken by the same answer, each with its own random phase.
  let seed = 7;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  const paces = Array.from({ length: 500 }, () => reportPace(0, 1000, random));
  const perSlot = new Array(10).fill(0);
  for (let now = 0; now < 5000; now++)
    for (const p of paces) if (p.due(now)) perSlot[Math.floor((now % 1000) / 100)]++;
  // Every tenth of a second carries about a tenth of the reports (2,500 in all over 5 s).
  assert.equal(
    perSlot.reduce((a, b) => a + b, 0),
    2500,
  );
  for (const n of perSlot) assert.ok(n > 150 && n < 350, `${perSlot.join(' ')}`);
});

test('a late poll keeps the phase; a stall of more than an interval restarts the count without a burst', () => {
  const pace = reportPace(0, 1000, () => 0.5);
  assert.equal(pace.nextAt, 500);
  assert.equal(pace.due(499), false);
  assert.equal(pace.due(700), true); // late by 200 ms: the next stays at 1500
  assert.equal(pace.nextAt, 1500);
  assert.equal(pace.due(1499), false);
  assert.equal(pace.due(1500), true);
  // Progress stalled for 5 s: one report now, the next a whole interval later.
  assert.equal(pace.due(7000), true);
  assert.equal(pace.due(7001), false);
  assert.equal(pace.due(7999), false);
  assert.equal(pace.due(8000), true);
});

test('the phase is taken within [0, 1) whatever the random source gives, and the interval must be positive', () => {
  assert.deepEqual(
    reportsBetween(
      reportPace(0, 1000, () => 1.7),
      0,
      2500,
      100,
    ),
    [1000, 2000],
  );
  assert.deepEqual(
    reportsBetween(
      reportPace(0, 1000, () => -3),
      0,
      2500,
      100,
    ),
    [0, 1000, 2000],
  );
  assert.throws(() => reportPace(0, 0), RangeError);
  assert.ok(PROGRESS_REPORT_MS >= 1000);
});
