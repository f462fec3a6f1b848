/**
 * Restore of a file volume into a directory (usually the mount point of a freshly
 * made filesystem). prepare() lays out the tree; chunks then arrive in any order
 * (image order from a file, network order from multicast) and each is written to
 * every file range that uses it; finish() adds hard links and metadata.
 *
 * Nothing here follows a symlink inside the target: files are opened with
 * O_NOFOLLOW, parents are checked with lstat (a symlink where a directory should be
 * is refused), and owner/xattr/time calls are the l-/-h variants.
 */
import { spawn } from 'node:child_process';
import {
  closeSync,
  chmodSync,
  fchmodSync,
  fchownSync,
  futimesSync,
  constants,
  fstatSync,
  ftruncateSync,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  readdirSync,
  renameSync,
  rmSync,
  symlinkSync,
  unlinkSync,
} from 'node:fs';
import { join, resolve } from 'node:path';
import type { RestoreProgress, RestoreSink } from '../../engine/types.ts';
import { writeFullAt } from '../../file-write.ts';
import { ImgcastError } from '../../errors.ts';
import { ImageError } from '../../image/errors.ts';
import { checkFileset, isExcluded } from '../../image/fileset.ts';
import type {
  ChunkWriteOutcome,
  ChunkWritePlan,
  FileEntry,
  EntryMeta,
  FilesystemType,
} from '../../image/types.ts';
import { PlanBuilder } from '../../image/plan.ts';
import { CompressPool } from '../../image/pool.ts';
import { FileVolumeError } from './errors.ts';
import { displayName, fsPath } from './names.ts';
import { assertEntryPath, makeFolder } from './paths.ts';
import { applyFlags, KEPT_FLAGS } from './flags.ts';
import { exactDouble, ExactTimes, type ExactTimesTool } from './times.ts';
import { applyXattrs } from './xattr.ts';
import { count, systemReason } from '../../wording.ts';

export interface TreeRestoreOptions {
  /** Entries excluded from this file set are skipped; parents of included entries are created even if excluded. */
  fileset: number;
  /** 'vfat' skips owners, modes, symlinks, device nodes, fifos and xattrs with warnings instead of failing. */
  fsType: FilesystemType;
  onWarning?: (msg: string) => void;
  /**
   * Chunks an interrupted run of this same restore already wrote into this target:
   * they count as applied, and prepare() keeps the files it finds instead of
   * recreating them.
   */
  resume?: ReadonlySet<string>;
  /**
   * With `resume`: regular files (by path) an earlier writer of this same restore finished
   * (a live session's, engine/live-restore.ts): data, size, owner, mode and times set, and no
   * extended attributes. They are kept as they are; only their exact times, flags and hard
   * links are seen to.
   */
  complete?: ReadonlySet<string>;
  /** How times Node cannot set exactly are set (times.ts: setExactTimes); for tests. */
  timesTool?: ExactTimesTool;
}

export type TreeRestore = RestoreSink & { readonly warnings: string[] };

export function createTreeRestore(
  entries: readonly FileEntry[],
  targetDir: string,
  opts: TreeRestoreOptions,
): TreeRestore {
  return new TreeRestoreImpl(entries, targetDir, opts);
}

/** Open write descriptors kept between chunks; big files receive many chunks, packs touch many small files. */
const MAX_OPEN_FILES = 64;
const MKNOD_BATCH_BYTES = 64 * 1024;
/** Symlinks a chunk plan carries at most (4.4k of them in /usr/share + /usr/bin). */
const SYMLINKS_PER_PLAN = 500;

interface Item {
  entry: FileEntry;
  rel: string;
  /**
   * Its folder's image path, made once: the sets of folders are asked about it several
   * times per entry, and a string kept keeps its hash (a new slice each time was hashed
   * each time).
   */
  parent: string;
  /** Where the entry lands, as an image string (see names.ts): for messages. */
  abs: string;
  /** The same path for the filesystem: `abs`, or its exact bytes when a name is not UTF-8. */
  fs: string | Buffer;
  depth: number;
  /** Set when the item could not or should not be created (vfat limits, sockets); metadata is then skipped too. */
  skipped?: boolean;
  /** Where a regular file's last extent ends. */
  dataEnd?: number;
  /** A regular file whose data all lies in this one chunk (undefined: several, or none). */
  onlyChunk?: string;
  /** A regular file created when its first bytes arrive rather than in prepare(). */
  lazy?: boolean;
  /** Owner, mode and times already set through its descriptor when its last bytes were written. */
  metaDone?: boolean;
  /** A regular file's bytes not written yet (undefined: not a file with data to write). */
  remaining?: number;
}

/** What the workers making a fresh target's folders met: all made, or the first they could not make. */
type DirsMade = { ok: true } | { ok: false; item: Item; reason: string; code?: string };

interface Range {
  item: Item;
  fileOffset: number;
  chunkOffset: number;
  length: number;
}

class TreeRestoreImpl implements RestoreSink {
  readonly needed: ReadonlySet<string>;
  readonly warnings: string[] = [];
  readonly root: string;
  /** The root and a slash: an item's `fs` path is this followed by its image path when that is a string. */
  readonly prefix: string;
  readonly opts: TreeRestoreOptions;
  readonly vfat: boolean;
  readonly items: Item[];
  /** Hard-link names created in finish(), pointing at the first included name of their group. */
  readonly links: Array<{ item: Item; holder: Item }> = [];
  readonly ranges = new Map<string, Range[]>();
  readonly applied = new Set<string>();
  readonly fds = new Map<Item, number>();
  /** The chunk being written (applyChunk): finish and abort wait for it before closing descriptors. */
  writes: Promise<void> = Promise.resolve();
  readonly checkedDirs = new Set<string>();
  /** Directories this restore made (or found empty): nothing can be in the way inside them, so no lstat per file. */
  readonly freshDirs = new Set<string>();
  /** Directories this restore created with this process's group and no setgid bit: what is made in them is this process's. */
  readonly madeDirs = new Set<string>();
  /** The target passes its group on to what is made in it. */
  rootSetgid = false;
  readonly skippedPaths = new Set<string>();
  readonly vfatNames = new Set<string>();
  readonly entries: readonly FileEntry[];
  #byPath: Map<string, FileEntry> | undefined;
  bytesDone = 0;
  bytesTotal = 0;
  prepared = false;
  /** Sets the times Node's utimes cannot set to the nanosecond; none on vfat, which keeps 2 s or 10 ms. */
  readonly exactTimes: ExactTimes | undefined;
  /** The failure that stopped this restore (see failure()). */
  failed: ImgcastError | undefined;
  /** Owners a non-root restore could not set (counted, then one warning). */
  ownersDenied = 0;
  /** Symlinks not made yet (lazyFiles): chunk plans take them along, finish() makes the rest. */
  readonly pendingSymlinks: Item[] = [];
  /** The symlinks each chunk's plan carries, until its worker reports. */
  readonly plannedSymlinks = new Map<string, Item[]>();
  /**
   * Regular files are created when their first chunk arrives, and get owner, mode and
   * times through the descriptor their last bytes went through: one open and no path
   * lookups per file instead of two opens and four lookups (a restore of 55k files spent
   * most of its time there). vfat (its name and size limits are met in prepare()) and a
   * resume (which reopens what the interrupted run made) keep the two-pass way.
   */
  readonly lazyFiles: boolean;

