/**
 * On-disk layout of an imgcast image file (.imgc), format version 1.
 * All integers are little-endian; offsets are absolute file offsets.
 *
 *   +--------------------------------------------------------------+
 *   | Header (64 bytes)                                            |
 *   |   0  magic "IMGCAST\0" (8)                                   |
 *   |   8  u16 format version    10 u16 flags (0)                  |
 *   |  12  u32 header size (64)                                    |
 *   |  16  image id (16): the manifest's UUID, zero until the first|
 *   |      commit has written it                                   |
 *   |  32  reserved (28, zero)                                     |
 *   |  60  u32 crc32 of bytes 0..59                                |
 *   +--------------------------------------------------------------+
 *   | Records, one after another, never rewritten:                 |
 *   |   record header (56 bytes)                                   |
 *   |     0  magic "IRC1" (4)   4 u8 type (1 chunk, 2 manifest,    |
 *   |        3 index)           5 u8 codec (0 stored, 1 zstd)      |
 *   |     6  u16 reserved       8 u32 raw length  12 u32 stored len|
 *   |    16  SHA-256 of the raw content (32)                       |
 *   |    48  u32 reserved      52 u32 crc32 of bytes 0..51         |
 *   |   stored payload (stored length bytes)                       |
 *   | A generation is: its new chunk records, then one manifest    |
 *   | record (JSON, zstd), one index record, then its trailer.     |
 *   | An append writes the next generation after the old trailer.  |
 *   +--------------------------------------------------------------+
 *   | Trailer (160 bytes, always the last bytes of the file)       |
 *   |   0  magic "IMGCTRLR" (8)                                    |
 *   |   8  u16 format version   10 u16 trailer size (160)          |
 *   |  12  u32 reserved        16 u64 generation                   |
 *   |  24  u64 manifest record offset  32 u64 its total length     |
 *   |  40  u64 index record offset     48 u64 its total length     |
 *   |  56  u64 offset of the previous generation's trailer (0: none)|
 *   |  64  u64 number of chunks in the index                       |
 *   |  72  SHA-256 of the raw manifest (32)                        |
 *   | 104  SHA-256 of the raw index (32)                           |
 *   | 136  reserved (20)       156 u32 crc32 of bytes 0..155        |
 *   +--------------------------------------------------------------+
 *
 * Index payload (raw, stored uncompressed because hashes do not shrink): one
 * 56-byte entry per chunk, sorted by id, no duplicates:
 *   0 SHA-256 id (32)  32 u64 record offset  40 u32 stored length
 *   44 u32 raw length  48 u8 codec  49 reserved (7)
 * The index covers every chunk of every generation, so a reader needs only the
 * header, the last trailer, the last index and the last manifest.
 *
 * Beside the file, `<image>.append-journal` exists only while an append runs: it
 * holds the length and trailer of the last committed generation, so readers opened
 * meanwhile (or after a crash) read that generation and `repairImage` can cut the
 * uncommitted tail off (journal.ts). A create writes `<image>.partial` and renames.
 *
 * Why: the trailer at EOF finds everything without scanning; records carry their
 * own hash so a chunk can be checked and sent alone; the previous-trailer link
 * and never-rewritten records let an older generation be found and kept intact.
 */
import { crc32 } from 'node:zlib';

import { CODEC_NONE, chunkId } from './codec.ts';
import { ImageError } from './errors.ts';
import type { EncodedManifest } from './manifest-encoding.ts';
import { RECORD_CHUNK, RECORD_HEADER_SIZE, RECORD_INDEX, RECORD_MAGIC, RECORD_MANIFEST } from './record.ts';
import { FORMAT_VERSION } from './types.ts';

export const HEADER_MAGIC = Buffer.from('IMGCAST\0', 'latin1');
export const TRAILER_MAGIC = Buffer.from('IMGCTRLR', 'latin1');
/** Sidecar that exists only while an append runs (journal.ts). */
export const JOURNAL_SUFFIX = '.append-journal';
export const HEADER_SIZE = 64;
export const TRAILER_SIZE = 160;
export const INDEX_ENTRY_SIZE = 56;
export { RECORD_CHUNK, RECORD_HEADER_SIZE, RECORD_INDEX, RECORD_MAGIC, RECORD_MANIFEST };

/** Largest raw size of any record: chunk lengths are u32 on disk. */
export const MAX_RECORD_RAW = 0xffff_ffff;
/** Manifests above this are refused: JSON strings cannot be larger in V8 anyway. */
export const MAX_MANIFEST_RAW = 512 * 1024 * 1024;

export interface Header {
  version: number;
  flags: number;
  /** Lowercase UUID text, or '' when not yet written. */
  imageId: string;
}

