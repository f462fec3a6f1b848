/**
 * Multicast sender.
 *
 * Data: the chunk table is sent once in order ("first pass"), each chunk's wire
 * bytes cut into units (packet.ts). Receivers report over TCP every ~100 ms which units of
 * already-passed chunks they miss (NAK). The sender merges all NAKs into one repair set, so a
 * unit twenty receivers miss is resent once, and interleaves repairs with new data (one repair
 * unit per data unit while the first pass runs, everything after). A NAKed unit repaired after
 * the last packet that receiver had heard (its highest serial, or the serial of a TICK it has
 * had time to see the data of) is not asked for again: that repair is still in flight. Nobody
 * acknowledges packets; the sender never waits for a receiver to go on.
 *
 * Coded repairs: different receivers lose different datagrams, so resending every lost one
 * costs the union of their losses, which grows with the number of receivers. Instead the
 * sender XORs runs that different receivers miss into one datagram (packet.ts, type 3): each
 * run is missed only by receivers that hold every other run in memory (from their NAK bitmaps,
 * or complete chunks they say they keep), so each decodes its own. A repair whose chunk nobody
 * else's could pair with yet waits up to CODE_HOLD_MS for the other receivers' NAKs, and while
 * it waits goes only in a datagram with a run for every receiver. Repairs then cost about what
 * the worst receiver lost, not the sum. Measured in the lab, 3 receivers at 1 % frame loss:
 * about 2 x the dropped bytes at k = 5-6, against 4.9 x for plain repairs at k = 6.
 *
 * Datagram size: a datagram carries k consecutive units of a chunk (packet.ts), k from 1 up to
 * maxDatagram's worth (default 16: 23132-byte datagrams, 16 frames at MTU 1500, IP-fragmented).
 * Bigger datagrams cut the per-datagram CPU cost at both ends, but one lost frame loses all k
 * units. Receivers report loss in units; with wire loss p per frame a k-unit datagram is lost
 * with probability 1-(1-p)^k, so the sender turns each report back into p (one unit more than
 * seen as lost, so a short clean sample is no proof of a clean wire) using the recent average
 * k, and leaves out loss the receiver's kernel reports as socket-buffer overflow (that is CPU,
 * not wire). It then picks the largest k whose expected repairs stay within REPAIR_BUDGET x the
 * bytes the receivers lose (unitsForLoss; coded repairs make that about k / receivers, plain
 * ones about k), ignoring the worst receiver when there are 3 or more (one lossy receiver is
 * the drop policy's business, not a reason to slow everyone; and no more than a tenth of
 * them). k grows at most by doubling per decision. At 1 % loss: k = 5-6 for 3 receivers, 2 for one.

 * IP reassembly memory: a datagram that lost a fragment stays in the receiving kernel's
 * reassembly queue for net.ipv4.ipfrag_time (30 s); once those queues hold
 * ipfrag_high_thresh (4 MiB) the kernel drops every new fragmented datagram until some expire.
 * Measured in the lab at 1 % frame loss: full after 1 s at k = 6, and then 0 datagrams got
 * through for the rest of the 30 s. Receivers report how full it is; above FRAG_HIGH on any
 * receiver the sender sends unfragmented (k = 1) until all are below FRAG_LOW again (after
 * ipfrag_time, 30 s by default). Receivers run with tuneReassembly shorten that timeout to 1 s,
 * which keeps the memory low enough for k > 1 under loss of a few percent.
 *
 * Rate: token-bucket pacing in batches per event-loop turn. No cap by default;
 * the rate starts at 500 Mbit/s and follows the loss the receivers report: the
 * median loss of the receivers over each 200 ms tick (wire loss per frame plus socket-buffer
 * overflow per unit, so the figure does not grow with k) above 5 % cuts the rate to
 * 70 % of what was actually sent in that tick, below 2 % raises it by 15 % (never above --rate, never above what the
 * sender actually manages to push). The median keeps one lossy receiver from
 * throttling everyone; that receiver is handled by the drop policy instead.
 *
 * Drop policy (each drop tells the receiver and the result the reason and figures):
 * - "disconnected": its control connection closed before DONE;
 * - "unresponsive": no message from it for deadAfterMs (default 10 s);
 * - "too slow (loss)": it lost more than 50 % of the packets over the last lossWindowMs (10 s)
 *   while the median of the other receivers lost less than half that (a lone receiver, or
 *   everyone losing alike, is congestion: the rate goes down and nobody is dropped);
 * - "too slow (stalled)": the first pass is over and it completed no chunk for
 *   stallAfterMs (default 20 s);
 * - "too slow (lagging)": every other receiver finished and it still misses chunks
 *   lagLimitMs (default 60 s) later.
 * A dropped receiver keeps what it wrote (its journal) and can resume in a later session.
 *
 * Start: when `clients` receivers joined, or `waitSeconds` after the last join with
 * at least one receiver. Receivers joining later get the session too; what they
 * miss of the passed part reaches them as repairs. Chunks that every receiver
 * joined at start already has are skipped in the first pass.
 */
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { availableParallelism } from 'node:os';
import { type DataKey, GCM_TAG, sealChunk } from './chunkwire.ts';
import {
  Channel,
  hmacHex,
  MAX_TO_SENDER,
  parseToSender,
  PROTOCOL_VERSION,
  proofMatches,
  type ReceiverCounters,
  type ToSender,
  wrapDataKey,
} from './control.ts';
import { UsageError } from '../errors.ts';
import { defaultSendThreads, MAX_SEND_THREADS, openDatagramOut } from './datagram-out.ts';
import { TransportError } from './errors.ts';
import {
  DEFAULT_DATAGRAM,
  encodeHeader,
  FRAG_PAYLOAD,
  fragmentCount,
  HEADER_SIZE,
  kindByte,
  MAX_DATAGRAM,
  MAX_COMPONENTS,
  MAX_FRAGMENTS,
  TYPE_CODED,
  TYPE_DATA,
  TYPE_REPAIR,
  UNIT_DATAGRAM,
  codedPayloadOffset,
  unitsFor,
  unitsLength,
  writeCodedRuns,
  xorInto,
} from './packet.ts';
import type {
  ChunkInfo,
  ChunkProvider,
  ReceiverReport,
  ReceiverState,
  SenderCounters,
  SenderOptions,
  SenderResult,
} from './types.ts';

export const DEFAULT_PORT = 7747;
export const DEFAULT_GROUP = '239.255.42.1';
const TICK_MS = 200;
const START_RATE_MBIT = 500;
const MIN_RATE_MBIT = 2;
const LOSS_CUT = 0.05;
const LOSS_RAISE = 0.02;
const LOSS_DROP = 0.5;
/** Repair bytes per byte the receivers lose that the datagram size aims at (see unitsForLoss). */
const REPAIR_BUDGET = 2.2;
/** Repairs this small a share of the data are not worth smaller datagrams, whatever their ratio to the loss. */
const REPAIR_FLOOR = 0.002;
/** Loss reports this recent decide k. */
const K_WINDOW_MS = 1000;
/** Units expected in that window before a receiver's loss counts (fewer say little). */
const K_MIN_UNITS = 200;
const FRAG_HIGH = 0.5;
const FRAG_LOW = 0.2;
/**
 * Chunks kept for repairs (older ones are read again): 10 MiB covers the ~0.1-0.3 s a NAK takes
 * at lab speeds, and leaves room in the sender's 150 MiB for its sending thread (~20 MiB).
 */
