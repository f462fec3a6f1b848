/**
 * Reading an image: open validates the header, the last trailer, the index and the
 * manifest (a few small reads at the start and end of the file); chunks are then
 * read on demand with positional reads on one file descriptor.
 */
import { isAscii } from 'node:buffer';
import { access, open, type FileHandle } from 'node:fs/promises';

import { CODEC_NONE, CODEC_ZSTD, decodeArgumentProblem, decodeChunk } from './codec.ts';
import { ImageError } from './errors.ts';
import {
  HEADER_MAGIC,
  HEADER_SIZE,
  INDEX_ENTRY_SIZE,
  JOURNAL_SUFFIX,
  MAX_MANIFEST_RAW,
  RECORD_CHUNK,
  RECORD_HEADER_SIZE,
  RECORD_INDEX,
  RECORD_MANIFEST,
  TRAILER_SIZE,
  decodeHeader,
  decodeRecordHeader,
  decodeTrailer,
  indexEntryAt,
  indexFind,
  type Header,
  type Trailer,
} from './format.ts';
import { ioError, readAt } from './io.ts';
import { readJournal } from './journal.ts';
import { manifestProblem } from './manifest.ts';
import { CompressPool } from './pool.ts';
import {
  CHUNK_SIZE,
  type ChunkSource,
  type ChunkWriteOutcome,
  type ChunkWritePlan,
  type Manifest,
} from './types.ts';
import { chunkUsage, describeUsage } from './usage.ts';

export interface ChunkInfo {
  id: string;
  offset: number;
  codec: number;
  storedLength: number;
  rawLength: number;
}

/** What open learns; shared with the writer (append) and compaction. */
export interface Container {
  fh: FileHandle;
  path: string;
  fileSize: number;
  header: Header;
  trailer: Trailer;
  trailerOffset: number;
  /** Raw index: sorted INDEX_ENTRY_SIZE-byte entries. */
  index: Buffer;
  manifest: Manifest;
}

/**
 * Opens an image. Readers ('r') that find an append in progress (or one that crashed)
 * read the last committed generation, which the append journal locates; the writer
 * ('r+') never does, so it cannot append after uncommitted bytes.
 */
export async function openContainer(path: string, flags: 'r' | 'r+' = 'r'): Promise<Container> {
  let fh: FileHandle;
  try {
    fh = await open(path, flags);
  } catch (err) {
    throw ioError(path, 'open image', err);
  }
  let size = 0;
  try {
    size = (await fh.stat()).size;
    return await readContainer(fh, path, size);
  } catch (err) {
    if (!(err instanceof ImageError)) {
      await fh.close().catch(() => {});
      throw ioError(path, 'read image', err);
    }
    if (err.code === 'E_IMAGE_TRUNCATED' || err.code === 'E_IMAGE_CORRUPT') {
      const j = flags === 'r' ? await readJournal(path) : undefined;
      if (j && j.baseLength < size) {
        try {
          const c = await readContainer(fh, path, j.baseLength);
          const t = await readAt(fh, c.trailerOffset, TRAILER_SIZE);
          if (t.toString('hex') === j.trailer) return c;
        } catch {
          // Not the generation the journal recorded: report the original problem.
        }
      }
      await fh.close().catch(() => {});
      const journal = await access(path + JOURNAL_SUFFIX).then(
        () => true,
        () => false,
      );
      if (journal) {
        throw new ImageError(
          err.code,
          `${err.message}. An append to this image was interrupted; \`img repair\` restores the last committed generation`,
          { ...err.details, interruptedAppend: true },
          { cause: err },
        );
      }
    } else {
      await fh.close().catch(() => {});
    }
    throw err;
  }
}

