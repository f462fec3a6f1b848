/**
 * Writing an image: create (a new file, under `<path>.partial` until commit) or
 * append (the next generation after the current trailer). Chunks are hashed on the
 * caller's thread, compressed on every core, and appended as they finish; the
 * caller is held back only while too many bytes are in flight.
 *
 * Crash and failure rules: a created image appears under its name only after a
 * complete, fsynced commit; an append never rewrites a byte of the old generation
 * and, on failure, truncates the file back to its old length.
 */
import { slotLease } from './lease.ts';
import { link, open, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { dirname } from 'node:path';

import { writeAll } from '../file-write.ts';
import { CODEC_NONE, chunkId, decodeArgumentProblem } from './codec.ts';
import { ImageError } from './errors.ts';
import {
  HEADER_SIZE,
  RECORD_CHUNK,
  TRAILER_SIZE,
  encodeGenerationTail,
  encodeHeader,
  encodeRecordHeader,
  indexEntryAt,
  type IndexEntry,
} from './format.ts';
import { manifestProblem, manifestReferences } from './manifest.ts';
import { encodeManifest, type EncodedManifest } from './manifest-encoding.ts';
import { CompressPool } from './pool.ts';
import { beginJournal, checkNotBusy, endJournal } from './journal.ts';
import { ioError, readAt } from './io.ts';
import { openContainer } from './reader.ts';
import {
  CHUNK_SIZE,
  COMPRESSION_LEVELS,
  FORMAT_VERSION,
  type ChunkLease,
  type ChunkRef,
  type ChunkSink,
  type CompressionLevel,
  type QueuedChunk,
  type Manifest,
} from './types.ts';
import { describeUsage } from './usage.ts';
import { count } from '../wording.ts';

/**
 * Chunks accepted but not yet on disk before putChunk makes its caller wait: one
 * being compressed and one queued behind it per core, plus two being written, so
 * every core stays busy while memory stays bounded (6 x 4 MiB on a 2-core machine).
 */
export const IN_FLIGHT_SLOTS = Math.min(32, 2 * availableParallelism() + 2);
export const MAX_IN_FLIGHT_BYTES = IN_FLIGHT_SLOTS * CHUNK_SIZE;
/** Bytes written between background flushes (fdatasync) of the image file. */
const SYNC_EVERY = 64 * 1024 * 1024;

interface WriterState {
  path: string;
  file: string;
  fh: FileHandle;
  mode: 'create' | 'append';
  level: CompressionLevel;
  overwrite: boolean;
  baseLength: number;
  generation: number;
  previousTrailer: number;
  imageId: string;
  index: Map<string, IndexEntry>;
}

export class ImageWriter implements ChunkSink {
  /** The image's final path. */
  readonly path: string;
  readonly level: CompressionLevel;
  /** Chunks stored by this writer (unique) and their raw / on-disk payload sizes; deduplicated puts counted apart. */
  readonly stats = { chunksStored: 0, chunksDeduplicated: 0, rawBytes: 0, storedBytes: 0 };
  #s: WriterState;
  #end: number;
  #inflight = new Map<string, Promise<void>>();
  /** queueChunk jobs whose id is not known yet. */
  #unnamed = new Set<Promise<void>>();
  #pending = new Map<string, { slot: number; rawLength: number }>();
  /** Shared memory holding in-flight chunks, one CHUNK_SIZE slot each; workers compress in place. */
  #sab: SharedArrayBuffer | undefined;
  /** putStored only: where a worker decodes each slot's stored bytes to check them, rawLength + 1 bytes a slot. */
  #checkSab: SharedArrayBuffer | undefined;
  #freeSlots: number[] = [];
  #waiters: Array<() => void> = [];
  #failure: Error | undefined;
  #closed = false;
  #unsynced = 0;
  #syncing: Promise<void> | undefined;
  #aborting: Promise<void> | undefined;

  private constructor(s: WriterState) {
    this.#s = s;
    this.path = s.path;
    this.level = s.level;
    this.#end = s.baseLength;
  }

  static async create(
    path: string,
    opts: { level: CompressionLevel; overwrite?: boolean },
  ): Promise<ImageWriter> {
    if (!COMPRESSION_LEVELS.includes(opts.level)) {
      throw new ImageError('E_MANIFEST_INVALID', `unknown compression level ${String(opts.level)}`, {
        level: opts.level,
      });
    }
    const overwrite = opts.overwrite === true;
    if (!overwrite && (await exists(path))) {
      throw new ImageError('E_IMAGE_EXISTS', `${path} already exists; refusing to overwrite it`, { path });
    }
    const file = `${path}.partial`;
    let fh: FileHandle;
    try {
      // A leftover .partial is a capture that never committed: nothing refers to it.
      fh = await open(file, 'w');
      await writeAll(fh, [encodeHeader({ version: FORMAT_VERSION, flags: 0, imageId: '' })], 0);
    } catch (err) {
      throw ioError(file, 'create image', err);
    }
    return new ImageWriter({
      path,
      file,
      fh,
      mode: 'create',
      level: opts.level,
      overwrite,
      baseLength: HEADER_SIZE,
      generation: 0,
      previousTrailer: 0,
      imageId: '',
      index: new Map(),
    });
  }

  static async append(path: string): Promise<{ writer: ImageWriter; manifest: Manifest }> {
    await checkNotBusy(path);
    const c = await openContainer(path, 'r+');
    try {
      const trailer = await readAt(c.fh, c.trailerOffset, TRAILER_SIZE);
      await beginJournal(path, {
        baseLength: c.fileSize,
        generation: c.trailer.generation,
        trailer: trailer.toString('hex'),
      });
    } catch (err) {
      await c.fh.close().catch(() => {});
      throw err;
    }
    const index = new Map<string, IndexEntry>();
    for (let i = 0; i < c.trailer.chunkCount; i++) {
      const e = indexEntryAt(c.index, i);
      index.set(e.id, e);
    }
    const writer = new ImageWriter({
      path,
      file: path,
      fh: c.fh,
      mode: 'append',
      level: c.manifest.level,
      overwrite: false,
      baseLength: c.fileSize,
      generation: c.trailer.generation,
      previousTrailer: c.trailerOffset,
      imageId: c.manifest.imageId,
      index,
    });
    return { writer, manifest: c.manifest };
  }

  hasChunk(id: string): boolean {
    return this.#s.index.has(id) || this.#inflight.has(id);
  }

  async putChunk(raw: Buffer): Promise<ChunkRef> {
    this.#checkChunk(raw);
    const id = chunkId(raw);
    const ref = { id, rawLength: raw.length };
    if (this.hasChunk(id)) {
      this.stats.chunksDeduplicated++;
      return ref;
    }
    // Registered before waiting for a slot so a concurrent put of the same content dedups.
    let started!: () => void;
    const gate = new Promise<void>((resolve) => (started = resolve));
    const job = gate
      .then(() => this.#inflightJob(id))
      .catch((err: unknown) => {
        this.#failure ??= err instanceof ImageError ? err : ioError(this.#s.file, 'write chunk to', err);
        this.#wakeAll();
      })
      .finally(() => this.#inflight.delete(id));
    this.#inflight.set(id, job);
    let slot: number;
    try {
      slot = await this.#acquireSlot();
    } catch (err) {
      started();
      throw err;
    }
    // The caller may reuse `raw` once we return: copy it into our slot now.
    raw.copy(this.#slotBuffer(slot));
    this.#pending.set(id, { slot, rawLength: raw.length });
    started();
    this.#check();
    return ref;
  }

  /**
   * The pipelined putChunk: resolves as soon as `raw` is copied (the caller may reuse
   * it), while a worker names and compresses the chunk; `ref` settles with its id.
   * The caller's thread does no hashing, which is what keeps a capture's walk ahead
   * of the compressors. A chunk that turns out to be stored already is dropped after
   * compression, so this suits data that rarely repeats in whole chunks (packs of
   * files, pieces of files) better than raw disk blocks.
   */
  async queueChunk(raw: Buffer): Promise<QueuedChunk> {
    this.#checkChunk(raw);
    const slot = await this.#acquireSlot();
    raw.copy(this.#slotBuffer(slot));
    return this.#queueSlot(slot, raw.length);
  }

  /** queueChunk for callers that fill the slot themselves: a capture reads files straight into it. */
  async leaseChunk(): Promise<ChunkLease> {
    this.#check();
    const slot = await this.#acquireSlot();
    return slotLease({
      buf: this.#slotBuffer(slot),
      release: () => this.#releaseSlot(slot),
      check: () => this.#check(),
      queue: (length) => this.#queueSlot(slot, length),
    });
  }

  /**
   * Stores a chunk that arrives compressed already (an upload: the workstation spent its
   * own CPU on it) as it is, once a worker has decoded it and found that it is the chunk
   * `id` names: a chunk record never holds bytes that do not match its id, whoever sent
   * them. Resolves when the record is written (durable with commit), with false when the
   * image already had the chunk. Bytes that are not the chunk are refused with
   * E_CHUNK_CORRUPT and change nothing: the writer goes on.
   */
  async putStored(id: string, codec: number, rawLength: number, stored: Buffer): Promise<boolean> {
    this.#check();
    const refuse = (why: string): never => {
      throw new ImageError('E_CHUNK_CORRUPT', `chunk ${id} is damaged: ${why}`, { chunk: id, reason: why });
    };
    const problem = decodeArgumentProblem(id, codec, rawLength);
    if (problem) refuse(problem);
    if (!Buffer.isBuffer(stored)) throw new TypeError('stored bytes must be a Buffer');
    if (rawLength > CHUNK_SIZE) refuse(`${rawLength} bytes exceed the ${CHUNK_SIZE}-byte chunk limit`);
    // Content that does not shrink is stored as is, so stored bytes never outgrow the raw ones (or a slot).
    if (codec === CODEC_NONE ? stored.length !== rawLength : stored.length >= rawLength) {
      refuse(`${stored.length} stored bytes cannot hold ${rawLength} raw bytes with codec ${codec}`);
    }
    for (;;) {
      if (this.#s.index.has(id)) {
        this.stats.chunksDeduplicated++;
        return false;
      }
      const busy = this.#inflight.get(id);
      if (!busy) break;
      // The same chunk is on its way in; if those bytes turn out damaged, these may still be good.
      await busy;
      this.#check();
    }
    const slot = await this.#acquireSlot();
    if (this.#s.index.has(id) || this.#inflight.has(id)) {
      this.#releaseSlot(slot);
      return this.putStored(id, codec, rawLength, stored);
    }
    stored.copy(this.#slotBuffer(slot));
    this.#checkSab ??= new SharedArrayBuffer(IN_FLIGHT_SLOTS * (CHUNK_SIZE + 1));
    const into = Buffer.from(this.#checkSab, slot * (CHUNK_SIZE + 1), CHUNK_SIZE + 1);
    const work = (async () => {
      const damage = await CompressPool.shared().decode(
        id,
        codec,
        this.#slotBuffer(slot).subarray(0, stored.length),
        into,
        rawLength,
      );
      if (damage !== undefined) refuse(damage);
      this.#check();
      await this.#write(id, slot, rawLength, codec, stored.length);
    })().finally(() => {
      this.#inflight.delete(id);
      this.#releaseSlot(slot);
    });
    this.#inflight.set(
      id,
      work.then(
        () => {},
        (err: unknown) => {
          // Damaged bytes are the sender's problem; anything else (the disk) is the image's.
          if (err instanceof ImageError && (err.code === 'E_CHUNK_CORRUPT' || this.#closed)) return;
          this.#failure ??= err instanceof ImageError ? err : ioError(this.#s.file, 'write chunk to', err);
          this.#wakeAll();
        },
      ),
    );
    await work;
    return true;
  }

  #slotBuffer(slot: number): Buffer {
    return Buffer.from(this.#sab!, slot * CHUNK_SIZE, CHUNK_SIZE);
  }

  #queueSlot(slot: number, rawLength: number): QueuedChunk {
    const named = this.#nameAndStore(slot, rawLength);
    const job = named.then(
      () => {},
      (err: unknown) => {
        this.#failure ??= err instanceof ImageError ? err : ioError(this.#s.file, 'write chunk to', err);
        this.#wakeAll();
      },
    );
    this.#unnamed.add(job);
    void job.finally(() => this.#unnamed.delete(job));
    // Failures also surface from commit; a caller that stops listening must not leave this unhandled.
    named.catch(() => {});
    return { ref: named.then((id) => ({ id, rawLength })) };
  }

  async #nameAndStore(slot: number, rawLength: number): Promise<string> {
    let slotHeld = true;
    try {
      const r = await CompressPool.shared().compress(this.#sab!, slot * CHUNK_SIZE, rawLength, this.level, {
        hash: true,
      });
      const id = r.id!;
      if (this.hasChunk(id)) {
        this.stats.chunksDeduplicated++;
        return id;
      }
      const write = this.#write(id, slot, rawLength, r.codec, r.storedLength).finally(() => {
        this.#inflight.delete(id);
        this.#releaseSlot(slot);
      });
      slotHeld = false;
      this.#inflight.set(id, write);
      await write;
      return id;
    } finally {
      if (slotHeld) this.#releaseSlot(slot);
    }
  }

  /**
   * Waits for every pending chunk, checks the manifest against the stored chunks,
   * writes manifest, index and trailer, fsyncs and (create) renames into place.
   * The writer is closed afterwards. On any failure the image is left exactly as
   * before (append) or not created (create), and the error is thrown. Resolves with
   * the manifest as committed (generation, level and format version filled in).
   */
  async commit(manifest: Manifest): Promise<Manifest> {
    this.#check();
    try {
      await this.#settle();
      if (this.#failure) throw this.#failure;
      const generation = this.#s.generation + 1;
      const m: Manifest = { ...manifest, formatVersion: FORMAT_VERSION, generation, level: this.level };
      const problem = manifestProblem(m);
      if (problem) {
        throw new ImageError('E_MANIFEST_INVALID', `cannot commit ${this.path}: ${problem}`, {
          path: this.path,
        });
      }
      if (this.#s.mode === 'append' && m.imageId !== this.#s.imageId) {
        throw new ImageError(
          'E_MANIFEST_INVALID',
          `cannot commit ${this.path}: the manifest's image id ${m.imageId} is not this image's ${this.#s.imageId}`,
          { path: this.path },
        );
      }
      this.#checkReferences(m);
      let encoded: EncodedManifest;
      try {
        encoded = await encodeManifest(m);
      } catch (err) {
        if (err instanceof ImageError) err.message = `cannot commit ${this.path}: ${err.message}`;
        throw err;
      }
      await this.#writeCommit(encoded, generation, m.imageId);
      this.#closed = true;
      if (this.#s.mode === 'append') await endJournal(this.path);
      return m;
    } catch (err) {
      await this.abort().catch(() => {});
      throw err;
    }
  }

  /** Drops everything written since create/append; safe to call more than once. */
  abort(): Promise<void> {
    // A second caller (the capture unwinding after a signal aborted us) waits for the same cleanup.
    if (this.#aborting) return this.#aborting;
    if (this.#closed) return Promise.resolve();
    this.#aborting = this.#abort();
    return this.#aborting;
  }

  async #abort(): Promise<void> {
    this.#closed = true;
    this.#wakeAll();
    await this.#settle();
    const { fh, file, mode, baseLength } = this.#s;
    try {
      if (mode === 'append') {
        await fh.truncate(baseLength);
        await fh.sync();
      }
    } finally {
      await fh.close().catch(() => {});
      if (mode === 'create') await unlink(file).catch(() => {});
    }
    if (mode === 'append') await endJournal(this.path);
  }

  #check(): void {
    if (this.#failure) throw this.#failure;
    if (this.#closed) {
      throw new ImageError('E_IMAGE_IO', `the writer of ${this.path} is already committed or aborted`, {
        path: this.path,
      });
    }
  }

  async #settle(): Promise<void> {
    while (this.#inflight.size > 0 || this.#unnamed.size > 0 || this.#syncing) {
      await Promise.all([...this.#inflight.values(), ...this.#unnamed, this.#syncing]);
    }
  }

  #checkChunk(raw: Buffer): void {
    this.#check();
    if (!Buffer.isBuffer(raw)) throw new TypeError('a chunk must be a Buffer');
    if (raw.length > CHUNK_SIZE) {
      throw new ImageError(
        'E_CHUNK_SIZE',
        `a chunk of ${raw.length} bytes exceeds the ${CHUNK_SIZE}-byte limit`,
        {
          rawLength: raw.length,
        },
      );
    }
  }

  async #acquireSlot(): Promise<number> {
    if (!this.#sab) {
      this.#sab = new SharedArrayBuffer(IN_FLIGHT_SLOTS * CHUNK_SIZE);
      this.#freeSlots = Array.from({ length: IN_FLIGHT_SLOTS }, (_, i) => i);
    }
    while (this.#freeSlots.length === 0) {
      this.#check();
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
    this.#check();
    return this.#freeSlots.pop()!;
  }

  #releaseSlot(slot: number): void {
    this.#freeSlots.push(slot);
    this.#wakeAll();
  }

  /** Waiters re-check for a slot, a failure or closing; there are never more than a few. */
  #wakeAll(): void {
    for (const w of this.#waiters.splice(0)) w();
  }

  async #inflightJob(id: string): Promise<void> {
    const p = this.#pending.get(id);
    if (!p) return; // never got a slot: putChunk already threw
    this.#pending.delete(id);
    try {
      await this.#store(id, p.slot, p.rawLength);
    } finally {
      this.#releaseSlot(p.slot);
    }
  }

  async #store(id: string, slot: number, rawLength: number): Promise<void> {
    const { codec, storedLength } =
      this.level === 'none' || rawLength === 0
        ? { codec: CODEC_NONE, storedLength: rawLength }
        : await CompressPool.shared().compress(this.#sab!, slot * CHUNK_SIZE, rawLength, this.level);
    await this.#write(id, slot, rawLength, codec, storedLength);
  }

  async #write(
    id: string,
    slot: number,
    rawLength: number,
    codec: number,
    storedLength: number,
  ): Promise<void> {
    if (this.#closed) return;
    const offset = slot * CHUNK_SIZE;
    const head = encodeRecordHeader({
      type: RECORD_CHUNK,
      codec,
      rawLength,
      storedLength,
      sha: Buffer.from(id, 'hex'),
    });
    const at = this.#end;
    this.#end += head.length + storedLength;
    await writeAll(this.#s.fh, [head, Buffer.from(this.#sab!, offset, storedLength)], at);
    this.#s.index.set(id, { id, offset: at, codec, storedLength, rawLength });
    this.stats.chunksStored++;
    this.stats.rawBytes += rawLength;
    this.stats.storedBytes += storedLength;
    this.#unsynced += head.length + storedLength;
    if (this.#unsynced >= SYNC_EVERY && !this.#syncing) {
      // Flushed while capturing, so commit's fsync finds little left to write.
      this.#unsynced = 0;
      this.#syncing = this.#s.fh
        .datasync()
        .catch((err: unknown) => {
          this.#failure ??= ioError(this.#s.file, 'flush', err);
        })
        .finally(() => (this.#syncing = undefined));
    }
  }

  #checkReferences(m: Manifest): void {
    const missing = new Map<string, string[]>();
    for (const ref of manifestReferences(m)) {
      const e = this.#s.index.get(ref.chunk);
      if (!e) {
        let l = missing.get(ref.chunk);
        if (!l) missing.set(ref.chunk, (l = []));
        l.push(describeUsage([ref.use]));
        continue;
      }
      if (ref.chunkOffset + ref.length > e.rawLength) {
        throw new ImageError(
          'E_EXTENT_RANGE',
          `cannot commit ${this.path}: ${describeUsage([ref.use])} reads bytes ${ref.chunkOffset}..${ref.chunkOffset + ref.length} of chunk ${ref.chunk}, which holds only ${e.rawLength}`,
          { path: this.path, chunk: ref.chunk, use: ref.use },
        );
      }
    }
    if (missing.size > 0) {
      const [first, uses] = missing.entries().next().value as [string, string[]];
      throw new ImageError(
        'E_CHUNK_MISSING',
        `cannot commit ${this.path}: ${count(missing.size, 'chunk')} referenced by the manifest ${missing.size === 1 ? 'was' : 'were'} never stored, e.g. ${first} (${uses[0]})`,
        { path: this.path, chunks: [...missing.keys()].slice(0, 100), missingCount: missing.size },
      );
    }
  }

  async #writeCommit(manifest: EncodedManifest, generation: number, imageId: string): Promise<void> {
    const { fh, file } = this.#s;
    try {
      const manifestOffset = this.#end;
      const tail = encodeGenerationTail({
        manifest,
        index: this.#s.index.values(),
        chunkCount: this.#s.index.size,
        generation,
        previousTrailer: this.#s.previousTrailer,
        at: manifestOffset,
      });
      // Data first, then the trailer in its own synced write: a crash between them leaves no valid trailer at EOF
      // rather than a trailer over unsynced records.
      await writeAll(fh, tail.records, manifestOffset);
      if (this.#s.mode === 'create') {
        await writeAll(fh, [encodeHeader({ version: FORMAT_VERSION, flags: 0, imageId })], 0);
      }
      await fh.sync();
      await writeAll(fh, [tail.trailer], tail.trailerOffset);
      await fh.truncate(tail.trailerOffset + TRAILER_SIZE);
      await fh.sync();
      await fh.close();
    } catch (err) {
      throw ioError(file, 'commit image', err);
    }
    if (this.#s.mode === 'create') await this.#publish();
  }

  async #publish(): Promise<void> {
    const { file, path, overwrite } = this.#s;
    try {
      if (overwrite) {
        await rename(file, path);
      } else {
        // link() fails if the name appeared meanwhile, where rename() would silently replace it.
        await link(file, path);
        await unlink(file);
      }
    } catch (err) {
      await unlink(file).catch(() => {});
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new ImageError(
          'E_IMAGE_EXISTS',
          `${path} appeared while the image was written; refusing to overwrite it`,
          {
            path,
          },
        );
      }
      throw ioError(path, 'publish image', err);
    }
    await fsyncDir(dirname(path));
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r').catch(() => undefined);
  if (!fh) return;
  await fh.sync().catch(() => {});
  await fh.close().catch(() => {});
}
