/** Public contract of the transport: what it sends from, what it delivers into, and what it reports. */
import type { ChunkDecoder } from './chunkwire.ts';
import type { ReceiverCounters } from './control.ts';

export type { ReceiverCounters, ChunkDecoder };

export interface ChunkInfo {
  id: string;
  codec: number;
  storedLength: number;
  rawLength: number;
}

/** New rows of a growing chunk table, and what the engine says about them (see LiveTable). */
export interface TableExtension {
  /** Chunks the table did not hold yet (ids already in it are left out by the sender). */
  chunks: ChunkInfo[];
  /**
   * Opaque JSON for the receivers' consumer, in order with the chunks: a live capture says
   * here where the chunks (new or already sent) go on the target.
   */
  metaDelta?: unknown;
}

/** What the sender is told by a provider whose chunk table grows while the session runs. */
export interface LiveFollower {
  /** New chunks and/or a meta delta; the sender sends them to every receiver before their data. */
  append(ext: TableExtension): void;
  /** The table is complete: `meta` replaces the session's meta for every receiver. Called at most once. */
  seal(meta: unknown): void;
  /** The source failed: the session ends with this error for every receiver. */
  fail(err: unknown): void;
  /** The provider holds as many stored bytes as it may: it waits for the sender to release some. */
  full(): void;
}

/**
 * A chunk table that grows while the session runs (a live capture: the master's disk is
 * read, compressed and sent at once). The sender follows it from the start; the provider
 * keeps the stored bytes of every appended chunk until the sender releases them.
 */
export interface LiveTable {
  /** Called once by the sender before it listens; appends before that are in provider.chunks already. */
  follow(to: LiveFollower): void;
  /** The sender never reads these chunks again (every receiver holds them): their bytes may go. */
  release(ids: readonly string[]): void;
  /** No chunk will be stored in more bytes than this (receivers size their buffers by it). */
  maxStoredLength: number;
}

/** The sender's source of chunks. `chunks` may repeat an id; each distinct id is sent once. */
export interface ChunkProvider {
  /** The whole chunk table; for a live provider, the table so far (it grows through `live`). */
  chunks: ChunkInfo[];
  /**
   * The chunk's stored bytes. `into`, when given, is a buffer the caller no longer uses: a provider
   * may read into it (when large enough) and return a view of it, sparing an allocation per chunk.
   */
  readStored(id: string, into?: Buffer): Promise<Buffer>;
  /** Opaque JSON sent to every receiver with the session (the image manifest, the flat-file layout). */
  meta?: unknown;
  /** Present when the table grows while the session runs; absent, `chunks` is the whole table. */
  live?: LiveTable;
  /** Called once when the session is over, to release files the provider opened. */
  close?(): Promise<void>;
}

export interface SessionInfo {
  /** Session nonce, 16 hex digits. */
  nonce: string;
  group: string;
  port: number;
  /**
   * The session's chunk table, distinct ids, in transmission order (index = seq). In a live
   * session it is the table so far, and this same array grows as the sender extends it.
   */
  chunks: ChunkInfo[];
  /** In a live session, the meta the session started with; the final one comes to ChunkConsumer.seal. */
  meta: unknown;
  /** The table grows while the session runs (LiveTable); nothing of it can be resumed later. */
  live?: boolean;
  encrypted: boolean;
  /** The sender's control address as host:port. */
  sender: string;
}

