/**
 * Data-plane packet format. One UDP datagram carries `units` consecutive units of one
 * chunk's wire bytes (the stored bytes, AES-GCM sealed when the session encrypts). A unit
 * is FRAG_PAYLOAD bytes (the chunk's last one may be shorter); NAKs and repairs count units.
 *
 *   0  u16 magic 0x4943 ('IC')      12 u32 chunk seq (index in the session's chunk table)
 *   2  u8  version                   16 u16 first unit index (`frag`)
 *   3  u8  kind: low 4 bits type     18 u16 unit count of the chunk (`count`)
 *          (1 data, 2 repair),       20 u32 transmit position (first-pass chunks < this were sent)
 *          high 4 bits units - 1     24 u32 serial of the first unit (sender-wide, one per unit,
 *   4  8 bytes session nonce                so gaps count lost units, for loss and repair suppression)
 *   28 payload: units x FRAG_PAYLOAD bytes, less when the datagram ends the chunk
 *
 * 28 + 1444 = 1472 = the UDP payload that fits an Ethernet MTU of 1500 without IP
 * fragmentation, so one unit per datagram never fragments. k units make a datagram of
 * 28 + k x 1444 bytes that IP cuts into exactly k frames of at most 1500: per-datagram costs
 * (a Node dgram receive is ~4.5 us) are paid once per k units, but losing any frame loses
 * all k units. The sender picks k from the loss the receivers report (sender.ts).
 *
 * The units count lives in the kind byte because the header cannot grow: 28 + 1444 must stay
 * 1472.
 *
 * Coded repairs (type 3): when several receivers each miss different runs of units, one
 * datagram carrying the XOR of those runs repairs all of them: a receiver that holds every run
 * but one XORs the others out and gets the one it misses. After the header:
 *
 *   28 u8  number of runs m (2..MAX_COMPONENTS)
 *   29 m x (u32 chunk seq, u16 first unit, u8 units)  -- the header's seq/frag/count are run 0's
 *   29 + 7m payload: the XOR of the runs' bytes, each zero-padded to the longest; `units` in
 *          the kind byte is the longest run's units
 *
 * The longest run's length is the payload length, which the receiver checks against its chunk
 * table. Coded repairs are the only datagrams that may exceed 28 + units x 1444 bytes, by the
 * run list (the sender keeps them within the datagram size limit). Packets are not authenticated one by one (a Node crypto call per packet costs more
 * than the send itself); integrity comes from the chunk hash the receiver got over the
 * control channel, checked once the chunk is assembled.
 */
import { TransportError } from './errors.ts';

export const MAGIC = 0x4943;
/** 5: datagrams spread over several data ports (DATA_PORTS), which a receiver of 4 would not all hear. */
export const PROTOCOL_VERSION = 5;
export const HEADER_SIZE = 28;
/** A one-unit datagram: the largest that crosses an MTU of 1500 unfragmented. */
export const UNIT_DATAGRAM = 1472;
export const FRAG_PAYLOAD = UNIT_DATAGRAM - HEADER_SIZE;
/** Units one datagram may carry (4 bits in the header). */
export const MAX_UNITS = 16;
export const MAX_DATAGRAM = HEADER_SIZE + MAX_UNITS * FRAG_PAYLOAD;
/** Default datagram size limit: 16 units, 23132 bytes, 16 frames at MTU 1500 (the sender shrinks them under loss). */
/**
 * Later serials a receiver sees before it judges a unit lost (receiver.ts ArrivalCounter). A
 * sender whose datagrams may arrive out of order keeps them within this many units of their
 * place (datagram-out.ts).
 */
export const LOSS_HORIZON = 2048;
/** The horizon while datagrams leave one socket in order: the kernel may still swap a few. */
export const LOSS_HORIZON_ORDERED = 64;
/**
 * The horizon while one socket deals datagrams over several data ports (DATA_PORTS): the
 * receiver sorts what it read from its sockets in one turn (serial-order.ts), but a datagram
 * that reached a socket it had read already that turn waits for the next, behind later ones
 * the other sockets gave: about as many datagrams as arrive while a turn reads the backlog of a
 * pause (a chunk hashed, a garbage collection). At 256 units, one receiver fed at 2 Gbit/s on
 * the lab's loopback counted 3 % of its units lost that all came (967 asked for again), and the
 * sender shrank its datagrams from 16 units to 2 for it; at 1024, none. It delays a loss
 * figure by ~12 ms at 1 Gbit/s, ~120 ms at 100 Mbit/s (the wide horizon: ~250 ms).
 */
