/**
 * The live capture's thread (live.ts starts it): plans and reads the source, hashes and
 * compresses its chunks on the compression pool, and posts to the main thread the layout,
 * each extension of the table (new chunks' bytes handed over whole, and where data goes), and
 * the seal with the manifest. Reading runs here, not beside the sender: a capture reads with
 * blocking calls (fast for a tree in the page cache, but a cold disk's reads held the
 * sender's thread for seconds at a time, and with it every datagram and NAK).
 *
 * Messages in: {t: 'released', ids} (the sender let go of them: the budget has room again),
 * {t: 'close', reason} (stop: the capture unwinds, unmounting what it mounted, then the
 * thread posts 'closed' and ends). Out: LiveMessage (live.ts).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { ImgcastError } from '../errors.ts';
import { SlotSink } from '../image/slot-sink.ts';
import { CompressPool } from '../image/pool.ts';
import {
  CHUNK_SIZE,
  type ChunkRef,
  type CompressionLevel,
  type FileEntry,
  type Manifest,
  type QueuedChunk,
} from '../image/types.ts';
import { IN_FLIGHT_SLOTS } from '../image/writer.ts';
import type { ChunkInfo } from '../transport/types.ts';
import type { Placed } from '../volume/files/capture.ts';
import {
  serializeError,
  type LiveDelta,
  type LiveMessage,
  type LiveStats,
  type LiveWorkerData,
} from './live.ts';
import { capturePlanned, layoutOf, planCapture, type MakeProgress } from './make.ts';
import type { ImageMeta } from './multicast.ts';

interface Stored {
  codec: number;
  /** Its own memory (not a pool's): handed over to the main thread whole. */
  stored: Uint8Array<ArrayBuffer>;
  rawLength: number;
}

/** Where the sink's news go: the main thread (liveDiskProvider). */
interface Downstream {
  append(chunks: Array<{ info: ChunkInfo; stored: Uint8Array<ArrayBuffer> }>, delta: LiveDelta): void;
  seal(meta: ImageMeta): void;
  fail(err: unknown): void;
  full(): void;
}

/**
 * The ChunkSink the capture writes to. Chunks are hashed and compressed in this sink's slots
 * of shared memory by the compression pool (as the image writer's), then copied out. Placements
 * wait, in order, until the chunks they name are stored, and go downstream as one extension
 * each, with the bytes of the chunks new to the table. The bytes are the main thread's from
 * then on; their sizes count against the budget here until it says they were released.
 */
export class LiveSink extends SlotSink {
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
  readonly #stored = new Map<string, Stored>();
  /** Stored bytes of chunks handed downstream and not released yet, by id. */
  readonly #held = new Map<string, number>();
  /** Ids whose row the sender has. */
  readonly #appended = new Set<string>();
  /** Files done since the last extension. */
  readonly #done: NonNullable<LiveDelta['done']> = [];
  readonly #down: Downstream;
  #chain: Promise<void> = Promise.resolve();
  #failure: Error | undefined;
  #closed = false;

  constructor(level: CompressionLevel, budget: number, down: Downstream) {
    super();
    this.#level = level;
    this.#budget = budget;
    this.#down = down;
  }

  // --- ChunkSink -----------------------------------------------------------

