/**
 * Compression and hashing on every core. A pool of worker threads is shared by all
 * writers in the process (two captures at once still use each core once). Workers are
 * unref'd while idle so an idle pool never keeps the process alive.
 *
 * Workers rather than zlib's async zstd on the libuv threadpool: that pool is shared
 * with all fs I/O (a capture reads files through it), and workers can work in place
 * in shared memory, which keeps chunk-sized garbage off the writer's thread.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';

import { WRITE_PIECE } from '../file-write.ts';
import { CODEC_NONE, CODEC_ZSTD, LEVEL_PARAMS } from './codec.ts';
import { RECORD_CHUNK, RECORD_HEADER_SIZE, RECORD_MAGIC } from './format.ts';
import {
  PLAN_CHOWN,
  PLAN_CLEAR,
  PLAN_CREATE,
  PLAN_FIELDS,
  PLAN_META,
  PLAN_SYMLINK,
  PLAN_TRUNCATE,
} from './plan.ts';
import type { ChunkWriteOutcome, ChunkWritePlan, CompressionLevel } from './types.ts';

/**
 * The worker, as plain JavaScript: a TypeScript worker file costs ~0.5 s of start-up
 * per thread (the type-stripping loader initialises in every isolate); this starts in
 * ~80 ms. Built-ins come from process.getBuiltinModule because an eval'd worker is
 * CommonJS or ESM depending on the parent's --input-type.
 *
 * A job is a slot of shared memory: the worker names it (SHA-256) unless the caller
 * already did, and compresses it in place, so on return the slot holds the stored
 * form and no chunk-sized buffer crosses threads. Content that does not shrink is
 * left as is (CODEC_NONE), as encodeChunk does.
 *
 * zstdCompressSync allocates a fresh zstd context and fresh output buffers for every
 * call: external memory that V8 collects lazily, which cost either ~100 MiB of RSS or
 * a forced GC per chunk. Instead each worker keeps one zstd context per parameter set
 * and one output buffer, and drives the context through the zlib handle (the same
 * writeSync call zlib's own sync path makes, but without closing the context at the
 * end of the frame: zstd starts the next frame on the same context). If that handle
 * is not there (a future Node), the worker falls back to zstdCompressSync. The output
 * buffer has room for zstd's worst case, so a frame always ends and the context always
 * keeps its parameters; content that did not shrink is then stored as it is.
 */
