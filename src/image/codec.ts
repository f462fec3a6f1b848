/**
 * Chunk naming, compression and verification. Everything here is synchronous and
 * free of I/O so it runs unchanged in compression workers and in the multicast
 * receiver, which verifies chunks with decodeChunk before anything touches a disk.
 */
import { createHash } from 'node:crypto';
import zlib from 'node:zlib';

import { ImageError } from './errors.ts';
import type { CompressionLevel } from './types.ts';

export const CODEC_NONE = 0;
export const CODEC_ZSTD = 1;

const P = zlib.constants;

/**
 * zstd parameters per level: the one place to tune. Measured on this project's
 * 2-core build machine, 4 MiB chunks compressed one by one (ratio = stored/raw):
 *
 *   level      /usr/bin (164 MiB)      /usr/share (40 MiB)
 *   zstd 1     0.419  149 MB/s         0.396  425 MB/s
 *   zstd 3     0.366  123 MB/s         0.344  333 MB/s
 *   zstd 9     0.330   36 MB/s         0.313  104 MB/s
 *   zstd 12    0.328   19 MB/s         0.312   41 MB/s
 *   zstd 15    0.325    5 MB/s         0.309   10 MB/s
 *   zstd 19    0.294  2.6 MB/s         0.303    4 MB/s
 *
 * `balanced` is level 2 with a 4 MiB window and smaller match tables (hashLog 15,
 * chainLog 14). On the 0.87 GB bench tree (/usr/share + /usr/bin as one tar, cut into
 * 4 MiB chunks; CPU seconds on one core, 3 runs, one zstd context reused):
 *   level 1:                      1.8 s, 367 MB
 *   level 2, hashLog 15/chain 14: 2.0 s, 351 MB   <- balanced
 *   level 2 (defaults):           2.2-2.4 s, 344 MB
 *   level 3:                      3.5-3.9 s, 331 MB (whole stream, zstd -3: 331 MB)
 * Compression is a capture's largest CPU cost; this setting spends ~45 % less than
 * level 3 for ~6 % more bytes, which the image's dedup wins back (its image is about
 * the size of tar | zstd -3); level 1 would land right at the +5 % the capture target
 * allows.
 *
 * `size` is 18. The target is `zstd -19` over a whole tar stream, at no more than 2
 * points of ratio. On 32 MiB sampled from /usr/share + /usr/bin, each 4 MiB chunk on
 * its own compressed as follows (ratio = stored/raw):
 *   chunks at 12: 0.317, 5 s
 *   chunks at 17: 0.301, 10 s
 *   chunks at 18: 0.289, 12 s
 *   chunks at 19: 0.289, 16 s
 *   stream at -19 (one thread, same data): 0.282, 15 s
 * 18 stays within a point of the stream and is faster, because
 * per-chunk history is shorter; dedup across the image then widens the lead. A 4 MiB
 * window holds a whole chunk, so chunks never reference data outside themselves.
 */
export const LEVEL_PARAMS: Readonly<Record<CompressionLevel, Readonly<Record<number, number>> | null>> = {
  none: null,
  speed: { [P.ZSTD_c_compressionLevel]: 1 },
  balanced: {
    [P.ZSTD_c_compressionLevel]: 2,
    [P.ZSTD_c_windowLog]: 22,
    [P.ZSTD_c_hashLog]: 15,
    [P.ZSTD_c_chainLog]: 14,
  },
  // Tables sized to a 4 MiB chunk (level 18's own are for big streams): ~35 instead of ~59 MiB
  // per worker, for the same output (64.20 vs 64.17 MB on 160 MB of the bench tree) and time.
  size: {
    [P.ZSTD_c_compressionLevel]: 18,
    [P.ZSTD_c_windowLog]: 22,
    [P.ZSTD_c_chainLog]: 22,
    [P.ZSTD_c_hashLog]: 21,
  },
};

/** Lowercase hex SHA-256 of the raw content: the chunk's name everywhere. */
export function chunkId(raw: Buffer): string {
  return createHash('sha256').update(raw).digest('hex');
}

/** Compresses one chunk; content that does not shrink is stored as is. */
export function encodeChunk(raw: Buffer, level: CompressionLevel): { codec: number; stored: Buffer } {
  const params = LEVEL_PARAMS[level];
  if (params === undefined) throw new TypeError(`unknown compression level ${String(level)}`);
  if (params === null || raw.length === 0) return { codec: CODEC_NONE, stored: raw };
  const stored = zlib.zstdCompressSync(raw, { params: { ...params } });
  if (stored.length >= raw.length) return { codec: CODEC_NONE, stored: raw };
  return { codec: CODEC_ZSTD, stored };
}

const ID_RE = /^[0-9a-f]{64}$/;