export function encodeHeader(h: Header): Buffer {
  const b = Buffer.alloc(HEADER_SIZE);
  HEADER_MAGIC.copy(b, 0);
  b.writeUInt16LE(h.version, 8);
  b.writeUInt16LE(h.flags, 10);
  b.writeUInt32LE(HEADER_SIZE, 12);
  uuidToBytes(h.imageId).copy(b, 16);
  b.writeUInt32LE(crc32(b.subarray(0, 60)), 60);
  return b;
}

/** Throws E_IMAGE_MAGIC / E_IMAGE_VERSION / E_IMAGE_CORRUPT. `b` must hold HEADER_SIZE bytes. */
export function decodeHeader(b: Buffer, path: string): Header {
  if (!b.subarray(0, 8).equals(HEADER_MAGIC)) {
    throw new ImageError('E_IMAGE_MAGIC', `${path} is not an imgcast image (wrong magic at offset 0)`, {
      path,
    });
  }
  const version = b.readUInt16LE(8);
  if (version > FORMAT_VERSION || version === 0) {
    throw new ImageError(
      'E_IMAGE_VERSION',
      `${path} uses image format version ${version}; this imgcast reads version ${FORMAT_VERSION} only — upgrade imgcast`,
      { path, version, supported: FORMAT_VERSION },
    );
  }
  if (crc32(b.subarray(0, 60)) !== b.readUInt32LE(60) || b.readUInt32LE(12) !== HEADER_SIZE) {
    throw new ImageError('E_IMAGE_CORRUPT', `${path}: the image header is damaged (checksum mismatch)`, {
      path,
      structure: 'header',
    });
  }
  return { version, flags: b.readUInt16LE(10), imageId: bytesToUuid(b.subarray(16, 32)) };
}

export interface RecordHeader {
  type: number;
  codec: number;
  rawLength: number;
  storedLength: number;
  /** SHA-256 of the raw content, 32 bytes. */
  sha: Buffer;
}

export function encodeRecordHeader(r: RecordHeader): Buffer {
  const b = Buffer.alloc(RECORD_HEADER_SIZE);
  RECORD_MAGIC.copy(b, 0);
  b.writeUInt8(r.type, 4);
  b.writeUInt8(r.codec, 5);
  b.writeUInt32LE(r.rawLength, 8);
  b.writeUInt32LE(r.storedLength, 12);
  r.sha.copy(b, 16);
  b.writeUInt32LE(crc32(b.subarray(0, 52)), 52);
  return b;
}

/** Returns undefined when the bytes are not an intact record header; callers choose the error. */
export function decodeRecordHeader(b: Buffer): RecordHeader | undefined {
  if (b.length < RECORD_HEADER_SIZE || !b.subarray(0, 4).equals(RECORD_MAGIC)) return undefined;
  if (crc32(b.subarray(0, 52)) !== b.readUInt32LE(52)) return undefined;
  return {
    type: b.readUInt8(4),
    codec: b.readUInt8(5),
    rawLength: b.readUInt32LE(8),
    storedLength: b.readUInt32LE(12),
    sha: Buffer.from(b.subarray(16, 48)),
  };
}

export interface Trailer {
  version: number;
  generation: number;
  manifestOffset: number;
  manifestLength: number;
  indexOffset: number;
  indexLength: number;
  previousTrailer: number;
  chunkCount: number;
  manifestSha: Buffer;
  indexSha: Buffer;
}

export function encodeTrailer(t: Trailer): Buffer {
  const b = Buffer.alloc(TRAILER_SIZE);
  TRAILER_MAGIC.copy(b, 0);
  b.writeUInt16LE(t.version, 8);
  b.writeUInt16LE(TRAILER_SIZE, 10);
  writeU64(b, 16, t.generation);
  writeU64(b, 24, t.manifestOffset);
  writeU64(b, 32, t.manifestLength);
  writeU64(b, 40, t.indexOffset);
  writeU64(b, 48, t.indexLength);
  writeU64(b, 56, t.previousTrailer);
  writeU64(b, 64, t.chunkCount);
  t.manifestSha.copy(b, 72);
  t.indexSha.copy(b, 104);
  b.writeUInt32LE(crc32(b.subarray(0, 156)), 156);
  return b;
}

/** `b` is the last TRAILER_SIZE bytes of the file. */
export function decodeTrailer(b: Buffer, path: string): Trailer {
  if (b.length !== TRAILER_SIZE || !b.subarray(0, 8).equals(TRAILER_MAGIC)) {
    throw new ImageError(
      'E_IMAGE_TRUNCATED',
      `${path} ends without an image trailer: the file was cut short or an append was interrupted`,
      { path },
    );
  }
  const version = b.readUInt16LE(8);
  if (crc32(b.subarray(0, 156)) !== b.readUInt32LE(156) || b.readUInt16LE(10) !== TRAILER_SIZE) {
    throw new ImageError('E_IMAGE_CORRUPT', `${path}: the image trailer is damaged (checksum mismatch)`, {
      path,
      structure: 'trailer',
    });
  }
  if (version > FORMAT_VERSION || version === 0) {
    throw new ImageError(
      'E_IMAGE_VERSION',
      `${path} was last written with image format version ${version}; this imgcast reads version ${FORMAT_VERSION} only`,
      { path, version, supported: FORMAT_VERSION },
    );
  }
  return {
    version,
    generation: readU64(b, 16),
    manifestOffset: readU64(b, 24),
    manifestLength: readU64(b, 32),
    indexOffset: readU64(b, 40),
    indexLength: readU64(b, 48),
    previousTrailer: readU64(b, 56),
    chunkCount: readU64(b, 64),
    manifestSha: Buffer.from(b.subarray(72, 104)),
    indexSha: Buffer.from(b.subarray(104, 136)),
  };
}

