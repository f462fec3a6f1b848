/**
 * Capture of a directory tree (a mounted partition, or any directory) into file
 * entries plus chunks.
 *
 * Chunking: files of CHUNK_SIZE or more are cut into CHUNK_SIZE pieces aligned at the
 * file start, one chunk each, so the same big file (or the same piece of a changed
 * one) dedups in the sink. Smaller files are packed back to back into pack chunks of
 * CHUNK_SIZE, in walk order (sorted, so neighbours in a directory compress together);
 * a file that does not fit the rest of a pack continues in the next one (two
 * extents). A small file identical to one already in the open pack reuses that
 * copy's extents (see captureSmall). Sparse files keep only their non-zero 4 KiB
 * blocks, packed like small files.
 *
 * Where the sink lends its own buffers (ChunkSink.leaseChunk: the image writer's
 * shared memory, which workers compress in place), packs and pieces of big files are
 * read straight into them: 0.84 GB of capture then costs no copy on this thread.
 *
 * The walk uses synchronous fs calls: for page-cached metadata and small files they
 * cost a fraction of the promise versions, and the only waiting that matters is the
 * sink's backpressure, which putChunk gives us.
 */
import {
  closeSync,
  constants,
  lstatSync,
  openSync,
  readdirSync,
  readlinkSync,
  readSync,
  realpathSync,
} from 'node:fs';
import type { BigIntStats } from 'node:fs';
import { isImgcastError } from '../../errors.ts';
import { systemReason } from '../../wording.ts';
import {
  CHUNK_SIZE,
  type ChunkLease,
  type ChunkRef,
  type ChunkSink,
  type QueuedChunk,
  type FileEntry,
  type FileEntryType,
  type FileExtent,
} from '../../image/types.ts';
import { FileVolumeError } from './errors.ts';
import { displayName, fsPath, nameFromBytes } from './names.ts';
import { normalizeImagePath } from './paths.ts';
import { startFlagScan, type FlagScan } from './flags.ts';
import { startXattrScan, type XattrMap } from './xattr.ts';

export interface CaptureProgress {
  files: number;
  bytes: number;
  currentPath?: string;
}

export interface CaptureOptions {
  onProgress?: (p: CaptureProgress) => void;
  signal?: AbortSignal;
  /** Stay on root's filesystem (default true), like tar --one-file-system. */
  oneFileSystem?: boolean;
  /** Path (relative, '/'-separated) under which the tree is placed in the image, for `img add --at`; default '' = the root. */
  at?: string;
  /** Stamped into addedIn (default 1). */
  generation?: number;
  /**
   * Only this name of the root (and what is below it), for `img add` of a single file:
   * it is read where it is, with all it has, where a copy would lose some of that.
   */
  only?: string;
  /**
   * Each file's data runs as soon as the chunk holding them is named (paths as captured,
   * before `at`): a live capture tells receivers where data goes before the tree is walked.
   * A run that reuses a chunk named earlier (a hard link, a repeated small file) comes at once.
   */
  onPlaced?: (uses: Placed[]) => void;
  /**
   * A regular file whose data is all handed over: its size and extents are final (their chunk
   * ids may come later, through onPlaced). Extended attributes and flags come only with the
   * returned entries.
   */
  onFileDone?: (entry: FileEntry) => void;
}

/** A run of a file's data whose chunk is named (CaptureOptions.onPlaced); `extent.chunk` is set. */
export interface Placed {
  entry: FileEntry;
  extent: FileExtent;
}

const HOLE_BLOCK = 4096;
const ZERO_BLOCK = Buffer.alloc(HOLE_BLOCK);
const YIELD_EVERY = 256;
/** Earlier small files of the same size compared with a new one (the newest first). */
const SAME_SIZE_COMPARED = 8;

