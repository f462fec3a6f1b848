/**
 * Control channel: one TCP connection between the sender and each receiver.
 * Frames are a u32 big-endian length followed by a UTF-8 JSON object; once a
 * pre-shared key is in use, each frame also ends with a 16-byte HMAC-SHA256 over
 * (direction, frame counter, JSON), keyed by a per-connection key derived from both
 * handshake nonces, so frames cannot be forged, replayed or reordered. Every message
 * is validated against its schema (types, ranges, sizes) before anyone acts on it;
 * a bad frame closes that one connection with a reason.
 *
 * Handshake: sender CHALLENGE(nonce, keyed) → receiver HELLO(name, nonce, proof) →
 * sender SESSION(…, proof) → receiver JOIN(chunks it already has) → STATUS… → DONE.
 * The sender sends TICK as heartbeat and transmit position, DROP and END.
 *
 * Live sessions (a table that grows while the session runs): SESSION says `live` and holds
 * the table so far; EXTEND appends rows (and an opaque delta for the consumer), SEAL ends the
 * table with the final meta. A receiver that joins late gets SESSION with the table the
 * session started with, then every EXTEND so far, in order.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { Socket } from 'node:net';
import { TransportError } from './errors.ts';
import { LOSS_HORIZON, MAX_DATA_PORTS, PROTOCOL_VERSION } from './packet.ts';

/** Ranges of integers, flattened: [a, b, c, d] means a..b-1 and c..d-1, ascending, non-overlapping. */
export type Ranges = number[];

export interface ChunkRow {
  id: string;
  codec: number;
  storedLength: number;
  rawLength: number;
}

export type ToReceiver =
  | { t: 'challenge'; v: number; nonce: string; keyed: boolean }
  | {
      t: 'session';
      nonce: string;
      group: string;
      /** The first data port: datagrams come on `ports` consecutive ones from it (absent: 1). */
      port: number;
      ports?: number;
      chunks: Array<[string, number, number, number]>;
      meta: unknown;
      encrypt: { key: string; salt: string } | null;
      proof: string | null;
      /** The table grows (EXTEND) until SEAL; absent from senders before live sessions. */
      live?: boolean;
      /** Live sessions: no chunk will be stored in more bytes than this. */
      maxStored?: number;
    }
  | {
      t: 'extend';
      /** The seq of the first new row: the receiver's table length before it. */
      from: number;
      chunks: Array<[string, number, number, number]>;
      delta: unknown;
    }
  | { t: 'seal'; chunks: number; meta: unknown }
  | {
      t: 'tick';
      txPos: number;
      serial: number;
      rate: number;
      started: boolean;
      firstPassDone: boolean;
      /**
       * How far (in units) the sender's datagrams may now arrive out of order: a unit is judged
       * lost only this many units later. Small while one socket sends alone, so loss is seen
       * within milliseconds; large while datagrams are dealt over sending threads.
       */
      horizon: number;
    }
  | { t: 'drop'; reason: string; code: string | null }
  | { t: 'end' };

export interface ReceiverCounters {
  /** Valid data datagrams of the session (each carries one or more units). */
  packets: number;
  duplicates: number;
  stray: number;
  forged: number;
  rejectedChunks: number;
  overrun: number;
  /** Units that never arrived (serial gaps). */
  lost: number;
  simulatedDrops: number;
  nakFragments: number;
  /** Coded repairs that gave this receiver a run it missed, and those it could not use (two runs missing, or one no longer in memory). */
  decoded: number;
  undecodable: number;
}

