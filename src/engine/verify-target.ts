/**
 * `img restore --verify-after`: proof from the target itself. A restore checks every
 * chunk against its SHA-256 before writing it and every write and write-back for errors,
 * but it never reads what it wrote. This reads the restored target back, after the
 * restore has unmounted and detached everything and the target's cached pages are
 * dropped, and compares it with what the image says:
 *
 * - boot areas and raw volumes byte for byte: each stored run by its chunk's SHA-256
 *   (the chunk's own bytes when the hash differs, to say where), every byte between
 *   runs as zero;
 * - each filesystem through a fresh read-only loop device and mount: every entry of the
 *   file set by type, size, content (the same way; holes read as zero), symlink target,
 *   device number, mode, owner, modification time, extended attributes and hard links,
 *   as far as the filesystem keeps them (vfat keeps no owners, modes or links and times
 *   in 2-second steps);
 * - a table rewritten for a target of another size or a fitted layout (disk/fit-layout.ts,
 *   found again from the image, the target's size and the restore's options): its
 *   partitions are read back and compared with that layout, and each volume is compared
 *   where that layout puts it.
 */
import { createHash } from 'node:crypto';
import { lstat, open, readlink, stat, type FileHandle } from 'node:fs/promises';
import { attachLoop, detachLoop, deviceSize } from '../disk/device.ts';
import { DiskError } from '../disk/errors.ts';
import { runTool } from '../disk/exec.ts';
import { fitLayout } from '../disk/fit-layout.ts';
import { openTreeForReading } from '../disk/filesystem.ts';
import { readPartitionTable } from '../disk/partition-table.ts';
import { includedEntries } from '../image/fileset.ts';
import { ImageReader } from '../image/reader.ts';
import type {
  ChunkSource,
  DiskLayout,
  FileEntry,
  FileVolume,
  Manifest,
  PartitionInfo,
  RawExtent,
} from '../image/types.ts';
import { typeOf } from '../volume/files/capture.ts';
import { fsPath, nameBytes } from '../volume/files/names.ts';
import { startXattrScan } from '../volume/files/xattr.ts';
import { count, systemReason } from '../wording.ts';

export interface VerifyAfterReport {
  /** Entries, file content bytes and raw bytes (boot areas, raw volumes, zeros between runs) read back and found as the image says. */
  entries: number;
  fileBytes: number;
  rawBytes: number;
  /** What was not compared, and why. */
  notChecked: string[];
}

export interface VerifyAfterOptions {
  fileset: number;
  /** What the restore was given (RestoreOptions.keepSizes): the layout it fitted is found again from it. */
  keepSizes?: boolean;
  /** Bytes read back so far, against the total to read. */
  onProgress?: (done: number, total: number) => void;
  /** Stops the reading; what was mounted and attached for it is undone. */
  signal?: AbortSignal;
}

const MiB = 1024 * 1024;
const WINDOW = 4 * MiB;
/** Restore sets times through a double of seconds, which keeps them to well within a microsecond. */
const MTIME_SLACK_NS = 1000n;
const FAT_MTIME_SLACK_NS = 2_000_000_000n;
/** Differences listed in the error's details; the message names the first few. */
const MAX_LISTED = 100;

class Checker {
  readonly differences: string[] = [];
  readonly report: VerifyAfterReport = { entries: 0, fileBytes: 0, rawBytes: 0, notChecked: [] };
  done = 0;
  readonly total: number;
  readonly source: ChunkSource;
  readonly onProgress: VerifyAfterOptions['onProgress'];

  readonly signal: AbortSignal | undefined;

  constructor(source: ChunkSource, total: number, opts: VerifyAfterOptions) {
    this.source = source;
    this.total = total;
    this.onProgress = opts.onProgress;
    this.signal = opts.signal;
  }

  differ(what: string): void {
    if (this.differences.length < MAX_LISTED) this.differences.push(what);
    else if (this.differences.length === MAX_LISTED) this.differences.push('… and more');
  }

  advance(n: number): void {
    this.signal?.throwIfAborted();
    this.done += n;
    this.onProgress?.(this.done, this.total);
  }

