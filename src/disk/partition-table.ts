/**
 * MBR and GPT parsing straight from the bytes of a disk device or disk-image file.
 * The parser is strict: capture copies the table areas byte for byte, so a table the
 * parser doubts would be copied onto every workstation of a lab. Damaged tables are
 * reported with what is wrong and how to repair it instead of being guessed at.
 */
import { open, stat } from 'node:fs/promises';
import { crc32 } from 'node:zlib';
import type { PartitionTableType } from '../image/types.ts';
import { DiskError } from './errors.ts';
import { deviceSize, sectorSizeOf } from './device.ts';
import { systemReason } from '../wording.ts';

export interface TablePartition {
  /** 1-based number as the kernel names it; logical MBR partitions start at 5. */
  number: number;
  startBytes: number;
  sizeBytes: number;
  /** MBR: type byte as two hex digits; GPT: type GUID (lowercase). */
  type: string;
  uuid?: string;
  name?: string;
  bootable?: boolean;
  /** MBR: the extended container holding the logical partitions. */
  extended?: boolean;
  /** MBR: a logical partition inside the extended container. */
  logical?: boolean;
  /**
   * MBR, on the extended container: every extended boot record of its chain (byte
   * offset), with the start of the logical partition it describes (absent for an EBR
   * that only links on).
   */
  ebrs?: Array<{ offset: number; logicalStart?: number }>;
}

export interface GptGeometry {
  diskGuid: string;
  /** LBA of the backup header, as the primary header records it. */
  backupHeaderLba: number;
  backupEntriesLba: number;
  firstUsableLba: number;
  lastUsableLba: number;
  entryCount: number;
  entrySize: number;
}

export interface PartitionTable {
  table: PartitionTableType;
  sectorSize: number;
  diskSizeBytes: number;
  /** Ordered by number. */
  partitions: TablePartition[];
  gpt?: GptGeometry;
}

const EXTENDED_TYPES = new Set([0x05, 0x0f, 0x85]);
const GPT_SIGNATURE = 'EFI PART';

/** Reads exactly `length` bytes at `position`; shorter means the disk ended. */
async function readAt(path: string, position: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r').catch((err: unknown) => {
    throw new DiskError('E_DISK_IO', `cannot open ${path}: ${systemReason(err)}`, { path }, { cause: err });
  });
  try {
    const buf = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await fh.read(buf, done, length - done, position + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return buf.subarray(0, done);
  } catch (err) {
    throw new DiskError('E_DISK_IO', `cannot read ${path} at byte ${position}: ${systemReason(err)}`, {
      path,
      position,
    });
  } finally {
    await fh.close();
  }
}

/** GUIDs are stored mixed-endian: the first three fields little-endian, the rest as bytes. */
export function formatGuid(b: Buffer): string {
  const h = (x: Buffer) => x.toString('hex');
  const le = (x: Buffer) => h(Buffer.from(x).reverse());
  return `${le(b.subarray(0, 4))}-${le(b.subarray(4, 6))}-${le(b.subarray(6, 8))}-${h(b.subarray(8, 10))}-${h(b.subarray(10, 16))}`;
}

function u64(buf: Buffer, off: number): number {
  const v = buf.readBigUInt64LE(off);
  // Beyond 2^53 no real disk exists; such a value can only come from garbage.
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
}

function corrupt(path: string, message: string, details: Record<string, unknown> = {}): DiskError {
  return new DiskError('E_DISK_TABLE_CORRUPT', `${path}: ${message}`, { path, ...details });
}

/** A FAT/NTFS/exFAT boot sector also ends in 55 AA; it is a filesystem, not a partition table. */
function looksLikeFilesystemBootSector(s0: Buffer): boolean {
  const jump = s0[0] === 0xeb || s0[0] === 0xe9;
  if (!jump) return false;
  const at = (o: number, n: number) => s0.toString('latin1', o, o + n);
  return (
    at(3, 8) === 'NTFS    ' ||
    at(3, 8) === 'EXFAT   ' ||
    at(0x36, 3) === 'FAT' ||
    at(0x52, 5) === 'FAT32' ||
    // FAT without the informational type string: sane BPB (bytes per sector power of two, ≥ 512).
    ([512, 1024, 2048, 4096].includes(s0.readUInt16LE(11)) && s0[13] !== 0 && s0[16] !== 0 && s0[16]! <= 4)
  );
}

function plausibleEntries(entries: MbrEntry[], diskSectors: number): boolean {
  const used = entries.filter((e) => e.type !== 0 && e.sectors !== 0);
  return (
    used.length > 0 &&
    entries.every((e) => e.type >= 0) &&
    used.every((e) => e.startLba >= 1 && e.startLba + e.sectors <= diskSectors)
  );
}

