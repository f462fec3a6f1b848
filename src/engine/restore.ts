/**
 * `img restore`: put an image onto a directory, a whole disk (block device or disk-image
 * file) or a single partition. The target is checked completely (kind, size, nothing
 * mounted) before anything is written, so a refused restore leaves it untouched.
 */
import { open, readdir, realpath, stat, unlink } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { DiskError } from '../disk/errors.ts';
import {
  assertNotMounted,
  attachLoop,
  deviceSize,
  detachLoop,
  detachLoopVerified,
  isBlockDevice,
  sectorSizeOf,
} from '../disk/device.ts';
import { runTool } from '../disk/exec.ts';
import {
  makeFilesystem,
  openTreeForWriting,
  releaseDeadRuns,
  writesInPlace,
  type TreeAccess,
} from '../disk/filesystem.ts';
import { describeTargetContents } from '../disk/contents.ts';
import { fitLayout, layoutNeeds } from '../disk/fit-layout.ts';
import { extMkfsInodes } from '../disk/fs-space.ts';
import { writeFittedTable } from '../disk/table-write.ts';
import { createRawRestore } from '../disk/raw.ts';
import { spaceProblem, syncChecked, syncFilesystemChecked, writeFailure } from '../disk/write-errors.ts';
import { mergeRanges, newLayoutZones, oldLayoutZones, zeroRanges, type Range } from '../disk/stale.ts';
import { InterruptedError } from '../errors.ts';
import { ImageError } from '../image/errors.ts';
import { checkFileset, includedEntries } from '../image/fileset.ts';
import { CompressPool } from '../image/pool.ts';
import { ImageReader } from '../image/reader.ts';
import {
  CHUNK_SIZE,
  type ChunkSource,
  type ChunkWriteOutcome,
  type DiskLayout,
  type FileVolume,
  type Manifest,
  type RawVolume,
  type Volume,
} from '../image/types.ts';
import { makeFolder } from '../volume/files/paths.ts';
import { createTreeRestore } from '../volume/files/restore.ts';
import { count, systemReason } from '../wording.ts';
import type { RestoreProgress, RestoreSink } from './types.ts';

/** What a target holds now; the receive path prints it before overwriting a disk it consented to by joining. */
export { describeTargetContents, type TargetContents } from '../disk/contents.ts';

export interface RestoreOptions {
  fileset: number;
  /** Restore into a non-empty directory. */
  force?: boolean;
  /**
   * Consent to destroy what a disk or partition target holds (a partition table,
   * filesystems, other signatures; describeTargetContents says what): without it such
   * a target is refused with E_DISK_NOT_EMPTY, naming its contents. `img restore` gives
   * it with --force; a multicast receiver consents by joining and prints the contents.
   * Not needed when resuming, nor for a target with nothing on it.
   */
  overwrite?: boolean;
  /** Non-fatal problems (e.g. owners a vfat target cannot keep). */
  onWarning?: (message: string) => void;
  /**
   * The target holds an interrupted restore of this same manifest and file set, whose
   * prepare() completed and which wrote these chunks: no filesystem is made again, the
   * files found are kept, and these chunks count as written (see DescribedSink.resumed).
   */
  resume?: ReadonlySet<string>;
  /** Stops the restore between chunks: the target is left as an aborted restore leaves it. */
  signal?: AbortSignal;
  /**
   * A disk or partition target that does not exist may be created as a new disk-image
   * file (in an existing folder, never under /dev). Without it a missing target, most
   * often a mistyped device name, is refused.
   */
  create?: boolean;
  /**
   * A whole-disk image keeps its partition sizes on a target of another size (a larger
   * disk's extra space stays unused, a smaller disk must hold the image's layout).
   * Without it the layout is fitted to the target (disk/fit-layout.ts): the last ext
   * volume grows to the end, or the ext volumes shrink as far as their files allow. A
   * resume and a read-back verification must be given the same choice.
   */
  keepSizes?: boolean;
  /**
   * File volumes (by index) whose files a live restore put in a staging folder (vfat where
   * the kernel cannot mount it, live-restore.ts): written into the filesystem from there
   * like any staging folder, and `resume` counts for them.
   */
  staged?: ReadonlyMap<number, string>;
  /** Per file volume (by index): files a live restore finished itself (TreeRestoreOptions.complete). */
  complete?: ReadonlyMap<number, ReadonlySet<string>>;
}

