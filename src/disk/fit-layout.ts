/**
 * Any disk that fits: the partition layout a whole-disk image gets on a target of
 * another size. File volumes are made afresh by mkfs on restore, so their partitions
 * can change size; everything restored byte for byte cannot.
 *
 * - A larger disk: the last ext2/3/4 volume's partition grows to the end of the disk
 *   (GPT: up to the backup table); partitions after it keep their size and move to the end.
 * - A smaller disk: ext2/3/4 partitions shrink in proportion, each keeping room for its
 *   files plus a spare (fs-space.ts: 10 %, at least 64 MiB, besides what mkfs itself
 *   takes), unless its original size is smaller; partitions after a shrunk one move
 *   down, aligned to 1 MiB. Refused only when the files do not fit.
 * - Raw volumes keep their size: their bytes are restored as they are. EFI system
 *   partitions and other vfat volumes keep their size (FAT12/16 have size limits, and an
 *   ESP needs no more room on a bigger disk). A BIOS boot partition keeps its place too:
 *   the GRUB boot code in the MBR finds it by sector number. The MBR boot flag changes
 *   nothing: an ext volume is made afresh wherever it is, and GRUB finds it by UUID.
 * - Numbers, types, GUIDs, names and order of the partitions stay; partitions before the
 *   first one that changes keep their place.
 * - `keepSizes`, an MBR disk with an extended partition (its logical partitions are
 *   chained by boot records restored byte for byte), or a layout whose BIOS boot
 *   partition lies after a resizable one keep the image's layout exactly.
 *
 * Pure: the same image, file set, target size and options always give the same layout,
 * which is how a resumed restore and the read-back verification find it again.
 */
import type { DiskLayout, FileVolume, PartitionInfo, Volume } from '../image/types.ts';
import { extFilesNeed, extHoldsFrom, extMaxBytes, extMinBytes, isExt } from './fs-space.ts';

const MiB = 1024 * 1024;
/** Where partitions move to, and the unit sizes change in: what partitioning tools have used since 2008. */
const ALIGN = MiB;

const BIOS_BOOT = '21686148-6449-6e6f-744e-656564454649';
const EFI_SYSTEM = 'c12a7328-f81f-11d2-ba4b-00a0c93ec93b';

export interface FitOptions {
  /** The file set restored: only its files need room. */
  fileset: number;
  /** Keep the image's partition layout exactly (a larger disk keeps its extra space unused). */
  keepSizes?: boolean;
}

/** A partition's size in the fitted layout against the image's. */
export interface Resized {
  number: number;
  fromBytes: number;
  toBytes: number;
}

export type Fit =
  | {
      fits: true;
      /** The image's layout with the partitions placed for the target; sizeBytes is the target's. */
      layout: DiskLayout;
      /** Whether any partition's start or size differs from the image's. */
      changed: boolean;
      resized: Resized[];
      /** Why the layout was kept as the image's although resizing was asked for, if it was. */
      kept?: string;
    }
  | {
      fits: false;
      /** The smallest target the image fits on with these options. */
      needBytes: number;
      haveBytes: number;
      /** What takes the room ("partition 2 needs at least … for … of files"), or why the layout is fixed. */
      why: string;
    };

/** The smallest target the image's own layout fits on: every partition, and for GPT room for the backup table. */
export function layoutNeeds(disk: DiskLayout): number {
  let end = 0;
  for (const p of [...disk.partitions, ...(disk.containers ?? [])])
    end = Math.max(end, p.startBytes + p.sizeBytes);
  const first = disk.bootAreas[0];
  if (first) end = Math.max(end, first.offset + first.length);
  return end + backupBytes(disk);
}

/** GPT: the backup entry array and header at the disk's end. */
function backupBytes(disk: DiskLayout): number {
  if (disk.table !== 'gpt') return 0;
  const backup = disk.bootAreas[1];
  return backup ? backup.length : 33 * disk.sectorSize;
}

type Role = 'pinned' | 'fixed' | 'ext';

interface Slot {
  p: PartitionInfo;
  role: Role;
  /** ext: the smallest size it may get. */
  min: number;
  /** ext: the largest size mkfs makes with its features. */
  max: number;
  /** ext: bytes its files take. */
  data: number;
}

function roleOf(disk: DiskLayout, p: PartitionInfo, v: Volume | undefined): Role {
  const type = p.type.toLowerCase();
  if (disk.table === 'gpt' && type === BIOS_BOOT) return 'pinned';
  if (!v || v.kind === 'raw') return 'fixed';
  if ((disk.table === 'gpt' && type === EFI_SYSTEM) || (disk.table === 'mbr' && type === 'ef'))
    return 'fixed';
  return isExt(v.fs) ? 'ext' : 'fixed';
}

