/**
 * A live master: a disk, partition or folder captured and multicast as it is read, never
 * written to an image file. The capture (make.ts) feeds a ChunkSink that compresses each
 * chunk at the chosen level on every core and keeps its stored bytes in memory for the
 * sender, which sends it at once (a growing session, transport/types.ts LiveTable).
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
 * Memory: the chunks' stored bytes stay here until the sender releases them (every receiver
 * has them). Once they take `memoryBytes`, the next chunk waits, and with it the capture,
 * whose compression slots fill: a slow network slows the capture instead of growing the
 * master's memory. Held at most: memoryBytes of stored chunks (or one chunk, if larger),
 * plus IN_FLIGHT_SLOTS chunks of CHUNK_SIZE being read and compressed, plus the deltas the
 * sender keeps for receivers that join late and the manifest.
 */
import { ImgcastError } from '../errors.ts';
import { chunkId } from '../image/codec.ts';
import { slotLease } from '../image/lease.ts';
import { CompressPool } from '../image/pool.ts';
import {
  CHUNK_SIZE,
  COMPRESSION_LEVELS,
  type ChunkLease,
  type ChunkRef,
  type ChunkSink,
  type CompressionLevel,
  type FileEntry,
  type Manifest,
  type QueuedChunk,
} from '../image/types.ts';
import { IN_FLIGHT_SLOTS } from '../image/writer.ts';
import type {
  ChunkInfo,
  ChunkProvider,
  LiveFollower,
  LiveTable,
  TableExtension,
} from '../transport/types.ts';
import { UsageError } from '../errors.ts';
import type { Placed } from '../volume/files/capture.ts';
import { capturePlanned, layoutOf, planCapture, type MakeProgress, type MakeResult } from './make.ts';
import type { ImageMeta } from './multicast.ts';

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

/**
 * Plans the capture of `source` (checks it, reads its layout), then starts reading it at
 * once into a growing chunk table for runSender. Capture errors reach the sender (which
 * ends the session with them) and `captured`.
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
  const plan = await planCapture(source, { onWarning: opts.onWarning });
  const layout = layoutOf(plan, opts.level);
  const sink = new LiveSink(opts.level, memoryBytes);
  const stop = () =>
    sink.close(opts.signal?.reason ?? new ImgcastError('E_ABORTED', 'the live capture was stopped'));
  opts.signal?.addEventListener('abort', stop, { once: true });
  if (opts.signal?.aborted) stop();
  const captured = capturePlanned(plan, sink, {
    level: opts.level,
    onProgress: opts.onProgress,
    signal: opts.signal,
    imageId: layout.imageId,
    createdAt: layout.createdAt,
    hooks: {
      files: (volume, uses) => sink.placeFiles(volume, uses),
      raw: (volume, x) => sink.placeRaw(volume, x.offset, x.length, x.chunk),
      fileDone: (volume, e) => sink.fileDone(volume, e),
    },
  });
  captured.then(
    (r) => sink.seal(r.manifest),
    (err: unknown) => sink.fail(err),
  );
  captured.catch(() => {}).finally(() => opts.signal?.removeEventListener('abort', stop));
  opts.log?.(
    `live capture of ${source}: ${layout.volumes.length} volume(s)${layout.disk ? ` on a ${layout.disk.table.toUpperCase()} disk` : ''}, level ${opts.level}`,
  );
  const meta: LiveMeta = { kind: 'live', layout };
  return {
    chunks: [],
    meta,
    captured,
    stats: sink.stats,
    live: sink,
    readStored: (id) => sink.readStored(id),
    async close() {
      sink.close(new ImgcastError('E_ABORTED', 'the live session ended'));
      await captured.catch(() => {});
    },
  };
}

interface Stored {
  codec: number;
  stored: Buffer;
  rawLength: number;
}

/**
 * The ChunkSink a live capture writes to and the LiveTable the sender follows. Chunks are
 * hashed and compressed in this sink's slots of shared memory by the compression pool (as
 * the image writer's), then copied out and kept until released. Placements wait, in order,
 * until the chunks they name are stored, and go out as one extension each.
 */