const CACHE_BYTES = 10 * 1024 * 1024;
const MAX_REPAIR_LOADS = 3;
/** Chunks read ahead of the first pass, so a slow read does not leave the sender idle. */
const PREFETCH_CHUNKS = 4;
/**
 * How long a repair nobody else's could be paired with yet waits before it goes alone (while
 * the first pass runs): receivers report every 100 ms, so by then every receiver that lost
 * packets of that stretch has said which.
 */
const CODE_HOLD_MS = 120;
/** Repair entries looked at for runs to pair with one. */
const CODE_LOOK = 64;
/** Largest chunk read into recycled buffers; bigger ones get fresh memory per read. */
const MAX_SPARE_READ = 8 * 1024 * 1024;
/**
 * Tokens saved up at most: enough to cover an event-loop turn plus a timer (sending a
 * batch to several local receivers takes a few ms), small enough that a late turn does
 * not become a burst that overflows switch or receiver buffers.
 */
const BURST_MS = 8;
/**
 * Header buffers reused round-robin. A datagram libuv could not send at once keeps a reference to
 * its header until it leaves; pump() never lets more than the direct socket's backlogLimit (512) wait, so a ring
 * this size never rewrites a header still queued.
 */
const HEADER_RING = 2048;

interface Entry extends ChunkInfo {
  seq: number;
  wireLength: number;
  count: number;
}

interface Peer {
  name: string;
  address: string;
  ch: Channel<ToSender>;
  nonce: string;
  state: ReceiverState;
  reason: string | null;
  code: string | null;
  have: Set<number>;
  chunks: number;
  bytes: number;
  heard: number;
  lastHeard: number;
  lastProgress: number;
  joinedAt: number;
  /** [time, units received, units expected, datagrams the host dropped for a full buffer or -1]. */
  lossSamples: Array<[number, number, number, number]>;
  freshLoss: number | null;
  /** Latest share of its host's IP reassembly memory in use, when it reports it. */
  frag: number | null;
  repairsRequested: number;
  /**
   * Its latest NAK, chunk by chunk (replaced by every STATUS), or null for a chunk it holds
   * nothing of. A chunk with a bitmap is one it held in memory, partly, when it reported: the
   * runs it had of it can be XORed out of a coded repair.
   */
  miss: Map<number, Missing | null>;
  /** Complete chunks it said it still keeps the bytes of (its latest STATUS). */
  kept: Set<number>;
  /** Scratch for the search for coded-repair runs (sender.ts partners()). */
  mark: number;
  counters: ReceiverCounters | null;
  endedAt: number;
}

interface Repair {
  all: boolean;
  cursor: number;
  frags: Set<number>;
  /** When the first NAK for it arrived (performance.now()). */
  since: number;
  /** reportsSeen when no run could be paired with its next one (a search is worth repeating only after news). */
  unpairedAt: number;
}

/** What a receiver missed of one chunk when it last reported. */
interface Missing {
  /** Per unit: HELD, MISSING, or RESENT (missing then, repaired since). */
  bits: Uint8Array;
  /** Units still MISSING: while any is, the chunk is incomplete there and in its memory. */
  left: number;
}
const HELD = 0;
const MISSING = 1;
const RESENT = 2;

/** A run of units of one chunk, as one component of a repair. */
interface Run {
  seq: number;
  frag: number;
  units: number;
  entry: Repair;
}

