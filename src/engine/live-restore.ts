/**
 * Restoring a live session (live.ts) as its data streams. The session starts with the
 * master's layout only (LiveMeta); each extension says where runs of data go (LiveDelta);
 * the complete manifest comes with the seal.
 *
 * - prepare: the target is checked and cleared as a restore of that layout would do it
 *   (openRestore's checks, DescribedSink.clear: created, old layout's signatures cleared,
 *   the disk marked incomplete), each file volume gets its new filesystem (mounted, or a
 *   staging folder where mtools writes vfat), each raw volume is zeroed.
 * - while chunks arrive: each chunk is written where the runs known for it say (a file at
 *   its offset, created owner-only on its first run; a raw run at its place). A run that
 *   reuses a chunk written before (a hard link's own copy on vfat, a repeated file) is
 *   copied from where that chunk was written. Names of a hard link after the first are left
 *   to the end. Boot-area chunks are kept in memory: the partition table is written last.
 * - finish (sealed, every chunk here): runs the complete manifest needs and did not get yet
 *   are written (copied as above), the filesystems are released, and the manifest is
 *   restored onto the target by openRestore as a resume of everything written, which makes
 *   what remains (folders, symlinks, device nodes, hard links, empty files, sizes, owners,
 *   modes, times, extended attributes, flags), writes the boot areas and checks the result
 *   as any restore does. The target ends as `img restore` of the same image would leave it.
 * - abort: filesystems released unwritten, and the target left as an aborted restore leaves
 *   it (no partition table; a created file removed).
 *
 * Runs arrive over the authenticated control channel but are checked like any input: their
 * volume, kind, bounds and paths; files are written below the volume's root without following
 * a symlink (nothing but folders and files exist there until the end), and every byte written
 * is of a chunk that matched its hash.
 */
import {
  closeSync,
  constants,
  fchmodSync,
  fchownSync,
  fstatSync,
  ftruncateSync,
  futimesSync,
  lstatSync,
  mkdirSync,
  openSync,
  readSync,
  unlinkSync,
} from 'node:fs';
import { open, stat, type FileHandle } from 'node:fs/promises';
import { DiskError } from '../disk/errors.ts';
import { attachLoop, detachLoop, detachLoopVerified, deviceSize } from '../disk/device.ts';
import { makeFilesystem, openTreeForWriting, writesInPlace, type TreeAccess } from '../disk/filesystem.ts';
import { createRawRestore } from '../disk/raw.ts';
import { syncChecked, writeFailure } from '../disk/write-errors.ts';
import { writeFull, writeFullSync } from '../file-write.ts';
import { ImageError } from '../image/errors.ts';
import { manifestProblem } from '../image/manifest.ts';
import type { FileEntry, FileVolume, Manifest, RawVolume } from '../image/types.ts';
import { TransportError } from '../transport/errors.ts';
import type { ChunkConsumer, SessionInfo, TableExtension } from '../transport/types.ts';
import { fsPath, displayName } from '../volume/files/names.ts';
import { assertEntryPath, makeFolder } from '../volume/files/paths.ts';
import { nsToSeconds, utimeArg } from '../volume/files/restore.ts';
import { systemReason } from '../wording.ts';
import type { LiveDelta, LiveMeta } from './live.ts';
import type { ImageMeta } from './multicast.ts';
import { describeTargetContents, EARLY_FLUSH_BYTES, openRestore, type DescribedSink } from './restore.ts';

/** Open descriptors kept between runs (a pack names many small files, a big file takes many chunks). */
const MAX_OPEN_FILES = 64;

/** One run of a chunk's bytes and its place. */
export type LiveRun =
  | {
      kind: 'file';
      volume: number;
      path: string;
      group: number;
      fileOffset: number;
      length: number;
      chunkOffset: number;
      chunk: string;
    }
  | { kind: 'raw'; volume: number; offset: number; length: number; chunk: string }
  | { kind: 'boot'; area: number; offset: number; length: number; chunk: string };

/** A regular file whose data is all placed: what it must look like once its `runs` runs are written. */
export interface LiveDone {
  volume: number;
  path: string;
  group: number;
  size: number;
  mode: number;
  uid: number;
  gid: number;
  atimeNs: string;
  mtimeNs: string;
  runs: number;
}

const NS = /^-?\d{1,30}$/;

const ID = /^[0-9a-f]{64}$/;

function bad(why: string): TransportError {
  return new TransportError('E_CONSUMER', `the live session sent a bad placement: ${why}`);
}

const isCount = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;

