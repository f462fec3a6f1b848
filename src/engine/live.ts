/**
 * A live master: a disk, partition or folder captured and multicast as it is read, never
 * written to an image file. The capture runs on a thread of its own (live-worker.ts): it
 * reads the source as `img make` does, compresses each chunk at the chosen level on every
 * core, and hands each chunk's stored bytes to this thread, which keeps them for the sender
 * (a growing session: transport/types.ts LiveTable) until the sender releases them.
 *
 * What receivers are told, in order (engine/live-restore.ts follows it):
 * - the session's meta, before any data is read: LiveMeta, the manifest as planning knows
 *   it (partition table, boot areas, each volume's kind, size and filesystem) with no file
 *   entries and no extents;
 * - with every extension, a LiveDelta: where the runs of file and raw data go, as soon as
 *   their chunk is named; a chunk's row comes with the first run placed in it, so a
 *   receiver never gets a chunk it cannot place, and a run that reuses a chunk sent before
 *   (a hard link, a repeated file) comes alone; and each regular file once its data is all
 *   handed over, with its size, owner, mode and times, so a receiver can finish it at once;
 * - at the seal, an ImageMeta: the whole manifest, as `img make` would have written it.
 *
 * Memory: once the chunks held for the sender take `memoryBytes`, the next chunk waits, and
 * with it the capture, whose compression slots fill: a slow network slows the capture
 * instead of growing the master's memory. Held at most: memoryBytes of stored chunks (or one
 * chunk, if larger), plus IN_FLIGHT_SLOTS chunks of CHUNK_SIZE being read and compressed,
 * plus the sender's copies of the few it is sending (sealed ones when encrypting), the deltas
 * it keeps for late joiners (until its first release) and the manifest.
 *
 * Codes besides those of the capture itself (E_DISK_SOURCE, E_DISK_MOUNTED, …): E_ABORTED (the
 * capture was stopped), E_LIVE_CAPTURE (its thread ended before the table was sealed),
 * E_LIVE_RELEASED (a chunk read after the sender released it: a bug).
 */
import { Worker } from 'node:worker_threads';
import { DiskError } from '../disk/errors.ts';
import { ImgcastError, InterruptedError, UsageError } from '../errors.ts';
import { ImageError } from '../image/errors.ts';
import { CHUNK_SIZE, COMPRESSION_LEVELS, type CompressionLevel, type Manifest } from '../image/types.ts';
import { TransportError } from '../transport/errors.ts';
import type { ChunkInfo, ChunkProvider, LiveFollower, LiveTable } from '../transport/types.ts';
import { FileVolumeError } from '../volume/files/errors.ts';
import type { MakeProgress, MakeResult, MakeStats } from './make.ts';
import type { ImageMeta } from './multicast.ts';
import { workerExecArgv } from '../worker-argv.ts';

/** The meta a live session starts with: the manifest before any data was read. */
export interface LiveMeta {
  kind: 'live';
  /** The capture's manifest with no file entries and no extents (make.ts layoutOf). */
  layout: Manifest;
}

/**
 * Where runs of data go, sent with each extension of a live session's table.
 * - files: [volume, path, hard-link group (0: none), file offset, length, chunk offset, chunk id];
 * - raw: [volume, offset within it, length, chunk id], or for boot area i [-1 - i, offset on
 *   the disk, length, chunk id]. A raw run is its chunk's whole content.
 */
export interface LiveDelta {
  files?: Array<[number, string, number, number, number, number, string]>;
  raw?: Array<[number, number, number, string]>;
  /**
   * Regular files whose data is all placed (some runs may still come): [volume, path, hard-link
   * group (0: none), size, mode, uid, gid, atime ns, mtime ns, runs]; `runs` counts its extents.
   */
  done?: Array<[number, string, number, number, number, number, number, string, string, number]>;
}

export interface LiveProviderOptions {
  level: CompressionLevel;
  /** Stops the capture; the sender then ends the session (give the sender the same signal). */
  signal?: AbortSignal;
  onProgress?: (p: MakeProgress) => void;
  onWarning?: (message: string) => void;
  log?: (line: string) => void;
  /** Stored chunk bytes held for the session before the capture waits (default 256 MiB). */
  memoryBytes?: number;
}