const WORKER_SOURCE = `{
const { parentPort } = process.getBuiltinModule('node:worker_threads');
const zlib = process.getBuiltinModule('node:zlib');
const crypto = process.getBuiltinModule('node:crypto');
const END = zlib.constants.ZSTD_e_end;
const engines = new Map();
let out = Buffer.alloc(0);

function engineFor(params) {
  const key = JSON.stringify(params);
  let e = engines.get(key);
  if (!e) {
    const z = new zlib.ZstdCompress({ params });
    z.on('error', () => engines.delete(key));
    const direct = z._handle && typeof z._handle.writeSync === 'function' && z._writeState instanceof Uint32Array;
    e = { z, direct };
    engines.set(key, e);
  }
  return e;
}

/** ZSTD_COMPRESSBOUND: the most a frame of n input bytes can take. */
function bound(n) {
  return n + (n >>> 8) + (n < 131072 ? (131072 - n) >>> 11 : 0);
}

/** Compressed length in out, or -1 when it would not be smaller than the input. */
function compress(slot, params) {
  const e = engineFor(params);
  if (!e.direct) {
    const packed = zlib.zstdCompressSync(slot, { params });
    if (packed.length >= slot.length) return -1;
    if (out.length < packed.length) out = Buffer.allocUnsafe(packed.length);
    packed.copy(out, 0);
    return packed.length;
  }
  // Room for the whole frame, so every frame ends in one call and the context is never
  // reset: a reset zstd context forgets its parameters and goes on at zstd's default
  // level, which made every chunk after the first incompressible one slower and its
  // size depend on which worker had seen what.
  const room = bound(slot.length);
  if (out.length < room) out = Buffer.allocUnsafe(room);
  e.z._handle.writeSync(END, slot, 0, slot.length, out, 0, room);
  if (e.z.destroyed) throw new Error('zstd failed to compress a chunk');
  if (e.z._writeState[1] !== 0) {
    engines.delete(JSON.stringify(params));
    throw new Error('zstd left part of a chunk unread');
  }
  const n = room - e.z._writeState[0];
  return n < slot.length ? n : -1;
}

/**
 * A decode job's record read from the image by the worker itself (job.read: the image's
 * descriptor and the record's place), its header checked as reader.ts's readStored
 * checks it. The record goes into the header's room before job.sab/offset, where the
 * stored bytes then are. Returns why the record is damaged, or undefined; an I/O error
 * is thrown.
 */
const RECORD_MAGIC = '${RECORD_MAGIC.toString('latin1')}';
const RECORD_HEADER_SIZE = ${RECORD_HEADER_SIZE};
const RECORD_CHUNK = ${RECORD_CHUNK};
function readRecord(job) {
  const size = RECORD_HEADER_SIZE + job.length;
  const rec = Buffer.from(job.sab, job.offset - RECORD_HEADER_SIZE, size);
  let done = 0;
  while (done < size) {
    const n = fs.readSync(job.read.fd, rec, done, size - done, job.read.position + done);
    if (n === 0) break;
    done += n;
  }
  if (done < size) return 'the file ends inside its record';
  const ok =
    rec.latin1Slice(0, 4) === RECORD_MAGIC &&
    zlib.crc32(rec.subarray(0, 52)) === rec.readUInt32LE(52) &&
    rec[4] === RECORD_CHUNK &&
    rec[5] === job.codec &&
    rec.readUInt32LE(8) === job.rawLength &&
    rec.readUInt32LE(12) === job.length &&
    rec.hexSlice(16, 48) === job.id;
  return ok ? undefined : 'its record header is damaged';
}

/**
 * Decode jobs (decode): stored bytes in one slot of shared memory, decompressed into
 * another and proved against the chunk's id, as codec.ts's decodeChunk does. Returns
 * why the chunk is damaged, or undefined.
 */
let dz;
function decodeJob(job) {
  const stored = Buffer.from(job.sab, job.offset, job.length);
  // One spare byte: output that fills it means the chunk is longer than it claims.
  const room = job.rawLength + 1;
  const out = Buffer.from(job.outSab, job.outOffset, room);
  let n;
  if (job.codec === job.none) {
    if (job.length > room) return 'it holds ' + job.length + ' bytes instead of ' + job.rawLength;
    n = stored.copy(out);
  } else {
    if (!dz) {
      dz = new zlib.ZstdDecompress();
      // Errors also show as destroyed right after writeSync; the event itself must not go unhandled.
      dz.on('error', () => {});
    }
    const direct = dz._handle && typeof dz._handle.writeSync === 'function' && dz._writeState instanceof Uint32Array;
    try {
      if (direct) {
        // A damaged chunk before this one may have left the context inside a frame.
        dz._handle.reset();
        // As codec.ts's decompressInto: a frame written as a stream may need another call.
        let inOff = 0;
        n = 0;
        for (;;) {
          const inLen = stored.length - inOff;
          const outLen = room - n;
          dz._handle.writeSync(END, stored, inOff, inLen, out, n, outLen);
          if (dz.destroyed) throw new Error('zstd rejected the data');
          const consumed = inLen - dz._writeState[1];
          const produced = outLen - dz._writeState[0];
          inOff += consumed;
          n += produced;
          if (dz._writeState[1] === 0) break;
          if (consumed === 0 && produced === 0) throw new Error('zstd left input over');
        }
      } else {
        n = zlib.zstdDecompressSync(stored, { maxOutputLength: room }).copy(out);
      }
    } catch {
      if (dz.destroyed) dz = undefined;
      return 'its compressed data does not decompress';
    }
  }
  if (n !== job.rawLength) return 'it holds ' + n + ' bytes instead of ' + job.rawLength;
  if (crypto.hash('sha256', out.subarray(0, n), 'hex') !== job.id) return 'its content does not match its SHA-256';
  return undefined;
}

/**
 * A decoded chunk's writes (ChunkWritePlan, laid out as plan.ts describes): each file
 * created or opened, its ranges written, its owner, mode and times set through the
 * descriptor. Returns the outcome.
 */
const fs = process.getBuiltinModule('node:fs');
// Writes in pieces for the reason file-write.ts gives.
const WRITE_PIECE = ${WRITE_PIECE};
const PLAN_FIELDS = ${PLAN_FIELDS};
// As restore.ts's utimeArg: Node takes a negative number of seconds for "now".
const utimeArg = (seconds) => (seconds < 0 ? String(seconds) : seconds);
function writeJob(raw, plan) {
  const C = fs.constants;
  let ownersDenied = 0;
  const names = plan.count > 0 ? plan.names.split('\\0') : [];
  const nums = plan.nums;
  const extra = plan.extra;
  let x = 0;
  let p = 0;
  for (let i = 0; i < plan.count; i++) {
    const rel = names[i];
    const flags = nums[p];
    const r0 = p + PLAN_FIELDS;
    const r1 = r0 + 3 * nums[p + 7];
    let path = plan.prefix + rel;
    let symlink;
    if (extra !== undefined && x < extra.length && extra[x].index === i) {
      if (extra[x].path !== undefined) path = extra[x].path;
      symlink = extra[x].symlink;
      x++;
    }
    // Owner, mode and times come with the write when PLAN_META is set.
    const meta = (flags & ${PLAN_META}) !== 0;
    const chown = (flags & ${PLAN_CHOWN}) !== 0;
    const uid = nums[p + 1];
    const gid = nums[p + 2];
    const mode = nums[p + 3];
    const atime = nums[p + 4];
    const mtime = nums[p + 5];
    const create = (flags & ${PLAN_CREATE}) !== 0;
    let fd;
    try {
      for (let r = r0; r < r1; r += 3) {
        if (nums[r + 1] + nums[r + 2] > raw.length) {
          return { ok: false, rel, reason: 'extent', extent: { chunkOffset: nums[r + 1], length: nums[r + 2] } };
        }
      }
      if ((flags & ${PLAN_CLEAR}) !== 0) {
        let st;
        try {
          st = fs.lstatSync(path);
        } catch {}
        if (st && st.isDirectory()) return { ok: false, rel, reason: 'a directory is in the way' };
        if (st) fs.unlinkSync(path);
      }
      if ((flags & ${PLAN_SYMLINK}) !== 0) {
        fs.symlinkSync(symlink, path);
        if (meta) {
          try {
            if (chown) fs.lchownSync(path, uid, gid);
          } catch (err) {
            if (err.code !== 'EPERM' || plan.root) throw err;
            ownersDenied++;
          }
          fs.lutimesSync(path, utimeArg(atime), utimeArg(mtime));
        }
        continue;
      }
      // A file made with its metadata here gets its permission bits at creation (as tar does);
      // the mode is set again after chown only if the umask took bits or there are special ones.
      const bits = meta ? mode & 0o777 : 0o600;
      fd = create
        ? fs.openSync(path, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, bits)
        : fs.openSync(path, C.O_WRONLY | C.O_NOFOLLOW);
      if ((flags & ${PLAN_TRUNCATE}) !== 0) fs.ftruncateSync(fd, nums[p + 6]);
      for (let r = r0; r < r1; r += 3) {
        const fileOffset = nums[r];
        const chunkOffset = nums[r + 1];
        const length = nums[r + 2];
        let done = 0;
        while (done < length) {
          const n = Math.min(length - done, WRITE_PIECE);
          done += fs.writeSync(fd, raw, chunkOffset + done, n, fileOffset + done);
        }
      }
      if (meta) {
        try {
          if (chown) fs.fchownSync(fd, uid, gid);
        } catch (err) {
          if (err.code !== 'EPERM' || plan.root) throw err;
          ownersDenied++;
        }
        if (!create || mode !== bits || (bits & plan.umask) !== 0) fs.fchmodSync(fd, mode);
        fs.futimesSync(fd, utimeArg(atime), utimeArg(mtime));
      }
    } catch (err) {
      return { ok: false, rel, reason: String(err.message || err), code: err.code };
    } finally {
      if (fd !== undefined) fs.closeSync(fd);
      p = r1;
    }
  }
  return { ok: true, ownersDenied };
}

/** Text streams (textStream): each one SHA-256'd and zstd-compressed as a single frame. */
const texts = new Map();

function textJob(job) {
  if (job.open) {
    const z = zlib.createZstdCompress({ params: job.params });
    const t = { hash: crypto.createHash('sha256'), z, stored: [], storedLength: 0, rawLength: 0, error: undefined };
    z.on('data', (b) => {
      t.stored.push(b);
      t.storedLength += b.length;
    });
    z.on('error', (e) => (t.error ??= e));
    texts.set(job.stream, t);
    return;
  }
  const t = texts.get(job.stream);
  if (!t) throw new Error('unknown text stream');
  if (job.text !== undefined) {
    const b = Buffer.from(job.text, 'utf8');
    t.rawLength += b.length;
    t.hash.update(b);
    t.z.write(b);
    return;
  }
  texts.delete(job.stream);
  let reported = false;
  const done = () => {
    if (reported) return;
    reported = true;
    if (t.error) parentPort.postMessage({ seq: job.seq, error: String(t.error.message || t.error) });
    else {
      const stored = Buffer.concat(t.stored, t.storedLength);
      parentPort.postMessage({
        seq: job.seq,
        text: { sha: t.hash.digest(), stored, rawLength: t.rawLength },
      });
    }
  };
  t.z.on('end', done);
  t.z.on('error', done);
  t.z.end();
}

parentPort.on('message', (job) => {
  if (job.mkdirs) {
    // Folders, parents first, for a restore that fills them next (makeDirs).
    let i = 0;
    try {
      for (; i < job.mkdirs.length; i++) fs.mkdirSync(job.mkdirs[i], job.mode);
      parentPort.postMessage({ seq: job.seq, made: { ok: true } });
    } catch (err) {
      parentPort.postMessage({ seq: job.seq, made: { ok: false, index: i, reason: String(err.message || err), code: err.code } });
    }
    return;
  }
  if (job.warm) {
    // Loads what jobs use (zstd, the hash), so the first real job does not wait for it.
    crypto.hash('sha256', Buffer.alloc(0));
    zlib.zstdCompressSync(Buffer.alloc(1));
    return;
  }
  if (job.decode) {
    if (job.read) {
      let damage;
      try {
        damage = readRecord(job);
      } catch (err) {
        parentPort.postMessage({ seq: job.seq, decoded: true, readError: { message: String(err.message || err), code: err.code } });
        return;
      }
      if (damage !== undefined) {
        parentPort.postMessage({ seq: job.seq, decoded: true, damage });
        return;
      }
    }
    try {
      const damage = decodeJob(job);
      const written = damage === undefined && job.plan ? writeJob(Buffer.from(job.outSab, job.outOffset, job.rawLength), job.plan) : undefined;
      parentPort.postMessage({ seq: job.seq, decoded: true, damage, written });
    } catch (err) {
      parentPort.postMessage({ seq: job.seq, error: String((err && err.message) || err) });
    }
    return;
  }
  if (job.stream !== undefined) {
    try {
      textJob(job);
    } catch (err) {
      if (job.seq !== undefined) parentPort.postMessage({ seq: job.seq, error: String((err && err.message) || err) });
    }
    return;
  }
  try {
    const slot = Buffer.from(job.sab, job.offset, job.length);
    const id = job.hash ? crypto.hash('sha256', slot, 'hex') : undefined;
    const n = job.params && job.length > 0 ? compress(slot, job.params) : -1;
    if (n >= 0) {
      out.copy(slot, 0, 0, n);
      parentPort.postMessage({ seq: job.seq, id, codec: job.zstd, storedLength: n });
    } else {
      parentPort.postMessage({ seq: job.seq, id, codec: job.none, storedLength: job.length });
    }
  } catch (err) {
    parentPort.postMessage({ seq: job.seq, error: String((err && err.message) || err) });
  }
});
}
`;