  /** Compares bytes [position, position+length) of `fh` with chunk `id` (from `chunkOffset`). */
  async compareRun(
    fh: FileHandle,
    where: string,
    position: number,
    length: number,
    id: string,
    chunkOffset: number,
  ): Promise<boolean> {
    const got = Buffer.allocUnsafe(length);
    const { bytesRead } = await fh.read(got, 0, length, position);
    this.advance(length);
    if (bytesRead < length) {
      this.differ(
        `${where}: ends at byte ${position + bytesRead}, ${count(length - bytesRead, 'byte')} short`,
      );
      return false;
    }
    // A run that is a whole chunk matches by its hash alone; otherwise (or when the hash differs, to say where) byte by byte.
    if (chunkOffset === 0 && createHash('sha256').update(got).digest('hex') === id) return true;
    const chunk = await this.source.readChunk(id);
    const want = chunk.subarray(chunkOffset, chunkOffset + length);
    if (want.length === length && want.equals(got)) return true;
    let i = 0;
    while (i < length && got[i] === want[i]) i++;
    this.differ(`${where}: byte ${position + i} differs from the image (chunk ${id})`);
    return false;
  }

  /** Checks that [from, to) of `fh` reads as zeros. */
  async compareZeros(fh: FileHandle, where: string, from: number, to: number): Promise<boolean> {
    const buf = Buffer.allocUnsafe(Math.min(WINDOW, Math.max(0, to - from)));
    for (let p = from; p < to; p += buf.length) {
      const n = Math.min(buf.length, to - p);
      const { bytesRead } = await fh.read(buf, 0, n, p);
      this.advance(n);
      if (bytesRead < n) {
        this.differ(`${where}: ends at byte ${p + bytesRead}, where the image has zeros up to ${to}`);
        return false;
      }
      const nz = buf.subarray(0, n).findIndex((b) => b !== 0);
      if (nz >= 0) {
        this.differ(`${where}: byte ${p + nz} is not zero, as the image has it`);
        return false;
      }
    }
    return true;
  }

  /**
   * A byte range stored as runs (raw volume, boot area): runs by chunk, the rest zero.
   * `skip` ranges (absolute) are not compared: what a tool rewrote on purpose.
   */
  async verifyRaw(
    path: string,
    where: string,
    offset: number,
    length: number,
    extents: readonly RawExtent[],
    extentBase: number,
    skip: ReadonlyArray<readonly [number, number]> = [],
  ): Promise<void> {
    const fh = await open(path, 'r');
    try {
      const runs = extents
        .map((x) => ({ start: extentBase + x.offset, end: extentBase + x.offset + x.length, chunk: x.chunk }))
        .sort((a, b) => a.start - b.start);
      const parts: Array<{ start: number; end: number; chunk?: string; chunkOffset?: number }> = [];
      let cur = offset;
      for (const r of runs) {
        if (r.start > cur) parts.push({ start: cur, end: r.start });
        parts.push({ start: r.start, end: r.end, chunk: r.chunk, chunkOffset: 0 });
        cur = Math.max(cur, r.end);
      }
      if (cur < offset + length) parts.push({ start: cur, end: offset + length });
      for (const part of parts) {
        for (const piece of without(part, skip)) {
          const ok = part.chunk
            ? await this.compareRunPiece(fh, where, piece, part.start, part.chunk)
            : await this.compareZeros(fh, where, piece.start, piece.end);
          if (ok) this.report.rawBytes += piece.end - piece.start;
        }
      }
    } finally {
      await fh.close();
    }
  }

  private compareRunPiece(
    fh: FileHandle,
    where: string,
    piece: { start: number; end: number },
    runStart: number,
    chunk: string,
  ): Promise<boolean> {
    return this.compareRun(fh, where, piece.start, piece.end - piece.start, chunk, piece.start - runStart);
  }

