/**
 * localboot.efi: how a UEFI workstation the server sends to its own disk gets there. iPXE's
 * `exit` hands the machine back to the firmware, which goes on down its boot order; but a
 * machine imaged from blank has no boot entry for the disk just written (the image's "debian" or
 * "Windows Boot Manager" entry lives in the reference machine's firmware, not in the image), and
 * some firmware then stops in its setup screen. So under UEFI iPXE chains this small GRUB
 * instead, which finds a loader on a local disk's EFI system partition and starts it, whatever
 * the firmware's variables say (FOG does the same with rEFInd or GRUB). When it finds none it
 * exits, and iPXE falls back to `exit`.
 *
 * Built by `imgcast bootenv build` from the host's GRUB (grub-efi-amd64-bin): grub-mkimage with a
 * memdisk holding the configuration below. Without GRUB for UEFI it is left out, and the server
 * sends UEFI machines to their disk with `exit` alone.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export const LOCALBOOT_FILE = 'localboot.efi';

const GRUB_EFI_DIR = '/usr/lib/grub/x86_64-efi';

/**
 * The loaders looked for, in this order: the removable-media path every installer can write and
 * every firmware knows, then the usual vendor paths (Windows, then Linux distributions, shim
 * before GRUB so Secure Boot setups start the same chain as from their own entry).
 */
export const LOADERS = [
  '/EFI/BOOT/BOOTX64.EFI',
  '/EFI/Microsoft/Boot/bootmgfw.efi',
  '/EFI/debian/shimx64.efi',
  '/EFI/debian/grubx64.efi',
  '/EFI/ubuntu/shimx64.efi',
  '/EFI/ubuntu/grubx64.efi',
  '/EFI/fedora/shimx64.efi',
  '/EFI/redhat/shimx64.efi',
  '/EFI/centos/shimx64.efi',
  '/EFI/rocky/shimx64.efi',
  '/EFI/opensuse/shim.efi',
  '/EFI/sles/shim.efi',
  '/EFI/systemd/systemd-bootx64.efi',
] as const;

/** GRUB's configuration (pure): the first loader found on a local disk is started. */
export function localBootConfig(): string {
  return [
    'set timeout=0',
    'terminal_output console',
    `for loader in ${LOADERS.join(' ')}; do`,
    // chainloader takes the EFI device from `root`, not from the file's path.
    '  if search --no-floppy --file --set=root "$loader"; then',
    '    echo "imgcast: starting ($root)$loader"',
    '    chainloader "$loader"',
    '    boot',
    '  fi',
    'done',
    'echo "imgcast: no boot loader on a local disk"',
    'exit',
    '',
  ].join('\n');
}

/** Why localboot.efi cannot be made here, or undefined. */
export function localBootUnavailable(): string | undefined {
  if (!existsSync(GRUB_EFI_DIR))
    return `no GRUB for UEFI in ${GRUB_EFI_DIR} (apt-get install grub-efi-amd64-bin)`;
  return undefined;
}

/** Writes localboot.efi to `file`, working in a new folder under `under` (removed after). */
export async function buildLocalBoot(file: string, under: string = tmpdir()): Promise<void> {
  const scratch = await mkdtemp(join(under, 'imgcast-localboot-'));
  try {
    const tree = join(scratch, 'memdisk');
    await mkdir(join(tree, 'boot/grub'), { recursive: true });
    await writeFile(join(tree, 'boot/grub/grub.cfg'), localBootConfig());
    const memdisk = join(scratch, 'memdisk.tar');
    await run('tar', ['-C', tree, '-cf', memdisk, 'boot']);
    await run('grub-mkimage', [
      '-O',
      'x86_64-efi',
      '-d',
      GRUB_EFI_DIR,
      '-p',
      '(memdisk)/boot/grub',
      '-m',
      memdisk,
      '-o',
      file,
      // normal runs the configuration (for, if); the rest is what it calls.
      'memdisk',
      'tar',
      'normal',
      'part_gpt',
      'part_msdos',
      'fat',
      'search',
      'search_fs_file',
      'chain',
      'echo',
      'test',
    ]);
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}
