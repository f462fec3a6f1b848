/**
 * The sender's chunk bytes: chunks read from the provider (sealed when the session is
 * encrypted) and kept for repairs, the first pass's next few read ahead, at most `limit`
 * bytes in all, least recently used out first.
 *
 * Read buffers are handed back to the provider (readStored's `into`) and reused, so chunks
 * are not read into fresh memory each time: garbage multi-MiB buffers wait for the GC and
 * inflate the RSS. A buffer is reused only once no queued datagram can still point into it.
 */
import { type DataKey, sealChunk } from './chunkwire.ts';
import { TransportError } from './errors.ts';
import type { ChunkInfo, ChunkProvider } from './types.ts';

/** Chunks kept at least (older ones are read again): 10 MiB covers the ~0.1-0.3 s a NAK takes at lab speeds. */
const CACHE_BYTES = 10 * 1024 * 1024;
/** Reads for repairs at once, so a long repair list does not pull many chunks into memory. */
export const MAX_REPAIR_LOADS = 3;
/** Chunks read ahead of the first pass, so a slow read does not leave the sender idle. */
export const PREFETCH_CHUNKS = 4;
/** Largest chunk read into recycled buffers; bigger ones get fresh memory per read. */
const MAX_SPARE_READ = 8 * 1024 * 1024;

export interface CacheHooks {
  /** The first pass's chunk: it and the PREFETCH_CHUNKS - 1 after it are never evicted. */
  firstPass(): number;
  /** Whether queued datagrams may still point into cached buffers. */
  holdsBuffers(): boolean;
  /** A read ended (the sender may have something to send now). */
  settled(): void;
  /** A read failed: the session cannot go on. */
  failed(err: unknown): void;
}

export class ChunkCache {
  readonly #cache = new Map<number, Buffer>();
  #bytes = 0;
  readonly #loading = new Map<number, Promise<void>>();
  readonly #spare: Buffer[] = [];
  /** The read buffer each cached chunk is a view of, when it is one (not encrypted, provider used `into`). */
  readonly #base = new Map<number, Buffer>();
  readonly #readCap: number;
  readonly #limit: number;
  readonly #maxSpare: number;

  readonly provider: ChunkProvider;
  readonly table: readonly ChunkInfo[];
  readonly dataKey: DataKey | null;
  readonly hooks: CacheHooks;

  /** Whether reads get a recycled buffer (`into`); a live provider serves its chunks from memory. */
  readonly #lend: boolean;

  constructor(
    provider: ChunkProvider,
    table: readonly ChunkInfo[],
    dataKey: DataKey | null,
    hooks: CacheHooks,
  ) {
    this.provider = provider;
    this.table = table;
    this.dataKey = dataKey;
    this.hooks = hooks;
    this.#lend = !provider.live;
    // A growing table names its largest chunk up front: the room below must hold the read-ahead of it.
    this.#readCap = table.reduce((a, e) => Math.max(a, e.storedLength), provider.live?.maxStoredLength ?? 0);
    // Room for the read-ahead and the repair reads besides them, however big the chunks: with
    // 4 MiB chunks 10 MiB held fewer chunks than the read-ahead protects, so every chunk read for
    // a repair was evicted before it could be sent, and read again, forever (issue #12).
    this.#limit = Math.max(CACHE_BYTES, (PREFETCH_CHUNKS + MAX_REPAIR_LOADS + 1) * this.#readCap);
    this.#maxSpare = this.#readCap > 0 ? Math.ceil(this.#limit / this.#readCap) + MAX_REPAIR_LOADS + 2 : 0;
  }

  /** Reads in flight. */
  get loading(): number {
    return this.#loading.size;
  }

  has(seq: number): boolean {
    return this.#cache.has(seq);
  }

  /** A cached chunk's bytes, without refreshing its recency. */
  peek(seq: number): Buffer | undefined {
    return this.#cache.get(seq);
  }

  /** A cached chunk's bytes; refreshes its recency so repairs of a hot chunk do not evict it. */
  get(seq: number): Buffer | undefined {
    const b = this.#cache.get(seq);
    if (b) {
      this.#cache.delete(seq);
      this.#cache.set(seq, b);
    }
    return b;
  }

  /** Starts reading a chunk unless it is cached or being read. */
  load(seq: number): void {
    if (this.#cache.has(seq) || this.#loading.has(seq)) return;
    const e = this.table[seq] as ChunkInfo;
    const cap = this.#readCap;
    const into = !this.#lend
      ? undefined
      : (this.#spare.pop() ?? (cap <= MAX_SPARE_READ ? Buffer.allocUnsafe(cap) : undefined));
    const pr = this.provider
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
        const wire = this.dataKey ? sealChunk(this.dataKey, seq, e.id, stored) : stored;
        if (into && (!inInto || this.dataKey)) this.#recycle(into);
        else if (into) this.#base.set(seq, into);
        this.#cache.set(seq, wire);
        this.#bytes += wire.length;
        this.#evict(seq);
      })
      .catch((err: unknown) => this.hooks.failed(err))
      .finally(() => {
        this.#loading.delete(seq);
        this.hooks.settled();
      });
    this.#loading.set(seq, pr);
  }

  /** Forgets a chunk for good (a live session released it): it is never read again. */
  drop(seq: number): void {
    const b = this.#cache.get(seq);
    if (!b) return;
    this.#cache.delete(seq);
    this.#bytes -= b.length;
    const base = this.#base.get(seq);
    this.#base.delete(seq);
    if (base && !this.hooks.holdsBuffers()) this.#recycle(base);
  }

  #evict(justRead: number): void {
    const first = this.hooks.firstPass();
    for (const [s, b] of this.#cache) {
      if (this.#bytes <= this.#limit) break;
      if (s === justRead || (s >= first && s < first + PREFETCH_CHUNKS)) continue;
      this.#cache.delete(s);
      this.#bytes -= b.length;
      const base = this.#base.get(s);
      this.#base.delete(s);
      if (base && !this.hooks.holdsBuffers()) this.#recycle(base);
    }
  }

  #recycle(b: Buffer): void {
    if (b.length === this.#readCap && this.#spare.length < this.#maxSpare) this.#spare.push(b);
  }
}