  /** Every included entry of a file volume, read back from `root`. */
  async verifyTree(
    volume: FileVolume,
    root: string,
    fsType: string,
    fileset: number,
    label: string,
  ): Promise<void> {
    const vfat = fsType === 'vfat';
    const root_ = process.getuid?.() === 0;
    const entries = includedEntries(volume.entries, fileset);
    const scan = vfat ? undefined : startXattrScan(root);
    const xattrs = await scan?.promise.catch((err: unknown) => {
      this.differ(`${label}: extended attributes cannot be read back: ${systemReason(err)}`);
      return undefined;
    });
    const links = new Map<number, bigint>();
    const skipped: Record<string, number> = {};
    for (const e of entries) {
      const where = `${label}: ${e.path}`;
      if (e.type === 'socket' || (vfat && e.type !== 'file' && e.type !== 'dir')) {
        // The restore does not create these (sockets never, vfat cannot hold the rest).
        skipped[e.type] = (skipped[e.type] ?? 0) + 1;
        continue;
      }
      const p = absolute(root, e.path);
      const st = await lstat(p, { bigint: true }).catch(() => undefined);
      if (!st) {
        this.differ(`${where}: missing`);
        continue;
      }
      const type = typeOf(st);
      if (type !== e.type) {
        this.differ(`${where}: is a ${type}, the image has a ${e.type}`);
        continue;
      }
      let ok = true;
      if (e.type === 'file') ok = await this.verifyFileContent(p, e, where, st.size, links, st.ino);
      if (e.type === 'symlink') {
        const target = await readlink(p, { encoding: 'buffer' });
        if (!target.equals(nameBytes(e.linkTarget ?? ''))) {
          this.differ(`${where}: points to ${target.toString()}, the image says ${e.linkTarget}`);
          ok = false;
        }
      }
      if ((e.type === 'chardev' || e.type === 'blockdev') && !sameDevice(st.rdev, e)) {
        this.differ(`${where}: device number differs from the image's ${e.rdevMajor}:${e.rdevMinor}`);
        ok = false;
      }
      const mtimeDiff = st.mtimeNs - BigInt(e.mtimeNs);
      if (vfat) {
        if (e.type === 'file' && (mtimeDiff > FAT_MTIME_SLACK_NS || mtimeDiff < -FAT_MTIME_SLACK_NS)) {
          this.differ(`${where}: modified ${st.mtimeNs} ns, the image says ${e.mtimeNs}`);
          ok = false;
        }
      } else {
        if (Number(st.mode & 0o7777n) !== e.mode) {
          this.differ(
            `${where}: mode ${(st.mode & 0o7777n).toString(8)}, the image says ${e.mode.toString(8)}`,
          );
          ok = false;
        }
        if (root_ && (Number(st.uid) !== e.uid || Number(st.gid) !== e.gid)) {
          this.differ(`${where}: owner ${st.uid}:${st.gid}, the image says ${e.uid}:${e.gid}`);
          ok = false;
        }
        if (mtimeDiff > MTIME_SLACK_NS || mtimeDiff < -MTIME_SLACK_NS) {
          this.differ(`${where}: modified ${st.mtimeNs} ns, the image says ${e.mtimeNs}`);
          ok = false;
        }
        for (const [name, value] of Object.entries(e.xattrs ?? {})) {
          if (!root_ && name.startsWith('trusted.')) continue;
          if (xattrs?.get(e.path)?.[name] !== value) {
            this.differ(`${where}: extended attribute ${name} differs from the image or is missing`);
            ok = false;
          }
        }
      }
      if (ok) this.report.entries++;
    }
    for (const [type, n] of Object.entries(skipped)) {
      this.report.notChecked.push(
        `${label}: ${n} ${type} entr${n === 1 ? 'y' : 'ies'} (not restored ${vfat && type !== 'socket' ? 'onto vfat' : 'by design'})`,
      );
    }
    if (!vfat && !root_)
      this.report.notChecked.push(`${label}: owners and trusted.* attributes (not running as root)`);
  }

  private async verifyFileContent(
    p: string | Buffer,
    e: FileEntry,
    where: string,
    size: bigint,
    links: Map<number, bigint>,
    ino: bigint,
  ): Promise<boolean> {
    if (size !== BigInt(e.size ?? 0)) {
      this.differ(`${where}: ${count(Number(size), 'byte')}, the image has ${e.size ?? 0}`);
      return false;
    }
    if (e.hardlinkGroup !== undefined) {
      const first = links.get(e.hardlinkGroup);
      if (first === undefined) links.set(e.hardlinkGroup, ino);
      else if (first !== ino) {
        this.differ(`${where}: is not a hard link of the others of its group, as in the image`);
        return false;
      } else return true; // Same inode: its content was compared under its first name.
    }
    const fh = await open(p, 'r');
    let ok = true;
    try {
      let cur = 0;
      for (const x of [...(e.extents ?? [])].sort((a, b) => a.offset - b.offset)) {
        if (x.offset > cur) ok = (await this.compareZeros(fh, where, cur, x.offset)) && ok;
        ok = (await this.compareRun(fh, where, x.offset, x.length, x.chunk, x.chunkOffset)) && ok;
        cur = Math.max(cur, x.offset + x.length);
        if (!ok) break;
      }
      if (ok && cur < (e.size ?? 0)) ok = await this.compareZeros(fh, where, cur, e.size ?? 0);
    } finally {
      await fh.close();
    }
    if (ok) this.report.fileBytes += e.size ?? 0;
    return ok;
  }
}

