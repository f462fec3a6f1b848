/**
 * The partition table of a restored disk, rewritten for its own size and fitted layout
 * (fit-layout.ts). The restore first writes the image's boot areas byte for byte (boot
 * code, disk signature, GPT headers and entries, the boot-loader gap); this then changes
 * only what the new layout changes: the start and end of each moved or resized partition,
 * the GPT's usable area and backup location with both CRCs, and the protective MBR's
 * size. Partition types, GUIDs, names, attribute bits and all boot code stay as captured,
 * and the backup GPT is written at the target's end.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { crc32 } from 'node:zlib';
import type { DiskLayout } from '../image/types.ts';
import { DiskError } from './errors.ts';
import { readPartitionTable } from './partition-table.ts';
import { writeFailure } from './write-errors.ts';
import { writeFull } from '../file-write.ts';

/** Cylinder-head-sector of an LBA as fdisk and sgdisk write it (255 heads, 63 sectors), or `overflow` past cylinder 1023. */
function chs(lba: number, overflow: number[]): number[] {
  const cyl = Math.floor(lba / (255 * 63));
  if (cyl > 1023) return overflow;
  const head = Math.floor(lba / 63) % 255;
  const sector = (lba % 63) + 1;
  return [head, sector | ((cyl >> 2) & 0xc0), cyl & 0xff];
}

/** Sets an MBR entry (at `o` in sector 0) to start at `start` for `sectors`, with its CHS fields. */
function setMbrEntry(s0: Buffer, o: number, start: number, sectors: number, protective = false): void {
  const overflow = protective ? [0xff, 0xff, 0xff] : [0xfe, 0xff, 0xff];
  Buffer.from(chs(start, overflow)).copy(s0, o + 1);
  Buffer.from(chs(start + sectors - 1, overflow)).copy(s0, o + 5);
  s0.writeUInt32LE(start, o + 8);
  s0.writeUInt32LE(sectors, o + 12);
}

async function readAt(fh: FileHandle, position: number, length: number): Promise<Buffer> {
  const b = Buffer.alloc(length);
  const { bytesRead } = await fh.read(b, 0, length, position);
  return b.subarray(0, bytesRead);
}

function corrupt(target: string, message: string): DiskError {
  return new DiskError('E_DISK_TABLE_CORRUPT', `${target}: ${message}`, { target });
}

/**
 * Rewrites the table on `target` (which holds the image's boot areas) from `image`'s
 * layout to `fitted`, for a target of `fitted.sizeBytes`. Partitions are matched by
 * number; a hybrid MBR's entries that mirrored a GPT partition follow it. Read back
 * afterwards: a table that does not parse as `fitted` is an error.
 */
export async function writeFittedTable(target: string, image: DiskLayout, fitted: DiskLayout): Promise<void> {
  const ss = image.sectorSize;
  const sectors = Math.floor(fitted.sizeBytes / ss);
  const moves = new Map<number, { from: [number, number]; to: [number, number] }>();
  for (const p of image.partitions) {
    const q = fitted.partitions.find((x) => x.number === p.number)!;
    moves.set(p.number, {
      from: [p.startBytes / ss, p.sizeBytes / ss],
      to: [q.startBytes / ss, q.sizeBytes / ss],
    });
  }
  const fh = await open(target, 'r+');
  try {
    const s0 = await readAt(fh, 0, 512);
    if (s0.length < 512 || s0[510] !== 0x55 || s0[511] !== 0xaa)
      throw corrupt(target, 'the restored boot area holds no MBR signature');
    const writes: Array<[number, Buffer]> = [];
    if (image.table === 'gpt') writes.push(...(await gptWrites(fh, target, ss, sectors, moves)));
    for (let i = 0; i < 4; i++) {
      const o = 446 + i * 16;
      const type = s0[o + 4]!;
      const start = s0.readUInt32LE(o + 8);
      const count = s0.readUInt32LE(o + 12);
      if (type === 0 || count === 0) continue;
      if (type === 0xee && image.table === 'gpt') {
        // The protective entry covers the whole disk after sector 0, as far as 32 bits reach;
        // a hybrid MBR's covers only the GPT itself, and stays.
        const whole = (n: number) => Math.min(n - 1, 0xffffffff);
        if (start === 1 && count === whole(image.sizeBytes / ss) && count !== whole(sectors))
          setMbrEntry(s0, o, 1, whole(sectors), true);
        continue;
      }
      // MBR: entry i is partition i + 1; a hybrid MBR's entry follows the GPT partition it mirrors.
      const move =
        image.table === 'mbr'
          ? moves.get(i + 1)
          : [...moves.values()].find((m) => m.from[0] === start && m.from[1] === count);
      if (move && (move.to[0] !== start || move.to[1] !== count)) setMbrEntry(s0, o, move.to[0], move.to[1]);
    }
    writes.push([0, s0]);
    for (const [position, data] of writes) {
      await writeFull(fh, data, 0, data.length, position).catch(async (err: unknown) => {
        throw await writeFailure(target, 'writing the partition table', err);
      });
    }
    await fh.sync().catch(async (err: unknown) => {
      throw await writeFailure(target, 'writing the partition table', err);
    });
  } finally {
    await fh.close();
  }
  const back = await readPartitionTable(target);
  const key = (p: { number: number; startBytes: number; sizeBytes: number }) =>
    `${p.number}:${p.startBytes}+${p.sizeBytes}`;
  const got = back.partitions
    .filter((p) => !p.extended)
    .map(key)
    .sort()
    .join(' ');
  const want = fitted.partitions.map(key).sort().join(' ');
  if (got !== want) throw corrupt(target, `the rewritten partition table reads back as ${got}, not ${want}`);
}

