/**
 * The reference workstation of the boot test: a real, minimal Debian on a GPT disk-image file that
 * boots under BIOS and UEFI, the way a lab's reference machine is laid out.
 *
 *   partition 1  BIOS boot (1 MiB)   GRUB's core image, for BIOS
 *   partition 2  EFI system (96 MiB) vfat, GRUB at the removable path \EFI\BOOT\BOOTX64.EFI
 *   partition 3  Linux root (rest)   ext4: Debian made by mmdebstrap from the host's own apt mirror
 *
 * The kernel runs on console=ttyS0, so a test reads the boot from the serial console up to the
 * `login:` prompt. The root has a hostname, a machine-id and SSH host keys (made by
 * openssh-server's postinst), all of which a copy must not keep once identities are applied.
 *
 * Building takes two to five minutes and needs the mirror, so the disk is cached between runs of
 * the suite under CACHE_ROOT, in a folder named by a hash of everything that decides its content
 * (the mirror, the suite, the packages, the layout, and the text of this file and of
 * boot-disk.ts, which lays the disk out: any edit there means one rebuild). A build happens in a
 * `.partial-PID` folder renamed into place only once the disk is complete, checked (e2fsck) and
 * has booted to its login prompt under both firmwares: a killed build never leaves a cache entry,
 * and a cached disk is one that was seen to boot. Never write to the cached disk: boot it with a
 * snapshot (see qemu.ts) and capture it read-only.
 *
 * Run this file to build (or find) the disk and print where it is:
 *   node test/boot/reference-disk.ts
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { hasCommand, isRoot } from '../helpers/env.ts';
import {
  assembleBootDisk,
  cachedDisk,
  findCached,
  proveBoots,
  secs,
  sh,
  type BootDiskMeta,
  type CachedDisk,
  type DiskPartition,
} from './boot-disk.ts';
import { qemuUnavailable } from './qemu.ts';

export { CACHE_ROOT } from './boot-disk.ts';
export type { DiskPartition };

const MiB = 1024 * 1024;

/** What decides the disk's content; its hash names the cache entry. */
interface Recipe {
  suite: string;
  /** One-line apt sources for mmdebstrap: the suite, its -updates and -security, main only. */
  sources: string[];
  packages: string[];
  hostname: string;
  diskBytes: number;
  espBytes: number;
}

export interface ReferenceMeta extends BootDiskMeta {
  suite: string;
}

export type ReferenceDisk = CachedDisk<ReferenceMeta>;

/** The packages of the root besides mmdebstrap's `apt` variant (Essential packages and apt). */
const PACKAGES = [
  'linux-image-amd64',
  'systemd-sysv',
  'dbus',
  'openssh-server',
  // e2fsck for the root's boot-time check (fstab pass 1).
  'e2fsprogs',
];

/** Drivers the initramfs needs to mount the root: QEMU's virtio disk, and SATA and NVMe. */
const INITRAMFS_MODULES = ['virtio_pci', 'virtio_blk', 'ahci', 'sd_mod', 'nvme', 'ext4', 'crc32c_generic'];
const INITRAMFS_HOOK = [
  `printf 'MODULES=list\\n' > "$1/etc/initramfs-tools/conf.d/modules.conf"`,
  `printf '%s\\n' ${INITRAMFS_MODULES.join(' ')} >> "$1/etc/initramfs-tools/modules"`,
  'chroot "$1" update-initramfs -u -k all',
].join(' && ');

// No network configuration at all: the guest boots without a network card (qemu -nic none),
// so ifupdown or networkd would only add a unit that waits for a link that never comes.

const HOST_TOOLS = [
  'mmdebstrap',
  'sfdisk',
  'mkfs.ext4',
  'e2fsck',
  'mkfs.vfat',
  'mmd',
  'mcopy',
  'grub-install',
  'grub-mkimage',
  'losetup',
  'mount',
];

