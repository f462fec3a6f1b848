/**
 * Chunk write plans (types.ts: ChunkWritePlan) in their flat form: the image paths as one
 * string and everything else as one array of numbers, so a plan crosses to the worker as
 * two copies. An object per file (500 in a chunk of small files) was serialized and built
 * again property by property, and left that many objects to both threads' collectors.
 *
 * Each write takes PLAN_FIELDS numbers, then its ranges as triples of file offset, chunk
 * offset and length. The worker (pool-worker.ts, writeJob) reads the same layout.
 */
import type { ChunkWritePlan, EntryMeta, PlanExtra } from './types.ts';

/** Create the file (O_EXCL). */
export const PLAN_CREATE = 1;
/** First remove a non-directory at its place. */
export const PLAN_CLEAR = 2;
/** Owner, mode and times follow (fields 1-5); set through the descriptor after the last write. */
export const PLAN_META = 4;
/** With PLAN_META: change the owner too. */
export const PLAN_CHOWN = 8;
/** Set the size after creating (field 6): the file ends in a hole. */
export const PLAN_TRUNCATE = 16;
/** A symlink to PlanExtra.symlink instead of a file (no ranges). */
export const PLAN_SYMLINK = 32;

/** Numbers per write before its ranges: flags, uid, gid, mode, atime, mtime, truncate, range count. */
export const PLAN_FIELDS = 8;
const RANGE_COUNT = 7;

export interface PlanWrite {
  /** The entry's image path: its place under the plan's prefix, and its name in messages. */
  rel: string;
  /** Its exact place when that is not prefix + rel: the bytes of a name that is not UTF-8. */
  path?: Buffer | undefined;
  create: boolean;
  clear: boolean;
  truncate?: number | undefined;
  symlink?: string | Buffer | undefined;
  meta?: EntryMeta | undefined;
}

/** Builds one plan: write() a file or symlink, then range() its ranges, then done(). */
export class PlanBuilder {
  #names: string[] = [];
  #nums: number[] = [];
  #extra: PlanExtra[] = [];
  #countAt = -1;

  get count(): number {
    return this.#names.length;
  }

  write(w: PlanWrite): void {
    const index = this.#names.length;
    this.#names.push(w.rel);
    let flags = (w.create ? PLAN_CREATE : 0) | (w.clear ? PLAN_CLEAR : 0);
    const m = w.meta;
    if (m) flags |= PLAN_META | (m.chown ? PLAN_CHOWN : 0);
    if (w.truncate !== undefined) flags |= PLAN_TRUNCATE;
    if (w.symlink !== undefined) flags |= PLAN_SYMLINK;
    this.#nums.push(
      flags,
      m ? m.uid : 0,
      m ? m.gid : 0,
      m ? m.mode : 0,
      m ? m.atime : 0,
      m ? m.mtime : 0,
      w.truncate ?? 0,
      0,
    );
    this.#countAt = this.#nums.length - PLAN_FIELDS + RANGE_COUNT;
    if (w.path !== undefined || w.symlink !== undefined) {
      this.#extra.push({
        index,
        ...(w.path !== undefined ? { path: w.path } : {}),
        ...(w.symlink !== undefined ? { symlink: w.symlink } : {}),
      });
    }
  }

  /** A range of the write last begun. */
  range(fileOffset: number, chunkOffset: number, length: number): void {
    if (this.#countAt < 0) throw new Error('a plan range needs a write first');
    this.#nums.push(fileOffset, chunkOffset, length);
    this.#nums[this.#countAt]!++;
  }

  done(prefix: string, root: boolean, umask: number): ChunkWritePlan {
    return {
      count: this.#names.length,
      names: this.#names.join('\0'),
      nums: new Float64Array(this.#nums),
      ...(this.#extra.length > 0 ? { extra: this.#extra } : {}),
      prefix,
      root,
      umask,
    };
  }
}

/** The writes of a plan, as PlanBuilder was given them: the layout read back on this side, for the tests. */
export function planWrites(plan: ChunkWritePlan): Array<PlanWrite & { ranges: number[] }> {
  const names = plan.count === 0 ? [] : plan.names.split('\0');
  const out: Array<PlanWrite & { ranges: number[] }> = [];
  let p = 0;
  for (let i = 0; i < plan.count; i++) {
    const n = plan.nums;
    const flags = n[p]!;
    const ranges = Array.from(n.subarray(p + PLAN_FIELDS, p + PLAN_FIELDS + 3 * n[p + RANGE_COUNT]!));
    const extra = plan.extra?.find((x) => x.index === i);
    out.push({
      rel: names[i]!,
      ...(extra?.path !== undefined ? { path: extra.path } : {}),
      create: (flags & PLAN_CREATE) !== 0,
      clear: (flags & PLAN_CLEAR) !== 0,
      ...((flags & PLAN_TRUNCATE) !== 0 ? { truncate: n[p + 6]! } : {}),
      ...(extra?.symlink !== undefined ? { symlink: extra.symlink } : {}),
      ...((flags & PLAN_META) !== 0
        ? {
            meta: {
              uid: n[p + 1]!,
              gid: n[p + 2]!,
              chown: (flags & PLAN_CHOWN) !== 0,
              mode: n[p + 3]!,
              atime: n[p + 4]!,
              mtime: n[p + 5]!,
            },
          }
        : {}),
      ranges,
    });
    p += PLAN_FIELDS + ranges.length;
  }
  return out;
}