class LiveSink implements ChunkSink, LiveTable {
  readonly maxStoredLength = CHUNK_SIZE;
  readonly stats: LiveStats = {
    chunks: 0,
    rawBytes: 0,
    storedBytes: 0,
    deduplicated: 0,
    heldBytes: 0,
    peakHeldBytes: 0,
    released: 0,
    waitedForMemory: 0,
  };
  readonly #level: CompressionLevel;
  readonly #budget: number;
  readonly #sab = new SharedArrayBuffer(IN_FLIGHT_SLOTS * CHUNK_SIZE);
  readonly #freeSlots = Array.from({ length: IN_FLIGHT_SLOTS }, (_, i) => i);
  #slotWaiters: Array<() => void> = [];
  #roomWaiters: Array<() => void> = [];
  /** Every id stored or being stored, settling once it is stored (or never will be); released ones stay, for dedup. */
  readonly #known = new Map<string, Promise<void>>();
  readonly #stored = new Map<string, Stored>();
  /** Ids whose row the sender has. */
  readonly #appended = new Set<string>();
  /** Files done since the last extension. */
  readonly #done: NonNullable<LiveDelta['done']> = [];
  #follower: LiveFollower | null = null;
  /** What happened before the sender followed, for follow() to replay. */
  #early: Array<(f: LiveFollower) => void> = [];
  #chain: Promise<void> = Promise.resolve();
  #failure: Error | undefined;
  #closed = false;

  constructor(level: CompressionLevel, budget: number) {
    this.#level = level;
    this.#budget = budget;
  }

  // --- ChunkSink -----------------------------------------------------------

  async putChunk(raw: Buffer): Promise<ChunkRef> {
    this.#checkChunk(raw);
    // Named here, before any compression, so a repeated chunk (raw disk blocks) costs only its hash.
    const id = chunkId(raw);
    const ref = { id, rawLength: raw.length };
    if (this.#known.has(id)) {
      this.stats.deduplicated++;
      return ref;
    }
    let started!: () => void;
    const gate = new Promise<void>((resolve) => (started = resolve));
    let slot = -1;
    // Registered before waiting for a slot, so a concurrent put of the same content dedups.
    this.#known.set(
      id,
      gate.then(async () => {
        if (slot < 0) return;
        try {
          const r = await CompressPool.shared().compress(
            this.#sab,
            slot * CHUNK_SIZE,
            raw.length,
            this.#level,
          );
          await this.#keep(slot, id, raw.length, r.codec, r.storedLength);
        } catch (err) {
          this.#releaseSlot(slot);
          this.fail(err);
        }
      }),
    );
    try {
      slot = await this.#acquireSlot();
      raw.copy(this.#slotBuffer(slot));
    } catch (err) {
      this.#known.delete(id);
      throw err;
    } finally {
      started();
    }
    return ref;
  }

  async queueChunk(raw: Buffer): Promise<QueuedChunk> {
    this.#checkChunk(raw);
    const slot = await this.#acquireSlot();
    raw.copy(this.#slotBuffer(slot));
    return this.#queueSlot(slot, raw.length);
  }

  async leaseChunk(): Promise<ChunkLease> {
    this.#check();
    const slot = await this.#acquireSlot();
    return slotLease({
      buf: this.#slotBuffer(slot),
      release: () => this.#releaseSlot(slot),
      check: () => this.#check(),
      queue: (length) => this.#queueSlot(slot, length),
    });
  }

  #queueSlot(slot: number, rawLength: number): QueuedChunk {
    const named = CompressPool.shared()
      .compress(this.#sab, slot * CHUNK_SIZE, rawLength, this.#level, { hash: true })
      .then(
        async (r): Promise<ChunkRef> => {
          const id = r.id!;
          const ref = { id, rawLength };
          const known = this.#known.get(id);
          if (known) {
            this.stats.deduplicated++;
            this.#releaseSlot(slot);
            // Named once the first copy is stored: its placements then find it.
            await known;
            return ref;
          }
          const keeping = this.#keep(slot, id, rawLength, r.codec, r.storedLength);
          this.#known.set(
            id,
            keeping.catch(() => {}),
          );
          await keeping;
          return ref;
        },
        (err: unknown) => {
          this.#releaseSlot(slot);
          throw err;
        },
      );
    named.catch((err: unknown) => this.fail(err));
    return { ref: named };
  }

