/**
 * How much room an ext2/3/4 filesystem of a given size leaves for files, and how much
 * room a file volume's files take: what "the data fits" means when a restore makes a
 * filesystem at another size than the source's (fit-layout.ts). Pure arithmetic over
 * what mke2fs does (e2fsprogs 1.47, the stock mke2fs.conf), kept on the safe side:
 * it may count a few blocks too many, never too few (test/disk/fs-space.test.ts checks
 * it against real mkfs.ext4 runs).
 */
import { includedEntries } from '../image/fileset.ts';
import type { FileEntry, FilesystemInfo, FileVolume } from '../image/types.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;

/**
 * Room kept free on a file volume beyond its files: 10 % of them, at least 64 MiB. A
 * restored system must still boot, log and update; a volume fitted to its bare data
 * would fill up at the first package update.
 */
export function spareBytes(dataBytes: number): number {
  return Math.max(Math.ceil(dataBytes * 0.1), 64 * MiB);
}

/** Inodes kept free beyond the volume's entries, for the same reason: 10 %, at least 4096. */
export function spareInodes(inodes: number): number {
  return Math.max(Math.ceil(inodes * 0.1), 4096);
}

const EXT_TYPES = new Set(['ext2', 'ext3', 'ext4']);

export function isExt(fs: FilesystemInfo): boolean {
  return EXT_TYPES.has(fs.type);
}

/** mke2fs's block size when none is given: 1 KiB below 512 MiB ("small"), else 4 KiB. */
function blockSizeOf(sizeBytes: number, fs: FilesystemInfo): number {
  return fs.blockSize ?? (sizeBytes < 512 * MiB ? KiB : 4 * KiB);
}

/** Bytes per inode mke2fs picks by the filesystem's size class (mke2fs.conf: floppy, small, default, big, huge). */
function inodeRatio(sizeBytes: number): number {
  if (sizeBytes < 3 * MiB) return 8192;
  if (sizeBytes < 512 * MiB) return 4096;
  if (sizeBytes < 4 * TiB) return 16384;
  if (sizeBytes < 16 * TiB) return 32768;
  return 65536;
}

/** ext2fs_default_journal_size, in blocks. */
function journalBlocks(blocks: number): number {
  if (blocks < 2048) return 0;
  if (blocks < 32768) return 1024;
  if (blocks < 256 * 1024) return 4096;
  if (blocks < 512 * 1024) return 8192;
  if (blocks < 4096 * 1024) return 16384;
  if (blocks < 8192 * 1024) return 32768;
  if (blocks < 16384 * 1024) return 65536;
  if (blocks < 32768 * 1024) return 131072;
  return 262144;
}

/** Groups holding a superblock and group descriptor backup: 0, 1 and the powers of 3, 5 and 7 (sparse_super). */
function backupGroups(groups: number, fs: FilesystemInfo): number {
  const features = fs.features ?? [];
  if (features.includes('sparse_super2')) return Math.min(groups, 3);
  if (!features.includes('sparse_super')) return groups;
  let n = Math.min(groups, 2);
  for (const base of [3, 5, 7]) for (let g = base; g < groups; g *= base) n++;
  return n;
}

interface ExtGeometry {
  blockSize: number;
  blocks: number;
  groups: number;
  /** Inodes mke2fs makes by default at this size. */
  defaultInodes: number;
}

function geometry(sizeBytes: number, fs: FilesystemInfo): ExtGeometry {
  const blockSize = blockSizeOf(sizeBytes, fs);
  const blocks = Math.floor(sizeBytes / blockSize);
  const firstData = blockSize === KiB ? 1 : 0;
  const groups = Math.max(1, Math.ceil((blocks - firstData) / (8 * blockSize)));
  const inodeSize = fs.inodeSize ?? 256;
  // Inodes per group fill whole inode-table blocks, in multiples of 8.
  const perGroup = Math.ceil((blocks * blockSize) / inodeRatio(sizeBytes) / groups);
  const tableBlocks = Math.ceil((perGroup * inodeSize) / blockSize);
  const inodesPerGroup = Math.min(8 * blockSize, Math.floor((tableBlocks * blockSize) / inodeSize) & ~7);
  return { blockSize, blocks, groups, defaultInodes: inodesPerGroup * groups };
}

/** The inodes mke2fs gives a filesystem of `sizeBytes` unless told (-N). */
export function extDefaultInodes(sizeBytes: number, fs: FilesystemInfo): number {
  return geometry(sizeBytes, fs).defaultInodes;
}

/**
 * The inode count to ask mke2fs for (-N) so that a filesystem of `sizeBytes` holds
 * `neededInodes` entries with room to spare, or undefined when its default is enough.
 * A filesystem made bigger than its source can get fewer inodes than the source had:
 * mke2fs gives one per 4 KiB below 512 MiB but one per 16 KiB above.
 */
