/**
 * Block devices and disk-image files: sizes, whether anything on them is in use,
 * loop devices over byte ranges, and blkid probes. Partitions are always reached
 * through a loop device over (disk, offset, size) rather than the kernel's partition
 * nodes, so the same code works on a real disk, a loop device and a plain image file,
 * and never depends on udev having created /dev/sdXN in time.
 */
import { readdir, readFile, realpath, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { DiskError } from './errors.ts';
import { run, runTool } from './exec.ts';
import { forgetLoop, recordLoop, type RunTag } from './owner.ts';
import { systemReason } from '../wording.ts';

async function statOrThrow(path: string) {
  try {
    return await stat(path);
  } catch (err) {
    throw new DiskError('E_DISK_IO', `cannot access ${path}: ${systemReason(err)}`, { path }, { cause: err });
  }
}

export async function isBlockDevice(path: string): Promise<boolean> {
  return (await statOrThrow(path)).isBlockDevice();
}

/** Size in bytes of a block device or regular file. */
export async function deviceSize(path: string): Promise<number> {
  const st = await statOrThrow(path);
  if (st.isBlockDevice()) {
    const out = await run('blockdev', ['--getsize64', path], `size of ${path}`);
    return Number(out.trim());
  }
  if (st.isFile()) return st.size;
  throw new DiskError('E_DISK_SOURCE', `${path} is neither a block device nor a regular file`, { path });
}

/** Logical sector size: what the kernel reports for a block device, 512 for image files. */
export async function sectorSizeOf(path: string): Promise<number> {
  const st = await statOrThrow(path);
  if (!st.isBlockDevice()) return 512;
  const out = await run('blockdev', ['--getss', path], `sector size of ${path}`);
  const n = Number(out.trim());
  if (!Number.isInteger(n) || n < 512) {
    throw new DiskError('E_DISK_IO', `${path}: blockdev reported an impossible sector size "${out.trim()}"`, {
      path,
    });
  }
  return n;
}

/** True when a block device is a partition of another (it has /sys/class/block/NAME/partition). */
export async function isPartitionDevice(path: string): Promise<boolean> {
  const name = basename(await realpath(path));
  return stat(join('/sys/class/block', name, 'partition')).then(
    () => true,
    () => false,
  );
}

export interface MountUse {
  /** The device that is in use (the target itself, one of its partitions, or a loop device over it). */
  device: string;
  /** Mount point, or 'swap'. */
  mountPoint: string;
  readOnly: boolean;
}

async function readDevNumber(sysDir: string): Promise<string | undefined> {
  return readFile(join(sysDir, 'dev'), 'utf8').then(
    (s) => s.trim(),
    () => undefined,
  );
}

/** Loop devices whose backing file is `path` (a file or a device). */
export async function loopDevicesBackedBy(path: string): Promise<string[]> {
  const r = await runTool('losetup', ['-j', path]);
  if (r.status !== 0) return [];
  return r.stdout
    .split('\n')
    .map((l) => l.split(':')[0]!.trim())
    .filter((l) => l.startsWith('/dev/'));
}

/** Every block device (as major:minor → name) through which the content of `path` can be reached. */
async function devicesOf(path: string, out: Map<string, string>, depth = 0): Promise<void> {
  if (depth > 4) return;
  const st = await statOrThrow(path);
  if (st.isBlockDevice()) {
    const name = basename(await realpath(path));
    const sysDir = join('/sys/class/block', name);
    const dev = await readDevNumber(sysDir);
    if (dev) out.set(dev, `/dev/${name}`);
    const children = await readdir(sysDir).catch(() => [] as string[]);
    for (const child of children) {
      if (!child.startsWith(name)) continue;
      const partDev = await readDevNumber(join(sysDir, child));
      if (partDev) out.set(partDev, `/dev/${child}`);
    }
  }
  for (const loop of await loopDevicesBackedBy(path)) {
    if (![...out.values()].includes(loop)) await devicesOf(loop, out, depth + 1);
  }
  if (st.isBlockDevice()) {
    // A loop device shares its bytes with every other loop device over an overlapping
    // range of the same backing file (e.g. a partition attached by offset and mounted).
    const self = await loopRange(basename(await realpath(path)));
    if (self) {
      for (const other of await loopDevicesBackedBy(self.backingFile)) {
        if ([...out.values()].includes(other)) continue;
        const range = await loopRange(basename(other));
        if (range && range.offset < self.end && self.offset < range.end)
          await devicesOf(other, out, depth + 1);
      }
    }
  }
}

/** Backing file and byte range of a loop device, from sysfs; undefined for other devices. */
export async function loopRange(
  name: string,
): Promise<{ backingFile: string; offset: number; end: number } | undefined> {
  const dir = join('/sys/class/block', name, 'loop');
  const read = (f: string) => readFile(join(dir, f), 'utf8').then((s) => s.trim());
  try {
    const backingFile = (await read('backing_file')).replace(/ \(deleted\)$/, '');
    const offset = Number(await read('offset'));
    const sizelimit = Number(await read('sizelimit'));
    const end = sizelimit > 0 ? offset + sizelimit : Number.MAX_SAFE_INTEGER;
    return { backingFile, offset, end };
  } catch {
    return undefined;
  }
}

export function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/**
 * Where the disk or file at `path`, one of its partitions, or a loop device over it
 * is mounted or used as swap. Empty when nothing uses it.
 */
export async function mountedUses(path: string): Promise<MountUse[]> {
  const devs = new Map<string, string>();
  await devicesOf(path, devs);
  const uses: MountUse[] = [];
  const mountinfo = await readFile('/proc/self/mountinfo', 'utf8');
  for (const line of mountinfo.split('\n')) {
    const [pre, post] = line.split(' - ');
    if (!pre || !post) continue;
    const f = pre.split(' ');
    const dev = f[2];
    if (!dev || !devs.has(dev)) continue;
    const superOpts = (post.split(' ')[2] ?? '').split(',');
    const mountOpts = (f[5] ?? '').split(',');
    uses.push({
      device: devs.get(dev)!,
      mountPoint: unescapeMountinfo(f[4] ?? '?'),
      readOnly: mountOpts.includes('ro') || superOpts.includes('ro'),
    });
  }
  const swaps = await readFile('/proc/swaps', 'utf8').catch(() => '');
  const names = new Set(devs.values());
  for (const line of swaps.split('\n').slice(1)) {
    const dev = line.split(/\s+/)[0];
    if (dev && names.has(dev)) uses.push({ device: dev, mountPoint: 'swap', readOnly: false });
  }
  return uses;
}

/** Where exactly the block device `dev` (not its partitions or loop devices over it) is mounted. */
export async function mountPointsOf(dev: string): Promise<string[]> {
  const num = await readDevNumber(join('/sys/class/block', basename(dev)));
  if (!num) return [];
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  return info
    .split('\n')
    .map((l) => l.split(' '))
    .filter((f) => f[2] === num)
    .map((f) => unescapeMountinfo(f[4] ?? '?'));
}

export function describeUses(uses: MountUse[]): string {
  return uses.map((u) => `${u.device} on ${u.mountPoint} (${u.readOnly ? 'ro' : 'rw'})`).join(', ');
}

/** Refuses (E_DISK_MOUNTED) when anything on `path` is mounted or used as swap. */
export async function assertNotMounted(path: string, role: string): Promise<void> {
  const uses = await mountedUses(path);
  if (uses.length > 0) {
    throw new DiskError(
      'E_DISK_MOUNTED',
      `${role} ${path} is in use: ${describeUses(uses)}; unmount it first`,
      { path, uses },
    );
  }
}

export interface LoopOptions {
  offset?: number;
  size?: number;
  readOnly?: boolean;
}

/**
 * Attaches a free loop device over a byte range of a file or device; returns /dev/loopN.
 * The device is picked first and recorded as this run's before it is attached (owner.ts),
 * so a run killed at any moment, even while losetup runs, leaves nothing the next run
 * cannot find and detach.
 */
export function attachLoop(path: string, opts: LoopOptions = {}): Promise<string> {
  // One at a time in this process: two attaches at once (two restores in one process, as a
  // live session's test receivers are) were given the same free device by losetup --find
  // and wrote the same record, and the loser's rename found its record gone (ENOENT).
  const turn = attaching.then(() => attachLoopNow(path, opts));
  attaching = turn.catch(() => {});
  return turn;
}

let attaching: Promise<unknown> = Promise.resolve();

async function attachLoopNow(path: string, opts: LoopOptions): Promise<string> {
  const args: string[] = [];
  if (opts.offset) args.push('--offset', String(opts.offset));
  if (opts.size !== undefined) args.push('--sizelimit', String(opts.size));
  if (opts.readOnly) args.push('--read-only');
  const backing = await realpath(path).catch(() => path);
  for (let attempt = 0; ; attempt++) {
    const dev = (await run('losetup', ['--find'], `find a free loop device for ${path}`)).trim();
    if (!dev.startsWith('/dev/')) {
      throw new DiskError('E_DISK_COMMAND', `losetup gave no free loop device for ${path}: "${dev}"`, {
        path,
      });
    }
    try {
      await recordLoop(dev, backing, opts.offset ?? 0);
    } catch (err) {
      throw new DiskError(
        'E_DISK_IO',
        `cannot record loop device ${dev} in imgcast's run state, so a killed run could not release it: ${systemReason(err)}`,
        { device: dev },
      );
    }
    const r = await runTool('losetup', [...args, dev, path]);
    if (r.status === 0) return dev;
    await forgetLoop(dev);
    // Another process took the device between the two steps: pick again.
    if (/busy/i.test(r.stderr) && attempt < 10) continue;
    throw new DiskError(
      'E_DISK_COMMAND',
      `attach a loop device to ${path}: losetup ${[...args, dev, path].join(' ')} failed: ${(r.stderr || r.stdout).trim() || `exit status ${r.status}`}`,
      { command: 'losetup', path, status: r.status, stderr: r.stderr },
    );
  }
}

/** Processes whose mount namespace still has `dev` mounted (major:minor match), for messages. */
async function holdersOf(dev: string): Promise<string[]> {
  const num = await readDevNumber(join('/sys/class/block', basename(dev)));
  if (!num) return [];
  const out: string[] = [];
  for (const pid of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(pid)) continue;
    const info = await readFile(`/proc/${pid}/mountinfo`, 'utf8').catch(() => '');
    if (info.split('\n').some((l) => l.split(' ')[2] === num)) {
      const comm = await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '?');
      out.push(`${pid} (${comm.trim()})`);
      if (out.length >= 5) break;
    }
  }
  return out;
}