/** What a text stream (textStream) amounts to: its UTF-8 length and SHA-256, and its zstd frame. */
export interface HashedText {
  rawLength: number;
  sha: Buffer;
  stored: Buffer;
}

export interface TextStream {
  /** Queues text; nothing is awaited, the worker takes it as it comes. */
  write(text: string): void;
  /** Resolves once the worker has hashed and compressed everything written. */
  end(): Promise<HashedText>;
  /** Drops the stream (after a failure on the writing side). */
  abort(): void;
}

/** What a decode job met: why the chunk is damaged (nothing: intact), the error reading its record, what its writes met. */
export interface DecodeOutcome {
  damage?: string;
  readError?: { message: string; code?: string };
  written?: ChunkWriteOutcome;
}

export interface PoolResult {
  codec: number;
  storedLength: number;
  /** The slot's SHA-256 (hex), when the job asked for it. */
  id?: string;
}

interface Pending {
  resolve: (r: PoolResult) => void;
  reject: (e: Error) => void;
  /** Text stream ends resolve with the text's digest instead. */
  resolveText?: (r: HashedText) => void;
  /** Decode jobs resolve with why the chunk is damaged (undefined: intact) and what their writes met. */
  resolveDecoded?: (r: DecodeOutcome) => void;
  resolveMade?: (r: DirsOutcome) => void;
}

