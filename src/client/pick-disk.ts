/**
 * Which disk `img session` writes when the user names none: the one internal disk that does not
 * hold the system the workstation is running. Anything less certain is a refusal that says what
 * was found, because the wrong guess erases someone's disk.
 */
import { readdir, readFile, realpath, stat } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { ClientError } from './errors.ts';
import type { InventoryDisk } from './inventory.ts';

export type DiskCandidate = Pick<InventoryDisk, 'path' | 'sizeBytes' | 'model' | 'removable'>;

/** A disk the running system lives on, and what of the system is there ('/', '/boot/efi', 'swap', …). */
export interface SystemDisk {
  disk: string;
  mounts: string[];
}

/**
 * The policy, pure: candidates are the disks that are not removable, not loop devices and not
 * empty; of those, the ones not in `systemDisks`. Exactly one: that one. Several: E_DISK_AMBIGUOUS
 * listing them. None because every candidate holds the system: E_SYSTEM_DISK naming where it is
 * mounted. None at all: E_NO_DISK, naming what was passed over and why.
 */
export function pickDisk(
  disks: DiskCandidate[],
  facts: { systemDisks: SystemDisk[] },
): { disk: string } | { error: ClientError } {
  const system = new Map(facts.systemDisks.map((s) => [s.disk, s.mounts]));
  const internal = disks.filter((d) => skipReason(d) === undefined);
  const free = internal.filter((d) => !system.has(d.path));
  if (free.length === 1) return { disk: free[0]!.path };
  if (free.length > 1) {
    return {
      error: new ClientError(
        'E_DISK_AMBIGUOUS',
        `this workstation has ${free.length} internal disks that could be written: ` +
          `${free.map(describe).join('; ')}; give the one to write with --disk`,
        { candidates: free.map(diskFacts) },
      ),
    };
  }
  if (internal.length > 0) {
    const one = internal.length === 1;
    const found = one
      ? `the only internal disk, ${describe(internal[0]!)}, holds the running system (${uses(system.get(internal[0]!.path)!)})`
      : `every internal disk holds the running system: ${internal.map((d) => `${describe(d)} ${uses(system.get(d.path)!)}`).join('; ')}`;
    return {
      error: new ClientError(
        'E_SYSTEM_DISK',
        `${found}; writing ${one ? 'it' : 'one'} would destroy the system this workstation is running: ` +
          'start the workstation from the network to image it',
        { systemDisks: internal.map((d) => ({ ...diskFacts(d), mounts: system.get(d.path) })) },
      ),
    };
  }
  const passed = disks.map((d) => `${describe(d)}: ${skipReason(d)!}`);
  return {
    error: new ClientError(
      'E_NO_DISK',
      `this workstation has no internal disk to write to` +
        (passed.length > 0 ? ` (passed over ${passed.join('; ')}); give --disk to write to one of them` : ''),
      { passedOver: disks.map((d) => ({ ...diskFacts(d), reason: skipReason(d) })) },
    ),
  };
}

/** "mounted on /, /boot/efi, used as swap". */
function uses(mounts: string[]): string {
  const points = mounts.filter((m) => m !== 'swap');
  return [
    ...(points.length > 0 ? [`mounted on ${points.join(', ')}`] : []),
    ...(mounts.includes('swap') ? ['used as swap'] : []),
  ].join(', ');
}

function skipReason(d: DiskCandidate): string | undefined {
  if (/^\/dev\/loop\d+$/.test(d.path)) return 'a loop device';
  if (d.removable) return 'removable';
  if (!(d.sizeBytes > 0)) return 'empty (no medium)';
  return undefined;
}

function describe(d: DiskCandidate): string {
  return `${d.path} (${[size(d.sizeBytes), d.model].filter(Boolean).join(', ')})`;
}

function diskFacts(d: DiskCandidate): Record<string, unknown> {
  return { path: d.path, sizeBytes: d.sizeBytes, ...(d.model ? { model: d.model } : {}) };
}

