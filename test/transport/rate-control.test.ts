import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { LOSS_HIGH, median, RateControl, type RateSample } from '../../src/transport/rate-control.ts';

const TICK = 200;
const opts = { startMbit: 200, minMbit: 5, maxMbit: Infinity };

/** A repeatable source of chance: numbers in 0..1 from a linear congruential sequence. */
function chanceFrom(seed: number): () => number {
  let x = seed;
  return () => {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    return x / 0x7fffffff;
  };
}

/**
 * A path that carries at most `capacity` Mbit/s: what is sent above it is lost. Runs `ticks`
 * ticks from `from` and returns the rates chosen.
 */
function drive(
  rc: RateControl,
  capacity: (i: number) => number,
  ticks: number,
  from = 0,
  extraLoss = 0,
): number[] {
  const rates: number[] = [];
  for (let i = 0; i < ticks; i++) {
    const sent = rc.rateMbit;
    const cap = capacity(i);
    const delivered = Math.min(sent, cap) * (1 - extraLoss);
    const loss = sent > 0 ? 1 - delivered / sent : 0;
    rates.push(rc.tick(from + (i + 1) * TICK, sent, [{ deliveredMbit: delivered, loss }]));
  }
  return rates;
}

test('finds a link slower than the sender and settles at 95 % or more of it, with little overshoot', () => {
  for (const link of [100, 400, 900]) {
    const rc = new RateControl(opts);
    const rates = drive(rc, () => link, 150);
    const settled = rates.slice(50);
    const mean = settled.reduce((a, r) => a + Math.min(r, link), 0) / settled.length;
    assert.ok(mean >= 0.95 * link, `link ${link}: delivered on average ${mean.toFixed(1)}`);
    // Above the link only while probing: 10 % one tick in eight.
    const over = settled.reduce((a, r) => a + Math.max(0, r - link), 0) / settled.reduce((a, r) => a + r, 0);
    assert.ok(over <= 0.015, `link ${link}: ${(over * 100).toFixed(2)} % sent above it`);
  }
});

test('random loss of 1 % (a lossy wire) does not hold the rate below the link', () => {
  const rc = new RateControl(opts);
  const rates = drive(rc, () => 400, 150, 0, 0.01);
  const settled = rates.slice(50);
  const mean = settled.reduce((a, r) => a + Math.min(r, 400), 0) / settled.length;
  assert.ok(mean >= 0.93 * 400, `mean ${mean.toFixed(1)}`);
});

test('every receiver losing everything: the rate falls to the floor, never below, and recovers once loss stops', () => {
  const rc = new RateControl(opts);
  drive(rc, () => 500, 30);
  let t = 31 * TICK;
  for (let i = 0; i < 40; i++) {
    t += TICK;
    const r = rc.tick(t, rc.rateMbit, [
      { deliveredMbit: 0, loss: 1 },
      { deliveredMbit: 0, loss: 1 },
    ]);
    assert.ok(r >= opts.minMbit, `rate ${r}`);
  }
  assert.equal(rc.rateMbit, opts.minMbit);
  // The path is back, with room for 500 Mbit/s: within 5 s the rate is near it again.
  const back = drive(rc, () => 500, 25, t);
  assert.ok((back.at(-1) as number) >= 450, `after 5 s: ${back.at(-1)}`);
});

test('no reports at all (every receiver silent): the rate stays where it was', () => {
  const rc = new RateControl(opts);
  drive(rc, () => 300, 40);
  const before = rc.rateMbit;
  for (let i = 0; i < 50; i++) rc.tick(41 * TICK + i * TICK, 0, []);
  assert.equal(rc.rateMbit, before);
});

test('one silent or slow receiver among three does not set the rate: the median one does', () => {
  const rc = new RateControl(opts);
  for (let i = 0; i < 100; i++) {
    const sent = rc.rateMbit;
    const fast = Math.min(sent, 600);
    const samples: RateSample[] = [
      { deliveredMbit: fast, loss: 1 - fast / sent },
      { deliveredMbit: fast, loss: 1 - fast / sent },
      { deliveredMbit: Math.min(sent, 50), loss: 1 - Math.min(sent, 50) / sent },
    ];
    rc.tick((i + 1) * TICK, sent, samples);
  }
  assert.ok(rc.rateMbit >= 0.9 * 600, `rate ${rc.rateMbit}`);
});