function validateGroup(g: string): void {
  const m = /^(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(g);
  const first = m ? Number(m[1]) : -1;
  if (!m || first < 224 || first > 239 || m.slice(2).some((x) => Number(x) > 255)) {
    throw new TransportError(
      'E_CONTROL_INVALID',
      `multicast group ${g} is not an IPv4 multicast address (224-239.x.x.x)`,
    );
  }
}

export async function runSender(provider: ChunkProvider, opts: SenderOptions): Promise<SenderResult> {
  const log = opts.log ?? (() => {});
  const group = opts.group ?? DEFAULT_GROUP;
  validateGroup(group);
  if (opts.encrypt && !opts.key) {
    // The data key travels over the control connection, which only the pre-shared key protects.
    throw new UsageError(
      'encrypting the data stream needs a pre-shared key (--key), which protects its data key',
    );
  }
  const port = opts.port ?? DEFAULT_PORT;
  const dataPort = port + 1;
  const wantClients = Math.max(1, opts.clients ?? 1);
  const waitMs = (opts.waitSeconds ?? 300) * 1000;
  const deadAfterMs = opts.deadAfterMs ?? 10_000;
  const stallAfterMs = opts.stallAfterMs ?? Math.max(20_000, 2 * deadAfterMs);
  const lagLimitMs = opts.lagLimitMs ?? 60_000;
  const lossWindowMs = opts.lossWindowMs ?? 10_000;
  const maxRate = opts.rateMbit && opts.rateMbit > 0 ? opts.rateMbit : Infinity;
  const maxDatagram = opts.maxDatagram ?? DEFAULT_DATAGRAM;
  if (!Number.isInteger(maxDatagram) || maxDatagram < UNIT_DATAGRAM || maxDatagram > MAX_DATAGRAM) {
    throw new TransportError(
      'E_CONTROL_INVALID',
      `datagram size ${maxDatagram} is out of range: ${UNIT_DATAGRAM} (no IP fragmentation) to ${MAX_DATAGRAM} bytes`,
    );
  }
  const sendThreads = opts.sendThreads ?? defaultSendThreads(availableParallelism());
  if (!Number.isInteger(sendThreads) || sendThreads < 0 || sendThreads > MAX_SEND_THREADS) {
    throw new TransportError(
      'E_CONTROL_INVALID',
      `sending threads must be a whole number from 0 to ${MAX_SEND_THREADS}, got ${sendThreads}`,
    );
  }
  const kMax = unitsFor(maxDatagram);
  /** Whether a coded repair of `runs` runs of at least one unit fits the datagram size limit. */
  const codingFits = (runs: number): boolean =>
    maxDatagram - codedPayloadOffset(Math.min(MAX_COMPONENTS, runs)) >= FRAG_PAYLOAD;
  const key = opts.key;

  // Distinct ids only: a repeated chunk (zero blocks, dedup) travels once.
  const table: Entry[] = [];
  const bySeen = new Set<string>();
  const extra = opts.encrypt ? GCM_TAG : 0;
  for (const c of provider.chunks) {
    if (bySeen.has(c.id)) continue;
    bySeen.add(c.id);
    const wireLength = c.storedLength + extra;
    const count = fragmentCount(wireLength);
    if (count > MAX_FRAGMENTS) {
      throw new TransportError(
        'E_CONTROL_INVALID',
        `chunk ${c.id} is too large to send (${c.storedLength} bytes)`,
      );
    }
    table.push({ ...c, seq: table.length, wireLength, count });
  }
  const totalWire = table.reduce((a, e) => a + e.wireLength, 0);
  const totalRaw = table.reduce((a, e) => a + e.rawLength, 0);
  const nonceBuf = randomBytes(8);
  const nonce = nonceBuf.toString('hex');
  const dataKey: DataKey | null = opts.encrypt ? { key: randomBytes(32), salt: randomBytes(4) } : null;
  const sessionChunks = table.map(
    (e) => [e.id, e.codec, e.storedLength, e.rawLength] as [string, number, number, number],
  );

  const counters: SenderCounters = {
    packets: 0,
    dataPackets: 0,
    repairPackets: 0,
    bytes: 0,
    repairBytes: 0,
    chunksSent: 0,
    chunksSkipped: 0,
    naksReceived: 0,
    naksSuppressed: 0,
    controlRejected: 0,
    rateMbit: 0,
    datagramsByUnits: new Array<number>(kMax + 1).fill(0),
    fragmentationPauses: 0,
    codedRepairs: 0,
    codedRuns: 0,
  };
  const peers: Peer[] = [];
  const t0 = Date.now();
  let started = false;
  let startedAt = 0;
  let lastJoin = 0;
  let finished = false;
  let fatal: unknown = null;
  let rateMbit = Math.min(START_RATE_MBIT, maxRate);
  let lastCut = 0;
  let serial = 0;
  let txPos = 0;
  let firstPassDone = false;
  let othersDoneAt = 0;

  // --- sockets -------------------------------------------------------------
  const out = await openDatagramOut(
    { interface: opts.interface, ttl: opts.ttl ?? 1, group, port: dataPort, maxDatagram },
    sendThreads,
    (e) => log(`data socket error: ${e.message}`),
  );

  const server = net.createServer((sock) => onConnection(sock));
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e) => {
      void out.close();
      reject(
        new TransportError('E_CONNECT', `cannot listen on control port ${port}: ${e.message}`, { port }),
      );
    });
    server.listen(port, opts.interface ?? '0.0.0.0', () => resolve());
  });
  log(
    `session ${nonce}: ${table.length} chunks, ${totalWire} bytes, group ${group}:${dataPort}, control port ${port}`,
  );

  // --- control -------------------------------------------------------------
  function onConnection(sock: net.Socket): void {
    if (finished) {
      sock.destroy();
      return;
    }
    const ch = new Channel<ToSender>(sock, MAX_TO_SENDER, (b) => parseToSender(b, table.length), true);
    const sNonce = randomBytes(16).toString('hex');
    const address = `${sock.remoteAddress}:${sock.remotePort}`;
    const p: Peer = {
      name: address,
      address,
      ch,
      nonce: '',
      state: 'joining',
      reason: null,
      code: null,
      have: new Set(),
      chunks: 0,
      bytes: 0,
      heard: 0,
      lastHeard: Date.now(),
      lastProgress: Date.now(),
      joinedAt: 0,
      lossSamples: [],
      freshLoss: null,
      frag: null,
      repairsRequested: 0,
      miss: new Map(),
      kept: new Set(),
      mark: 0,
      counters: null,
      endedAt: 0,
    };
    peers.push(p);
    ch.onClose = (reason, err) => {
      if (err) counters.controlRejected++;
      if (p.state === 'ok' || p.state === 'failed' || p.state === 'dropped') return;
      endPeer(p, 'dropped', `disconnected: ${reason}`, err?.code ?? null, false);
    };
    ch.onMessage = (m) => {
      p.lastHeard = Date.now();
      if (m.t === 'hello') {
        if (p.state !== 'joining' || p.nonce) throw protocolError('HELLO twice');
        if (m.v !== PROTOCOL_VERSION) {
          endPeer(
            p,
            'dropped',
            `speaks protocol version ${m.v}, this sender ${PROTOCOL_VERSION}`,
            'E_VERSION',
            true,
          );
          return;
        }
        p.name = m.name || address;
        p.nonce = m.nonce;
        if (key && !proofMatches(hmacHex(key, 'r', sNonce, m.nonce), m.proof)) {
          log(`rejected ${p.name} (${address}): wrong or missing key proof`);
          endPeer(p, 'dropped', 'authentication failed: wrong or missing key', 'E_AUTH', true);
          return;
        }
        ch.send({
          t: 'session',
          nonce,
          group,
          port: dataPort,
          chunks: sessionChunks,
          meta: provider.meta ?? null,
          encrypt: dataKey
            ? {
                key: wrapDataKey(dataKey.key.toString('hex'), key, sNonce, m.nonce),
                salt: dataKey.salt.toString('hex'),
              }
            : null,
          proof: key ? hmacHex(key, 's', m.nonce, sNonce) : null,
        });
        if (key) ch.setMacKey(Buffer.from(hmacHex(key, 'mac', sNonce, m.nonce), 'hex'));
        return;
      }
      if (!p.nonce) throw protocolError(`${m.t.toUpperCase()} before HELLO`);
      if (m.t === 'join') {
        if (p.state !== 'joining') throw protocolError('JOIN twice');
        for (let i = 0; i < m.have.length; i += 2) {
          for (let s = m.have[i] as number; s < (m.have[i + 1] as number); s++) p.have.add(s);
        }
        p.chunks = p.have.size;
        p.bytes = [...p.have].reduce((a, s) => a + (table[s]?.rawLength ?? 0), 0);
        p.state = started ? 'receiving' : 'waiting';
        p.joinedAt = Date.now();
        p.lastProgress = p.joinedAt;
        lastJoin = p.joinedAt;
        log(`${p.name} joined${started ? ' late' : ''} (has ${p.have.size} of ${table.length} chunks)`);
        maybeStart();
        return;
      }
      if (m.t === 'status') {
        if (p.state !== 'receiving' && p.state !== 'waiting') return;
        if (m.chunks > p.chunks) p.lastProgress = Date.now();
        p.chunks = m.chunks;
        p.bytes = m.bytes;
        p.heard = Math.max(p.heard, m.heard);
        // With several sending threads, a packet it heard may have overtaken a repair still on its way.
        const heard =
          out.reorderWindow > 0 && out.backlog() > 0 ? p.heard - out.reorderWindow * kMax : p.heard;
        p.counters = m.counters;
        p.frag = m.frag;
        if (m.exp >= 20) {
          p.freshLoss = congestionLoss(m.rx, m.exp, m.ovf ?? 0);
          p.lossSamples.push([Date.now(), m.rx, m.exp, m.ovf ?? -1]);
          // The first decision comes with the first report that says enough, not a tick later.
          if (!kDecided && started) chooseUnits(Date.now());
        }
        p.miss = new Map();
        p.kept = new Set();
        for (let i = 0; i < m.kept.length; i += 2) {
          for (let s = m.kept[i] as number; s < (m.kept[i + 1] as number); s++) p.kept.add(s);
        }
        reportsSeen++;
        for (const [seq, frags] of m.nak) {
          counters.naksReceived++;
          const e = table[seq] as Entry;
          if (frags === null) {
            p.miss.set(seq, null);
            if ((lastRepairSerial.get(seq) ?? -1) > heard || seq >= txPos) {
              counters.naksSuppressed++;
              continue;
            }
            p.repairsRequested += e.count;
            const r = repairEntry(seq);
            if (!r.all) {
              r.all = true;
              r.cursor = 0;
              r.frags.clear();
            }
            continue;
          }
          // Units repaired after the last packet it had heard are on their way: not asked again.
          const m = missing(e.count, frags, repairedAt.get(seq), heard);
          p.miss.set(seq, m);
          if (m.left === 0 || seq >= txPos) {
            counters.naksSuppressed++;
            continue;
          }
          p.repairsRequested += m.left;
          const r = repairEntry(seq);
          if (r.all) continue;
          for (let f = 0; f < e.count; f++) if (m.bits[f] === MISSING) r.frags.add(f);
        }
        kick();
        return;
      }
      if (m.t === 'done') {
        p.counters = m.counters;
        if (m.ok) {
          p.chunks = table.length;
          p.bytes = totalRaw;
          endPeer(p, 'ok', null, null, false);
          log(`${p.name} finished`);
        } else {
          endPeer(p, 'failed', m.message ?? 'receiver failed', m.code ?? 'E_CONSUMER', false);
          log(`${p.name} failed: ${m.code ?? ''} ${m.message ?? ''}`);
        }
        return;
      }
    };
    ch.send({ t: 'challenge', v: PROTOCOL_VERSION, nonce: sNonce, keyed: Boolean(key) });
  }

  function protocolError(what: string): TransportError {
    return new TransportError('E_CONTROL_INVALID', `control message rejected: ${what}`);
  }

  function endPeer(
    p: Peer,
    state: ReceiverState,
    reason: string | null,
    code: string | null,
    tell: boolean,
  ): void {
    const wasActive = p.state === 'receiving' || p.state === 'waiting';
    p.state = state;
    p.reason = reason;
    p.code = code ?? (state === 'dropped' ? 'E_DROPPED' : null);
    p.endedAt = Date.now();
    if (state === 'dropped') log(`dropped ${p.name}: ${reason}`);
    if (tell) p.ch.send({ t: 'drop', reason: reason ?? 'dropped', code: p.code });
    if (state !== 'ok') p.ch.close(reason ?? 'dropped');
    else setTimeout(() => p.ch.close('finished'), 2000).unref();
    if (wasActive || state === 'ok') checkFinished();
  }

  // --- start ----------------------------------------------------------------
  const joined = () => peers.filter((p) => p.state === 'waiting' || p.state === 'receiving');

  function maybeStart(): void {
    if (started || finished) return;
    const j = joined();
    if (j.length === 0) return;
    if (j.length >= wantClients || Date.now() - lastJoin >= waitMs) {
      started = true;
      startedAt = Date.now();
      for (const p of j) p.state = 'receiving';
      for (const e of table) if (j.every((p) => p.have.has(e.seq))) skip.add(e.seq);
      counters.chunksSkipped = skip.size;
      log(`starting with ${j.length} receiver(s); ${skip.size} chunk(s) every receiver already has`);
      prefetch();
      kick();
    }
  }

  // --- chunk bytes -------------------------------------------------------------
  const cache = new Map<number, Buffer>();
  let cacheBytes = 0;
  const loading = new Map<number, Promise<void>>();

  // Read buffers handed back to the provider (readStored's `into`) so chunks are not read into
  // fresh memory each time: garbage 1 MiB buffers wait for the GC and inflate the RSS.
  const readCap = table.reduce((a, e) => Math.max(a, e.storedLength), 0);
  const spare: Buffer[] = [];
  const maxSpare = readCap > 0 ? Math.ceil(CACHE_BYTES / readCap) + MAX_REPAIR_LOADS + 2 : 0;
  /** The read buffer each cached chunk is a view of, when it is one (not encrypted, provider used `into`). */
  const cacheBase = new Map<number, Buffer>();
  const recycle = (b: Buffer): void => {
    if (b.length === readCap && spare.length < maxSpare) spare.push(b);
  };

  function load(seq: number): void {
    if (cache.has(seq) || loading.has(seq)) return;
    const e = table[seq] as Entry;
    const into = spare.pop() ?? (readCap <= MAX_SPARE_READ ? Buffer.allocUnsafe(readCap) : undefined);
    const pr = provider
      .readStored(e.id, into)
      .then((stored) => {
        if (stored.length !== e.storedLength) {
          throw new TransportError(
            'E_CONSUMER',
            `chunk ${e.id} read ${stored.length} bytes from the source, expected ${e.storedLength}`,
          );
        }
        const inInto =
          into !== undefined && stored.buffer === into.buffer && stored.byteOffset === into.byteOffset;
        const wire = dataKey ? sealChunk(dataKey, seq, e.id, stored) : stored;
        if (into && (!inInto || dataKey)) recycle(into);
        else if (into) cacheBase.set(seq, into);
        cache.set(seq, wire);
        cacheBytes += wire.length;
        for (const [s, b] of cache) {
          if (cacheBytes <= CACHE_BYTES) break;
          if (s >= cur && s < cur + PREFETCH_CHUNKS) continue;
          cache.delete(s);
          cacheBytes -= b.length;
          const base = cacheBase.get(s);
          cacheBase.delete(s);
          // Queued datagrams may still point into the buffer; reuse it only when none wait.
          if (base && !out.holdsBuffers()) recycle(base);
        }
      })
      .catch((err: unknown) => {
        fatal ??= err;
        finish();
      })
      .finally(() => {
        loading.delete(seq);
        kick();
      });
    loading.set(seq, pr);
  }

  function get(seq: number): Buffer | undefined {
    const b = cache.get(seq);
    if (b) {
      // Refresh recency so repairs of a hot chunk do not evict it.
      cache.delete(seq);
      cache.set(seq, b);
    }
    return b;
  }

  // --- transmission ------------------------------------------------------------
  const skip = new Set<number>();
  const repairs = new Map<number, Repair>();
  /** STATUS messages processed so far: new NAKs, so new chances to pair repairs. */
  let reportsSeen = 0;
  const lastRepairSerial = new Map<number, number>();
  /** Per chunk that had repairs: the serial each unit was last repaired with (-1: never). */
  const repairedAt = new Map<number, Float64Array>();
  let cur = 0;
  let curFrag = 0;
  let repairCredit = 0;
  // Units per datagram: one until the receivers' first loss reports say more is safe.
  let k = 1;
  let kDecided = false;
  let fragHold = false;
  let unitsThisTick = 0;
  let datagramsThisTick = 0;
  /** [time, units, datagrams] sent per housekeeping tick, for the recent average k. */
  let kHistory: Array<[number, number, number]> = [];

  function advanceCursor(): void {
    while (cur < table.length && skip.has(cur)) cur++;
    txPos = cur;
    if (cur >= table.length && !firstPassDone) {
      firstPassDone = true;
      log(`first pass done after ${Date.now() - startedAt} ms`);
    }
  }

  function prefetch(): void {
    advanceCursor();
    for (let s = cur, n = 0; s < table.length && n < PREFETCH_CHUNKS; s++) {
      if (skip.has(s)) continue;
      load(s);
      n++;
    }
  }

  // One slab for all headers; the constant fields are written once.
  const headerSlab = Buffer.alloc(HEADER_RING * HEADER_SIZE);
  const headers: Buffer[] = [];
  const template = encodeHeader({
    type: TYPE_DATA,
    nonce: nonceBuf,
    seq: 0,
    frag: 0,
    count: 1,
    txPos: 0,
    serial: 0,
  });
  for (let i = 0; i < HEADER_RING; i++) {
    const h = headerSlab.subarray(i * HEADER_SIZE, (i + 1) * HEADER_SIZE);
    template.copy(h);
    headers.push(h);
  }
  let nextHeader = 0;
  // stampPosition(): positions and serials of the last reorderWindow datagrams, and the newest ones that left.
  const lagPos = new Uint32Array(out.reorderWindow);
  const lagSerial = new Uint32Array(out.reorderWindow);
  let stamped = 0;
  let safePos = 0;
  let safeSerial = 0;
  const byUnits = counters.datagramsByUnits;
  const sendList: Buffer[] = [headerSlab, headerSlab];

  function emit(type: number, e: Entry, frag: number, units: number, wire: Buffer): number {
    const start = frag * FRAG_PAYLOAD;
    const payload = wire.subarray(start, Math.min(start + units * FRAG_PAYLOAD, wire.length));
    // One serial per unit: receivers count lost units from the gaps, whatever k is.
    const first = (serial + 1) >>> 0;
    serial = (serial + units) >>> 0;
    const h = headers[nextHeader] as Buffer;
    nextHeader = (nextHeader + 1) % HEADER_RING;
    // Same layout as encodeHeader (packet.ts), without an object and a buffer per packet.
    h[3] = kindByte(type, units);
    h.writeUInt32BE(e.seq, 12);
    h.writeUInt16BE(frag, 16);
    h.writeUInt16BE(e.count, 18);
    h.writeUInt32BE(stampPosition(), 20);
    h.writeUInt32BE(first, 24);
    // Both forms copy the list (dgram into its own array, the thread into its ring), so one list serves every send.
    sendList[0] = h;
    sendList[1] = payload;
    out.send(sendList);
    countSent(type, units, payload.length);
    if (type === TYPE_REPAIR) noteRepaired(e.seq, frag, units, serial);
    return payload.length + HEADER_SIZE;
  }

  /**
   * The transmit position a datagram may carry. Receivers ask for every unit below it that they
   * miss, so with several sending threads (datagrams arriving out of order, out.reorderWindow)
   * it is the position as of reorderWindow datagrams ago, when everything it vouches for had
   * surely left. With one thread it is the position itself.
   */
  function stampPosition(): number {
    const window = out.reorderWindow;
    if (window === 0) return txPos;
    const i = stamped % window;
    const pos = stamped >= window ? (lagPos[i] as number) : 0;
    if (stamped >= window) {
      safePos = pos;
      safeSerial = lagSerial[i] as number;
    }
    lagPos[i] = txPos;
    lagSerial[i] = serial;
    stamped++;
    return pos;
  }

  /** Counters and the per-tick figures k is chosen from, for one datagram sent. */
  function countSent(type: number, units: number, payloadBytes: number): void {
    counters.packets++;
    counters.bytes += payloadBytes;
    byUnits[units] = (byUnits[units] ?? 0) + 1;
    unitsThisTick += units;
    datagramsThisTick++;
    if (type === TYPE_DATA) counters.dataPackets++;
    else {
      counters.repairPackets++;
      counters.repairBytes += payloadBytes;
    }
  }

  /** The next run of `entry` (seq's repair), at most `max` units; nothing is taken from it yet. */
  function peekRun(seq: number, entry: Repair, max: number): Run {
    const e = table[seq] as Entry;
    if (entry.all) return { seq, frag: entry.cursor, units: Math.min(max, e.count - entry.cursor), entry };
    // NAK ranges arrive ascending, so a run of missing units sits in the set in order.
    const frag = entry.frags.values().next().value as number;
    let units = 1;
    while (units < max && entry.frags.has(frag + units)) units++;
    return { seq, frag, units, entry };
  }

  function takeRun(r: Run): void {
    const e = table[r.seq] as Entry;
    if (r.entry.all) {
      r.entry.cursor += r.units;
      if (r.entry.cursor >= e.count) repairs.delete(r.seq);
    } else {
      for (let f = r.frag; f < r.frag + r.units; f++) r.entry.frags.delete(f);
      if (r.entry.frags.size === 0) repairs.delete(r.seq);
    }
  }

  /** Whether p's latest NAK says it misses a unit of r that has not been repaired since. */
  function misses(p: Peer, r: Run): boolean {
    const m = p.miss.get(r.seq);
    if (m === undefined) return false;
    if (m === null) return true;
    for (let f = r.frag; f < r.frag + r.units; f++) if (m.bits[f] === MISSING) return true;
    return false;
  }

  /**
   * Whether p holds every unit of r in memory: it had them when it reported, or the chunk was
   * complete and kept. A chunk that completes after the report stays in the receiver's memory
   * for a while too (receiver.ts, RECENT_MS).
   */
  function holds(p: Peer, r: Run): boolean {
    const m = p.miss.get(r.seq);
    if (m === undefined) return p.kept.has(r.seq);
    if (m === null) return false;
    for (let f = r.frag; f < r.frag + r.units; f++) if (m.bits[f] !== HELD) return false;
    return true;
  }

  function repairEntry(seq: number): Repair {
    let r = repairs.get(seq);
    if (!r) {
      r = { all: false, cursor: 0, frags: new Set(), since: performance.now(), unpairedAt: -1 };
      repairs.set(seq, r);
    }
    return r;
  }

  /** Units frag..frag+units-1 of seq left in a repair whose last unit has serial `at`. */
  function noteRepaired(seq: number, frag: number, units: number, at: number): void {
    lastRepairSerial.set(seq, at);
    let sent = repairedAt.get(seq);
    if (!sent) repairedAt.set(seq, (sent = new Float64Array((table[seq] as Entry).count).fill(-1)));
    sent.fill(at, frag, frag + units);
    for (const p of active) {
      const m = p.miss.get(seq);
      if (!m) continue;
      for (let f = frag; f < frag + units; f++) {
        if (m.bits[f] === MISSING) {
          m.bits[f] = RESENT;
          m.left--;
        }
      }
    }
  }

  /**
   * Runs to XOR with `first` into one coded repair: each one missed by receivers that miss none of
   * the others and hold all of them, so that every receiver concerned can decode its own run.
   * Only chunks already in the cache are looked at, and at most CODE_LOOK repair entries.
   */
  function partners(first: Run, needFirst: Peer[], maxUnits: number, maxRuns: number): Run[] {
    const runs = [first];
    const needers = [...needFirst];
    // Receivers that miss one of the chosen runs carry this search's mark (no set per candidate).
    const mark = ++searchMark;
    for (const p of needFirst) p.mark = mark;
    let looked = 0;
    for (const [seq, entry] of repairs) {
      if (runs.length >= maxRuns || looked > CODE_LOOK) break;
      if (!cache.has(seq)) continue;
      for (const cand of runsOf(seq, entry, maxUnits)) {
        if (runs.length >= maxRuns || ++looked > CODE_LOOK) break;
        if (
          runs.some((r) => r.seq === seq && r.frag < cand.frag + cand.units && cand.frag < r.frag + r.units)
        ) {
          continue;
        }
        let need = 0;
        let fits = true;
        for (const p of active) {
          if (!misses(p, cand)) continue;
          if (p.mark === mark || !runs.every((r) => holds(p, r))) {
            fits = false;
            break;
          }
          needBuf[need++] = p;
        }
        if (!fits || need === 0 || !needers.every((p) => holds(p, cand))) continue;
        runs.push(cand);
        for (let i = 0; i < need; i++) {
          const p = needBuf[i] as Peer;
          p.mark = mark;
          needers.push(p);
        }
      }
    }
    return runs;
  }

  /** The runs of a repair entry, each at most maxUnits (only the next one of a whole-chunk repair). */
  function* runsOf(seq: number, entry: Repair, maxUnits: number): Generator<Run> {
    if (entry.all) {
      yield peekRun(seq, entry, maxUnits);
      return;
    }
    for (const f of entry.frags) {
      // Runs start where the unit before is not missing; long runs are cut into maxUnits pieces.
      if (entry.frags.has(f - 1) && (f - runStart(entry.frags, f)) % maxUnits !== 0) continue;
      let units = 1;
      while (units < maxUnits && entry.frags.has(f + units)) units++;
      yield { seq, frag: f, units, entry };
    }
  }

  let codedScratch: Buffer | null = null;
  const codedList: Buffer[] = [];
  let searchMark = 0;
  const needBuf: Peer[] = [];

  function emitCoded(runs: Run[]): number {
    const units = runs.reduce((a, r) => Math.max(a, r.units), 0);
    let payloadLength = 0;
    for (const r of runs) {
      const e = table[r.seq] as Entry;
      payloadLength = Math.max(payloadLength, unitsLength(e.wireLength, r.frag, r.units));
    }
    const at = codedPayloadOffset(runs.length);
    // A datagram libuv could not send at once keeps a reference to its buffer: while any wait,
    // the scratch buffer may be one of them, so take fresh memory.
    codedScratch ??= Buffer.allocUnsafe(MAX_DATAGRAM);
    const b = out.holdsBuffers()
      ? Buffer.allocUnsafe(at + payloadLength)
      : codedScratch.subarray(0, at + payloadLength);
    const first = runs[0] as Run;
    const e0 = table[first.seq] as Entry;
    template.copy(b, 0, 0, HEADER_SIZE);
    b[3] = kindByte(TYPE_CODED, units);
    b.writeUInt32BE(first.seq, 12);
    b.writeUInt16BE(first.frag, 16);
    b.writeUInt16BE(e0.count, 18);
    b.writeUInt32BE(stampPosition(), 20);
    b.writeUInt32BE((serial + 1) >>> 0, 24);
    serial = (serial + units) >>> 0;
    writeCodedRuns(b, runs);
    const payload = b.subarray(at);
    payload.fill(0);
    for (const r of runs) {
      const e = table[r.seq] as Entry;
      const wire = cache.get(r.seq) as Buffer;
      const start = r.frag * FRAG_PAYLOAD;
      xorInto(payload, wire.subarray(start, start + unitsLength(e.wireLength, r.frag, r.units)));
      takeRun(r);
      noteRepaired(r.seq, r.frag, r.units, serial);
    }
    codedList[0] = b;
    out.send(codedList);
    countSent(TYPE_CODED, units, payload.length);
    counters.codedRepairs++;
    counters.codedRuns += runs.length;
    repairCredit = Math.max(0, repairCredit - units);
    return b.length;
  }

  /** Sends one datagram if one is ready; returns its size or 0. */
  function sendOne(): number {
    const wantRepair = repairs.size > 0 && (firstPassDone || repairCredit > 0);
    if (wantRepair) {
      // Look at the oldest few entries only, and read at most MAX_REPAIR_LOADS chunks at once,
      // so a long repair list neither costs a scan per packet nor pulls many chunks into memory.
      const now = performance.now();
      const maxRuns = Math.min(MAX_COMPONENTS, active.length);
      const codedUnits =
        maxRuns >= 2
          ? Math.min(k, Math.floor((maxDatagram - codedPayloadOffset(maxRuns)) / FRAG_PAYLOAD))
          : 0;
      let looked = 0;
      for (const [seq, r] of repairs) {
        if (++looked > 16) break;
        const wire = get(seq);
        if (!wire) {
          if (loading.size < MAX_REPAIR_LOADS) load(seq);
          continue;
        }
        const e = table[seq] as Entry;
        if (codedUnits >= 1) {
          const young = !firstPassDone && now - r.since < CODE_HOLD_MS;
          // Alone for now: other receivers' NAKs for runs it could pair with may be on their way.
          if (young && r.unpairedAt === reportsSeen) continue;
          const first = peekRun(seq, r, codedUnits);
          const need = active.filter((p) => misses(p, first));
          if (need.length > 0) {
            const runs = partners(first, need, codedUnits, maxRuns);
            // While young, wait for a run for every receiver: a pair sent now leaves the third
            // receiver's run to go alone later.
            if (runs.length >= (young ? maxRuns : 2)) return emitCoded(runs);
            r.unpairedAt = reportsSeen;
            if (young) continue;
          }
        }
        const run = peekRun(seq, r, k);
        takeRun(run);
        repairCredit = Math.max(0, repairCredit - run.units);
        return emit(TYPE_REPAIR, e, run.frag, run.units, wire);
      }
    }
    if (!firstPassDone && cur < table.length) {
      const wire = get(cur);
      if (!wire) {
        prefetch();
        return 0;
      }
      const e = table[cur] as Entry;
      const units = Math.min(k, e.count - curFrag);
      const n = emit(TYPE_DATA, e, curFrag, units, wire);
      curFrag += units;
      repairCredit = Math.min(repairCredit + units, 1024);
      if (curFrag >= e.count) {
        curFrag = 0;
        counters.chunksSent++;
        cur++;
        prefetch();
      }
      return n;
    }
    return 0;
  }

  /** Receivers being sent to, refreshed once per pump() turn. */
  let active: Peer[] = [];
  let tokens = 0;
  let lastFill = 0;
  let pumping = false;
  let passAnnounced = false;
  let sentThisTick = 0;

  function kick(): void {
    if (pumping || !started || finished) return;
    pumping = true;
    lastFill = performance.now();
    setImmediate(pump);
  }

  function pump(): void {
    if (finished) {
      pumping = false;
      return;
    }
    active = peers.filter((p) => p.state === 'receiving');
    // The last chunks have passed once their datagrams left: say so now, not at the next tick, so
    // receivers ask for what they miss of them 0-200 ms sooner.
    if (firstPassDone && !passAnnounced && out.backlog() === 0) {
      passAnnounced = true;
      sendTicks();
    }
    const now = performance.now();
    const bytesPerMs = (rateMbit * 1e6) / 8 / 1000;
    tokens = Math.min(tokens + (now - lastFill) * bytesPerMs, Math.max(BURST_MS * bytesPerMs, 3000));
    lastFill = now;
    let idle = false;
    let budget = 256;
    while (tokens > 0 && budget-- > 0) {
      if (out.backlog() >= out.backlogLimit) break;
      let n: number;
      try {
        n = sendOne();
      } catch (err) {
        // A sending thread that died: end the session with its error rather than crash the process.
        fatal ??= err;
        finish();
        pumping = false;
        return;
      }
      if (n === 0) {
        idle = true;
        break;
      }
      tokens -= n;
      sentThisTick += n;
    }
    if (
      idle &&
      repairs.size === 0 &&
      (firstPassDone || loading.size === 0) &&
      (passAnnounced || !firstPassDone)
    ) {
      // Nothing to send until a NAK or a read arrives; kick() restarts the pump.
      pumping = false;
      tokens = 0;
      return;
    }
    if (idle || tokens <= 0 || out.backlog() >= out.backlogLimit) setTimeout(pump, 1);
    else setImmediate(pump);
  }

  // --- housekeeping --------------------------------------------------------------
  /** TICK: where the first pass is (receivers ask for what they miss below it), the rate, the phase. */
  function sendTicks(): void {
    // Out of order sending threads: vouch only for what surely left, unless nothing waits to.
    const settled = out.reorderWindow === 0 || out.backlog() === 0;
    for (const p of peers) {
      if (p.state !== 'receiving' && p.state !== 'waiting') continue;
      p.ch.send({
        t: 'tick',
        txPos: settled ? txPos : safePos,
        serial: settled ? serial : safeSerial,
        rate: rateMbit,
        started,
        firstPassDone,
      });
    }
  }

  let lastTick = performance.now();
  const ticker = setInterval(() => {
    const now = Date.now();
    const pnow = performance.now();
    const achievedMbit = (sentThisTick * 8) / 1e6 / ((pnow - lastTick) / 1000);
    sentThisTick = 0;
    lastTick = pnow;
    kHistory.push([now, unitsThisTick, datagramsThisTick]);
    unitsThisTick = 0;
    datagramsThisTick = 0;
    kHistory = kHistory.filter(([t]) => now - t <= K_WINDOW_MS);
    if (!started) maybeStart();
    sendTicks();
    for (const p of [...peers]) {
      if (p.state === 'ok' || p.state === 'failed' || p.state === 'dropped') continue;
      if (now - p.lastHeard > deadAfterMs) {
        endPeer(
          p,
          'dropped',
          `unresponsive: no message for ${Math.round((now - p.lastHeard) / 1000)} s`,
          null,
          true,
        );
        continue;
      }
      if (p.state !== 'receiving') continue;
      p.lossSamples = p.lossSamples.filter(([t]) => now - t <= lossWindowMs);
      const oldest = p.lossSamples[0];
      if (oldest && now - p.joinedAt > lossWindowMs && now - startedAt > lossWindowMs) {
        const loss = windowLoss(p);
        // Only an outlier is dropped: when most receivers lose this much, the network (or the
        // shared CPU) is congested, which the rate response handles, and nobody is dropped.
        const others = peers
          .filter((o) => o !== p && o.state === 'receiving' && o.lossSamples.length)
          .map(windowLoss)
          .sort((a, b) => a - b);
        const typical = others.length ? (others[Math.floor((others.length - 1) / 2)] as number) : 1;
        if (loss > LOSS_DROP && typical < loss / 2) {
          const pct = Math.round(loss * 100);
          endPeer(
            p,
            'dropped',
            `too slow (loss): lost ${pct}% of packets over the last ${Math.round(lossWindowMs / 1000)} s`,
            null,
            true,
          );
          continue;
        }
      }
      if (firstPassDone && repairs.size === 0 && now - p.lastProgress > stallAfterMs) {
        endPeer(
          p,
          'dropped',
          `too slow (stalled): no chunk completed for ${Math.round((now - p.lastProgress) / 1000)} s, ` +
            `has ${p.chunks} of ${table.length}`,
          null,
          true,
        );
        continue;
      }
      if (othersDoneAt && now - othersDoneAt > lagLimitMs) {
        endPeer(
          p,
          'dropped',
          `too slow (lagging): still missing ${table.length - p.chunks} chunks ${Math.round(lagLimitMs / 1000)} s ` +
            'after every other receiver finished',
          null,
          true,
        );
      }
    }
    if (started) chooseUnits(now);
    // Repair history matters only for chunks some receiver still misses.
    for (const seq of repairedAt.keys()) {
      if (!peers.some((p) => p.state === 'receiving' && p.miss.has(seq))) repairedAt.delete(seq);
    }
    // Congestion response on the median receiver loss of this tick.
    const fresh = peers
      .filter((p) => p.state === 'receiving' && p.freshLoss !== null)
      .map((p) => p.freshLoss as number);
    for (const p of peers) p.freshLoss = null;
    if (started && fresh.length) {
      fresh.sort((a, b) => a - b);
      const loss = fresh[Math.floor((fresh.length - 1) / 2)] as number;
      if (loss > LOSS_CUT && now - lastCut > 2 * TICK_MS) {
        // Cut from what actually left, not from a target the sender (CPU-bound) never reached.
        rateMbit = Math.max(MIN_RATE_MBIT, Math.min(rateMbit, Math.max(achievedMbit, rateMbit / 2)) * 0.7);
        lastCut = now;
      } else if (loss < LOSS_RAISE && achievedMbit > rateMbit * 0.7) {
        rateMbit = Math.min(maxRate, rateMbit * 1.15);
      }
    }
    counters.rateMbit = Math.round(rateMbit * 10) / 10;
    opts.onProgress?.({
      phase: !started ? 'waiting' : finished ? 'done' : firstPassDone ? 'repairing' : 'sending',
      joined: joined().length,
      active: peers.filter((p) => p.state === 'receiving').length,
      chunksSent: counters.chunksSent,
      totalChunks: table.length,
      bytesSent: counters.bytes,
      rateMbit: counters.rateMbit,
      receivers: peers
        .filter((p) => p.state !== 'joining')
        .map((p) => ({ name: p.name, state: p.state, bytes: p.bytes, totalBytes: totalRaw })),
    });
  }, TICK_MS);

  /** Units per datagram over the last K_WINDOW_MS (1 when nothing was sent). */
  function recentK(): number {
    const units = kHistory.reduce((a, x) => a + x[1], 0) + unitsThisTick;
    const datagrams = kHistory.reduce((a, x) => a + x[2], 0) + datagramsThisTick;
    return datagrams > 0 ? Math.max(1, units / datagrams) : k;
  }

  /** Per-frame wire loss behind `lost` of `exp` units in datagrams of kAvg units on average. */
  function frameLoss(lost: number, exp: number, kAvg: number): number {
    const unitLoss = Math.min(1, Math.max(0, lost / exp));
    return 1 - Math.pow(1 - unitLoss, 1 / kAvg);
  }

  /** Loss figure for the rate response: wire loss per frame plus overflow per unit. */
  function congestionLoss(rx: number, exp: number, ovf: number): number {
    const kAvg = recentK();
    const ovfUnits = Math.max(0, Math.min(exp - rx, ovf * kAvg));
    return frameLoss(exp - rx - ovfUnits, exp, kAvg) + ovfUnits / exp;
  }

  function chooseUnits(now: number): void {
    const active = peers.filter((p) => p.state === 'receiving');
    const fragHigh = active.some((p) => (p.frag ?? 0) > FRAG_HIGH);
    if (fragHigh && !fragHold) {
      fragHold = true;
      counters.fragmentationPauses++;
      const worst = active.reduce((a, p) => Math.max(a, p.frag ?? 0), 0);
      log(
        `a receiver's IP reassembly memory is ${Math.round(worst * 100)} % full (fragments lost on the way): ` +
          'sending unfragmented datagrams until it drains',
      );
    } else if (fragHold && active.every((p) => (p.frag ?? 0) <= FRAG_LOW)) {
      fragHold = false;
      log('reassembly memory drained: datagrams may be fragmented again');
    }
    const kAvg = recentK();
    const losses: number[] = [];
    for (const p of active) {
      let rx = 0;
      let exp = 0;
      let ovf = 0;
      for (const [t, r, e, o] of p.lossSamples) {
        if (now - t > K_WINDOW_MS) continue;
        rx += r;
        exp += e;
        ovf += Math.max(0, o);
      }
      if (exp < K_MIN_UNITS) continue;
      // A report with rx above exp (a forged one) must not make the overflow negative.
      const ovfUnits = Math.max(0, Math.min(exp - rx, ovf * kAvg));
      // One more lost unit than seen: a short clean sample does not pass for a loss-free wire.
      losses.push(frameLoss(exp - rx - ovfUnits + 1, exp, kAvg));
    }
    // No fresh reports: keep k (a quiet tick says nothing about the wire).
    if (losses.length === 0) return;
    kDecided = true;
    losses.sort((a, b) => a - b);
    const n = losses.length;
    const considered = losses.slice(0, n - Math.max(n >= 3 ? 1 : 0, Math.floor(n / 10)));
    // What the ignored ones lose counts up to the worst of the rest: an outlier's loss must not
    // buy everyone bigger datagrams either.
    const cap = considered[considered.length - 1] as number;
    const lostByAll = losses.reduce((a, p) => a + Math.min(p, cap), 0);
    const kLoss = unitsForLoss(considered, lostByAll, kMax, n >= 2 && codingFits(n));
    // Up by doubling at most per decision: a wrong guess at k = 16 fills the receivers' reassembly memory.
    const next = fragHold ? 1 : Math.min(kLoss, 2 * k);
    if (next !== k) {
      const worst = considered[considered.length - 1] as number;
      log(
        `datagrams of ${next} unit(s): frame loss up to ${(worst * 100).toFixed(2)} % ` +
          `over ${considered.length} receiver(s) (average ${kAvg.toFixed(1)} units sent)`,
      );
    }
    k = next;
    // Small datagrams cost mostly per datagram, which spreads well over sending threads (datagram-out.ts).
    out.spread(2 * k <= kMax);
  }

  /** Loss over the window, 0 when the window saw too few packets to judge. */
  function windowLoss(p: Peer): number {
    const rx = p.lossSamples.reduce((a, x) => a + x[1], 0);
    const exp = p.lossSamples.reduce((a, x) => a + x[2], 0);
    return exp > 1000 ? Math.max(0, 1 - rx / exp) : 0;
  }

  function checkFinished(): void {
    if (finished) return;
    const active = peers.filter((p) => p.state === 'receiving');
    const done = peers.filter((p) => p.state === 'ok');
    if (started && active.length === 1 && done.length > 0 && !othersDoneAt) othersDoneAt = Date.now();
    if (started && active.length === 0 && joined().length === 0) finish();
  }

  let resolveDone: () => void = () => {};
  const donePromise = new Promise<void>((r) => (resolveDone = r));

  function finish(): void {
    if (finished) return;
    finished = true;
    for (const p of peers) {
      if (p.state === 'ok') p.ch.send({ t: 'end' });
      else if (p.state === 'joining' || p.state === 'waiting' || p.state === 'receiving') {
        const why = fatal
          ? `sender failed: ${fatal instanceof Error ? fatal.message : String(fatal)}`
          : 'session stopped by the sender';
        endPeer(p, 'dropped', why, fatal ? 'E_SENDER_FAILED' : 'E_ABORTED', true);
      }
    }
    resolveDone();
  }

  const onAbort = () => finish();
  if (opts.signal?.aborted) finish();
  opts.signal?.addEventListener('abort', onAbort, { once: true });

  await donePromise;
  clearInterval(ticker);
  opts.signal?.removeEventListener('abort', onAbort);
  await new Promise<void>((r) => server.close(() => r()));
  for (const p of peers) p.ch.close('session over');
  // Queued datagrams leave before the socket closes.
  await out.close();
  await provider.close?.().catch(() => {});
  if (fatal) throw fatal;

  const end = Date.now();
  const receivers: ReceiverReport[] = peers
    .filter((p) => p.joinedAt > 0 || p.state === 'failed' || p.code === 'E_AUTH' || p.code === 'E_VERSION')
    .map((p) => {
      const secs = Math.max(
        0.001,
        ((p.endedAt || end) - Math.max(p.joinedAt, startedAt || p.joinedAt)) / 1000,
      );
      return {
        name: p.name,
        address: p.address,
        state: p.state,
        reason: p.reason,
        code: p.code,
        bytes: p.bytes,
        totalBytes: totalRaw,
        chunksHad: p.have.size,
        rateMbit: Math.round(((p.bytes * 8) / 1e6 / secs) * 10) / 10,
        repairsRequested: p.repairsRequested,
        counters: p.counters,
      };
    });
  const joinedReports = receivers.filter((r) => r.code !== 'E_AUTH' && r.code !== 'E_VERSION');
  const ok =
    joinedReports.length > 0 && joinedReports.every((r) => r.state === 'ok') && !opts.signal?.aborted;
  return { ok, nonce, chunks: table.length, bytes: totalWire, durationMs: end - t0, receivers, counters };
}