/** Entries sorted so parents precede children, '.' (the root itself) first. */
export async function captureTree(
  root: string,
  sink: ChunkSink,
  opts: CaptureOptions = {},
): Promise<FileEntry[]> {
  // Checked before any data goes to the sink.
  const at = opts.at === undefined || opts.at === '' ? '.' : normalizeImagePath(opts.at);
  let absRoot: string;
  let rootSt: BigIntStats;
  try {
    absRoot = nameFromBytes(realpathSync(root, { encoding: 'buffer' }));
    rootSt = lstatSync(fsPath(absRoot), { bigint: true });
  } catch (err) {
    throw ioError(root, 'cannot open the capture source', err);
  }
  if (!rootSt.isDirectory()) {
    throw new FileVolumeError('E_CAPTURE_IO', `capture source ${root} is not a directory`, { path: root });
  }
  const flagScan = startFlagScan(absRoot);
  const xattrScan = startXattrScan(
    absRoot,
    opts.only === undefined ? absRoot : `${absRoot.endsWith('/') ? absRoot : `${absRoot}/`}${opts.only}`,
  );
  // The walk may fail first; the scan's own failure then must not surface as unhandled.
  xattrScan.promise.catch(() => {});
  const capturer = new Capturer(sink, absRoot, rootSt, opts, flagScan);
  let entries: FileEntry[];
  let flags: Map<string, string>;
  try {
    entries = await capturer.run();
    flags = await flagScan.finish();
  } catch (err) {
    xattrScan.kill();
    flagScan.kill();
    throw err;
  }
  attachXattrs(entries, await xattrScan.promise);
  if (flags.size > 0) {
    for (const e of entries) {
      const f = flags.get(e.path);
      if (f !== undefined) e.flags = f;
    }
  }
  if (at !== '.') for (const e of entries) e.path = e.path === '.' ? at : `${at}/${e.path}`;
  return entries;
}

function attachXattrs(entries: FileEntry[], xattrs: XattrMap): void {
  if (xattrs.size === 0) return;
  for (const e of entries) {
    const x = xattrs.get(e.path);
    if (x) e.xattrs = x;
  }
}

class Capturer {
  readonly entries: FileEntry[] = [];
  readonly sink: ChunkSink;
  readonly root: string;
  readonly rootSt: BigIntStats;
  readonly opts: CaptureOptions;
  readonly generation: number;
  /**
   * The open pack's buffer: lent by the sink, or (for sinks that copy what they get)
   * one buffer of our own reused for every pack, since fresh 4 MiB buffers cost page
   * faults and RSS on every chunk. Undefined until the pack's first byte is placed.
   */
  pack: Buffer | undefined;
  packLease: ChunkLease | undefined;
  ownPack: Buffer | undefined;
  packPos = 0;
  /** Small files placed whole in the open pack, by size, newest last. */
  readonly recent = new Map<number, Array<{ at: number; extents: FileExtent[] }>>();
  /**
   * Extents whose chunk id is not known yet, by the number of the chunk they lie in
   * (chunk ids arrive from the sink later, when it has hashed them). A pack gets its
   * number when its first byte is placed, since pieces of big files may be stored
   * before it is sealed.
   */
  readonly unnamed = new Map<FileExtent, number>();
  readonly chunkRefs: Array<Promise<ChunkRef>> = [];
  /** onPlaced: the runs waiting for their chunk's id, by chunk number, and the ids known. */
  readonly waiting = new Map<number, Placed[]>();
  readonly named = new Map<number, string>();
  openPack: { n: number; settle: (ref: Promise<ChunkRef>) => void } | undefined;
  /**
   * Read buffer for what does not go straight into the pack: pieces of big files
   * (handed to the sink, which copies them), small files that do not fit the rest of
   * the pack, and sparse files' blocks.
   */
  readonly scratch = Buffer.allocUnsafe(CHUNK_SIZE);
  readonly links = new Map<string, FileEntry>();
  nextGroup = 1;
  bytes = 0;
  sinceYield = 0;

  /** lsattr, fed each file and directory as the walk meets it. */
  readonly flags: FlagScan;