export function extInodesFor(
  sizeBytes: number,
  fs: FilesystemInfo,
  neededInodes: number,
): number | undefined {
  const want = neededInodes + spareInodes(neededInodes);
  return extDefaultInodes(sizeBytes, fs) >= want ? undefined : want;
}

/**
 * Bytes a fresh ext2/3/4 filesystem of `sizeBytes` takes for itself: inode tables,
 * journal, bitmaps, superblock and group descriptor copies with the blocks reserved for
 * growing them, and the few blocks of the root folder, lost+found and the resize inode.
 * `inodes` is the count it is made with (default: mke2fs's).
 */
export function extOverheadBytes(sizeBytes: number, fs: FilesystemInfo, inodes?: number): number {
  const g = geometry(sizeBytes, fs);
  const B = g.blockSize;
  const features = fs.features ?? [];
  const inodeSize = fs.inodeSize ?? 256;
  const inodeCount = Math.max(inodes ?? 0, g.defaultInodes);
  const inodeTables = Math.ceil(inodeCount / g.groups) * inodeSize * g.groups + g.groups * B;
  const journal = features.includes('has_journal') ? journalBlocks(g.blocks) * B : 0;
  const descPerBlock = B / (features.includes('64bit') ? 64 : 32);
  const descBlocks = Math.ceil(g.groups / descPerBlock);
  let reservedGdt = 0;
  if (features.includes('resize_inode')) {
    // Room for the descriptors of a filesystem grown 1024 times (calc_reserved_gdt_blocks).
    const maxBlocks = g.blocks < 0xffffffff / 1024 ? g.blocks * 1024 : 0xffffffff;
    const rsvGroups = Math.ceil(maxBlocks / (8 * B));
    reservedGdt = Math.max(0, Math.min(Math.ceil(rsvGroups / descPerBlock) - descBlocks, B / 4));
  }
  const backups = backupGroups(g.groups, fs) * (1 + descBlocks + reservedGdt) * B;
  const bitmaps = 2 * g.groups * B;
  const orphanFile = features.includes('orphan_file') ? MiB : 0;
  // Root folder, lost+found (16 KiB), the resize inode's indirect blocks, the boot block;
  // and 0.05 % for what this count leaves out (measured: within 0.01 % at 20 GB).
  const small = 64 * KiB + 8 * B + Math.ceil(sizeBytes / 2048);
  return inodeTables + journal + backups + bitmaps + orphanFile + small;
}

/** What a file volume's files need on a fresh filesystem: bytes of blocks and inodes. */
export interface FilesNeed {
  bytes: number;
  inodes: number;
}

/** Bytes of a directory's entries (ext4 dirents: 8 bytes and the name rounded up to 4). */
function direntBytes(name: string): number {
  return 8 + Math.ceil(Buffer.byteLength(name) / 4) * 4;
}

/**
 * Blocks and inodes the entries of `volume` that file set `fileset` restores take on an
 * ext filesystem with `blockSize` blocks: each file's data blocks (only its stored runs
 * when sparse; hard links once) with extent tree blocks, each folder's entry blocks
 * (half-full, as split htree leaves are, past one block), long symlink targets and
 * extended attributes beyond what fits in the inode.
 */
export function extFilesNeed(volume: FileVolume, fileset: number, blockSize: number): FilesNeed {
  const B = blockSize;
  const inodeSize = volume.fs.inodeSize ?? 256;
  // Inline xattr room: the inode less its 128-byte core, extra fields and the 4-byte header.
  const inlineXattr = Math.max(0, inodeSize - 128 - 32 - 4);
  const dirBytes = new Map<string, number>();
  const seenLinks = new Set<number>();
  let blocks = 0;
  let inodes = 0;
  const entries = includedEntries(volume.entries, fileset);
  for (const e of entries) {
    if (e.path !== '.') {
      const slash = e.path.lastIndexOf('/');
      const parent = slash < 0 ? '.' : e.path.slice(0, slash);
      dirBytes.set(parent, (dirBytes.get(parent) ?? 24) + direntBytes(e.path.slice(slash + 1)));
    }
    if (e.hardlinkGroup !== undefined) {
      if (seenLinks.has(e.hardlinkGroup)) continue;
      seenLinks.add(e.hardlinkGroup);
    }
    inodes++;
    if (e.type === 'file') blocks += fileBlocks(e, B);
    else if (e.type === 'dir' && !dirBytes.has(e.path)) dirBytes.set(e.path, 24);
    else if (e.type === 'symlink' && Buffer.byteLength(e.linkTarget ?? '') >= 60) blocks += 1;
    if (e.xattrs) {
      let x = 0;
      for (const [name, value] of Object.entries(e.xattrs)) {
        x += 16 + Math.ceil(Buffer.byteLength(name) / 4) * 4 + Math.ceil((value.length * 3) / 4 / 4) * 4;
      }
      if (x > inlineXattr) blocks += Math.ceil(x / B);
    }
  }
  for (const bytes of dirBytes.values()) {
    // Each block keeps 12 bytes for its checksum tail.
    const leaves = Math.ceil(bytes / (B - 12));
    blocks += leaves <= 1 ? 1 : 2 * leaves + 1;
  }
  return { bytes: blocks * B, inodes };
}