export const LOSS_HORIZON_PORTS = 1024;
export const DEFAULT_DATAGRAM = HEADER_SIZE + MAX_UNITS * FRAG_PAYLOAD;
/**
 * Consecutive UDP ports a sender deals its datagrams over, one after the other, from the data
 * port on (the session message says how many). A receiver reads one socket per port, and the
 * kernel caps each socket's buffer by net.core.rmem_max on its own: where a receiver cannot
 * raise that (no root, a container, a network namespace, whose view of it is read-only), eight
 * sockets hold eight times the stock 208 KiB. Measured in bench:multicast's stock-rmem_max row
 * (512 MiB to 3 receivers in network namespaces, 2 cores): 10.4-11.0 s over one port, 8.7-9.1 s
 * over 4, 6.6-7.1 s over 8, 6.5 s over 16. With a raised limit each socket asks for its share of
 * the receiver's buffer, so the memory is the same.
 */
export const DATA_PORTS = 8;
/** The highest control port a sender may use: its data ports must fit below 65536. */
export const MAX_CONTROL_PORT = 65535 - DATA_PORTS;
/** The most data ports a session message may name. */
export const MAX_DATA_PORTS = 16;
export const TYPE_DATA = 1;
export const TYPE_REPAIR = 2;
/** A repair that is the XOR of runs of units from several chunks (see "Coded repairs" above). */
export const TYPE_CODED = 3;
/** Runs one coded repair may combine (one byte in the datagram). */
export const MAX_COMPONENTS = 32;
/** Bytes per run in a coded repair's list: u32 seq, u16 first unit, u8 units. */
export const COMPONENT_SIZE = 7;
export const MAX_FRAGMENTS = 0xffff;