/**
 * The runs a LiveDelta names, checked against the layout: volumes that exist and are of
 * the kind named, paths that stay inside the volume, runs within their volume or boot area.
 */
export function parseLiveDelta(delta: unknown, layout: Manifest): { runs: LiveRun[]; done: LiveDone[] } {
  const done: LiveDone[] = [];
  if (delta === null || delta === undefined) return { runs: [], done };
  if (typeof delta !== 'object' || Array.isArray(delta)) throw bad('not an object');
  const d = delta as LiveDelta;
  const runs: LiveRun[] = [];
  if (d.done !== undefined) {
    if (!Array.isArray(d.done)) throw bad('done is not a list');
    for (const f of d.done as unknown[]) {
      if (!Array.isArray(f) || f.length !== 10)
        throw bad('a finished file is not [volume, path, group, size, mode, uid, gid, atime, mtime, runs]');
      const [volume, path, group, size, mode, uid, gid, atimeNs, mtimeNs, count] = f as unknown[];
      if (!isCount(volume) || layout.volumes[volume]?.kind !== 'files')
        throw bad(`volume ${String(volume)} holds no files`);
      if (typeof path !== 'string' || path === '.') throw bad('a finished file has no path');
      assertEntryPath(path);
      if (![group, size, uid, gid, count].every(isCount) || !isCount(mode) || mode > 0o7777) {
        throw bad(`${displayName(path)} has a bad group, size, mode, owner or run count`);
      }
      if (
        typeof atimeNs !== 'string' ||
        !NS.test(atimeNs) ||
        typeof mtimeNs !== 'string' ||
        !NS.test(mtimeNs)
      ) {
        throw bad(`${displayName(path)} has bad times`);
      }
      done.push({
        volume,
        path,
        group: group as number,
        size: size as number,
        mode,
        uid: uid as number,
        gid: gid as number,
        atimeNs,
        mtimeNs,
        runs: count as number,
      });
    }
  }
  if (d.files !== undefined) {
    if (!Array.isArray(d.files)) throw bad('files is not a list');
    for (const f of d.files as unknown[]) {
      if (!Array.isArray(f) || f.length !== 7)
        throw bad('a file run is not [volume, path, group, offset, length, chunk offset, id]');
      const [volume, path, group, fileOffset, length, chunkOffset, chunk] = f as unknown[];
      if (!isCount(volume) || layout.volumes[volume]?.kind !== 'files')
        throw bad(`volume ${String(volume)} holds no files`);
      if (typeof path !== 'string' || path === '.') throw bad('a file run has no path');
      assertEntryPath(path);
      if (
        !isCount(group) ||
        !isCount(fileOffset) ||
        !isCount(length) ||
        length === 0 ||
        !isCount(chunkOffset)
      ) {
        throw bad(`the run of ${displayName(path)} has a bad group, offset or length`);
      }
      if (typeof chunk !== 'string' || !ID.test(chunk))
        throw bad(`the run of ${displayName(path)} names no chunk`);
      runs.push({ kind: 'file', volume, path, group, fileOffset, length, chunkOffset, chunk });
    }
  }
  if (d.raw !== undefined) {
    if (!Array.isArray(d.raw)) throw bad('raw is not a list');
    for (const r of d.raw as unknown[]) {
      if (!Array.isArray(r) || r.length !== 4) throw bad('a raw run is not [volume, offset, length, id]');
      const [volume, offset, length, chunk] = r as unknown[];
      if (typeof volume !== 'number' || !Number.isSafeInteger(volume)) throw bad('a raw run names no volume');
      if (!isCount(offset) || !isCount(length) || length === 0)
        throw bad('a raw run has a bad offset or length');
      if (typeof chunk !== 'string' || !ID.test(chunk)) throw bad('a raw run names no chunk');
      if (volume < 0) {
        const area = -1 - volume;
        const a = layout.disk?.bootAreas[area];
        if (!a || offset < a.offset || offset + length > a.offset + a.length) {
          throw bad(`boot area ${area + 1} does not hold ${offset}+${length}`);
        }
        runs.push({ kind: 'boot', area, offset, length, chunk });
      } else {
        const v = layout.volumes[volume];
        if (v?.kind !== 'raw') throw bad(`volume ${volume} is not raw`);
        if (offset + length > v.sizeBytes)
          throw bad(`raw volume ${volume} does not hold ${offset}+${length}`);
        runs.push({ kind: 'raw', volume, offset, length, chunk });
      }
    }
  }
  return { runs, done };
}

