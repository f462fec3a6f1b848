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
 * (the mirror, the suite, the packages, the layout and this file's own text: any edit here means
 * one rebuild). A build happens in a
 * `.partial-PID` folder renamed into place only once the disk is complete, checked (e2fsck) and
 * has booted to its login prompt under both firmwares: a killed build never leaves a cache entry,
 * and a cached disk is one that was seen to boot. Never write to the cached disk: boot it with a
 * snapshot (see qemu.ts) and capture it read-only.
 *
 * Run this file to build (or find) the disk and print where it is:
 *   node test/boot/reference-disk.ts
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import {
  cp,
  mkdir,
  open,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  truncate,
  utimes,
  writeFile,
} from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { attachLoop, detachLoop } from '../../src/disk/device.ts';
import { hasCommand, isRoot } from '../helpers/env.ts';
import { bootToLogin, qemuUnavailable, type BootResult } from './qemu.ts';

export const CACHE_ROOT = process.env.IMGCAST_TEST_CACHE ?? '/var/cache/imgcast-test';

const MiB = 1024 * 1024;
const SECTOR = 512;

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

export interface DiskPartition {
  number: number;
  /** Byte offset and length on the disk. */
  start: number;
  size: number;
}

export interface ReferenceDisk {
  /** The cached disk-image file. Never written to: boot it with a snapshot, capture it as is. */
  path: string;
  diskBytes: number;
  hostname: string;
  suite: string;
  kernel: string;
  /** The ext4 root's UUID (root=UUID=… on the kernel's command line, and in fstab). */
  rootUuid: string;
  /** The vfat volume ID of the EFI partition, as blkid prints it (fstab mounts /boot/efi by it). */
  espUuid: string;
  partitions: { biosBoot: DiskPartition; esp: DiskPartition; root: DiskPartition };
  /** How long the build took (mmdebstrap, disk, boot loaders, the two proving boots), when made. */
  buildSeconds: number;
  builtAt: string;
  /** The proving boots at build time: seconds to the login prompt under each firmware. */
  provenBoots: Array<{ firmware: string; seconds: number }>;
  /** True when this run found it in the cache, false when this run built it. */
  cached: boolean;
}

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
  const self = await readFile(fileURLToPath(import.meta.url), 'utf8');
  return createHash('sha256').update(JSON.stringify(r)).update(self).digest('hex').slice(0, 16);
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
  if (await findCached(r)) return undefined;
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

async function findCached(r: Recipe): Promise<ReferenceDisk | undefined> {
  const dir = join(CACHE_ROOT, `reference-${await cacheKey(r)}`);
  try {
    const meta = JSON.parse(await readFile(join(dir, 'meta.json'), 'utf8')) as ReferenceDisk;
    const st = await stat(join(dir, 'disk.img'));
    if (st.size !== meta.diskBytes) return undefined;
    // Marks it as in use, so another recipe's build (another checkout) leaves it be.
    const now = new Date();
    await utimes(join(dir, 'meta.json'), now, now).catch(() => {});
    return { ...meta, path: join(dir, 'disk.img'), cached: true };
  } catch {
    return undefined;
  }
}

/**
 * The reference disk: from the cache, or built now (a minute or two, then two proving boots).
 * `log` hears what the build is doing. Throws when it cannot be built; call
 * referenceDiskUnavailable first to skip instead.
 */
export async function referenceDisk(log: (line: string) => void = () => {}): Promise<ReferenceDisk> {
  const r = await recipe();
  if (typeof r === 'string') throw new Error(`cannot build the reference disk: ${r}`);
  const found = await findCached(r);
  if (found) return found;
  const key = await cacheKey(r);
  await mkdir(CACHE_ROOT, { recursive: true });
  await pruneCache(key);
  const partial = join(CACHE_ROOT, `reference-${key}.partial-${process.pid}`);
  await rm(partial, { recursive: true, force: true });
  await mkdir(partial);
  try {
    const meta = await build(r, partial, log);
    const final = join(CACHE_ROOT, `reference-${key}`);
    try {
      await rename(partial, final);
    } catch (err) {
      // Another run published the same disk first: use that one.
      if (!['ENOTEMPTY', 'EEXIST'].includes((err as NodeJS.ErrnoException).code ?? '')) throw err;
      await rm(partial, { recursive: true, force: true });
      const theirs = await findCached(r);
      if (theirs) return theirs;
      throw err;
    }
    return { ...meta, path: join(final, 'disk.img'), cached: false };
  } catch (err) {
    await rm(partial, { recursive: true, force: true });
    throw err;
  }
}

/** Disks of other recipes unused this long are removed by the next build. */
const UNUSED_MS = 2 * 24 * 3600_000;

/**
 * Removes builds left by dead runs, and other recipes' disks nobody used for two days (each
 * holds about 0.7 GB): checkouts of different versions of this file may share the cache.
 */