export type DescribedSink = RestoreSink & {
  /**
   * Does to the target what prepare() does before it writes any volume (creates it, or
   * clears the old layout's signatures and marks the disk incomplete) and nothing more. A
   * live restore (live-restore.ts) then writes the volumes as the data streams, and at
   * the end restores the complete manifest onto them as a resume. abort() undoes it as
   * it undoes a prepare().
   */
  clear(): Promise<void>;
  describe(): string;
  /**
   * The chunks this restore takes as already written, when resuming: the resume set
   * less what must be written again (boot areas, which an interrupted run may have
   * marked incomplete).
   */
  readonly resumed: ReadonlySet<string>;
  /**
   * Whether an aborted run leaves its written chunks in place for a resume: true for a
   * folder and a whole disk (abort blanks only the partition table, which a resume
   * writes again), false for a single filesystem, whose start abort wipes.
   */
  readonly resumableAfterAbort: boolean;
  /** What an aborted run leaves on the target, for the message of a stopped restore. */
  readonly leftAfterAbort: string;
  /** Whether the restore creates the target as a new disk-image file (RestoreOptions.create). */
  readonly createsFile: boolean;
};

const MiB = 1024 * 1024;

function mib(n: number): string {
  return `${(n / (1024 * 1024)).toFixed(1)} MiB`;
}

function tooSmall(target: string, have: number, need: number, what: string, why?: string): DiskError {
  return new DiskError(
    'E_DISK_TOO_SMALL',
    `target ${target} holds ${have} bytes (${mib(have)}) but ${what} needs ${need} bytes (${mib(need)}): ${need - have} bytes (${mib(need - have)}) short${why ? `; ${why}` : ''}`,
    { target, targetBytes: have, neededBytes: need, shortBytes: need - have },
  );
}

/** Chunk ids a file volume's included entries need, in entry order, and their byte total. */
function fileVolumeNeeds(volume: FileVolume, fileset: number): { needed: Set<string>; bytes: number } {
  const needed = new Set<string>();
  let bytes = 0;
  for (const e of includedEntries(volume.entries, fileset)) {
    for (const x of e.extents ?? []) {
      needed.add(x.chunk);
      bytes += x.length;
    }
  }
  return { needed, bytes };
}

interface Held {
  dir: string;
  /** `commit` false when the restore is being aborted. */
  release(commit: boolean): Promise<void>;
  /** See TreeAccess.flushEarly. */
  flushEarly?: () => Promise<void>;
}

interface Place {
  /** Where the filesystem goes; `release` undoes what `acquire` set up. */
  acquire(): Promise<Held>;
}

/** A directory that must exist (created if missing). */
function directoryPlace(dir: string): Place {
  return {
    async acquire() {
      makeFolder(dir);
      return {
        dir,
        // Files written into a folder are only in the page cache until its filesystem is flushed.
        release: async (commit) => {
          if (commit) await syncFilesystemChecked(dir, dir, 'the restored files');
        },
      };
    },
  };
}

/** A fresh filesystem on a byte range of a device or file (or, resuming, the one made before), mounted read-write. */
function filesystemPlace(
  target: string,
  volume: FileVolume,
  offset: number,
  size: number,
  resuming: boolean,
  fileset: number,
  staged: string | undefined,
): Place {
  const what =
    volume.partition !== undefined
      ? `partition ${volume.partition} (${volume.fs.type})`
      : `the ${volume.fs.type} filesystem`;
  return {
    async acquire() {
      const loop = await attachLoop(target, { offset, size });
      let tree: TreeAccess;
      try {
        if (!resuming) {
          const inodes = extMkfsInodes(volume, fileset, size);
          await makeFilesystem(loop, volume.fs, inodes ? { inodes } : {}).catch(async (err: unknown) => {
            // mkfs says only "Input/output error"; a full filesystem under the target is the likely why.
            throw (await spaceProblem(loop)) ? await writeFailure(target, what, err) : err;
          });
        }
        tree = await openTreeForWriting(loop, volume.fs, { target, what }, staged);
      } catch (err) {
        await detachLoop(loop).catch(() => {});
        throw err;
      }
      return {
        dir: tree.dir,
        ...(tree.flushEarly ? { flushEarly: tree.flushEarly } : {}),
        async release(commit) {
          try {
            await tree.close(commit);
            // Also what reached the loop device without the filesystem (mkfs, mtools) must be written back.
            if (commit) await syncChecked(loop, target, what);
          } catch (err) {
            await detachLoop(loop).catch(() => {});
            throw err;
          }
          if (commit) await detachLoopVerified(loop);
          else await detachLoop(loop);
        },
      };
    },
  };
}

/**
 * Bytes a mounted file volume gets between two early flushes (one at a time, each a `sync -f`
 * in the background). Without them the kernel starts writing a restore's files back only at
 * the final, checked flush (its background threshold is a share of the memory, often more than
 * the whole volume), and the restore then waits for every byte to reach the disk with its CPUs
 * idle. On the workstation disk of bench:image (a disk-image file on this 2-core machine) the
 * restore took a median 3.38 s with them against 3.85 s without (7 runs each, alternating); 32
 * and 128 MiB did no better. The final flush still checks every write.
 */
export const EARLY_FLUSH_BYTES = 64 * MiB;