  protected async storeSlot(slot: number, id: string, rawLength: number): Promise<void> {
    try {
      const r = await CompressPool.shared().compress(this.#sab, slot * CHUNK_SIZE, rawLength, this.#level);
      await this.#keep(slot, id, rawLength, r.codec, r.storedLength);
    } catch (err) {
      this.releaseSlot(slot);
      this.fail(err);
    }
  }

  protected countDeduplicated(): void {
    this.stats.deduplicated++;
  }

  protected queueSlot(slot: number, rawLength: number): QueuedChunk {
    const named = CompressPool.shared()
      .compress(this.#sab, slot * CHUNK_SIZE, rawLength, this.#level, { hash: true })
      .then(
        async (r): Promise<ChunkRef> => {
          const id = r.id!;
          const ref = { id, rawLength };
          const known = this.known.get(id);
          if (known) {
            this.stats.deduplicated++;
            this.releaseSlot(slot);
            // Named once the first copy is stored: its placements then find it.
            await known;
            return ref;
          }
          const keeping = this.#keep(slot, id, rawLength, r.codec, r.storedLength);
          this.known.set(
            id,
            keeping.catch(() => {}),
          );
          await keeping;
          return ref;
        },
        (err: unknown) => {
          this.releaseSlot(slot);
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
      const stored = new Uint8Array(storedLength);
      stored.set(this.slotBuffer(slot).subarray(0, storedLength));
      this.#stored.set(id, { codec, stored, rawLength });
      this.stats.chunks++;
      this.stats.rawBytes += rawLength;
      this.stats.storedBytes += storedLength;
      this.stats.heldBytes += storedLength;
      this.stats.peakHeldBytes = Math.max(this.stats.peakHeldBytes, this.stats.heldBytes);
    } finally {
      this.releaseSlot(slot);
    }
  }

  /** Waits until `bytes` more fit the budget (always for the first chunk held). */
  async #room(bytes: number): Promise<void> {
    let told = false;
    while (this.stats.heldBytes > 0 && this.stats.heldBytes + bytes > this.#budget) {
      this.check();
      if (!told) {
        told = true;
        this.stats.waitedForMemory++;
      }
      const wait = new Promise<void>((resolve) => this.#roomWaiters.push(resolve));
      if (!this.#closed) this.#down.full();
      await wait;
    }
    this.check();
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
    const ready = [...ids].map((id) => this.known.get(id));
    this.#chain = this.#chain.then(async () => {
      await Promise.all(ready);
      if (this.#failure || this.#closed) return;
      const chunks: Array<{ info: ChunkInfo; stored: Uint8Array<ArrayBuffer> }> = [];
      for (const id of ids) {
        if (this.#appended.has(id)) continue;
        const s = this.#stored.get(id);
        if (!s) throw new Error(`internal: chunk ${id} was placed but never stored`);
        this.#appended.add(id);
        this.#stored.delete(id);
        this.#held.set(id, s.stored.length);
        chunks.push({
          info: { id, codec: s.codec, storedLength: s.stored.length, rawLength: s.rawLength },
          stored: s.stored,
        });
      }
      if (this.#done.length > 0) delta.done = this.#done.splice(0);
      this.#down.append(chunks, delta);
    });
    this.#chain.catch((err: unknown) => this.fail(err));
  }

  /** After the last placement: the whole manifest, once every chunk it names has its row. */
  seal(manifest: Manifest): void {
    this.#chain = this.#chain.then(() => {
      if (this.#failure || this.#closed) return;
      const missing = manifestChunks(manifest).find((id) => !this.#appended.has(id));
      if (missing) throw new Error(`internal: the manifest names chunk ${missing}, which was never placed`);
      if (this.#done.length > 0) this.#down.append([], { done: this.#done.splice(0) });
      this.#down.seal({ kind: 'image', fileset: 1, manifest });
    });
    this.#chain.catch((err: unknown) => this.fail(err));
  }

  /** The main thread let go of these chunks: their bytes no longer count against the budget. */
  release(ids: readonly string[]): void {
    for (const id of ids) {
      const n = this.#held.get(id);
      if (n === undefined) continue;
      this.#held.delete(id);
      this.stats.heldBytes -= n;
      this.stats.released++;
    }
    for (const w of this.#roomWaiters.splice(0)) w();
  }

  /** Settles once every extension and the seal before it have gone downstream. */
  drained(): Promise<void> {
    return this.#chain.catch(() => {});
  }

  // --- failure and the end ---------------------------------------------------------

  /** The capture failed (or was stopped): the sender ends the session with it. */
  fail(err: unknown): void {
    if (this.#failure) return;
    this.#failure = err instanceof Error ? err : new Error(String(err));
    this.#wake();
    if (!this.#closed) this.#down.fail(this.#failure);
  }

  /** No more chunks are taken (puts throw), waits end, and the bytes go. */
  close(reason: unknown): void {
    if (this.#closed) return;
    this.#failure ??= reason instanceof Error ? reason : new Error(String(reason));
    this.#closed = true;
    this.#stored.clear();
    this.#wake();
  }

  protected check(): void {
    if (this.#failure) throw this.#failure;
  }

  protected slotBuffer(slot: number): Buffer {
    return Buffer.from(this.#sab, slot * CHUNK_SIZE, CHUNK_SIZE);
  }

  protected async acquireSlot(): Promise<number> {
    while (this.#freeSlots.length === 0) {
      this.check();
      await new Promise<void>((resolve) => this.#slotWaiters.push(resolve));
    }
    this.check();
    return this.#freeSlots.pop()!;
  }

  protected releaseSlot(slot: number): void {
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

/** Progress at most this often: the capture reports every file. */
const PROGRESS_MS = 200;

async function main(): Promise<void> {
  const port = parentPort!;
  const { source, level, memoryBytes } = workerData as LiveWorkerData;
  const post = (m: LiveMessage, transfer: ArrayBuffer[] = []) => port.postMessage(m, transfer);
  let sink: LiveSink | undefined;
  let closing: string | undefined;
  port.on('message', (m: { t: 'released'; ids: string[] } | { t: 'close'; reason: string }) => {
    if (m.t === 'released') sink?.release(m.ids);
    else {
      closing = m.reason;
      sink?.close(new ImgcastError('E_ABORTED', m.reason));
    }
  });
  try {
    const plan = await planCapture(source, { onWarning: (message) => post({ t: 'warning', message }) });
    const layout = layoutOf(plan, level);
    post({ t: 'layout', meta: { kind: 'live', layout } });
    if (closing !== undefined) return;
    const live = new LiveSink(level, memoryBytes, {
      append: (chunks, delta) =>
        post(
          { t: 'append', chunks, delta, stats: { ...live.stats } },
          chunks.map((c) => c.stored.buffer),
        ),
      seal: (meta) => post({ t: 'seal', meta, stats: { ...live.stats } }),
      fail: (err) => post({ t: 'fail', error: serializeError(err) }),
      full: () => post({ t: 'full' }),
    });
    sink = live;
    let last = 0;
    let pending: MakeProgress | undefined;
    const result = await capturePlanned(plan, live, {
      level,
      onProgress: (p) => {
        pending = p;
        const now = Date.now();
        if (now - last < PROGRESS_MS) return;
        last = now;
        post({ t: 'progress', p });
      },
      imageId: layout.imageId,
      createdAt: layout.createdAt,
      hooks: {
        files: (volume, uses) => live.placeFiles(volume, uses),
        raw: (volume, x) => live.placeRaw(volume, x.offset, x.length, x.chunk),
        fileDone: (volume, e) => live.fileDone(volume, e),
      },
    });
    if (pending) post({ t: 'progress', p: pending });
    live.seal(result.manifest);
    await live.drained();
    post({ t: 'captured', stats: result.stats });
  } catch (err) {
    if (closing === undefined) post({ t: 'fail', error: serializeError(err) });
  } finally {
    await sink?.drained();
    post({ t: 'closed' });
  }
}

await main();
