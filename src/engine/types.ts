import type { ChunkWriteOutcome, ChunkWritePlan } from '../image/types.ts';

/**
 * Restore is split into prepare / apply chunks in any order / finish so that the
 * same code restores from a local image file (chunks in image order) and from the
 * multicast transport (chunks in whatever order the network delivers them, with
 * repairs arriving late). A RestoreSink never sees unverified bytes: callers pass
 * only chunks whose content matched their id.
 */
export interface RestoreProgress {
  bytesDone: number;
  bytesTotal: number;
}

export interface RestoreSink {
  /** Every chunk this restore needs, for the chosen file set only, in the order that suits the target best. */
  readonly needed: ReadonlySet<string>;
  /** Bytes written so far and in all, for progress bars. */
  progress(): RestoreProgress;
  /** Create the target's structure: partition table, filesystems, directories, empty files. */
  prepare(): Promise<void>;
  /**
   * Write every piece of the target that this chunk's bytes fill. Each id is applied
   * at most once. `raw` is the caller's again once this settles: a sink must not keep it.
   */
  applyChunk(id: string, raw: Buffer): Promise<void>;
  /**
   * Optional: the files a pool worker may write itself once it has decoded chunk `id`
   * (ChunkSource.readChunkAndWrite), so decoding and writing both run on every core;
   * undefined means applyChunk it. Asked in the order chunks are handed over, before
   * any of them is written: a plan depends on nothing another chunk's plan does.
   */
  planChunk?(id: string): ChunkWritePlan | undefined;
  /** The worker carried out planChunk(id)'s plan: the chunk counts as applied (or its outcome is the error). */
  planDone?(id: string, outcome: ChunkWriteOutcome): void;
  /** Apply metadata, hard links, unmount. Rejects if any needed chunk was never applied. */
  finish(): Promise<void>;
  /** Undo what can be undone (unmount, detach loop devices); the target is left marked incomplete. */
  abort(reason: unknown): Promise<void>;
}
