/**
 * Multicast receiver: joins over TCP, listens to the group, assembles fragments
 * into chunks, checks each chunk (GCM tag when encrypted, then the hash via the
 * decoder) and hands only verified bytes to the consumer. Datagrams of other
 * protocols or sessions count as stray, malformed ones with our nonce as forged;
 * chunks that fail their check count as rejected and are requested again.
 *
 * A datagram carries one or more consecutive units (packet.ts); every unit in it counts as
 * received. Every ~100 ms it sends STATUS: progress, loss over the interval in units (from
 * serial gaps: the sender numbers units, not datagrams, so the figure means the same whatever
 * the datagram size), what the host's kernel dropped for a full socket buffer and how full
 * its IP reassembly memory is (the sender sizes its datagrams from these), and NAKs for chunks the sender has passed (per the transmit position
 * in data packets, or per its TICK once the packets sent before it were processed): the missing
 * fragments of partly received chunks, or the whole chunk.
 *
 * Memory is bounded: partly received chunks plus verified chunks waiting to be
 * written may hold at most MAX_PENDING bytes. Every STATUS says up to which chunk that memory
 * reaches (its window), and the sender's first pass stays below it; packets of chunks past it
 * (sent before the sender heard) are dropped, counted as overrun, not as loss, and asked for
 * again later.
 *
 * Live sessions: the table grows (EXTEND) until the sender seals it (SEAL, with the final
 * meta). The consumer hears of each extension and of the seal in order with the chunks it
 * is given; the receiver is done once the table is sealed and it has every chunk. Nothing of
 * a live session is journaled: it cannot be resumed (the master's disk is read anew).
 */
import type { FileHandle } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { type DataKey, GCM_TAG, openChunk, rawDecoder } from './chunkwire.ts';
import {
  Channel,
  hmacHex,
  MAX_NAK_ENTRIES,
  MAX_TO_RECEIVER,
  parseToReceiver,
  PROTOCOL_VERSION,
  proofMatches,
  type Ranges,
  type ReceiverCounters,
  type ToReceiver,
  wrapDataKey,
} from './control.ts';
import { ImgcastError } from '../errors.ts';
import { TransportError } from './errors.ts';
import { collectYoung } from './gc.ts';
import { type DataInput, openDataInput } from './datagram-in.ts';
import { openJournal, sessionFingerprint } from './journal.ts';
import { type Tuning, tuneKernel } from './kernel-tuning.ts';
import { ArrivalCounter } from './arrivals.ts';
import { KernelStats, receiveTuning, WANT_RCVBUF } from './receiver-kernel.ts';
import {
  checkHeader,
  codedPayloadOffset,
  codedRuns,
  FRAG_PAYLOAD,
  fragmentCount,
  HEADER_SIZE,
  LOSS_HORIZON,
  MAX_UNITS,
  TYPE_CODED,
  unitsLength,
  xorInto,
} from './packet.ts';
import { DEFAULT_PORT } from './sender.ts';
import type {
  ChunkConsumer,
  ChunkInfo,
  ReceiverOptions,
  ReceiverResult,
  SessionInfo,
  TableExtension,
} from './types.ts';

const STATUS_MS = 100;
/** While the target is being finished (every chunk here), a STATUS this often says this receiver is alive. */
const FINISH_BEAT_MS = 1000;
const MAX_PENDING = 32 * 1024 * 1024;
/** A journal checkpoint (sync the target, then record what it made durable) after this much or this long. */
const JOURNAL_SYNC_BYTES = 64 * 1024 * 1024;
const JOURNAL_SYNC_MS = 2000;

/**
 * Complete chunks stay in memory this long (and within this many bytes) after they were handed
 * on: a coded repair pairs a run this receiver misses with runs of chunks it already has, maybe
 * just completed. The sender pairs from the STATUS this receiver sent, so the margin covers one
 * STATUS interval plus the sender's wait for other receivers' reports.
 */
const RECENT_MS = 500;
const RECENT_MAX_BYTES = 16 * 1024 * 1024;
/** Chunks are kept only while this receiver lost packets this recently (it has nothing to decode otherwise). */
const KEEP_AFTER_LOSS_MS = 2000;
/** Datagram bytes received between minor collections (see gc.ts). */
const GC_EVERY_BYTES = 8 * 1024 * 1024;
const MAX_NAK_FRAGMENT_RANGES = 60_000;
/** Without packets after a TICK (the sender idles), trust the TICK after this long. */
const TICK_TRUST_MS = 300;
/** Chunks up to this size get their assembly buffer from a pool (reused, never freed while running). */
const MAX_POOLED = 8 * 1024 * 1024;

interface Partial {
  buf: Buffer;
  /** Bytes charged against MAX_PENDING: the pooled buffer's capacity, or the chunk's length. */
  charge: number;
  /** The whole pooled buffer `buf` is a view of; null when buf was allocated for this chunk alone. */
  base: Buffer | null;
  got: Uint8Array;
  count: number;
  n: number;
}

/**
 * The code and message a failure of the target reports: its own code when it has one (a disk
 * that could not be written says E_DISK_WRITE, not just that the consumer failed).
 */
function consumerFailure(err: unknown, what: string): [string, string] {
  const msg = err instanceof Error ? err.message : String(err);
  return [err instanceof ImgcastError ? err.code : 'E_CONSUMER', `${what}: ${msg}`];
}