/** Writes a file volume's tree into a place; `needed` is known before the place exists. */
function fileVolumeSink(volume: FileVolume, place: Place, opts: RestoreOptions): RestoreSink {
  const { needed, bytes } = fileVolumeNeeds(volume, opts.fileset);
  let inner: RestoreSink | undefined;
  let held: Held | undefined;
  const fsType = volume.fs.type;
  // The page cache is written back while later chunks are decoded (see EARLY_FLUSH_BYTES).
  let flushedAt = 0;
  let flushing: Promise<void> | undefined;
  const flushEarly = () => {
    if (!held?.flushEarly || flushing || !inner) return;
    const done = inner.progress().bytesDone;
    if (done - flushedAt < EARLY_FLUSH_BYTES) return;
    flushedAt = done;
    flushing = held
      .flushEarly()
      .catch(() => {})
      .finally(() => (flushing = undefined));
  };
  return {
    needed,
    progress(): RestoreProgress {
      return inner ? inner.progress() : { bytesDone: 0, bytesTotal: bytes };
    },
    async prepare() {
      held = await place.acquire();
      inner = await createTreeRestore(volume.entries, held.dir, {
        fileset: opts.fileset,
        fsType,
        ...(opts.onWarning ? { onWarning: opts.onWarning } : {}),
        ...(opts.resume ? { resume: opts.resume } : {}),
        ...(opts.resume && opts.complete?.has(volume.index)
          ? { complete: opts.complete.get(volume.index)! }
          : {}),
      });
      const unknown = [...inner.needed].find((id) => !needed.has(id));
      if (unknown) {
        throw new DiskError(
          'E_DISK_TARGET',
          `volume ${volume.index}: the file restore asks for chunk ${unknown}, which the image does not list for file set ${opts.fileset}`,
          { chunk: unknown },
        );
      }
      await inner.prepare();
    },
    async applyChunk(id, raw) {
      if (inner?.needed.has(id)) await inner.applyChunk(id, raw);
      flushEarly();
    },
    planChunk(id) {
      return inner?.needed.has(id) ? inner.planChunk?.(id) : undefined;
    },
    planDone(id, outcome) {
      inner!.planDone!(id, outcome);
      flushEarly();
    },
    async finish() {
      if (!inner || !held)
        throw new DiskError('E_DISK_INCOMPLETE', `volume ${volume.index} was never prepared`);
      await flushing;
      await inner.finish();
      const h = held;
      held = undefined;
      await h.release(true);
    },
    async abort(reason) {
      await flushing;
      await inner?.abort(reason).catch(() => {});
      const h = held;
      held = undefined;
      await h?.release(false).catch(() => {});
    },
  };
}

function rawVolumeSink(
  target: string,
  volume: RawVolume,
  offset: number,
  fresh: boolean,
  resume: ReadonlySet<string> | undefined,
): RestoreSink {
  return createRawRestore(target, offset, volume.sizeBytes, volume.extents, offset, {
    fresh,
    label: volume.partition !== undefined ? `partition ${volume.partition}` : `volume ${volume.index}`,
    ...(resume ? { resume } : {}),
  });
}

interface Composite {
  children: RestoreSink[];
  describe: string;
  /** See DescribedSink.resumableAfterAbort and leftAfterAbort. */
  resumableAfterAbort: boolean;
  leftAfterAbort: string;
  /** Runs before anything is written; last chance to refuse. */
  before?: () => Promise<void>;
  /** Runs after the children at index < split finished and before the others finish. */
  between?: { split: number; run: () => Promise<void> };
  after?: () => Promise<void>;
  /** Runs after the children aborted, only if `before` had succeeded (the target was being written). */
  onAbort?: () => Promise<void>;
  /** Chunks taken as written by an interrupted run (the children were built with the same set). */
  resume?: ReadonlySet<string>;
  /** How many leading children get their chunks after all the others'. */
  writeLast?: number;
  /** See DescribedSink.createsFile. */
  createsFile?: boolean;
}

/** Bytes of boot-area chunks a composite holds back until the rest of the disk is written. */
const MAX_DEFERRED = 64 * 1024 * 1024;