/** Where a receiver puts verified chunks. Never sees bytes that did not match their id. */
export interface ChunkConsumer {
  /** True when the target already holds this chunk (resume); it is then neither requested nor applied. */
  has(id: string): boolean;
  prepare(session: SessionInfo): Promise<void>;
  /** `raw` must not be used once the returned promise settles: the receiver reuses its memory. */
  apply(id: string, raw: Buffer): Promise<void>;
  /**
   * Makes every chunk applied so far durable (on disk, not only in the page cache). With it,
   * the receiver journals a chunk only after a sync that covers it, so a journal that
   * survives a power cut never names a chunk that did not.
   */
  sync?(): Promise<void>;
  /**
   * When sync() is cheap (one file's fdatasync): the receiver calls it whenever this many bytes
   * were applied and no sync is running, journal or not, so the page cache is written back as
   * fast as the disk takes it and finish() has little left to flush.
   */
  readonly eagerSyncBytes?: number;
  /**
   * Live sessions: the table grew (`ext.chunks` are now at the end of session.chunks). Called
   * in order with apply(): before any chunk of `ext` is applied, after every chunk applied
   * before the extension arrived. A consumer of a live session must have it.
   */
  extend?(ext: TableExtension): Promise<void>;
  /**
   * Live sessions: the table is complete and this is the final meta. Called once, after the
   * last extend(); chunks may still be applied after it (repairs), then finish().
   */
  seal?(meta: unknown): Promise<void>;
  finish(): Promise<void>;
  abort(reason: unknown): Promise<void>;
}

export type Log = (line: string) => void;

export interface SenderProgress {
  phase: 'waiting' | 'sending' | 'repairing' | 'done';
  joined: number;
  /** Receivers the session waits for (--clients), and the time left before it starts anyway. */
  wanted: number;
  startsInMs: number;
  active: number;
  chunksSent: number;
  totalChunks: number;
  bytesSent: number;
  rateMbit: number;
  receivers: Array<{ name: string; state: ReceiverState; bytes: number; totalBytes: number }>;
}

export interface SenderOptions {
  /** Local IPv4 address of the interface to send on (and to listen on for control). */
  interface?: string;
  /** Multicast group, 239.0.0.0/8 recommended. Default 239.255.42.1. */
  group?: string;
  /** Control TCP port; data uses the `dataPorts` UDP ports from port + 1 on. Default 7747. */
  port?: number;
  /** UDP ports the data is dealt over, from port + 1 on (DATA_PORTS, 8, by default; 1..16). */
  dataPorts?: number;
  ttl?: number;
  /** Upper bound of the data rate in Mbit/s; default none (congestion control finds the rate). */
  rateMbit?: number;
  /** Start once this many receivers joined (default 1). */
  clients?: number;
  /** Start anyway this many seconds after the last join, if at least one receiver joined (default 300). */
  waitSeconds?: number;
  /**
   * Holds the start (start-rule.ts): the sender reads its table, opens its sockets and sending
   * thread and listens at once, but starts no earlier than this resolves, and then once `clients`
   * receivers joined (replacing the option), or waitSeconds after the later of the last join and
   * the opening. A server readies a session's sender this way while its lab gathers, so that the
   * session's trigger costs none of that. One that never resolves holds until `signal` aborts.
   */
  gate?: Promise<{ clients: number }>;
  key?: string;
  encrypt?: boolean;
  /** Drop a receiver that sent nothing for this long (default 10 000). */
  deadAfterMs?: number;
  /** Drop a receiver that completed no chunk for this long once the first pass is over (default max(20 s, 2 × deadAfterMs)). */
  stallAfterMs?: number;
  /** Drop a receiver still missing chunks this long after every other receiver finished (default 60 000). */
  lagLimitMs?: number;
  /** Drop a receiver that lost more than half the packets over this long (default 10 000). */
  lossWindowMs?: number;
  /**
   * Largest UDP datagram, bytes (default 23132: sixteen 1444-byte units, IP-fragmented into 16
   * frames at MTU 1500). 1472 sends one unit per datagram and never fragments: for networks that
   * drop IP fragments (and leaves no room for coded repairs). The sender goes below the limit by
   * itself when receivers report loss.
   */
  maxDatagram?: number;
  /**
   * Sending threads beside the sender's own socket: 0 sends from its own thread only; default 1
   * where there are 2 or more cores. While datagrams are small (under loss) they are dealt over
   * the socket and the threads, so the kernel's per-frame work spreads over cores (datagram-out.ts).
   */
  sendThreads?: number;
  log?: Log;
  onProgress?: (s: SenderProgress) => void;
  signal?: AbortSignal;
}

export type ReceiverState = 'joining' | 'waiting' | 'receiving' | 'ok' | 'dropped' | 'failed';

