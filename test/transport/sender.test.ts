import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { MAX_SEND_THREADS } from '../../src/transport/datagram-out.ts';
import { TransportError } from '../../src/transport/errors.ts';
import { runSender, unitsForLoss } from '../../src/transport/sender.ts';
import type { ChunkProvider } from '../../src/transport/types.ts';

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

test('runSender refuses a sending-thread count outside 0..MAX_SEND_THREADS before opening anything', async () => {
  const provider = {
    chunks: [],
    readStored: () => Promise.reject(new Error('never read')),
  } as unknown as ChunkProvider;
  for (const sendThreads of [-1, 1.5, MAX_SEND_THREADS + 1]) {
    await assert.rejects(runSender(provider, { sendThreads, port: 20990 }), (err: unknown) => {
      assert.ok(err instanceof TransportError, String(err));
      assert.equal(err.code, 'E_CONTROL_INVALID');
      assert.match(err.message, /sending threads/);
      return true;
    });
  }
});