  constructor(sink: ChunkSink, root: string, rootSt: BigIntStats, opts: CaptureOptions, flags: FlagScan) {
    this.flags = flags;
    this.sink = sink;
    this.root = root;
    this.rootSt = rootSt;
    this.opts = opts;
    this.generation = opts.generation ?? 1;
  }

  async run(): Promise<FileEntry[]> {
    const rootEntry = this.entryFor('.', this.rootSt);
    this.entries.push(rootEntry);
    this.flags.add('.');
    try {
      await this.walkDir(this.root, '');
      await this.seal();
      const refs = await Promise.all(this.chunkRefs);
      for (const [x, n] of this.unnamed) x.chunk = refs[n]!.id;
    } finally {
      // A pack buffer leased but never filled (the last file shrank to nothing), or the walk failed.
      this.packLease?.release();
      this.packLease = undefined;
      // On failure, chunks still being named must not end as unhandled rejections.
      for (const r of this.chunkRefs) r.catch(() => {});
    }
    this.report();
    return this.entries;
  }

  /**
   * `abs` is the directory as an image string (see names.ts); `clean` says it is also
   * its own filesystem path, which holds for every directory whose path is valid UTF-8.
   */
  async walkDir(abs: string, rel: string, clean = abs.isWellFormed()): Promise<void> {
    let names: string[];
    try {
      names = readdirSync(clean ? abs : fsPath(abs));
      // readdir shows a name that is not valid UTF-8 with U+FFFD in it: read this
      // directory's names again as bytes, so such a name is kept exactly.
      if (names.some((n) => n.includes('\ufffd'))) {
        names = readdirSync(clean ? abs : fsPath(abs), { encoding: 'buffer' }).map(nameFromBytes);
        clean = clean && names.every((n) => n.isWellFormed());
      }
    } catch (err) {
      throw ioError(abs, 'cannot list directory', err);
    }
    if (rel === '' && this.opts.only !== undefined) names = names.filter((n) => n === this.opts.only);
    names.sort();
    const oneFs = this.opts.oneFileSystem ?? true;
    // readdir names never hold '/' and abs is already canonical, so plain concatenation
    // gives what join() would, without normalising 55k paths.
    const prefix = abs.endsWith('/') ? abs : `${abs}/`;
    for (const name of names) {
      const childAbs = prefix + name;
      const childRel = rel === '' ? name : `${rel}/${name}`;
      if (++this.sinceYield >= YIELD_EVERY) await this.breathe(childRel);
      const childFs = clean ? childAbs : fsPath(childAbs);
      let st: BigIntStats;
      try {
        st = lstatSync(childFs, { bigint: true });
      } catch (err) {
        throw ioError(childAbs, 'cannot stat (removed during capture?)', err);
      }
      const entry = this.entryFor(childRel, st);
      this.entries.push(entry);
      // Only regular files and directories have flags (lsattr refuses the rest).
      if (entry.type === 'file' || entry.type === 'dir') this.flags.add(childRel);
      try {
        if (entry.type === 'dir') {
          if (!oneFs || st.dev === this.rootSt.dev) await this.walkDir(childAbs, childRel, clean);
        } else if (entry.type === 'symlink') {
          entry.linkTarget = nameFromBytes(readlinkSync(childFs, { encoding: 'buffer' }));
        } else if (entry.type === 'file') {
          const pending = this.captureFile(childFs, st, entry);
          if (pending) await pending;
          this.opts.onFileDone?.(entry);
        }
      } catch (err) {
        if (isImgcastError(err) || this.opts.signal?.aborted) throw err;
        throw ioError(childAbs, 'cannot read', err);
      }
    }
  }