  /** Copies a compressed chunk out of its slot once there is room for it, and keeps it. */
  async #keep(
    slot: number,
    id: string,
    rawLength: number,
    codec: number,
    storedLength: number,
  ): Promise<void> {
    try {
      await this.#room(storedLength);
      const stored = Buffer.from(this.#slotBuffer(slot).subarray(0, storedLength));
      this.#stored.set(id, { codec, stored, rawLength });
      this.stats.chunks++;
      this.stats.rawBytes += rawLength;
      this.stats.storedBytes += storedLength;
      this.stats.heldBytes += storedLength;
      this.stats.peakHeldBytes = Math.max(this.stats.peakHeldBytes, this.stats.heldBytes);
    } finally {
      this.#releaseSlot(slot);
    }
  }

  /** Waits until `bytes` more fit the budget (always for the first chunk held). */
  async #room(bytes: number): Promise<void> {
    let told = false;
    while (this.stats.heldBytes > 0 && this.stats.heldBytes + bytes > this.#budget) {
      this.#check();
      if (!told) {
        told = true;
        this.stats.waitedForMemory++;
      }
      const wait = new Promise<void>((resolve) => this.#roomWaiters.push(resolve));
      this.#tell((f) => f.full());
      await wait;
    }
    this.#check();
  }

  // --- placements ----------------------------------------------------------------

  placeFiles(volume: number, uses: Placed[]): void {
    const files: NonNullable<LiveDelta['files']> = uses.map(({ entry, extent: x }) => [
      volume,
      entry.path,
      entry.hardlinkGroup ?? 0,
      x.offset,
      x.length,
      x.chunkOffset,
      x.chunk,
    ]);
    this.#extend(new Set(files.map((f) => f[6])), { files });
  }

  placeRaw(volume: number, offset: number, length: number, id: string): void {
    this.#extend(new Set([id]), { raw: [[volume, offset, length, id]] });
  }

  /** Goes with the next extension (their order does not matter to receivers), or before the seal. */
  fileDone(volume: number, e: FileEntry): void {
    this.#done.push([
      volume,
      e.path,
      e.hardlinkGroup ?? 0,
      e.size ?? 0,
      e.mode,
      e.uid,
      e.gid,
      e.atimeNs,
      e.mtimeNs,
      e.extents?.length ?? 0,
    ]);
  }

  /** One extension: the rows of `ids` the sender lacks, once they are stored, and the delta. */
  #extend(ids: Set<string>, delta: LiveDelta): void {
    const ready = [...ids].map((id) => this.#known.get(id));
    this.#chain = this.#chain.then(async () => {
      await Promise.all(ready);
      if (this.#failure || this.#closed) return;
      const chunks: ChunkInfo[] = [];
      for (const id of ids) {
        if (this.#appended.has(id)) continue;
        const s = this.#stored.get(id);
        if (!s) throw new Error(`internal: chunk ${id} was placed but never stored`);
        this.#appended.add(id);
        chunks.push({ id, codec: s.codec, storedLength: s.stored.length, rawLength: s.rawLength });
      }
      if (this.#done.length > 0) delta.done = this.#done.splice(0);
      const ext: TableExtension = { chunks, metaDelta: delta };
      this.#tell((f) => f.append(ext));
    });
    this.#chain.catch((err: unknown) => this.fail(err));
  }

  /** After the last placement: the whole manifest, once every chunk it names has its row. */
  seal(manifest: Manifest): void {
    this.#chain = this.#chain.then(() => {
      if (this.#failure || this.#closed) return;
      const missing = manifestChunks(manifest).find((id) => !this.#appended.has(id));
      if (missing) throw new Error(`internal: the manifest names chunk ${missing}, which was never placed`);
      if (this.#done.length > 0)
        this.#tell((f) => f.append({ chunks: [], metaDelta: { done: this.#done.splice(0) } }));
      const meta: ImageMeta = { kind: 'image', fileset: 1, manifest };
      this.#tell((f) => f.seal(meta));
    });
    this.#chain.catch((err: unknown) => this.fail(err));
  }

  // --- LiveTable -----------------------------------------------------------------

  follow(to: LiveFollower): void {
    this.#follower = to;
    for (const fn of this.#early.splice(0)) fn(to);
  }

  release(ids: readonly string[]): void {
    for (const id of ids) {
      const s = this.#stored.get(id);
      if (!s) continue;
      this.#stored.delete(id);
      this.stats.heldBytes -= s.stored.length;
      this.stats.released++;
    }
    for (const w of this.#roomWaiters.splice(0)) w();
  }

  async readStored(id: string): Promise<Buffer> {
    const s = this.#stored.get(id);
    if (!s) throw new ImgcastError('E_LIVE_RELEASED', `chunk ${id} is not held by this live capture`);
    return s.stored;
  }

  // --- failure and the end ---------------------------------------------------------

  /** The capture failed (or was stopped): the sender ends the session with it. */
  fail(err: unknown): void {
    if (this.#failure) return;
    this.#failure = err instanceof Error ? err : new Error(String(err));
    this.#wake();
    if (!this.#closed) this.#tell((f) => f.fail(this.#failure));
  }

  /** No more chunks are taken (puts throw), waits end, and the bytes go. */
  close(reason: unknown): void {
    if (this.#closed) return;
    this.#failure ??= reason instanceof Error ? reason : new Error(String(reason));
    this.#closed = true;
    this.#stored.clear();
    this.stats.heldBytes = 0;
    this.#wake();
  }

  #tell(fn: (f: LiveFollower) => void): void {
    if (this.#follower) fn(this.#follower);
    else this.#early.push(fn);
  }

  #check(): void {
    if (this.#failure) throw this.#failure;
  }

  #checkChunk(raw: Buffer): void {
    this.#check();
    if (!Buffer.isBuffer(raw)) throw new TypeError('a chunk must be a Buffer');
    if (raw.length > CHUNK_SIZE) throw new RangeError(`a chunk of ${raw.length} bytes exceeds ${CHUNK_SIZE}`);
  }

  #slotBuffer(slot: number): Buffer {
    return Buffer.from(this.#sab, slot * CHUNK_SIZE, CHUNK_SIZE);
  }

  async #acquireSlot(): Promise<number> {
    while (this.#freeSlots.length === 0) {
      this.#check();
      await new Promise<void>((resolve) => this.#slotWaiters.push(resolve));
    }
    this.#check();
    return this.#freeSlots.pop()!;
  }

  #releaseSlot(slot: number): void {
    this.#freeSlots.push(slot);
    for (const w of this.#slotWaiters.splice(0)) w();
  }

  #wake(): void {
    for (const w of this.#slotWaiters.splice(0)) w();
    for (const w of this.#roomWaiters.splice(0)) w();
  }
}

/** Every chunk id a manifest's boot areas, raw volumes and files name. */
function manifestChunks(m: Manifest): string[] {
  const ids = new Set<string>();
  for (const a of m.disk?.bootAreas ?? []) for (const x of a.extents) ids.add(x.chunk);
  for (const v of m.volumes) {
    if (v.kind === 'raw') for (const x of v.extents) ids.add(x.chunk);
    else for (const e of v.entries) for (const x of e.extents ?? []) ids.add(x.chunk);
  }
  return [...ids];
}