/** Data blocks of a regular file and the extent-tree blocks that map them. */
function fileBlocks(e: FileEntry, B: number): number {
  let data = 0;
  if (e.sparse) {
    // Blocks any stored run touches, counted once.
    let lastBlock = -1;
    for (const x of [...(e.extents ?? [])].sort((a, b) => a.offset - b.offset)) {
      if (x.length === 0) continue;
      const first = Math.max(Math.floor(x.offset / B), lastBlock + 1);
      const last = Math.floor((x.offset + x.length - 1) / B);
      if (last >= first) data += last - first + 1;
      lastBlock = Math.max(lastBlock, last);
    }
  } else data = Math.ceil((e.size ?? 0) / B);
  // An extent maps at most 32768 blocks; past the four in the inode, index blocks hold (B - 12) / 12 each.
  const extents = Math.ceil(data / 32768) + (e.sparse ? (e.extents?.length ?? 0) : 0);
  return data + (extents > 4 ? Math.ceil(extents / Math.floor((B - 12) / 12)) : 0);
}

/** The largest ext filesystem mke2fs makes with these features: 2^32 blocks without 64bit. */
export function extMaxBytes(fs: FilesystemInfo, sizeHint: number): number {
  const B = blockSizeOf(sizeHint, fs);
  return (fs.features ?? []).includes('64bit') ? 2 ** 48 * B : (2 ** 32 - 1) * B;
}

/**
 * Blocks the kernel keeps back on a mounted ext4 with extents for its own allocations
 * (ext4_calculate_resv_clusters: 2 % of the blocks, at most 4096): not even root's
 * writes get them.
 */
export function extKernelReserveBytes(sizeBytes: number, fs: FilesystemInfo): number {
  if (!(fs.features ?? []).includes('extent')) return 0;
  const g = geometry(sizeBytes, fs);
  return Math.min(Math.floor(g.blocks / 50), 4096) * g.blockSize;
}

/**
 * Whether an ext filesystem of `sizeBytes` holds `need` with the spare room on top
 * (spareBytes), made with enough inodes (extInodesFor). The blocks reserved for root
 * count as room: the restore writes as root.
 */
export function extHolds(sizeBytes: number, fs: FilesystemInfo, need: FilesNeed, spare = true): boolean {
  const inodes = extInodesFor(sizeBytes, fs, need.inodes);
  const room = sizeBytes - extOverheadBytes(sizeBytes, fs, inodes) - extKernelReserveBytes(sizeBytes, fs);
  return room >= need.bytes + (spare ? spareBytes(need.bytes) : 0);
}

/** Sizes at which mke2fs's default journal grows, so that a bigger filesystem can have less room than a slightly smaller one. */
function journalSteps(fs: FilesystemInfo): number[] {
  if (!(fs.features ?? []).includes('has_journal')) return [];
  const B = fs.blockSize ?? 4 * KiB;
  return [2048, 32768, 256 * 1024, 512 * 1024, 4096 * 1024, 8192 * 1024, 16384 * 1024, 32768 * 1024].map(
    (blocks) => blocks * B,
  );
}

/** extHolds at `sizeBytes` and at every size above it. */
export function extHoldsFrom(sizeBytes: number, fs: FilesystemInfo, need: FilesNeed, spare = true): boolean {
  if (!extHolds(sizeBytes, fs, need, spare)) return false;
  // Between journal steps the room only grows with the size; at each step it may drop.
  return journalSteps(fs).every((s) => s <= sizeBytes || extHolds(s, fs, need, spare));
}

/**
 * The smallest size, in whole `unit`s, from which on an ext filesystem holds `need`
 * with spare room (extHoldsFrom).
 */
export function extMinBytes(fs: FilesystemInfo, need: FilesNeed, unit: number): number {
  let hi = unit;
  while (!extHoldsFrom(hi, fs, need)) hi *= 2;
  let lo = 0; // lo never holds (or is nothing)
  while (hi - lo > unit) {
    const mid = lo + Math.floor((hi - lo) / unit / 2) * unit;
    if (extHoldsFrom(mid, fs, need)) hi = mid;
    else lo = mid;
  }
  return hi;
}

/**
 * The inode count a restore makes `volume`'s filesystem with at `sizeBytes` (mkfs -N),
 * or undefined for mke2fs's default: only an ext volume whose entries (of `fileset`)
 * would not find enough inodes there gets more.
 */
export function extMkfsInodes(volume: FileVolume, fileset: number, sizeBytes: number): number | undefined {
  if (!isExt(volume.fs)) return undefined;
  const need = extFilesNeed(volume, fileset, blockSizeOf(sizeBytes, volume.fs));
  return extInodesFor(sizeBytes, volume.fs, need.inodes);
}