test('overflow only (a receiver whose socket buffer overflows above 250 Mbit/s) settles near what it takes', () => {
  const rc = new RateControl(opts);
  const rates = drive(rc, () => 250, 100);
  const settled = rates.slice(40);
  assert.ok(Math.min(...settled) >= 200 && Math.max(...settled) <= 290, settled.join(' '));
});

test('idle ticks (nothing to send, waiting for windows) keep the estimate instead of letting it expire', () => {
  const rc = new RateControl(opts);
  drive(rc, () => 400, 60);
  const before = rc.rateMbit;
  for (let i = 0; i < 30; i++) rc.tick(61 * TICK + i * TICK, 0, [{ deliveredMbit: 0, loss: 0 }]);
  assert.ok(rc.rateMbit >= 0.85 * before, `${before} -> ${rc.rateMbit}`);
});

test('a cap (--rate) is never exceeded and the floor never undercut, whatever the reports say', () => {
  fc.assert(
    fc.property(
      fc.array(
        fc.record({
          sent: fc.double({ min: 0, max: 5000, noNaN: true }),
          samples: fc.array(
            fc.record({
              deliveredMbit: fc.double({ min: 0, max: 5000, noNaN: true }),
              loss: fc.double({ min: 0, max: 1, noNaN: true }),
            }),
            { maxLength: 5 },
          ),
        }),
        { maxLength: 200 },
      ),
      (ticks) => {
        const rc = new RateControl({ startMbit: 200, minMbit: 5, maxMbit: 700 });
        ticks.forEach((x, i) => {
          const r = rc.tick((i + 1) * TICK, x.sent, x.samples);
          assert.ok(r >= 5 && r <= 700, String(r));
        });
      },
    ),
  );
});

test('heavy loss resets the estimate to what arrived and drains below it', () => {
  const rc = new RateControl(opts);
  drive(rc, () => 800, 40);
  const r = rc.tick(41 * TICK, rc.rateMbit, [{ deliveredMbit: 300, loss: LOSS_HIGH + 0.2 }]);
  assert.ok(r < 300 && r >= 0.8 * 300, String(r));
  assert.equal(rc.phase, 'cruise');
});

test('median takes the lower middle value', () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2);
  assert.equal(median([]), 0);
});

test('on a link at capacity, delivery figures off by up to 5 % either way never send the rate far past the link', () => {
  // A repeatable noise source: receivers' reports cover slightly different stretches each tick.
  const chance = chanceFrom(12345);
  const noise = (): number => 0.95 + chance() * 0.1;
  for (const link of [100, 400]) {
    const rc = new RateControl(opts);
    let worst = 0;
    let sum = 0;
    for (let i = 0; i < 300; i++) {
      const sent = rc.rateMbit;
      const delivered = Math.min(sent, link);
      const loss = sent > 0 ? 1 - delivered / sent : 0;
      const r = rc.tick((i + 1) * TICK, sent, [{ deliveredMbit: delivered * noise(), loss }]);
      if (i >= 50) {
        worst = Math.max(worst, r);
        sum += Math.min(r, link);
      }
    }
    assert.ok(worst <= 1.3 * link, `link ${link}: rate went to ${worst.toFixed(0)}`);
    assert.ok(sum / 250 >= 0.9 * link, `link ${link}: delivered ${(sum / 250).toFixed(0)} on average`);
  }
});