/** The smallest size an ext volume's partition may get: its files and the spare, or its own size if that is smaller and holds them. */
function minimumOf(v: FileVolume, p: PartitionInfo, fileset: number): { min: number; data: number } {
  const need = extFilesNeed(v, fileset, v.fs.blockSize ?? 4096);
  const withSpare = extMinBytes(v.fs, need, ALIGN);
  const min = extHoldsFrom(p.sizeBytes, v.fs, need, false) ? Math.min(withSpare, p.sizeBytes) : withSpare;
  return { min, data: need.bytes };
}

const alignUp = (n: number) => Math.ceil(n / ALIGN) * ALIGN;
const alignDown = (n: number) => Math.floor(n / ALIGN) * ALIGN;

/**
 * The least an ext volume's partition gets at any factor: its minimum, which is its own
 * size when that holds its files, or (files added to the image since) more, aligned.
 */
function floorOf(s: Slot): number {
  return s.min > s.p.sizeBytes ? alignUp(s.min) : s.min;
}

interface Plan {
  slots: Slot[];
  /** Index (in slots, by start) of the first and the last ext volume. */
  first: number;
  last: number;
}

/** The partitions by start with their roles, or why the layout cannot change. */
function planOf(disk: DiskLayout, volumes: readonly Volume[], fileset: number): Plan | string {
  if (disk.containers?.length) {
    return 'an MBR disk with an extended partition keeps its layout: its logical partitions are chained by boot records restored as they are';
  }
  const slots: Slot[] = [...disk.partitions]
    .sort((a, b) => a.startBytes - b.startBytes)
    .map((p) => {
      const v = volumes[p.volume];
      const role = roleOf(disk, p, v);
      if (role !== 'ext') return { p, role, min: p.sizeBytes, max: p.sizeBytes, data: 0 };
      const fv = v as FileVolume;
      return { p, role, ...minimumOf(fv, p, fileset), max: extMaxBytes(fv.fs, p.sizeBytes) };
    });
  const first = slots.findIndex((s) => s.role === 'ext');
  if (first < 0) return 'it has no ext2/3/4 volume, the only kind imgcast resizes';
  const last = slots.findLastIndex((s) => s.role === 'ext');
  const pinned = slots.findIndex((s, i) => i > first && s.role === 'pinned');
  if (pinned >= 0) {
    return `its BIOS boot partition (${slots[pinned]!.p.number}) lies after a resizable partition and must not move`;
  }
  return { slots, first, last };
}

/** Where partitions go for a factor `f` (0..1) of the ext volumes' sizes, before the last one; null if they do not fit. */
function arrange(
  plan: Plan,
  usableEnd: number,
  f: number,
): Map<number, { start: number; size: number }> | null {
  const { slots, first, last } = plan;
  const out = new Map<number, { start: number; size: number }>();
  for (let i = 0; i < first; i++) out.set(i, { start: slots[i]!.p.startBytes, size: slots[i]!.p.sizeBytes });
  const sized = (s: Slot) =>
    Math.max(floorOf(s), f >= 1 ? s.p.sizeBytes : Math.min(alignDown(s.p.sizeBytes * f), s.p.sizeBytes));
  let prevEnd = 0;
  let prevOrigEnd = 0;
  for (let i = first; i <= last; i++) {
    const s = slots[i]!;
    let start = s.p.startBytes;
    if (i > first) {
      // The original gap before it stays; a partition that moves starts on the alignment.
      const at = prevEnd + Math.max(0, s.p.startBytes - prevOrigEnd);
      start = at === s.p.startBytes ? at : alignUp(at);
    }
    const size = s.role === 'ext' ? (i === last ? Math.min(s.min, s.max) : sized(s)) : s.p.sizeBytes;
    out.set(i, { start, size });
    prevEnd = start + size;
    prevOrigEnd = s.p.startBytes + s.p.sizeBytes;
  }
  // The partitions after the last ext volume move together, by whole alignment units, to the end.
  let regionEnd = usableEnd;
  if (last < slots.length - 1) {
    const tail = slots.slice(last + 1);
    const tailEnd = Math.max(...tail.map((s) => s.p.startBytes + s.p.sizeBytes));
    const delta = Math.floor((usableEnd - tailEnd) / ALIGN) * ALIGN;
    for (let i = last + 1; i < slots.length; i++) {
      out.set(i, { start: slots[i]!.p.startBytes + delta, size: slots[i]!.p.sizeBytes });
    }
    regionEnd = slots[last + 1]!.p.startBytes + delta;
  }
  const lastSlot = slots[last]!;
  const lastAt = out.get(last)!;
  // The last ext volume takes the rest: at least its share at this factor and its minimum.
  const share = Math.max(
    floorOf(lastSlot),
    f >= 1 ? lastSlot.p.sizeBytes : alignDown(lastSlot.p.sizeBytes * f),
  );
  let size = regionEnd - lastAt.start;
  if (size < share) return null;
  size = Math.min(size, lastSlot.max);
  // Growing by less than the alignment is not worth a new table.
  if (
    size > lastSlot.p.sizeBytes &&
    size - lastSlot.p.sizeBytes < ALIGN &&
    lastAt.start === lastSlot.p.startBytes
  )
    size = lastSlot.p.sizeBytes;
  out.set(last, { start: lastAt.start, size });
  return out;
}