/**
 * Whether `dev` is still attached over the range `was` described (any attachment when `was` is
 * unknown). Once detached the device is free, and another process (another client restoring on
 * this kernel) may attach it at once to its own file: that must not read as ours being held.
 */
export async function loopStillOver(
  dev: string,
  was: { backingFile: string; offset: number } | undefined,
): Promise<boolean> {
  const now = await loopRange(basename(dev));
  if (!now) return false;
  return !was || (now.backingFile === was.backingFile && now.offset === was.offset);
}

/**
 * Detaches a loop device and makes sure it is gone. The kernel only defers the detach
 * when something still holds the device, such as a copy of a mount in another mount
 * namespace; then the filesystem on it was not really unmounted, and saying "done"
 * would be a lie.
 */
export async function detachLoopVerified(dev: string): Promise<void> {
  const ours = await loopRange(basename(dev));
  await detachLoop(dev);
  const attached = () => loopStillOver(dev, ours);
  for (let i = 0; i < 20 && (await attached()); i++) await new Promise((r) => setTimeout(r, 50));
  if (await attached()) {
    const holders = await holdersOf(dev);
    throw new DiskError(
      'E_DISK_MOUNTED',
      `${dev} is still in use after unmounting${holders.length ? `: mounted in the mount namespace of process ${holders.join(', ')}` : ''}; the filesystem on it was not cleanly unmounted`,
      { device: dev, holders },
    );
  }
}

