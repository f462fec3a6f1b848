/**
 * What the boot tests' bootable disks have in common: a GPT disk-image file that boots under BIOS
 * and UEFI, laid out as a lab's reference machine is, made from a root tree; and a cache of built
 * disks between runs of the suite.
 *
 *   partition 1  BIOS boot (1 MiB)   GRUB's core image, for BIOS
 *   partition 2  EFI system          vfat, GRUB at the removable path \EFI\BOOT\BOOTX64.EFI
 *   partition 3  Linux root (rest)   ext4, the tree, booted with root=UUID=… console=ttyS0
 *
 * reference-disk.ts makes the tree with mmdebstrap (a real Debian), small-disk.ts from busybox
 * and the Debian kernel (a fixture that boots in seconds under TCG).
 */
import { spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
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
import { attachLoop, detachLoop } from '../../src/disk/device.ts';
import { bootToLogin, type BootResult } from './qemu.ts';

export const CACHE_ROOT = process.env.IMGCAST_TEST_CACHE ?? '/var/cache/imgcast-test';

const MiB = 1024 * 1024;
const SECTOR = 512;

export interface DiskPartition {
  number: number;
  /** Byte offset and length on the disk. */
  start: number;
  size: number;
}

/** What a built disk's meta.json holds, besides what each kind adds. */
export interface BootDiskMeta {
  diskBytes: number;
  hostname: string;
  kernel: string;
  /** The ext4 root's UUID (root=UUID=… on the kernel's command line, and in fstab). */
  rootUuid: string;
  /** The vfat volume ID of the EFI partition, as blkid prints it (fstab mounts /boot/efi by it). */
  espUuid: string;
  partitions: { biosBoot: DiskPartition; esp: DiskPartition; root: DiskPartition };
  /** How long the build took, boot loaders and proving boots included. */
  buildSeconds: number;
  builtAt: string;
  /** The proving boots at build time: seconds to the login prompt under each firmware. */
  provenBoots: Array<{ firmware: string; seconds: number }>;
}

export type CachedDisk<M extends BootDiskMeta> = M & {
  /** The cached disk-image file. Never written to: boot it with a snapshot, capture it as is. */
  path: string;
  /** True when this run found it in the cache, false when this run built it. */
  cached: boolean;
};

/**
 * The disk `kind-key` from the cache, or built now by `build` into a `.partial-PID` folder that is
 * renamed into place only once complete (`build` writes disk.img and returns its meta), so a
 * killed build never leaves a cache entry.
 */
export async function cachedDisk<M extends BootDiskMeta>(
  kind: string,
  key: string,
  build: (dir: string) => Promise<M>,
): Promise<CachedDisk<M>> {
  const found = await findCached<M>(kind, key);
  if (found) return found;
  await mkdir(CACHE_ROOT, { recursive: true });
  await pruneCache(kind, key);
  const partial = join(CACHE_ROOT, `${kind}-${key}.partial-${process.pid}`);
  await rm(partial, { recursive: true, force: true });
  await mkdir(partial);
  try {
    const meta = await build(partial);
    await writeFile(join(partial, 'meta.json'), `${JSON.stringify(meta, null, 2)}\n`);
    const final = join(CACHE_ROOT, `${kind}-${key}`);
    try {
      await rename(partial, final);
    } catch (err) {
      // Another run published the same disk first: use that one.
      if (!['ENOTEMPTY', 'EEXIST'].includes((err as NodeJS.ErrnoException).code ?? '')) throw err;
      await rm(partial, { recursive: true, force: true });
      const theirs = await findCached<M>(kind, key);
      if (theirs) return theirs;
      throw err;
    }
    return { ...meta, path: join(final, 'disk.img'), cached: false };
  } catch (err) {
    await rm(partial, { recursive: true, force: true });
    throw err;
  }
}

export async function findCached<M extends BootDiskMeta>(
  kind: string,
  key: string,
): Promise<CachedDisk<M> | undefined> {
  const dir = join(CACHE_ROOT, `${kind}-${key}`);
  try {
    const meta = JSON.parse(await readFile(join(dir, 'meta.json'), 'utf8')) as M;
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

/** Disks of other recipes unused this long are removed by the next build. */
const UNUSED_MS = 2 * 24 * 3600_000;

/**
 * Removes builds left by dead runs, and other recipes' disks of this kind nobody used for two
 * days: checkouts of different versions of these files may share the cache.
 */
async function pruneCache(kind: string, key: string): Promise<void> {
  for (const name of await readdir(CACHE_ROOT).catch(() => [] as string[])) {
    const m = new RegExp(`^${kind}-([0-9a-f]+)(?:\\.partial-(\\d+))?$`).exec(name);
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
export function sh(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): Promise<string> {
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

export async function withLoop<T>(
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

export interface DiskLayout {
  hostname: string;
  diskBytes: number;
  espBytes: number;
  /** The kernel's version: the tree has /boot/vmlinuz-VERSION and /boot/initrd.img-VERSION. */
  kernel: string;
}

/**
 * Gives `tree` its identity files (hostname, hosts, a machine-id of its own, fstab) and GRUB's
 * configuration, and makes `dir`/disk.img from it: GPT, the three partitions, GRUB for BIOS and
 * for UEFI. Removes the tree once it is on the disk.
 */
export async function assembleBootDisk(
  dir: string,
  tree: string,
  layout: DiskLayout,
  log: (line: string) => void,
): Promise<Pick<BootDiskMeta, 'rootUuid' | 'espUuid' | 'partitions'>> {
  const { hostname, kernel } = layout;
  const rootUuid = randomUUID();
  const espSerial = randomBytes(4).toString('hex').toUpperCase();
  const espUuid = `${espSerial.slice(0, 4)}-${espSerial.slice(4)}`;

  await writeFile(join(tree, 'etc/hostname'), `${hostname}\n`);
  await writeFile(
    join(tree, 'etc/hosts'),
    `127.0.0.1\tlocalhost\n127.0.1.1\t${hostname}\n\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n`,
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
      `menuentry 'Linux (${hostname})' {`,
      `  linux /boot/vmlinuz-${kernel} root=UUID=${rootUuid} ro console=ttyS0,115200`,
      `  initrd /boot/initrd.img-${kernel}`,
      '}',
      '',
    ].join('\n'),
  );

  // The disk: GPT with the three partitions, sector-aligned at 1 MiB.
  const disk = join(dir, 'disk.img');
  await (await open(disk, 'w')).close();
  await truncate(disk, layout.diskBytes);
  const biosBoot = { number: 1, start: MiB, size: MiB };
  const esp = { number: 2, start: 2 * MiB, size: layout.espBytes };
  const rootStart = esp.start + esp.size;
  // The backup GPT takes the last 33 sectors; the root ends on a 1 MiB boundary before them.
  const rootSize = Math.floor((layout.diskBytes - 33 * SECTOR - rootStart) / MiB) * MiB;
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
  return { rootUuid, espUuid, partitions: { biosBoot, esp, root } };
}

/**
 * Boots a freshly built disk under SeaBIOS and OVMF at once and checks each comes up to its own
 * login prompt with no failed unit: a cached disk is one that was seen to boot.
 */
export async function proveBoots(
  dir: string,
  hostname: string,
): Promise<Array<{ firmware: string; seconds: number }>> {
  const disk = join(dir, 'disk.img');
  const boots = await Promise.all(
    (['bios', 'uefi'] as const).map((firmware) =>
      bootToLogin({ disk, firmware, logFile: join(dir, `boot-${firmware}.log`) }),
    ),
  );
  for (const b of boots) proveBoot(b, hostname);
  return boots.map((b) => ({ firmware: b.firmware, seconds: b.seconds }));
}

function proveBoot(b: BootResult, hostname: string): void {
  if (b.hostname !== hostname || b.failedUnits.length > 0) {
    throw new Error(
      `the freshly built disk did not boot cleanly under ${b.firmware}: login prompt of "${b.hostname}"` +
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

export const secs = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