/** Whether a session's meta is a live session's (live.ts LiveMeta). */
export function isLiveMeta(meta: unknown): meta is LiveMeta {
  return typeof meta === 'object' && meta !== null && (meta as { kind?: unknown }).kind === 'live';
}

interface TreePlace {
  kind: 'tree';
  volume: FileVolume;
  /** For messages: "partition 2 (ext4)". */
  what: string;
  root: string;
  /** Undefined for a folder target (the folder itself). */
  access?: TreeAccess;
  /** The loop device a mounted filesystem is on (released with it). */
  loop?: string;
  /** A staging folder the final restore writes into vfat with mtools. */
  staged: boolean;
  writer: TreeWriter;
  /** The first name of each hard-link group met: the one the data goes to. */
  holders: Map<number, string>;
  /** File bytes written since the last early flush was started (see EARLY_FLUSH_BYTES). */
  unflushed: number;
  /** The early flush under way, if any. */
  flushing?: Promise<void>;
}

interface RawPlace {
  kind: 'raw';
  volume: RawVolume;
  /** Where the volume starts on the target. */
  offset: number;
}

/**
 * Restores a live session onto `target` (disk, disk-image file, partition or folder) as its
 * data arrives; see the file comment. Checks the target before anything is written, as
 * restoreConsumer does.
 */
export async function liveRestoreConsumer(
  session: SessionInfo,
  target: string,
  opts: { force?: boolean; onWarning?: (m: string) => void } = {},
): Promise<ChunkConsumer> {
  const about = `live session from ${session.sender}`;
  const meta = session.meta as Partial<LiveMeta>;
  const problem = manifestProblem(meta.layout);
  if (problem) throw new TransportError('E_CONSUMER', `${about} sent a bad layout: ${problem}`);
  const layout = meta.layout as Manifest;
  const before = await describeTargetContents(target);
  // The same refusals as a restore of the layout (kind, size, sector size, mounted, a folder not empty).
  const checks = await openRestore(layout, target, {
    fileset: 1,
    // Runs are written where the master has them, as they come: the layout cannot be fitted to
    // this disk first (its files are not known yet), so a live session keeps the master's sizes.
    keepSizes: true,
    force: opts.force,
    overwrite: true,
    create: before.kind === 'missing',
    onWarning: opts.onWarning,
  });
  if (!before.empty) opts.onWarning?.(`overwriting ${before.summary}`);
  const isFolder =
    (await stat(target).catch(() => undefined))?.isDirectory() ??
    (before.kind === 'missing' &&
      !layout.disk &&
      layout.volumes[0]?.kind === 'files' &&
      layout.volumes[0].fs.type === 'directory');
  return new LiveRestore(layout, target, checks, isFolder, opts.onWarning, about);
}

class LiveRestore implements ChunkConsumer {
  readonly layout: Manifest;
  readonly target: string;
  readonly checks: DescribedSink;
  readonly isFolder: boolean;
  readonly onWarning: ((m: string) => void) | undefined;
  readonly about: string;
  readonly places = new Map<number, TreePlace | RawPlace>();
  rawFh: FileHandle | undefined;
  /** Runs waiting for their chunk. */
  readonly pending = new Map<string, LiveRun[]>();
  /** Runs written, by chunk: where a chunk's bytes can be read back. */
  readonly written = new Map<string, LiveRun[]>();
  /** The stretches of chunks `written` holds a run of (chunk:offset:length). */
  readonly stretches = new Set<string>();
  /** Runs written, by place, to know at the end what the manifest still needs. */
  readonly done = new Set<string>();
  /** Boot-area chunks, kept for the end. */
  readonly boot = new Map<string, Buffer>();
  /** Per file (fileKey): runs written, what it must look like once all are, and those finished. */
  readonly runsWritten = new Map<string, number>();
  readonly doneInfo = new Map<string, LiveDone>();
  readonly completed = new Map<string, string>();
  final: Manifest | undefined;
  cleared = false;

  constructor(
    layout: Manifest,
    target: string,
    checks: DescribedSink,
    isFolder: boolean,
    onWarning: ((m: string) => void) | undefined,
    about: string,
  ) {
    this.layout = layout;
    this.target = target;
    this.checks = checks;
    this.isFolder = isFolder;
    this.onWarning = onWarning;
    this.about = about;
  }

  has(): boolean {
    return false;
  }