test('a lossy wire whose loss varies by chance from tick to tick (1 % of frames, 6-frame datagrams) lets probes find room: the rate reaches the path in seconds', () => {
  // Three receivers, each losing 6 % of units ±1.5 % by chance; their reports lag half a tick.
  // The path carries 900 Mbit/s. Judged against the least loss of the window alone, the probes
  // failed on chance and the rate crept up ~5 % a cycle (still ~230 Mbit/s after 10 s).
  const chance = chanceFrom(777);
  const link = 900;
  const rc = new RateControl(opts);
  const rates: number[] = [];
  let prevSent = 0;
  for (let i = 0; i < 100; i++) {
    const sent = rc.rateMbit;
    const through = (Math.min(sent, link) + Math.min(prevSent, link)) / 2;
    prevSent = sent;
    const samples = [0, 1, 2].map(() => {
      const wire = 0.06 + (chance() - 0.5) * 0.03;
      return { deliveredMbit: through * (1 - wire), loss: wire };
    });
    rates.push(rc.tick((i + 1) * TICK, sent, samples));
  }
  const reached = rates.findIndex((r) => r >= 0.85 * link);
  assert.ok(
    reached >= 0 && reached <= 50,
    `85 % of the path first reached at tick ${reached}: ${rates.map((r) => r.toFixed(0)).join(' ')}`,
  );
  const settled = rates.slice(60);
  const mean = settled.reduce((a, r) => a + Math.min(r, link), 0) / settled.length;
  assert.ok(mean >= 0.9 * link, `delivered on average ${mean.toFixed(0)} of ${link} Mbit/s`);
  const over = settled.reduce((a, r) => a + Math.max(0, r - link), 0) / settled.reduce((a, r) => a + r, 0);
  assert.ok(over <= 0.03, `${(over * 100).toFixed(2)} % sent above the path`);
});

/**
 * A path of `link` Mbit/s behind a wire that loses `wire` of the units at any rate (±a quarter of
 * it by chance), three receivers whose reports lag half a tick; what is sent above the path is
 * lost too. Returns the rates chosen over `ticks` ticks.
 */
function lossyWire(link: number, wire: number, ticks: number, seed0 = 777): number[] {
  const chance = chanceFrom(seed0);
  const rc = new RateControl(opts);
  const rates: number[] = [];
  let prevSent = 0;
  for (let i = 0; i < ticks; i++) {
    const sent = rc.rateMbit;
    const through = (Math.min(sent, link) + Math.min(prevSent, link)) / 2;
    const over = 1 - through / ((sent + prevSent) / 2);
    prevSent = sent;
    const samples = [0, 1, 2].map(() => {
      const lost = wire + (chance() - 0.5) * (wire / 2);
      return { deliveredMbit: through * (1 - lost), loss: 1 - (1 - lost) * (1 - over) };
    });
    rates.push(rc.tick((i + 1) * TICK, sent, samples));
  }
  return rates;
}

test('a wire that loses 6 % from the first tick does not end startup: delivery still grows, so the path is found in a second', () => {
  // Ending startup at the first ticks above 3 % loss left the rate near 200 Mbit/s for ~7 s
  // (bench:multicast, 1 % frame loss): the wire's share is known only after WIRE_MIN_TICKS.
  const rates = lossyWire(900, 0.06, 40);
  const reached = rates.findIndex((r) => r >= 0.85 * 900);
  assert.ok(
    reached >= 0 && reached <= 5,
    `85 % of the path first reached at tick ${reached}: ${rates.join(' ')}`,
  );
});

test('a wire that loses 15 % at any rate is learnt as the wire: the rate leaves its floor and reaches the path', () => {
  // Loss above LOSS_HIGH never entered the wire's window, so every tick read as overshoot and
  // the rate sat at the floor for good.
  const rates = lossyWire(900, 0.15, 250);
  assert.ok(
    rates.slice(10).every((r) => r >= 10 * opts.minMbit),
    `fell to ${Math.min(...rates.slice(10)).toFixed(1)} Mbit/s`,
  );
  assert.ok(
    rates.slice(200).every((r) => r >= 0.8 * 900),
    `rates at the end: ${rates.slice(200).join(' ')}`,
  );
});