async function pruneCache(key: string): Promise<void> {
  for (const name of await readdir(CACHE_ROOT).catch(() => [] as string[])) {
    const m = /^reference-([0-9a-f]+)(?:\.partial-(\d+))?$/.exec(name);
    if (!m) continue;
    const pid = m[2] ? Number(m[2]) : undefined;
    if (pid !== undefined) {
      if (pid !== process.pid && alive(pid)) continue;
    } else {
      if (m[1] === key) continue;
      const used = await stat(join(CACHE_ROOT, name, 'meta.json')).catch(() => null);
      if (used && Date.now() - used.mtimeMs < UNUSED_MS) continue;
    }
    await rm(join(CACHE_ROOT, name), { recursive: true, force: true });
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Runs a command with its output kept for the error; long commands are logged as they finish. */
function sh(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out = (out + d).slice(-200_000)));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (out = (out + d).slice(-200_000)));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (code === 0) resolve(out);
      else
        reject(
          new Error(
            `${cmd} ${args.join(' ')} failed (${signal ?? `exit ${code}`}):\n${out.trimEnd().split('\n').slice(-40).join('\n')}`,
          ),
        );
    });
  });
}

async function withLoop<T>(
  file: string,
  opts: { offset?: number; size?: number; readOnly?: boolean },
  use: (dev: string) => Promise<T>,
): Promise<T> {
  const dev = await attachLoop(file, opts);
  try {
    return await use(dev);
  } finally {
    await detachLoop(dev);
  }
}