/**
 * The units the ranges name (clipped to the chunk's `count` units) as MISSING, or RESENT when
 * `repairedAt` shows a repair after serial `heard`; the others HELD.
 */
function missing(
  count: number,
  frags: readonly number[],
  repairedAt: Float64Array | undefined,
  heard: number,
): Missing {
  const bits = new Uint8Array(count);
  let left = 0;
  for (let i = 0; i < frags.length; i += 2) {
    const end = Math.min(count, frags[i + 1] as number);
    for (let f = frags[i] as number; f < end; f++) {
      const resent = repairedAt !== undefined && (repairedAt[f] as number) > heard;
      bits[f] = resent ? RESENT : MISSING;
      if (!resent) left++;
    }
  }
  return { bits, left };
}

/**
 * Units per datagram for receivers losing `losses` of their frames, `lost` frames per frame sent
 * over all of them: the most, up to kMax, whose expected repair bytes stay within
 * REPAIR_BUDGET x the bytes lost, or within REPAIR_FLOOR of the data when loss is that rare. A k-unit
 * datagram is lost with probability D = 1 - (1 - p)^k, and repairs are lost alike (1 / (1 - D)).
 * With coded repairs one datagram repairs a different run for each receiver, so repairs cost
 * about what the worst receiver misses; without them, what any receiver misses.
 */
export function unitsForLoss(losses: readonly number[], lost: number, kMax: number, coded: boolean): number {
  const budget = Math.max(REPAIR_BUDGET * lost, REPAIR_FLOOR);
  let best = 1;
  for (let k = 2; k <= kMax; k++) {
    const d = losses.map((p) => 1 - Math.pow(1 - p, k));
    const miss = coded ? Math.max(0, ...d) : 1 - d.reduce((a, x) => a * (1 - x), 1);
    if (miss >= 1 || miss / (1 - miss) > budget) break;
    best = k;
  }
  return best;
}

/** The first unit of the run of consecutive members of `set` that `f` belongs to. */
function runStart(set: ReadonlySet<number>, f: number): number {
  let start = f;
  while (set.has(start - 1)) start--;
  return start;
}