/** Reads the image as if it ended at `fileSize`. */
async function readContainer(fh: FileHandle, path: string, fileSize: number): Promise<Container> {
  const st = await fh.stat();
  if (!st.isFile()) throw new ImageError('E_IMAGE_MAGIC', `${path} is not a regular file`, { path });
  const truncated = (what: string): ImageError =>
    new ImageError('E_IMAGE_TRUNCATED', `${path} is cut short: ${what}`, { path, fileSize });
  const corrupt = (structure: string, what: string): ImageError =>
    new ImageError('E_IMAGE_CORRUPT', `${path}: the image ${structure} is damaged: ${what}`, {
      path,
      structure,
    });

  const head = await readAt(fh, 0, HEADER_SIZE);
  if (head.length < HEADER_SIZE) {
    const n = Math.min(head.length, HEADER_MAGIC.length);
    if (head.subarray(0, n).equals(HEADER_MAGIC.subarray(0, n))) {
      throw truncated(`${fileSize} bytes, shorter than the ${HEADER_SIZE}-byte header`);
    }
  }
  const header = decodeHeader(
    head.length < HEADER_SIZE ? Buffer.concat([head, Buffer.alloc(HEADER_SIZE)]) : head,
    path,
  );
  if (fileSize < HEADER_SIZE + TRAILER_SIZE) throw truncated('no room for a trailer');
  const trailerOffset = fileSize - TRAILER_SIZE;
  const trailer = decodeTrailer(await readAt(fh, trailerOffset, TRAILER_SIZE), path);

  const readRecord = async (
    structure: string,
    type: number,
    offset: number,
    length: number,
    sha: Buffer,
    maxRaw: number,
  ): Promise<Buffer> => {
    if (offset < HEADER_SIZE || length < RECORD_HEADER_SIZE || offset + length > trailerOffset) {
      throw corrupt(structure, `the trailer points outside the file (offset ${offset}, length ${length})`);
    }
    const rec = await readAt(fh, offset, length);
    if (rec.length < length) throw truncated(`the ${structure} at offset ${offset} is incomplete`);
    const rh = decodeRecordHeader(rec);
    if (!rh || rh.type !== type || rh.storedLength !== length - RECORD_HEADER_SIZE || !rh.sha.equals(sha)) {
      throw corrupt(structure, `its record header at offset ${offset} does not match the trailer`);
    }
    if (rh.rawLength > maxRaw) throw corrupt(structure, `it claims ${rh.rawLength} bytes`);
    try {
      // A compressed record is decompressed into a buffer of its exact size (one spare byte),
      // not into zlib's 8 MiB pieces joined afterwards (a 17 MB manifest: ~20 ms less).
      const into = rh.codec === CODEC_ZSTD ? Buffer.allocUnsafe(rh.rawLength + 1) : undefined;
      return decodeChunk(sha.toString('hex'), rh.codec, rec.subarray(RECORD_HEADER_SIZE), rh.rawLength, into);
    } catch (err) {
      throw corrupt(structure, `its content fails its SHA-256 (${(err as Error).message})`);
    }
  };

  const maxIndex = Math.min(fileSize, trailer.chunkCount * INDEX_ENTRY_SIZE);
  const index = await readRecord(
    'index',
    RECORD_INDEX,
    trailer.indexOffset,
    trailer.indexLength,
    trailer.indexSha,
    maxIndex,
  );
  if (index.length !== trailer.chunkCount * INDEX_ENTRY_SIZE) {
    throw corrupt('index', `it holds ${index.length} bytes for ${trailer.chunkCount} chunks`);
  }
  for (let i = 0; i < trailer.chunkCount; i++) {
    const p = i * INDEX_ENTRY_SIZE;
    if (i > 0 && index.compare(index, p - INDEX_ENTRY_SIZE, p - INDEX_ENTRY_SIZE + 32, p, p + 32) <= 0) {
      throw corrupt('index', `entry ${i} is out of order or duplicated`);
    }
    const e = indexEntryAt(index, i);
    const bad =
      e.offset < HEADER_SIZE ||
      e.offset + RECORD_HEADER_SIZE + e.storedLength > trailerOffset ||
      e.rawLength > CHUNK_SIZE ||
      (e.codec !== CODEC_NONE && e.codec !== CODEC_ZSTD) ||
      (e.codec === CODEC_NONE && e.storedLength !== e.rawLength);
    if (bad) throw corrupt('index', `entry ${i} (chunk ${e.id}) is impossible`);
  }

  const mraw = await readRecord(
    'manifest',
    RECORD_MANIFEST,
    trailer.manifestOffset,
    trailer.manifestLength,
    trailer.manifestSha,
    MAX_MANIFEST_RAW,
  );
  let manifest: Manifest;
  try {
    // ASCII (as encodeManifest writes it, see asciiJson) decodes straight to a one-byte string.
    manifest = JSON.parse(mraw.toString(isAscii(mraw) ? 'latin1' : 'utf8')) as Manifest;
  } catch (err) {
    throw corrupt('manifest', `it is not valid JSON (${(err as Error).message})`);
  }
  const problem = manifestProblem(manifest);
  if (problem) throw corrupt('manifest', problem);
  if (manifest.generation !== trailer.generation) {
    throw corrupt(
      'manifest',
      `its generation ${manifest.generation} differs from the trailer's ${trailer.generation}`,
    );
  }
  if (header.imageId !== '' && header.imageId !== manifest.imageId.toLowerCase()) {
    throw corrupt('manifest', `its image id ${manifest.imageId} differs from the header's ${header.imageId}`);
  }
  return { fh, path, fileSize, header, trailer, trailerOffset, index, manifest };
}

const MAX_SPARE_RECORDS = 8;