export type ToSender =
  | { t: 'hello'; v: number; name: string; nonce: string; proof: string | null }
  | { t: 'join'; have: Ranges }
  | {
      t: 'status';
      chunks: number;
      bytes: number;
      heard: number;
      /** Units received and expected (from serial gaps) since the last STATUS. */
      rx: number;
      exp: number;
      /** Units that arrived since the last STATUS, and the milliseconds since it: the delivery rate. */
      got: number;
      ms: number;
      /**
       * The first chunk it has no memory for: it can take new chunks below this one only (its
       * partly received chunks, and those waiting to be written, hold the rest). The sender's
       * first pass stays below the lowest window of the receivers.
       */
      win: number;
      /**
       * Datagrams the receiver's host dropped for a full socket receive buffer since the last
       * STATUS (Linux Udp RcvbufErrors, whole host), null when unknown: that loss is the
       * receiver's CPU, not the wire, and must not shrink the datagrams.
       */
      ovf: number | null;
      /** Share of the host's IP reassembly memory in use (0..1, Linux), null when unknown. */
      frag: number | null;
      nak: Array<[number, Ranges | null]>;
      /**
       * Every chunk below this one is complete here (live sessions release what every receiver
       * has), and the rows of the table it knows; 0 and the sender's table from older receivers.
       */
      low?: number;
      known?: number;
      /** Complete chunks whose bytes it still keeps, to XOR out of coded repairs. */
      kept: Ranges;
      counters: ReceiverCounters;
    }
  | { t: 'done'; ok: boolean; code: string | null; message: string | null; counters: ReceiverCounters };

/** Receivers may send at most this much in one frame (a STATUS with a long NAK list, a JOIN of a huge image). */
export const MAX_TO_SENDER = 16 * 1024 * 1024;
/** SESSION carries the image manifest, which for a big file volume is tens of MiB of JSON. */
export const MAX_TO_RECEIVER = 256 * 1024 * 1024;
export const MAX_NAK_ENTRIES = 4096;
const MAC_LENGTH = 16;

function invalid(msg: string): TransportError {
  return new TransportError('E_CONTROL_INVALID', `control message rejected: ${msg}`);
}

function isObj(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}
function uint(x: unknown, what: string, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof x !== 'number' || !Number.isInteger(x) || x < 0 || x > max)
    throw invalid(`${what} must be an integer 0..${max}`);
  return x;
}
function share(x: unknown, what: string): number {
  // Above 1 is possible: the kernel lets the memory run a little past its threshold.
  if (typeof x !== 'number' || !Number.isFinite(x) || x < 0 || x > 100)
    throw invalid(`${what} must be a number 0..100`);
  return x;
}
function str(x: unknown, what: string, max: number, re?: RegExp): string {
  if (typeof x !== 'string' || x.length > max || (re && !re.test(x)))
    throw invalid(`${what} is not a valid string`);
  return x;
}
function bool(x: unknown, what: string): boolean {
  if (typeof x !== 'boolean') throw invalid(`${what} must be true or false`);
  return x;
}
function optStr(x: unknown, what: string, max: number, re?: RegExp): string | null {
  return x === null || x === undefined ? null : str(x, what, max, re);
}
const HEX = (n: number) => new RegExp(`^[0-9a-f]{${n}}$`);
const HEX64 = HEX(64);
const HEX32 = HEX(32);
const HEX16 = HEX(16);

export function ranges(x: unknown, what: string, limit: number): Ranges {
  if (!Array.isArray(x) || x.length % 2 !== 0)
    throw invalid(`${what} must be an even-length array of integers`);
  let last = -1;
  for (let i = 0; i < x.length; i += 2) {
    const a = uint(x[i], what, limit);
    const b = uint(x[i + 1], what, limit);
    if (a <= last || b <= a) throw invalid(`${what} ranges must be ascending and non-empty`);
    last = b;
  }
  return x as Ranges;
}

function counters(x: unknown): ReceiverCounters {
  if (!isObj(x)) throw invalid('counters missing');
  const keys: Array<keyof ReceiverCounters> = [
    'packets',
    'duplicates',
    'stray',
    'forged',
    'rejectedChunks',
    'overrun',
    'lost',
    'simulatedDrops',
    'nakFragments',
    'decoded',
    'undecodable',
  ];
  const out = {} as ReceiverCounters;
  for (const k of keys) out[k] = uint(x[k], `counters.${k}`);
  return out;
}