/** Routes each chunk to every child that needs it; finishes only when all needed chunks arrived. */
function compositeSink(c: Composite): DescribedSink {
  // Chunk order: the children from index writeLast on, then the first ones (a disk's boot
  // areas, so its partition table appears only once everything it describes is written).
  const needed = new Set<string>();
  const first = c.writeLast ?? 0;
  for (const child of [...c.children.slice(first), ...c.children.slice(0, first)])
    for (const id of child.needed) needed.add(id);
  const applied = new Set<string>([...(c.resume ?? [])].filter((id) => needed.has(id)));
  const resumed: ReadonlySet<string> = new Set(applied);
  let writing = false;
  let prepared = false;
  const deferred = new Map<string, Buffer>();
  let deferredBytes = 0;
  const writeDeferred = async (): Promise<void> => {
    for (const [id, raw] of deferred) {
      for (const child of c.children) if (child.needed.has(id)) await child.applyChunk(id, raw);
      applied.add(id);
    }
    deferred.clear();
    deferredBytes = 0;
  };
  return {
    needed,
    resumed,
    resumableAfterAbort: c.resumableAfterAbort,
    leftAfterAbort: c.leftAfterAbort,
    createsFile: !!c.createsFile,
    describe: () => c.describe,
    async clear() {
      await c.before?.();
      writing = true;
    },
    progress() {
      let bytesDone = 0;
      let bytesTotal = 0;
      for (const child of c.children) {
        const p = child.progress();
        bytesDone += p.bytesDone;
        bytesTotal += p.bytesTotal;
      }
      return { bytesDone, bytesTotal };
    },
    async prepare() {
      await c.before?.();
      writing = true;
      for (const child of c.children) await child.prepare();
      prepared = true;
    },
    async applyChunk(id, raw) {
      if (!prepared) {
        throw new DiskError(
          'E_DISK_TARGET',
          `restore to ${c.describe}: chunk ${id} arrived before prepare()`,
          {
            chunk: id,
          },
        );
      }
      if (applied.has(id) || !needed.has(id)) return;
      // Chunks for the write-last children alone (a disk's boot areas) that arrive early (a
      // multicast sends in image order) wait here, within a bound, until everything else is written.
      const early = c.children.findIndex((child) => child.needed.has(id)) < first;
      const onlyEarly = early && c.children.slice(first).every((child) => !child.needed.has(id));
      if (
        onlyEarly &&
        applied.size + deferred.size < needed.size - 1 &&
        deferredBytes + raw.length <= MAX_DEFERRED
      ) {
        deferred.set(id, Buffer.from(raw));
        deferredBytes += raw.length;
        return;
      }
      for (const child of c.children) if (child.needed.has(id)) await child.applyChunk(id, raw);
      applied.add(id);
      // The last of the others is written: what waited goes now.
      if (deferred.size > 0 && applied.size + deferred.size === needed.size) await writeDeferred();
    },
    // A chunk one child alone needs can be written by the worker that decodes it.
    planChunk(id) {
      if (!prepared || applied.has(id) || !needed.has(id)) return undefined;
      const takers = c.children.filter((child) => child.needed.has(id));
      return takers.length === 1 ? takers[0]!.planChunk?.(id) : undefined;
    },
    planDone(id, outcome) {
      c.children.find((child) => child.needed.has(id))!.planDone!(id, outcome);
      applied.add(id);
    },
    async finish() {
      if (deferred.size > 0 && applied.size + deferred.size === needed.size) await writeDeferred();
      const missing = [...needed].filter((id) => !applied.has(id) && !deferred.has(id));
      if (missing.length > 0) {
        throw new DiskError(
          'E_DISK_INCOMPLETE',
          `restore to ${c.describe} is incomplete: ${missing.length} of ${count(needed.size, 'chunk')} never arrived (first: ${missing[0]})`,
          { missing: missing.length, first: missing[0] },
        );
      }
      for (let i = 0; i < c.children.length; i++) {
        if (c.between && i === c.between.split) await c.between.run();
        await c.children[i]!.finish();
      }
      if (c.between && c.between.split >= c.children.length) await c.between.run();
      await c.after?.();
    },
    async abort(reason) {
      for (const child of c.children) await child.abort(reason).catch(() => {});
      if (writing) await c.onAbort?.().catch(() => {});
    },
  };
}

type TargetKind =
  { kind: 'directory'; exists: boolean } | { kind: 'device' | 'file'; exists: boolean; size: number };

async function inspectTarget(target: string): Promise<TargetKind> {
  let st;
  try {
    st = await stat(target);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { kind: 'file', exists: false, size: 0 };
    throw new DiskError(
      'E_DISK_IO',
      `cannot access ${target}: ${systemReason(err)}`,
      { target, errno: (err as NodeJS.ErrnoException).code },
      { cause: err },
    );
  }
  if (st.isDirectory()) return { kind: 'directory', exists: true };
  if (st.isBlockDevice()) return { kind: 'device', exists: true, size: await deviceSize(target) };
  if (st.isFile()) return { kind: 'file', exists: true, size: st.size };
  throw new DiskError('E_DISK_TARGET', `${target} is not a directory, block device or regular file`, {
    target,
  });
}

function singleFileVolume(manifest: Manifest, target: string): FileVolume {
  const files = manifest.volumes.filter((v): v is FileVolume => v.kind === 'files');
  if (files.length !== 1 || manifest.volumes.length !== 1) {
    throw new DiskError(
      'E_DISK_TARGET',
      `${target} is a directory, but the image holds ${count(manifest.volumes.length, 'volume')} (${files.length} with files); only an image of exactly one file volume restores into a directory`,
      { target },
    );
  }
  return files[0]!;
}