export interface ReceiverReport {
  name: string;
  address: string;
  state: ReceiverState;
  /** Why it was dropped or failed. */
  reason: string | null;
  code: string | null;
  /** Raw bytes it holds now (including what it already had). */
  bytes: number;
  totalBytes: number;
  chunksHad: number;
  rateMbit: number;
  /** Units it asked to be repeated (before merging with other receivers' requests). */
  repairsRequested: number;
  counters: ReceiverCounters | null;
}

export interface SenderCounters {
  packets: number;
  dataPackets: number;
  repairPackets: number;
  bytes: number;
  repairBytes: number;
  chunksSent: number;
  chunksSkipped: number;
  naksReceived: number;
  naksSuppressed: number;
  controlRejected: number;
  rateMbit: number;
  /** Datagrams sent (data and repair) by the units they carried: index k = k units. */
  datagramsByUnits: number[];
  /** Times a receiver's full IP reassembly memory made the sender stop fragmenting for a while. */
  fragmentationPauses: number;
  /** Coded repairs sent (one datagram that repairs different runs for different receivers), and the runs they carried. */
  codedRepairs: number;
  codedRuns: number;
}

export interface SenderResult {
  ok: boolean;
  nonce: string;
  chunks: number;
  /** Wire bytes of one full pass over the chunk table. */
  bytes: number;
  durationMs: number;
  receivers: ReceiverReport[];
  counters: SenderCounters;
}

export interface ReceiverProgress {
  chunks: number;
  totalChunks: number;
  bytes: number;
  totalBytes: number;
}

export interface ReceiverOptions {
  /** Sender control address, host[:port] (default port 7747). */
  from: string;
  /** Local IPv4 address of the interface to join the group on. */
  interface?: string;
  key?: string;
  name?: string;
  /**
   * Append-only list of chunk ids written. Resume reads it through the consumer (give
   * fileConsumer / restoreConsumer the same path): the receiver asks for every chunk the
   * consumer's `has` does not claim. With a consumer that can `sync`, ids are appended at
   * checkpoints, after a sync that made those chunks durable, and when the receiver stops.
   */
  journalPath?: string;
  /** Bytes written between journal checkpoints (default 64 MiB; and at least every 2 s). */
  journalCheckpointBytes?: number;
  /** Fail when the sender has been silent this long (default 15 000). */
  senderDeadAfterMs?: number;
  /** Checks and decodes stored bytes; default: codec 0 only, verified by SHA-256. */
  decode?: ChunkDecoder;
  log?: Log;
  onProgress?: (p: ReceiverProgress) => void;
  signal?: AbortSignal;
  makeConsumer: (session: SessionInfo) => Promise<ChunkConsumer>;
  /**
   * Linux, root: raise net.core.rmem_max for a 32 MiB receive buffer while receiving, and undo it
   * afterwards (kernel-tuning.ts; after a crash the next receive undoes it). Without it, or
   * where it is refused (not root, inside a network namespace), the receive says once why and
   * runs with the buffer it gets.
   */
  tuneKernel?: boolean;
  /** What the operator should know even without a log (a setting that slows the receive); defaults to log. */
  warn?: (line: string) => void;
  /**
   * With tuneKernel: also keep a datagram that lost a fragment for 1 s instead of
   * net.ipv4.ipfrag_time (30 s) and allow 32 MiB of reassembly memory instead of 4 MiB (this
   * network namespace). Under wire loss the kernel otherwise fills its reassembly memory with
   * those datagrams within seconds and then drops every fragmented one.
   */
  tuneReassembly?: boolean;
  /** Test hook: drop this fraction of valid incoming data packets (repeatable for a given receiver name). */
  simulateLoss?: number;
  /** Test hook: after this many chunks, stop reading data and stop reporting, keeping TCP open. */
  stallAfterChunks?: number;
}

export interface ReceiverResult {
  ok: boolean;
  code: string | null;
  message: string | null;
  name: string;
  chunks: number;
  totalChunks: number;
  /** Chunks skipped because the target already had them. */
  chunksHad: number;
  bytes: number;
  durationMs: number;
  counters: ReceiverCounters;
}