  async prepare(): Promise<void> {
    await this.checks.clear();
    this.cleared = true;
    const layout = this.layout;
    if (this.isFolder) {
      makeFolder(this.target);
      const volume = layout.volumes[0] as FileVolume;
      this.places.set(0, treePlace(volume, this.target, undefined, undefined, false, this.target));
      return;
    }
    const fresh = this.checks.createsFile;
    if (layout.disk) {
      for (const p of layout.disk.partitions) {
        const v = layout.volumes[p.volume]!;
        const what = `partition ${p.number} (${v.kind === 'raw' ? 'raw' : v.fs.type})`;
        await this.prepareVolume(v, p.startBytes, p.sizeBytes, fresh, what);
      }
    } else {
      const v = layout.volumes[0]!;
      await this.prepareVolume(
        v,
        0,
        await deviceSize(this.target),
        fresh,
        v.kind === 'raw' ? 'the raw volume' : `the ${v.fs.type} filesystem`,
      );
    }
  }

  async prepareVolume(
    v: FileVolume | RawVolume,
    offset: number,
    size: number,
    fresh: boolean,
    what: string,
  ): Promise<void> {
    if (v.kind === 'raw') {
      // Everything no run covers is zero: the whole range is zeroed first (a new file reads as zeros already).
      const zero = createRawRestore(this.target, offset, v.sizeBytes, [], offset, { fresh, label: what });
      await zero.prepare();
      await zero.finish();
      this.places.set(v.index, { kind: 'raw', volume: v, offset });
      this.rawFh ??= await open(this.target, 'r+');
      return;
    }
    const loop = await attachLoop(this.target, { offset, size });
    try {
      await makeFilesystem(loop, v.fs);
      const inPlace = await writesInPlace(v.fs.type);
      const access = await openTreeForWriting(loop, v.fs, { target: this.target, what });
      if (inPlace) {
        this.places.set(v.index, treePlace(v, access.dir, access, loop, false, what));
        return;
      }
      // mtools writes the staging folder into the filesystem at the end, through a loop device of its own.
      this.places.set(v.index, treePlace(v, access.dir, access, undefined, true, what));
      await syncChecked(loop, this.target, what);
    } catch (err) {
      await detachLoop(loop).catch(() => {});
      throw err;
    }
    await detachLoopVerified(loop);
  }

  async extend(ext: TableExtension): Promise<void> {
    if (this.final) throw bad('a placement after the seal');
    const { runs, done } = parseLiveDelta(ext.metaDelta, this.layout);
    for (const run of runs) {
      if (run.kind === 'file' && !this.holds(run.volume, run.group, run.path)) continue;
      if (this.written.has(run.chunk)) {
        await this.writeRun(run, await this.chunkBytes(run.chunk, runChunkOffset(run), run.length));
        continue;
      }
      let list = this.pending.get(run.chunk);
      if (!list) this.pending.set(run.chunk, (list = []));
      list.push(run);
    }
    for (const d of done) {
      const place = this.places.get(d.volume) as TreePlace;
      // vfat's files are finished by its own last pass (it keeps no owners, modes or links).
      if (place.volume.fs.type === 'vfat' || !this.holds(d.volume, d.group, d.path)) continue;
      const key = fileKey(d.volume, d.path);
      this.doneInfo.set(key, d);
      this.tryComplete(key);
    }
  }

  /**
   * Whether `path` gets the data of its hard-link group: the first name met does; the later
   * ones get linked to it when the tree is finished (vfat has no links: every name gets its own).
   */
  holds(volume: number, group: number, path: string): boolean {
    const place = this.places.get(volume) as TreePlace;
    if (group === 0 || place.volume.fs.type === 'vfat') return true;
    const holder = place.holders.get(group);
    if (holder === undefined) place.holders.set(group, path);
    return holder === undefined || holder === path;
  }

  /**
   * Once a file's runs are all written, it gets its size (a hole at its end), owner, mode and
   * times through its descriptor, as the last pass would give them; that pass then leaves it
   * as it is (TreeRestoreOptions.complete), unless it turns out to have extended attributes.
   */
  tryComplete(key: string): void {
    const d = this.doneInfo.get(key);
    if (!d || (this.runsWritten.get(key) ?? 0) < d.runs) return;
    this.doneInfo.delete(key);
    const place = this.places.get(d.volume) as TreePlace;
    const fd = place.writer.fd(d.path, true);
    const abs = place.writer.prefix + d.path;
    try {
      ftruncateSync(fd, d.size);
      if (d.uid !== EUID || d.gid !== EGID) {
        try {
          fchownSync(fd, d.uid, d.gid);
        } catch (err) {
          // Not root: the last pass sets what it can and says what it could not.
          if ((err as NodeJS.ErrnoException).code === 'EPERM' && !isRoot()) return;
          throw err;
        }
      }
      fchmodSync(fd, d.mode & 0o7777);
      futimesSync(fd, utimeArg(nsToSeconds(d.atimeNs)), utimeArg(nsToSeconds(d.mtimeNs)));
    } catch (err) {
      throw ioError(abs, 'cannot finish', err);
    } finally {
      place.writer.close(d.path);
    }
    this.completed.set(key, doneShape(d));
  }

