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
  TYPE_DATA,
  TYPE_REPAIR,
} from '../../src/transport/packet.ts';

const header = fc.record({
  type: fc.constantFrom(TYPE_DATA, TYPE_REPAIR),
  nonce: fc.uint8Array({ minLength: 8, maxLength: 8 }).map((a) => Buffer.from(a)),
  seq: fc.nat({ max: 0xffffffff }),
  count: fc.integer({ min: 1, max: 0xffff }),
  fragSeed: fc.nat(),
  txPos: fc.nat({ max: 0xffffffff }),
  serial: fc.nat({ max: 0xffffffff }),
  payloadLength: fc.nat({ max: FRAG_PAYLOAD }),
});

test('a datagram fits an Ethernet MTU', () => {
  assert.equal(HEADER_SIZE + FRAG_PAYLOAD, MAX_DATAGRAM);
  assert.ok(MAX_DATAGRAM + 28 <= 1500);
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

test('packets round trip through encode and decode', () => {
  fc.assert(
    fc.property(header, (h) => {
      const frag = h.fragSeed % h.count;
      const payload = Buffer.alloc(h.payloadLength, 7);
      const b = Buffer.concat([encodeHeader({ ...h, frag }), payload]);
      const d = decodePacket(b);
      assert.deepEqual(
        { ...d, payload: Buffer.from(d.payload) },
        {
          type: h.type,
          nonce: h.nonce,
          seq: h.seq,
          frag,
          count: h.count,
          txPos: h.txPos,
          serial: h.serial,
          payload,
        },
      );
    }),
  );
});

test('random bytes are rejected with a typed error, never a crash', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 1600 }), (a) => {
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
        const frag = h.fragSeed % h.count;
        const b = Buffer.concat([encodeHeader({ ...h, frag }), Buffer.alloc(h.payloadLength)]);
        for (const [at, v] of flips) b[at % b.length] = v;
        const m = cut % 3 === 0 ? b.subarray(0, cut % (b.length + 1)) : b;
        try {
          const d = decodePacket(m);
          assert.ok(d.frag < d.count && d.payload.length <= FRAG_PAYLOAD);
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
  assert.throws(() => decodePacket(frag), /fragment index/);
  assert.throws(() => decodePacket(Buffer.concat([good, Buffer.alloc(FRAG_PAYLOAD + 1)])), /payload length/);
});