export interface LiveStats {
  /** Distinct chunks stored and their raw and stored bytes; chunks the capture handed over again. */
  chunks: number;
  rawBytes: number;
  storedBytes: number;
  deduplicated: number;
  /** Stored bytes held now and at most; chunks released by the sender; times the capture waited for memory. */
  heldBytes: number;
  peakHeldBytes: number;
  released: number;
  waitedForMemory: number;
}

export interface LiveDiskProvider extends ChunkProvider {
  live: LiveTable;
  meta: LiveMeta;
  /** The capture: its manifest and stats once the table is sealed; rejects when it failed or was stopped. */
  captured: Promise<MakeResult>;
  stats: LiveStats;
}

export const DEFAULT_LIVE_MEMORY = 256 * 1024 * 1024;

/** What the capture thread is started with. */
export interface LiveWorkerData {
  source: string;
  level: CompressionLevel;
  memoryBytes: number;
}

/** An error as it crosses from the capture thread: its class, code, message and facts. */
export interface SerializedError {
  name: string;
  message: string;
  code?: string;
  details?: Record<string, unknown>;
}

/** What the capture thread says, in order. */
export type LiveMessage =
  | { t: 'layout'; meta: LiveMeta }
  | { t: 'warning'; message: string }
  | { t: 'progress'; p: MakeProgress }
  | {
      t: 'append';
      chunks: Array<{ info: ChunkInfo; stored: Uint8Array<ArrayBuffer> }>;
      delta: LiveDelta;
      stats: LiveStats;
    }
  | { t: 'full' }
  | { t: 'seal'; meta: ImageMeta; stats: LiveStats }
  | { t: 'captured'; stats: MakeStats }
  | { t: 'fail'; error: SerializedError }
  | { t: 'closed' };

export function serializeError(err: unknown): SerializedError {
  if (err instanceof ImgcastError) {
    return { name: err.name, message: err.message, code: err.code, details: err.details };
  }
  return { name: 'Error', message: err instanceof Error ? err.message : String(err) };
}

/** The error again, of its own class where it is one of the engine's (a caller may test for DiskError). */
export function reviveError(e: SerializedError): Error {
  if (e.code === undefined) return new Error(e.message);
  const classes: Record<string, new (c: string, m: string, d?: Record<string, unknown>) => ImgcastError> = {
    DiskError,
    ImageError,
    FileVolumeError,
    TransportError,
  };
  if (e.name === 'UsageError') return new UsageError(e.message, e.details);
  if (e.name === 'InterruptedError') return new InterruptedError(String(e.details?.signal ?? 'a signal'));
  const Cls = classes[e.name] ?? ImgcastError;
  return new Cls(e.code, e.message, e.details ?? {});
}

/**
 * Plans the capture of `source` (checks it, reads its layout) on the capture thread, then
 * has it read the source at once into a growing chunk table for runSender. Capture errors
 * reach the sender (which ends the session with them) and `captured`. Refusals of the source
 * (not found, mounted read-write, a filesystem that needs checking) reject this call.
 */