  entryFor(rel: string, st: BigIntStats): FileEntry {
    const type = typeOf(st);
    const e: FileEntry = {
      path: rel,
      type,
      mode: Number(st.mode & 0o7777n),
      uid: Number(st.uid),
      gid: Number(st.gid),
      mtimeNs: st.mtimeNs.toString(),
      atimeNs: st.atimeNs.toString(),
      addedIn: this.generation,
    };
    if (type === 'chardev' || type === 'blockdev') {
      // glibc's major()/minor() split of the 64-bit dev_t
      e.rdevMajor = Number(((st.rdev >> 8n) & 0xfffn) | ((st.rdev >> 32n) & 0xfffff000n));
      e.rdevMinor = Number((st.rdev & 0xffn) | ((st.rdev >> 12n) & 0xffffff00n));
    }
    return e;
  }

  /**
   * Most files are small and land in the open pack without waiting for anything, so
   * this returns a promise only when the sink has to be waited for (a new pack, a
   * sealed one, a big or sparse file): a promise per file was a third of the walk's
   * garbage.
   */
  captureFile(abs: string | Buffer, st: BigIntStats, entry: FileEntry): Promise<void> | undefined {
    if (st.nlink > 1n) {
      const key = `${st.dev}:${st.ino}`;
      const first = this.links.get(key);
      if (first) {
        // Every name of the inode carries the extents, so a file set excluding one name keeps the data for the others.
        entry.hardlinkGroup = first.hardlinkGroup!;
        entry.size = first.size!;
        entry.extents = this.copyExtents(first.extents ?? [], entry);
        if (first.sparse) entry.sparse = true;
        return undefined;
      }
      entry.hardlinkGroup = this.nextGroup++;
      this.links.set(key, entry);
    }
    const size = Number(st.size);
    entry.size = size;
    entry.extents = [];
    if (size === 0) return undefined;
    const fd = openForRead(abs);
    let captured: number | Promise<number>;
    try {
      // Inline-data files report 0 blocks, so only files of a block or more can have holes worth keeping.
      if (size >= HOLE_BLOCK && st.blocks * 512n < st.size) {
        entry.sparse = true;
        captured = this.captureSparse(fd, size, entry);
      } else if (size >= CHUNK_SIZE) {
        captured = this.captureBig(fd, size, entry);
      } else {
        captured = this.captureSmall(fd, size, entry);
      }
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    if (typeof captured === 'number') {
      closeSync(fd);
      entry.size = captured;
      return undefined;
    }
    return captured.then(
      (n) => {
        closeSync(fd);
        entry.size = n;
      },
      (err: unknown) => {
        closeSync(fd);
        throw err;
      },
    );
  }

  async captureBig(fd: number, size: number, entry: FileEntry): Promise<number> {
    const extents = entry.extents!;
    let off = 0;
    while (off < size) {
      const want = Math.min(CHUNK_SIZE, size - off);
      const lease = await this.sink.leaseChunk?.();
      const buf = lease?.buf ?? this.scratch;
      let n: number;
      try {
        n = readFull(fd, buf, 0, want, off);
      } catch (err) {
        lease?.release();
        throw err;
      }
      if (n === 0) {
        lease?.release();
        break;
      }
      const x: FileExtent = { offset: off, length: n, chunk: '', chunkOffset: 0 };
      const number = this.chunkRefs.length;
      this.watch(number, (lease ? lease.queue(n) : await this.store(buf.subarray(0, n))).ref);
      this.note(x, number, entry);
      extents.push(x);
      off += n;
      this.bytes += n;
      this.report();
      if (n < want) break; // the file shrank while we read it: keep what it holds now
    }
    return off;
  }

  /** The open pack's buffer, leased from the sink when the pack gets its first byte. */
  async packBuffer(): Promise<Buffer> {
    if (this.pack) return this.pack;
    if (this.sink.leaseChunk) {
      this.packLease = await this.sink.leaseChunk();
      this.pack = this.packLease.buf;
    } else {
      this.pack = this.ownPack ??= Buffer.allocUnsafe(CHUNK_SIZE);
    }
    return this.pack;
  }

  /**
   * Identical small files are stored once when the first copy is in the open pack: the
   * last few of the same size are compared byte for byte (a comparison stops at the
   * first difference), so no file is hashed or checksummed. Copies farther apart (a
   * minority: most duplicates sit in the same package folder; on the bench tree the
   * pack before held 57 of 1,488 duplicates, 0.4 of 21 MB) are stored again; big files
   * and whole packs are deduplicated by chunk hash in the sink anyway.
   */
  captureSmall(fd: number, size: number, entry: FileEntry): number | Promise<number> {
    if (!this.pack) return this.packBuffer().then(() => this.captureSmall(fd, size, entry));
    const pack = this.pack;
    const direct = size <= CHUNK_SIZE - this.packPos;
    const buf = direct ? pack : this.scratch;
    const at = direct ? this.packPos : 0;
    const n = readFull(fd, buf, at, size, 0);
    if (n === 0) return 0;
    const sameSize = this.recent.get(n);
    if (sameSize) {
      for (let i = sameSize.length - 1; i >= 0; i--) {
        const seen = sameSize[i]!;
        if (pack.compare(buf, at, at + n, seen.at, seen.at + n) === 0) {
          entry.extents = this.copyExtents(seen.extents, entry);
          return n;
        }
      }
    }
    this.bytes += n;
    if (!direct) return this.append(buf.subarray(0, n), 0, entry).then(() => n);
    const x: FileExtent = { offset: 0, length: n, chunk: '', chunkOffset: at };
    this.note(x, this.packNumber(), entry);
    entry.extents!.push(x);
    const seen = { at, extents: entry.extents! };
    if (!sameSize) this.recent.set(n, [seen]);
    else {
      sameSize.push(seen);
      if (sameSize.length > SAME_SIZE_COMPARED) sameSize.shift();
    }
    this.packPos += n;
    if (this.packPos === CHUNK_SIZE) return this.seal().then(() => n);
    return n;
  }

  async captureSparse(fd: number, size: number, entry: FileEntry): Promise<number> {
    let off = 0;
    while (off < size) {
      const want = Math.min(CHUNK_SIZE, size - off);
      const n = readFull(fd, this.scratch, 0, want, off);
      let runStart = -1;
      for (let i = 0; i < n; i += HOLE_BLOCK) {
        const end = Math.min(i + HOLE_BLOCK, n);
        const zero = ZERO_BLOCK.compare(this.scratch, i, end, 0, end - i) === 0;
        if (!zero && runStart < 0) runStart = i;
        if (zero && runStart >= 0) {
          await this.append(this.scratch.subarray(runStart, i), off + runStart, entry);
          runStart = -1;
        }
      }
      if (runStart >= 0) await this.append(this.scratch.subarray(runStart, n), off + runStart, entry);
      off += n;
      if (n < want) break;
    }
    return off;
  }

  /** Copies data into packs, continuing into the next pack when the current one fills. */
  async append(data: Buffer, fileOffset: number, entry: FileEntry): Promise<void> {
    const extents = entry.extents!;
    let done = 0;
    while (done < data.length) {
      const take = Math.min(data.length - done, CHUNK_SIZE - this.packPos);
      data.copy(await this.packBuffer(), this.packPos, done, done + take);
      const x: FileExtent = { offset: fileOffset + done, length: take, chunk: '', chunkOffset: this.packPos };
      this.note(x, this.packNumber(), entry);
      extents.push(x);
      this.packPos += take;
      done += take;
      if (this.packPos === CHUNK_SIZE) await this.seal();
    }
    this.bytes += data.length;
  }

  copyExtents(src: readonly FileExtent[], entry: FileEntry): FileExtent[] {
    return src.map((x) => {
      const c = { ...x };
      const n = this.unnamed.get(x);
      if (n !== undefined) this.note(c, n, entry);
      return c;
    });
  }

  /** Extent `x` of `entry` lies in chunk number `n`, whose id the sink gives later. */
  note(x: FileExtent, n: number, entry: FileEntry): void {
    this.unnamed.set(x, n);
    const onPlaced = this.opts.onPlaced;
    if (!onPlaced) return;
    const id = this.named.get(n);
    if (id !== undefined) {
      x.chunk = id;
      onPlaced([{ entry, extent: x }]);
      return;
    }
    let list = this.waiting.get(n);
    if (!list) this.waiting.set(n, (list = []));
    list.push({ entry, extent: x });
  }

  /** With onPlaced: once chunk number `n` is named, the runs in it are placed. */
  watch(n: number, ref: Promise<ChunkRef>): void {
    this.chunkRefs.push(ref);
    const onPlaced = this.opts.onPlaced;
    if (!onPlaced) return;
    ref.then(
      ({ id }) => {
        this.named.set(n, id);
        const list = this.waiting.get(n);
        this.waiting.delete(n);
        if (!list) return;
        for (const u of list) u.extent.chunk = id;
        onPlaced(list);
      },
      () => {},
    );
  }

  packNumber(): number {
    if (!this.openPack) {
      const n = this.chunkRefs.length;
      let settle!: (ref: Promise<ChunkRef>) => void;
      this.watch(n, new Promise<ChunkRef>((resolve) => (settle = resolve)));
      this.openPack = { n, settle };
    }
    return this.openPack.n;
  }

  async seal(): Promise<void> {
    if (this.packPos === 0) return;
    const open = this.openPack!;
    this.openPack = undefined;
    const lease = this.packLease;
    const length = this.packPos;
    this.packLease = undefined;
    this.packPos = 0;
    this.recent.clear();
    const pack = this.pack!;
    this.pack = undefined;
    if (lease) {
      open.settle(lease.queue(length).ref);
    } else {
      const stored = this.store(pack.subarray(0, length));
      open.settle(stored.then((q) => q.ref));
      await stored;
    }
  }

  /** Hands one chunk to the sink: resolves when `raw` may be reused; its id comes later. */
  async store(raw: Buffer): Promise<QueuedChunk> {
    if (this.sink.queueChunk) return this.sink.queueChunk(raw);
    const ref = await this.sink.putChunk(raw);
    return { ref: Promise.resolve(ref) };
  }

  async breathe(currentPath: string): Promise<void> {
    this.sinceYield = 0;
    this.report(currentPath);
    // Let timers, sockets and abort signals run during long metadata-only stretches.
    await new Promise((r) => setImmediate(r));
    const signal = this.opts.signal;
    if (signal?.aborted) throw signal.reason ?? new Error('capture aborted');
  }

  report(currentPath?: string): void {
    const p: CaptureProgress = { files: this.entries.length, bytes: this.bytes };
    if (currentPath !== undefined) p.currentPath = currentPath;
    this.opts.onProgress?.(p);
  }
}

/** The entry type of what lstat found (shared by capture and the read-back of a restore). */
export function typeOf(
  st: Pick<
    BigIntStats,
    'isFile' | 'isDirectory' | 'isSymbolicLink' | 'isCharacterDevice' | 'isBlockDevice' | 'isFIFO'
  >,
): FileEntryType {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'chardev';
  if (st.isBlockDevice()) return 'blockdev';
  if (st.isFIFO()) return 'fifo';
  return 'socket';
}

function openForRead(abs: string | Buffer): number {
  // O_NOATIME keeps the source's access times as they were; only the owner or root may use it.
  try {
    return openSync(abs, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NOATIME);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') throw err;
    return openSync(abs, constants.O_RDONLY | constants.O_NOFOLLOW);
  }
}

function readFull(fd: number, buf: Buffer, at: number, len: number, pos: number): number {
  let done = 0;
  while (done < len) {
    const n = readSync(fd, buf, at + done, len - done, pos + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

function ioError(path: string, what: string, err: unknown): FileVolumeError {
  const e = err as NodeJS.ErrnoException;
  return new FileVolumeError(
    'E_CAPTURE_IO',
    `${what} ${displayName(path)}: ${systemReason(err)}`,
    {
      path,
      errno: e.code,
    },
    { cause: err },
  );
}
