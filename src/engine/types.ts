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
  /** Apply metadata, hard links, unmount. Rejects if any needed chunk was never applied. */
  finish(): Promise<void>;
  /** Undo what can be undone (unmount, detach loop devices); the target is left marked incomplete. */
  abort(reason: unknown): Promise<void>;
}
