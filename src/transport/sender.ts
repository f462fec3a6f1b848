/**
 * Multicast sender.
 *
 * Data: the chunk table is sent once in order ("first pass"), each chunk's wire
 * bytes cut into units (packet.ts), the datagrams dealt over DATA_PORTS consecutive UDP ports. Receivers report over TCP every ~100 ms which units of
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
 * Flow control: each receiver holds partly received chunks and verified ones waiting to be
 * written in bounded memory, and says in every STATUS the first chunk it has no room for (its
 * window). The first pass never starts a chunk at or past the lowest window of the receivers
 * that reported lately, and repairs go before new data. Without this, a receiver whose memory
 * was full of chunks awaiting repairs threw away every new packet, that looked like loss, the
 * rate fell to its floor, and the repairs that would have freed the memory crawled behind new
 * data: the session stood still (issue #12).
 *
 * Policies live in their own pure modules: the rate (rate-control.ts: follows the delivery
 * rate, probes for more, never below a floor), the datagram size (datagram-size.ts: only frame
 * loss shrinks datagrams) and the drop rules (drop-policy.ts: unresponsive, held back, lossy
 * outlier, stalled, lagging; each with its reason). A dropped receiver keeps what it wrote
 * (its journal) and can resume in a later session.
 *
 * A sender that was itself stopped (SIGSTOP, a VM paused) for longer than a few ticks does not
 * hold its receivers' silence during that time against them.
 *
 * Start: when `clients` receivers joined, or `waitSeconds` after the last join with
 * at least one receiver. Receivers joining later get the session too; what they
 * miss of the passed part reaches them as repairs. Chunks that every receiver
 * joined at start already has are skipped in the first pass.
 *
 * Live sessions (provider.live: a capture that is still reading the master's disk): the
 * table grows while the session runs. Each extension goes to every receiver over the
 * control channel (EXTEND) before any of its data: the receivers' windows only reach rows
 * they know, and the first pass stays below their windows. The first pass waits at the end
 * of the table for the next rows; it is over, and receivers can finish, once the provider
 * sealed the table (SEAL, with the final meta). The provider keeps every chunk's bytes until
 * the sender releases them, which it does when the provider is full and only for chunks
 * every receiver has completed (STATUS `low`); from the first release on, a receiver that
 * joins is turned away, since the chunks it would need are gone. Until then a late joiner
 * gets SESSION with the first rows and every EXTEND since. While the sender waits for the
 * source, receivers that hold every chunk so far are not counted as stalled.
 */
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { availableParallelism } from 'node:os';
import { type DataKey, GCM_TAG } from './chunkwire.ts';
import { ChunkCache, MAX_REPAIR_LOADS, PREFETCH_CHUNKS } from './chunk-cache.ts';
import {
  Channel,
  hmacHex,
  MAX_TO_SENDER,
  parseToSender,
  PROTOCOL_VERSION,
  proofMatches,
  type ReceiverCounters,
  type ToReceiver,
  type ToSender,
  wrapDataKey,
} from './control.ts';
import { ImgcastError, UsageError } from '../errors.ts';
import { defaultSendThreads, MAX_SEND_THREADS, openDatagramOut } from './datagram-out.ts';
import { TransportError } from './errors.ts';
import {
  DATA_PORTS,
  DEFAULT_DATAGRAM,
  encodeHeader,
  FRAG_PAYLOAD,
  fragmentCount,
  HEADER_SIZE,
  LOSS_HORIZON,
  LOSS_HORIZON_ORDERED,
  LOSS_HORIZON_PORTS,
  kindByte,
  MAX_DATAGRAM,
  MAX_COMPONENTS,
  MAX_DATA_PORTS,
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
import { DatagramSizer, unitsPerDatagram, type SizeSample } from './datagram-size.ts';
import { DEFAULT_DROP_LIMITS, judgeReceivers, type ReceiverView } from './drop-policy.ts';
import { RateControl, type RateSample } from './rate-control.ts';
import { startDue } from './start-rule.ts';
import type {
  ChunkInfo,
  ChunkProvider,
  TableExtension,
  ReceiverReport,
  ReceiverState,
  SenderCounters,
  SenderOptions,
  SenderResult,
} from './types.ts';

export const DEFAULT_PORT = 7747;
export const DEFAULT_GROUP = '239.255.42.1';
const TICK_MS = 200;
/** The first tick's rate, before any receiver said what arrived. */
const START_RATE_MBIT = 200;
/** The rate never falls below this, so a session always moves. */
const MIN_RATE_MBIT = 5;
/** Loss reports this recent decide k. */
const K_WINDOW_MS = 1000;
/**
 * A receiver's overflow is counted at the size of the datagrams sent this recently: what filled
 * its socket buffer left the sender a STATUS interval (100 ms) and a buffer's worth before it.
 */
const OVERFLOW_K_MS = 2 * TICK_MS;
/**
 * The overflow set against a window's loss includes what was reported this long before it: a
 * receiver reports a drop with the STATUS after it happened, but the gap it leaves only when the
 * datagrams behind it get through its ring, often a STATUS or two later. Without it, a window
 * whose edge fell between the two held loss without its overflow, taken for frame loss.
 */
const OVERFLOW_LEAD_MS = 300;
/** A receiver silent this long no longer holds the window: the drop policy will deal with it. */
const WINDOW_TRUST_MS = 1500;
/** A gap between ticks this long means the sender itself was stopped. */
const PAUSE_GAP_MS = 2000;
/**
 * How long the send goes on, once everyone else is done, for a receiver dropped for falling
 * behind to join again and catch up (a workstation does so at once: src/client/session.ts).
 */
const REJOIN_GRACE_MS = 10_000;
/**
 * How long a repair nobody else's could be paired with yet waits before it goes alone (while
 * the first pass runs): receivers report every 100 ms, so by then every receiver that lost
 * packets of that stretch has said which.
 */
const CODE_HOLD_MS = 120;
/** Repair entries looked at for runs to pair with one. */
const CODE_LOOK = 64;
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
  /** [time, units received, units expected, units in datagrams the host dropped for a full buffer, or -1]. */
  lossSamples: Array<[number, number, number, number]>;
  /** What its reports since the last tick say: units arrived over ms, and received/expected. */
  tickGot: number;
  tickMs: number;
  tickRx: number;
  tickExp: number;
  /** Its window: the first chunk it has no memory for (Infinity before its first STATUS). */
  win: number;
  /** Ticks in which it alone kept the window closed while others waited: [time, ms]. */
  held: Array<[number, number]>;
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
  /** It has had SESSION (and, live, every EXTEND since): later table changes go to it too. */
  informed: boolean;
  /** Every chunk below this is complete there, and the table rows it knows (its latest STATUS). */
  low: number;
  known: number;
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
  const dataPorts = opts.dataPorts ?? DATA_PORTS;
  if (
    !Number.isInteger(dataPorts) ||
    dataPorts < 1 ||
    dataPorts > MAX_DATA_PORTS ||
    dataPort + dataPorts - 1 > 65535
  ) {
    throw new UsageError(
      `data ports: ${dataPorts} from ${dataPort} on do not fit (1 to ${MAX_DATA_PORTS} ports, all below 65536)`,
    );
  }
  let wantClients = Math.max(1, opts.clients ?? 1);
  const waitMs = (opts.waitSeconds ?? 300) * 1000;
  const deadAfterMs = opts.deadAfterMs ?? 10_000;
  const stallAfterMs = opts.stallAfterMs ?? Math.max(DEFAULT_DROP_LIMITS.stallAfterMs, deadAfterMs + 5000);
  const lagLimitMs = opts.lagLimitMs ?? 60_000;
  const lossWindowMs = opts.lossWindowMs ?? 10_000;
  const debugRate = process.env.IMGCAST_DEBUG_RATE === '1';
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
  let totalWire = 0;
  let totalRaw = 0;
  /** Appends the chunks the table does not hold yet; returns them. */
  const addRows = (chunks: readonly ChunkInfo[]): Entry[] => {
    const added: Entry[] = [];
    for (const c of chunks) {
      if (bySeen.has(c.id)) continue;
      const wireLength = c.storedLength + extra;
      const count = fragmentCount(wireLength);
      if (count > MAX_FRAGMENTS) {
        throw new TransportError(
          'E_CONTROL_INVALID',
          `chunk ${c.id} is too large to send (${c.storedLength} bytes)`,
        );
      }
      bySeen.add(c.id);
      const e: Entry = { ...c, seq: table.length, wireLength, count };
      table.push(e);
      added.push(e);
      totalWire += wireLength;
      totalRaw += c.rawLength;
    }
    return added;
  };
  const row = (e: Entry) => [e.id, e.codec, e.storedLength, e.rawLength] as [string, number, number, number];
  addRows(provider.chunks);
  const nonceBuf = randomBytes(8);
  const nonce = nonceBuf.toString('hex');
  const dataKey: DataKey | null = opts.encrypt ? { key: randomBytes(32), salt: randomBytes(4) } : null;
  const sessionChunks = table.map(row);
  const live = provider.live;
  /** A fixed table is sealed from the start; a live one once its provider says so. */
  let sealed = !live;
  /** Live: every EXTEND and the SEAL so far, in order, for receivers that join later. */
  const tableLog: ToReceiver[] = [];
  /** Live: chunks below this seq were released (their bytes are gone from the provider). */
  let releasedUpTo = 0;
  /** Live: the provider is full and waits for a release. */
  let wantRelease = false;

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
  /** When the gate opened (start-rule.ts); without a gate, the sender is open from the start. */
  let openedAt: number | null = opts.gate ? null : t0;
  let finished = false;
  let fatal: unknown = null;
  const rate = new RateControl({ startMbit: START_RATE_MBIT, minMbit: MIN_RATE_MBIT, maxMbit: maxRate });
  let rateMbit = rate.rateMbit;
  let serial = 0;
  let txPos = 0;
  let firstPassDone = false;
  let othersDoneAt = 0;

  // --- sockets -------------------------------------------------------------
  const out = await openDatagramOut(
    { interface: opts.interface, ttl: opts.ttl ?? 1, group, port: dataPort, ports: dataPorts, maxDatagram },
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
    `session ${nonce}: ${table.length} chunks, ${totalWire} bytes, group ${group}:${dataPort}` +
      `${dataPorts > 1 ? `-${dataPort + dataPorts - 1}` : ''}, control port ${port}`,
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
      tickGot: 0,
      tickMs: 0,
      tickRx: 0,
      tickExp: 0,
      win: Infinity,
      held: [],
      frag: null,
      repairsRequested: 0,
      miss: new Map(),
      kept: new Set(),
      mark: 0,
      counters: null,
      endedAt: 0,
      informed: false,
      low: 0,
      known: 0,
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
        if (tooLate(p)) return;
        ch.send({
          t: 'session',
          nonce,
          group,
          port: dataPort,
          ...(dataPorts > 1 ? { ports: dataPorts } : {}),
          chunks: sessionChunks,
          meta: provider.meta ?? null,
          encrypt: dataKey
            ? {
                key: wrapDataKey(dataKey.key.toString('hex'), key, sNonce, m.nonce),
                salt: dataKey.salt.toString('hex'),
              }
            : null,
          proof: key ? hmacHex(key, 's', m.nonce, sNonce) : null,
          ...(live ? { live: true, maxStored: live.maxStoredLength } : {}),
        });
        if (key) ch.setMacKey(Buffer.from(hmacHex(key, 'mac', sNonce, m.nonce), 'hex'));
        // The table as it grew since the session began, in the order everyone else got it.
        for (const msg of tableLog) ch.send(msg);
        p.informed = true;
        return;
      }
      if (!p.nonce) throw protocolError(`${m.t.toUpperCase()} before HELLO`);
      if (m.t === 'join') {
        if (p.state !== 'joining') throw protocolError('JOIN twice');
        if (tooLate(p)) return;
        for (let i = 0; i < m.have.length; i += 2) {
          for (let s = m.have[i] as number; s < (m.have[i + 1] as number); s++) p.have.add(s);
        }
        p.chunks = p.have.size;
        p.bytes = [...p.have].reduce((a, s) => a + (table[s]?.rawLength ?? 0), 0);
        p.state = started ? 'receiving' : 'waiting';
        p.joinedAt = Date.now();
        p.lastProgress = p.joinedAt;
        lastJoin = p.joinedAt;
        replaceEarlier(p);
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
        p.win = m.win;
        p.low = m.low ?? 0;
        p.known = m.known ?? table.length;
        p.tickGot += m.got;
        p.tickMs += m.ms;
        p.tickRx += m.rx;
        p.tickExp += m.exp;
        if (m.exp > 0) {
          const now = Date.now();
          // The first pass's datagrams, which most drops hit, are of k units now, or were of the
          // recent average before k shrank.
          const size = Math.max(
            k,
            unitsPerDatagram(kHistory, [now, unitsThisTick, datagramsThisTick], now, OVERFLOW_K_MS, k),
          );
          const ovf = m.ovf === null || m.ovf === undefined ? -1 : m.ovf * size;
          p.lossSamples.push([now, m.rx, m.exp, ovf]);
          // The first decision comes with the first report that says enough, not a tick later.
          if (!sizer.decided && started) chooseUnits(Date.now());
        }
        p.miss = new Map();
        p.kept = new Set();
        for (let i = 0; i < m.kept.length; i += 2) {
          for (let s = m.kept[i] as number; s < (m.kept[i + 1] as number); s++) p.kept.add(s);
        }
        reportsSeen++;
        for (const [seq, frags] of m.nak) {
          counters.naksReceived++;
          // Released: it said before that it has it. Nothing can be sent for it any more.
          if (seq < releasedUpTo) continue;
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
        if (wantRelease) releaseSome();
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

  /**
   * A workstation that joins again under the same name (it crashed, was dropped, or its
   * connection broke and it resumed) is the same receiver: its earlier connection is ended if
   * still open and leaves the session's list, so the result counts the workstation once, by how
   * its latest connection ended.
   */
  function replaceEarlier(p: Peer): void {
    for (const old of peers.filter((o) => o !== p && o.name === p.name)) {
      if (old.state === 'joining' || old.state === 'waiting' || old.state === 'receiving') {
        endPeer(old, 'dropped', 'replaced: the same workstation joined again', null, true);
      }
      peers.splice(peers.indexOf(old), 1);
      log(`${p.name} rejoined; its earlier connection (${old.address}) no longer counts`);
    }
  }

  /**
   * Live: once chunks were released, one that joins now could never get them: it is turned
   * away at once, before it prepares its disk for nothing.
   */
  function tooLate(p: Peer): boolean {
    if (releasedUpTo === 0) return false;
    endPeer(
      p,
      'dropped',
      `joined too late: this live session no longer holds its first ${releasedUpTo} chunks ` +
        '(every receiver had them, and the master needed the memory); join the next session',
      null,
      true,
    );
    return true;
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
    const now = Date.now();
    if (startDue({ joined: j.length, wanted: wantClients, lastJoinAt: lastJoin, waitMs, openedAt, now })) {
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
  const cache = new ChunkCache(provider, table, dataKey, {
    firstPass: () => cur,
    holdsBuffers: () => out.holdsBuffers(),
    settled: () => kick(),
    failed: (err) => {
      fatal ??= err;
      finish();
    },
  });

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
  // Units per datagram: one until the receivers' first loss reports say more is safe.
  const sizer = new DatagramSizer(kMax, codingFits);
  let k = sizer.k;
  /** The first pass may not start this chunk: the lowest window of the receivers heard from lately. */
  let windowLimit = Infinity;
  /** Whether the first pass waited at the window since the last tick. */
  let windowBlocked = false;
  /** Whether datagrams are dealt over the sending threads (and may arrive out of order). */
  let spreading = false;
  let unitsThisTick = 0;
  let datagramsThisTick = 0;
  /** [time, units, datagrams] sent per housekeeping tick, for the recent average k. */
  let kHistory: Array<[number, number, number]> = [];

  function advanceCursor(): void {
    while (cur < table.length && skip.has(cur)) cur++;
    txPos = cur;
    // A live table that is not sealed yet may grow: the first pass waits at its end.
    if (cur >= table.length && !firstPassDone && sealed) {
      firstPassDone = true;
      log(`first pass done after ${Date.now() - startedAt} ms`);
    }
  }

  function prefetch(): void {
    advanceCursor();
    for (let s = cur, n = 0; s < table.length && n < PREFETCH_CHUNKS; s++) {
      if (skip.has(s)) continue;
      cache.load(s);
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
    // Both bounds count: a long repair list (a live session's receivers missing whole stretches)
    // made every search walk it all, for each report (bench:session, 4.4 s of the master's 14.6).
    let entries = 0;
    let looked = 0;
    for (const [seq, entry] of repairs) {
      if (runs.length >= maxRuns || looked > CODE_LOOK || ++entries > CODE_LOOK) break;
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
      // Each run is walked once from its start (finding every unit's start by walking back was
      // quadratic in a run's length: a chunk missed whole is thousands of units).
      if (entry.frags.has(f - 1)) continue;
      let end = f + 1;
      while (entry.frags.has(end)) end++;
      for (let at = f; at < end; at += maxUnits)
        yield { seq, frag: at, units: Math.min(maxUnits, end - at), entry };
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
      const wire = cache.peek(r.seq) as Buffer;
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
    return b.length;
  }

  /** Sends one datagram if one is ready; returns its size or 0. */
  function sendOne(): number {
    // Repairs before new data: they complete chunks, which frees the receivers' memory and opens
    // their windows; new data past a full window would only be thrown away.
    if (repairs.size > 0) {
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
        const wire = cache.get(seq);
        if (!wire) {
          if (cache.loading < MAX_REPAIR_LOADS) cache.load(seq);
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
        return emit(TYPE_REPAIR, e, run.frag, run.units, wire);
      }
    }
    if (!firstPassDone && cur < table.length) {
      if (curFrag === 0 && cur >= windowLimit) {
        windowBlocked = true;
        return 0;
      }
      const wire = cache.get(cur);
      if (!wire) {
        prefetch();
        return 0;
      }
      const e = table[cur] as Entry;
      const units = Math.min(k, e.count - curFrag);
      const n = emit(TYPE_DATA, e, curFrag, units, wire);
      curFrag += units;
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
    windowLimit = currentWindow(Date.now());
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
      (firstPassDone || cache.loading === 0) &&
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
        horizon:
          spreading && out.reorderWindow > 0
            ? LOSS_HORIZON
            : dataPorts > 1
              ? LOSS_HORIZON_PORTS
              : LOSS_HORIZON_ORDERED,
      });
    }
  }

  /** The lowest window of the receivers heard from lately (a silent one is the drop policy's). */
  function currentWindow(now: number): number {
    let w = Infinity;
    for (const p of active) if (now - p.lastHeard <= WINDOW_TRUST_MS && p.win < w) w = p.win;
    return w;
  }

  let lastTick = performance.now();
  const ticker = setInterval(() => {
    const now = Date.now();
    const pnow = performance.now();
    const tickMs = pnow - lastTick;
    const achievedMbit = (sentThisTick * 8) / 1e6 / (tickMs / 1000);
    sentThisTick = 0;
    lastTick = pnow;
    if (tickMs > PAUSE_GAP_MS) {
      // This process was stopped (or starved): the receivers' silence over that time is ours.
      const gap = tickMs - TICK_MS;
      log(`the sender did not run for ${(gap / 1000).toFixed(1)} s (stopped or starved); resuming`);
      for (const p of peers) {
        p.lastHeard += gap;
        p.lastProgress += gap;
        p.held = [];
      }
      if (startedAt) startedAt += gap;
      if (othersDoneAt) othersDoneAt += gap;
    }
    kHistory.push([now, unitsThisTick, datagramsThisTick]);
    unitsThisTick = 0;
    datagramsThisTick = 0;
    kHistory = kHistory.filter(([t]) => now - t <= K_WINDOW_MS);
    if (!started) maybeStart();
    if (wantRelease) releaseSome();
    sendTicks();
    const receiving = peers.filter((p) => p.state === 'receiving');
    noteHolders(now, receiving, Math.min(tickMs, 2 * TICK_MS));
    for (const p of peers) {
      if (p.state !== 'waiting') continue;
      if (now - p.lastHeard > DEFAULT_DROP_LIMITS.deadAfterMs) {
        endPeer(
          p,
          'dropped',
          `unresponsive: no message for ${Math.round((now - p.lastHeard) / 1000)} s`,
          null,
          true,
        );
      }
    }
    if (started) {
      // Waiting for the source is not the receivers' fault: one that has every chunk so far is not stalled.
      if (!sealed) for (const p of receiving) if (p.chunks >= table.length) p.lastProgress = now;
      const limits = { ...DEFAULT_DROP_LIMITS, deadAfterMs, stallAfterMs, lagLimitMs, lossWindowMs };
      const views: ReceiverView[] = receiving.map((p) => {
        p.lossSamples = p.lossSamples.filter(([t]) => now - t <= lossWindowMs);
        p.held = p.held.filter(([t]) => now - t <= limits.holdWindowMs);
        return {
          name: p.name,
          joinedAt: p.joinedAt,
          lastHeard: p.lastHeard,
          lastProgress: p.lastProgress,
          chunks: p.chunks,
          rx: p.lossSamples.reduce((a, x) => a + x[1], 0),
          exp: p.lossSamples.reduce((a, x) => a + x[2], 0),
          heldMs: p.held.reduce((a, x) => a + x[1], 0),
        };
      });
      const verdicts = judgeReceivers(
        now,
        views,
        { startedAt, totalChunks: table.length, othersDoneAt, sealed },
        limits,
      );
      for (const v of verdicts) {
        const p = receiving.find((x) => x.name === v.name);
        if (p && p.state === 'receiving') endPeer(p, 'dropped', v.reason, null, true);
      }
      chooseUnits(now);
      const samples: RateSample[] = [];
      for (const p of receiving) {
        if (p.state === 'receiving' && p.tickMs > 0) {
          samples.push({
            deliveredMbit: (p.tickGot * FRAG_PAYLOAD * 8) / (p.tickMs * 1000),
            loss: p.tickExp >= 20 ? Math.max(0, 1 - p.tickRx / p.tickExp) : 0,
          });
        }
      }
      const before = rateMbit;
      rateMbit = rate.tick(now, achievedMbit, samples, k);
      if (debugRate) {
        log(
          `rate ${before.toFixed(0)} -> ${rateMbit.toFixed(0)} Mbit/s (${rate.phase}), sent ${achievedMbit.toFixed(0)}, ` +
            `delivered ${samples.map((x) => `${x.deliveredMbit.toFixed(0)}/${(x.loss * 100).toFixed(1)}%`).join(' ')}, ` +
            `k ${k}, window ${windowLimit} at ${cur}, repairs ${repairs.size}`,
        );
      }
    }
    for (const p of peers) {
      p.tickGot = 0;
      p.tickMs = 0;
      p.tickRx = 0;
      p.tickExp = 0;
    }
    // Repair history matters only for chunks some receiver still misses.
    for (const seq of repairedAt.keys()) {
      if (!peers.some((p) => p.state === 'receiving' && p.miss.has(seq))) repairedAt.delete(seq);
    }
    counters.rateMbit = Math.round(rateMbit * 10) / 10;
    // A window that opened for want of news (a silent receiver no longer counts) restarts the pump.
    kick();
    opts.onProgress?.({
      phase: !started ? 'waiting' : finished ? 'done' : firstPassDone ? 'repairing' : 'sending',
      joined: joined().length,
      wanted: wantClients,
      startsInMs: started
        ? 0
        : openedAt === null
          ? waitMs
          : Math.max(0, Math.max(lastJoin, openedAt) + waitMs - now),
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

  /**
   * When the first pass waited at the window during the last tick and a single receiver closed
   * it while others had room, that receiver held the others back for the tick.
   */
  function noteHolders(now: number, receiving: Peer[], ms: number): void {
    const blocked = windowBlocked;
    windowBlocked = false;
    if (!blocked || receiving.length < 2 || firstPassDone) return;
    // A window at the end of the rows a receiver knows is news in flight (EXTEND), not a full memory.
    const holders = receiving.filter(
      (p) => now - p.lastHeard <= WINDOW_TRUST_MS && p.win <= cur && !(live && p.win >= p.known),
    );
    if (holders.length === 1) (holders[0] as Peer).held.push([now, ms]);
  }

  /** Units per datagram over the last K_WINDOW_MS (1 when nothing was sent). */
  function recentK(): number {
    const units = kHistory.reduce((a, x) => a + x[1], 0) + unitsThisTick;
    const datagrams = kHistory.reduce((a, x) => a + x[2], 0) + datagramsThisTick;
    return datagrams > 0 ? Math.max(1, units / datagrams) : k;
  }

  function chooseUnits(now: number): void {
    const samples: SizeSample[] = [];
    for (const p of peers) {
      if (p.state !== 'receiving') continue;
      let rx = 0;
      let exp = 0;
      let overflowUnits = 0;
      for (const [t, r, e, o] of p.lossSamples) {
        const age = now - t;
        if (age <= K_WINDOW_MS + OVERFLOW_LEAD_MS) overflowUnits += Math.max(0, o);
        if (age > K_WINDOW_MS) continue;
        rx += r;
        exp += e;
      }
      samples.push({ rx, exp, overflowUnits, frag: p.frag });
    }
    const { k: next, note } = sizer.decide(samples, recentK());
    counters.fragmentationPauses = sizer.fragmentationPauses;
    if (note) log(note);
    k = next;
    // Small datagrams cost mostly per datagram, which spreads well over sending threads (datagram-out.ts).
    spreading = 2 * k <= kMax;
    out.spread(spreading);
  }

  let rejoinTimer: NodeJS.Timeout | undefined;
  function checkFinished(): void {
    if (finished) return;
    const active = peers.filter((p) => p.state === 'receiving');
    const done = peers.filter((p) => p.state === 'ok');
    if (started && active.length === 1 && done.length > 0 && !othersDoneAt) othersDoneAt = Date.now();
    if (!started || active.length > 0 || joined().length > 0) return;
    // A receiver dropped for falling behind joins again to catch up (it resumes from its
    // journal), and one may be on its way: ending now would turn it away with the data it lacks.
    const now = Date.now();
    const rejoinBy = Math.max(
      0,
      ...peers.filter((p) => p.state === 'joining').map(() => now + 1000),
      ...peers
        .filter((p) => p.state === 'dropped' && p.code === 'E_DROPPED')
        .map((p) => p.endedAt + REJOIN_GRACE_MS),
    );
    if (rejoinBy <= now) return finish();
    clearTimeout(rejoinTimer);
    rejoinTimer = setTimeout(checkFinished, Math.min(rejoinBy - now, 1000));
  }

  let resolveDone: () => void = () => {};
  const donePromise = new Promise<void>((r) => (resolveDone = r));

  function finish(): void {
    if (finished) return;
    finished = true;
    clearTimeout(rejoinTimer);
    for (const p of peers) {
      if (p.state === 'ok') p.ch.send({ t: 'end' });
      else if (p.state === 'joining' || p.state === 'waiting' || p.state === 'receiving') {
        // A caller that stops the send with a reason (an administrator's stop) has it told to every receiver.
        const stopped =
          opts.signal?.aborted && opts.signal.reason instanceof ImgcastError ? opts.signal.reason : null;
        const why = fatal
          ? `sender failed: ${fatal instanceof Error ? fatal.message : String(fatal)}`
          : stopped
            ? `session stopped by the sender: ${stopped.message}`
            : 'session stopped by the sender';
        endPeer(p, 'dropped', why, fatal ? 'E_SENDER_FAILED' : 'E_ABORTED', true);
      }
    }
    resolveDone();
  }

  // --- a growing table ---------------------------------------------------------
  function broadcast(msg: ToReceiver): void {
    // Kept for receivers that join later, until the first release turns those away.
    if (releasedUpTo === 0) tableLog.push(msg);
    const json = Buffer.from(JSON.stringify(msg), 'utf8');
    for (const p of peers) {
      if (p.informed && (p.state === 'joining' || p.state === 'waiting' || p.state === 'receiving')) {
        p.ch.send(msg, json);
      }
    }
  }

  function onAppend(ext: TableExtension): void {
    if (finished) return;
    if (sealed) throw new TransportError('E_CONTROL_INVALID', 'the live table grew after it was sealed');
    const from = table.length;
    const added = addRows(ext.chunks);
    const delta = ext.metaDelta ?? null;
    if (added.length === 0 && delta === null) return;
    broadcast({ t: 'extend', from, chunks: added.map(row), delta });
    if (started && added.length > 0) {
      prefetch();
      kick();
    }
  }

  function onSeal(meta: unknown): void {
    if (finished || sealed) return;
    sealed = true;
    broadcast({ t: 'seal', chunks: table.length, meta });
    log(`table sealed: ${table.length} chunks, ${totalWire} bytes`);
    if (started) {
      advanceCursor();
      kick();
    }
  }

  /**
   * Frees what every receiver has completed, when the provider is full: chunks below the lowest
   * `low` of the receivers. Their repairs are forgotten with them.
   */
  function releaseSome(): void {
    if (!live || !started || finished) return;
    const receiving = peers.filter((p) => p.state === 'receiving');
    if (receiving.length === 0) return;
    const upTo = Math.min(cur, ...receiving.map((p) => p.low));
    if (upTo <= releasedUpTo) return;
    const ids: string[] = [];
    for (let seq = releasedUpTo; seq < upTo; seq++) {
      ids.push((table[seq] as Entry).id);
      cache.drop(seq);
      repairs.delete(seq);
      repairedAt.delete(seq);
      lastRepairSerial.delete(seq);
    }
    if (releasedUpTo === 0) {
      log(`released the first chunks: receivers joining from now on are turned away`);
      tableLog.length = 0;
    }
    releasedUpTo = upTo;
    wantRelease = false;
    live.release(ids);
  }

  if (live) {
    try {
      live.follow({
        append: (ext) => {
          try {
            onAppend(ext);
          } catch (err) {
            fatal ??= err;
            finish();
          }
        },
        seal: onSeal,
        fail: (err) => {
          fatal ??= err;
          finish();
        },
        full: () => {
          wantRelease = true;
          releaseSome();
        },
      });
    } catch (err) {
      fatal ??= err;
      finish();
    }
  }

  opts.gate?.then(
    ({ clients }) => {
      if (finished || openedAt !== null) return;
      wantClients = Math.max(1, clients);
      openedAt = Date.now();
      log(`gate open: starting once ${wantClients} receiver(s) joined`);
      maybeStart();
    },
    // A gate that fails never opens: the caller ends the sender through its signal.
    () => {},
  );
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