/** `part` less the `skip` ranges. */
function without(part: { start: number; end: number }, skip: ReadonlyArray<readonly [number, number]>) {
  let pieces = [{ start: part.start, end: part.end }];
  for (const [a, b] of skip) {
    pieces = pieces.flatMap((p) =>
      b <= p.start || a >= p.end
        ? [p]
        : [
            ...(a > p.start ? [{ start: p.start, end: a }] : []),
            ...(b < p.end ? [{ start: b, end: p.end }] : []),
          ],
    );
  }
  return pieces;
}

function absolute(root: string, path: string): string | Buffer {
  if (path === '.') return root;
  const p = fsPath(path);
  return typeof p === 'string' ? `${root}/${p}` : Buffer.concat([Buffer.from(`${root}/`), p]);
}

/** Linux dev_t: major in bits 8-19 and 32-43, minor in bits 0-7 and 20-31. */
function sameDevice(rdev: bigint, e: FileEntry): boolean {
  const major = Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn));
  const minor = Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));
  return major === (e.rdevMajor ?? 0) && minor === (e.rdevMinor ?? 0);
}

/** Drops the target's cached pages, so what is read next comes from the disk (or the file's filesystem). */
async function dropCache(target: string): Promise<void> {
  if ((await stat(target)).isBlockDevice()) await runTool('blockdev', ['--flushbufs', target]);
  // dd with count=0 and iflag=nocache asks the kernel to drop the whole file's cache (posix_fadvise DONTNEED).
  await runTool('dd', [`if=${target}`, 'iflag=nocache', 'count=0', 'status=none']);
}

/** A file volume at [offset, offset+size) of `target`, through a fresh read-only loop device and mount. */
async function verifyFilesystem(
  c: Checker,
  target: string,
  volume: FileVolume,
  offset: number,
  size: number,
  fileset: number,
  label: string,
): Promise<void> {
  const loop = await attachLoop(target, { offset, size, readOnly: true });
  try {
    const tree = await openTreeForReading(loop, volume.fs);
    try {
      await c.verifyTree(volume, tree.dir, volume.fs.type, fileset, label);
    } finally {
      await tree.close(false);
    }
  } finally {
    await detachLoop(loop);
  }
}

function plannedBytes(manifest: Manifest, fileset: number): number {
  let n = 0;
  for (const v of manifest.volumes) {
    if (v.kind === 'raw') n += v.sizeBytes;
    else for (const e of includedEntries(v.entries, fileset)) if (e.type === 'file') n += e.size ?? 0;
  }
  for (const a of manifest.disk?.bootAreas ?? []) n += a.length;
  return n;
}

/** Partitions of the target's table against the layout the restore fitted, after it rewrote the table. */
async function verifyTable(c: Checker, target: string, disk: DiskLayout): Promise<void> {
  const table = await readPartitionTable(target).catch((err: unknown) => {
    c.differ(`partition table: cannot be read back: ${systemReason(err)}`);
    return undefined;
  });
  if (!table) return;
  const key = (p: Pick<PartitionInfo, 'number' | 'startBytes' | 'sizeBytes' | 'type' | 'uuid' | 'name'>) =>
    JSON.stringify([p.number, p.startBytes, p.sizeBytes, p.type, p.uuid ?? '', p.name ?? '']);
  const got = table.partitions
    .filter((p) => !p.extended)
    .map(key)
    .sort();
  const want = disk.partitions.map(key).sort();
  if (table.table !== disk.table || JSON.stringify(got) !== JSON.stringify(want)) {
    c.differ(
      `partition table: read back as ${table.table.toUpperCase()} ${got.join(' ')}, the restore made ${want.join(' ')}`,
    );
  }
}

/** The bytes of the first boot area a table rewrite changes: MBR entries, GPT header and (layout changed) entries. */
async function rewrittenRanges(
  target: string,
  disk: DiskLayout,
  layoutChanged: boolean,
): Promise<Array<[number, number]>> {
  const ss = disk.sectorSize;
  if (disk.table === 'mbr') return [[446, 510]];
  const ranges: Array<[number, number]> = [[440, 2 * ss]];
  if (layoutChanged) {
    // Where the entries are, the header says; the table read-back checks header and entries.
    const fh = await open(target, 'r');
    try {
      const h = Buffer.alloc(92);
      await fh.read(h, 0, 92, ss);
      const lba = Number(h.readBigUInt64LE(72));
      const bytes = h.readUInt32LE(80) * h.readUInt32LE(84);
      if (lba >= 2 && bytes <= 1024 * 1024) ranges.push([lba * ss, lba * ss + bytes]);
    } finally {
      await fh.close();
    }
  }
  return ranges;
}