  async apply(id: string, raw: Buffer): Promise<void> {
    const runs = this.pending.get(id);
    if (!runs) throw bad(`chunk ${id} arrived with no place to go`);
    this.pending.delete(id);
    for (const run of runs) {
      const from = runChunkOffset(run);
      if (from + run.length > raw.length) {
        throw new ImageError(
          'E_IMAGE_CORRUPT',
          `${this.about}: a run wants bytes ${from}..${from + run.length} of chunk ${id}, which holds ${raw.length}`,
          { chunk: id },
        );
      }
      await this.writeRun(run, raw.subarray(from, from + run.length));
    }
  }

  /** Writes one run's bytes at its place and notes it. */
  async writeRun(run: LiveRun, bytes: Buffer): Promise<void> {
    if (run.kind === 'boot') {
      if (run.length !== bytes.length) throw bad(`boot area run of ${run.length} bytes`);
      if (!this.boot.has(run.chunk)) this.boot.set(run.chunk, Buffer.from(bytes));
    } else if (run.kind === 'raw') {
      const place = this.places.get(run.volume) as RawPlace;
      const at = place.offset + run.offset;
      await writeFull(this.rawFh!, bytes, 0, bytes.length, at).catch(async (err: unknown) => {
        throw await writeFailure(this.target, `raw volume ${run.volume}: writing byte ${at}`, err);
      });
    } else {
      const place = this.places.get(run.volume) as TreePlace;
      const key = fileKey(run.volume, run.path);
      // Finished before all its runs came (it should not be): the last pass sees to it after all.
      this.completed.delete(key);
      place.writer.write(run.path, run.fileOffset, bytes);
      this.runsWritten.set(key, (this.runsWritten.get(key) ?? 0) + 1);
      this.tryComplete(key);
      flushEarly(place, bytes.length);
    }
    this.done.add(runKey(run));
    // Where the chunk can be read back from: one run per stretch of it (a chunk used a thousand times needs one).
    let list = this.written.get(run.chunk);
    if (!list) this.written.set(run.chunk, (list = []));
    const stretch = `${run.chunk}:${runChunkOffset(run)}:${run.length}`;
    if (!this.stretches.has(stretch)) {
      this.stretches.add(stretch);
      list.push(run);
    }
  }

  /** Bytes from..from+length of a chunk written before, read back from where it was written. */
  async chunkBytes(id: string, from: number, length: number): Promise<Buffer> {
    const kept = this.boot.get(id);
    if (kept) return kept.subarray(from, from + length);
    const out = Buffer.allocUnsafe(length);
    let have = 0;
    // Runs of one chunk cover it end to end only together (a pack's files): read piece by piece.
    while (have < length) {
      const want = from + have;
      const run = (this.written.get(id) ?? []).find(
        (r) => runChunkOffset(r) <= want && want < runChunkOffset(r) + r.length,
      );
      if (!run) throw new Error(`internal: byte ${want} of chunk ${id} was never written here`);
      const n = Math.min(length - have, runChunkOffset(run) + run.length - want);
      const skip = want - runChunkOffset(run);
      if (run.kind === 'raw') {
        const place = this.places.get(run.volume) as RawPlace;
        await this.rawFh!.read(out, have, n, place.offset + run.offset + skip);
      } else if (run.kind === 'file') {
        (this.places.get(run.volume) as TreePlace).writer.read(run.path, run.fileOffset + skip, out, have, n);
      } else {
        throw new Error(`internal: boot chunk ${id} not kept`);
      }
      have += n;
    }
    return out;
  }

  async seal(meta: unknown): Promise<void> {
    const m = meta as Partial<ImageMeta> | null;
    if (!m || m.kind !== 'image') throw bad('the seal carries no image manifest');
    const problem = manifestProblem(m.manifest);
    if (problem) throw new TransportError('E_CONSUMER', `${this.about} sent a bad manifest: ${problem}`);
    const manifest = m.manifest as Manifest;
    const mismatch = layoutMismatch(this.layout, manifest);
    if (mismatch) throw new TransportError('E_CONSUMER', `${this.about}: the final manifest ${mismatch}`);
    this.final = manifest;
  }