interface MbrEntry {
  slot: number;
  bootable: boolean;
  type: number;
  startLba: number;
  sectors: number;
}

function mbrEntries(s0: Buffer): MbrEntry[] {
  const out: MbrEntry[] = [];
  for (let i = 0; i < 4; i++) {
    const o = 446 + i * 16;
    out.push({
      slot: i + 1,
      bootable: s0[o] === 0x80,
      type: s0[o + 4]!,
      startLba: s0.readUInt32LE(o + 8),
      sectors: s0.readUInt32LE(o + 12),
    });
    if (s0[o] !== 0 && s0[o] !== 0x80) {
      out[i]!.type = -s0[o]! - 1; // marks an invalid status byte for the caller
    }
  }
  return out;
}

/**
 * Reads the partition table of a disk device or disk-image file.
 * Throws E_DISK_NO_TABLE when there is none and E_DISK_TABLE_CORRUPT when it is damaged.
 */
export async function readPartitionTable(path: string): Promise<PartitionTable> {
  const st = await stat(path).catch((err: unknown) => {
    throw new DiskError('E_DISK_IO', `cannot access ${path}: ${systemReason(err)}`, { path }, { cause: err });
  });
  const sectorSize = await sectorSizeOf(path);
  const diskSizeBytes = st.isBlockDevice() ? await deviceSize(path) : st.size;
  return parsePartitionTable(
    path,
    sectorSize,
    diskSizeBytes,
    (pos, len) => readAt(path, pos, len),
    st.isBlockDevice(),
  );
}

/** Like readPartitionTable, but null instead of E_DISK_NO_TABLE. */
export async function probePartitionTable(path: string): Promise<PartitionTable | null> {
  try {
    return await readPartitionTable(path);
  } catch (err) {
    if (err instanceof DiskError && err.code === 'E_DISK_NO_TABLE') return null;
    throw err;
  }
}

export type ReadFn = (position: number, length: number) => Promise<Buffer>;

/** The parser proper, over any positional reader (tests feed it arbitrary bytes). */
export async function parsePartitionTable(
  path: string,
  sectorSize: number,
  diskSizeBytes: number,
  read: ReadFn,
  /** True for block devices, whose logical sector size the kernel reported. */
  sectorSizeKnown = false,
): Promise<PartitionTable> {
  const diskSectors = Math.floor(diskSizeBytes / sectorSize);
  const s0 = await read(0, sectorSize);
  if (s0.length < 512 || s0[510] !== 0x55 || s0[511] !== 0xaa) {
    throw new DiskError('E_DISK_NO_TABLE', `${path}: no partition table (no 55 AA signature in sector 0)`, {
      path,
    });
  }
  const entries = mbrEntries(s0);
  const protective = entries.some((e) => e.type === 0xee);
  if (protective) {
    if (!sectorSizeKnown && (await read(512, 8)).toString('latin1') !== GPT_SIGNATURE) {
      // An image file of a 4Kn disk: LBA 1 is at byte 4096.
      if ((await read(4096, 8)).toString('latin1') === GPT_SIGNATURE) {
        return parsePartitionTable(path, 4096, diskSizeBytes, read, true);
      }
    }
    const gpt = await parseGpt(path, sectorSize, diskSectors, read);
    return { table: 'gpt', sectorSize, diskSizeBytes, partitions: gpt.partitions, gpt: gpt.geometry };
  }
  // GRUB copies an old BPB into the MBR it installs, so a FAT-looking sector with sane
  // partition entries is still a partition table.
  if (looksLikeFilesystemBootSector(s0) && !plausibleEntries(entries, diskSectors)) {
    throw new DiskError(
      'E_DISK_NO_TABLE',
      `${path}: sector 0 is a filesystem boot sector, not a partition table`,
      {
        path,
      },
    );
  }
  const partitions = await parseMbr(path, sectorSize, diskSectors, entries, read);
  return { table: 'mbr', sectorSize, diskSizeBytes, partitions };
}

