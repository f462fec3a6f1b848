/**
 * Data-plane packet format. One UDP datagram carries one fragment of one chunk's
 * wire bytes (the stored bytes, AES-GCM sealed when the session encrypts):
 *
 *   0  u16 magic 0x4943 ('IC')      12 u32 chunk seq (index in the session's chunk table)
 *   2  u8  version                   16 u16 fragment index
 *   3  u8  type (1 data, 2 repair)   18 u16 fragment count
 *   4  8 bytes session nonce         20 u32 transmit position (first-pass chunks < this were sent)
 *                                    24 u32 packet serial (sender-wide, for loss and repair suppression)
 *   28 payload: FRAG_PAYLOAD bytes, or the rest of the chunk in the last fragment
 *
 * 28 + 1444 = 1472 = the UDP payload that fits an Ethernet MTU of 1500 without IP
 * fragmentation. Packets are not authenticated one by one (a Node crypto call per
 * packet costs more than the send itself); integrity comes from the chunk hash the
 * receiver got over the control channel, checked once the chunk is assembled.
 */
import { TransportError } from './errors.ts';

export const MAGIC = 0x4943;
export const PROTOCOL_VERSION = 1;
export const HEADER_SIZE = 28;
export const MAX_DATAGRAM = 1472;
export const FRAG_PAYLOAD = MAX_DATAGRAM - HEADER_SIZE;
export const TYPE_DATA = 1;
export const TYPE_REPAIR = 2;
export const MAX_FRAGMENTS = 0xffff;

export interface PacketHeader {
  type: number;
  nonce: Buffer;
  seq: number;
  frag: number;
  count: number;
  txPos: number;
  serial: number;
}

export function fragmentCount(wireLength: number): number {
  return Math.max(1, Math.ceil(wireLength / FRAG_PAYLOAD));
}

export function fragmentLength(wireLength: number, frag: number): number {
  const start = frag * FRAG_PAYLOAD;
  return Math.max(0, Math.min(FRAG_PAYLOAD, wireLength - start));
}

/** Writes a header into a fresh buffer; the payload is sent alongside it (no copy). */
export function encodeHeader(h: PacketHeader): Buffer {
  if (h.nonce.length !== 8) throw new TransportError('E_PACKET_INVALID', 'session nonce must be 8 bytes');
  const b = Buffer.allocUnsafe(HEADER_SIZE);
  b.writeUInt16BE(MAGIC, 0);
  b.writeUInt8(PROTOCOL_VERSION, 2);
  b.writeUInt8(h.type, 3);
  h.nonce.copy(b, 4);
  b.writeUInt32BE(h.seq, 12);
  b.writeUInt16BE(h.frag, 16);
  b.writeUInt16BE(h.count, 18);
  b.writeUInt32BE(h.txPos, 20);
  b.writeUInt32BE(h.serial, 24);
  return b;
}

/** Why a datagram was rejected before looking at the session's chunk table. */
export const REJECT_SHORT = 1;
export const REJECT_MAGIC = 2;
export const REJECT_VERSION = 3;
export const REJECT_TYPE = 4;
export const REJECT_FIELDS = 5;

/** Allocation-free check used on the hot path: 0 when the header is well formed, else a REJECT_* code. */
export function checkHeader(b: Buffer): number {
  if (b.length < HEADER_SIZE) return REJECT_SHORT;
  if (b.readUInt16BE(0) !== MAGIC) return REJECT_MAGIC;
  if (b[2] !== PROTOCOL_VERSION) return REJECT_VERSION;
  const type = b[3];
  if (type !== TYPE_DATA && type !== TYPE_REPAIR) return REJECT_TYPE;
  const frag = b.readUInt16BE(16);
  const count = b.readUInt16BE(18);
  if (count === 0 || frag >= count || b.length - HEADER_SIZE > FRAG_PAYLOAD) return REJECT_FIELDS;
  return 0;
}

const REASONS: Record<number, string> = {
  [REJECT_SHORT]: `shorter than the ${HEADER_SIZE}-byte header`,
  [REJECT_MAGIC]: 'not an imgcast data packet (bad magic)',
  [REJECT_VERSION]: 'unsupported protocol version',
  [REJECT_TYPE]: 'unknown packet type',
  [REJECT_FIELDS]: 'fragment index/count or payload length out of range',
};

/** Full decode for tools and tests; throws TransportError E_PACKET_INVALID with the reason. */
export function decodePacket(b: Buffer): PacketHeader & { payload: Buffer } {
  const bad = checkHeader(b);
  if (bad !== 0) {
    throw new TransportError('E_PACKET_INVALID', `data packet rejected: ${REASONS[bad]}`, {
      length: b.length,
    });
  }
  return {
    type: b[3] as number,
    nonce: Buffer.from(b.subarray(4, 12)),
    seq: b.readUInt32BE(12),
    frag: b.readUInt16BE(16),
    count: b.readUInt16BE(18),
    txPos: b.readUInt32BE(20),
    serial: b.readUInt32BE(24),
    payload: b.subarray(HEADER_SIZE),
  };
}
