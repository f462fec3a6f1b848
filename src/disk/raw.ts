/**
 * Raw volumes and boot areas: a byte range stored as its non-zero runs, and written
 * back with everything between the runs zeroed.
 */
import { open, stat, type FileHandle } from 'node:fs/promises';
import type { RestoreProgress, RestoreSink } from '../engine/types.ts';
import { writeFull } from '../file-write.ts';
import { CHUNK_SIZE, type ChunkSink, type RawExtent } from '../image/types.ts';
import { count, systemReason } from '../wording.ts';
import { DiskError } from './errors.ts';
import { runTool } from './exec.ts';
import { writeFailure } from './write-errors.ts';

/** Zero detection granularity: a 4 KiB block is either stored or known to be zero. */
export const ZERO_BLOCK = 4096;
const ZEROS = Buffer.alloc(ZERO_BLOCK);

async function readFully(fh: FileHandle, buf: Buffer, length: number, position: number, path: string) {
  let done = 0;
  while (done < length) {
    let bytesRead: number;
    try {
      ({ bytesRead } = await fh.read(buf, done, length - done, position + done));
    } catch (err) {
      throw new DiskError(
        'E_DISK_IO',
        `cannot read ${path} at byte ${position + done}: ${systemReason(err)}`,
        {
          path,
          position: position + done,
        },
      );
    }
    if (bytesRead === 0) {
      throw new DiskError(
        'E_DISK_IO',
        `${path} ends at byte ${position + done}, before the range being captured`,
        {
          path,
          position: position + done,
        },
      );
    }
    done += bytesRead;
  }
}

/** Non-zero runs of `buf[0..length)`, at ZERO_BLOCK granularity. */
export function nonZeroRuns(buf: Buffer, length: number): Array<{ start: number; end: number }> {
  const runs: Array<{ start: number; end: number }> = [];
  let runStart = -1;
  for (let pos = 0; pos < length; pos += ZERO_BLOCK) {
    const end = Math.min(pos + ZERO_BLOCK, length);
    const zero = buf
      .subarray(pos, end)
      .equals(end - pos === ZERO_BLOCK ? ZEROS : ZEROS.subarray(0, end - pos));
    if (!zero && runStart < 0) runStart = pos;
    if (zero && runStart >= 0) {
      runs.push({ start: runStart, end: pos });
      runStart = -1;
    }
  }
  if (runStart >= 0) runs.push({ start: runStart, end: length });
  return runs;
}

export interface RawCaptureOptions {
  /** Called after each piece with bytes scanned so far. */
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
  /** Added to every extent offset (0 keeps them relative to `offset`). */
  extentBase?: number;
  /**
   * [start, end) ranges relative to `offset` that hold nothing worth keeping (a
   * filesystem's unused blocks): not read, and treated as zero.
   */
  skip?: ReadonlyArray<readonly [number, number]>;
  /** Each extent as soon as its chunk is named (a live capture tells receivers where it goes). */
  onExtent?: (extent: RawExtent) => void;
}

/**
 * Captures bytes [offset, offset+length) of a device or file. Each non-zero run within
 * a CHUNK_SIZE window becomes one chunk; zero runs are not stored.
 */
export async function captureRaw(
  path: string,
  offset: number,
  length: number,
  sink: ChunkSink,
  opts: RawCaptureOptions = {},
): Promise<RawExtent[]> {
  const fh = await open(path, 'r').catch((err: unknown) => {
    throw new DiskError('E_DISK_IO', `cannot open ${path}: ${systemReason(err)}`, { path }, { cause: err });
  });
  const extents: RawExtent[] = [];
  const base = opts.extentBase ?? 0;
  try {
    // Two buffers: the next window is read while the current one's chunks are stored.
    const bufs = [Buffer.allocUnsafe(CHUNK_SIZE), Buffer.allocUnsafe(CHUNK_SIZE)];
    let pos = 0;
    let pending: Promise<void> | undefined;
    let which = 0;
    const skip = opts.skip ?? [];
    let k = 0;
    while (pos < length) {
      const n = Math.min(CHUNK_SIZE, length - pos);
      // Skipped ranges in this window are zeroed instead of read; a window wholly inside one is not read at all.
      while (k < skip.length && skip[k]![1] <= pos) k++;
      const holes: Array<[number, number]> = [];
      for (let j = k; j < skip.length && skip[j]![0] < pos + n; j++) {
        holes.push([Math.max(skip[j]![0], pos) - pos, Math.min(skip[j]![1], pos + n) - pos]);
      }
      if (holes.length === 1 && holes[0]![0] === 0 && holes[0]![1] === n) {
        pos += n;
        opts.onProgress?.(pos, length);
        continue;
      }
      const buf = bufs[which]!;
      which ^= 1;
      await readFully(fh, buf, n, offset + pos, path);
      for (const [a, b] of holes) buf.fill(0, a, b);
      await pending;
      const windowStart = pos;
      pending = (async () => {
        for (const r of nonZeroRuns(buf, n)) {
          // putChunk may keep the buffer until durable; hand it a copy so the window can be reused.
          const ref = await sink.putChunk(Buffer.from(buf.subarray(r.start, r.end)));
          const x = { offset: base + windowStart + r.start, length: r.end - r.start, chunk: ref.id };
          extents.push(x);
          opts.onExtent?.(x);
        }
      })();
      // Observed by the next await; this only keeps a read error from leaving it unhandled.
      pending.catch(() => {});
      pos += n;
      opts.onProgress?.(pos, length);
    }
    await pending;
  } finally {
    await fh.close();
  }
  return extents;
}