async function parseMbr(
  path: string,
  sectorSize: number,
  diskSectors: number,
  entries: MbrEntry[],
  read: ReadFn,
): Promise<TablePartition[]> {
  const parts: TablePartition[] = [];
  for (const e of entries) {
    if (e.type < 0) throw corrupt(path, `MBR entry ${e.slot} has an invalid status byte`, { slot: e.slot });
    if (e.type === 0 || e.sectors === 0) continue;
    if (e.startLba === 0 || e.startLba + e.sectors > diskSectors) {
      throw corrupt(
        path,
        `MBR partition ${e.slot} (sectors ${e.startLba}..${e.startLba + e.sectors - 1}) lies outside the disk of ${diskSectors} sectors`,
        { partition: e.slot },
      );
    }
    parts.push({
      number: e.slot,
      startBytes: e.startLba * sectorSize,
      sizeBytes: e.sectors * sectorSize,
      type: e.type.toString(16).padStart(2, '0'),
      bootable: e.bootable,
      ...(EXTENDED_TYPES.has(e.type) ? { extended: true } : {}),
    });
  }
  const containers = parts.filter((p) => p.extended);
  if (containers.length > 1) throw corrupt(path, 'MBR has more than one extended partition');
  checkOverlaps(path, parts);
  if (containers[0]) parts.push(...(await parseEbrChain(path, sectorSize, containers[0], read)));
  return parts;
}

/** Logical partitions: each EBR holds one logical entry (relative to the EBR) and a link (relative to the container). */
async function parseEbrChain(
  path: string,
  sectorSize: number,
  container: TablePartition,
  read: ReadFn,
): Promise<TablePartition[]> {
  const base = container.startBytes / sectorSize;
  const end = base + container.sizeBytes / sectorSize;
  const out: TablePartition[] = [];
  const ebrs: NonNullable<TablePartition['ebrs']> = [];
  container.ebrs = ebrs;
  const seen = new Set<number>();
  let ebr = base;
  let number = 5;
  while (true) {
    if (seen.has(ebr) || out.length >= 128)
      throw corrupt(path, `extended partition chain loops at sector ${ebr}`);
    seen.add(ebr);
    const s = await read(ebr * sectorSize, sectorSize);
    if (s.length < 512 || s[510] !== 0x55 || s[511] !== 0xaa) {
      throw corrupt(path, `extended boot record at sector ${ebr} has no 55 AA signature`, { sector: ebr });
    }
    const [logical, link] = mbrEntries(s);
    const record: { offset: number; logicalStart?: number } = { offset: ebr * sectorSize };
    ebrs.push(record);
    if (logical && logical.type > 0 && logical.sectors > 0) {
      const start = ebr + logical.startLba;
      if (logical.startLba === 0 || start + logical.sectors > end) {
        throw corrupt(path, `logical partition ${number} lies outside its extended partition`, {
          partition: number,
        });
      }
      record.logicalStart = start * sectorSize;
      out.push({
        number: number++,
        startBytes: start * sectorSize,
        sizeBytes: logical.sectors * sectorSize,
        type: logical.type.toString(16).padStart(2, '0'),
        bootable: logical.bootable,
        logical: true,
      });
    }
    if (!link || link.type <= 0 || link.sectors === 0) break;
    ebr = base + link.startLba;
    if (ebr <= base || ebr >= end)
      throw corrupt(path, `extended partition chain points outside its container`);
  }
  return out;
}

function checkOverlaps(path: string, parts: TablePartition[]): void {
  const sorted = [...parts].sort((a, b) => a.startBytes - b.startBytes);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const cur = sorted[i]!;
    if (cur.startBytes < prev.startBytes + prev.sizeBytes) {
      throw corrupt(path, `partitions ${prev.number} and ${cur.number} overlap`, {
        partitions: [prev.number, cur.number],
      });
    }
  }
}

interface GptHeader {
  myLba: number;
  alternateLba: number;
  firstUsable: number;
  lastUsable: number;
  diskGuid: string;
  entriesLba: number;
  entryCount: number;
  entrySize: number;
  entriesCrc: number;
}

function parseGptHeader(
  path: string,
  which: string,
  lba: number,
  buf: Buffer,
  sectorSize: number,
): GptHeader {
  if (buf.length < 92 || buf.toString('latin1', 0, 8) !== GPT_SIGNATURE) {
    throw corrupt(path, `${which} GPT header at sector ${lba} is missing (no "EFI PART" signature)`, { lba });
  }
  const headerSize = buf.readUInt32LE(12);
  if (headerSize < 92 || headerSize > sectorSize) {
    throw corrupt(path, `${which} GPT header at sector ${lba} has an impossible size ${headerSize}`, { lba });
  }
  const copy = Buffer.from(buf.subarray(0, headerSize));
  const stored = copy.readUInt32LE(16);
  copy.writeUInt32LE(0, 16);
  if (crc32(copy) !== stored) {
    throw corrupt(path, `${which} GPT header at sector ${lba} fails its CRC32 check`, { lba });
  }
  const h: GptHeader = {
    myLba: u64(buf, 24),
    alternateLba: u64(buf, 32),
    firstUsable: u64(buf, 40),
    lastUsable: u64(buf, 48),
    diskGuid: formatGuid(buf.subarray(56, 72)),
    entriesLba: u64(buf, 72),
    entryCount: buf.readUInt32LE(80),
    entrySize: buf.readUInt32LE(84),
    entriesCrc: buf.readUInt32LE(88),
  };
  if (h.myLba !== lba) {
    throw corrupt(path, `${which} GPT header at sector ${lba} says it lives at sector ${h.myLba}`, { lba });
  }
  if (h.entrySize < 128 || h.entrySize % 8 !== 0 || h.entrySize > 4096 || h.entryCount > 65536) {
    throw corrupt(path, `${which} GPT header declares ${h.entryCount} entries of ${h.entrySize} bytes`, {
      lba,
    });
  }
  return h;
}

