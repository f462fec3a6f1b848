/**
 * Filesystems imgcast captures as files and recreates on restore: ext2/3/4 and vfat.
 * Capture records what mkfs needs to make an equivalent filesystem (same type, label,
 * UUID, block/inode size, features, FAT width) so that fstab entries, boot loader
 * configs and EFI boot entries that name the filesystem keep working after restore.
 */
import { execFile } from 'node:child_process';
import { mkdir, open, readdir, readFile, realpath, rm, rmdir, stat, statfs } from 'node:fs/promises';
import { release, tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import type { FilesystemInfo, FilesystemType } from '../image/types.ts';
import { blkidProbe, detachLoop, loopRange, mountPointsOf, unescapeMountinfo } from './device.ts';
import { DiskError } from './errors.ts';
import { run, runTool } from './exec.ts';
import { Flusher } from './flusher.ts';
import { forgetLoop, loopRecords, ownedTempDir, runAlive, STAGING_PREFIXES, tagOf } from './owner.ts';
import { syncFilesystemChecked, writeFailure } from './write-errors.ts';
import { count, systemReason, withArticle } from '../wording.ts';

const EXT_TYPES = new Set(['ext2', 'ext3', 'ext4']);
/** Features that describe a state, not a choice, and that mke2fs refuses. */
const EXT_STATE_FEATURES = new Set(['needs_recovery', 'orphan_present', 'journal_dev', 'snapshot_bitmap']);

/** Filesystem types imgcast captures as file volumes. */
export function isFileVolumeType(type: string | undefined): type is Exclude<FilesystemType, 'directory'> {
  return type !== undefined && (EXT_TYPES.has(type) || type === 'vfat');
}

function field(text: string, name: string): string | undefined {
  const m = new RegExp(`^${name}:[ \\t]*(.*)$`, 'm').exec(text);
  return m?.[1]?.trim();
}

/** Reads type, label, UUID and the mkfs parameters of the ext2/3/4 or vfat filesystem on `device`. */
export async function readFilesystemInfo(device: string): Promise<FilesystemInfo> {
  const probe = await blkidProbe(device);
  const type = probe.TYPE;
  if (type && EXT_TYPES.has(type)) {
    const out = await run('dumpe2fs', ['-h', device], `read the ext superblock of ${device}`);
    const blockSize = Number(field(out, 'Block size'));
    const blockCount = Number(field(out, 'Block count'));
    const freeBlocks = Number(field(out, 'Free blocks'));
    const label = field(out, 'Filesystem volume name');
    const features = (field(out, 'Filesystem features') ?? '')
      .split(/\s+/)
      .filter((f) => f && f !== '(none)' && !EXT_STATE_FEATURES.has(f));
    return {
      type: type as FilesystemType,
      ...(label && label !== '<none>' ? { label } : {}),
      uuid: field(out, 'Filesystem UUID'),
      blockSize,
      inodeSize: Number(field(out, 'Inode size')),
      features,
      usedBytes: (blockCount - freeBlocks) * blockSize,
    };
  }
  if (type === 'vfat') {
    const bits = Number(/FAT(\d+)/.exec(probe.VERSION ?? '')?.[1]);
    const fh = await open(device, 'r');
    let sectorSize = 512;
    try {
      const b = Buffer.alloc(512);
      await fh.read(b, 0, 512, 0);
      sectorSize = b.readUInt16LE(11);
    } finally {
      await fh.close();
    }
    const used = await vfatUsedBytes(device);
    return {
      type: 'vfat',
      ...(probe.LABEL ? { label: probe.LABEL } : {}),
      ...(probe.UUID ? { uuid: probe.UUID } : {}),
      ...(bits ? { fatBits: bits } : {}),
      blockSize: sectorSize,
      ...(used !== undefined ? { usedBytes: used } : {}),
    };
  }
  throw new DiskError(
    'E_FS_UNSUPPORTED',
    `${device} holds ${type ? `${withArticle(type)} filesystem` : 'no recognised filesystem'}; only ext2/3/4 and vfat are captured as files`,
    { device, type },
  );
}

/**
 * Why a filesystem cannot be captured consistently as it is, or undefined when it can:
 * an ext3/4 journal that still needs replaying holds changes the files do not show yet.
 */
export async function captureBlocker(device: string, info: FilesystemInfo): Promise<string | undefined> {
  if (!EXT_TYPES.has(info.type)) return undefined;
  const out = await run('dumpe2fs', ['-h', device], `read the ext superblock of ${device}`);
  const features = (field(out, 'Filesystem features') ?? '').split(/\s+/);
  if (features.includes('needs_recovery')) {
    return 'its journal needs recovery (it was not cleanly unmounted); mount it once read-write and unmount it, or run e2fsck, then capture again';
  }
  return undefined;
}

/** "fsck.fat -n" ends with "N files, used/total clusters"; the cluster size is in the boot sector. */
async function vfatUsedBytes(device: string): Promise<number | undefined> {
  const r = await runTool('fsck.fat', ['-n', device]);
  const m = /(\d+)\/(\d+) clusters/.exec(r.stdout);
  if (!m) return undefined;
  const fh = await open(device, 'r');
  try {
    const b = Buffer.alloc(512);
    await fh.read(b, 0, 512, 0);
    return Number(m[1]) * b.readUInt16LE(11) * b[13]!;
  } finally {
    await fh.close();
  }
}

/**
 * Makes a filesystem on `device` that reproduces `info` (type, label, UUID, geometry,
 * features). `inodes`: an ext filesystem's inode count, where mke2fs's default for the
 * size would be too few (fs-space.ts extMkfsInodes).
 */
export async function makeFilesystem(
  device: string,
  info: FilesystemInfo,
  opts: { inodes?: number } = {},
): Promise<void> {
  if (EXT_TYPES.has(info.type)) {
    const args = ['-F', '-q'];
    if (info.uuid) args.push('-U', info.uuid);
    if (info.label) args.push('-L', info.label);
    if (info.blockSize) args.push('-b', String(info.blockSize));
    if (info.inodeSize) args.push('-I', String(info.inodeSize));
    if (opts.inodes) args.push('-N', String(opts.inodes));
    // 'none' first so the result has exactly the source's features, not mke2fs.conf defaults plus them.
    if (info.features) args.push('-O', ['none', ...info.features].join(','));
    args.push(device);
    await run(`mkfs.${info.type}`, args, `recreate the ${info.type} filesystem on ${device}`);
    return;
  }
  if (info.type === 'vfat') {
    const args: string[] = [];
    if (info.fatBits) args.push('-F', String(info.fatBits));
    if (info.uuid) args.push('-i', info.uuid.replace('-', ''));
    if (info.label) args.push('-n', info.label);
    if (info.blockSize && info.blockSize !== 512) args.push('-S', String(info.blockSize));
    args.push(device);
    await run('mkfs.vfat', args, `recreate the vfat filesystem on ${device}`);
    return;
  }
  throw new DiskError('E_FS_UNSUPPORTED', `cannot create ${withArticle(info.type)} filesystem on ${device}`, {
    device,
    type: info.type,
  });
}

let baseReady: Promise<string> | undefined;

/**
 * Parent of imgcast's temporary mount points: a shared bind mount of itself. A process
 * that enters a new mount namespace (`ip netns exec`, container tools) copies every
 * mount that exists at that moment; under a private parent such a copy would keep the
 * filesystem mounted after imgcast unmounts it, with its journal unflushed. Under a
 * shared parent the unmount propagates into those copies.
 */
function mountBase(): Promise<string> {
  baseReady ??= (async () => {
    const base = join(
      await stat('/run').then(
        () => '/run',
        () => tmpdir(),
      ),
      'imgcast-mounts',
    );
    await mkdir(base, { recursive: true });
    const info = await readFile('/proc/self/mountinfo', 'utf8');
    const mounted = info.split('\n').some((l) => l.split(' ')[4] === base);
    if (!mounted) await run('mount', ['--bind', base, base], 'prepare the mount point directory');
    await run('mount', ['--make-shared', base], 'prepare the mount point directory');
    return base;
  })().catch((err: unknown) => {
    baseReady = undefined;
    throw err;
  });
  return baseReady;
}

/** The folders imgcast mounts filesystems under: mountBase() uses the first that exists. */
function mountBases(): string[] {
  return [...new Set([join('/run', 'imgcast-mounts'), join(tmpdir(), 'imgcast-mounts')])];
}

export interface Leftovers {
  /** What was unmounted, detached or removed. */
  released: string[];
  /** What could not be, with the reason (a restore onto it is then refused as mounted). */
  failed: string[];
}

/**
 * Undoes what imgcast runs that are no longer running (killed, crashed) left behind:
 * their mounts under imgcast's mount folders, their loop devices, their mount points
 * and staging folders. Everything is told apart by the run that made it (owner.ts), so
 * what a live run uses, another process's mounts and loop devices, and folders made
 * before runs were tagged are never touched. Every restore and capture calls it first.
 */
export async function releaseLeftovers(): Promise<Leftovers> {
  const out: Leftovers = { released: [], failed: [] };
  const attempt = async (what: string, undo: () => Promise<void>) => {
    try {
      await undo();
      out.released.push(what);
    } catch (err) {
      out.failed.push(`${what}: ${systemReason(err)}`);
    }
  };
  for (const base of mountBases()) {
    for (const name of await readdir(base).catch(() => [] as string[])) {
      const tag = tagOf(name, 'mnt-');
      if (!tag || (await runAlive(tag))) continue;
      const dir = join(base, name);
      const sources = await mountSourcesAt(dir);
      await attempt(sources.length ? `${sources.join(', ')} on ${dir}` : `mount point ${dir}`, async () => {
        for (let i = 0; i < sources.length; i++) {
          await run('umount', [dir], `unmount ${dir}`);
        }
        await removeMountPoint(dir);
      });
    }
  }
  const records = await loopRecords();
  const live = new Set<string>();
  for (const r of records) if (await runAlive(r.tag)) live.add(r.device);
  for (const r of records) {
    if (await runAlive(r.tag)) continue;
    // The device went on to a live run after the dead one detached it: only the stale record goes.
    if (live.has(r.device)) {
      await forgetLoop(r.device, r.tag);
      continue;
    }
    const now = await loopRange(basename(r.device));
    if (!now || now.backingFile !== r.backingFile || now.offset !== r.offset) {
      await forgetLoop(r.device, r.tag);
      continue;
    }
    const mounts = await mountPointsOf(r.device);
    if (mounts.length > 0) {
      out.failed.push(`${r.device} (over ${r.backingFile}): still mounted on ${mounts.join(', ')}`);
      continue;
    }
    await attempt(`${r.device} (over ${r.backingFile})`, () => detachLoop(r.device, r.tag));
  }
  for (const name of await readdir(tmpdir()).catch(() => [] as string[])) {
    const prefix = STAGING_PREFIXES.find((p) => name.startsWith(p));
    const tag = prefix && tagOf(name, prefix);
    if (!tag || (await runAlive(tag))) continue;
    const dir = join(tmpdir(), name);
    await attempt(`staging folder ${dir}`, () => rm(dir, { recursive: true, force: true }));
  }
  return out;
}

/**
 * Undoes what killed imgcast runs left mounted or attached (releaseLeftovers), saying so:
 * without it a target a killed restore had mounted would be refused as in use for good.
 */
export async function releaseDeadRuns(onWarning?: (message: string) => void): Promise<void> {
  const { released, failed } = await releaseLeftovers();
  for (const what of released) onWarning?.(`released ${what}, left behind by an imgcast run that was killed`);
  for (const what of failed) onWarning?.(`could not release what a killed imgcast run left: ${what}`);
}

/** What is mounted at exactly `dir`, newest last (a folder can be mounted over more than once). */
async function mountSourcesAt(dir: string): Promise<string[]> {
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  const out: string[] = [];
  for (const line of info.split('\n')) {
    const [pre, post] = line.split(' - ');
    if (!pre || !post || unescapeMountinfo(pre.split(' ')[4] ?? '') !== dir) continue;
    out.push(post.split(' ')[1] ?? '?');
  }
  return out;
}

/**
 * Removes an (unmounted) mount point. rmdir, not rm: an rm without `recursive` refuses
 * every folder, which left one behind per mount; and rmdir never deletes what a mount
 * point holds when the unmount did not really happen.
 */
async function removeMountPoint(dir: string): Promise<void> {
  try {
    await rmdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new DiskError('E_DISK_IO', `cannot remove the mount point ${dir}: ${systemReason(err)}`, {
      dir,
    });
  }
}

export interface Mounted {
  dir: string;
  /** Unmounts and removes the mount point; safe to call twice. */
  unmount(): Promise<void>;
}

/**
 * Mounts `device` at a fresh temporary directory, read-only for capture or read-write for
 * restore. 'ntfs-3g' is NTFS through its FUSE driver, which identity writes Windows answer
 * files with (on a block device it mounts as fuseblk, whose unmount waits for its writes).
 */
export async function mountFilesystem(
  device: string,
  type: FilesystemType | 'ntfs-3g',
  opts: { readOnly: boolean },
): Promise<Mounted> {
  const dir = await ownedTempDir(await mountBase(), 'mnt-');
  const options = [opts.readOnly ? 'ro' : 'rw'];
  try {
    await run('mount', ['-t', type, '-o', options.join(','), device, dir], `mount ${device}`);
  } catch (err) {
    try {
      await removeMountPoint(dir);
    } catch (rmErr) {
      // The mount's failure stays the reason; the folder it could not remove is named beside it.
      throw new DiskError(
        'E_DISK_COMMAND',
        `${(err as Error).message}; and ${(rmErr as Error).message}`,
        { device, dir },
        { cause: err },
      );
    }
    throw err;
  }
  let mounted = true;
  return {
    dir,
    async unmount() {
      if (!mounted) return;
      for (let attempt = 0; ; attempt++) {
        const r = await runTool('umount', [dir]);
        if (r.status === 0) break;
        if (attempt >= 10) {
          throw new DiskError('E_DISK_COMMAND', `cannot unmount ${device} from ${dir}: ${r.stderr.trim()}`, {
            device,
            dir,
          });
        }
        await new Promise((res) => setTimeout(res, 100 * (attempt + 1)));
      }
      mounted = false;
      await removeMountPoint(dir);
    },
  };
}

/** Runs `fn` with `device` mounted; unmounts whatever happens. */
export async function withMounted<T>(
  device: string,
  type: FilesystemType,
  opts: { readOnly: boolean },
  fn: (dir: string) => Promise<T>,
): Promise<T> {
  const m = await mountFilesystem(device, type, opts);
  try {
    return await fn(m.dir);
  } finally {
    await m.unmount();
  }
}

/** Errors the ext4 driver counted on the mounted `device` (a failed journal or metadata write, for instance). */
async function extErrorsWhileMounted(device: string, naming: WriteNaming): Promise<void> {
  const name = basename(await realpath(device).catch(() => device));
  const errors = Number(
    (await readFile(`/sys/fs/ext4/${name}/errors_count`, 'utf8').catch(() => '0')).trim(),
  );
  if (errors > 0) {
    throw await writeFailure(
      naming.target,
      naming.what,
      new Error(`the kernel recorded ${count(errors, 'error')} on it while it was written (see dmesg)`),
    );
  }
}

/** An ext filesystem just unmounted must say "clean": "with errors" or "not clean" means lost writes. */
async function extCleanAfterUnmount(device: string, fs: FilesystemInfo, naming: WriteNaming): Promise<void> {
  if (!EXT_TYPES.has(fs.type)) return;
  const r = await runTool('dumpe2fs', ['-h', device]);
  const state = field(r.stdout, 'Filesystem state');
  if (r.status !== 0 || state !== 'clean') {
    throw await writeFailure(
      naming.target,
      naming.what,
      new Error(
        state
          ? `after unmounting, its superblock says "${state}", not "clean"`
          : `its superblock cannot be read back: ${(r.stderr || r.stdout).trim()}`,
      ),
    );
  }
}

/** Bytes in use on a mounted filesystem. */
export async function usedBytes(dir: string): Promise<number> {
  const s = await statfs(dir);
  return (s.blocks - s.bfree) * s.bsize;
}

/**
 * Whether the running kernel can mount `type`. Minimal kernels (VMs, containers, some
 * imaging environments) often lack vfat; then vfat content goes through mtools instead.
 */
/**
 * Whether openTreeForWriting writes this filesystem in place (a kernel mount) rather than
 * through a staging folder copied in at the end (vfat without a kernel driver), which an
 * interrupted restore loses: such a volume cannot be resumed, only restored again.
 */
export async function writesInPlace(type: FilesystemType): Promise<boolean> {
  return type !== 'vfat' || (await kernelCanMount('vfat'));
}

async function kernelCanMount(type: string): Promise<boolean> {
  const list = await readFile('/proc/filesystems', 'utf8').catch(() => '');
  if (list.split('\n').some((l) => l.split('\t')[1] === type)) return true;
  // Not loaded yet, but a module may be: mount loads it on demand.
  return stat(`/lib/modules/${release()}`).then(
    () => true,
    () => false,
  );
}

/**
 * MTOOLS_SKIP_CHECK: mtools refuses odd-but-valid geometries (tiny FAT32) without it.
 * LC_ALL: long names with non-ASCII characters survive only in a UTF-8 locale.
 */
const MTOOLS_ENV = { ...process.env, MTOOLS_SKIP_CHECK: '1', LC_ALL: 'C.UTF-8' };

async function mtools(cmd: string, args: string[], what: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    execFile(cmd, args, { env: MTOOLS_ENV, maxBuffer: 64 * 1024 * 1024 }, (err, _out, stderr) => {
      if (!err) return resolve();
      reject(
        new DiskError(
          'E_DISK_COMMAND',
          `${what}: ${cmd} ${args.join(' ')} failed: ${String(stderr).trim() || err.message}`,
          {
            command: cmd,
            args,
          },
        ),
      );
    }).stdin?.end();
  });
}