/** The end of the usable area on a target of `size` bytes: before the backup GPT; an MBR addresses 2^32 sectors. */
function usableEndOf(disk: DiskLayout, size: number): number {
  const end = size - backupBytes(disk);
  return disk.table === 'mbr' ? Math.min(end, 2 ** 32 * disk.sectorSize) : end;
}

function describeNeeds(plan: Plan): string {
  const ext = plan.slots.filter((s) => s.role === 'ext');
  return ext
    .map((s) => `partition ${s.p.number} needs at least ${mib(s.min)} for ${mib(s.data)} of files`)
    .join(', ');
}

function mib(n: number): string {
  return `${(n / MiB).toFixed(1)} MiB`;
}

/** The layout for a target of `targetBytes`, or why it does not fit and how much it would need. */
export function fitLayout(
  disk: DiskLayout,
  volumes: readonly Volume[],
  targetBytes: number,
  opts: FitOptions,
): Fit {
  const ss = disk.sectorSize;
  const size = Math.floor(targetBytes / ss) * ss;
  const plan = opts.keepSizes ? '--keep-sizes keeps the layout' : planOf(disk, volumes, opts.fileset);
  if (typeof plan === 'string') {
    const need = layoutNeeds(disk);
    if (size < need) {
      return {
        fits: false,
        needBytes: need,
        haveBytes: size,
        why: opts.keepSizes
          ? "the image's partitions at their own sizes"
          : `the image's layout, kept because ${plan}`,
      };
    }
    return {
      fits: true,
      layout: { ...disk, sizeBytes: size },
      changed: false,
      resized: [],
      ...(opts.keepSizes ? {} : { kept: plan }),
    };
  }
  const usableEnd = usableEndOf(disk, size);
  let placed = arrange(plan, usableEnd, 1);
  if (!placed) {
    if (!arrange(plan, usableEnd, 0)) {
      return {
        fits: false,
        needBytes: smallestOf(disk, plan),
        haveBytes: size,
        why: describeNeeds(plan),
      };
    }
    // The largest factor that fits: each ext volume shrinks in proportion, none below its minimum.
    let lo = 0;
    let hi = 1;
    for (let i = 0; i < 40; i++) {
      const mid = (lo + hi) / 2;
      if (arrange(plan, usableEnd, mid)) lo = mid;
      else hi = mid;
    }
    placed = arrange(plan, usableEnd, lo)!;
  }
  const partitions = disk.partitions.map((p) => {
    const i = plan.slots.findIndex((s) => s.p === p);
    const at = placed.get(i)!;
    return { ...p, startBytes: at.start, sizeBytes: at.size };
  });
  const changed = partitions.some(
    (p, i) =>
      p.startBytes !== disk.partitions[i]!.startBytes || p.sizeBytes !== disk.partitions[i]!.sizeBytes,
  );
  const resized = partitions
    .map((p, i) => ({ number: p.number, fromBytes: disk.partitions[i]!.sizeBytes, toBytes: p.sizeBytes }))
    .filter((r) => r.fromBytes !== r.toBytes);
  return { fits: true, layout: { ...disk, sizeBytes: size, partitions }, changed, resized };
}

/** The smallest target `plan` fits on: every ext volume at its minimum, the partitions after them right behind. */
function smallestOf(disk: DiskLayout, plan: Plan): number {
  const placed = arrange(plan, Number.MAX_SAFE_INTEGER, 0);
  // With an unbounded end the last ext volume got everything: it gets its minimum instead.
  const { slots, last } = plan;
  const lastAt = placed ? placed.get(last)! : { start: slots[last]!.p.startBytes, size: 0 };
  const lastEnd = lastAt.start + floorOf(slots[last]!);
  let end = lastEnd;
  if (last < slots.length - 1) {
    const tail = slots.slice(last + 1);
    const tailStart = slots[last + 1]!.p.startBytes;
    const tailEnd = Math.max(...tail.map((s) => s.p.startBytes + s.p.sizeBytes));
    // The tail moves by whole alignment units: the first such place at or after lastEnd.
    const delta = Math.ceil((lastEnd - tailStart) / ALIGN) * ALIGN;
    end = tailEnd + delta;
  }
  let need = Math.ceil((end + backupBytes(disk)) / disk.sectorSize) * disk.sectorSize;
  // The arithmetic above mirrors arrange(); asking it settles any rounding it missed.
  for (let i = 0; i < 64 && !arrange(plan, usableEndOf(disk, need), 0); i++) need += ALIGN;
  return need;
}

/**
 * The smallest disk the image fits on (restored as file set `fileset`): what `img info`
 * says, and what a refused restore names.
 */
export function smallestDisk(disk: DiskLayout, volumes: readonly Volume[], opts: FitOptions): number {
  const plan = opts.keepSizes ? undefined : planOf(disk, volumes, opts.fileset);
  if (plan === undefined || typeof plan === 'string') return layoutNeeds(disk);
  return smallestOf(disk, plan);
}