async function readGptEntries(path: string, which: string, h: GptHeader, sectorSize: number, read: ReadFn) {
  const bytes = h.entryCount * h.entrySize;
  const buf = await read(h.entriesLba * sectorSize, bytes);
  if (buf.length < bytes) throw corrupt(path, `${which} GPT entry array runs past the end of the disk`);
  if (crc32(buf) !== h.entriesCrc) {
    throw corrupt(path, `${which} GPT partition entry array (sector ${h.entriesLba}) fails its CRC32 check`, {
      lba: h.entriesLba,
    });
  }
  return buf;
}

async function parseGpt(
  path: string,
  sectorSize: number,
  diskSectors: number,
  read: ReadFn,
): Promise<{ partitions: TablePartition[]; geometry: GptGeometry }> {
  const repair =
    'check it with "sgdisk -v" and repair it (e.g. "sgdisk -e" or gdisk\'s recovery menu) before imaging';
  const primary = parseGptHeader(path, 'primary', 1, await read(sectorSize, sectorSize), sectorSize);
  const entries = await readGptEntries(path, 'primary', primary, sectorSize, read);
  if (primary.alternateLba <= primary.lastUsable || primary.alternateLba >= diskSectors) {
    throw corrupt(
      path,
      `primary GPT header puts the backup header at sector ${primary.alternateLba}, outside this disk of ${diskSectors} sectors; ${repair}`,
    );
  }
  let backup: GptHeader;
  try {
    backup = parseGptHeader(
      path,
      'backup',
      primary.alternateLba,
      await read(primary.alternateLba * sectorSize, sectorSize),
      sectorSize,
    );
    const backupEntries = await readGptEntries(path, 'backup', backup, sectorSize, read);
    if (!backupEntries.equals(entries) || backup.diskGuid !== primary.diskGuid) {
      throw corrupt(path, 'backup GPT differs from the primary GPT');
    }
  } catch (err) {
    if (err instanceof DiskError) {
      throw new DiskError('E_DISK_TABLE_CORRUPT', `${err.message}; ${repair}`, err.details, { cause: err });
    }
    throw err;
  }
  if (primary.firstUsable > primary.lastUsable || primary.lastUsable >= diskSectors) {
    throw corrupt(
      path,
      `GPT usable range ${primary.firstUsable}..${primary.lastUsable} does not fit the disk`,
    );
  }
  const partitions: TablePartition[] = [];
  const zeroGuid = Buffer.alloc(16);
  for (let i = 0; i < primary.entryCount; i++) {
    const e = entries.subarray(i * primary.entrySize, (i + 1) * primary.entrySize);
    if (e.subarray(0, 16).equals(zeroGuid)) continue;
    const first = u64(e, 32);
    const last = u64(e, 40);
    if (first < primary.firstUsable || last > primary.lastUsable || last < first) {
      throw corrupt(path, `GPT partition ${i + 1} (sectors ${first}..${last}) lies outside the usable area`, {
        partition: i + 1,
      });
    }
    const name = e.toString('utf16le', 56, 128).replace(/\0.*$/s, '');
    partitions.push({
      number: i + 1,
      startBytes: first * sectorSize,
      sizeBytes: (last - first + 1) * sectorSize,
      type: formatGuid(e.subarray(0, 16)),
      uuid: formatGuid(e.subarray(16, 32)),
      ...(name ? { name } : {}),
    });
  }
  checkOverlaps(path, partitions);
  return {
    partitions,
    geometry: {
      diskGuid: primary.diskGuid,
      backupHeaderLba: primary.alternateLba,
      backupEntriesLba: backup.entriesLba,
      firstUsableLba: primary.firstUsable,
      lastUsableLba: primary.lastUsable,
      entryCount: primary.entryCount,
      entrySize: primary.entrySize,
    },
  };
}

export { partitionTypeName } from './partition-types.ts';