/** What a makeDirs job met: all made, or the first folder that could not be. */
export type DirsOutcome = { ok: true } | { ok: false; index: number; reason: string; code?: string };

interface Slot {
  worker: Worker;
  jobs: Map<number, Pending>;
  /** Set once the worker is gone: a text stream pinned to it fails at end(). */
  failure?: Error;
}

let shared: CompressPool | undefined;

export class CompressPool {
  readonly size: number;
  #slots: Slot[] = [];
  #seq = 0;

  constructor(size = availableParallelism()) {
    this.size = Math.max(1, size);
  }

  static shared(): CompressPool {
    shared ??= new CompressPool();
    return shared;
  }

  /**
   * Compresses `length` bytes at `offset` of `sab` in place: on return the slot holds
   * the stored form (the raw bytes untouched when the codec is CODEC_NONE). With
   * `hash`, the result also carries the raw bytes' SHA-256, taken before compressing.
   * Level `none` only hashes.
   */
  compress(
    sab: SharedArrayBuffer,
    offset: number,
    length: number,
    level: CompressionLevel,
    opts: { hash?: boolean } = {},
  ): Promise<PoolResult> {
    const params = LEVEL_PARAMS[level];
    if (params === undefined) return Promise.reject(new TypeError(`unknown compression level ${level}`));
    const slot = this.#pick();
    return new Promise((resolve, reject) => {
      this.#post(
        slot,
        { resolve, reject },
        {
          params,
          hash: opts.hash === true,
          sab,
          offset,
          length,
          zstd: CODEC_ZSTD,
          none: CODEC_NONE,
        },
      );
    });
  }

  /**
   * Decodes a stored chunk (`stored`, a view of shared memory) into `into` (shared too,
   * more than rawLength bytes) and checks it against `id`, on a worker: a restore's
   * decompression and hashing then run beside its file writes. Resolves with why the
   * chunk is damaged, undefined when it is intact; `into` then holds its raw bytes.
   */
  decode(
    id: string,
    codec: number,
    stored: Buffer,
    into: Buffer,
    rawLength: number,
  ): Promise<string | undefined> {
    return this.decodeAndWrite(id, codec, stored, into, rawLength).then((r) => r.damage);
  }

  /**
   * decode, and when the chunk is intact and a plan is given, the same worker writes the
   * plan's files from the decoded bytes (a restore's writes then run on every core too).
   * With `read`, the worker first reads the chunk's record itself, from the image file's
   * descriptor at `position` into the header's room before `stored`, and checks the header
   * against the other arguments: the asking thread does no I/O for the chunk.
   */
  decodeAndWrite(
    id: string,
    codec: number,
    stored: Buffer,
    into: Buffer,
    rawLength: number,
    plan?: ChunkWritePlan,
    read?: { fd: number; position: number },
  ): Promise<DecodeOutcome> {
    if (!(stored.buffer instanceof SharedArrayBuffer) || !(into.buffer instanceof SharedArrayBuffer)) {
      return Promise.reject(new TypeError('decode needs views of shared memory'));
    }
    if (into.length <= rawLength)
      return Promise.reject(new RangeError('decode needs room for rawLength + 1 bytes'));
    if (read && stored.byteOffset < RECORD_HEADER_SIZE)
      return Promise.reject(
        new RangeError('reading a record needs room for its header before the stored bytes'),
      );
    const slot = this.#pick();
    return new Promise((resolveDecoded, reject) => {
      this.#post(
        slot,
        { resolve: () => {}, resolveDecoded, reject },
        {
          decode: true,
          id,
          codec,
          none: CODEC_NONE,
          sab: stored.buffer,
          offset: stored.byteOffset,
          length: stored.length,
          outSab: into.buffer,
          outOffset: into.byteOffset,
          rawLength,
          plan,
          read,
        },
      );
    });
  }

  /**
   * Creates folders, in the order given (parents first), with `mode`, on a worker: a
   * restore's 3k folders then appear while its own thread is busy with the entries.
   */
  makeDirs(paths: ReadonlyArray<string | Buffer>, mode: number): Promise<DirsOutcome> {
    const slot = this.#pick();
    return new Promise((resolveMade, reject) => {
      this.#post(slot, { resolve: () => {}, resolveMade, reject }, { mkdirs: paths, mode });
    });
  }

  /**
   * A text hashed and compressed by a worker while the caller produces the rest of it:
   * the manifest of a capture (17 MB of JSON for 55k files) was hashed on the main thread
   * and compressed by zlib's async stream, which only advances when the main thread's
   * event loop turns, so the two waited on each other at the end of every capture.
   */
  textStream(level: CompressionLevel): TextStream {
    const params = LEVEL_PARAMS[level];
    if (!params) throw new TypeError(`text streams need a compressing level, not ${level}`);
    const slot = this.#pick();
    const stream = ++this.#seq;
    slot.worker.postMessage({ stream, open: true, params });
    let open = true;
    return {
      write: (text: string) => {
        if (!open) throw new Error('the text stream is already ended');
        slot.worker.postMessage({ stream, text });
      },
      end: () => {
        if (!open) return Promise.reject(new Error('the text stream is already ended'));
        open = false;
        if (slot.failure) return Promise.reject(slot.failure);
        return new Promise<HashedText>((resolveText, reject) => {
          this.#post(slot, { resolve: () => {}, resolveText, reject }, { stream });
        });
      },
      abort: () => {
        if (!open) return;
        open = false;
        // Ending it is the only way to free the worker's side; nobody waits for the result.
        if (slot.failure) return;
        this.#post(slot, { resolve: () => {}, reject: () => {}, resolveText: () => {} }, { stream });
      },
    };
  }

  /** Stops the workers; pending jobs fail. */
  async close(): Promise<void> {
    const slots = this.#slots;
    this.#slots = [];
    await Promise.all(slots.map((s) => s.worker.terminate()));
    if (shared === this) shared = undefined;
  }

  /**
   * Starts every worker now: each takes ~50 ms to boot and load zstd, which a restore
   * would otherwise wait for at its first chunks, after the manifest is read.
   */
  warm(): void {
    if (this.#slots.length >= this.size) return;
    // One at a time: workers booting together took CPU from the thread reading the manifest
    // on a 2-core machine, the one thing a restore waits for at its start.
    const { worker } = this.#spawn();
    worker.postMessage({ warm: true });
    worker.once('online', () => this.warm());
  }

  /** Sends a job whose reply settles `pending`; the worker keeps the process alive while replies are due. */
  #post(slot: Slot, pending: Pending, message: Record<string, unknown>): void {
    const seq = ++this.#seq;
    slot.jobs.set(seq, pending);
    if (slot.jobs.size === 1) slot.worker.ref();
    slot.worker.postMessage({ seq, ...message });
  }

  #pick(): Slot {
    let best: Slot | undefined;
    for (const s of this.#slots) if (!best || s.jobs.size < best.jobs.size) best = s;
    if (best && (best.jobs.size === 0 || this.#slots.length >= this.size)) return best;
    return this.#spawn();
  }

  #spawn(): Slot {
    const worker = new Worker(WORKER_SOURCE, { eval: true });
    const slot: Slot = { worker, jobs: new Map() };
    const failAll = (err: Error): void => {
      slot.failure ??= err;
      this.#slots = this.#slots.filter((s) => s !== slot);
      for (const p of slot.jobs.values()) p.reject(err);
      slot.jobs.clear();
    };
    worker.on(
      'message',
      (m: {
        seq: number;
        codec?: number;
        storedLength?: number;
        id?: string;
        error?: string;
        text?: { sha: Uint8Array; stored: Uint8Array; rawLength: number };
        decoded?: boolean;
        damage?: string;
        readError?: { message: string; code?: string };
        written?: ChunkWriteOutcome;
        made?: DirsOutcome;
      }) => {
        const p = slot.jobs.get(m.seq);
        if (!p) return;
        slot.jobs.delete(m.seq);
        if (slot.jobs.size === 0) worker.unref();
        if (m.error === undefined && m.made && p.resolveMade) {
          p.resolveMade(m.made);
        } else if (m.error === undefined && m.decoded && p.resolveDecoded) {
          p.resolveDecoded({
            ...(m.damage !== undefined ? { damage: m.damage } : {}),
            ...(m.readError !== undefined ? { readError: m.readError } : {}),
            ...(m.written !== undefined ? { written: m.written } : {}),
          });
        } else if (m.error === undefined && m.text && p.resolveText) {
          const t = m.text;
          p.resolveText({
            rawLength: t.rawLength,
            sha: Buffer.from(t.sha.buffer, t.sha.byteOffset, t.sha.byteLength),
            stored: Buffer.from(t.stored.buffer, t.stored.byteOffset, t.stored.byteLength),
          });
        } else if (m.error !== undefined || m.storedLength === undefined || m.codec === undefined) {
          p.reject(new Error(`compression worker failed: ${m.error ?? 'no result'}`));
        } else {
          p.resolve(
            m.id === undefined
              ? { codec: m.codec, storedLength: m.storedLength }
              : { codec: m.codec, storedLength: m.storedLength, id: m.id },
          );
        }
      },
    );
    worker.on('error', (err) => failAll(err));
    worker.on('exit', (code) => failAll(new Error(`compression worker exited with code ${code}`)));
    worker.unref();
    this.#slots.push(slot);
    return slot;
  }
}