/**
 * Reads the restored `target` back and compares it with `manifest` (file set
 * `opts.fileset`), taking chunk bytes from `source` where a hash alone cannot tell.
 * Throws E_DISK_VERIFY listing the differences; returns what was checked.
 */
export async function verifyRestored(
  manifest: Manifest,
  source: ChunkSource,
  target: string,
  opts: VerifyAfterOptions,
): Promise<VerifyAfterReport> {
  const c = new Checker(source, plannedBytes(manifest, opts.fileset), opts);
  const st = await stat(target);
  if (st.isDirectory()) {
    const volume = manifest.volumes[0];
    if (manifest.disk || manifest.volumes.length !== 1 || volume?.kind !== 'files') {
      throw new DiskError('E_DISK_TARGET', `${target} is a folder, but the image is not of one folder`, {
        target,
      });
    }
    c.report.notChecked.push(
      `${target}: read back through the page cache (a folder's files are not re-read from the disk)`,
    );
    await c.verifyTree(volume, target, 'directory', opts.fileset, target);
  } else {
    await dropCache(target);
    const size = await deviceSize(target);
    const image = manifest.disk;
    if (image) {
      const fit = fitLayout(image, manifest.volumes, size, opts);
      if (!fit.fits) {
        throw new DiskError(
          'E_DISK_TOO_SMALL',
          `${target} (${size} bytes) cannot hold the image, which needs ${fit.needBytes} bytes: it was not restored there with these options`,
          { target, targetBytes: size, neededBytes: fit.needBytes },
        );
      }
      const disk = fit.layout;
      const rewritten = fit.changed || (disk.table === 'gpt' && size !== image.sizeBytes);
      for (const [i, area] of disk.bootAreas.entries()) {
        const backup = disk.table === 'gpt' && i > 0 && i === disk.bootAreas.length - 1;
        if (area.offset + area.length > size || (rewritten && backup)) continue;
        // The restore rewrote the table (the MBR's entries, the primary GPT header and, for a
        // new layout, its entries) for the target; the table is compared below.
        const skip: Array<[number, number]> =
          rewritten && i === 0 ? await rewrittenRanges(target, disk, fit.changed) : [];
        await c.verifyRaw(target, `boot area ${i + 1}`, area.offset, area.length, area.extents, 0, skip);
      }
      if (rewritten) await verifyTable(c, target, disk);
      for (const p of disk.partitions) {
        const v = manifest.volumes[p.volume]!;
        const label = `partition ${p.number}`;
        if (v.kind === 'raw')
          await c.verifyRaw(target, label, p.startBytes, v.sizeBytes, v.extents, p.startBytes);
        else
          await verifyFilesystem(
            c,
            target,
            v,
            p.startBytes,
            p.sizeBytes,
            opts.fileset,
            `${label} (${v.fs.type})`,
          );
      }
    } else {
      const v = manifest.volumes[0]!;
      if (v.kind === 'raw') await c.verifyRaw(target, target, 0, v.sizeBytes, v.extents, 0);
      else
        await verifyFilesystem(c, target, v as FileVolume, 0, size, opts.fileset, `${v.fs.type} filesystem`);
    }
  }
  if (c.differences.length > 0) {
    const n = c.differences.length;
    throw new DiskError(
      'E_DISK_VERIFY',
      `${target} read back differs from the image in ${n > MAX_LISTED ? `more than ${MAX_LISTED}` : n} place${n === 1 ? '' : 's'}: ${c.differences.slice(0, 3).join('; ')}`,
      { target, differences: c.differences },
    );
  }
  return c.report;
}

/** verifyRestored with the chunks taken from an image file. */
export async function verifyRestoredImage(
  imagePath: string,
  target: string,
  opts: VerifyAfterOptions,
): Promise<VerifyAfterReport> {
  const reader = await ImageReader.open(imagePath);
  try {
    return await verifyRestored(reader.manifest, reader, target, opts);
  } finally {
    await reader.close();
  }
}
