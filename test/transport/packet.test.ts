import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { TransportError } from '../../src/transport/errors.ts';
import {
  checkHeader,
  decodePacket,
  encodeHeader,
  FRAG_PAYLOAD,
  fragmentCount,
  fragmentLength,
  HEADER_SIZE,
  MAX_DATAGRAM,
  MAX_UNITS,
  TYPE_CODED,
  TYPE_DATA,
  TYPE_REPAIR,
  UNIT_DATAGRAM,
  codedPayloadOffset,
  type CodedRun,
  MAX_COMPONENTS,
  unitsFor,
  unitsLength,
  writeCodedRuns,
  xorInto,
} from '../../src/transport/packet.ts';

/**
 * A consistent datagram: a chunk of `wireLength` bytes, a run of units inside it, and the
 * payload length those units have (full units, the chunk's last one possibly short).
 */
const header = fc
  .record({
    type: fc.constantFrom(TYPE_DATA, TYPE_REPAIR),
    nonce: fc.uint8Array({ minLength: 8, maxLength: 8 }).map((a) => Buffer.from(a)),
    seq: fc.nat({ max: 0xffffffff }),
    // Up to 64 MiB chunks (the largest a session accepts), biased to small ones.
    wireLength: fc.oneof(fc.nat({ max: 40_000 }), fc.nat({ max: 64 * 1024 * 1024 })),
    unitsWanted: fc.integer({ min: 1, max: MAX_UNITS }),
    fragSeed: fc.nat(),
    txPos: fc.nat({ max: 0xffffffff }),
    serial: fc.nat({ max: 0xffffffff }),
  })
  .map((h) => {
    const count = fragmentCount(h.wireLength);
    const frag = h.fragSeed % count;
    const units = Math.min(h.unitsWanted, count - frag);
    return { ...h, count, frag, units, payloadLength: unitsLength(h.wireLength, frag, units) };
  });

test('a one-unit datagram fits an Ethernet MTU; k units make k frames at MTU 1500', () => {
  assert.equal(HEADER_SIZE + FRAG_PAYLOAD, UNIT_DATAGRAM);
  assert.ok(UNIT_DATAGRAM + 28 <= 1500);
  for (let k = 1; k <= MAX_UNITS; k++) {
    // Each IP fragment carries at most 1480 bytes of the UDP datagram (8-byte header included).
    assert.equal(Math.ceil((8 + HEADER_SIZE + k * FRAG_PAYLOAD) / 1480), k);
  }
  assert.ok(MAX_DATAGRAM + 8 <= 65_507 + 8);
  assert.equal(unitsFor(1472), 1);
  assert.equal(unitsFor(1), 1);
  assert.equal(unitsFor(8700), 6);
  assert.equal(unitsFor(1 << 20), MAX_UNITS);
});

test('fragment sizes cover a chunk exactly', () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 8 * 1024 * 1024 }), (len) => {
      const n = fragmentCount(len);
      let sum = 0;
      for (let i = 0; i < n; i++) sum += fragmentLength(len, i);
      assert.equal(sum, len);
      if (len > 0) assert.ok(fragmentLength(len, n - 1) > 0);
    }),
  );
});

test('packets with k units round trip through encode and decode', () => {
  fc.assert(
    fc.property(header, (h) => {
      const payload = Buffer.alloc(h.payloadLength, 7);
      const b = Buffer.concat([encodeHeader(h), payload]);
      const d = decodePacket(b);
      assert.deepEqual(
        { ...d, payload: Buffer.from(d.payload) },
        {
          type: h.type,
          nonce: h.nonce,
          seq: h.seq,
          frag: h.frag,
          units: h.units,
          count: h.count,
          txPos: h.txPos,
          serial: h.serial,
          payload,
          runs: null,
        },
      );
    }),
  );
});

test('random bytes are rejected with a typed error, never a crash', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 9000 }), (a) => {
      const b = Buffer.from(a);
      const code = checkHeader(b);
      if (code === 0) {
        assert.doesNotThrow(() => decodePacket(b));
        return;
      }
      assert.throws(
        () => decodePacket(b),
        (e: unknown) => e instanceof TransportError && e.code === 'E_PACKET_INVALID',
      );
    }),
    { numRuns: 2000 },
  );
});

