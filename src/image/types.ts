/**
 * The image model: what an imgcast image holds, independent of how the container
 * file lays it out on disk. Capture builds a Manifest while feeding chunk bytes to a
 * ChunkSink; restore reads the Manifest and pulls chunk bytes from a ChunkSource.
 * The multicast transport moves the same chunks, so these types are the contract
 * between the image format, the engine and the network.
 *
 * All sizes and offsets are byte counts in plain numbers (safe up to 8 PiB).
 * Chunk ids are lowercase hex SHA-256 of the chunk's uncompressed content.
 */

export const FORMAT_VERSION = 1;
/** Extension of image files, e.g. lab-2026.imgc */
export const IMAGE_EXTENSION = '.imgc';
/** Upper bound of one chunk's uncompressed size; packs of small files and pieces of big files stay within it. */
export const CHUNK_SIZE = 4 * 1024 * 1024;
export const MAX_FILESETS = 10;

export const COMPRESSION_LEVELS = ['none', 'speed', 'balanced', 'size'] as const;
export type CompressionLevel = (typeof COMPRESSION_LEVELS)[number];
export const DEFAULT_LEVEL: CompressionLevel = 'balanced';

/** A chunk as the capture side learns of it after storing. */
export interface ChunkRef {
  id: string;
  rawLength: number;
}

/** Where a chunk's bytes go: a piece of a file or of a disk/partition. */
export interface ChunkSink {
  /**
   * Store raw bytes as one chunk (deduplicated by content). Resolves with the id once
   * the sink has accepted the bytes (it may still be compressing them); durability
   * comes with the sink's commit. The sink copies what it keeps: `raw` may be reused once this resolves.
   */
  putChunk(raw: Buffer): Promise<ChunkRef>;
  /**
   * Optional pipelined form of putChunk, for sinks that can name chunks off the
   * caller's thread: resolves once `raw` may be reused; `ref` settles later.
   */
  queueChunk?(raw: Buffer): Promise<QueuedChunk>;
  /**
   * Optional: lends one CHUNK_SIZE buffer of the sink's own memory, for a caller that
   * can read its data straight into it (queueChunk without the copy). Resolves when
   * the sink has room, which is the same backpressure queueChunk gives.
   */
  leaseChunk?(): Promise<ChunkLease>;
}

/** A buffer lent by ChunkSink.leaseChunk: filled in place, then queued or given back, once. */
export interface ChunkLease {
  readonly buf: Buffer;
  /** Hands over the first `length` bytes of `buf` as one chunk; `buf` is the sink's again. */
  queue(length: number): QueuedChunk;
  /** Gives `buf` back unused. */
  release(): void;
}

/** A chunk accepted by queueChunk; wrapped so that awaiting the acceptance does not wait for the id. */
export interface QueuedChunk {
  readonly ref: Promise<ChunkRef>;
}

/** Where restore gets chunk bytes: an image file, or the network. Bytes are verified against the id. */
export interface ChunkSource {
  /**
   * The chunk's raw bytes, verified. A source may decode into `into` (CHUNK_SIZE + 1
   * bytes) and return a view of it; the caller then owns that buffer again once it is
   * done with the result.
   */
  readChunk(id: string, into?: Buffer): Promise<Buffer>;
  /**
   * Optional: reads and verifies the chunk like readChunk (into shared memory `into`)
   * and has the worker that decoded it carry out `plan`, so a restore decodes and
   * writes on every core. Rejects only for the chunk itself (missing, damaged); what
   * the writes met is in the outcome.
   */
  readChunkAndWrite?(id: string, into: Buffer, plan: ChunkWritePlan): Promise<ChunkWriteOutcome>;
}

/**
 * Files a worker writes from a chunk it has just decoded (RestoreSink.planChunk), in the
 * flat form plan.ts builds (PlanBuilder) and describes: plans cross to a worker for every
 * chunk, 55k files' worth in a restore of /usr. A write's place is the prefix and its
 * image path joined by the worker, or its exact bytes for a name that is not UTF-8.
 */
export interface ChunkWritePlan {
  /** How many writes (files and symlinks) the plan holds. */
  count: number;
  /** Each write's image path, joined by NUL (no entry path holds one: assertEntryPath). */
  names: string;
  /** Per write: PLAN_FIELDS numbers (plan.ts), then its ranges as triples of file offset, chunk offset, length. */
  nums: Float64Array;
  /** The few writes that carry more than numbers, in write order. */
  extra?: PlanExtra[];
  /** The target folder and a slash: a write's place is this followed by its image path, unless PlanExtra gives its bytes. */
  prefix: string;
  /** Whether the writer runs as root: only then is a refused chown an error rather than a count. */
  root: boolean;
  /** The process's umask: permission bits it takes from files at creation. */
  umask: number;
}

export interface PlanExtra {
  /** Which write. */
  index: number;
  /** Its exact place: the bytes of a name that is not UTF-8. */
  path?: Buffer;
  /** A symlink's target. */
  symlink?: string | Buffer;
}

/** Owner, mode and times (seconds) of an entry. */
export interface EntryMeta {
  uid: number;
  gid: number;
  /** False when the file already has this owner (made by the restoring user in a directory it made). */
  chown: boolean;
  mode: number;
  atime: number;
  mtime: number;
}

export type ChunkWriteOutcome =
  | { ok: true; ownersDenied: number }
  | {
      ok: false;
      rel: string;
      reason: string;
      code?: string;
      extent?: { chunkOffset: number; length: number };
    };

// ---------------------------------------------------------------------------
// File volumes

export type FileEntryType = 'file' | 'dir' | 'symlink' | 'chardev' | 'blockdev' | 'fifo' | 'socket';