/** Builds the sink for restoring `manifest` onto `target`; checks the target but writes nothing yet. */
export async function openRestore(
  manifest: Manifest,
  target: string,
  opts: RestoreOptions,
): Promise<DescribedSink> {
  checkFileset(opts.fileset);
  await releaseDeadRuns(opts.onWarning);
  const t = await inspectTarget(target);
  const dirImage =
    !manifest.disk &&
    manifest.volumes.length === 1 &&
    manifest.volumes[0]?.kind === 'files' &&
    manifest.volumes[0].fs.type === 'directory';

  if (t.kind === 'directory' || (!t.exists && dirImage)) {
    if (!t.exists) refuseUnderDev(target, 'a folder');
    const volume = singleFileVolume(manifest, target);
    if (t.exists && !opts.force && !opts.resume && (await readdir(target)).length > 0) {
      throw new DiskError(
        'E_DISK_TARGET',
        `target directory ${target} is not empty (restore with --force to write into it anyway)`,
        { target },
      );
    }
    return compositeSink({
      children: [fileVolumeSink(volume, directoryPlace(target), opts)],
      describe: `directory ${target}`,
      resumableAfterAbort: true,
      leftAfterAbort: `${target} holds an incomplete restore; restore again to complete it`,
      ...(opts.resume ? { resume: opts.resume } : {}),
    });
  }

  const sink = await openDiskTarget(manifest, target, t, opts);
  if (t.exists && !opts.resume && !opts.overwrite) {
    const contents = await describeTargetContents(target);
    if (!contents.empty) {
      throw new DiskError(
        'E_DISK_NOT_EMPTY',
        `${contents.summary}; restoring ${sink.describe()} would destroy it: restore with --force to overwrite it`,
        { target, contents },
      );
    }
  }
  return sink;
}

/** openRestore for a disk or partition target (device or disk-image file). */
async function openDiskTarget(
  manifest: Manifest,
  target: string,
  t: Extract<TargetKind, { kind: 'device' | 'file' }>,
  opts: RestoreOptions,
): Promise<DescribedSink> {
  const fresh = !t.exists;
  const blockDev = t.kind === 'device';
  const label = `${blockDev ? 'device' : 'file'} ${target}`;
  if (fresh && opts.resume) {
    throw new DiskError('E_DISK_RESUME', `cannot resume a restore onto ${target}: it does not exist`, {
      target,
    });
  }
  if (fresh) await checkNewFile(target, !!opts.create);
  if (opts.resume) {
    // A volume written through a staging folder lost it with the interrupted run: it is restored again in full.
    const again = new Set<string>();
    for (const v of manifest.volumes) {
      if (opts.staged?.has(v.index)) continue;
      if (v.kind === 'files' && v.fs.type !== 'directory' && !(await writesInPlace(v.fs.type))) {
        for (const id of fileVolumeNeeds(v, opts.fileset).needed) again.add(id);
      }
    }
    if (again.size > 0) opts = { ...opts, resume: new Set([...opts.resume].filter((id) => !again.has(id))) };
  }
  if (t.exists) await assertNotMounted(target, 'restore target');

  if (manifest.disk) {
    // Partition tables count in sectors: a table made for 512-byte sectors is wrong on a 4Kn disk.
    if (blockDev) {
      const ss = await sectorSizeOf(target);
      if (ss !== manifest.disk.sectorSize) {
        throw new DiskError(
          'E_DISK_TARGET',
          `${label} has ${ss}-byte sectors but the image's partition table was made for ${manifest.disk.sectorSize}-byte sectors`,
          { target, sectorSize: ss, imageSectorSize: manifest.disk.sectorSize },
        );
      }
    }
    return diskSink(manifest, manifest.disk, target, t.exists ? t.size : 0, fresh, label, opts);
  }

  if (manifest.volumes.length !== 1) {
    throw new DiskError(
      'E_DISK_TARGET',
      `the image has no disk layout and ${count(manifest.volumes.length, 'volume')}; it cannot be restored onto ${label}`,
      { target },
    );
  }
  const volume = manifest.volumes[0]!;
  if (volume.kind === 'files' && volume.fs.type === 'directory') {
    throw new DiskError(
      'E_DISK_TARGET',
      `the image holds a directory tree without a filesystem; restore it into a directory, not onto ${label}`,
      { target },
    );
  }
  const need = volume.kind === 'raw' ? volume.sizeBytes : (volume.fs.usedBytes ?? 0);
  const createSize = volume.sizeBytes ?? need;
  if (t.exists && t.size < need)
    throw tooSmall(
      target,
      t.size,
      need,
      `the image's ${volume.kind === 'raw' ? 'raw volume' : 'filesystem content'}`,
    );
  const size = t.exists ? t.size : createSize;
  const child =
    volume.kind === 'raw'
      ? rawVolumeSink(target, volume, 0, fresh, opts.resume)
      : fileVolumeSink(
          volume,
          filesystemPlace(
            target,
            volume,
            0,
            size,
            !!opts.resume,
            opts.fileset,
            opts.staged?.get(volume.index),
          ),
          opts,
        );
  return compositeSink({
    ...(opts.resume ? { resume: opts.resume } : {}),
    createsFile: fresh,
    children: [child],
    resumableAfterAbort: false,
    leftAfterAbort: `the start of ${target} was wiped so that nothing mounts the incomplete filesystem; restore again`,
    describe: `${label} (${mib(size)}) as one ${volume.kind === 'raw' ? 'raw volume' : volume.fs.type + ' filesystem'}`,
    before: async () => {
      if (fresh) await createFile(target, size);
      else {
        await assertNotMounted(target, 'restore target');
        // A raw volume writes every byte (its gaps as zeros); mkfs rewrites only the start, so
        // what an old table or filesystem left elsewhere is cleared first.
        if (volume.kind === 'files' && !opts.resume) {
          const old = await oldLayoutZones(target, size, 512);
          await zeroRanges(target, mergeRanges([...old, { start: size - MiB, end: size }], size));
        }
      }
    },
    after: () => syncTarget(target),
    // A file this restore created goes away; an existing partition loses its first 64 KiB,
    // where every filesystem keeps its signature, so nothing mounts the half-written volume.
    onAbort: () => (fresh ? unlink(target) : wipeStart(target, Math.min(size, 64 * 1024))),
  });
}