/**
 * Removes one file from the vfat filesystem on `device` without mounting it (mtools), for
 * kernels without a vfat driver. `path` is from the filesystem's root ("loader/random-seed").
 */
export async function removeFromVfat(device: string, path: string): Promise<void> {
  await mtools('mdel', ['-i', device, `::/${path}`], `remove ${path} from the vfat filesystem on ${device}`);
}

export interface TreeAccess {
  /** A directory holding (capture) or receiving (restore) the filesystem's tree. */
  dir: string;
  /**
   * Ends access. For restore, `commit` true writes what was put in `dir` into the
   * filesystem (mtools path) and false just drops it; capture ignores it.
   */
  close(commit: boolean): Promise<void>;
  /**
   * Restore, on a kernel mount only: starts writing back what is in the page cache so far and
   * resolves once it is written (errors are left to close's checked flush, which follows).
   */
  flushEarly?: () => Promise<void>;
}

/** The filesystem on `device` as a directory tree to capture: mounted read-only, or copied out with mtools. */
export async function openTreeForReading(device: string, fs: FilesystemInfo): Promise<TreeAccess> {
  if (fs.type !== 'vfat' || (await kernelCanMount('vfat'))) {
    const m = await mountFilesystem(device, fs.type, { readOnly: true });
    return { dir: m.dir, close: () => m.unmount() };
  }
  const staging = await ownedTempDir(tmpdir(), 'imgcast-vfat-');
  const dir = join(staging, 'root');
  try {
    await mtools(
      'mcopy',
      ['-s', '-m', '-n', '-i', device, '::', dir],
      `copy the vfat files out of ${device}`,
    );
    // An empty filesystem yields no directory at all.
    await mkdir(dir, { recursive: true });
  } catch (err) {
    await rm(staging, { recursive: true, force: true });
    throw err;
  }
  return { dir, close: () => rm(staging, { recursive: true, force: true }) };
}