  constructor(entries: readonly FileEntry[], targetDir: string, opts: TreeRestoreOptions) {
    checkFileset(opts.fileset);
    this.opts = opts;
    this.vfat = opts.fsType === 'vfat';
    this.lazyFiles = !this.vfat && !opts.resume;
    this.exactTimes = this.vfat ? undefined : new ExactTimes(opts.timesTool);
    this.root = resolve(targetDir);

    this.entries = entries;
    let excludes = false;
    for (const e of entries) {
      assertEntryPath(e.path);
      if (!excludes && isExcluded(e, opts.fileset)) excludes = true;
    }
    let wanted: Iterable<string> | undefined;
    if (excludes) {
      const byPath = this.byPath();
      const some = new Set<string>();
      for (const e of entries) {
        if (isExcluded(e, opts.fileset)) continue;
        some.add(e.path);
        // Parents an included entry needs, even if the file set excludes them.
        for (let p = parentOf(e.path); p !== '.' && !some.has(p); p = parentOf(p)) {
          if (byPath.has(p)) some.add(p);
        }
      }
      wanted = some;
    }
    // Image order: `needed` then lists chunks in the order an image file holds them.
    const inImageOrder: Item[] = [];
    // Paths are canonical (checked above), so joining them is concatenation.
    const prefix = (this.prefix = this.root.endsWith('/') ? this.root : `${this.root}/`);
    const rootWellFormed = this.root.isWellFormed();
    const byDepth: Item[][] = [];
    const add = (path: string, entry: FileEntry): void => {
      const abs = path === '.' ? this.root : prefix + path;
      const depth = depthOf(path);
      // Left as a concatenation unless a name is not UTF-8: flattening 55k paths here is time
      // before the first write, which the system calls that use them spend anyway.
      const fs = rootWellFormed && path.isWellFormed() ? abs : fsPath(abs);
      const item: Item = { entry, rel: path, parent: parentOf(path), abs, fs, depth };
      inImageOrder.push(item);
      (byDepth[depth] ??= []).push(item);
    };
    if (wanted) {
      const byPath = this.byPath();
      for (const path of wanted) add(path, byPath.get(path)!);
    } else {
      // The whole image: entry order, without a map of 55k paths (~17 ms) that only a
      // file set's exclusions or an unusual target (checkParents) need.
      for (const e of entries) add(e.path, e);
    }
    // Parent-first whatever order the manifest has (appended entries may come late); stable within a depth.
    this.items = [];
    for (const level of byDepth) for (const item of level ?? []) this.items.push(item);

    const holders = new Map<number, Item>();
    const needed = new Set<string>();
    for (const item of inImageOrder) {
      const e = item.entry;
      if (e.type !== 'file') continue;
      // vfat has no hard links: every name gets its own copy, which its own extents make possible.
      if (e.hardlinkGroup !== undefined && !this.vfat) {
        const holder = holders.get(e.hardlinkGroup);
        if (holder) {
          this.links.push({ item, holder });
          continue;
        }
        holders.set(e.hardlinkGroup, item);
      }
      let total = 0;
      let only: string | undefined;
      let several = false;
      for (const x of e.extents ?? []) {
        if (x.offset + x.length > (e.size ?? 0) || x.length <= 0) {
          throw new ImageError(
            'E_IMAGE_CORRUPT',
            `file ${e.path}: extent at ${x.offset}+${x.length} lies outside its size ${e.size}`,
            {
              path: e.path,
              chunk: x.chunk,
            },
          );
        }
        let list = this.ranges.get(x.chunk);
        if (!list) this.ranges.set(x.chunk, (list = []));
        list.push({ item, fileOffset: x.offset, chunkOffset: x.chunkOffset, length: x.length });
        needed.add(x.chunk);
        total += x.length;
        item.dataEnd = Math.max(item.dataEnd ?? 0, x.offset + x.length);
        if (only === undefined) only = x.chunk;
        else if (only !== x.chunk) several = true;
      }
      if (only !== undefined && !several) item.onlyChunk = only;
      item.remaining = total;
      this.bytesTotal += total;
    }
    this.needed = needed;
    for (const id of opts.resume ?? []) {
      const ranges = this.ranges.get(id);
      if (!ranges) continue;
      this.applied.add(id);
      for (const r of ranges) {
        r.item.remaining = (r.item.remaining ?? 0) - r.length;
        this.bytesDone += r.length;
      }
    }
  }

  /** Every entry by path, excluded ones too: parents are checked against what the image says they are. */
  byPath(): Map<string, FileEntry> {
    if (!this.#byPath) {
      this.#byPath = new Map();
      for (const e of this.entries) this.#byPath.set(e.path, e);
    }
    return this.#byPath;
  }

  progress(): RestoreProgress {
    return { bytesDone: this.bytesDone, bytesTotal: this.bytesTotal };
  }

  warn(msg: string): void {
    this.warnings.push(msg);
    this.opts.onWarning?.(msg);
  }