/** Detaches a loop device and drops its run record (this run's, or that of the run `tag`). */
export async function detachLoop(dev: string, tag?: RunTag): Promise<void> {
  // A just-unmounted filesystem can hold the device for a moment; losetup -d then fails with EBUSY.
  for (let attempt = 0; ; attempt++) {
    const r = await runTool('losetup', ['-d', dev]);
    // Already detached (e.g. cleanup after an earlier detach) is what the caller wants.
    if (r.status === 0 || /No such device or address/i.test(r.stderr)) {
      await forgetLoop(dev, tag);
      return;
    }
    if (!/busy/i.test(r.stderr) || attempt >= 10) {
      throw new DiskError('E_DISK_COMMAND', `cannot detach loop device ${dev}: ${r.stderr.trim()}`, {
        device: dev,
      });
    }
    await new Promise((res) => setTimeout(res, 100 * (attempt + 1)));
  }
}

export interface BlkidInfo {
  TYPE?: string;
  LABEL?: string;
  UUID?: string;
  VERSION?: string;
  [key: string]: string | undefined;
}

/** Low-level blkid probe of a device or a byte range of a file; {} when nothing is recognised. */
export async function blkidProbe(
  path: string,
  range: { offset?: number; size?: number } = {},
): Promise<BlkidInfo> {
  const args = ['-p', '-o', 'export'];
  if (range.offset) args.push('-O', String(range.offset));
  if (range.size !== undefined) args.push('-S', String(range.size));
  args.push(path);
  const r = await runTool('blkid', args);
  // Exit 2: nothing found. Other failures (ambivalent probe, I/O) are real errors.
  if (r.status === 2) return {};
  if (r.status !== 0) {
    throw new DiskError(
      'E_DISK_COMMAND',
      `blkid ${args.join(' ')} failed: ${(r.stderr || r.stdout).trim()}`,
      {
        path,
      },
    );
  }
  const info: BlkidInfo = {};
  for (const line of r.stdout.split('\n')) {
    const eq = line.indexOf('=');
    // export format backslash-escapes spaces and shell specials in values
    if (eq > 0) info[line.slice(0, eq)] = line.slice(eq + 1).replace(/\\(.)/g, '$1');
  }
  return info;
}
