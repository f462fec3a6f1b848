/**
 * The ChunkSink methods that sinks with slots of shared memory (the upload to a server, the live
 * capture) spell the same way: a chunk is copied into a free slot, then named and compressed
 * there by the pool and kept or sent by the sink. A sink gives its slots, its checks and what it
 * does with a new chunk; this base keeps the order deduplication depends on (a put registers
 * its id before it waits for a slot, so a concurrent put of the same content finds it).
 */
import { chunkId } from './codec.ts';
import { slotLease } from './lease.ts';
import { CHUNK_SIZE, type ChunkLease, type ChunkRef, type ChunkSink, type QueuedChunk } from './types.ts';

export abstract class SlotSink implements ChunkSink {
  /** Every id kept or on its way, settling once it is kept (or never will be); kept ones stay, for dedup. */
  protected readonly known = new Map<string, Promise<void>>();

  /** Waits for a free slot; throws once the sink takes no more chunks. */
  protected abstract acquireSlot(): Promise<number>;
  protected abstract slotBuffer(slot: number): Buffer;
  protected abstract releaseSlot(slot: number): void;
  /** Throws when the sink takes no more chunks (failed, committed, closed). */
  protected abstract check(): void;
  /** The pipelined path: the chunk in `slot` is named off the caller's thread. */
  protected abstract queueSlot(slot: number, rawLength: number): QueuedChunk;
  /**
   * Compresses the new chunk `id` in `slot` and keeps or sends it, giving the slot back. Never
   * rejects: a failure goes to the sink, which surfaces it from its next call.
   */
  protected abstract storeSlot(slot: number, id: string, rawLength: number): Promise<void>;
  /** Counts a put whose content the sink already had. */
  protected abstract countDeduplicated(): void;

  async putChunk(raw: Buffer): Promise<ChunkRef> {
    this.checkChunk(raw);
    // Named here, before any compression, so a repeated chunk (raw disk blocks) costs only its hash.
    const id = chunkId(raw);
    const ref = { id, rawLength: raw.length };
    if (this.known.has(id)) {
      this.countDeduplicated();
      return ref;
    }
    let started!: () => void;
    const gate = new Promise<void>((resolve) => (started = resolve));
    let slot = -1;
    this.known.set(
      id,
      gate.then(() => (slot < 0 ? undefined : this.storeSlot(slot, id, raw.length))),
    );
    try {
      slot = await this.acquireSlot();
      raw.copy(this.slotBuffer(slot));
    } catch (err) {
      this.known.delete(id);
      throw err;
    } finally {
      started();
    }
    return ref;
  }

  async queueChunk(raw: Buffer): Promise<QueuedChunk> {
    this.checkChunk(raw);
    const slot = await this.acquireSlot();
    raw.copy(this.slotBuffer(slot));
    return this.queueSlot(slot, raw.length);
  }

  async leaseChunk(): Promise<ChunkLease> {
    this.check();
    const slot = await this.acquireSlot();
    return slotLease({
      buf: this.slotBuffer(slot),
      release: () => this.releaseSlot(slot),
      check: () => this.check(),
      queue: (length) => this.queueSlot(slot, length),
    });
  }

  protected checkChunk(raw: Buffer): void {
    this.check();
    if (!Buffer.isBuffer(raw)) throw new TypeError('a chunk must be a Buffer');
    if (raw.length > CHUNK_SIZE) throw new RangeError(`a chunk of ${raw.length} bytes exceeds ${CHUNK_SIZE}`);
  }
}