/** The primary and backup GPT (headers and entries) for the new layout and disk size. */
async function gptWrites(
  fh: FileHandle,
  target: string,
  ss: number,
  sectors: number,
  moves: Map<number, { from: [number, number]; to: [number, number] }>,
): Promise<Array<[number, Buffer]>> {
  const header = await readAt(fh, ss, ss);
  if (header.length < 92 || header.toString('latin1', 0, 8) !== 'EFI PART')
    throw corrupt(target, 'the restored boot area holds no GPT header');
  const headerSize = header.readUInt32LE(12);
  const entriesLba = Number(header.readBigUInt64LE(72));
  const count = header.readUInt32LE(80);
  const entrySize = header.readUInt32LE(84);
  if (headerSize < 92 || headerSize > ss || entrySize < 128 || count * entrySize > 1024 * 1024)
    throw corrupt(target, 'the restored GPT header is not one imgcast captured');
  const entries = await readAt(fh, entriesLba * ss, count * entrySize);
  if (entries.length < count * entrySize || crc32(entries) !== header.readUInt32LE(88))
    throw corrupt(target, 'the restored GPT entries fail their CRC32 check');
  for (const [number, m] of moves) {
    const o = (number - 1) * entrySize;
    if (o + entrySize > entries.length || Number(entries.readBigUInt64LE(o + 32)) !== m.from[0])
      throw corrupt(target, `GPT entry ${number} is not where the image's layout has partition ${number}`);
    entries.writeBigUInt64LE(BigInt(m.to[0]), o + 32);
    entries.writeBigUInt64LE(BigInt(m.to[0] + m.to[1] - 1), o + 40);
  }
  const entrySectors = Math.ceil((count * entrySize) / ss);
  const lastLba = sectors - 1;
  const backupEntriesLba = lastLba - entrySectors;
  const primary = Buffer.from(header);
  primary.writeBigUInt64LE(BigInt(lastLba), 32);
  primary.writeBigUInt64LE(BigInt(backupEntriesLba - 1), 48);
  primary.writeUInt32LE(crc32(entries), 88);
  const backup = Buffer.from(primary);
  backup.writeBigUInt64LE(BigInt(lastLba), 24);
  backup.writeBigUInt64LE(1n, 32);
  backup.writeBigUInt64LE(BigInt(backupEntriesLba), 72);
  for (const h of [primary, backup]) {
    h.writeUInt32LE(0, 16);
    h.writeUInt32LE(crc32(h.subarray(0, headerSize)), 16);
  }
  // Backup first: until the primary is written, the disk's table is the image's.
  return [
    [backupEntriesLba * ss, entries],
    [lastLba * ss, backup],
    [entriesLba * ss, entries],
    [ss, primary],
  ];
}