test('mutated valid packets are either valid or rejected with E_PACKET_INVALID', () => {
  fc.assert(
    fc.property(
      header,
      fc.array(fc.tuple(fc.nat(), fc.nat({ max: 255 })), { maxLength: 6 }),
      fc.nat(),
      (h, flips, cut) => {
        const b = Buffer.concat([encodeHeader(h), Buffer.alloc(h.payloadLength)]);
        // Flips land in the header most of the time: that is where the consistency rules live.
        for (const [at, v] of flips) b[at % (at % 4 === 0 ? b.length : HEADER_SIZE)] = v;
        const m = cut % 3 === 0 ? b.subarray(0, cut % (b.length + 1)) : b;
        try {
          const d = decodePacket(m);
          // Whatever passes is self-consistent: its units lie inside the chunk and the payload
          // is what those units hold in some chunk with that unit count.
          assert.ok(d.units >= 1 && d.units <= MAX_UNITS && d.frag + d.units <= d.count);
          const full = d.units * FRAG_PAYLOAD;
          if (d.frag + d.units < d.count) assert.equal(d.payload.length, full);
          else
            assert.ok(d.payload.length <= full && (d.units === 1 || d.payload.length > full - FRAG_PAYLOAD));
        } catch (e) {
          assert.ok(e instanceof TransportError && e.code === 'E_PACKET_INVALID', String(e));
        }
      },
    ),
    { numRuns: 2000 },
  );
});

test('specific malformed headers name what is wrong', () => {
  const good = encodeHeader({
    type: TYPE_DATA,
    nonce: Buffer.alloc(8, 1),
    seq: 1,
    frag: 0,
    count: 1,
    txPos: 0,
    serial: 1,
  });
  assert.throws(() => decodePacket(good.subarray(0, 10)), /shorter than/);
  const magic = Buffer.from(good);
  magic[0] = 0;
  assert.throws(() => decodePacket(magic), /bad magic/);
  const ver = Buffer.from(good);
  ver[2] = 9;
  assert.throws(() => decodePacket(ver), /version/);
  const frag = Buffer.from(good);
  frag.writeUInt16BE(1, 16);
  assert.throws(() => decodePacket(frag), /unit index/);
  assert.throws(() => decodePacket(Buffer.concat([good, Buffer.alloc(FRAG_PAYLOAD + 1)])), /payload length/);
  const type = Buffer.from(good);
  type[3] = 0x1f;
  assert.throws(() => decodePacket(type), /unknown packet type/);
});

test('unit counts and lengths that do not agree are rejected', () => {
  const h = (frag: number, units: number, count: number): Buffer =>
    encodeHeader({
      type: TYPE_DATA,
      nonce: Buffer.alloc(8, 1),
      seq: 1,
      frag,
      units,
      count,
      txPos: 0,
      serial: 1,
    });
  const pay = (n: number): Buffer => Buffer.alloc(n);
  // 3 full units in the middle of a 10-unit chunk: exactly 3 x 1444 bytes.
  assert.equal(decodePacket(Buffer.concat([h(2, 3, 10), pay(3 * FRAG_PAYLOAD)])).units, 3);
  assert.throws(
    () => decodePacket(Buffer.concat([h(2, 3, 10), pay(3 * FRAG_PAYLOAD - 1)])),
    /payload length/,
  );
  assert.throws(() => decodePacket(Buffer.concat([h(2, 3, 10), pay(2 * FRAG_PAYLOAD)])), /payload length/);
  // Ending the chunk: the last unit may be short but not missing.
  assert.equal(decodePacket(Buffer.concat([h(7, 3, 10), pay(2 * FRAG_PAYLOAD + 1)])).payload.length, 2889);
  assert.throws(() => decodePacket(Buffer.concat([h(7, 3, 10), pay(2 * FRAG_PAYLOAD)])), /payload length/);
  assert.throws(
    () => decodePacket(Buffer.concat([h(7, 3, 10), pay(3 * FRAG_PAYLOAD + 1)])),
    /payload length/,
  );
  // Units running past the chunk's end.
  assert.throws(() => decodePacket(Buffer.concat([h(8, 3, 10), pay(3 * FRAG_PAYLOAD)])), /unit index/);
  // An empty chunk is one empty unit.
  assert.equal(decodePacket(h(0, 1, 1)).payload.length, 0);
  assert.throws(
    () => h(0, 0, 1),
    (e: unknown) => e instanceof TransportError && e.code === 'E_PACKET_INVALID',
  );
  assert.throws(() => h(0, MAX_UNITS + 1, 40), /1\.\.16 units/);
});

/** A coded repair of `runs` (run 0 in the header too) over chunks whose wire bytes are `chunks[seq]`. */
function codedPacket(runs: CodedRun[], chunks: Buffer[]): Buffer {
  const units = Math.max(...runs.map((r) => r.units));
  const parts = runs.map((r) => {
    const wire = chunks[r.seq] as Buffer;
    const start = r.frag * FRAG_PAYLOAD;
    return wire.subarray(start, start + unitsLength(wire.length, r.frag, r.units));
  });
  const payload = Buffer.alloc(Math.max(...parts.map((x) => x.length)));
  for (const x of parts) xorInto(payload, x);
  const head = Buffer.alloc(codedPayloadOffset(runs.length));
  const r0 = runs[0] as CodedRun;
  encodeHeader({
    type: TYPE_CODED,
    nonce: Buffer.alloc(8, 1),
    seq: r0.seq,
    frag: r0.frag,
    units,
    count: fragmentCount((chunks[r0.seq] as Buffer).length),
    txPos: 0,
    serial: 1,
  }).copy(head);
  writeCodedRuns(head, runs);
  return Buffer.concat([head, payload]);
}

