import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  DatagramSizer,
  frameLoss,
  type SentTick,
  type SizeSample,
  unitsForLoss,
  unitsPerDatagram,
} from '../../src/transport/datagram-size.ts';

test('unitsForLoss: the biggest datagrams when nobody loses anything, or loss is negligible', () => {
  assert.equal(unitsForLoss([0, 0, 0], 0, 16, true), 16);
  assert.equal(unitsForLoss([], 0, 16, false), 16);
  // 1 in 100 000 frames: even 16-frame datagrams cost under 0.2 % of the data in repairs.
  assert.equal(unitsForLoss([1e-5], 1e-5, 16, false), 16);
});

test('unitsForLoss: at 1 % loss, 2 units for one receiver, more for three with coded repairs', () => {
  // Plain repairs of a k-unit datagram cost ~k x the frame lost: k = 2 keeps them within 2.2 x.
  assert.equal(unitsForLoss([0.01], 0.01, 16, false), 2);
  // Three receivers, plain repairs: the union of their losses, so again small datagrams.
  assert.equal(unitsForLoss([0.01, 0.01, 0.01], 0.03, 16, false), 2);
  // Coded: about the worst receiver's loss, against the sum lost: k ~ 2.2 x 3.
  const coded = unitsForLoss([0.01, 0.01, 0.01], 0.03, 16, true);
  assert.ok(coded >= 5 && coded <= 7, String(coded));
  // Never past kMax, never below 1 however bad the loss.
  assert.equal(unitsForLoss([0.9], 0.9, 16, false), 1);
  assert.equal(unitsForLoss([0.001, 0.001], 0.002, 4, true), 4);
});

test('unitsForLoss: expected repairs stay within budget for the k it picks, and more loss never means bigger datagrams', () => {
  fc.assert(
    fc.property(
      fc.array(fc.double({ min: 0, max: 0.2, noNaN: true }), { minLength: 1, maxLength: 8 }),
      fc.boolean(),
      fc.integer({ min: 1, max: 16 }),
      (losses, coded, kMax) => {
        const sorted = [...losses].sort((a, b) => a - b);
        const lost = sorted.reduce((a, p) => a + p, 0);
        const k = unitsForLoss(sorted, lost, kMax, coded);
        assert.ok(k >= 1 && k <= kMax);
        if (k > 1) {
          const d = sorted.map((p) => 1 - Math.pow(1 - p, k));
          const miss = coded ? Math.max(...d) : 1 - d.reduce((a, x) => a * (1 - x), 1);
          assert.ok(miss / (1 - miss) <= Math.max(2.2 * lost, 0.002) + 1e-12);
        }
        const worse = sorted.map((p) => Math.min(1, p * 1.5));
        assert.ok(
          unitsForLoss(
            worse,
            worse.reduce((a, p) => a + p, 0),
            kMax,
            coded,
          ) <= k || lost === 0,
        );
      },
    ),
  );
});

const sample = (rx: number, exp: number, overflowUnits = 0, frag: number | null = 0): SizeSample => ({
  rx,
  exp,
  overflowUnits,
  frag,
});

test('DatagramSizer: starts at one unit, grows by doubling at most, up to kMax on a clean wire', () => {
  const s = new DatagramSizer(16, () => true);
  assert.equal(s.k, 1);
  assert.equal(s.decided, false);
  const seen: number[] = [];
  for (let i = 0; i < 6; i++) seen.push(s.decide([sample(10_000, 10_000)], s.k).k);
  assert.deepEqual(seen, [2, 4, 8, 16, 16, 16]);
  assert.equal(s.decided, true);
});

test('DatagramSizer: too few units in the window say nothing; k stays', () => {
  const s = new DatagramSizer(16, () => true);
  assert.equal(s.decide([sample(10, 50)], 1).k, 1);
  assert.equal(s.decided, false);
});