/** Validates a message a receiver sent; `chunkCount` bounds every chunk index in it. */
export function parseToSender(body: Buffer, chunkCount: number): ToSender {
  const m = parseJson(body);
  switch (m.t) {
    case 'hello':
      return {
        t: 'hello',
        v: uint(m.v, 'v', 1000),
        name: str(m.name, 'name', 200),
        nonce: str(m.nonce, 'nonce', 32, HEX32),
        proof: optStr(m.proof, 'proof', 64, HEX64),
      };
    case 'join':
      return { t: 'join', have: ranges(m.have, 'have', chunkCount) };
    case 'status': {
      if (!Array.isArray(m.nak) || m.nak.length > MAX_NAK_ENTRIES)
        throw invalid('nak must be a list (max 4096)');
      const nak: Array<[number, Ranges | null]> = m.nak.map((e: unknown) => {
        if (!Array.isArray(e) || e.length !== 2)
          throw invalid('nak entries are [seq, fragment ranges or null]');
        const seq = uint(e[0], 'nak seq', chunkCount - 1);
        return [seq, e[1] === null ? null : ranges(e[1], 'nak fragments', 0xffff)];
      });
      return {
        t: 'status',
        chunks: uint(m.chunks, 'chunks', chunkCount),
        bytes: uint(m.bytes, 'bytes'),
        heard: uint(m.heard, 'heard', 0xffffffff),
        rx: uint(m.rx, 'rx'),
        exp: uint(m.exp, 'exp'),
        got: uint(m.got, 'got'),
        ms: uint(m.ms, 'ms', 3_600_000),
        win: uint(m.win, 'win', chunkCount),
        ovf: m.ovf === null || m.ovf === undefined ? null : uint(m.ovf, 'ovf'),
        frag: m.frag === null || m.frag === undefined ? null : share(m.frag, 'frag'),
        nak,
        ...(m.low === undefined ? {} : { low: uint(m.low, 'low', chunkCount) }),
        ...(m.known === undefined ? {} : { known: uint(m.known, 'known', chunkCount) }),
        kept: ranges(m.kept, 'kept', chunkCount),
        counters: counters(m.counters),
      };
    }
    case 'done':
      return {
        t: 'done',
        ok: bool(m.ok, 'ok'),
        code: optStr(m.code, 'code', 64),
        message: optStr(m.message, 'message', 4000),
        counters: counters(m.counters),
      };
    default:
      throw invalid(`unknown message type ${JSON.stringify(String(m.t)).slice(0, 40)}`);
  }
}

const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

/** Validates a message the sender sent. */
export function parseToReceiver(body: Buffer): ToReceiver {
  const m = parseJson(body);
  switch (m.t) {
    case 'challenge':
      return {
        t: 'challenge',
        v: uint(m.v, 'v', 1000),
        nonce: str(m.nonce, 'nonce', 32, HEX32),
        keyed: bool(m.keyed, 'keyed'),
      };
    case 'session': {
      const chunks = chunkRows(m.chunks, 0);
      let encrypt: { key: string; salt: string } | null = null;
      if (m.encrypt !== null && m.encrypt !== undefined) {
        if (!isObj(m.encrypt)) throw invalid('encrypt must be an object');
        encrypt = {
          key: str(m.encrypt.key, 'encrypt.key', 64, HEX64),
          salt: str(m.encrypt.salt, 'salt', 8, HEX(8)),
        };
      }
      const group = str(m.group, 'group', 15, IPV4);
      const port = uint(m.port, 'port', 65535);
      const ports = m.ports === undefined ? 1 : uint(m.ports, 'ports', MAX_DATA_PORTS);
      if (ports < 1 || port + ports - 1 > 65535)
        throw invalid(`data ports ${port}+${ports} do not fit 1..65535`);
      return {
        t: 'session',
        nonce: str(m.nonce, 'nonce', 16, HEX16),
        group,
        port,
        ...(ports === 1 ? {} : { ports }),
        chunks,
        meta: m.meta ?? null,
        encrypt,
        proof: optStr(m.proof, 'proof', 64, HEX64),
        ...(m.live === undefined ? {} : { live: bool(m.live, 'live') }),
        ...(m.maxStored === undefined ? {} : { maxStored: uint(m.maxStored, 'maxStored', MAX_STORED) }),
      };
    }
    case 'extend': {
      const from = uint(m.from, 'from', 0xffffffff);
      return { t: 'extend', from, chunks: chunkRows(m.chunks, from), delta: m.delta ?? null };
    }
    case 'seal':
      return { t: 'seal', chunks: uint(m.chunks, 'chunks', 0xffffffff), meta: m.meta ?? null };
    case 'tick':
      return {
        t: 'tick',
        txPos: uint(m.txPos, 'txPos', 0xffffffff),
        serial: uint(m.serial, 'serial', 0xffffffff),
        rate: typeof m.rate === 'number' && m.rate >= 0 ? m.rate : 0,
        started: bool(m.started, 'started'),
        firstPassDone: bool(m.firstPassDone, 'firstPassDone'),
        horizon: uint(m.horizon, 'horizon', LOSS_HORIZON),
      };
    case 'drop':
      return {
        t: 'drop',
        reason: str(m.reason, 'reason', 4000),
        code: optStr(m.code, 'code', 64, /^E_[A-Z_]+$/),
      };
    case 'end':
      return { t: 'end' };
    default:
      throw invalid(`unknown message type ${JSON.stringify(String(m.t)).slice(0, 40)}`);
  }
}