  async finish(): Promise<void> {
    const manifest = this.final;
    if (!manifest) throw bad('finished before the seal');
    const t0 = performance.now();
    const mark = (what: string) =>
      process.env.IMGCAST_DEBUG_LIVE === '1' &&
      process.stderr.write(`live finish: ${what} at ${Math.round(performance.now() - t0)} ms\n`);
    await this.completeRuns(manifest);
    mark('runs complete');
    // Nothing more is written here: the filesystems are flushed, checked and let go.
    const staged = new Map<number, string>();
    await this.release(true, staged);
    mark('released');
    const resume = new Set<string>();
    for (const id of this.written.keys()) resume.add(id);
    const sink = await openRestore(manifest, this.target, {
      fileset: 1,
      keepSizes: true,
      force: true,
      overwrite: true,
      resume,
      staged,
      complete: this.completeFiles(manifest),
      onWarning: this.onWarning,
    });
    try {
      await sink.prepare();
      mark('final prepared');
      // What a resume writes again: the boot areas, kept in memory (the table comes last).
      for (const id of sink.needed) {
        if (sink.resumed.has(id)) continue;
        const raw = this.boot.get(id);
        if (!raw) throw new Error(`internal: the final restore needs chunk ${id} again, which was not kept`);
        await sink.applyChunk(id, raw);
      }
      await sink.finish();
      mark('final finished');
    } catch (err) {
      await sink.abort(err).catch(() => {});
      throw err;
    }
  }

  /**
   * Writes the runs the complete manifest needs that no placement brought (a hard link's first
   * name was not the first met; data the capture placed through a name it then left out),
   * each copied from where its chunk was written.
   */
  async completeRuns(manifest: Manifest): Promise<void> {
    for (const v of manifest.volumes) {
      const place = this.places.get(v.index);
      if (v.kind === 'raw') {
        for (const x of v.extents) {
          const run: LiveRun = {
            kind: 'raw',
            volume: v.index,
            offset: x.offset,
            length: x.length,
            chunk: x.chunk,
          };
          if (!this.done.has(runKey(run)))
            await this.writeRun(run, await this.chunkBytes(x.chunk, 0, x.length));
        }
        continue;
      }
      if (place?.kind !== 'tree') throw new Error(`internal: volume ${v.index} has no tree`);
      const vfat = v.fs.type === 'vfat';
      const groups = new Set<number>();
      for (const e of v.entries) {
        if (e.type !== 'file') continue;
        if (e.hardlinkGroup !== undefined && !vfat) {
          if (groups.has(e.hardlinkGroup)) continue;
          groups.add(e.hardlinkGroup);
        }
        for (const x of e.extents ?? []) {
          const run: LiveRun = {
            kind: 'file',
            volume: v.index,
            path: e.path,
            group: e.hardlinkGroup ?? 0,
            fileOffset: x.offset,
            length: x.length,
            chunkOffset: x.chunkOffset,
            chunk: x.chunk,
          };
          if (!this.done.has(runKey(run))) {
            await this.writeRun(run, await this.chunkBytes(x.chunk, x.chunkOffset, x.length));
          }
        }
      }
    }
    for (const a of manifest.disk?.bootAreas ?? []) {
      for (const x of a.extents) {
        if (!this.boot.has(x.chunk)) this.boot.set(x.chunk, await this.chunkBytes(x.chunk, 0, x.length));
      }
    }
  }

  /** Per file volume, the files finished here exactly as the manifest has them, without extended attributes. */
  completeFiles(manifest: Manifest): Map<number, Set<string>> {
    const out = new Map<number, Set<string>>();
    for (const v of manifest.volumes) {
      if (v.kind !== 'files' || v.fs.type === 'vfat') continue;
      const paths = new Set<string>();
      for (const e of v.entries) {
        if (e.type !== 'file' || (e.xattrs && Object.keys(e.xattrs).length > 0)) continue;
        const shape = this.completed.get(fileKey(v.index, e.path));
        if (shape !== undefined && shape === entryShape(e)) paths.add(e.path);
      }
      out.set(v.index, paths);
    }
    return out;
  }