  async prepare(): Promise<void> {
    makeFolder(this.root);
    try {
      await this.prepareTree();
    } catch (err) {
      throw this.failure(err);
    }
  }

  async prepareTree(): Promise<void> {
    const present = readdirSync(this.root);
    if (present.every((n) => n === 'lost+found')) this.freshDirs.add('.');
    this.rootSetgid = (lstatSync(this.root).mode & 0o2000) !== 0;
    const dirsMade = this.makeDirsAside(present);
    /** Files spread over several chunks, made once their folders exist. */
    const later: Item[] = [];
    const nodes: Item[] = [];
    for (const item of this.items) {
      const e = item.entry;
      if (item.rel === '.') continue;
      if (this.skippedPaths.size > 0 && this.skippedPaths.has(item.parent)) {
        this.skip(item, `${item.rel}: not restored because its directory ${item.parent} was not`);
        continue;
      }
      if (e.type === 'socket') {
        this.skip(
          item,
          `${item.rel}: sockets cannot be restored (a program recreates them when it runs); skipped`,
        );
        continue;
      }
      if (this.vfat && e.type !== 'file' && e.type !== 'dir') {
        this.skip(item, `${item.rel}: vfat cannot hold a ${e.type}; skipped`);
        continue;
      }
      if (this.vfat) {
        // vfat names are case-insensitive: a second name differing only in case would overwrite the first.
        const folded = item.rel.toLowerCase();
        if (this.vfatNames.has(folded)) {
          this.skip(item, `${item.rel}: vfat already holds a name differing only in letter case; skipped`);
          continue;
        }
        this.vfatNames.add(folded);
      }
      this.checkParents(item);
      try {
        if (e.type === 'dir') {
          if (!dirsMade?.made.has(item)) this.makeDir(item);
        } else if (e.type === 'file') {
          // Finished by the writer before us: its times may still need their last nanoseconds.
          if (this.opts.complete?.has(item.rel)) this.metaDoneAt(item);
          // A file spread over several chunks is made here: their writers may run at once.
          else if (this.lazyFiles && item.onlyChunk !== undefined) item.lazy = true;
          else if (item.remaining !== undefined) {
            if (dirsMade) later.push(item);
            else this.makeFile(item);
          }
        } else if (e.type === 'symlink') {
          // Made by the workers beside the chunk writes when they can (planChunk), else below.
          if (this.lazyFiles) this.pendingSymlinks.push(item);
          else this.makeSymlink(item);
        } else if ((e.type === 'chardev' || e.type === 'blockdev') && !isRoot()) {
          this.skip(item, `${item.rel}: only root can create a device node; skipped`);
        } else {
          this.clearSpot(item);
          nodes.push(item);
        }
      } catch (err) {
        if (err instanceof ImageError || err instanceof FileVolumeError) throw err;
        const code = (err as NodeJS.ErrnoException).code;
        if (this.vfat && (code === 'EINVAL' || code === 'ENAMETOOLONG')) {
          this.skip(item, `${item.rel}: vfat does not accept this name (${code}); skipped`);
          continue;
        }
        if (this.vfat && code === 'EFBIG') {
          this.skip(item, `${item.rel}: ${item.entry.size} bytes is more than a vfat file can hold; skipped`);
          continue;
        }
        throw restoreError(item.abs, `cannot create ${e.type}`, err);
      }
    }
    if (dirsMade) {
      const made = await dirsMade.promise;
      if (!made.ok) {
        const err = Object.assign(new Error(made.reason), made.code ? { code: made.code } : {});
        throw restoreError(made.item.abs, 'cannot create directory', err);
      }
      for (const item of later) {
        try {
          this.makeFile(item);
        } catch (err) {
          if (err instanceof ImageError || err instanceof FileVolumeError) throw err;
          throw restoreError(item.abs, 'cannot create file', err);
        }
      }
    }
    await this.makeNodes(nodes);
    this.prepared = true;
  }

  /**
   * Into a fresh target (nothing there yet but a new filesystem's lost+found; not vfat, not
   * a resume) the pool's workers make every folder while this thread goes through the
   * entries: 3.2k mkdirs (~55 ms on one worker) had the restore's start to themselves. The
   * top-level folders are made here first; below them each second-level subtree goes whole
   * to one worker, so every worker's list is parents first and the lists need no order
   * between them. Undefined where the folders need the checks of makeDir and checkParents:
   * a target with things in it, or an entry whose folder is not a folder of the image.
   */
  makeDirsAside(present: string[]): { promise: Promise<DirsMade>; made: Set<Item> } | undefined {
    if (!this.lazyFiles || !this.freshDirs.has('.')) return undefined;
    const dirs: Item[] = [];
    const dirPaths = new Set<string>();
    for (const item of this.items) {
      if (item.entry.type === 'dir' && item.rel !== '.') {
        dirPaths.add(item.rel);
        // A new filesystem's lost+found is already there: makeDir takes it as it is.
        if (!present.includes(item.rel)) dirs.push(item);
      }
    }
    for (const item of this.items) {
      if (item.rel !== '.' && item.parent !== '.' && !dirPaths.has(item.parent)) return undefined;
    }
    // As makeDir would note them; items come parents first, so noteMade sees each parent first.
    for (const item of dirs) {
      this.freshDirs.add(item.rel);
      this.noteMade(item.rel);
      this.checkedDirs.add(item.rel);
    }
    // Owner-only while they are filled; their modes come in finish(), as makeDir does.
    const mode = 0o700;
    const subtrees = new Map<string, Item[]>();
    for (const item of dirs) {
      if (item.depth === 1) {
        try {
          mkdirSync(item.fs, mode);
        } catch (err) {
          throw restoreError(item.abs, 'cannot create directory', err);
        }
        continue;
      }
      // Its second-level ancestor (or itself, at the second level).
      const second = item.rel.indexOf('/', item.rel.indexOf('/') + 1);
      const top = second < 0 ? item.rel : item.rel.slice(0, second);
      let list = subtrees.get(top);
      if (!list) subtrees.set(top, (list = []));
      list.push(item);
    }
    // Biggest subtrees first, each to the worker with the fewest folders so far.
    const pool = CompressPool.shared();
    const shares: Item[][] = Array.from({ length: Math.max(1, pool.size) }, () => []);
    for (const list of [...subtrees.values()].sort((a, b) => b.length - a.length)) {
      const share = shares.reduce((a, b) => (b.length < a.length ? b : a));
      for (const item of list) share.push(item);
    }
    const jobs = shares
      .filter((share) => share.length > 0)
      .map((share) =>
        pool
          .makeDirs(
            share.map((i) => i.fs),
            mode,
          )
          .then((made): DirsMade =>
            made.ok
              ? made
              : {
                  ok: false,
                  item: share[made.index]!,
                  reason: made.reason,
                  ...(made.code ? { code: made.code } : {}),
                },
          ),
      );
    const promise = Promise.all(jobs).then((all) => all.find((m) => !m.ok) ?? { ok: true as const });
    promise.catch(() => {});
    return { promise, made: new Set(dirs) };
  }