/** How write errors on a filesystem are reported: the restore target and what on it was written. */
export interface WriteNaming {
  target: string;
  what: string;
}

/**
 * A writable directory for the tree of the (fresh) filesystem on `device`. Closing with
 * `commit` checks that everything written reached the device (write-errors.ts): the
 * filesystem is flushed and checked for write-back errors before it is unmounted (they
 * are lost with the mount), and an ext filesystem must be clean, without recorded
 * errors, afterwards. A failure is E_DISK_WRITE named by `naming`; the filesystem is
 * unmounted either way.
 */
export async function openTreeForWriting(
  device: string,
  fs: FilesystemInfo,
  naming: WriteNaming = { target: device, what: `the ${fs.type} filesystem on ${device}` },
  /** vfat through mtools: a staging folder already filled (a live restore's), used and removed as one made here. */
  staged?: string,
): Promise<TreeAccess> {
  if (fs.type !== 'vfat' || (await kernelCanMount('vfat'))) {
    const m = await mountFilesystem(device, fs.type, { readOnly: false });
    const flusher = new Flusher(['-f', m.dir]).start();
    return {
      dir: m.dir,
      flushEarly: () => flusher.run().then(() => undefined),
      async close(commit) {
        flusher.close();
        let failure: unknown;
        if (commit) {
          try {
            await syncFilesystemChecked(m.dir, naming.target, naming.what);
            await extErrorsWhileMounted(device, naming);
          } catch (err) {
            failure = err;
          }
        }
        await m.unmount();
        if (failure) throw failure;
        if (commit) await extCleanAfterUnmount(device, fs, naming);
      },
    };
  }
  const staging = staged ?? (await ownedTempDir(tmpdir(), 'imgcast-vfat-'));
  return {
    dir: staging,
    async close(commit) {
      try {
        if (!commit) return;
        const top = await readdir(staging);
        if (top.length === 0) return;
        await mtools(
          'mcopy',
          ['-s', '-m', '-Q', '-D', 'o', '-i', device, ...top.map((n) => join(staging, n)), '::/'],
          `copy the restored files into the vfat filesystem on ${device}`,
        );
      } finally {
        await rm(staging, { recursive: true, force: true });
      }
    },
  };
}