export function parseFrom(from: string): { host: string; port: number } {
  const m = /^([^:]+)(?::(\d{1,5}))?$/.exec(from.trim());
  const port = m?.[2] ? Number(m[2]) : DEFAULT_PORT;
  if (!m || !m[1] || port < 1 || port > 65535) {
    throw new TransportError('E_CONNECT', `sender address "${from}" is not HOST or HOST:PORT`);
  }
  return { host: m[1], port };
}

function toRanges(sorted: number[]): Ranges {
  const out: Ranges = [];
  for (const s of sorted) {
    if (out.length && out[out.length - 1] === s) out[out.length - 1] = s + 1;
    else out.push(s, s + 1);
  }
  return out;
}

/** Receivers may be started before the sender: retry refused connections until `limitMs`. */
async function connectRetry(
  host: string,
  port: number,
  limitMs: number,
  signal?: AbortSignal,
): Promise<net.Socket> {
  const until = Date.now() + limitMs;
  for (;;) {
    if (signal?.aborted) throw new TransportError('E_ABORTED', 'receiver aborted by the caller');
    try {
      return await new Promise<net.Socket>((resolve, reject) => {
        const s = net.connect({ host, port });
        s.once('connect', () => {
          s.off('error', reject);
          resolve(s);
        });
        s.once('error', reject);
      });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (
        Date.now() > until ||
        (code !== 'ECONNREFUSED' && code !== 'ECONNRESET' && code !== 'EHOSTUNREACH')
      ) {
        throw new TransportError('E_CONNECT', `cannot reach sender ${host}:${port}: ${(e as Error).message}`);
      }
      // Short: the sender may just be starting (hashing a file first), and every receiver waits.
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

export async function runReceiver(opts: ReceiverOptions): Promise<ReceiverResult> {
  const log = opts.log ?? (() => {});
  const { host, port } = parseFrom(opts.from);
  const name = opts.name ?? `receiver-${process.pid}`;
  const decode = opts.decode ?? rawDecoder;
  const senderDeadAfterMs = opts.senderDeadAfterMs ?? 15_000;
  const t0 = Date.now();
  const c: ReceiverCounters = {
    packets: 0,
    duplicates: 0,
    stray: 0,
    forged: 0,
    rejectedChunks: 0,
    overrun: 0,
    lost: 0,
    simulatedDrops: 0,
    nakFragments: 0,
    decoded: 0,
    undecodable: 0,
  };

  let table: ChunkInfo[] = [];
  let wireLen: number[] = [];
  let counts: number[] = [];
  let complete: Uint8Array = new Uint8Array(0);
  /** A live session's table may still grow; a fixed one is sealed from the start. */
  let live = false;
  let sealed = true;
  let wireExtra = 0;
  /** Table news for the consumer that came before it was prepared (it gets them in order then). */
  let earlyNews: Array<(target: ChunkConsumer) => Promise<void>> | null = [];
  let applied = 0;
  let bytesApplied = 0;
  let chunksHad = 0;
  let nonceHi = 0;
  let nonceLo = 0;
  let dataKey: DataKey | null = null;
  let consumer: ChunkConsumer | null = null;
  let journal: FileHandle | null = null;
  let udp: DataInput | null = null;
  let statusTimer: NodeJS.Timeout | null = null;
  let joinedData = false;
  let stalled = false;
  const partials = new Map<number, Partial>();
  let pendingBytes = 0;
  // Assembly buffers sized for the largest chunk, reused once the consumer wrote a chunk: fresh
  // 1 MiB buffers per chunk cost page faults and GC work, and garbage ones inflate the RSS.
  let poolCap = 0;
  let bytesSinceGc = 0;
  const pool: Buffer[] = [];
  /** Where a coded repair is decoded (accept() copies out of it at once). */
  const decodeScratch = Buffer.allocUnsafe(MAX_UNITS * FRAG_PAYLOAD);
  const release = (p: Partial): void => {
    pendingBytes -= p.charge;
    recycle(p);
  };
  const recycle = (p: Partial): void => {
    // Never dropped: a dropped 1 MiB buffer lives in the old generation until a major GC. New ones
    // are only allocated while the pool is empty and MAX_PENDING allows, so it stays within that.
    if (p.base && p.base.length === poolCap) pool.push(p.base);
  };
  /**
   * Complete chunks kept for decoding coded repairs, in the order they completed (the order the
   * consumer gets them). A chunk is here from completion on; once the consumer is done with it
   * (`applied`) it no longer counts against MAX_PENDING but against RECENT_MAX_BYTES.
   */
  const recent = new Map<number, { p: Partial; at: number; applied: boolean }>();
  let recentBytes = 0;
  /** Bytes of verified chunks waiting for the consumer: memory the window cannot give out. */
  let queuedBytes = 0;
  let lastLossAt = -Infinity;
  const doneWith = (seq: number, p: Partial): void => {
    queuedBytes -= p.charge;
    const r = recent.get(seq);
    if (!r) return release(p);
    r.applied = true;
    recentBytes += p.charge;
    trimRecent(0);
  };
  /** Lets kept chunks go: those past their time, and more until `need` more bytes fit in MAX_PENDING. */
  const trimRecent = (need: number): void => {
    const now = Date.now();
    for (const [seq, r] of recent) {
      const keep = now - lastLossAt <= KEEP_AFTER_LOSS_MS && now - r.at <= RECENT_MS;
      const fits = pendingBytes + need <= MAX_PENDING && recentBytes <= RECENT_MAX_BYTES;
      if (!r.applied || (fits && keep)) break;
      recent.delete(seq);
      recentBytes -= r.p.charge;
      release(r.p);
    }
  };
  let applyChain: Promise<void> = Promise.resolve();
  let ended = false;
  let sessionOver = false;
  let sentDone = false;
  let lastFromSender = Date.now();
  let silenceCheck: NodeJS.Timeout | null = null;
  // Loss accounting from packet serials.
  let firstSerial = -1;
  let maxSerial = 0;
  let heardUnits = 0;
  let gotAtStatus = 0;
  let lastStatusAt = Date.now();
  const arrivals = new ArrivalCounter();
  /** Units after which a missing one counts as lost (the sender's TICK says; the widest until then). */
  let horizon = LOSS_HORIZON;
  // TICKs not yet confirmed by data (serial, txPos, time), and the confirmed transmit position.
  let ticks: Array<[number, number, number]> = [];
  let nakPos = 0;
  let heardByTick = 0;
  let dataPos = 0;
  let lowWater = 0;
  const kernel = new KernelStats();
  let tuning: Tuning | null = null;
  // Seeded by the receiver's name: repeatable, yet receivers of one test lose different packets,
  // as on a real network (coded repairs depend on that).
  let rng = 0x9e3779b9;
  for (let i = 0; i < name.length; i++) rng = Math.imul(rng ^ name.charCodeAt(i), 16777619) | 1;
  const rand = () => {
    rng ^= rng << 13;
    rng ^= rng >>> 17;
    rng ^= rng << 5;
    return (rng >>> 0) / 4294967296;
  };

  let resolveResult: (r: ReceiverResult) => void = () => {};
  const result = new Promise<ReceiverResult>((r) => (resolveResult = r));

  let sock: net.Socket;
  try {
    sock = await connectRetry(host, port, senderDeadAfterMs, opts.signal);
  } catch (e) {
    const err = e as TransportError;
    return {
      ok: false,
      code: err.code ?? 'E_CONNECT',
      message: err.message,
      name,
      chunks: 0,
      totalChunks: 0,
      chunksHad: 0,
      bytes: 0,
      durationMs: Date.now() - t0,
      counters: c,
    };
  }
  const ch = new Channel<ToReceiver>(sock, MAX_TO_RECEIVER, parseToReceiver, false);
  const rNonce = randomBytes(16).toString('hex');
  let sNonce = '';
  let gotSession = false;

  const connectTimer = setTimeout(() => {
    if (!gotSession)
      fail('E_CONNECT', `no session from ${host}:${port} within ${senderDeadAfterMs / 1000} s`);
  }, senderDeadAfterMs);

  ch.onClose = (reason, err) => {
    if (ended) return;
    if (sessionOver && sentDone) return end(null, null);
    if (err) return fail(err.code, `control connection to ${host}:${port}: ${err.message}`);
    if (!gotSession) return fail('E_CONNECT', `cannot reach sender ${host}:${port}: ${reason}`);
    fail('E_SENDER_LOST', `sender ${host}:${port} closed the control connection: ${reason}`);
  };

  ch.onMessage = (m) => {
    lastFromSender = Date.now();
    if (m.t === 'challenge') {
      if (m.v !== PROTOCOL_VERSION) {
        return fail('E_VERSION', `sender speaks protocol version ${m.v}, this receiver ${PROTOCOL_VERSION}`);
      }
      if (m.keyed && !opts.key)
        return fail('E_AUTH', `sender ${host}:${port} requires a key (--key) and none was given`);
      if (!m.keyed && opts.key) {
        return fail(
          'E_AUTH',
          `a key was given but sender ${host}:${port} does not use one; refusing an unauthenticated session`,
        );
      }
      sNonce = m.nonce;
      ch.send({
        t: 'hello',
        v: PROTOCOL_VERSION,
        name,
        nonce: rNonce,
        proof: opts.key ? hmacHex(opts.key, 'r', sNonce, rNonce) : null,
      });
      return;
    }
    if (m.t === 'session') {
      if (gotSession || !sNonce) throw new TransportError('E_CONTROL_INVALID', 'unexpected SESSION');
      if (opts.key) {
        if (!proofMatches(hmacHex(opts.key, 's', rNonce, sNonce), m.proof)) {
          return fail('E_AUTH', `sender ${host}:${port} failed to prove the key (wrong --key on one side)`);
        }
        ch.setMacKey(Buffer.from(hmacHex(opts.key, 'mac', sNonce, rNonce), 'hex'));
      }
      gotSession = true;
      clearTimeout(connectTimer);
      setup(m).catch((e: unknown) => {
        if (e instanceof ImgcastError) fail(e.code, e.message);
        else fail(...consumerFailure(e, 'could not prepare the target'));
      });
      return;
    }
    if (m.t === 'tick') {
      if (stalled) return;
      ticks.push([m.serial, Math.min(m.txPos, table.length), Date.now()]);
      horizon = m.horizon;
      return;
    }
    if (m.t === 'extend') {
      if (!gotSession || !live || sealed) {
        throw new TransportError('E_CONTROL_INVALID', 'control message rejected: unexpected EXTEND');
      }
      if (m.from !== table.length) {
        throw new TransportError(
          'E_CONTROL_INVALID',
          `control message rejected: EXTEND from row ${m.from}, but the table has ${table.length}`,
        );
      }
      const rows = m.chunks.map(([id, codec, storedLength, rawLength]) => ({
        id,
        codec,
        storedLength,
        rawLength,
      }));
      grow(rows);
      const ext: TableExtension = { chunks: rows, metaDelta: m.delta };
      tell((target) => target.extend!(ext));
      return;
    }
    if (m.t === 'seal') {
      if (!gotSession || !live || sealed) {
        throw new TransportError('E_CONTROL_INVALID', 'control message rejected: unexpected SEAL');
      }
      if (m.chunks !== table.length) {
        throw new TransportError(
          'E_CONTROL_INVALID',
          `control message rejected: SEAL says ${m.chunks} rows, the table has ${table.length}`,
        );
      }
      sealed = true;
      const meta = m.meta;
      tell((target) => target.seal!(meta));
      log(`table sealed: ${table.length} chunks`);
      maybeDone();
      return;
    }
    if (m.t === 'drop') {
      // Authentication and version refusals keep their own code; every other drop is E_DROPPED.
      const code = m.code === 'E_AUTH' || m.code === 'E_VERSION' ? m.code : 'E_DROPPED';
      return fail(code, `dropped by the sender: ${m.reason}`);
    }
    if (m.t === 'end') {
      sessionOver = true;
      if (sentDone) end(null, null);
      return;
    }
  };

  /** Appends rows to the table (a live session's EXTEND). */
  function grow(rows: ChunkInfo[]): void {
    for (const e of rows) {
      table.push(e);
      const wl = e.storedLength + wireExtra;
      wireLen.push(wl);
      counts.push(fragmentCount(wl));
    }
    if (complete.length < table.length) {
      const bigger = new Uint8Array(Math.max(table.length, 2 * complete.length, 1024));
      bigger.set(complete);
      complete = bigger;
    }
  }

  /** Live table news for the consumer, in order with the chunks it is given. */
  function tell(news: (target: ChunkConsumer) => Promise<void>): void {
    if (earlyNews) {
      earlyNews.push(news);
      return;
    }
    queueNews(news);
  }

  function queueNews(news: (target: ChunkConsumer) => Promise<void>): void {
    applyChain = applyChain.then(async () => {
      if (ended) return;
      try {
        await news(consumer as ChunkConsumer);
      } catch (err) {
        fail(...consumerFailure(err, 'the live table could not be followed'));
      }
    });
  }

  async function setup(m: Extract<ToReceiver, { t: 'session' }>): Promise<void> {
    live = m.live === true;
    sealed = !live;
    const extra = (wireExtra = m.encrypt ? GCM_TAG : 0);
    table = [];
    wireLen = [];
    counts = [];
    grow(m.chunks.map(([id, codec, storedLength, rawLength]) => ({ id, codec, storedLength, rawLength })));
    // A growing table says up front how large its chunks can be.
    const largest = wireLen.reduce((a, b) => Math.max(a, b), live ? (m.maxStored ?? 0) + extra : 0);
    poolCap = largest <= MAX_POOLED ? largest : 0;
    const nonce = Buffer.from(m.nonce, 'hex');
    nonceHi = nonce.readUInt32BE(0);
    nonceLo = nonce.readUInt32BE(4);
    if (m.encrypt) {
      dataKey = {
        key: Buffer.from(wrapDataKey(m.encrypt.key, opts.key, sNonce, rNonce), 'hex'),
        salt: Buffer.from(m.encrypt.salt, 'hex'),
      };
    }
    const info: SessionInfo = {
      nonce: m.nonce,
      group: m.group,
      port: m.port,
      chunks: table,
      meta: m.meta,
      encrypted: Boolean(m.encrypt),
      sender: `${host}:${port}`,
      live,
    };
    consumer = await opts.makeConsumer(info);
    if (ended) return;
    if (live && (!consumer.extend || !consumer.seal)) {
      throw new TransportError(
        'E_CONSUMER',
        `the session from ${host}:${port} is live (its table grows while it runs), which this target cannot follow`,
      );
    }
    await consumer.prepare(info);
    if (ended) return;
    // What the table became meanwhile, in order, before any chunk.
    const news = earlyNews ?? [];
    earlyNews = null;
    for (const n of news) queueNews(n);
    const fp = sessionFingerprint(info);
    const have: number[] = [];
    // The consumer decides what it holds (from this journal, which it reads itself): only it knows
    // what an interrupted run may have undone, e.g. a restore that blanked its partition table.
    table.forEach((e, seq) => {
      if (consumer?.has(e.id)) {
        complete[seq] = 1;
        have.push(seq);
      }
    });
    chunksHad = have.length;
    applied = have.length;
    bytesApplied = have.reduce((a, s) => a + (table[s]?.rawLength ?? 0), 0);
    if (opts.journalPath && !live) journal = await openJournal(opts.journalPath, fp, false);
    if (ended) return;
    await openData(m.group, m.port, m.ports ?? 1);
    if (ended) return;
    ch.send({ t: 'join', have: toRanges(have) });
    log(`joined session ${m.nonce}: ${table.length} chunks, ${have.length} already here`);
    statusTimer = setInterval(status, STATUS_MS);
    maybeDone();
  }

  async function openData(group: string, dataPort: number, ports: number): Promise<void> {
    if ((opts.tuneKernel || opts.tuneReassembly) && !tuning) {
      tuning = tuneKernel(receiveTuning(opts.tuneKernel ?? false, opts.tuneReassembly ?? false), { log });
    }
    // After the tuning: the kernel caps SO_RCVBUF at net.core.rmem_max when it is set.
    const input = await openDataInput(
      { group, port: dataPort, ports, interface: opts.interface, rcvbuf: WANT_RCVBUF },
      onPacket,
      (e) => log(`data socket error: ${e.message}`),
    );
    udp = input;
    if (ended) {
      leaveData();
      return;
    }
    if (input.priority) {
      log(
        input.priority.raised
          ? `data sockets read on a thread of their own, at nice ${input.priority.nice}`
          : `data sockets read on a thread of their own, its priority not raised: ${input.priority.reason}`,
      );
    }
    if (input.rcvbuf < WANT_RCVBUF && opts.tuneKernel) {
      const why = tuning?.refused.find((r) => r.name === 'net.core.rmem_max')?.reason;
      (opts.warn ?? log)(
        `receive buffer is ${Math.round(input.rcvbuf / 1024)} KiB over ${ports} socket${ports === 1 ? '' : 's'} ` +
          `(each capped by net.core.rmem_max${why ? `: ${why}` : ''}); a receiving thread with an 8 MiB ring ` +
          'makes up for most of it, but a busy host may still lose datagrams. Raise net.core.rmem_max to ' +
          `${Math.ceil(WANT_RCVBUF / ports)} (or run as root, which does it for the receive) for full speed`,
      );
    }
    joinedData = true;
  }

  function onPacket(b: Buffer): void {
    if (stalled || ended) return;
    if (b.length < 12 || b.readUInt32BE(4) !== nonceHi || b.readUInt32BE(8) !== nonceLo) {
      c.stray++;
      return;
    }
    if (checkHeader(b) !== 0) {
      // Our session's nonce on a malformed datagram (units and length disagree, say): forged or damaged.
      c.forged++;
      return;
    }
    const seq = b.readUInt32BE(12);
    const frag = b.readUInt16BE(16);
    const units = ((b[3] as number) >> 4) + 1;
    const count = b.readUInt16BE(18);
    const coded = ((b[3] as number) & 0x0f) === TYPE_CODED;
    const wl = wireLen[seq];
    if (wl === undefined && live && seq >= table.length) {
      // A row whose EXTEND has not been read yet (the sender waits for our window, unless we went quiet).
      c.overrun++;
      return;
    }
    if (
      wl === undefined ||
      count !== counts[seq] ||
      (coded ? !codedFits(b) : b.length - HEADER_SIZE !== unitsLength(wl, frag, units))
    ) {
      c.forged++;
      return;
    }
    const ser = b.readUInt32BE(24);
    if (firstSerial < 0) {
      firstSerial = ser - 1;
      arrivals.start(ser);
    }
    const lastSer = ser + units - 1;
    if (lastSer > maxSerial) maxSerial = lastSer;
    if (opts.simulateLoss && rand() < opts.simulateLoss) {
      c.simulatedDrops++;
      return;
    }
    const tx = b.readUInt32BE(20);
    // Chunks below the transmit position have had their first pass; a forged position only
    // makes us ask early, and the sender ignores requests for chunks it has not sent yet.
    if (tx > dataPos) dataPos = Math.min(tx, table.length);
    heardUnits += units;
    arrivals.arrived(ser, units);
    c.packets++;
    bytesSinceGc += b.length;
    if (bytesSinceGc >= GC_EVERY_BYTES) {
      bytesSinceGc = 0;
      collectYoung();
    }
    if (coded) decodeCoded(b);
    else accept(seq, frag, units, b, HEADER_SIZE);
  }

  /** Whether a coded repair's runs exist in the chunk table and its payload is as long as the longest. */
  function codedFits(b: Buffer): boolean {
    let longest = 0;
    for (const r of codedRuns(b)) {
      const wl = wireLen[r.seq];
      if (wl === undefined || r.frag + r.units > (counts[r.seq] as number)) return false;
      longest = Math.max(longest, unitsLength(wl, r.frag, r.units));
    }
    return b.length - codedPayloadOffset(b[HEADER_SIZE] as number) === longest;
  }

  /** Whether units frag..frag+units-1 of seq are held in memory (its chunk is still being assembled). */
  function inMemory(seq: number, frag: number, units: number): boolean {
    const p = partials.get(seq);
    if (!p) return false;
    for (let u = frag; u < frag + units; u++) if (!p.got[u]) return false;
    return true;
  }

  /**
   * A coded repair helps when exactly one of its runs is missing here and every other one is in
   * memory: XORing those out of the payload leaves the missing run's bytes.
   */
  function decodeCoded(b: Buffer): void {
    const runs = codedRuns(b);
    let missing = -1;
    let unusable = false;
    for (let i = 0; i < runs.length; i++) {
      const r = runs[i] as (typeof runs)[number];
      if (complete[r.seq]) {
        // Verified and handed on: usable while its bytes are kept.
        if (!recent.has(r.seq)) unusable = true;
      } else if (!inMemory(r.seq, r.frag, r.units)) {
        if (missing >= 0) {
          c.undecodable++;
          return;
        }
        missing = i;
      }
    }
    if (missing < 0) {
      c.duplicates++;
      return;
    }
    if (unusable) {
      c.undecodable++;
      return;
    }
    const payload = b.subarray(codedPayloadOffset(runs.length));
    decodeScratch.set(payload);
    for (let i = 0; i < runs.length; i++) {
      if (i === missing) continue;
      const r = runs[i] as (typeof runs)[number];
      const p = (partials.get(r.seq) ?? recent.get(r.seq)?.p) as Partial;
      const start = r.frag * FRAG_PAYLOAD;
      xorInto(
        decodeScratch,
        p.buf.subarray(start, start + unitsLength(wireLen[r.seq] as number, r.frag, r.units)),
      );
    }
    const want = runs[missing] as (typeof runs)[number];
    c.decoded++;
    accept(
      want.seq,
      want.frag,
      want.units,
      decodeScratch.subarray(0, unitsLength(wireLen[want.seq] as number, want.frag, want.units)),
      0,
    );
  }

  /** Memory a chunk takes while assembled: small chunks (compressed images) would waste most of a pooled buffer and get their own. */
  function chargeFor(seq: number): number {
    const wl = wireLen[seq] as number;
    return poolCap > 0 && wl * 2 >= poolCap ? poolCap : wl;
  }

  /**
   * The first chunk this receiver has no memory for, walking up from the lowest incomplete one:
   * chunks waiting to be written come first, then each incomplete chunk in order (partly received
   * ones as charged, the others as they would be). Kept chunks do not count: they give way.
   */
  function windowEnd(): number {
    let budget = MAX_PENDING - queuedBytes;
    let s = lowWater;
    for (; s < table.length; s++) {
      if (complete[s]) continue;
      const cost = partials.get(s)?.charge ?? chargeFor(s);
      if (cost > budget) break;
      budget -= cost;
    }
    return s;
  }

  /** Stores units frag..frag+units-1 of chunk seq, which are src[from..]; only units not held yet are written. */
  function accept(seq: number, frag: number, units: number, src: Buffer, from: number): void {
    const wl = wireLen[seq] as number;
    const count = counts[seq] as number;
    if (complete[seq]) {
      c.duplicates++;
      return;
    }
    let p = partials.get(seq);
    if (!p) {
      const charge = chargeFor(seq);
      const pooled = charge === poolCap && poolCap > 0;
      // Kept chunks are the first to go when memory runs short.
      if (pendingBytes + charge > MAX_PENDING) trimRecent(charge);
      if (pendingBytes + charge > MAX_PENDING) {
        // Past our window (the sender had not heard of it yet): asked for again once there is room.
        c.overrun++;
        return;
      }
      const base = pooled ? (pool.pop() ?? Buffer.allocUnsafe(poolCap)) : null;
      const buf = base ? base.subarray(0, wl) : Buffer.allocUnsafe(wl);
      p = { buf, charge, base, got: new Uint8Array(count), count, n: 0 };
      pendingBytes += charge;
      partials.set(seq, p);
    }
    let fresh = 0;
    for (let u = frag; u < frag + units; u++) if (!p.got[u]) fresh++;
    if (fresh === 0) {
      c.duplicates++;
      return;
    }
    if (fresh === units) {
      src.copy(p.buf, frag * FRAG_PAYLOAD, from);
      p.got.fill(1, frag, frag + units);
    } else {
      // A repair overlapping units we hold: copy only the missing ones, never rewrite good bytes.
      for (let u = frag; u < frag + units; u++) {
        if (p.got[u]) continue;
        p.got[u] = 1;
        const at = from + (u - frag) * FRAG_PAYLOAD;
        src.copy(p.buf, u * FRAG_PAYLOAD, at, Math.min(at + FRAG_PAYLOAD, src.length));
      }
    }
    p.n += fresh;
    if (p.n === p.count) {
      partials.delete(seq);
      chunkArrived(seq, p);
    }
  }

  function chunkArrived(seq: number, p: Partial): void {
    const e = table[seq] as ChunkInfo;
    const wire = p.buf;
    let raw: Buffer;
    try {
      const stored = dataKey ? openChunk(dataKey, seq, e.id, wire) : wire;
      raw = decode(e.id, e.codec, stored, e.rawLength);
    } catch (err) {
      release(p);
      if (err instanceof TransportError && err.code === 'E_CONSUMER') return fail(err.code, err.message);
      // Forged or damaged fragments: discard the whole chunk and ask for it again.
      c.rejectedChunks++;
      log(`chunk ${e.id} (seq ${seq}) failed its check and will be requested again`);
      return;
    }
    complete[seq] = 1;
    queuedBytes += p.charge;
    // Only a receiver that loses packets gets coded repairs to decode.
    if (Date.now() - lastLossAt <= KEEP_AFTER_LOSS_MS) recent.set(seq, { p, at: Date.now(), applied: false });
    applyChain = applyChain.then(async () => {
      if (ended) return;
      try {
        await (consumer as ChunkConsumer).apply(e.id, raw);
        await noteWritten(e.id, e.rawLength);
      } catch (err) {
        return fail(...consumerFailure(err, `writing chunk ${e.id} failed`));
      } finally {
        // The consumer is done with raw (which may be wire itself): the buffer can be reused once
        // coded repairs no longer need its bytes.
        doneWith(seq, p);
      }
      applied++;
      bytesApplied += e.rawLength;
      if (opts.stallAfterChunks !== undefined && applied >= opts.stallAfterChunks) {
        stalled = true;
        log('test hook: stalled');
      }
      maybeDone();
    });
  }

  /** Datagrams lost for want of room since the last STATUS: the kernel's full socket buffers and our full ring. */
  function overflow(): number | null {
    const kernelDrops = kernel.rcvbufDelta();
    const ringDrops = udp?.droppedDelta() ?? 0;
    return kernelDrops === null ? ringDrops || null : kernelDrops + ringDrops;
  }

  function status(): void {
    if (ended || stalled || !joinedData) return;
    const now = Date.now();
    trimRecent(0);
    if (now - lastFromSender > senderDeadAfterMs) {
      // After this process was itself stopped (SIGSTOP, a suspended VM) timers run before the
      // socket is read: let what the sender said meanwhile (a DROP, say) arrive before judging.
      if (!silenceCheck) {
        silenceCheck = setTimeout(() => {
          silenceCheck = null;
          const silent = Date.now() - lastFromSender;
          if (silent > senderDeadAfterMs) {
            fail('E_SENDER_LOST', `sender ${host}:${port} silent for ${Math.round(silent / 1000)} s`);
          }
        }, 200);
      }
      return;
    }
    // The transmit position counts once we processed the packets sent before the TICK that announced it.
    while (ticks.length) {
      const [ser, pos, at] = ticks[0] as [number, number, number];
      if (maxSerial >= ser || now - at > TICK_TRUST_MS) {
        nakPos = Math.max(nakPos, pos);
        // Whatever the sender sent before this TICK has arrived or is lost by now.
        heardByTick = Math.max(heardByTick, ser);
        ticks.shift();
      } else break;
    }
    if (ticks.length > 100) ticks = ticks.slice(-100);
    const nak: Array<[number, Ranges | null]> = [];
    let fragRanges = 0;
    while (lowWater < table.length && complete[lowWater]) lowWater++;
    const upTo = Math.max(nakPos, dataPos);
    for (
      let s = lowWater;
      s < upTo && nak.length < MAX_NAK_ENTRIES && fragRanges < MAX_NAK_FRAGMENT_RANGES;
      s++
    ) {
      if (complete[s]) continue;
      const p = partials.get(s);
      if (!p) {
        nak.push([s, null]);
        c.nakFragments += counts[s] as number;
        fragRanges++;
        continue;
      }
      const missing: number[] = [];
      for (let f = 0; f < p.count; f++) if (!p.got[f]) missing.push(f);
      const r = toRanges(missing);
      c.nakFragments += missing.length;
      fragRanges += r.length / 2;
      nak.push([s, r]);
    }
    const { rx, exp } = arrivals.take(maxSerial, horizon);
    const got = heardUnits - gotAtStatus;
    gotAtStatus = heardUnits;
    const ms = Math.max(0, Math.round(now - lastStatusAt));
    lastStatusAt = now;
    if (firstSerial >= 0) {
      const lost = Math.max(0, maxSerial - firstSerial - heardUnits);
      if (lost > c.lost) lastLossAt = now;
      c.lost = lost;
    }
    ch.send({
      t: 'status',
      chunks: applied,
      bytes: bytesApplied,
      // Also what a trusted TICK vouches for: when the last repair of a chunk is lost and the
      // sender has nothing else to send, no later datagram would ever move `heard` past that
      // repair's serial, and the sender would ignore this receiver's NAKs for it forever.
      heard: Math.max(maxSerial, heardByTick),
      rx,
      exp,
      got,
      ms,
      win: windowEnd(),
      ovf: overflow(),
      frag: kernel.fragShare(),
      nak,
      low: lowWater,
      known: table.length,
      kept: toRanges([...recent.keys()].sort((a, b) => a - b)),
      counters: { ...c },
    });
    opts.onProgress?.({
      chunks: applied,
      totalChunks: table.length,
      bytes: bytesApplied,
      totalBytes: table.reduce((a, e) => a + e.rawLength, 0),
    });
  }

  // Journal checkpoints: ids of chunks applied but not yet known to be on disk wait here until
  // a consumer sync covers them, so the journal never runs ahead of the data (power cuts).
  let unsynced: string[] = [];
  let unsyncedBytes = 0;
  let lastCheckpoint = Date.now();
  let checkpointing: Promise<void> = Promise.resolve();
  let checkpointsRunning = 0;
  async function noteWritten(id: string, bytes: number): Promise<void> {
    const target = consumer as ChunkConsumer;
    if (!target.sync) {
      await journal?.write(`${id}\n`);
      return;
    }
    const eager = target.eagerSyncBytes;
    if (!journal && eager === undefined) return;
    unsynced.push(id);
    unsyncedBytes += bytes;
    const every = opts.journalCheckpointBytes ?? JOURNAL_SYNC_BYTES;
    const idle = eager !== undefined && checkpointsRunning === 0 && unsyncedBytes >= Math.min(every, eager);
    if (!idle && unsyncedBytes < every && Date.now() - lastCheckpoint < JOURNAL_SYNC_MS) return;
    // In the background: chunks keep being applied while the disk catches up; one at a time.
    void checkpoint();
  }

  function checkpoint(): Promise<void> {
    const target = consumer as ChunkConsumer;
    const ids = unsynced;
    unsynced = [];
    unsyncedBytes = 0;
    lastCheckpoint = Date.now();
    checkpointsRunning++;
    checkpointing = checkpointing.then(async () => {
      try {
        if (ids.length === 0) return;
        await target.sync!();
        if (!journal) return;
        await journal.write(ids.map((x) => `${x}\n`).join(''));
        await journal.datasync();
      } catch (err) {
        fail(...consumerFailure(err, 'making written chunks durable failed'));
      } finally {
        checkpointsRunning--;
      }
    });
    return checkpointing;
  }

  let finishing = false;
  let beat: NodeJS.Timeout | null = null;
  function maybeDone(): void {
    if (finishing || ended || !joinedData || !sealed || applied < table.length) return;
    finishing = true;
    // The sender hears that every chunk is here (it then waits for the target to be finished),
    // and hears from us while it is: a big tree's last pass or a disk's flush takes a while.
    status();
    leaveData();
    beat = setInterval(() => {
      if (ended || sentDone) return;
      ch.send({
        t: 'status',
        chunks: applied,
        bytes: bytesApplied,
        heard: Math.max(maxSerial, heardByTick),
        rx: 0,
        exp: 0,
        got: 0,
        ms: 0,
        win: table.length,
        ovf: null,
        frag: null,
        nak: [],
        low: table.length,
        known: table.length,
        kept: [],
        counters: { ...c },
      });
    }, FINISH_BEAT_MS);
    (async () => {
      await applyChain;
      await checkpointing;
      if (ended) return;
      try {
        await (consumer as ChunkConsumer).finish();
      } catch (err) {
        return fail(...consumerFailure(err, 'finishing the target failed'));
      }
      if (journal) await journal.close().catch(() => {});
      journal = null;
      if (firstSerial >= 0) c.lost = Math.max(0, maxSerial - firstSerial - heardUnits);
      stopBeat();
      ch.send({ t: 'done', ok: true, code: null, message: null, counters: { ...c } });
      sentDone = true;
      log(`done: ${table.length} chunks (${chunksHad} were already here)`);
      if (sessionOver) return end(null, null);
      // The sender answers DONE with END when the session is over; do not wait for the others.
      setTimeout(() => end(null, null), 500).unref();
    })().catch((e: unknown) => fail('E_CONSUMER', String(e)));
  }

  function stopBeat(): void {
    if (beat) clearInterval(beat);
    beat = null;
  }

  function leaveData(): void {
    if (statusTimer) clearInterval(statusTimer);
    statusTimer = null;
    if (udp) {
      void udp.close();
      udp = null;
    }
  }

  function fail(code: string, message: string): void {
    if (ended) return;
    log(`failed: ${code} ${message}`);
    if (gotSession && !sentDone && code !== 'E_ABORTED' && code !== 'E_SENDER_LOST' && !ch.closed) {
      ch.send({ t: 'done', ok: false, code, message, counters: { ...c } });
    }
    void end(code, message, consumer);
  }

  /** Ends the run; `abort` (on failure) is aborted after what it wrote is journaled, before the result is out. */
  function end(code: string | null, message: string | null, abort?: ChunkConsumer | null): Promise<void> {
    if (ended) return Promise.resolve();
    ended = true;
    clearTimeout(connectTimer);
    leaveData();
    stopBeat();
    tuning?.release();
    tuning = null;
    ch.close(code ? `receiver ended: ${code}` : 'receiver done');
    opts.signal?.removeEventListener('abort', onAbort);
    // Stopping on purpose (dropped, failed, aborted): what was written goes into the journal,
    // after a last sync, so a later run resumes from there.
    const closing = (async () => {
      if (!journal) return;
      await applyChain.catch(() => {});
      if (unsynced.length) await checkpoint();
      await checkpointing;
      await journal?.close().catch(() => {});
      journal = null;
    })();
    const result: ReceiverResult = {
      ok: code === null,
      code,
      message,
      name,
      chunks: applied,
      totalChunks: table.length,
      chunksHad,
      bytes: bytesApplied,
      durationMs: Date.now() - t0,
      counters: { ...c },
    };
    return closing
      .then(() => abort?.abort(new TransportError(code ?? 'E_ABORTED', message ?? 'aborted')))
      .catch(() => {})
      .finally(() => resolveResult(result));
  }

  // Abort closes everything without a DONE: to the sender it looks like a vanished receiver.
  const onAbort = () => {
    if (ended) return;
    sock.destroy();
    fail('E_ABORTED', 'receiver aborted by the caller');
  };
  if (opts.signal?.aborted) onAbort();
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  return result;
}
