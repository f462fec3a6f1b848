/**
 * What the layout a disk had before a restore leaves where the new layout writes
 * nothing: its partition tables (an MBR's backup GPT at the end of the disk, GPT
 * headers left beside a new MBR) and the filesystem, swap or RAID signatures at the
 * starts and ends of its partitions. Firmware, the kernel, wipefs, sgdisk -v and fsck
 * find such leftovers and take them for live structures, so a restore zeroes every
 * place they can be, before it writes anything (what it writes later wins).
 *
 * The old layout is read tolerantly: both GPT headers, whatever their CRCs, and the
 * MBR with its extended chain, because a damaged table still marks where data was.
 */
import { open, stat, type FileHandle } from 'node:fs/promises';
import type { DiskLayout, Manifest } from '../image/types.ts';
import { writeFull } from '../file-write.ts';
import { runTool } from './exec.ts';
import { writeFailure } from './write-errors.ts';

export interface Range {
  start: number;
  end: number;
}

const MiB = 1024 * 1024;
/** Signatures live within the first or last MiB of what they describe (md 1.0 and ZFS labels at the end). */
const SIGNATURE_ZONE = MiB;
/** Gaps up to this size are zeroed whole on a device; larger ones at their ends and where old partitions began or ended. */
const WHOLE_GAP_LIMIT = 64 * MiB;

async function readAt(fh: FileHandle, position: number, length: number): Promise<Buffer> {
  const b = Buffer.alloc(length);
  const { bytesRead } = await fh.read(b, 0, length, position).catch(() => ({ bytesRead: 0 }));
  return b.subarray(0, bytesRead);
}

/** One GPT header and its entries, if `lba` holds the "EFI PART" signature; CRCs are not checked. */
async function gptAt(fh: FileHandle, lba: number, ss: number, size: number): Promise<Range[]> {
  const h = await readAt(fh, lba * ss, ss);
  if (h.length < 92 || h.toString('latin1', 0, 8) !== 'EFI PART') return [];
  const out: Range[] = [{ start: lba * ss, end: (lba + 1) * ss }];
  const num = (off: number) => Number(h.readBigUInt64LE(off));
  const alternate = num(32);
  if (alternate > 0 && (alternate + 1) * ss <= size)
    out.push({ start: alternate * ss, end: (alternate + 1) * ss });
  const entriesLba = num(72);
  const count = h.readUInt32LE(80);
  const entrySize = h.readUInt32LE(84);
  if (entrySize < 128 || entrySize > 4096 || count > 4096) return out;
  const bytes = count * entrySize;
  if (entriesLba * ss + bytes > size) return out;
  out.push({ start: entriesLba * ss, end: entriesLba * ss + bytes });
  const entries = await readAt(fh, entriesLba * ss, bytes);
  for (let i = 0; i + entrySize <= entries.length; i += entrySize) {
    if (entries.subarray(i, i + 16).every((b) => b === 0)) continue;
    const first = Number(entries.readBigUInt64LE(i + 32));
    const last = Number(entries.readBigUInt64LE(i + 40));
    if (last >= first && (last + 1) * ss <= size) out.push(...ends(first * ss, (last + 1) * ss));
  }
  return out;
}

/** The signature zones of a partition [start, end): its first and last MiB. */
function ends(start: number, end: number): Range[] {
  return [
    { start, end: Math.min(end, start + SIGNATURE_ZONE) },
    { start: Math.max(start, end - SIGNATURE_ZONE), end },
  ];
}

/** MBR partitions, with the extended chain's records and logical partitions. */
async function mbrAt(fh: FileHandle, ss: number, size: number): Promise<Range[]> {
  const s0 = await readAt(fh, 0, 512);
  if (s0.length < 512 || s0[510] !== 0x55 || s0[511] !== 0xaa) return [];
  const out: Range[] = [];
  const entry = (s: Buffer, i: number) => ({
    type: s[446 + i * 16 + 4]!,
    start: s.readUInt32LE(446 + i * 16 + 8),
    sectors: s.readUInt32LE(446 + i * 16 + 12),
  });
  for (let i = 0; i < 4; i++) {
    const e = entry(s0, i);
    if (e.type === 0 || e.type === 0xee || e.sectors === 0 || (e.start + e.sectors) * ss > size) continue;
    out.push(...ends(e.start * ss, (e.start + e.sectors) * ss));
    if (![0x05, 0x0f, 0x85].includes(e.type)) continue;
    // Each extended boot record: the record, and the logical partition it describes.
    let ebr = e.start;
    for (let n = 0; n < 128 && ebr > 0 && (ebr + 1) * ss <= size; n++) {
      out.push({ start: ebr * ss, end: (ebr + 1) * ss });
      const s = await readAt(fh, ebr * ss, 512);
      if (s.length < 512 || s[510] !== 0x55 || s[511] !== 0xaa) break;
      const logical = entry(s, 0);
      const link = entry(s, 1);
      if (logical.type !== 0 && logical.sectors > 0 && (ebr + logical.start + logical.sectors) * ss <= size) {
        out.push(...ends((ebr + logical.start) * ss, (ebr + logical.start + logical.sectors) * ss));
      }
      if (link.type === 0 || link.sectors === 0) break;
      ebr = e.start + link.start;
    }
  }
  return out;
}