test('xorInto matches a byte-wise XOR, aligned or not', () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ maxLength: 3000 }),
      fc.uint8Array({ maxLength: 3000 }),
      fc.nat({ max: 3 }),
      fc.nat({ max: 3 }),
      (a, b, da, db) => {
        const n = Math.min(a.length, b.length);
        const dst = Buffer.alloc(n + da);
        Buffer.from(a.subarray(0, n)).copy(dst, da);
        const src = Buffer.alloc(n + db);
        Buffer.from(b.subarray(0, n)).copy(src, db);
        xorInto(dst.subarray(da), src.subarray(db));
        for (let i = 0; i < n; i++) assert.equal(dst[da + i], (a[i] as number) ^ (b[i] as number));
      },
    ),
  );
});

test('a coded repair gives back any one of its runs from the others', () => {
  const chunkArb = fc.uint8Array({ minLength: 1, maxLength: 30_000 }).map((a) => Buffer.from(a));
  fc.assert(
    fc.property(
      fc.array(chunkArb, { minLength: 2, maxLength: 5 }),
      fc.array(fc.tuple(fc.nat(), fc.nat(), fc.integer({ min: 1, max: MAX_UNITS })), {
        minLength: 2,
        maxLength: 5,
      }),
      fc.nat(),
      (chunks, picks, missingSeed) => {
        // One run per chunk (as the sender does), each inside its chunk.
        const runs: CodedRun[] = picks.slice(0, chunks.length).map(([, f, u], seq) => {
          const count = fragmentCount((chunks[seq] as Buffer).length);
          const frag = f % count;
          return { seq, frag, units: Math.min(u, count - frag) };
        });
        if (runs.length < 2) return;
        const b = codedPacket(runs, chunks);
        assert.equal(checkHeader(b), 0);
        const d = decodePacket(b);
        assert.equal(d.type, TYPE_CODED);
        assert.deepEqual(d.runs, runs);
        // The receiver's side: XOR out every run but one.
        const missing = missingSeed % runs.length;
        const out = Buffer.from(d.payload);
        runs.forEach((r, i) => {
          if (i === missing) return;
          const wire = chunks[r.seq] as Buffer;
          const start = r.frag * FRAG_PAYLOAD;
          xorInto(out, wire.subarray(start, start + unitsLength(wire.length, r.frag, r.units)));
        });
        const want = runs[missing] as CodedRun;
        const wire = chunks[want.seq] as Buffer;
        const start = want.frag * FRAG_PAYLOAD;
        const len = unitsLength(wire.length, want.frag, want.units);
        assert.deepEqual(out.subarray(0, len), wire.subarray(start, start + len));
      },
    ),
  );
});

test('malformed coded repairs are rejected with the reason', () => {
  const chunks = [Buffer.alloc(5 * FRAG_PAYLOAD, 1), Buffer.alloc(3 * FRAG_PAYLOAD, 2)];
  const good = codedPacket(
    [
      { seq: 0, frag: 1, units: 2 },
      { seq: 1, frag: 0, units: 1 },
    ],
    chunks,
  );
  assert.equal(checkHeader(good), 0);
  const one = Buffer.from(good);
  one[HEADER_SIZE] = 1;
  assert.throws(() => decodePacket(one), /coded run list/);
  const many = Buffer.from(good);
  many[HEADER_SIZE] = MAX_COMPONENTS + 1;
  assert.throws(() => decodePacket(many), /coded run list/);
  // Run 0 must be the run the header names.
  const other = Buffer.from(good);
  other.writeUInt16BE(0, 16);
  assert.throws(() => decodePacket(other), /coded run list/);
  // A run longer than the datagram's units, or none as long.
  const long = Buffer.from(good);
  long[HEADER_SIZE + 1 + 7 + 6] = 3;
  assert.throws(() => decodePacket(long), /coded run list/);
  const zero = Buffer.from(good);
  zero[HEADER_SIZE + 1 + 7 + 6] = 0;
  assert.throws(() => decodePacket(zero), /coded run list/);
  assert.throws(() => decodePacket(good.subarray(0, codedPayloadOffset(2) - 1)), /shorter than/);
  assert.throws(() => decodePacket(Buffer.concat([good, Buffer.alloc(1)])), /payload length/);
  assert.throws(() => decodePacket(good.subarray(0, good.length - FRAG_PAYLOAD)), /payload length/);
  assert.throws(
    () => writeCodedRuns(Buffer.alloc(100), [{ seq: 0, frag: 0, units: 1 }]),
    (e: unknown) => e instanceof TransportError && e.code === 'E_PACKET_INVALID',
  );
});
