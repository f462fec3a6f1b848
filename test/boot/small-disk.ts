/**
 * A small bootable workstation for tests that boot several machines at once under TCG: the same
 * GPT layout, GRUB for BIOS and UEFI, Debian kernel and Debian initramfs as the reference disk
 * (taken from it), and a root of busybox with an init that comes up to `NAME login:` on the
 * serial console in seconds where Debian's systemd takes minutes. What identity changes is there
 * as on a real system: os-release, hostname, hosts, a machine-id and an SSH host key.
 *
 * Cached like the reference disk (boot-disk.ts), under a hash of this file, boot-disk.ts, the
 * reference disk it took its kernel from and the busybox binary; built in a few seconds plus
 * two proving boots.
 *
 * Run this file to build (or find) the disk and print where it is:
 *   node test/boot/small-disk.ts
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, copyFile, mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { hasCommand } from '../helpers/env.ts';
import {
  assembleBootDisk,
  cachedDisk,
  proveBoots,
  secs,
  sh,
  withLoop,
  type BootDiskMeta,
  type CachedDisk,
} from './boot-disk.ts';
import { referenceDisk, referenceDiskUnavailable, type ReferenceDisk } from './reference-disk.ts';

const MiB = 1024 * 1024;
const BUSYBOX = '/bin/busybox';

export type SmallDisk = CachedDisk<BootDiskMeta>;

const HOSTNAME = 'small-reference';
const DISK_BYTES = 256 * MiB;
// The smallest FAT32 mkfs.vfat makes with its default cluster size, and more than GRUB needs.
const ESP_BYTES = 64 * MiB;

/** Why the small disk can be neither found nor built here, or undefined. */
export async function smallDiskUnavailable(): Promise<string | undefined> {
  if (!hasCommand('busybox') || !isStatic(BUSYBOX))
    return `needs a static busybox at ${BUSYBOX} (apt-get install busybox-static)`;
  if (!hasCommand('debugfs') || !hasCommand('ssh-keygen'))
    return 'needs debugfs (e2fsprogs) and ssh-keygen (openssh-client)';
  return referenceDiskUnavailable();
}

function isStatic(file: string): boolean {
  const r = spawnSync('ldd', [file], { encoding: 'utf8' });
  return /not a dynamic executable|statically linked/.test(`${r.stdout}${r.stderr}`);
}

/** The small disk: from the cache, or built now from the reference disk's kernel and busybox. */
export async function smallDisk(log: (line: string) => void = () => {}): Promise<SmallDisk> {
  const ref = await referenceDisk(log);
  const hash = createHash('sha256').update(`${ref.kernel} ${ref.rootUuid}`);
  for (const file of [
    fileURLToPath(import.meta.url),
    fileURLToPath(new URL('./boot-disk.ts', import.meta.url)),
  ])
    hash.update(await readFile(file));
  hash.update(await readFile(BUSYBOX));
  return cachedDisk('small', hash.digest('hex').slice(0, 16), (dir) => build(ref, dir, log));
}

const INITTAB = `::sysinit:/etc/init.d/rcS
ttyS0::respawn:/sbin/getty -L 115200 ttyS0 vt100
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/umount -a -r
`;

// The initramfs has already moved /dev, /proc and /sys onto the root; mounting them again is for
// a boot without it, so its complaints are not shown.
const RCS = `#!/bin/sh
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -o remount,rw /
hostname -F /etc/hostname
echo "small system up as $(hostname), machine-id $(cat /etc/machine-id)"
`;

async function build(ref: ReferenceDisk, dir: string, log: (line: string) => void): Promise<BootDiskMeta> {
  const started = Date.now();
  const tree = join(dir, 'root');
  for (const d of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'etc/init.d', 'etc/ssh', 'root'])
    await mkdir(join(tree, d), { recursive: true });
  for (const d of ['proc', 'sys', 'dev', 'run', 'tmp']) await mkdir(join(tree, d));
  await chmod(join(tree, 'tmp'), 0o1777);

  await copyFile(BUSYBOX, join(tree, 'bin/busybox'));
  await chmod(join(tree, 'bin/busybox'), 0o755);
  // Relative links: the initramfs checks the root's /sbin/init before it switches to it.
  const applets = (await sh(BUSYBOX, ['--list-full'])).split('\n').filter((a) => a && a !== 'bin/busybox');
  for (const applet of applets) {
    await mkdir(join(tree, dirname(applet)), { recursive: true });
    await symlink(relative(dirname(join('/', applet)), '/bin/busybox'), join(tree, applet)).catch(
      (err: NodeJS.ErrnoException) => {
        if (err.code !== 'EEXIST') throw err;
      },
    );
  }

  log(`kernel ${ref.kernel} and its initramfs from the reference disk`);
  await withLoop(
    ref.path,
    { offset: ref.partitions.root.start, size: ref.partitions.root.size, readOnly: true },
    (dev) => sh('debugfs', ['-R', `rdump /boot ${tree}`, dev]),
  );
  // rdump brings the whole of /boot (GRUB's files too, which the disk gets anew): keep the two.
  await sh('find', [
    join(tree, 'boot'),
    '-mindepth',
    '1',
    '-maxdepth',
    '1',
    '!',
    '-name',
    `vmlinuz-${ref.kernel}`,
    '!',
    '-name',
    `initrd.img-${ref.kernel}`,
    '-exec',
    'rm',
    '-rf',
    '{}',
    '+',
  ]);

  const etc = (name: string, text: string, mode = 0o644) =>
    writeFile(join(tree, 'etc', name), text).then(() => chmod(join(tree, 'etc', name), mode));
  await etc('inittab', INITTAB);
  await etc('init.d/rcS', RCS, 0o755);
  await etc(
    'os-release',
    'NAME="imgcast small test system"\nID=imgcast-small\nPRETTY_NAME="imgcast small test system"\n',
  );
  await etc('issue', 'imgcast small test system\n\n');
  await etc('passwd', 'root:x:0:0:root:/root:/bin/sh\n');
  await etc('group', 'root:x:0:\n');
  await etc('shadow', 'root:*:20000:0:99999:7:::\n', 0o600);
  await sh('ssh-keygen', [
    '-q',
    '-t',
    'ed25519',
    '-N',
    '',
    '-C',
    `root@${HOSTNAME}`,
    '-f',
    join(tree, 'etc/ssh/ssh_host_ed25519_key'),
  ]);

  const layout = { hostname: HOSTNAME, diskBytes: DISK_BYTES, espBytes: ESP_BYTES, kernel: ref.kernel };
  const made = await assembleBootDisk(dir, tree, layout, log);
  log(`disk made in ${secs(Date.now() - started)}; proving it boots under SeaBIOS and OVMF`);
  const provenBoots = await proveBoots(dir, HOSTNAME);
  log(
    `built in ${secs(Date.now() - started)} (${provenBoots.map((b) => `${b.firmware} boot ${b.seconds} s`).join(', ')})`,
  );
  return {
    diskBytes: DISK_BYTES,
    hostname: HOSTNAME,
    kernel: ref.kernel,
    ...made,
    buildSeconds: Math.round((Date.now() - started) / 100) / 10,
    builtAt: new Date().toISOString(),
    provenBoots,
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const why = await smallDiskUnavailable();
  if (why) {
    console.error(`cannot build the small disk: ${why}`);
    process.exit(1);
  }
  console.log(JSON.stringify(await smallDisk((line) => console.error(line)), null, 2));
}