/** Largest stored chunk a table row may announce. */
const MAX_STORED = 64 * 1024 * 1024;

/** Table rows [id, codec, stored length, raw length]; `first` is the seq of the first, for messages. */
function chunkRows(x: unknown, first: number): Array<[string, number, number, number]> {
  if (!Array.isArray(x) || first + x.length > 0xffffffff) throw invalid('chunks must be a list');
  return x.map((c: unknown, k: number) => {
    const i = first + k;
    if (!Array.isArray(c) || c.length !== 4) throw invalid(`chunk ${i} must be [id, codec, stored, raw]`);
    return [
      str(c[0], `chunk ${i} id`, 64, HEX64),
      uint(c[1], `chunk ${i} codec`, 255),
      uint(c[2], `chunk ${i} stored length`, MAX_STORED),
      uint(c[3], `chunk ${i} raw length`, MAX_STORED),
    ] as [string, number, number, number];
  });
}

function parseJson(body: Buffer): Record<string, unknown> {
  let m: unknown;
  try {
    m = JSON.parse(body.toString('utf8'));
  } catch {
    throw invalid('not valid JSON');
  }
  if (!isObj(m)) throw invalid('not a JSON object');
  return m;
}

// ---------------------------------------------------------------------------
// Keys and proofs

export function hmacHex(key: string, ...parts: string[]): string {
  return createHmac('sha256', key).update(parts.join('|')).digest('hex');
}

export function proofMatches(expected: string, got: string | null): boolean {
  if (got === null || got.length !== expected.length) return false;
  return timingSafeEqual(Buffer.from(expected, 'hex'), Buffer.from(got, 'hex'));
}

/** XOR-wraps the data key with a keystream only holders of the pre-shared key can derive. */
export function wrapDataKey(
  dataKeyHex: string,
  key: string | undefined,
  sNonce: string,
  rNonce: string,
): string {
  if (!key) return dataKeyHex;
  const pad = Buffer.from(hmacHex(key, 'wrap', sNonce, rNonce), 'hex');
  const k = Buffer.from(dataKeyHex, 'hex');
  for (let i = 0; i < k.length; i++) k[i] = (k[i] as number) ^ (pad[i] as number);
  return k.toString('hex');
}

// ---------------------------------------------------------------------------
// Framing

/** Reassembles length-prefixed frames from a TCP byte stream. */
export class FrameDecoder {
  readonly maxFrame: number;
  #parts: Buffer[] = [];
  #have = 0;
  constructor(maxFrame: number) {
    this.maxFrame = maxFrame;
  }
  /** The bytes the frame being received takes with its header, once its header is in; else 0. */
  #need = 0;