  skip(item: Item, msg: string): void {
    item.skipped = true;
    this.skippedPaths.add(item.rel);
    this.bytesTotal -= item.remaining ?? 0;
    item.remaining = undefined;
    this.warn(msg);
  }

  /** Every existing ancestor inside the target must be a real directory, never a symlink. */
  checkParents(item: Item): void {
    // A checked directory's own parents were checked before it: one lookup for nearly every entry.
    const parent = item.parent;
    if (parent === '.' || this.checkedDirs.has(parent)) return;
    const parts = item.rel.split('/');
    let rel = '';
    for (let i = 0; i < parts.length - 1; i++) {
      rel = rel === '' ? parts[i]! : `${rel}/${parts[i]}`;
      if (this.checkedDirs.has(rel)) continue;
      // The image itself says a parent is a symlink (or a file): refused before anything is
      // made there, whether or not that symlink exists yet (symlinks may be made late).
      const parentType = this.byPath().get(rel)?.type;
      if (parentType !== undefined && parentType !== 'dir') {
        throw new ImageError(
          'E_PATH_ESCAPE',
          `cannot restore ${displayName(item.rel)}: its parent ${displayName(rel)} is a ${parentType} in the image; refusing to write through it`,
          { path: item.rel, parent: rel },
        );
      }
      const abs = join(this.root, rel);
      let st;
      try {
        st = lstatSync(fsPath(abs));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT')
          throw restoreError(abs, 'cannot check directory', err);
        // A parent the entries do not describe (partial extracts): a plain directory.
        mkdirSync(fsPath(abs), 0o755);
        this.checkedDirs.add(rel);
        this.freshDirs.add(rel);
        this.noteMade(rel);
        continue;
      }
      if (!st.isDirectory()) {
        throw new ImageError(
          'E_PATH_ESCAPE',
          `cannot restore ${displayName(item.rel)}: ${displayName(abs)} is a ${st.isSymbolicLink() ? 'symlink' : 'non-directory'} where a directory should be; refusing to write through it`,
          { path: item.rel, target: abs },
        );
      }
      this.checkedDirs.add(rel);
    }
  }

  makeSymlink(item: Item): void {
    this.clearSpot(item);
    symlinkSync(fsPath(item.entry.linkTarget ?? ''), item.fs);
  }

  /** Symlinks prepare() left to the workers; finish() makes those no plan took. */
  makePendingSymlinks(): void {
    for (const item of this.pendingSymlinks.splice(0)) {
      try {
        this.makeSymlink(item);
      } catch (err) {
        if (err instanceof ImageError || err instanceof FileVolumeError) throw err;
        throw restoreError(item.abs, 'cannot create symlink', err);
      }
    }
  }

  makeDir(item: Item): void {
    try {
      // Owner-only while we fill it; the real mode comes in finish().
      mkdirSync(item.fs, 0o700);
      this.freshDirs.add(item.rel);
      this.noteMade(item.rel);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      if (!lstatSync(item.fs).isDirectory()) {
        throw new FileVolumeError(
          'E_RESTORE_IO',
          `cannot create directory ${displayName(item.abs)}: something else is already there`,
          {
            path: item.abs,
          },
        );
      }
    }
    this.checkedDirs.add(item.rel);
  }

  makeFile(item: Item): void {
    if (this.opts.resume && this.reopen(item)) return;
    closeSync(this.createFile(item));
  }

  /** Creates the regular file at the item's place, at its full size, and returns its descriptor. */
  createFile(item: Item): number {
    this.clearSpot(item);
    const fd = openSync(
      item.fs,
      constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
      0o600,
    );
    try {
      // Every range no extent covers stays a hole; only a hole at the end needs the size set
      // (the last extent's write sets it otherwise).
      if (item.dataEnd !== item.entry.size) ftruncateSync(fd, item.entry.size ?? 0);
    } catch (err) {
      closeSync(fd);
      unlinkSync(item.fs); // an empty file under the real name would pass for a restored one
      throw err;
    }
    return fd;
  }

  /** Resuming: keeps a regular file the interrupted run made, with the bytes it already holds. */
  reopen(item: Item): boolean {
    let fd: number;
    try {
      fd = openSync(item.fs, constants.O_WRONLY | constants.O_NOFOLLOW);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EACCES') return false; // missing, or a symlink: made afresh
      // Completed and made read-only before the interruption: its bytes count as written,
      // so it must be kept, not made afresh. finish() sets its mode again.
      try {
        if (!lstatSync(item.fs).isFile()) return false;
        chmodSync(item.fs, 0o600);
        fd = openSync(item.fs, constants.O_WRONLY | constants.O_NOFOLLOW);
      } catch {
        return false;
      }
    }
    try {
      if (!fstatSync(fd).isFile()) return false;
      ftruncateSync(fd, item.entry.size ?? 0);
      return true;
    } finally {
      closeSync(fd);
    }
  }

  /** Removes a non-directory left by an earlier restore or extract at the item's place. */
  clearSpot(item: Item): void {
    if (this.freshDirs.has(item.parent)) return;
    let st;
    try {
      st = lstatSync(item.fs);
    } catch {
      return;
    }
    if (st.isDirectory()) {
      throw new FileVolumeError(
        'E_RESTORE_IO',
        `cannot create ${item.entry.type} ${displayName(item.abs)}: a directory is in the way`,
        {
          path: item.abs,
        },
      );
    }
    unlinkSync(item.fs);
  }