test('DatagramSizer: loss the kernel reports as socket-buffer overflow never shrinks the datagrams', () => {
  const s = new DatagramSizer(16, () => true);
  for (let i = 0; i < 5; i++) s.decide([sample(10_000, 10_000)], s.k);
  assert.equal(s.k, 16);
  // 30 % of the units lost, all of it in datagrams the receiving kernel dropped for a full buffer
  // (16 units each): the wire lost nothing.
  const lostUnits = 3000;
  for (let i = 0; i < 5; i++) s.decide([sample(10_000 - lostUnits, 10_000, lostUnits)], 16);
  assert.equal(s.k, 16);
});

test('DatagramSizer: overflow counted at the window average instead shrinks them: the conversion matters', () => {
  // Three receivers each dropped datagrams of 16 units for a full buffer, as in the lab at 1.7 s
  // into a session whose datagrams grew from 1 unit: the window's average datagram was 10.7 units.
  const s = new DatagramSizer(16, () => true);
  for (let i = 0; i < 5; i++) s.decide([sample(10_000, 10_000)], s.k);
  const lost = [672, 2016, 5456];
  const atMoment = s.decide(
    lost.map((l) => sample(60_000 - l, 60_000, l)),
    10.7,
  );
  assert.equal(atMoment.k, 16, atMoment.note ?? '');
  const atAverage = s.decide(
    lost.map((l) => sample(60_000 - l, 60_000, (l / 16) * 10.7)),
    10.7,
  );
  assert.ok(atAverage.k < 16, `k=${atAverage.k}: the uncounted overflow should read as frame loss`);
});

test('unitsPerDatagram: what was sent in the window, this tick included; the fallback when nothing was', () => {
  const history: SentTick[] = [
    [0, 1000, 1000],
    [200, 4000, 500],
    [400, 8000, 500],
  ];
  // Only the ticks of the last 300 ms and the one under way (16-unit datagrams) count.
  assert.equal(unitsPerDatagram(history, [500, 1600, 100], 500, 300, 1), (4000 + 8000 + 1600) / 1100);
  assert.equal(unitsPerDatagram(history, [900, 1600, 100], 900, 300, 1), 16);
  assert.equal(unitsPerDatagram([], [900, 0, 0], 900, 300, 7), 7);
  assert.equal(unitsPerDatagram(history, [500, 0, 0], 500, 10_000, 1), 13_000 / 2000);
});

test('DatagramSizer: 1 % whole-datagram loss (after reassembly) settles on multi-unit datagrams, never the 1-unit spiral', () => {
  // 1 % of datagrams lost whatever their size: the unit loss stays 1 % whatever k is.
  const settle = (receivers: number): number => {
    const s = new DatagramSizer(16, () => true);
    for (let i = 0; i < 12; i++)
      s.decide(new Array<SizeSample>(receivers).fill(sample(99_000, 100_000)), s.k);
    return s.k;
  };
  assert.ok(settle(1) >= 2, `one receiver: k=${settle(1)}`);
  assert.ok(settle(3) >= 5, `three receivers: k=${settle(3)}`);
});

test('DatagramSizer: a receiver whose reassembly memory fills forces unfragmented datagrams until it drains', () => {
  const s = new DatagramSizer(16, () => true);
  for (let i = 0; i < 5; i++) s.decide([sample(10_000, 10_000)], s.k);
  const full = s.decide([sample(10_000, 10_000, 0, 0.8)], 16);
  assert.equal(full.k, 1);
  assert.match(full.note ?? '', /reassembly memory is 80 % full/);
  assert.equal(s.fragmentationPauses, 1);
  // Still above the low mark: held at 1.
  assert.equal(s.decide([sample(10_000, 10_000, 0, 0.3)], 1).k, 1);
  const drained = s.decide([sample(10_000, 10_000, 0, 0.1)], 1);
  assert.equal(drained.k, 2);
  assert.match(drained.note ?? '', /drained/);
});

test('frameLoss inverts the datagram loss of k-unit datagrams', () => {
  const p = 0.01;
  const k = 8;
  const unitLoss = 1 - Math.pow(1 - p, k);
  assert.ok(Math.abs(frameLoss(unitLoss * 1e6, 1e6, k) - p) < 1e-9);
  assert.equal(frameLoss(0, 100, 4), 0);
});