export interface PacketHeader {
  type: number;
  nonce: Buffer;
  seq: number;
  frag: number;
  /** Units in this datagram, 1..MAX_UNITS (default 1). */
  units?: number;
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

/** Bytes of units frag .. frag+units-1 of a chunk of `wireLength` wire bytes. */
export function unitsLength(wireLength: number, frag: number, units: number): number {
  const start = frag * FRAG_PAYLOAD;
  return Math.max(0, Math.min(units * FRAG_PAYLOAD, wireLength - start));
}

/** Units per datagram a datagram size limit allows (at least 1, at most MAX_UNITS). */
export function unitsFor(maxDatagram: number): number {
  return Math.max(1, Math.min(MAX_UNITS, Math.floor((maxDatagram - HEADER_SIZE) / FRAG_PAYLOAD)));
}

/** The kind byte: type in the low nibble, units - 1 in the high one. */
export function kindByte(type: number, units: number): number {
  return (type & 0x0f) | ((units - 1) << 4);
}

/** Writes a header into a fresh buffer; the payload is sent alongside it (no copy). */
export function encodeHeader(h: PacketHeader): Buffer {
  if (h.nonce.length !== 8) throw new TransportError('E_PACKET_INVALID', 'session nonce must be 8 bytes');
  const units = h.units ?? 1;
  if (!Number.isInteger(units) || units < 1 || units > MAX_UNITS) {
    throw new TransportError('E_PACKET_INVALID', `a datagram carries 1..${MAX_UNITS} units, not ${units}`);
  }
  const b = Buffer.allocUnsafe(HEADER_SIZE);
  b.writeUInt16BE(MAGIC, 0);
  b.writeUInt8(PROTOCOL_VERSION, 2);
  b.writeUInt8(kindByte(h.type, units), 3);
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
export const REJECT_LENGTH = 6;

/**
 * Allocation-free check used on the hot path: 0 when the header is well formed, else a REJECT_*
 * code. Besides the ranges it checks that the payload length fits the units: every unit but the
 * chunk's last is full, so a datagram that does not end the chunk is exactly units x FRAG_PAYLOAD,
 * and one that does holds more than units - 1 of them (a chunk's only unit may be empty).
 */
export function checkHeader(b: Buffer): number {
  if (b.length < HEADER_SIZE) return REJECT_SHORT;
  if (b.readUInt16BE(0) !== MAGIC) return REJECT_MAGIC;
  if (b[2] !== PROTOCOL_VERSION) return REJECT_VERSION;
  const kind = b[3] as number;
  const type = kind & 0x0f;
  if (type !== TYPE_DATA && type !== TYPE_REPAIR && type !== TYPE_CODED) return REJECT_TYPE;
  const units = (kind >> 4) + 1;
  const frag = b.readUInt16BE(16);
  const count = b.readUInt16BE(18);
  if (count === 0) return REJECT_FIELDS;
  if (type === TYPE_CODED) return checkCoded(b, units);
  if (frag + units > count) return REJECT_FIELDS;
  const len = b.length - HEADER_SIZE;
  if (frag + units < count) return len === units * FRAG_PAYLOAD ? 0 : REJECT_LENGTH;
  if (len > units * FRAG_PAYLOAD || (units > 1 && len <= (units - 1) * FRAG_PAYLOAD)) return REJECT_LENGTH;
  return 0;
}

/** The run list and payload bound of a coded repair; the chunk table checks the rest. */
function checkCoded(b: Buffer, units: number): number {
  if (b.length < HEADER_SIZE + 1) return REJECT_SHORT;
  const m = b[HEADER_SIZE] as number;
  if (m < 2 || m > MAX_COMPONENTS) return REJECT_FIELDS;
  const payloadAt = codedPayloadOffset(m);
  if (b.length < payloadAt) return REJECT_SHORT;
  if (b.readUInt32BE(HEADER_SIZE + 1) !== b.readUInt32BE(12)) return REJECT_FIELDS;
  if (b.readUInt16BE(HEADER_SIZE + 5) !== b.readUInt16BE(16)) return REJECT_FIELDS;
  let longest = 0;
  for (let i = 0; i < m; i++) {
    const u = b[HEADER_SIZE + 1 + i * COMPONENT_SIZE + 6] as number;
    if (u < 1 || u > units) return REJECT_FIELDS;
    longest = Math.max(longest, u);
  }
  if (longest !== units) return REJECT_FIELDS;
  const len = b.length - payloadAt;
  if (len > units * FRAG_PAYLOAD || len <= (units - 1) * FRAG_PAYLOAD) return REJECT_LENGTH;
  return 0;
}

/** Where a coded repair's payload starts, after its list of `runs` runs. */
export function codedPayloadOffset(runs: number): number {
  return HEADER_SIZE + 1 + runs * COMPONENT_SIZE;
}

export interface CodedRun {
  seq: number;
  frag: number;
  units: number;
}

/** The runs a coded repair (already passed by checkHeader) combines. */
export function codedRuns(b: Buffer): CodedRun[] {
  const m = b[HEADER_SIZE] as number;
  const out: CodedRun[] = [];
  for (let i = 0; i < m; i++) {
    const at = HEADER_SIZE + 1 + i * COMPONENT_SIZE;
    out.push({ seq: b.readUInt32BE(at), frag: b.readUInt16BE(at + 4), units: b[at + 6] as number });
  }
  return out;
}

/** Writes a coded repair's run list after its header (`into` holds at least codedPayloadOffset bytes). */
export function writeCodedRuns(into: Buffer, runs: readonly CodedRun[]): void {
  if (runs.length < 2 || runs.length > MAX_COMPONENTS) {
    throw new TransportError('E_PACKET_INVALID', `a coded repair combines 2..${MAX_COMPONENTS} runs`);
  }
  into[HEADER_SIZE] = runs.length;
  runs.forEach((r, i) => {
    const at = HEADER_SIZE + 1 + i * COMPONENT_SIZE;
    into.writeUInt32BE(r.seq, at);
    into.writeUInt16BE(r.frag, at + 4);
    into[at + 6] = r.units;
  });
}

/** dst[0..src.length) ^= src. Word-wise when both are 4-byte aligned (units are 1444 = 4 x 361 bytes). */
export function xorInto(dst: Uint8Array, src: Uint8Array): void {
  const n = src.length;
  let i = 0;
  if ((dst.byteOffset & 3) === 0 && (src.byteOffset & 3) === 0) {
    const words = n >>> 2;
    const d = new Uint32Array(dst.buffer, dst.byteOffset, words);
    const s = new Uint32Array(src.buffer, src.byteOffset, words);
    for (let w = 0; w < words; w++) d[w] = (d[w] as number) ^ (s[w] as number);
    i = words << 2;
  }
  for (; i < n; i++) dst[i] = (dst[i] as number) ^ (src[i] as number);
}

const REASONS: Record<number, string> = {
  [REJECT_SHORT]: `shorter than the ${HEADER_SIZE}-byte header`,
  [REJECT_MAGIC]: 'not an imgcast data packet (bad magic)',
  [REJECT_VERSION]: 'unsupported protocol version',
  [REJECT_TYPE]: 'unknown packet type',
  [REJECT_FIELDS]: 'unit index, units, unit count or coded run list out of range',
  [REJECT_LENGTH]: 'payload length does not match the units it claims',
};

/** Full decode for tools and tests; throws TransportError E_PACKET_INVALID with the reason. */
export function decodePacket(
  b: Buffer,
): PacketHeader & { units: number; payload: Buffer; runs: CodedRun[] | null } {
  const bad = checkHeader(b);
  if (bad !== 0) {
    throw new TransportError('E_PACKET_INVALID', `data packet rejected: ${REASONS[bad]}`, {
      length: b.length,
    });
  }
  const coded = ((b[3] as number) & 0x0f) === TYPE_CODED;
  return {
    type: (b[3] as number) & 0x0f,
    nonce: Buffer.from(b.subarray(4, 12)),
    seq: b.readUInt32BE(12),
    frag: b.readUInt16BE(16),
    units: ((b[3] as number) >> 4) + 1,
    count: b.readUInt16BE(18),
    txPos: b.readUInt32BE(20),
    serial: b.readUInt32BE(24),
    payload: coded ? b.subarray(codedPayloadOffset(b[HEADER_SIZE] as number)) : b.subarray(HEADER_SIZE),
    runs: coded ? codedRuns(b) : null,
  };
}
