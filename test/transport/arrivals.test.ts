/** Loss accounting by serial (receiver.ts ArrivalCounter): late is not lost, missing is. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';

import { LOSS_HORIZON } from '../../src/transport/packet.ts';
import { ArrivalCounter } from '../../src/transport/arrivals.ts';

test('units overtaken by later ones within the horizon count as arrived; real gaps as lost', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 16 }),
      fc.integer({ min: 0, max: 64 }),
      fc.array(fc.boolean(), { minLength: 2000, maxLength: 2000 }),
      (units, swapEvery, keep) => {
        const c = new ArrivalCounter();
        const first = 1000;
        c.start(first);
        // Datagrams of `units` serials; some never arrive; neighbours swapped (two sending threads).
        const order = keep.map((_, i) => i);
        if (swapEvery > 0)
          for (let i = 0; i + 1 < order.length; i += swapEvery + 2)
            [order[i], order[i + 1]] = [order[i + 1]!, order[i]!];
        let maxSerial = 0;
        let rx = 0;
        let exp = 0;
        for (const d of order) {
          const ser = first + d * units;
          maxSerial = Math.max(maxSerial, ser + units - 1);
          if (keep[d]) c.arrived(ser, units);
          if (d % 50 === 0) {
            const r = c.take(maxSerial);
            rx += r.rx;
            exp += r.exp;
          }
        }
        const r = c.take(maxSerial);
        rx += r.rx;
        exp += r.exp;
        // Everything up to maxSerial - LOSS_HORIZON was judged, exactly once.
        const judged = Math.max(0, maxSerial - LOSS_HORIZON - (first - 1));
        assert.equal(exp, judged);
        let arrived = 0;
        for (let s = first; s < first + judged; s++) if (keep[Math.floor((s - first) / units)]) arrived++;
        assert.equal(rx, arrived);
      },
    ),
    { numRuns: 200 },
  );
});

test('a jump past the ring is judged, not lost track of', () => {
  const c = new ArrivalCounter();
  c.start(1);
  c.arrived(1, 100);
  assert.deepEqual(c.take(100 + LOSS_HORIZON), { rx: 100, exp: 100 });
  // A forged or stalled far-ahead serial: the serials before it are judged (as lost), not left in limbo.
  c.arrived(1_000_000, 1);
  const r = c.take(1_000_000 + LOSS_HORIZON);
  assert.equal(r.exp, 1_000_000 - 100);
  assert.equal(r.rx, 1);
});

test('with a short horizon (one socket sending in order) a gap is judged lost as soon as that many later units arrived', () => {
  const c = new ArrivalCounter();
  c.start(1);
  c.arrived(1, 10);
  c.arrived(12, 100); // unit 11 missing
  assert.deepEqual(c.take(111, 64), { rx: 46, exp: 47 });
  // The wide horizon would not have judged it yet.
  const wide = new ArrivalCounter();
  wide.start(1);
  wide.arrived(1, 10);
  wide.arrived(12, 100);
  assert.deepEqual(wide.take(111), { rx: 0, exp: 0 });
});
