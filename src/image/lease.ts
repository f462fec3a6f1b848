/**
 * A ChunkLease over one slot of a sink's shared memory: the rules every sink that lends its
 * slots keeps (one queue or release per lease, a length within a chunk, nothing queued into a
 * failed or closed sink), so the image writer and the upload sink do not each spell them out.
 */
import { CHUNK_SIZE, type ChunkLease, type QueuedChunk } from './types.ts';

export interface LeasedSlot {
  buf: Buffer;
  /** Gives the slot back to the sink. */
  release(): void;
  /** Throws when the sink can take no more chunks (failed, committed, aborted). */
  check(): void;
  /** Hands the slot's first `length` bytes to the sink as one chunk. */
  queue(length: number): QueuedChunk;
}

export function slotLease(slot: LeasedSlot): ChunkLease {
  let held = true;
  const giveBack = (): void => {
    if (!held) throw new Error('a chunk lease was already queued or released');
    held = false;
  };
  return {
    buf: slot.buf,
    queue: (length: number) => {
      giveBack();
      if (!Number.isSafeInteger(length) || length < 0 || length > CHUNK_SIZE) {
        slot.release();
        throw new RangeError(`a chunk of ${length} bytes is outside 0..${CHUNK_SIZE}`);
      }
      try {
        slot.check();
      } catch (err) {
        slot.release();
        throw err;
      }
      return slot.queue(length);
    },
    release: () => {
      giveBack();
      slot.release();
    },
  };
}