/** Why decodeChunk could not even start on these arguments (checked before a worker decodes them too). */
export function decodeArgumentProblem(id: string, codec: number, rawLength: number): string | undefined {
  if (typeof id !== 'string' || !ID_RE.test(id)) return 'its id is not a lowercase hex SHA-256';
  if (!Number.isSafeInteger(rawLength) || rawLength < 0) return `impossible raw length ${rawLength}`;
  if (codec !== CODEC_NONE && codec !== CODEC_ZSTD) return `unknown codec ${codec}`;
  return undefined;
}

/**
 * Turns stored bytes back into the raw chunk and proves it is the chunk `id` names.
 * Decompression is capped at `rawLength`, so a forged length or a decompression bomb
 * cannot make it allocate more than the chunk claims to be. With `into` (more than
 * rawLength bytes long), zstd output goes there and the result is a view of it: a
 * restore recycles a few such buffers instead of leaving a fresh 4 MiB one per chunk
 * for the garbage collector.
 */
export function decodeChunk(
  id: string,
  codec: number,
  stored: Buffer,
  rawLength: number,
  into?: Buffer,
): Buffer {
  const fail = (why: string, cause?: unknown): never => {
    throw new ImageError(
      'E_CHUNK_CORRUPT',
      `chunk ${id} is damaged: ${why}`,
      { chunk: id, reason: why },
      { cause },
    );
  };
  if (!Buffer.isBuffer(stored)) fail('no stored bytes');
  const problem = decodeArgumentProblem(id, codec, rawLength);
  if (problem) fail(problem);
  let raw: Buffer;
  if (codec === CODEC_NONE) {
    // Copied when there is room, so the result never aliases the caller's (possibly recycled) record buffer.
    raw = into && into.length >= stored.length ? into.subarray(0, stored.copy(into)) : stored;
  } else if (codec === CODEC_ZSTD && into && into.length > rawLength) {
    try {
      raw = decompressInto(stored, into, rawLength);
    } catch (err) {
      return fail('its compressed data does not decompress', err);
    }
  } else if (codec === CODEC_ZSTD) {
    try {
      raw = zlib.zstdDecompressSync(stored, {
        maxOutputLength: Math.max(1, rawLength),
        // One spare byte lets zstd finish in a single output buffer (measured ~20% faster).
        chunkSize: Math.min(Math.max(rawLength + 1, 64), 8 * 1024 * 1024 + 1),
      });
    } catch (err) {
      return fail('its compressed data does not decompress', err);
    }
  } else {
    return fail(`unknown codec ${codec}`);
  }
  if (raw.length !== rawLength) fail(`it holds ${raw.length} bytes instead of ${rawLength}`);
  if (chunkId(raw) !== id) fail('its content does not match its SHA-256');
  return raw;
}

/**
 * One zstd decompression context for the thread, driven through the zlib handle (the
 * writeSync call zlib's own sync path makes) so it writes into the caller's buffer;
 * zstdDecompressSync would allocate a new context and new output buffers every time.
 * Falls back to zstdDecompressSync and a copy where that handle is not there.
 */
let decompressor: zlib.ZstdDecompress | undefined;

interface ZlibInternals {
  _handle?: {
    writeSync?: (
      flush: number,
      input: Buffer,
      inOff: number,
      inLen: number,
      out: Buffer,
      outOff: number,
      outLen: number,
    ) => void;
    reset?: () => void;
  };
  _writeState?: Uint32Array;
}

function decompressInto(stored: Buffer, into: Buffer, rawLength: number): Buffer {
  // One spare byte: output that fills it means the chunk is longer than it claims.
  const room = rawLength + 1;
  if (!decompressor) {
    decompressor = zlib.createZstdDecompress();
    // Errors also show as `destroyed` right after writeSync; the event itself must not go unhandled.
    decompressor.on('error', () => {});
  }
  const z = decompressor as unknown as ZlibInternals;
  const handle = z._handle;
  const state = z._writeState;
  if (!handle?.writeSync || !handle.reset || !(state instanceof Uint32Array)) {
    const raw = zlib.zstdDecompressSync(stored, { maxOutputLength: room });
    raw.copy(into);
    return into.subarray(0, raw.length);
  }
  // A damaged chunk before this one may have left the context inside a frame.
  handle.reset();
  // One call decodes a frame that states its size (every chunk); a frame written as a
  // stream (the manifest) can leave its last empty block for another call.
  let inOff = 0;
  let outOff = 0;
  for (;;) {
    const inLen = stored.length - inOff;
    const outLen = room - outOff;
    handle.writeSync(P.ZSTD_e_end, stored, inOff, inLen, into, outOff, outLen);
    if (decompressor.destroyed) {
      decompressor = undefined;
      throw new Error('zstd rejected the data');
    }
    const consumed = inLen - state[1]!;
    const produced = outLen - state[0]!;
    inOff += consumed;
    outOff += produced;
    if (state[1] === 0) break;
    if (consumed === 0 && produced === 0) throw new Error(`${state[1]} bytes of input left over`);
  }
  return into.subarray(0, outOff);
}
