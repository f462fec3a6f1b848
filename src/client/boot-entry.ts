/**
 * Booting the restored system next (`--reboot`). Under BIOS the firmware boots the disk's own
 * boot code, which the restore put back: nothing to do. Under UEFI the firmware boots the entries
 * of its boot list in its boot order, and a blank machine's list has no entry for the disk just
 * written (the reference machine's "debian" or "Windows Boot Manager" entry lives in the
 * reference's firmware, not in the image). So the workstation makes one for the restored disk's
 * EFI system partition (or reuses one that already points there) and puts it at the end of the
 * boot order when it is not there: the entries the administrator ordered keep their places (a
 * lab set to boot from the network first stays so), and the disk is what the firmware comes to
 * when they have nothing to boot. Then:
 * - booted from USB or a disk: the entry is booted once with BootNext;
 * - network-booted by the imaging server (imgcast.boot=network): no BootNext. It restarts from
 *   the network, the server sends it to its disk (iPXE hands back to the firmware, which goes on
 *   down the boot order to this entry), and so sees it come up.
 * When no loader the firmware could start is on the partition, or efibootmgr is missing, it says
 * why it relies on the firmware's own fallback (\EFI\BOOT\BOOTX64.EFI on a removable-path
 * install).
 *
 * The plan is pure (planBootEntry), from what efibootmgr printed and what the image's EFI
 * partition holds; running it is boot.ts's.
 */
import type { DiskLayout, Manifest } from '../image/types.ts';

export interface EfiEntry {
  /** Four hex digits, as BootNext takes it. */
  number: string;
  label: string;
  /** The device path text efibootmgr -v prints after the label. */
  path: string;
}

export interface EfiBootList {
  bootNext: string | null;
  order: string[];
  entries: EfiEntry[];
}

/** Parses `efibootmgr -v` (or without -v: then paths are empty). */
export function parseEfibootmgr(text: string): EfiBootList {
  const list: EfiBootList = { bootNext: null, order: [], entries: [] };
  for (const line of text.split('\n')) {
    let m = /^BootNext:\s*([0-9A-Fa-f]{4})/.exec(line);
    if (m) list.bootNext = m[1]!.toUpperCase();
    m = /^BootOrder:\s*([0-9A-Fa-f,]+)/.exec(line);
    if (m)
      list.order = m[1]!
        .split(',')
        .filter(Boolean)
        .map((x) => x.toUpperCase());
    m = /^Boot([0-9A-Fa-f]{4})(\*?)\s+(.*)$/.exec(line);
    if (m) {
      const rest = m[3]!;
      // The label and the device path are separated by a tab (efibootmgr ≥ 17 prints two spaces).
      const split = /\t|\s{2,}/.exec(rest);
      const label = split ? rest.slice(0, split.index) : rest;
      const path = split ? rest.slice(split.index + split[0].length) : '';
      list.entries.push({ number: m[1]!.toUpperCase(), label: label.trim(), path: path.trim() });
    }
  }
  return list;
}

/** The EFI system partition of a disk layout: its number and GPT partition GUID. */
export function espOf(disk: DiskLayout): { number: number; uuid?: string } | null {
  const esp = disk.partitions.find((p) =>
    disk.table === 'gpt' ? p.type.toLowerCase() === 'c12a7328-f81f-11d2-ba4b-00a0c93ec93b' : p.type === 'ef',
  );
  if (!esp) return null;
  return { number: esp.number, ...(esp.uuid ? { uuid: esp.uuid } : {}) };
}