export interface RawRestoreOptions {
  /** True only when the range was just created as a hole in a new file, so it already reads as zeros. */
  fresh?: boolean;
  /** Used in messages: "partition 3", "boot area at 0". */
  label?: string;
  /** Chunks an interrupted run of this same restore already wrote (its gaps were zeroed before the first). */
  resume?: ReadonlySet<string>;
}

/**
 * A RestoreSink writing `extents` (whose offsets are relative to `extentBase`) into
 * [offset, offset+length) of `target`, with every byte not covered by an extent zeroed.
 */
export function createRawRestore(
  target: string,
  offset: number,
  length: number,
  extents: readonly RawExtent[],
  extentBase: number,
  opts: RawRestoreOptions = {},
): RestoreSink {
  const label = opts.label ?? `range ${offset}+${length}`;
  const byChunk = new Map<string, RawExtent[]>();
  let bytesTotal = 0;
  for (const x of extents) {
    const abs = extentBase + x.offset;
    if (abs < offset || abs + x.length > offset + length) {
      throw new DiskError('E_DISK_TARGET', `${label}: extent at ${abs}+${x.length} lies outside its range`, {
        chunk: x.chunk,
      });
    }
    const list = byChunk.get(x.chunk) ?? [];
    list.push(x);
    byChunk.set(x.chunk, list);
    bytesTotal += x.length;
  }
  const needed = new Set(byChunk.keys());
  const applied = new Set<string>();
  let bytesDone = 0;
  for (const id of opts.resume ?? []) {
    const list = byChunk.get(id);
    if (!list) continue;
    applied.add(id);
    for (const x of list) bytesDone += x.length;
  }
  let fh: FileHandle | undefined;

  async function zeroGaps(handle: FileHandle, isBlock: boolean): Promise<void> {
    const sorted = [...extents].sort((a, b) => a.offset - b.offset);
    const gaps: Array<[number, number]> = [];
    let cur = offset;
    for (const x of sorted) {
      const abs = extentBase + x.offset;
      if (abs > cur) gaps.push([cur, abs]);
      cur = Math.max(cur, abs + x.length);
    }
    if (cur < offset + length) gaps.push([cur, offset + length]);
    const zeros = Buffer.alloc(Math.min(CHUNK_SIZE, length));
    // Large gaps are zeroed without writing them: blkdiscard --zeroout on a device, a punched
    // hole in a file. Small gaps, and targets that support neither, get written zeros.
    const tool = isBlock ? 'blkdiscard' : 'fallocate';
    let toolWorks = true;
    for (const [from, to] of gaps) {
      if (toolWorks && to - from >= 1024 * 1024 && from % 512 === 0 && (to - from) % 512 === 0) {
        const args = isBlock ? ['--zeroout'] : ['--punch-hole'];
        args.push('--offset', String(from), '--length', String(to - from), target);
        const r = await runTool(tool, args).catch(() => ({ status: -1 }));
        if (r.status === 0) continue;
        toolWorks = false;
      }
      for (let p = from; p < to; p += zeros.length) {
        await writeFull(handle, zeros, 0, Math.min(zeros.length, to - p), p).catch(async (err: unknown) => {
          throw await writeFailure(target, `${label}: zeroing byte ${p}`, err);
        });
      }
    }
  }

  return {
    needed,
    progress(): RestoreProgress {
      return { bytesDone, bytesTotal };
    },
    async prepare() {
      const cannot = (err: unknown) =>
        new DiskError(
          'E_DISK_IO',
          `cannot open ${target} for writing: ${systemReason(err)}`,
          { path: target },
          { cause: err },
        );
      const st = await stat(target).catch((err: unknown) => {
        throw cannot(err);
      });
      fh = await open(target, 'r+').catch((err: unknown) => {
        throw cannot(err);
      });
      if (!opts.fresh && !opts.resume) await zeroGaps(fh, st.isBlockDevice());
    },
    async applyChunk(id, raw) {
      const list = byChunk.get(id);
      if (!list || !fh) return;
      if (applied.has(id)) return;
      for (const x of list) {
        if (raw.length !== x.length) {
          throw new DiskError(
            'E_DISK_TARGET',
            `${label}: chunk ${id} holds ${raw.length} bytes but the extent at ${x.offset} needs ${x.length}`,
            { chunk: id },
          );
        }
        try {
          await writeFull(fh, raw, 0, x.length, extentBase + x.offset);
        } catch (err) {
          throw await writeFailure(target, `${label}: writing byte ${extentBase + x.offset}`, err);
        }
        bytesDone += x.length;
      }
      applied.add(id);
    },
    async finish() {
      const missing = [...needed].filter((id) => !applied.has(id));
      if (missing.length > 0) {
        throw new DiskError(
          'E_DISK_INCOMPLETE',
          `${label}: ${count(missing.length, 'chunk')} never arrived, e.g. ${missing[0]}`,
          {
            missing: missing.length,
          },
        );
      }
      if (fh) {
        // This descriptor was opened before the first write: its fsync reports any of them that failed on write-back.
        await fh.sync().catch(async (err: unknown) => {
          throw await writeFailure(target, `${label}: flushing it`, err);
        });
        await fh.close();
        fh = undefined;
      }
    },
    async abort() {
      if (fh) await fh.close().catch(() => {});
      fh = undefined;
    },
  };
}