  /**
   * Lets go of the filesystems and the raw target: with `commit`, flushed and checked (a
   * staging folder is kept for the final restore, in `staged`); without, dropped.
   */
  async release(commit: boolean, staged?: Map<number, string>): Promise<void> {
    let failure: unknown;
    for (const [index, place] of this.places) {
      if (place.kind !== 'tree') continue;
      place.writer.closeAll();
      try {
        // A `sync -f` still running would keep the filesystem busy for its unmount.
        await place.flushing;
        if (place.staged && commit) staged?.set(index, place.root);
        else await place.access?.close(commit);
        if (place.loop) {
          // Also what reached the loop device without the filesystem (mkfs) must be written back.
          if (commit) await syncChecked(place.loop, this.target, place.what);
          if (commit) await detachLoopVerified(place.loop);
          else await detachLoop(place.loop);
        }
      } catch (err) {
        failure ??= err;
        if (place.loop) await detachLoop(place.loop).catch(() => {});
      }
    }
    this.places.clear();
    if (this.rawFh) {
      const fh = this.rawFh;
      this.rawFh = undefined;
      try {
        if (commit) {
          await fh.sync().catch(async (err: unknown) => {
            throw await writeFailure(this.target, 'flushing the raw volumes', err);
          });
        }
      } catch (err) {
        failure ??= err;
      } finally {
        await fh.close().catch(() => {});
      }
    }
    if (failure) throw failure;
  }

  async abort(reason: unknown): Promise<void> {
    await this.release(false).catch(() => {});
    if (this.cleared) await this.checks.abort(reason).catch(() => {});
  }
}

function treePlace(
  volume: FileVolume,
  root: string,
  access: TreeAccess | undefined,
  loop: string | undefined,
  staged: boolean,
  what: string,
): TreePlace {
  return {
    kind: 'tree',
    volume,
    what,
    root,
    ...(access ? { access } : {}),
    ...(loop ? { loop } : {}),
    staged,
    writer: new TreeWriter(root),
    holders: new Map(),
    unflushed: 0,
  };
}

/**
 * Starts writing a mounted volume's page cache back once EARLY_FLUSH_BYTES more were written
 * to it, one flush at a time, as a restore does: without it the kernel began only at the final
 * flush (its threshold is a share of memory, here more than the volumes), and a live client's
 * finish waited 2.5 s for it with the CPUs idle (bench:session). The final flush still checks
 * every write; an early one that fails says nothing the final one will not.
 */
function flushEarly(place: TreePlace, written: number): void {
  place.unflushed += written;
  const access = place.access;
  if (!access?.flushEarly || place.flushing || place.unflushed < EARLY_FLUSH_BYTES) return;
  place.unflushed = 0;
  place.flushing = access
    .flushEarly()
    .catch(() => {})
    .finally(() => {
      place.flushing = undefined;
    });
}

function fileKey(volume: number, path: string): string {
  return `${volume}\0${path}`;
}

/** What a finished file was given, to compare with what the manifest says. */
function doneShape(d: LiveDone): string {
  return JSON.stringify([d.size, d.mode, d.uid, d.gid, d.atimeNs, d.mtimeNs]);
}

function entryShape(e: FileEntry): string {
  return JSON.stringify([e.size ?? 0, e.mode, e.uid, e.gid, e.atimeNs, e.mtimeNs]);
}

const EUID = process.geteuid?.() ?? -1;
const EGID = process.getegid?.() ?? -1;

function isRoot(): boolean {
  return process.getuid?.() === 0;
}

function runChunkOffset(run: LiveRun): number {
  return run.kind === 'file' ? run.chunkOffset : 0;
}

function runKey(run: LiveRun): string {
  if (run.kind === 'file') return `f${run.volume}\0${run.path}\0${run.fileOffset}\0${run.chunk}`;
  if (run.kind === 'raw') return `r${run.volume}\0${run.offset}\0${run.chunk}`;
  return `b${run.area}\0${run.offset}\0${run.chunk}`;
}

/** How the final manifest's layout differs from the one the session started with, or undefined. */
function layoutMismatch(layout: Manifest, final: Manifest): string | undefined {
  if (final.volumes.length !== layout.volumes.length)
    return `has ${final.volumes.length} volumes, the layout ${layout.volumes.length}`;
  for (const [i, v] of final.volumes.entries()) {
    const l = layout.volumes[i]!;
    if (v.kind !== l.kind || v.index !== l.index || v.sizeBytes !== l.sizeBytes)
      return `differs from the layout in volume ${i}`;
    if (v.kind === 'files' && l.kind === 'files' && JSON.stringify(v.fs) !== JSON.stringify(l.fs)) {
      return `has another filesystem in volume ${i}`;
    }
  }
  const a = layout.disk;
  const b = final.disk;
  if (!a !== !b) return 'differs from the layout in having a disk';
  if (a && b) {
    const shape = (d: typeof a) =>
      JSON.stringify([
        d.sizeBytes,
        d.sectorSize,
        d.table,
        d.partitions,
        d.bootAreas.map((x) => [x.offset, x.length]),
        d.containers ?? [],
      ]);
    if (shape(a) !== shape(b)) return 'has another disk layout';
  }
  return undefined;
}