async function build(
  r: Recipe,
  dir: string,
  log: (line: string) => void,
): Promise<Omit<ReferenceDisk, 'path' | 'cached'>> {
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
  const rootUuid = randomUUID();
  const espSerial = randomBytes(4).toString('hex').toUpperCase();
  const espUuid = `${espSerial.slice(0, 4)}-${espSerial.slice(4)}`;

  await writeFile(join(tree, 'etc/hostname'), `${r.hostname}\n`);
  await writeFile(
    join(tree, 'etc/hosts'),
    `127.0.0.1\tlocalhost\n127.0.1.1\t${r.hostname}\n\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n`,
  );
  // mmdebstrap leaves it empty, for the first boot to make one; a reference machine has its own.
  await writeFile(join(tree, 'etc/machine-id'), `${randomBytes(16).toString('hex')}\n`);
  await writeFile(
    join(tree, 'etc/fstab'),
    `UUID=${rootUuid}\t/\text4\terrors=remount-ro\t0\t1\nUUID=${espUuid}\t/boot/efi\tvfat\tumask=0077\t0\t0\n`,
  );
  await mkdir(join(tree, 'boot/efi'), { recursive: true });
  // GRUB for UEFI loads its modules from here, as grub-install would have put them.
  await cp('/usr/lib/grub/x86_64-efi', join(tree, 'boot/grub/x86_64-efi'), {
    recursive: true,
    filter: (src) => !/\.(efi|img|image)$/.test(src),
  });
  await writeFile(
    join(tree, 'boot/grub/grub.cfg'),
    [
      'serial --unit=0 --speed=115200',
      'terminal_input serial console',
      'terminal_output serial console',
      'set timeout=1',
      'set default=0',
      'insmod part_gpt',
      'insmod ext2',
      'if [ x$grub_platform = xefi ]; then insmod efi_gop; fi',
      `search --no-floppy --fs-uuid --set=root ${rootUuid}`,
      `menuentry 'Debian GNU/Linux (${r.hostname})' {`,
      `  linux /boot/vmlinuz-${kernel} root=UUID=${rootUuid} ro console=ttyS0,115200`,
      `  initrd /boot/initrd.img-${kernel}`,
      '}',
      '',
    ].join('\n'),
  );

  // The disk: GPT with the three partitions, sector-aligned at 1 MiB.
  const disk = join(dir, 'disk.img');
  await (await open(disk, 'w')).close();
  await truncate(disk, r.diskBytes);
  const biosBoot = { number: 1, start: MiB, size: MiB };
  const esp = { number: 2, start: 2 * MiB, size: r.espBytes };
  const rootStart = esp.start + esp.size;
  // The backup GPT takes the last 33 sectors; the root ends on a 1 MiB boundary before them.
  const rootSize = Math.floor((r.diskBytes - 33 * SECTOR - rootStart) / MiB) * MiB;
  const root = { number: 3, start: rootStart, size: rootSize };
  const part = (p: DiskPartition, type: string, name: string) =>
    `start=${p.start / SECTOR}, size=${p.size / SECTOR}, type=${type}, name="${name}"`;
  await sfdisk(
    disk,
    [
      'label: gpt',
      part(biosBoot, '21686148-6449-6E6F-744E-656564454649', 'BIOS boot'),
      part(esp, 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B', 'EFI system'),
      part(root, '0FC63DAF-8483-4772-8E79-3D69D8477DE4', 'root'),
      '',
    ].join('\n'),
  );

  log('filesystems');
  await withLoop(disk, { offset: esp.start, size: esp.size }, async (dev) => {
    await sh('mkfs.vfat', ['-F', '32', '-i', espSerial, '-n', 'EFI', dev]);
  });
  await withLoop(disk, { offset: root.start, size: root.size }, async (dev) => {
    await sh('mkfs.ext4', ['-q', '-F', '-U', rootUuid, '-L', 'root', '-d', tree, dev]);
  });
  await rm(tree, { recursive: true, force: true });

  log('GRUB for BIOS (grub-install --target=i386-pc)');
  const mnt = join(dir, 'mnt');
  await mkdir(mnt);
  await withLoop(disk, {}, async (whole) => {
    await withLoop(disk, { offset: root.start, size: root.size }, async (dev) => {
      await sh('mount', ['-t', 'ext4', dev, mnt]);
      try {
        // The root is on a loop device of its own (this kernel makes no partition devices), so
        // grub-install finds /boot on "another disk" and has core.img look for it by UUID.
        await sh('grub-install', [
          '--target=i386-pc',
          `--boot-directory=${join(mnt, 'boot')}`,
          '--modules=part_gpt ext2',
          whole,
        ]);
      } finally {
        await sh('umount', [mnt]);
      }
    });
  });

  log('GRUB for UEFI at \\EFI\\BOOT\\BOOTX64.EFI');
  // grub-install --target=x86_64-efi needs the EFI partition mounted, and this kernel may have no
  // vfat: the loader is made by grub-mkimage (what grub-install runs) and copied in with mtools.
  const early = join(dir, 'early.cfg');
  await writeFile(early, `search.fs_uuid ${rootUuid} root\nset prefix=($root)/boot/grub\n`);
  const efiLoader = join(dir, 'BOOTX64.EFI');
  await sh('grub-mkimage', [
    '-O',
    'x86_64-efi',
    '-c',
    early,
    '-p',
    '/boot/grub',
    '-o',
    efiLoader,
    'part_gpt',
    'ext2',
    'search_fs_uuid',
  ]);
  const mtools = { ...process.env, MTOOLS_SKIP_CHECK: '1' };
  const espImage = `${disk}@@${esp.start}`;
  await sh('mmd', ['-i', espImage, '::/EFI', '::/EFI/BOOT'], { env: mtools });
  await sh('mcopy', ['-i', espImage, efiLoader, '::/EFI/BOOT/BOOTX64.EFI'], { env: mtools });
  await rm(efiLoader);
  await rm(early);
  await rm(mnt, { recursive: true });

  await withLoop(disk, { offset: root.start, size: root.size, readOnly: true }, async (dev) => {
    await sh('e2fsck', ['-f', '-n', dev]);
  });
  const madeIn = Date.now() - started;
  log(`disk made in ${secs(madeIn)}; proving it boots under SeaBIOS and OVMF`);

  const boots = await Promise.all(
    (['bios', 'uefi'] as const).map((firmware) =>
      bootToLogin({ disk, firmware, logFile: join(dir, `boot-${firmware}.log`) }),
    ),
  );
  for (const b of boots) proveBoot(b, r.hostname);
  const meta = {
    diskBytes: r.diskBytes,
    hostname: r.hostname,
    suite: r.suite,
    kernel,
    rootUuid,
    espUuid,
    partitions: { biosBoot, esp, root },
    buildSeconds: Math.round((Date.now() - started) / 100) / 10,
    builtAt: new Date().toISOString(),
    provenBoots: boots.map((b) => ({ firmware: b.firmware, seconds: b.seconds })),
  };
  await writeFile(join(dir, 'meta.json'), `${JSON.stringify(meta, null, 2)}\n`);
  log(
    `built in ${meta.buildSeconds} s (${boots.map((b) => `${b.firmware} boot ${b.seconds} s`).join(', ')})`,
  );
  return meta;
}

function proveBoot(b: BootResult, hostname: string): void {
  if (b.hostname !== hostname || b.failedUnits.length > 0) {
    throw new Error(
      `the freshly built reference disk did not boot cleanly under ${b.firmware}: login prompt of "${b.hostname}"` +
        `, failed units: ${b.failedUnits.join('; ') || 'none'}\n${b.log.split('\n').slice(-60).join('\n')}`,
    );
  }
}

async function sfdisk(disk: string, script: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const child = spawn('sfdisk', ['-q', '--no-reread', '--no-tell-kernel', disk], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`sfdisk failed: ${out}`))));
    child.stdin.end(script);
  });
}

const secs = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const why = await referenceDiskUnavailable();
  if (why) {
    console.error(`cannot build the reference disk: ${why}`);
    process.exit(1);
  }
  const disk = await referenceDisk((line) => console.error(line));
  console.log(JSON.stringify(disk, null, 2));
}