export async function liveDiskProvider(source: string, opts: LiveProviderOptions): Promise<LiveDiskProvider> {
  if (!COMPRESSION_LEVELS.includes(opts.level)) {
    throw new UsageError(`unknown compression level ${String(opts.level)}`);
  }
  const memoryBytes = opts.memoryBytes ?? DEFAULT_LIVE_MEMORY;
  if (!Number.isSafeInteger(memoryBytes) || memoryBytes < CHUNK_SIZE) {
    throw new UsageError(`the memory for a live session must be at least ${CHUNK_SIZE} bytes`);
  }
  opts.signal?.throwIfAborted();
  const data: LiveWorkerData = { source, level: opts.level, memoryBytes };
  const worker = new Worker(new URL('./live-worker.ts', import.meta.url), {
    workerData: data,
    execArgv: workerExecArgv(),
  });

  const stats: LiveStats = {
    chunks: 0,
    rawBytes: 0,
    storedBytes: 0,
    deduplicated: 0,
    heldBytes: 0,
    peakHeldBytes: 0,
    released: 0,
    waitedForMemory: 0,
  };
  const held = new Map<string, Buffer>();
  let follower: LiveFollower | null = null;
  const early: Array<(f: LiveFollower) => void> = [];
  const tell = (fn: (f: LiveFollower) => void): void => {
    if (follower) fn(follower);
    else early.push(fn);
  };
  let manifest: Manifest | undefined;
  let failure: Error | undefined;
  let resolveCaptured!: (r: MakeResult) => void;
  let rejectCaptured!: (err: unknown) => void;
  const captured = new Promise<MakeResult>((res, rej) => {
    resolveCaptured = res;
    rejectCaptured = rej;
  });
  captured.catch(() => {});
  let resolveClosed!: () => void;
  const closed = new Promise<void>((res) => (resolveClosed = res));
  let resolveLayout!: (m: LiveMeta) => void;
  let rejectLayout!: (err: unknown) => void;
  const layout = new Promise<LiveMeta>((res, rej) => {
    resolveLayout = res;
    rejectLayout = rej;
  });

  const fail = (err: Error): void => {
    if (failure) return;
    failure = err;
    rejectLayout(err);
    rejectCaptured(err);
    tell((f) => f.fail(err));
  };
  const copyStats = (s: LiveStats): void => {
    stats.chunks = s.chunks;
    stats.rawBytes = s.rawBytes;
    stats.storedBytes = s.storedBytes;
    stats.deduplicated = s.deduplicated;
    stats.waitedForMemory = s.waitedForMemory;
  };
  worker.on('message', (m: LiveMessage) => {
    switch (m.t) {
      case 'layout':
        return resolveLayout(m.meta);
      case 'warning':
        return opts.onWarning?.(m.message);
      case 'progress':
        return opts.onProgress?.(m.p);
      case 'append': {
        copyStats(m.stats);
        const chunks: ChunkInfo[] = [];
        for (const c of m.chunks) {
          held.set(c.info.id, Buffer.from(c.stored.buffer, c.stored.byteOffset, c.stored.byteLength));
          stats.heldBytes += c.stored.byteLength;
          chunks.push(c.info);
        }
        stats.peakHeldBytes = Math.max(stats.peakHeldBytes, stats.heldBytes);
        return tell((f) => f.append({ chunks, metaDelta: m.delta }));
      }
      case 'full':
        return tell((f) => f.full());
      case 'seal':
        copyStats(m.stats);
        manifest = m.meta.manifest;
        return tell((f) => f.seal(m.meta));
      case 'captured':
        return resolveCaptured({ manifest: manifest!, stats: m.stats });
      case 'fail':
        return fail(reviveError(m.error));
      case 'closed':
        resolveClosed();
        return void worker.terminate();
    }
  });
  worker.on('error', (err) => fail(err));
  worker.on('exit', () => {
    // Ended on its own (a crash of the thread) before the capture was complete.
    if (!manifest && !closing) {
      fail(new ImgcastError('E_LIVE_CAPTURE', 'the live capture ended before the table was sealed'));
    }
    resolveClosed();
  });

  let closing: Promise<void> | undefined;
  /** Stops the capture (it unmounts and detaches what it used) and waits until it has. */
  const close = (reason: string): Promise<void> => {
    closing ??= (async () => {
      worker.postMessage({ t: 'close', reason });
      await closed;
      held.clear();
      stats.heldBytes = 0;
      // Stopped before it was complete (settled already otherwise).
      rejectCaptured(new ImgcastError('E_ABORTED', reason));
    })();
    return closing;
  };
  const stop = () =>
    void close(
      opts.signal?.reason instanceof Error ? opts.signal.reason.message : 'the live capture was stopped',
    );
  opts.signal?.addEventListener('abort', stop, { once: true });
  void closed.then(() => opts.signal?.removeEventListener('abort', stop));

  let meta: LiveMeta;
  try {
    meta = await layout;
  } catch (err) {
    await close('the source was refused');
    throw err;
  }
  opts.log?.(
    `live capture of ${source}: ${meta.layout.volumes.length} volume(s)${meta.layout.disk ? ` on a ${meta.layout.disk.table.toUpperCase()} disk` : ''}, level ${opts.level}`,
  );
  const live: LiveTable = {
    maxStoredLength: CHUNK_SIZE,
    follow(to) {
      follower = to;
      for (const fn of early.splice(0)) fn(to);
    },
    release(ids) {
      for (const id of ids) {
        const b = held.get(id);
        if (!b) continue;
        held.delete(id);
        stats.heldBytes -= b.length;
        stats.released++;
      }
      worker.postMessage({ t: 'released', ids });
    },
  };
  return {
    chunks: [],
    meta,
    captured,
    stats,
    live,
    async readStored(id) {
      const b = held.get(id);
      if (!b) throw new ImgcastError('E_LIVE_RELEASED', `chunk ${id} is not held by this live capture`);
      return b;
    },
    close: () => close('the live session ended'),
  };
}