  /** Fifos and device nodes through `mknod`, a few hundred per shell rather than one process each. */
  async makeNodes(nodes: Item[]): Promise<void> {
    // Fifos: mkfifo takes many names per run. Device nodes: mknod takes one, so a shell loop
    // runs them (one fork each, but no Node spawn each); real trees rarely hold many.
    // argv is text: a name that is not UTF-8 is made under a stand-in name in the target's
    // root and renamed into place by its bytes.
    const renames: Array<{ from: string; to: Buffer }> = [];
    const arg = (i: Item): string => {
      if (typeof i.fs === 'string') return i.fs;
      const from = join(this.root, `.imgcast-node-${process.pid}-${renames.length}`);
      renames.push({ from, to: i.fs });
      return from;
    };
    const fifos = nodes.filter((i) => i.entry.type === 'fifo').map(arg);
    const devices = nodes
      .filter((i) => i.entry.type !== 'fifo')
      .flatMap((i) => [
        arg(i),
        i.entry.type === 'chardev' ? 'c' : 'b',
        String(i.entry.rdevMajor ?? 0),
        String(i.entry.rdevMinor ?? 0),
      ]);
    try {
      for (const batch of batches(fifos)) await runTool('mkfifo', ['--', ...batch]);
      const loop = 'while [ $# -gt 0 ]; do mknod -- "$1" "$2" "$3" "$4" || exit 1; shift 4; done';
      for (const batch of batches(devices, 4)) await runTool('sh', ['-c', loop, 'sh', ...batch]);
      for (const { from, to } of renames) renameSync(from, to);
    } catch (err) {
      for (const { from } of renames) rmSync(from, { force: true });
      if (err instanceof FileVolumeError) throw err;
      throw restoreError(this.root, 'cannot put fifos and device nodes in place under', err);
    }
  }

  async applyChunk(id: string, raw: Buffer): Promise<void> {
    if (!this.prepared)
      throw new FileVolumeError('E_RESTORE_IO', 'applyChunk called before prepare()', { chunk: id });
    // One chunk at a time: a descriptor closed (least recently used) while another chunk's
    // write is under way could be reused by the next open, and that write land in another file.
    const run = this.writes.then(async () => {
      // After a failure nothing more is written: what the failure's message says is left stays so.
      if (this.failed) throw this.failed;
      try {
        await this.writeChunk(id, raw);
      } catch (err) {
        throw this.failure(err);
      }
    });
    this.writes = run.catch(() => {});
    return run;
  }

  async writeChunk(id: string, raw: Buffer): Promise<void> {
    if (this.applied.has(id)) return;
    const ranges = this.ranges.get(id);
    if (!ranges) return;
    for (const r of ranges) {
      if (r.item.skipped) continue;
      if (r.chunkOffset + r.length > raw.length) {
        throw new ImageError(
          'E_IMAGE_CORRUPT',
          `file ${r.item.rel}: extent wants bytes ${r.chunkOffset}..${r.chunkOffset + r.length} of chunk ${id}, which holds ${raw.length}`,
          { path: r.item.rel, chunk: id },
        );
      }
      const fd = this.fdFor(r.item);
      try {
        // Off this thread: a receiver reads its socket here, and a write held up by the kernel
        // (a checkpoint's sync of the filesystem) would leave the socket to overflow.
        await writeFullAt(fd, raw, r.chunkOffset, r.length, r.fileOffset);
      } catch (err) {
        throw restoreError(r.item.abs, 'cannot write', err, ` (chunk ${id})`);
      }
      this.bytesDone += r.length;
      const left = (r.item.remaining ?? 0) - r.length;
      r.item.remaining = left;
      if (left <= 0) this.completeFile(r.item);
    }
    this.applied.add(id);
  }

  /**
   * What a worker can write from this chunk (RestoreSink.planChunk): every range of it,
   * grouped by file. A file whose data is all in this chunk is created by that worker,
   * and gets its owner, mode and times there too when nothing has to follow by name.
   */
  planChunk(id: string): ChunkWritePlan | undefined {
    if (!this.prepared || !this.lazyFiles || this.failed || this.applied.has(id)) return undefined;
    const ranges = this.ranges.get(id);
    if (!ranges) return undefined;
    const plan = new PlanBuilder();
    // A file's ranges in a chunk follow one another: the constructor lists each file's extents together.
    let last: Item | undefined;
    const planned = new Set<Item>();
    for (const r of ranges) {
      const item = r.item;
      if (item.skipped) continue;
      if (item !== last) {
        if (planned.has(item))
          throw new Error(`internal: the ranges of ${item.rel} in chunk ${id} are not together`);
        planned.add(item);
        last = item;
        const whole = item.onlyChunk === id && item.lazy === true;
        plan.write({
          rel: item.rel,
          path: typeof item.fs !== 'string' ? item.fs : undefined,
          create: whole,
          clear: whole && !this.freshDirs.has(item.parent),
          truncate: whole && item.dataEnd !== item.entry.size ? (item.entry.size ?? 0) : undefined,
          meta: whole ? this.earlyMeta(item) : undefined,
        });
      }
      plan.range(r.fileOffset, r.chunkOffset, r.length);
    }
    // A share of the symlinks rides along, so they are made while other chunks decode,
    // with their owner and times when nothing has to follow by name.
    const symlinks = this.pendingSymlinks.splice(0, SYMLINKS_PER_PLAN);
    for (const item of symlinks) {
      plan.write({
        rel: item.rel,
        path: typeof item.fs !== 'string' ? item.fs : undefined,
        create: true,
        clear: !this.freshDirs.has(item.parent),
        symlink: fsPath(item.entry.linkTarget ?? ''),
        meta: this.earlyMeta(item),
      });
    }
    if (symlinks.length > 0) this.plannedSymlinks.set(id, symlinks);
    return plan.done(this.prefix, isRoot(), UMASK);
  }

  planDone(id: string, outcome: ChunkWriteOutcome): void {
    if (this.failed) throw this.failed;
    try {
      this.planDoneTree(id, outcome);
    } catch (err) {
      throw this.failure(err);
    }
  }