/** Loaders on the image's EFI partition the firmware could start, best first (\-separated, as UEFI names them). */
export function efiLoaders(manifest: Manifest, espNumber: number): string[] {
  const volume = manifest.volumes.find((v) => v.partition === espNumber);
  if (!volume || volume.kind !== 'files') return [];
  const files = new Map(
    volume.entries.filter((e) => e.type === 'file').map((e) => [e.path.toLowerCase(), e.path]),
  );
  // A distribution's own loader first (shim for Secure Boot), then the removable-path fallback.
  const wanted = [/^efi\/[^/]+\/shimx64\.efi$/, /^efi\/[^/]+\/grubx64\.efi$/, /^efi\/boot\/bootx64\.efi$/];
  const found: string[] = [];
  for (const re of wanted) {
    for (const [lower, path] of files) {
      if (re.test(lower) && !(re === wanted[1] && lower.startsWith('efi/boot/'))) {
        found.push(`\\${path.replaceAll('/', '\\')}`);
      }
    }
  }
  return [...new Set(found)];
}

export type BootPlan =
  | { kind: 'bios'; note: string }
  | { kind: 'fallback'; note: string }
  | {
      kind: 'uefi';
      /** efibootmgr's arguments to make the entry, or null to use `entry`. */
      create: string[] | null;
      entry: string | null;
      label: string;
      loader: string;
      /** The entry is added at the end of the boot order (it is not in it yet). */
      appendToOrder: boolean;
      /** The entry is booted once next (BootNext). */
      bootNext: boolean;
      note: string;
    };

/**
 * What to do before rebooting into the restored disk `disk` (a block device such as /dev/sda),
 * whose EFI system partition is `esp` with `loaders` on it.
 */
export function planBootEntry(f: {
  uefi: boolean;
  /** Booted from the network by the imaging server (the environment's imgcast.boot=network). */
  netboot?: boolean;
  efibootmgr: boolean;
  list: EfiBootList | null;
  disk: string;
  esp: { number: number; uuid?: string } | null;
  loaders: string[];
  label: string;
}): BootPlan {
  if (!f.uefi) return { kind: 'bios', note: 'the firmware boots the disk by its own boot code (BIOS)' };
  if (!f.esp) {
    return {
      kind: 'fallback',
      note: 'the image has no EFI system partition: the firmware finds a loader by itself, if the disk has one',
    };
  }
  const loader = f.loaders[0];
  if (!loader) {
    return {
      kind: 'fallback',
      note: `no loader the firmware could start is on the EFI system partition (partition ${f.esp.number}); the firmware's own search decides`,
    };
  }
  if (!f.efibootmgr || !f.list) {
    return {
      kind: 'fallback',
      note: `efibootmgr is missing, so no boot entry is made: the firmware's fallback (\\EFI\\BOOT\\BOOTX64.EFI) must start ${loader}`,
    };
  }
  // An entry already naming this partition (by its GUID) and this loader is used as it is.
  const uuid = f.esp.uuid?.toLowerCase();
  const lowerLoader = loader.toLowerCase();
  const existing = f.list.entries.find((e) => {
    const p = e.path.toLowerCase();
    return uuid !== undefined && p.includes(uuid) && p.includes(lowerLoader);
  });
  const bootNext = !f.netboot;
  const then = bootNext
    ? 'booted next (BootNext)'
    : 'booted when the server sends this machine to its disk at its next network boot';
  if (existing) {
    const appendToOrder = !f.list.order.includes(existing.number);
    return {
      kind: 'uefi',
      create: null,
      entry: existing.number,
      label: existing.label,
      loader,
      appendToOrder,
      bootNext,
      note: `boot entry Boot${existing.number} (${existing.label}) starts ${loader}${appendToOrder ? ', put at the end of the boot order,' : ''} and is ${then}`,
    };
  }
  return {
    kind: 'uefi',
    create: [
      // --create would put it first in the boot order, ahead of what the administrator ordered.
      '--create-only',
      '--disk',
      f.disk,
      '--part',
      String(f.esp.number),
      '--label',
      f.label,
      '--loader',
      loader,
    ],
    entry: null,
    label: f.label,
    loader,
    appendToOrder: true,
    bootNext,
    note: `a boot entry "${f.label}" for ${loader} on ${f.disk} partition ${f.esp.number} is made, put at the end of the boot order, and ${then}`,
  };
}
