/**
 * What a booted system will take for its identity, read offline from a disk-image file: its GPT
 * (sfdisk), and its Linux root mounted read-only through a loop device. Booting is not relied
 * on to print any of it; the console only shows the hostname at the login prompt.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { lstat, mkdtemp, readdir, readFile, readlink, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { attachLoop, detachLoop } from '../../src/disk/device.ts';

/** GPT type of a Linux filesystem partition (sfdisk's "Linux filesystem"). */
const LINUX_FS = '0FC63DAF-8483-4772-8E79-3D69D8477DE4';

export interface TablePartition {
  number: number;
  /** Byte offset and length on the disk. */
  start: number;
  size: number;
  type: string;
  name: string;
}

/** The partitions of a disk-image file or device, as its partition table has them. */
export function partitionsOf(disk: string): TablePartition[] {
  const table = JSON.parse(execFileSync('sfdisk', ['--json', disk], { encoding: 'utf8' })) as {
    partitiontable: {
      sectorsize?: number;
      partitions?: Array<{ node: string; start: number; size: number; type: string; name?: string }>;
    };
  };
  const sector = table.partitiontable.sectorsize ?? 512;
  return (table.partitiontable.partitions ?? []).map((p) => ({
    number: Number(/(\d+)$/.exec(p.node)?.[1]),
    start: p.start * sector,
    size: p.size * sector,
    type: p.type.toUpperCase(),
    name: p.name ?? '',
  }));
}

export interface HostKey {
  /** The key file's name, e.g. ssh_host_ed25519_key. */
  file: string;
  /** The algorithm from the .pub file, e.g. ssh-ed25519. */
  type: string;
  /** As `ssh-keygen -l` prints it: SHA256:<base64 without padding>. */
  fingerprint: string;
}

export interface SystemIdentity {
  hostname: string;
  /** The 127.0.1.1 line of /etc/hosts, or '' when there is none. */
  hostsLine: string;
  machineId: string;
  /** /var/lib/dbus/machine-id: its content, `-> TARGET` for a symlink, or null when absent. */
  dbusMachineId: string | null;
  hostKeys: HostKey[];
}

/** OpenSSH's SHA256 fingerprint of a public key line (`TYPE BASE64 [COMMENT]`). */
export function fingerprintOf(pubLine: string): { type: string; fingerprint: string } {
  const [type, blob] = pubLine.trim().split(/\s+/);
  if (!type || !blob) throw new Error(`not a public key: ${pubLine.slice(0, 80)}`);
  const digest = createHash('sha256').update(Buffer.from(blob, 'base64')).digest('base64');
  return { type, fingerprint: `SHA256:${digest.replace(/=+$/, '')}` };
}

/**
 * Mounts the Linux root of `disk` read-only (the first Linux-filesystem partition, or
 * `partition` when given) for as long as `use` runs; unmounts and detaches on every path.
 */
export async function withRootMounted<T>(
  disk: string,
  use: (root: string) => Promise<T>,
  partition?: number,
): Promise<T> {
  const parts = partitionsOf(disk);
  const p =
    partition === undefined
      ? parts.find((x) => x.type === LINUX_FS)
      : parts.find((x) => x.number === partition);
  if (!p)
    throw new Error(`${disk} has no ${partition ?? 'Linux filesystem'} partition: ${JSON.stringify(parts)}`);
  const dev = await attachLoop(disk, { offset: p.start, size: p.size, readOnly: true });
  const mnt = await mkdtemp(join(tmpdir(), 'imgcast-boot-root-'));
  try {
    // noload: a read-only look must not replay the journal either.
    execFileSync('mount', ['-t', 'ext4', '-o', 'ro,noload', dev, mnt], { stdio: 'pipe' });
    try {
      return await use(mnt);
    } finally {
      execFileSync('umount', [mnt], { stdio: 'pipe' });
    }
  } finally {
    await rm(mnt, { recursive: true, force: true });
    await detachLoop(dev);
  }
}

/** Hostname, machine-ids and SSH host keys of the Linux root on `disk`. */
export async function readSystemIdentity(disk: string, partition?: number): Promise<SystemIdentity> {
  return withRootMounted(
    disk,
    async (root) => {
      const text = (rel: string) => readFile(join(root, rel), 'utf8');
      const hosts = await text('etc/hosts').catch(() => '');
      const dbusPath = join(root, 'var/lib/dbus/machine-id');
      const dbus = await lstat(dbusPath).catch(() => null);
      const hostKeys: HostKey[] = [];
      for (const f of (await readdir(join(root, 'etc/ssh'))).sort()) {
        const m = /^(ssh_host_\w+_key)\.pub$/.exec(f);
        if (m) hostKeys.push({ file: m[1]!, ...fingerprintOf(await text(`etc/ssh/${f}`)) });
      }
      return {
        hostname: (await text('etc/hostname')).trim(),
        hostsLine: hosts.split('\n').find((l) => l.startsWith('127.0.1.1')) ?? '',
        machineId: (await text('etc/machine-id')).trim(),
        dbusMachineId: !dbus
          ? null
          : dbus.isSymbolicLink()
            ? `-> ${await readlink(dbusPath)}`
            : (await readFile(dbusPath, 'utf8')).trim(),
        hostKeys,
      };
    },
    partition,
  );
}

/** A file of the Linux root on `disk` (`rel` relative to the root), or null when it is absent. */
export async function readRootFile(disk: string, rel: string): Promise<string | null> {
  return withRootMounted(disk, (root) => readFile(join(root, rel), 'utf8').catch(() => null));
}

export interface RootFit {
  /** The root's partition, as the table has it. */
  partition: TablePartition;
  /** Where the backup GPT starts: no partition can end after it. */
  usableEnd: number;
  /** Block count times block size, as dumpe2fs reads them from the superblock. */
  filesystemBytes: number;
}

/**
 * How the Linux root (the first Linux-filesystem partition) fills `disk`: its partition and
 * the size of the ext filesystem in it, read through a read-only loop device.
 */
export async function rootFit(disk: string, diskBytes: number): Promise<RootFit> {
  const partition = partitionsOf(disk).find((x) => x.type === LINUX_FS);
  if (!partition) throw new Error(`${disk} has no Linux filesystem partition`);
  const dev = await attachLoop(disk, { offset: partition.start, size: partition.size, readOnly: true });
  try {
    const head = execFileSync('dumpe2fs', ['-h', dev], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)$`, 'm').exec(head)?.[1]);
    const filesystemBytes = field('Block count') * field('Block size');
    if (!Number.isFinite(filesystemBytes)) throw new Error(`dumpe2fs -h ${dev} gave no size:\n${head}`);
    // The backup GPT: 32 sectors of entries and its header in the last sector.
    return { partition, usableEnd: diskBytes - 33 * 512, filesystemBytes };
  } finally {
    await detachLoop(dev);
  }
}