  planDoneTree(id: string, outcome: ChunkWriteOutcome): void {
    if (!outcome.ok) {
      if (outcome.extent) {
        throw new ImageError(
          'E_IMAGE_CORRUPT',
          `file ${displayName(outcome.rel)}: extent wants bytes ${outcome.extent.chunkOffset}..${outcome.extent.chunkOffset + outcome.extent.length} of chunk ${id}, which is shorter`,
          { path: outcome.rel, chunk: id },
        );
      }
      const err = Object.assign(new Error(outcome.reason), outcome.code ? { code: outcome.code } : {});
      throw restoreError(join(this.root, outcome.rel), 'cannot write', err, ` (chunk ${id})`);
    }
    this.ownersDenied += outcome.ownersDenied;
    for (const item of this.plannedSymlinks.get(id) ?? [])
      if (this.metaWhereMade(item)) this.metaDoneAt(item);
    this.plannedSymlinks.delete(id);
    for (const r of this.ranges.get(id) ?? []) {
      const item = r.item;
      if (item.skipped) continue;
      this.bytesDone += r.length;
      item.remaining = (item.remaining ?? 0) - r.length;
      if (item.onlyChunk === id && item.lazy) {
        item.lazy = false;
        if (this.metaWhereMade(item)) this.metaDoneAt(item);
      }
    }
    this.applied.add(id);
  }

  /**
   * The entry's owner, mode and times are set and nothing touches it again before the
   * flags: times Node could not set to the nanosecond go to the helper now (see times.ts),
   * beside the rest of the restore.
   */
  metaDoneAt(item: Item): void {
    item.metaDone = true;
    this.timesFinal(item);
  }

  timesFinal(item: Item): void {
    if (!this.exactTimes) return;
    const { atimeNs, mtimeNs } = item.entry;
    if (exactDouble(atimeNs, nsToSeconds(atimeNs)) && exactDouble(mtimeNs, nsToSeconds(mtimeNs))) return;
    this.exactTimes.add({ path: item.fs, atimeNs, mtimeNs });
  }

  /** Whether an entry gets its owner, mode and times where it is made, by the worker or completeFile (see earlyMeta). */
  metaWhereMade(item: Item): boolean {
    const x = item.entry.xattrs;
    if (!this.lazyFiles) return false;
    for (const _ in x) return false;
    return true;
  }

  /** Owner, mode and times for a file nothing has to touch by name afterwards (no xattrs; not vfat). */
  earlyMeta(item: Item): EntryMeta | undefined {
    if (!this.metaWhereMade(item)) return undefined;
    const e = item.entry;
    return {
      uid: e.uid,
      gid: e.gid,
      chown: !this.ownedAsIs(item),
      mode: e.mode & 0o7777,
      atime: nsToSeconds(e.atimeNs),
      mtime: nsToSeconds(e.mtimeNs),
    };
  }

  /**
   * A directory this restore made is plain (this process's group, no setgid) only if
   * its parent is: a setgid directory hands both its group and its setgid bit to the
   * directories made in it.
   */
  noteMade(rel: string): void {
    const parent = parentOf(rel);
    if (parent === '.' ? !this.rootSetgid : this.madeDirs.has(parent)) this.madeDirs.add(rel);
  }

  /**
   * Whether the entry, made by this restore, already has the owner it should: what this
   * process creates belongs to its user and group, unless the directory it is made in
   * passes its group on (setgid; see noteMade). Most entries of a system tree are
   * root's, so this saves a chown for nearly every one when restoring as root.
   */
  ownedAsIs(item: Item): boolean {
    return item.entry.uid === EUID && item.entry.gid === EGID && this.madeDirs.has(item.parent);
  }

  /**
   * The file's last bytes are written. Unless something still has to happen to it by
   * name (extended attributes, which must follow chown and precede a chmod that could
   * lock us out; vfat's limits), its owner, mode and times are set now, through the
   * descriptor: chown first (it clears setuid), then the mode, then the times, which
   * nothing touches afterwards.
   */
  completeFile(item: Item): void {
    const fd = this.fds.get(item);
    const meta = this.earlyMeta(item);
    if (fd !== undefined && meta) {
      try {
        if (meta.chown) fchownSync(fd, meta.uid, meta.gid);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EPERM' && !isRoot()) this.ownersDenied++;
        else throw restoreError(item.abs, `cannot set owner ${meta.uid}:${meta.gid}`, err);
      }
      try {
        fchmodSync(fd, meta.mode);
        futimesSync(fd, utimeArg(meta.atime), utimeArg(meta.mtime));
      } catch (err) {
        throw restoreError(item.abs, 'cannot set mode and times', err);
      }
      this.metaDoneAt(item);
    }
    this.closeFd(item);
  }

  fdFor(item: Item): number {
    const fd = this.fds.get(item);
    if (fd !== undefined) {
      // Refresh its place so the least recently used descriptor is the one closed.
      this.fds.delete(item);
      this.fds.set(item, fd);
      return fd;
    }
    if (this.fds.size >= MAX_OPEN_FILES) {
      const oldest = this.fds.keys().next().value!;
      this.closeFd(oldest);
    }
    let opened: number;
    try {
      if (item.lazy) {
        opened = this.createFile(item);
        item.lazy = false;
      } else {
        opened = openSync(item.fs, constants.O_WRONLY | constants.O_NOFOLLOW);
      }
    } catch (err) {
      if (err instanceof ImageError || err instanceof FileVolumeError) throw err;
      throw restoreError(item.abs, 'cannot open for writing', err);
    }
    this.fds.set(item, opened);
    return opened;
  }

  closeFd(item: Item): void {
    const fd = this.fds.get(item);
    if (fd === undefined) return;
    this.fds.delete(item);
    closeSync(fd);
  }

  closeAll(): void {
    for (const item of [...this.fds.keys()]) this.closeFd(item);
  }

  async finish(): Promise<void> {
    if (!this.prepared) throw new FileVolumeError('E_RESTORE_IO', 'finish called before prepare()', {});
    if (this.failed) throw this.failed;
    try {
      await this.finishTree();
    } catch (err) {
      throw this.failure(err);
    }
  }