export interface IndexEntry {
  id: string;
  offset: number;
  codec: number;
  storedLength: number;
  rawLength: number;
}

/** Sorted by id so a reader can binary-search the raw bytes without building objects. */
export function encodeIndex(entries: Iterable<IndexEntry>): Buffer {
  const list = [...entries].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const b = Buffer.alloc(list.length * INDEX_ENTRY_SIZE);
  let p = 0;
  for (const e of list) {
    b.write(e.id, p, 32, 'hex');
    writeU64(b, p + 32, e.offset);
    b.writeUInt32LE(e.storedLength, p + 40);
    b.writeUInt32LE(e.rawLength, p + 44);
    b.writeUInt8(e.codec, p + 48);
    p += INDEX_ENTRY_SIZE;
  }
  return b;
}

export function indexEntryAt(b: Buffer, i: number): IndexEntry {
  const p = i * INDEX_ENTRY_SIZE;
  return {
    id: b.toString('hex', p, p + 32),
    offset: readU64(b, p + 32),
    storedLength: b.readUInt32LE(p + 40),
    rawLength: b.readUInt32LE(p + 44),
    codec: b.readUInt8(p + 48),
  };
}

/** Index position of `idBytes` (32 bytes) in a sorted index, or -1. */
export function indexFind(b: Buffer, idBytes: Buffer): number {
  let lo = 0;
  let hi = b.length / INDEX_ENTRY_SIZE - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const p = mid * INDEX_ENTRY_SIZE;
    const c = b.compare(idBytes, 0, 32, p, p + 32);
    if (c === 0) return mid;
    if (c < 0) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}

export function writeU64(b: Buffer, off: number, v: number): void {
  b.writeBigUInt64LE(BigInt(v), off);
}

/** Values above 2^53 cannot be real offsets; they read as Infinity so range checks reject them. */
export function readU64(b: Buffer, off: number): number {
  const v = b.readBigUInt64LE(off);
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Infinity : Number(v);
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Non-UUID ids (hand-made manifests) are not mirrored in the header; the manifest stays authoritative. */
function uuidToBytes(id: string): Buffer {
  if (!UUID_RE.test(id)) return Buffer.alloc(16);
  return Buffer.from(id.replaceAll('-', ''), 'hex');
}

function bytesToUuid(b: Buffer): string {
  if (b.every((x) => x === 0)) return '';
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** The bytes that close a generation: manifest and index records, then the trailer that points at them. */
export interface GenerationTail {
  /** Manifest record then index record, written at `at`. */
  records: Buffer[];
  trailer: Buffer;
  /** Offset right after the records, where the trailer goes. */
  trailerOffset: number;
}

/**
 * Encodes a generation's tail for a file whose records end at `at`, around a
 * manifest already encoded by encodeManifest.
 */
export function encodeGenerationTail(opts: {
  manifest: EncodedManifest;
  index: Iterable<IndexEntry>;
  chunkCount: number;
  generation: number;
  previousTrailer: number;
  at: number;
}): GenerationTail {
  const m = opts.manifest;
  const manifestSha = m.sha;
  const mHead = encodeRecordHeader({
    type: RECORD_MANIFEST,
    codec: m.codec,
    rawLength: m.rawLength,
    storedLength: m.storedLength,
    sha: manifestSha,
  });
  const idx = encodeIndex(opts.index);
  const indexSha = Buffer.from(chunkId(idx), 'hex');
  const iHead = encodeRecordHeader({
    type: RECORD_INDEX,
    codec: CODEC_NONE,
    rawLength: idx.length,
    storedLength: idx.length,
    sha: indexSha,
  });
  const manifestOffset = opts.at;
  const manifestLength = RECORD_HEADER_SIZE + m.storedLength;
  const indexOffset = manifestOffset + manifestLength;
  const indexLength = RECORD_HEADER_SIZE + idx.length;
  const trailer = encodeTrailer({
    version: FORMAT_VERSION,
    generation: opts.generation,
    manifestOffset,
    manifestLength,
    indexOffset,
    indexLength,
    previousTrailer: opts.previousTrailer,
    chunkCount: opts.chunkCount,
    manifestSha,
    indexSha,
  });
  return { records: [mHead, ...m.stored, iHead, idx], trailer, trailerOffset: indexOffset + indexLength };
}