function size(n: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} bytes` : `${v.toFixed(1)} ${units[u]}`;
}

/**
 * What of the running system must never be written over: the root and what the system needs
 * to boot (/usr when separate, /boot and the EFI system partition in both its usual places),
 * and swap, which the kernel writes at any moment.
 */
const SYSTEM_MOUNTS = new Set(['/', '/usr', '/boot', '/boot/efi', '/efi']);
const MAX_DEPTH = 6;

interface MountEntry {
  dev: string;
  mountPoint: string;
  fsType: string;
  source: string;
  superOptions: string;
}

/**
 * The disks holding the running system, found through /proc/self/mountinfo and /proc/swaps,
 * then down to whole disks: a partition to its disk, device-mapper and md to their slaves
 * (LVM, LUKS, RAID), a loop device to the disk its backing file is on, btrfs (whose mounts
 * have no device number of their own) through its source, overlay through its directories.
 * In a netboot imaging environment root is tmpfs, NFS or an overlay of those: no disk, and
 * the list is empty. ZFS and other pools named rather than backed by a /dev path are not
 * followed.
 */
export async function systemDiskDevices(): Promise<SystemDisk[]> {
  const entries = parseMountinfo(await readFile('/proc/self/mountinfo', 'utf8').catch(() => ''));
  const found = new Map<string, Set<string>>();
  const add = (disks: string[], use: string): void => {
    for (const d of disks) {
      if (!found.has(d)) found.set(d, new Set());
      found.get(d)!.add(use);
    }
  };
  // Mounts stack: the last entry for a mount point is the one in use.
  const visible = new Map<string, MountEntry>();
  for (const e of entries) if (SYSTEM_MOUNTS.has(e.mountPoint)) visible.set(e.mountPoint, e);
  for (const [mountPoint, e] of visible) add(await disksOfDevNumber(e.dev, entries, 0), mountPoint);

  const swaps = await readFile('/proc/swaps', 'utf8').catch(() => '');
  for (const line of swaps.split('\n').slice(1)) {
    const file = line.split(/\s+/)[0];
    if (!file) continue;
    const st = await stat(unescapeOctal(file), { bigint: true }).catch(() => undefined);
    if (!st) continue;
    add(await disksOfDevNumber(devNumber(st.isBlockDevice() ? st.rdev : st.dev), entries, 0), 'swap');
  }
  return [...found]
    .map(([disk, uses]) => ({ disk, mounts: [...uses] }))
    .sort((a, b) => a.disk.localeCompare(b.disk));
}

/** The whole disks behind device number `num` ('8:1'): a block device's, or an anonymous one's (btrfs, overlay). */
async function disksOfDevNumber(num: string, entries: MountEntry[], depth: number): Promise<string[]> {
  if (depth > MAX_DEPTH) return [];
  if (!num.startsWith('0:')) {
    const name = basename(await realpath(`/sys/dev/block/${num}`).catch(() => ''));
    return name ? disksOfBlock(name, entries, depth + 1) : [];
  }
  const out: string[] = [];
  for (const e of entries.filter((m) => m.dev === num)) {
    const paths: string[] = [];
    if (e.source.startsWith('/dev/')) paths.push(e.source);
    if (e.fsType === 'overlay') paths.push(...overlayDirs(e.superOptions));
    for (const p of paths) {
      const st = await stat(p, { bigint: true }).catch(() => undefined);
      if (!st) continue;
      const inner = devNumber(st.isBlockDevice() ? st.rdev : st.dev);
      if (inner !== num) out.push(...(await disksOfDevNumber(inner, entries, depth + 1)));
    }
  }
  return [...new Set(out)];
}

async function disksOfBlock(name: string, entries: MountEntry[], depth: number): Promise<string[]> {
  if (depth > MAX_DEPTH) return [];
  const sys = `/sys/class/block/${name}`;
  if (await exists(`${sys}/partition`)) {
    const parent = basename(dirname(await realpath(sys).catch(() => '')));
    return parent && parent !== '.' ? disksOfBlock(parent, entries, depth + 1) : [];
  }
  const slaves = await readdir(`${sys}/slaves`).catch(() => [] as string[]);
  if (slaves.length > 0) {
    const all = await Promise.all(slaves.map((s) => disksOfBlock(s, entries, depth + 1)));
    return [...new Set(all.flat())];
  }
  const backing = await readFile(`${sys}/loop/backing_file`, 'utf8').catch(() => undefined);
  if (backing !== undefined) {
    const st = await stat(backing.trim().replace(/ \(deleted\)$/, ''), { bigint: true }).catch(
      () => undefined,
    );
    if (st) {
      const behind = await disksOfDevNumber(
        devNumber(st.isBlockDevice() ? st.rdev : st.dev),
        entries,
        depth + 1,
      );
      if (behind.length > 0) return behind;
    }
  }
  return [`/dev/${name}`];
}

function parseMountinfo(text: string): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    const [pre, post] = line.split(' - ');
    if (!pre || !post) continue;
    const f = pre.split(' ');
    const g = post.split(' ');
    if (!f[2] || !f[4]) continue;
    out.push({
      dev: f[2],
      mountPoint: unescapeOctal(f[4]),
      fsType: g[0] ?? '',
      source: unescapeOctal(g[1] ?? ''),
      superOptions: g[2] ?? '',
    });
  }
  return out;
}

function overlayDirs(options: string): string[] {
  const dirs: string[] = [];
  for (const opt of options.split(',')) {
    const m = /^(lowerdir|upperdir)=(.*)$/.exec(opt);
    if (m) dirs.push(...m[2]!.split(':').filter(Boolean).map(unescapeOctal));
  }
  return dirs;
}

/** Linux's dev_t as 'major:minor', the form mountinfo and /sys/dev/block use. */
function devNumber(dev: bigint): string {
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
  return `${major}:${minor}`;
}

/** The kernel writes spaces, tabs, newlines and backslashes in paths as \ooo. */
function unescapeOctal(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}