async function wipeStart(path: string, length: number): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.write(Buffer.alloc(length), 0, length, 0);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Flushes the target. Partitions were written through loop devices stacked on it, whose
 * writes can sit in the target's own cache after they are detached.
 */
async function syncTarget(path: string): Promise<void> {
  await syncChecked(path, path, 'flushing it');
}

/**
 * A half-restored disk must not look bootable or partitioned: the MBR signature, the
 * primary GPT header and the backup GPT header are zeroed, so firmware, the kernel and
 * partitioning tools all see an empty disk rather than a table over incomplete data.
 */
async function markIncomplete(target: string, disk: DiskLayout, size: number): Promise<void> {
  const fh = await open(target, 'r+');
  try {
    const ss = disk.sectorSize;
    await fh.write(Buffer.alloc(2 * ss), 0, 2 * ss, 0);
    if (disk.table === 'gpt') {
      // The backup header sits at the source disk's end until sgdisk -e moves it to the target's end.
      for (const pos of new Set([size - ss, disk.sizeBytes - ss])) {
        if (pos >= 2 * ss && pos + ss <= size) await fh.write(Buffer.alloc(ss), 0, ss, pos);
      }
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
}

function underDev(path: string): boolean {
  return path === '/dev' || path.startsWith('/dev/');
}

/** A missing target under /dev is a mistyped device name: nothing is ever created there. */
function refuseUnderDev(target: string, what: string): void {
  if (underDev(resolve(target))) {
    throw new DiskError(
      'E_DISK_NO_TARGET',
      `restore target ${target} does not exist, and it is under /dev, where imgcast never creates ${what}: name an existing disk or partition (lsblk lists them)`,
      { target },
    );
  }
}

/** Refuses a missing disk or partition target unless it may become a new disk-image file. */
async function checkNewFile(target: string, create: boolean): Promise<void> {
  refuseUnderDev(target, 'a file');
  const parent = dirname(resolve(target));
  const realParent = await realpath(parent).catch(() => undefined);
  // A symlinked folder that leads into /dev is /dev too.
  if (realParent && underDev(realParent)) refuseUnderDev(join(realParent, basename(target)), 'a file');
  if (!create) {
    throw new DiskError(
      'E_DISK_NO_TARGET',
      `restore target ${target} does not exist; to restore into a new disk-image file there, add --create (a device must be named exactly as lsblk lists it)`,
      { target },
    );
  }
  if (!realParent || !(await stat(realParent)).isDirectory()) {
    throw new DiskError(
      'E_DISK_NO_TARGET',
      `the folder ${parent} for the new disk-image file ${target} does not exist`,
      { target, folder: parent },
    );
  }
}

async function createFile(path: string, size: number): Promise<void> {
  const fh = await open(path, 'wx').catch((err: unknown) => {
    throw new DiskError(
      'E_DISK_IO',
      `cannot create ${path}: ${systemReason(err)}`,
      { target: path, errno: (err as NodeJS.ErrnoException).code },
      { cause: err },
    );
  });
  try {
    await fh.truncate(size);
  } finally {
    await fh.close();
  }
}

function volumeSummary(v: Volume): string {
  return v.kind === 'raw' ? `raw${v.detectedType ? ` (${v.detectedType})` : ''}` : `${v.fs.type} files`;
}

function diskSink(
  manifest: Manifest,
  disk: DiskLayout,
  target: string,
  existingSize: number,
  fresh: boolean,
  label: string,
  opts: RestoreOptions,
): DescribedSink {
  const size = fresh ? disk.sizeBytes : existingSize;
  // Boot areas are always written again: an interrupted run may have blanked the table to mark the disk incomplete.
  const bootChunks = new Set(disk.bootAreas.flatMap((a) => a.extents.map((x) => x.chunk)));
  const resume = opts.resume ? new Set([...opts.resume].filter((id) => !bootChunks.has(id))) : undefined;
  const volumeOpts = resume ? { ...opts, resume } : opts;
  const fit = fitLayout(disk, manifest.volumes, size, { fileset: opts.fileset, keepSizes: !!opts.keepSizes });
  if (!fit.fits) {
    const what = `the image's ${disk.table.toUpperCase()} disk${opts.keepSizes ? ' layout' : ''}`;
    throw tooSmall(target, size, fit.needBytes, what, fit.why);
  }
  const layout = fit.layout;
  const unused = size - layoutNeeds(disk);
  if (fit.kept && unused >= MiB) opts.onWarning?.(`${mib(unused)} of ${target} stay unused: ${fit.kept}`);
  // The table is rewritten after the boot areas for another disk size (GPT) or layout.
  const rewrite = fit.changed || (disk.table === 'gpt' && size !== disk.sizeBytes);
  const gptMoves = disk.table === 'gpt' && rewrite;

  const children: RestoreSink[] = [];
  const writtenAreas: Range[] = [];
  disk.bootAreas.forEach((area, i) => {
    // A smaller target cannot hold the backup GPT where it was; writeFittedTable writes it at the end.
    if (area.offset + area.length > size) return;
    // On a larger one a copy where the source disk ended would stay behind as a stale GPT
    // header: it is left out (and its place zeroed).
    if (gptMoves && i > 0 && i === disk.bootAreas.length - 1) return;
    writtenAreas.push({ start: area.offset, end: area.offset + area.length });
    children.push(
      createRawRestore(target, area.offset, area.length, area.extents, 0, {
        fresh,
        label: `boot area ${i + 1}`,
      }),
    );
  });
  const bootCount = children.length;
  for (const p of layout.partitions) {
    const v = manifest.volumes[p.volume];
    if (!v)
      throw new ImageError(
        'E_IMAGE_CORRUPT',
        `partition ${p.number} refers to volume ${p.volume}, which the image does not hold`,
      );
    if (v.kind === 'raw') children.push(rawVolumeSink(target, v, p.startBytes, fresh, resume));
    else {
      const place = filesystemPlace(
        target,
        v,
        p.startBytes,
        p.sizeBytes,
        !!resume,
        opts.fileset,
        opts.staged?.get(v.index),
      );
      children.push(fileVolumeSink(v, place, volumeOpts));
    }
  }
  const parts = layout.partitions
    .map((p) => {
      const r = fit.resized.find((x) => x.number === p.number);
      const how = r
        ? ` (${r.toBytes > r.fromBytes ? 'grown' : 'shrunk'} from ${mib(r.fromBytes)} to ${mib(r.toBytes)})`
        : '';
      return `${p.number}: ${volumeSummary(manifest.volumes[p.volume]!)}${how}`;
    })
    .join(', ');
  return compositeSink({
    children,
    createsFile: fresh,
    resumableAfterAbort: true,
    leftAfterAbort: `${target} holds an incomplete restore and no partition table until one completes; restore again`,
    ...(resume ? { resume } : {}),
    describe: `${label} (${mib(size)}) as ${disk.table === 'mbr' ? 'an MBR' : 'a GPT'} disk of ${count(disk.partitions.length, 'partition')} — ${parts}`,
    // Until the restore is complete the disk shows no partition table, neither its old one
    // over new data nor the new one over half of it: the table is blanked first and the boot
    // areas are written last, so a restore killed on the way (Ctrl-C twice, a power cut)
    // leaves a disk that firmware and the kernel see as empty, not as a broken system.
    writeLast: bootCount,
    before: async () => {
      if (fresh) await createFile(target, size);
      else {
        await assertNotMounted(target, 'restore target');
        // The old layout is read before markIncomplete blanks its headers. A resumed run's
        // target holds the interrupted run's own writes, cleared of old signatures then.
        const stale = resume
          ? []
          : [
              ...(await oldLayoutZones(target, size, disk.sectorSize)),
              ...newLayoutZones(layout, manifest, size, writtenAreas),
            ];
        await markIncomplete(target, disk, size);
        if (stale.length > 0) await zeroRanges(target, mergeRanges(stale, size));
      }
    },
    between: {
      split: bootCount,
      run: async () => {
        if (rewrite) await writeFittedTable(target, disk, layout);
      },
    },
    onAbort: () => (fresh ? unlink(target) : markIncomplete(target, disk, size)),
    after: async () => {
      await syncTarget(target);
      // Let the kernel see the new table; loop devices without partition scanning refuse, which is fine.
      if (await isBlockDevice(target)) await runTool('blockdev', ['--rereadpt', target]);
    },
  });
}

export interface RestoreResult {
  target: string;
  description: string;
  chunks: number;
  bytes: number;
  /** The target was created as a new disk-image file. */
  created: boolean;
}

/**
 * Chunks being read, decoded (and, from an image file, written) at once: two per core,
 * so every pool worker always has its next chunk.
 */
const READ_AHEAD = Math.max(3, 2 * availableParallelism());

/**
 * Restores `manifest` onto `target` pulling chunk bytes from `source` (an image file,
 * or anything else that verifies chunks against their ids). Aborts the sink on any error.
 */
export async function restoreFromSource(
  manifest: Manifest,
  source: ChunkSource,
  target: string,
  opts: RestoreOptions & { onProgress?: (p: RestoreProgress) => void },
): Promise<RestoreResult> {
  const sink = await openRestore(manifest, target, opts);
  return runRestore(sink, source, target, opts.onProgress, opts.signal);
}

async function runRestore(
  sink: DescribedSink,
  source: ChunkSource,
  target: string,
  onProgress?: (p: RestoreProgress) => void,
  signal?: AbortSignal,
): Promise<RestoreResult> {
  const ids = [...sink.needed];
  interface Job {
    id: string;
    buf: Buffer;
    raw?: Promise<Buffer>;
    plan?: Promise<ChunkWriteOutcome>;
    /** Settles (never rejects) when the job has, with the job itself. */
    settled: Promise<Job>;
  }
  const running = new Set<Job>();
  try {
    await sink.prepare();
    // Reads run ahead so decompression and disk I/O overlap. Chunks are decoded into a few
    // recycled buffers: fresh 4 MiB ones per chunk pile up as external memory faster than
    // the garbage collector returns them. The buffers are shared memory, so an image
    // file's chunks are decoded by the pool's workers.
    const spare: Buffer[] = Array.from({ length: READ_AHEAD + 1 }, () =>
      Buffer.from(new SharedArrayBuffer(CHUNK_SIZE + 1)),
    );
    let next = 0;
    const fill = () => {
      while (running.size < READ_AHEAD && next < ids.length && spare.length > 0) {
        const buf = spare.pop()!;
        const id = ids[next++]!;
        // Where the sink lets it, the worker that decodes the chunk also writes its files.
        const plan = source.readChunkAndWrite ? sink.planChunk?.(id) : undefined;
        const job = { id, buf } as Job;
        if (plan) job.plan = source.readChunkAndWrite!(id, buf, plan);
        else job.raw = source.readChunk(id, buf);
        job.settled = (job.plan ?? job.raw!).then(
          () => job,
          () => job,
        );
        running.add(job);
      }
    };
    fill();
    // Taken as they finish, not in the order sent: a chunk of many small files takes a worker
    // several times as long as one of a big file, and waiting for it in order left the other
    // worker without work once its own queue ran dry.
    while (running.size > 0) {
      signal?.throwIfAborted();
      const job = await Promise.race(Array.from(running, (j) => j.settled));
      running.delete(job);
      if (job.plan) sink.planDone!(job.id, await job.plan);
      else await sink.applyChunk(job.id, await job.raw!);
      spare.push(job.buf);
      fill();
      onProgress?.(sink.progress());
    }
    signal?.throwIfAborted();
    await sink.finish();
    return {
      target,
      description: sink.describe(),
      chunks: ids.length,
      bytes: sink.progress().bytesDone,
      created: sink.createsFile,
    };
  } catch (err) {
    // Workers may still be writing chunks read ahead: the target must be quiet before it is unmounted.
    await Promise.allSettled(Array.from(running, (j) => j.settled));
    await sink.abort(err).catch(() => {});
    if (err instanceof InterruptedError && typeof err.details.signal === 'string' && !err.details.left) {
      throw new InterruptedError(err.details.signal, sink.leftAfterAbort);
    }
    throw err;
  }
}

/** `img restore`: restores an image file onto `target` (directory, disk, or partition). */
export async function restoreImage(
  imagePath: string,
  target: string,
  opts: RestoreOptions & {
    onProgress?: (p: RestoreProgress) => void;
    /** Called with the image's manifest once it is read, before the target is checked or written. */
    onManifest?: (manifest: Manifest) => void;
  },
): Promise<RestoreResult> {
  // The workers boot while the manifest is read and the target is prepared.
  CompressPool.shared().warm();
  const reader = await ImageReader.open(imagePath);
  try {
    opts.onManifest?.(reader.manifest);
    const sink = await openRestore(reader.manifest, target, opts);
    const absent = [...sink.needed].find((id) => !reader.chunk(id));
    if (absent) {
      throw new ImageError(
        'E_CHUNK_MISSING',
        `image ${imagePath} lacks chunk ${absent}, which this restore needs; nothing was written to ${target}`,
        { chunk: absent },
      );
    }
    opts.signal?.throwIfAborted();
    return await runRestore(sink, reader, target, opts.onProgress, opts.signal);
  } finally {
    await reader.close();
  }
}