function newRecord(shared: boolean): Buffer {
  const size = RECORD_HEADER_SIZE + CHUNK_SIZE;
  return shared ? Buffer.from(new SharedArrayBuffer(size)) : Buffer.allocUnsafe(size);
}

export class ImageReader implements ChunkSource {
  readonly path: string;
  readonly manifest: Manifest;
  readonly generation: number;
  readonly fileSize: number;
  /** Every chunk read through readChunk or readStored. */
  readonly stats: { chunksRead: number; idsRead: Set<string> } = { chunksRead: 0, idsRead: new Set() };
  #c: Container;
  /** Record buffers readChunk recycles, as many as it has had reads at once. */
  #records: Buffer[] = [];
  /** The same in shared memory, for reads whose chunks a pool worker decodes. */
  #sharedRecords: Buffer[] = [];

  private constructor(c: Container) {
    this.#c = c;
    this.path = c.path;
    this.manifest = c.manifest;
    this.generation = c.trailer.generation;
    this.fileSize = c.fileSize;
  }

  static async open(path: string): Promise<ImageReader> {
    return new ImageReader(await openContainer(path));
  }

  get chunkCount(): number {
    return this.#c.trailer.chunkCount;
  }

  chunk(id: string): ChunkInfo | undefined {
    if (typeof id !== 'string' || !/^[0-9a-f]{64}$/.test(id)) return undefined;
    const i = indexFind(this.#c.index, Buffer.from(id, 'hex'));
    return i < 0 ? undefined : indexEntryAt(this.#c.index, i);
  }

  *chunkIds(): IterableIterator<string> {
    for (let i = 0; i < this.#c.trailer.chunkCount; i++) {
      const p = i * INDEX_ENTRY_SIZE;
      yield this.#c.index.toString('hex', p, p + 32);
    }
  }

  /** All index entries, for callers that read many chunks in file order. */
  *chunkInfos(): IterableIterator<ChunkInfo> {
    for (let i = 0; i < this.#c.trailer.chunkCount; i++) yield indexEntryAt(this.#c.index, i);
  }

  /**
   * A chunk's raw bytes, checked against its id. With `into` (a recycled buffer of more
   * than CHUNK_SIZE bytes) the result is a view of it; when `into` is shared memory the
   * decompression and hashing run on a pool worker, so a caller that keeps several
   * reads going (a restore) decodes on every core while it writes.
   */
  async readChunk(id: string, into?: Buffer): Promise<Buffer> {
    // A caller that recycles output buffers gets its records read into recycled buffers too.
    const recycle = into !== undefined && into.length > CHUNK_SIZE;
    if (recycle && into.buffer instanceof SharedArrayBuffer) {
      const { info } = await this.#decodeOnWorker(id, into);
      return into.subarray(0, info.rawLength);
    }
    const record = recycle ? (this.#records.pop() ?? newRecord(false)) : undefined;
    try {
      const { info, stored } = await this.readStored(id, record);
      return this.decodeStored(info, stored, into);
    } finally {
      if (record && this.#records.length < MAX_SPARE_RECORDS) this.#records.push(record);
    }
  }

  /** ChunkSource.readChunkAndWrite: readChunk into shared memory, and the decoding worker writes `plan`. */
  async readChunkAndWrite(id: string, into: Buffer, plan: ChunkWritePlan): Promise<ChunkWriteOutcome> {
    if (!(into.buffer instanceof SharedArrayBuffer) || into.length <= CHUNK_SIZE) {
      throw new TypeError('readChunkAndWrite needs CHUNK_SIZE + 1 bytes of shared memory');
    }
    return (await this.#decodeOnWorker(id, into, plan)).written ?? { ok: true, ownersDenied: 0 };
  }

  /**
   * Has a pool worker read the chunk's record into shared memory, check it and decode it
   * (and write `plan`): this thread only looks the chunk up, and has no read to start and
   * finish per chunk while the workers are busy writing.
   */
  async #decodeOnWorker(
    id: string,
    into: Buffer,
    plan?: ChunkWritePlan,
  ): Promise<{ info: ChunkInfo; written?: ChunkWriteOutcome }> {
    const info = this.#info(id);
    const problem = decodeArgumentProblem(id, info.codec, info.rawLength);
    if (problem) throw this.#damaged(info, problem);
    const size = RECORD_HEADER_SIZE + info.storedLength;
    // A stored form longer than any chunk (which only a damaged index can claim) gets a record of its own.
    const spare = size <= RECORD_HEADER_SIZE + CHUNK_SIZE;
    const record = spare
      ? (this.#sharedRecords.pop() ?? newRecord(true))
      : Buffer.from(new SharedArrayBuffer(size));
    this.stats.chunksRead++;
    this.stats.idsRead.add(id);
    try {
      const r = await CompressPool.shared().decodeAndWrite(
        id,
        info.codec,
        record.subarray(RECORD_HEADER_SIZE, size),
        into,
        info.rawLength,
        plan,
        { fd: this.#c.fh.fd, position: info.offset },
      );
      if (r.readError !== undefined) {
        const { message, code } = r.readError;
        const err = Object.assign(new Error(message), code ? { code } : {});
        throw ioError(this.path, `read chunk ${id} at offset ${info.offset} of`, err);
      }
      if (r.damage !== undefined) throw this.#damaged(info, r.damage);
      return r.written ? { info, written: r.written } : { info };
    } finally {
      if (spare && this.#sharedRecords.length < MAX_SPARE_RECORDS) this.#sharedRecords.push(record);
    }
  }

  /**
   * A chunk's raw bytes from stored bytes read by readStored or readStoredInto, checked against
   * its id (E_CHUNK_CORRUPT naming the image and what the chunk holds). With `into` as readChunk.
   */
  decodeStored(info: ChunkInfo, stored: Buffer, into?: Buffer): Buffer {
    try {
      return decodeChunk(info.id, info.codec, stored, info.rawLength, into);
    } catch (err) {
      const reason = err instanceof ImageError ? err.details.reason : undefined;
      throw this.#damaged(info, typeof reason === 'string' ? reason : String(err), err);
    }
  }

  /** The chunk's stored bytes, record header checked; read into `record` when given (the result is a view of it). */
  async readStored(id: string, record?: Buffer): Promise<{ info: ChunkInfo; stored: Buffer }> {
    const info = this.#info(id);
    let rec: Buffer;
    try {
      rec = await readAt(this.#c.fh, info.offset, RECORD_HEADER_SIZE + info.storedLength, record);
    } catch (err) {
      throw ioError(this.path, `read chunk ${id} at offset ${info.offset} of`, err);
    }
    this.stats.chunksRead++;
    this.stats.idsRead.add(id);
    if (rec.length < RECORD_HEADER_SIZE + info.storedLength) {
      throw this.#damaged(info, 'the file ends inside its record');
    }
    this.#checkHeader(info, rec);
    return { info, stored: rec.subarray(RECORD_HEADER_SIZE) };
  }

  /**
   * readStored, with the stored bytes read into the start of `into` (the result is a view of it,
   * at offset 0) and the record header beside: a sender recycles its read buffers this way, where
   * a fresh buffer per chunk left the garbage collector behind by a hundred MiB of them.
   */
  async readStoredInto(id: string, into: Buffer): Promise<{ info: ChunkInfo; stored: Buffer }> {
    const info = this.#info(id);
    if (into.length < info.storedLength) return this.readStored(id);
    const header = Buffer.allocUnsafe(RECORD_HEADER_SIZE);
    const stored = into.subarray(0, info.storedLength);
    let got: number;
    try {
      got = (await this.#c.fh.readv([header, stored], info.offset)).bytesRead;
    } catch (err) {
      throw ioError(this.path, `read chunk ${id} at offset ${info.offset} of`, err);
    }
    // A short read (the file ends early, or the kernel stopped short) is told apart by the plain path.
    if (got < RECORD_HEADER_SIZE + info.storedLength) return this.readStored(id);
    this.stats.chunksRead++;
    this.stats.idsRead.add(id);
    this.#checkHeader(info, header);
    return { info, stored };
  }

  #checkHeader(info: ChunkInfo, header: Buffer): void {
    const rh = decodeRecordHeader(header);
    const ok =
      rh &&
      rh.type === RECORD_CHUNK &&
      rh.codec === info.codec &&
      rh.storedLength === info.storedLength &&
      rh.rawLength === info.rawLength &&
      rh.sha.toString('hex') === info.id;
    if (!ok) throw this.#damaged(info, 'its record header is damaged');
  }

  async close(): Promise<void> {
    await this.#c.fh.close();
  }

  /** The chunk's index entry; E_CHUNK_MISSING when the image does not hold it. */
  #info(id: string): ChunkInfo {
    const info = this.chunk(id);
    if (info) return info;
    const where = describeUsage(chunkUsage(this.manifest, id));
    throw new ImageError('E_CHUNK_MISSING', `${this.path} does not hold chunk ${id} (${where})`, {
      path: this.path,
      chunk: id,
      usage: chunkUsage(this.manifest, id),
    });
  }

  #damaged(info: ChunkInfo, reason: string, cause?: unknown): ImageError {
    const usage = chunkUsage(this.manifest, info.id);
    return new ImageError(
      'E_CHUNK_CORRUPT',
      `${this.path}: chunk ${info.id} at offset ${info.offset} is damaged (${reason}); it holds data of ${describeUsage(usage)}`,
      { path: this.path, chunk: info.id, offset: info.offset, reason, usage },
      { cause },
    );
  }
}