  /** Returns complete frame bodies; throws E_CONTROL_INVALID when a frame announces more than maxFrame bytes. */
  push(data: Buffer): Buffer[] {
    this.#parts.push(data);
    this.#have += data.length;
    // A large frame (a manifest) comes in many reads: they are joined once it is all here, not at each.
    if (this.#have < this.#need) return [];
    this.#need = 0;
    const out: Buffer[] = [];
    while (this.#have >= 4) {
      let buf = this.#parts.length === 1 ? (this.#parts[0] as Buffer) : Buffer.concat(this.#parts);
      this.#parts = [buf];
      const len = buf.readUInt32BE(0);
      if (len > this.maxFrame) throw invalid(`frame of ${len} bytes exceeds the limit of ${this.maxFrame}`);
      if (buf.length < 4 + len) {
        this.#need = 4 + len;
        break;
      }
      out.push(buf.subarray(4, 4 + len));
      buf = buf.subarray(4 + len);
      this.#parts = buf.length ? [buf] : [];
      this.#have = buf.length;
    }
    return out;
  }
}

/**
 * A framed, optionally MAC-protected JSON connection. Errors in what the peer sends
 * close the connection and are reported once through onClose(reason).
 */
export class Channel<In> {
  readonly socket: Socket;
  #decoder: FrameDecoder;
  #parse: (body: Buffer) => In;
  #macKey: Buffer | null = null;
  #dirOut = 0;
  #sent = 0n;
  #received = 0n;
  #closed = false;
  onMessage: (m: In) => void = () => {};
  onClose: (reason: string, err?: TransportError) => void = () => {};

  constructor(socket: Socket, maxFrame: number, parse: (body: Buffer) => In, isSender: boolean) {
    this.socket = socket;
    this.#decoder = new FrameDecoder(maxFrame);
    this.#parse = parse;
    this.#dirOut = isSender ? 1 : 2;
    socket.setNoDelay(true);
    socket.on('data', (d: Buffer) => this.#onData(d));
    socket.on('error', (e) => this.close(`connection error: ${e.message}`));
    socket.on('close', () => this.close('connection closed by peer'));
  }

  /** From now on every frame carries and requires a MAC under this key. */
  setMacKey(key: Buffer): void {
    this.#macKey = key;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** `json`: the message already serialized (one message to many receivers is serialized once). */
  send(m: ToReceiver | ToSender, json = Buffer.from(JSON.stringify(m), 'utf8')): void {
    if (this.#closed) return;
    const mac = this.#macKey ? this.#mac(this.#dirOut, this.#sent++, json) : null;
    const len = json.length + (mac ? MAC_LENGTH : 0);
    const head = Buffer.allocUnsafe(4);
    head.writeUInt32BE(len, 0);
    // Pieces, not one copy: a live session's final manifest is tens of MB, sent to every receiver.
    this.socket.cork();
    this.socket.write(head);
    this.socket.write(json);
    if (mac) this.socket.write(mac);
    this.socket.uncork();
  }

  close(reason: string, err?: TransportError): void {
    if (this.#closed) return;
    this.#closed = true;
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref();
    this.onClose(reason, err);
  }

  #mac(dir: number, counter: bigint, json: Buffer): Buffer {
    const h = createHmac('sha256', this.#macKey as Buffer);
    const pre = Buffer.alloc(9);
    pre[0] = dir;
    pre.writeBigUInt64BE(counter, 1);
    return h.update(pre).update(json).digest().subarray(0, MAC_LENGTH);
  }

  #onData(d: Buffer): void {
    if (this.#closed) return;
    try {
      for (let body of this.#decoder.push(d)) {
        if (this.#macKey) {
          if (body.length < MAC_LENGTH) throw invalid('frame too short for its MAC');
          const json = body.subarray(0, body.length - MAC_LENGTH);
          const want = this.#mac(3 - this.#dirOut, this.#received++, json);
          if (!timingSafeEqual(want, body.subarray(body.length - MAC_LENGTH))) {
            throw new TransportError(
              'E_AUTH',
              'control frame failed its MAC check (forged, replayed or wrong key)',
            );
          }
          body = json;
        }
        const m = this.#parse(body);
        this.onMessage(m);
        if (this.#closed) return;
      }
    } catch (e) {
      const err =
        e instanceof TransportError
          ? e
          : new TransportError('E_CONTROL_INVALID', `control message failed: ${String(e)}`);
      this.close(err.message, err);
    }
  }
}

export { PROTOCOL_VERSION };
