import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';

import { HEADER_SIZE, MAGIC } from '../../src/transport/packet.ts';
import { SerialOrder, sortBySerial } from '../../src/transport/serial-order.ts';

function numbered(serial: number, tag = 0): Buffer {
  const b = Buffer.alloc(HEADER_SIZE + 1);
  b.writeUInt16BE(MAGIC, 0);
  b.writeUInt32BE(serial >>> 0, 24);
  b[HEADER_SIZE] = tag;
  return b;
}

const serials = (bs: Buffer[]) => bs.map((b) => b.readUInt32BE(24));

test('sortBySerial: any shuffle of a run of serials comes back in order', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: 0xffffffff }),
      fc.integer({ min: 1, max: 300 }),
      fc.infiniteStream(fc.nat()),
      (start, n, rnd) => {
        const inOrder = Array.from({ length: n }, (_, i) => numbered(start + i));
        const batch = [...inOrder];
        const r = rnd[Symbol.iterator]();
        for (let i = batch.length - 1; i > 0; i--) {
          const j = (r.next().value as number) % (i + 1);
          [batch[i], batch[j]] = [batch[j] as Buffer, batch[i] as Buffer];
        }
        sortBySerial(batch);
        // Across the u32 wrap too: 0xffffffff comes before 0.
        assert.deepEqual(serials(batch), serials(inOrder));
      },
    ),
  );
});

test('sortBySerial: equal serials keep their order; datagrams without one go first, in theirs', () => {
  const stray1 = Buffer.from('not a packet at all');
  const stray2 = Buffer.alloc(HEADER_SIZE + 4);
  const batch = [numbered(7, 1), stray1, numbered(5), numbered(7, 2), stray2, numbered(6)];
  sortBySerial(batch);
  assert.deepEqual(batch, [stray1, stray2, numbered(5), numbered(6), numbered(7, 1), numbered(7, 2)]);
});

test('sortBySerial: a batch already in order is left as it is', () => {
  const batch = [numbered(1), numbered(2), numbered(3)];
  const same = [...batch];
  sortBySerial(batch);
  batch.forEach((b, i) => assert.equal(b, same[i]));
});

test('SerialOrder hands on what one turn of the event loop gathered, sorted, at its end, once each', async () => {
  const out: number[] = [];
  const order = new SerialOrder((b) => out.push(b.readUInt32BE(24)));
  for (const s of [12, 10, 11]) order.push(numbered(s));
  assert.deepEqual(out, [], 'nothing before the turn ends');
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(out, [10, 11, 12]);
  order.push(numbered(9));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(out, [10, 11, 12, 9], 'a later turn is not held back for an earlier serial');
});