  async finishTree(): Promise<void> {
    await this.writes;
    this.closeAll();
    const missing = [...this.needed].filter((id) => !this.applied.has(id));
    if (missing.length > 0) {
      const files = new Set<string>();
      for (const id of missing) for (const r of this.ranges.get(id) ?? []) files.add(r.item.rel);
      const sample = [...files].slice(0, 5);
      throw new FileVolumeError(
        'E_RESTORE_INCOMPLETE',
        `${missing.length} of ${count(this.needed.size, 'chunk')} never arrived ` +
          `(first ${missing[0]}), so ${count(files.size, 'file')} lack data (${sample.join(', ')}${files.size > sample.length ? ', …' : ''})`,
        { target: this.root, missingChunks: missing, files: files.size },
      );
    }

    this.makePendingSymlinks();
    for (const { item, holder } of this.links) {
      if (holder.skipped || item.skipped) continue;
      try {
        this.checkParents(item);
        this.clearSpot(item);
        linkSync(holder.fs, item.fs);
      } catch (err) {
        if (err instanceof ImageError || err instanceof FileVolumeError) throw err;
        throw restoreError(item.abs, `cannot create hard link to ${displayName(holder.abs)}`, err);
      }
    }
    const live = this.items.filter((i) => !i.skipped && !i.metaDone);

    if (this.vfat) {
      const xattrCount = live.filter((i) => i.entry.xattrs && Object.keys(i.entry.xattrs).length > 0).length;
      this.warn(
        `vfat keeps no owners or permission bits: not applied to ${count(live.length, 'entry', 'entries')}`,
      );
      if (xattrCount > 0)
        this.warn(
          `vfat keeps no extended attributes: skipped them on ${count(xattrCount, 'entry', 'entries')}`,
        );
    } else {
      this.applyOwners(live);
      const withXattrs = live.filter((i) => i.entry.xattrs && Object.keys(i.entry.xattrs).length > 0);
      // After chown, which would clear security.capability; before chmod, which could make files read-only to us.
      const unsupported = await applyXattrs(
        this.root,
        withXattrs.map((i) => ({ path: i.rel, xattrs: i.entry.xattrs! })),
      );
      if (unsupported.length > 0) {
        this.warn(
          `the target filesystem does not support some extended attributes (${count(unsupported.length, 'refusal')}), e.g. ${unsupported[0]}`,
        );
      }
    }
    this.applyModesAndTimes(live);
    const linked = this.linkedItems();
    for (const i of live) if (!linked.has(i)) this.timesFinal(i);
    await this.exactTimes?.finish();
    // Last: an immutable or append-only inode takes no more times, xattrs, modes or links.
    await this.applyInodeFlags();
  }

  /** Names that share an inode with an earlier one (hard links): that inode's times and flags are set through the earlier name. */
  linkedItems(): Set<Item> {
    return new Set(this.links.map((l) => l.item));
  }

  async applyInodeFlags(): Promise<void> {
    const linked = this.linkedItems();
    const withFlags = this.items.filter(
      (i) =>
        !i.skipped && !linked.has(i) && i.entry.flags && (i.entry.type === 'file' || i.entry.type === 'dir'),
    );
    if (withFlags.length === 0) return;
    if (this.vfat) {
      this.warn(`vfat keeps no inode flags: not applied to ${count(withFlags.length, 'entry', 'entries')}`);
      return;
    }
    const unknown = new Set<string>();
    const list: Array<{ path: string | Buffer; flags: string }> = [];
    for (const i of withFlags) {
      let flags = '';
      for (const f of i.entry.flags!) {
        if (KEPT_FLAGS.includes(f)) flags += f;
        else unknown.add(f);
      }
      if (flags !== '') list.push({ path: i.fs, flags });
    }
    if (unknown.size > 0) {
      this.warn(`inode flags this imgcast does not restore were left out: ${[...unknown].join('')}`);
    }
    const r = await applyFlags(list, isRoot());
    if (r.unsupported.length > 0) {
      this.warn(
        `the target filesystem does not support some inode flags (${count(r.unsupported.length, 'refusal')}), e.g. ${r.unsupported[0]}`,
      );
    }
    if (r.denied > 0) {
      this.warn(
        `not running as root: inode flags not restored on ${count(r.denied, 'entry', 'entries')} (immutable, append-only and data journalling need root)`,
      );
    }
  }

  applyOwners(live: Item[]): void {
    for (const i of live) {
      if (this.ownedAsIs(i)) continue;
      try {
        lchownSync(i.fs, i.entry.uid, i.entry.gid);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EPERM' && !isRoot()) this.ownersDenied++;
        else throw restoreError(i.abs, `cannot set owner ${i.entry.uid}:${i.entry.gid}`, err);
      }
    }
    if (this.ownersDenied > 0)
      this.warn(
        `not running as root: owners not restored on ${count(this.ownersDenied, 'entry', 'entries')}`,
      );
  }

  /**
   * Modes after owners (chown clears setuid), then times. Directories come last and
   * deepest first: nothing touches their times any more, and a directory made
   * unsearchable (0o000 as a non-root user) no longer blocks its children.
   */
  applyModesAndTimes(live: Item[]): void {
    const nonDirs = live.filter((i) => i.entry.type !== 'dir');
    const dirs = live.filter((i) => i.entry.type === 'dir').sort((a, b) => b.depth - a.depth);
    const linked = new Set(this.links.map((l) => l.item));
    for (const i of [...nonDirs, ...dirs]) {
      if (!this.vfat && i.entry.type !== 'symlink') {
        try {
          chmodSync(i.fs, i.entry.mode & 0o7777);
        } catch (err) {
          throw restoreError(i.abs, 'cannot set mode', err);
        }
      }
      if (linked.has(i)) continue; // shares its inode with the holder, whose times are the same
      try {
        lutimesSync(i.fs, utimeArg(nsToSeconds(i.entry.atimeNs)), utimeArg(nsToSeconds(i.entry.mtimeNs)));
      } catch (err) {
        // vfat's root directory has no entry to hold times, and vfat has no times before 1980.
        if (this.vfat) this.warn(`${i.rel}: vfat refused its times (${(err as NodeJS.ErrnoException).code})`);
        else throw restoreError(i.abs, 'cannot set times', err);
      }
    }
  }