/** The host's Debian suite and its apt mirror, read from /etc/os-release and apt's sources. */
export async function hostMirror(): Promise<{ suite: string; sources: string[]; mirror: string } | string> {
  const osRelease = await readFile('/etc/os-release', 'utf8').catch(() => '');
  const suite = /^VERSION_CODENAME=["']?([a-z]+)/m.exec(osRelease)?.[1];
  if (!/^ID=["']?debian/m.test(osRelease) || !suite)
    return 'the host is not a Debian release with a codename';
  const entries = await aptSources();
  const uriFor = (s: string) => entries.find((e) => e.suites.includes(s))?.uri;
  const mirror = uriFor(suite);
  if (!mirror) return `no apt source for ${suite} in /etc/apt/sources.list(.d)`;
  const sources = [`deb ${mirror} ${suite} main`];
  for (const extra of [`${suite}-updates`, `${suite}-security`]) {
    const uri = uriFor(extra);
    if (uri) sources.push(`deb ${uri} ${extra} main`);
  }
  return { suite, sources, mirror };
}

/** `deb` entries of apt's sources, one-line and deb822 formats alike. */
async function aptSources(): Promise<Array<{ uri: string; suites: string[] }>> {
  const out: Array<{ uri: string; suites: string[] }> = [];
  const files = ['/etc/apt/sources.list'];
  for (const f of await readdir('/etc/apt/sources.list.d').catch(() => [] as string[])) {
    if (f.endsWith('.list') || f.endsWith('.sources')) files.push(join('/etc/apt/sources.list.d', f));
  }
  for (const file of files) {
    const text = await readFile(file, 'utf8').catch(() => '');
    if (file.endsWith('.sources')) {
      for (const stanza of text.split(/\n\s*\n/)) {
        const field = (name: string) =>
          new RegExp(`^${name}:\\s*(.+)$`, 'mi').exec(stanza)?.[1]?.trim().split(/\s+/) ?? [];
        if (!field('Types').includes('deb') || /^Enabled:\s*no/im.test(stanza)) continue;
        for (const uri of field('URIs')) out.push({ uri: uri.replace(/\/$/, ''), suites: field('Suites') });
      }
    } else {
      for (const line of text.split('\n')) {
        const m = /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)/.exec(line.trim());
        if (m) out.push({ uri: m[1]!.replace(/\/$/, ''), suites: [m[2]!] });
      }
    }
  }
  return out;
}

async function recipe(): Promise<Recipe | string> {
  const host = await hostMirror();
  if (typeof host === 'string') return host;
  return {
    suite: host.suite,
    sources: host.sources,
    packages: PACKAGES,
    hostname: 'reference',
    diskBytes: 3 * 1024 * MiB,
    espBytes: 96 * MiB,
  };
}

async function cacheKey(r: Recipe): Promise<string> {
  const hash = createHash('sha256').update(JSON.stringify(r));
  for (const file of [
    fileURLToPath(import.meta.url),
    fileURLToPath(new URL('./boot-disk.ts', import.meta.url)),
  ])
    hash.update(await readFile(file, 'utf8'));
  return hash.digest('hex').slice(0, 16);
}

/**
 * Why the reference disk can be neither found nor built here, or undefined. Cheap when the disk
 * is cached; otherwise it also asks the mirror for the suite's Release file (10 s at most).
 */
export async function referenceDiskUnavailable(): Promise<string | undefined> {
  if (!isRoot()) return 'needs root (loop devices, mounts, mmdebstrap)';
  const why = qemuUnavailable();
  if (why) return why;
  const r = await recipe();
  if (typeof r === 'string') return r;
  if (await findCached('reference', await cacheKey(r))) return undefined;
  for (const c of HOST_TOOLS) {
    if (!hasCommand(c))
      return `needs ${c} to build the reference disk (apt-get install mmdebstrap grub-pc-bin grub-efi-amd64-bin dosfstools mtools)`;
  }
  if (!existsSync('/usr/lib/grub/i386-pc') || !existsSync('/usr/lib/grub/x86_64-efi'))
    return 'needs grub-pc-bin and grub-efi-amd64-bin (GRUB for BIOS and UEFI)';
  const mirror = r.sources[0]!.split(' ')[1]!;
  const url = `${mirror}/dists/${r.suite}/Release`;
  try {
    const res = await fetch(url, { method: 'HEAD', signal: AbortSignal.timeout(10_000) });
    if (!res.ok) return `the Debian mirror answers ${res.status} for ${url}`;
  } catch (err) {
    return `the Debian mirror is unreachable (${url}: ${(err as Error).message})`;
  }
  return undefined;
}

/**
 * The reference disk: from the cache, or built now (a minute or two, then two proving boots).
 * `log` hears what the build is doing. Throws when it cannot be built; call
 * referenceDiskUnavailable first to skip instead.
 */
export async function referenceDisk(log: (line: string) => void = () => {}): Promise<ReferenceDisk> {
  const r = await recipe();
  if (typeof r === 'string') throw new Error(`cannot build the reference disk: ${r}`);
  return cachedDisk('reference', await cacheKey(r), (dir) => build(r, dir, log));
}

async function build(r: Recipe, dir: string, log: (line: string) => void): Promise<ReferenceMeta> {
  const started = Date.now();
  const tree = join(dir, 'root');
  log(`mmdebstrap ${r.suite} from ${r.sources[0]} (${r.packages.join(', ')})`);
  await sh('mmdebstrap', [
    '--variant=apt',
    `--include=${r.packages.join(',')}`,
    '--aptopt=Acquire::Check-Valid-Until "false"',
    // Documentation and translations: a third of the root's files, nothing a boot reads.
    '--dpkgopt=path-exclude=/usr/share/doc/*',
    '--dpkgopt=path-exclude=/usr/share/man/*',
    '--dpkgopt=path-exclude=/usr/share/locale/*',
    '--dpkgopt=path-exclude=/usr/share/info/*',
    // An initramfs with the storage and filesystem drivers only: GRUB reads it through the
    // firmware's disk calls, which TCG runs at about 1 MB/s, and MODULES=most makes it 36 MB.
    `--customize-hook=${INITRAMFS_HOOK}`,
    r.suite,
    tree,
    ...r.sources,
  ]);
  log(`root made in ${secs(Date.now() - started)}`);

  const kernel = (await readdir(join(tree, 'boot')))
    .map((f) => /^vmlinuz-(.+)$/.exec(f)?.[1])
    .find((k): k is string => k !== undefined);
  if (!kernel) throw new Error(`mmdebstrap made no kernel in ${tree}/boot`);
  const layout = { hostname: r.hostname, diskBytes: r.diskBytes, espBytes: r.espBytes, kernel };
  const made = await assembleBootDisk(dir, tree, layout, log);
  log(`disk made in ${secs(Date.now() - started)}; proving it boots under SeaBIOS and OVMF`);
  const provenBoots = await proveBoots(dir, r.hostname);
  const meta: ReferenceMeta = {
    diskBytes: r.diskBytes,
    hostname: r.hostname,
    kernel,
    ...made,
    suite: r.suite,
    buildSeconds: Math.round((Date.now() - started) / 100) / 10,
    builtAt: new Date().toISOString(),
    provenBoots,
  };
  log(
    `built in ${meta.buildSeconds} s (${provenBoots.map((b) => `${b.firmware} boot ${b.seconds} s`).join(', ')})`,
  );
  return meta;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const why = await referenceDiskUnavailable();
  if (why) {
    console.error(`cannot build the reference disk: ${why}`);
    process.exit(1);
  }
  const disk = await referenceDisk((line) => console.error(line));
  console.log(JSON.stringify(disk, null, 2));
}