/** Where the target's current (old) layout may have left signatures. */
export async function oldLayoutZones(target: string, size: number, sectorSize: number): Promise<Range[]> {
  const fh = await open(target, 'r');
  try {
    const out: Range[] = [{ start: 0, end: Math.min(size, SIGNATURE_ZONE) }];
    // A disk image file does not say its sector size: its GPT may be at either.
    for (const ss of new Set([sectorSize, 512, 4096])) {
      out.push(...(await gptAt(fh, 1, ss, size)));
      if (size >= 2 * ss) out.push(...(await gptAt(fh, Math.floor(size / ss) - 1, ss, size)));
    }
    out.push(...(await mbrAt(fh, sectorSize, size)));
    return out;
  } finally {
    await fh.close();
  }
}

/** [from, to) less the `written` ranges. */
function complement(from: number, to: number, written: Range[]): Range[] {
  const gaps: Range[] = [];
  let cur = from;
  for (const w of [...written].sort((a, b) => a.start - b.start)) {
    if (w.start > cur) gaps.push({ start: cur, end: Math.min(w.start, to) });
    cur = Math.max(cur, w.end);
    if (cur >= to) break;
  }
  if (cur < to) gaps.push({ start: cur, end: to });
  return gaps.filter((g) => g.end > g.start);
}

/**
 * Where the new layout writes nothing or leaves old bytes: its gaps (the space between
 * and after its partitions, and a boot area that is not written, such as the image's
 * backup GPT when the backup goes to a different place), and the ends of its file-volume
 * partitions, whose new filesystem does not overwrite all of them. `writtenAreas` are
 * the boot areas this restore writes.
 */
export function newLayoutZones(
  disk: DiskLayout,
  manifest: Manifest,
  size: number,
  writtenAreas: Range[],
): Range[] {
  const partitions = disk.partitions.map((p) => ({ start: p.startBytes, end: p.startBytes + p.sizeBytes }));
  const out = complement(0, size, [...writtenAreas, ...partitions]);
  for (const p of disk.partitions) {
    if (manifest.volumes[p.volume]?.kind === 'files')
      out.push(...ends(p.startBytes, p.startBytes + p.sizeBytes));
  }
  return out;
}

/** Sorted, merged, clipped to [0, size). */
export function mergeRanges(ranges: Range[], size: number): Range[] {
  const sorted = ranges
    .map((r) => ({ start: Math.max(0, r.start), end: Math.min(size, r.end) }))
    .filter((r) => r.end > r.start)
    .sort((a, b) => a.start - b.start);
  const out: Range[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r.start <= last.end) last.end = Math.max(last.end, r.end);
    else out.push({ ...r });
  }
  return out;
}

/**
 * Zeroes `ranges` of `target` and syncs. Ranges of a MiB or more are zeroed without
 * writing them where that is cheap (a punched hole in a file, blkdiscard --zeroout on a
 * device); the rest, and targets that support neither, get written zeros. A range over
 * 64 MiB that cannot be punched out (on a device there is no telling how long zeroing
 * would take: a disk without write-zeroes offload writes every byte) is zeroed at its
 * first and last MiB, where signatures are.
 */
export async function zeroRanges(target: string, ranges: Range[]): Promise<void> {
  const isBlock = (await stat(target)).isBlockDevice();
  const fh = await open(target, 'r+');
  try {
    const zeros = Buffer.alloc(4 * MiB);
    let cheap = true;
    const tryCheap = async ({ start, end }: Range, tool: 'fallocate' | 'blkdiscard'): Promise<boolean> => {
      if (!cheap || end - start < MiB || start % 512 !== 0 || (end - start) % 512 !== 0) return false;
      const mode = tool === 'fallocate' ? '--punch-hole' : '--zeroout';
      const r = await runTool(tool, [
        mode,
        '--offset',
        String(start),
        '--length',
        String(end - start),
        target,
      ]).catch(() => ({ status: -1 }));
      if (r.status !== 0) cheap = false;
      return r.status === 0;
    };
    for (const range of ranges) {
      const large = range.end - range.start > WHOLE_GAP_LIMIT;
      if (!isBlock && (await tryCheap(range, 'fallocate'))) continue;
      for (const part of large ? ends(range.start, range.end) : [range]) {
        if (isBlock && (await tryCheap(part, 'blkdiscard'))) continue;
        for (let p = part.start; p < part.end; p += zeros.length) {
          try {
            await writeFull(fh, zeros, 0, Math.min(zeros.length, part.end - p), p);
          } catch (err) {
            throw await writeFailure(target, `clearing what the old layout left at byte ${p}`, err);
          }
        }
      }
    }
    await fh.sync().catch(async (err: unknown) => {
      throw await writeFailure(target, 'clearing what the old layout left', err);
    });
  } finally {
    await fh.close();
  }
}