  async abort(_reason: unknown): Promise<void> {
    await this.writes;
    this.closeAll();
    this.exactTimes?.kill();
    for (const item of this.unfinished().removed) {
      try {
        unlinkSync(item.fs);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT')
          throw restoreError(item.abs, 'cannot remove', err);
      }
    }
  }

  /**
   * The regular files whose bytes are not all written, split by what an abort does with
   * them. One that holds bytes of a chunk this restore counts as applied stays (a resumed
   * restore is told that chunk is there and completes the file; removing it would lose
   * those bytes for good). Every other one is removed: nothing counts on its bytes, and a
   * file left with part of its data (and the 0600 mode files have until finish) must not
   * pass for a restored one.
   */
  unfinished(): { removed: Item[]; kept: Item[] } {
    const holdsApplied = new Set<Item>();
    for (const id of this.applied) for (const r of this.ranges.get(id) ?? []) holdsApplied.add(r.item);
    const removed: Item[] = [];
    const kept: Item[] = [];
    for (const item of this.items) {
      if (item.skipped || item.remaining === undefined || item.remaining <= 0) continue;
      (holdsApplied.has(item) ? kept : removed).push(item);
    }
    return { removed, kept };
  }

  /**
   * The first failure once the target is being written, worded for what it leaves: the
   * folder is incomplete, files not completely written are removed by abort() (which
   * every caller runs on failure), and the partly written ones kept are named. Later
   * calls get the same error, so what it says stays true.
   */
  failure(err: unknown): unknown {
    if (this.failed) return this.failed;
    this.exactTimes?.kill();
    if (!(err instanceof ImgcastError)) return err;
    const { removed, kept } = this.unfinished();
    const names = (list: Item[]) =>
      list
        .slice(0, 5)
        .map((i) => displayName(i.rel))
        .join(', ') + (list.length > 5 ? ', …' : '');
    let left = '';
    if (removed.length > 0) left += '; files not completely written are removed';
    if (kept.length > 0) {
      left += `${removed.length > 0 ? ', except' : ';'} ${count(kept.length, 'file')} left partly written (${names(kept)})`;
    }
    err.message = `restore into ${displayName(this.root)} is incomplete: ${err.message}${left}`;
    Object.assign(err.details, {
      target: this.root,
      partlyWrittenKept: kept.slice(0, 100).map((i) => i.rel),
    });
    this.failed = err;
    return err;
  }
}

/** Components in a canonical entry path: 0 for '.', 1 for 'a', 2 for 'a/b'. */
function depthOf(path: string): number {
  if (path === '.') return 0;
  let depth = 1;
  for (let i = path.indexOf('/'); i >= 0; i = path.indexOf('/', i + 1)) depth++;
  return depth;
}

function parentOf(path: string): string {
  const i = path.lastIndexOf('/');
  return i < 0 ? '.' : path.slice(0, i);
}

/**
 * A time for Node's utimes, which takes seconds as a double: the nearest one, which at
 * today's dates may be up to 0.24 µs off (timesFinal has those times set again, exactly).
 */
export function nsToSeconds(ns: string): number {
  // Plain digits (every time after 1970) split as text: the same two numbers as below
  // without two BigInts per time, 110k times in a restore of 55k files.
  if (ns.length > 9 && ns.length <= 24 && DIGITS.test(ns)) {
    return Number(ns.slice(0, -9)) + Number(ns.slice(-9)) / 1e9;
  }
  const n = BigInt(ns);
  const sec = n / 1_000_000_000n;
  return Number(sec) + Number(n - sec * 1_000_000_000n) / 1e9;
}

const DIGITS = /^[0-9]+$/;

/**
 * A time for Node's utimes family, which takes a negative number of seconds for "now":
 * a time before 1970 goes as a numeric string, which it converts without that check.
 */
export function utimeArg(seconds: number): number | string {
  return seconds < 0 ? String(seconds) : seconds;
}

/** Read once (reading it means setting it back); a restore does not change it. */
const UMASK = process.umask();
const EUID = process.geteuid?.() ?? -1;
const EGID = process.getegid?.() ?? -1;

function isRoot(): boolean {
  return process.getuid?.() === 0;
}

/** `what` the path, then `note` (which chunk), then why: "cannot write /t/a (chunk …): no space left on the device (ENOSPC)". */
function restoreError(path: string, what: string, err: unknown, note = ''): FileVolumeError {
  const e = err as NodeJS.ErrnoException;
  return new FileVolumeError(
    'E_RESTORE_IO',
    `${what} ${displayName(path)}${note}: ${systemReason(err)}`,
    { path, errno: e.code },
    { cause: err },
  );
}

/** Splits argv into runs of about MKNOD_BATCH_BYTES, keeping groups of `group` together. */
function batches(args: string[], group = 1): string[][] {
  const out: string[][] = [];
  let cur: string[] = [];
  let size = 0;
  for (let i = 0; i < args.length; i += group) {
    const g = args.slice(i, i + group);
    cur.push(...g);
    size += g.reduce((n, a) => n + a.length + 1, 0);
    if (size >= MKNOD_BATCH_BYTES) {
      out.push(cur);
      cur = [];
      size = 0;
    }
  }
  if (cur.length > 0) out.push(cur);
  return out;
}

/** Names travel as argv, never through a shell's parser. */
function runTool(cmd: string, args: string[]): Promise<void> {
  const what = cmd === 'mkfifo' ? 'fifos' : 'device nodes';
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    const err: Buffer[] = [];
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) =>
      reject(
        new FileVolumeError(
          'E_RESTORE_IO',
          `cannot create ${what}: ${cmd}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'it is not installed (not found on PATH) (ENOENT)' : systemReason(e)}`,
          {},
          { cause: e },
        ),
      ),
    );
    child.on('close', (code) => {
      if (code === 0) return resolvePromise();
      const msg = Buffer.concat(err).toString('utf8').trim();
      reject(
        new FileVolumeError('E_RESTORE_IO', `cannot create ${what}: ${msg || `${cmd} exit ${code}`}`, {}),
      );
    });
  });
}