/** A run of a file's content held in a chunk. Gaps between extents (up to `size`) are holes. */
export interface FileExtent {
  /** Offset within the file. */
  offset: number;
  length: number;
  chunk: string;
  /** Offset within the chunk's raw bytes (non-zero when small files share one pack chunk). */
  chunkOffset: number;
}

export interface FileEntry {
  /** Path relative to the volume root, '/'-separated, no leading or trailing slash; '.' is the root itself. */
  path: string;
  type: FileEntryType;
  /** Permission and special bits only (mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** Nanoseconds since the epoch, as decimal strings because they exceed 2^53. */
  mtimeNs: string;
  atimeNs: string;
  /** Regular files: logical size in bytes. */
  size?: number;
  extents?: FileExtent[];
  /** True when the source file had holes; restore leaves the gaps between extents unallocated. */
  sparse?: boolean;
  /** Entries with the same group are hard links to one inode; the first restored one carries the data. */
  hardlinkGroup?: number;
  /** Symlink target, verbatim. */
  linkTarget?: string;
  /** Device number for chardev/blockdev. */
  rdevMajor?: number;
  rdevMinor?: number;
  /** Extended attributes, values base64-encoded. */
  xattrs?: Record<string, string>;
  /**
   * Inode flags as lsattr and chattr letter them ('i' immutable, 'a' append-only, 'd'
   * nodump, …; see volume/files/flags.ts), for regular files and directories that have
   * some. Absent in images made before imgcast kept them, which restore as before.
   */
  flags?: string;
  /**
   * File-set exclusions as a bit mask: bit (n - 1) set means excluded from file set n.
   * Absent or 0 means the entry belongs to every file set.
   */
  excludedFrom?: number;
  /** Image generation that added the entry (1 = the original capture). */
  addedIn?: number;
}

export type FilesystemType = 'ext2' | 'ext3' | 'ext4' | 'vfat' | 'directory';

export interface FilesystemInfo {
  type: FilesystemType;
  label?: string;
  /** ext*: the filesystem UUID; vfat: the 8-hex-digit volume id (as blkid prints it, e.g. "1A2B-3C4D"). */
  uuid?: string;
  /** ext*: block size and inode size used at mkfs; vfat: FAT width (12/16/32) and sector size. */
  blockSize?: number;
  inodeSize?: number;
  fatBits?: number;
  /** ext*: feature list from the superblock so mkfs reproduces it. */
  features?: string[];
  /** Bytes in use on the source filesystem, for "will it fit" checks. */
  usedBytes?: number;
}

export interface FileVolume {
  kind: 'files';
  /** Index in Manifest.volumes. */
  index: number;
  /** Partition number (1-based, as in /dev/sda1) this volume came from; absent for a directory source. */
  partition?: number;
  /** Size of the source partition in bytes (absent for a directory source). */
  sizeBytes?: number;
  fs: FilesystemInfo;
  entries: FileEntry[];
}

// ---------------------------------------------------------------------------
// Raw volumes and disk layout

/** A run of bytes at `offset` (within a partition, or within the disk for boot areas) held in one chunk. */
export interface RawExtent {
  offset: number;
  length: number;
  chunk: string;
}

export interface RawVolume {
  kind: 'raw';
  index: number;
  partition?: number;
  sizeBytes: number;
  /** What blkid said the content was, if anything (e.g. 'ntfs', 'swap'); informational. */
  detectedType?: string;
  /** Non-zero runs; everything between them is zero and is written as zero on restore. */
  extents: RawExtent[];
  /** Bytes left out because the filesystem does not use them (mapped by `tool`), restored as zeros. */
  unused?: { bytes: number; tool: string };
}

export type Volume = FileVolume | RawVolume;

export type PartitionTableType = 'mbr' | 'gpt';

export interface PartitionInfo {
  /** 1-based number as the kernel names it (sda1, loop0p1). */
  number: number;
  startBytes: number;
  sizeBytes: number;
  /** MBR: type byte as two hex digits ('83', 'ef', …); GPT: type GUID. */
  type: string;
  /** GPT only. */
  uuid?: string;
  name?: string;
  /** MBR only. */
  bootable?: boolean;
  /** Index in Manifest.volumes of this partition's content. */
  volume: number;
}

export interface DiskLayout {
  sizeBytes: number;
  sectorSize: number;
  table: PartitionTableType;
  partitions: PartitionInfo[];
  /**
   * Byte-exact areas outside the partitions: from sector 0 to the first partition
   * (MBR with boot code, primary GPT, boot-loader gap) and, for GPT, the backup
   * table at the disk's end. Zero runs are not stored; restore writes them as zero.
   */
  bootAreas: Array<{ offset: number; length: number; extents: RawExtent[] }>;
  /**
   * MBR: the extended partition, which holds no volume of its own: its boot records
   * are boot areas and its logical partitions are partitions with volumes.
   */
  containers?: Array<{ number: number; startBytes: number; sizeBytes: number; type: string }>;
}

// ---------------------------------------------------------------------------
// File sets and the manifest

export interface FileSetInfo {
  /** 1..10 */
  number: number;
  /** Optional description an admin gave the set. */
  description?: string;
}

export interface ImageSource {
  kind: 'directory' | 'disk' | 'partition';
  path: string;
  hostname?: string;
}

export interface Manifest {
  formatVersion: number;
  /** Random UUID fixed at capture; survives appends and compaction. */
  imageId: string;
  createdAt: string;
  /** Bumped by every append (add, rm, exclude, include); 1 after capture. */
  generation: number;
  level: CompressionLevel;
  source: ImageSource;
  /** Present for whole-disk images. */
  disk?: DiskLayout;
  volumes: Volume[];
  filesets: FileSetInfo[];
}