test('a wire that loses 12-20 % by chance, whatever the draw, is not cut again and again before its share is learnt, and probes find the path', () => {
  // Seen in bench:multicast with datagrams of 13 units at 1 % frame loss (12 % of datagrams
  // lost, ±3 % per tick): the rate sat near 100 Mbit/s on a path that carried 800. Cuts on the
  // loss before the wire's share was learnt took it from 200 to 50 Mbit/s in six ticks; then
  // probes were judged against the best delivery of the window and a loss margin that chance
  // exceeded, and failed. Before the fix, with these draws: 15 % never reached 85 % of the
  // path in 50 s (mean 72-212 Mbit/s), 20 % neither.
  for (const wire of [0.12, 0.15, 0.2]) {
    for (const seed of [777, 1234, 99]) {
      const rates = lossyWire(900, wire, 250, seed);
      const reached = rates.findIndex((r) => r >= 0.85 * 900);
      const within = wire <= 0.15 ? 75 : 200;
      assert.ok(
        reached >= 0 && reached <= within,
        `wire ${wire}, draw ${seed}: 85 % of the path first reached at tick ${reached} (within ${within})`,
      );
      assert.ok(
        rates.slice(10).every((r) => r >= 10 * opts.minMbit),
        `wire ${wire}, draw ${seed}: fell to ${Math.min(...rates.slice(10)).toFixed(1)} Mbit/s`,
      );
    }
  }
});

test('a lossy wire whose delivery stalls for a while in startup, as the rate grows, does not end startup: the loss did not come with the rate', () => {
  // bench:multicast, 1 % frame loss (6 % of 6-unit datagrams lost at any rate): in the first
  // second the receivers' first chunks waited for repairs and the sender for their windows, so
  // what it sent stopped growing while the loss stayed the wire's. Startup ended on that loss,
  // the rate fell to about what had got through, and probes took 3-7 s to win it back
  // (200-380 Mbit/s on a path that carried 500). Here the sender can put out 520 Mbit/s at most
  // (its CPU), 250 while the windows hold it (ticks 2-8); reports lag half a tick.
  for (const seed of [777, 1234, 99, 5]) {
    const chance = chanceFrom(seed);
    const rc = new RateControl(opts);
    const sent: number[] = [];
    let prev = 0;
    for (let i = 0; i < 60; i++) {
      const out = Math.min(rc.rateMbit, i >= 2 && i <= 8 ? 250 : 520);
      sent.push(out);
      const through = (out + prev) / 2;
      prev = out;
      const samples = [0, 1, 2].map(() => {
        const wire = 0.06 + (chance() - 0.5) * 0.03;
        return { deliveredMbit: through * (1 - wire) * (1 + (chance() - 0.5) * 0.06), loss: wire };
      });
      rc.tick((i + 1) * TICK, out, samples, 6);
    }
    const later = sent.slice(12);
    const mean = later.reduce((a, x) => a + x, 0) / later.length;
    assert.ok(
      mean >= 0.9 * 520,
      `draw ${seed}: sent ${mean.toFixed(0)} Mbit/s on average from tick 12: ${sent.map((x) => x.toFixed(0)).join(' ')}`,
    );
  }
});

test('in startup, loss that rises with the rate on a lossy wire still ends it', () => {
  // The other side of the test above: a path of 300 Mbit/s behind a wire that loses 6 %. Loss
  // climbs past the wire's as the rate doubles past the path, and the rate must settle near it.
  const rc = new RateControl(opts);
  const rates: number[] = [];
  for (let i = 0; i < 80; i++) {
    const sent = rc.rateMbit;
    const through = Math.min(sent, 300);
    const loss = 1 - (through / sent) * 0.94;
    rates.push(
      rc.tick(
        (i + 1) * TICK,
        sent,
        [0, 1, 2].map(() => ({ deliveredMbit: through * 0.94, loss })),
        6,
      ),
    );
  }
  const settled = rates.slice(30);
  const over = settled.reduce((a, r) => a + Math.max(0, r - 300), 0) / settled.reduce((a, r) => a + r, 0);
  const mean = settled.reduce((a, r) => a + Math.min(r, 300), 0) / settled.length;
  assert.ok(
    over <= 0.03,
    `${(over * 100).toFixed(2)} % sent above the path: ${rates.map((r) => r.toFixed(0)).join(' ')}`,
  );
  assert.ok(
    mean >= 0.85 * 300,
    `delivered on average ${mean.toFixed(0)} of 300: ${rates.map((r) => r.toFixed(0)).join(' ')}`,
  );
});