/**
 * Writes runs of regular files below `root`, making the folders above them (owner-only,
 * as a restore does until it sets their modes) and each file on its first run. Never
 * follows a symlink: a folder in the way that is not a real folder is refused.
 */
class TreeWriter {
  readonly root: string;
  readonly prefix: string;
  readonly dirs = new Set<string>();
  readonly made = new Set<string>();
  readonly fds = new Map<string, number>();

  constructor(root: string) {
    this.root = root;
    this.prefix = root.endsWith('/') ? root : `${root}/`;
  }

  write(path: string, offset: number, bytes: Buffer): void {
    const fd = this.fd(path, true);
    try {
      writeFullSync(fd, bytes, 0, bytes.length, offset);
    } catch (err) {
      throw ioError(this.prefix + path, 'cannot write', err);
    }
  }

  read(path: string, offset: number, into: Buffer, at: number, length: number): void {
    let fd: number;
    try {
      fd = openSync(fsPath(this.prefix + path), constants.O_RDONLY | constants.O_NOFOLLOW);
    } catch (err) {
      throw ioError(this.prefix + path, 'cannot read back', err);
    }
    try {
      let done = 0;
      while (done < length) {
        const n = readSync(fd, into, at + done, length - done, offset + done);
        if (n === 0) throw new Error('it ends before the data written there');
        done += n;
      }
    } catch (err) {
      throw ioError(this.prefix + path, 'cannot read back', err);
    } finally {
      closeSync(fd);
    }
  }

  fd(path: string, create: boolean): number {
    const open = this.fds.get(path);
    if (open !== undefined) {
      this.fds.delete(path);
      this.fds.set(path, open);
      return open;
    }
    if (this.fds.size >= MAX_OPEN_FILES) {
      const [oldest, fd] = this.fds.entries().next().value as [string, number];
      this.fds.delete(oldest);
      closeSync(fd);
    }
    const abs = this.prefix + path;
    let fd: number;
    try {
      if (create && !this.made.has(path)) {
        this.parents(path);
        // Whatever was there (a forced folder target) goes: a file must hold only its own bytes.
        const st = lstatSync(fsPath(abs), { throwIfNoEntry: false });
        if (st?.isDirectory()) throw new Error('a folder is in the way');
        if (st) unlinkSync(fsPath(abs));
        fd = openSync(
          fsPath(abs),
          constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
          0o600,
        );
        this.made.add(path);
      } else {
        fd = openSync(fsPath(abs), constants.O_WRONLY | constants.O_NOFOLLOW);
        if (!fstatSync(fd).isFile()) {
          closeSync(fd);
          throw new Error('it is not a regular file');
        }
      }
    } catch (err) {
      if (err instanceof ImageError) throw err;
      throw ioError(abs, 'cannot open for writing', err);
    }
    this.fds.set(path, fd);
    return fd;
  }

  /** Makes the folders above `path`, checking that each one there is a real folder. */
  parents(path: string): void {
    const parts = path.split('/');
    let rel = '';
    for (let i = 0; i < parts.length - 1; i++) {
      rel = rel === '' ? parts[i]! : `${rel}/${parts[i]}`;
      if (this.dirs.has(rel)) continue;
      const abs = this.prefix + rel;
      const st = lstatSync(fsPath(abs), { throwIfNoEntry: false });
      if (!st) mkdirSync(fsPath(abs), 0o700);
      else if (!st.isDirectory()) {
        throw new ImageError(
          'E_PATH_ESCAPE',
          `cannot restore ${displayName(path)}: ${displayName(abs)} is a ${st.isSymbolicLink() ? 'symlink' : 'non-directory'} where a directory should be; refusing to write through it`,
          { path, target: abs },
        );
      }
      this.dirs.add(rel);
    }
  }

  close(path: string): void {
    const fd = this.fds.get(path);
    if (fd === undefined) return;
    this.fds.delete(path);
    closeSync(fd);
  }

  closeAll(): void {
    for (const fd of this.fds.values()) closeSync(fd);
    this.fds.clear();
  }
}

function ioError(path: string, what: string, err: unknown): DiskError {
  return new DiskError('E_DISK_IO', `${what} ${displayName(path)}: ${systemReason(err)}`, {
    path,
    errno: (err as NodeJS.ErrnoException).code,
  });
}
