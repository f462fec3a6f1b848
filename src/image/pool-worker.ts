/**
 * A worker of the compression pool (pool.ts starts them; pool-messages.ts has the messages).
 * It imports only small modules of constants, so a thread starts fast (see pool.ts).
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
import crypto from 'node:crypto';
import fs from 'node:fs';
import { parentPort } from 'node:worker_threads';
import zlib from 'node:zlib';

import { WRITE_PIECE } from '../file-write.ts';
import type {
  CompressJob,
  DecodeJob,
  DecodeReply,
  PoolJob,
  PoolReply,
  TextJob,
  ZstdParams,
} from './pool-messages.ts';
import {
  PLAN_CHOWN,
  PLAN_CLEAR,
  PLAN_CREATE,
  PLAN_FIELDS,
  PLAN_META,
  PLAN_SYMLINK,
  PLAN_TRUNCATE,
} from './plan.ts';
import { RECORD_CHUNK, RECORD_HEADER_SIZE, RECORD_MAGIC } from './record.ts';
import type { ChunkWriteOutcome, ChunkWritePlan } from './types.ts';

const maybePort = parentPort;
if (!maybePort) throw new Error('pool-worker runs as a worker thread only');
const port = maybePort;
const post = (reply: PoolReply): void => port.postMessage(reply);

/** What Node's zlib streams keep inside (no public API): the native handle and its counters. */
interface ZlibInternals {
  _handle?: {
    writeSync(
      flush: number,
      input: Uint8Array,
      inOff: number,
      inLen: number,
      out: Uint8Array,
      outOff: number,
      outLen: number,
    ): void;
    reset(): void;
  } | null;
  /** [output bytes left, input bytes left] after the last writeSync. */
  _writeState?: Uint32Array;
  destroyed: boolean;
}
type Driven = ZlibInternals & { _handle: NonNullable<ZlibInternals['_handle']>; _writeState: Uint32Array };

/** Whether the stream can be driven through its handle (not so in some future Node). */
function drivable(z: ZlibInternals): z is Driven {
  return !!z._handle && typeof z._handle.writeSync === 'function' && z._writeState instanceof Uint32Array;
}

/** A job that failed as a whole: its error's message, or what was thrown. */
function messageOf(err: unknown): string {
  return String((err && (err as Error).message) || err);
}

/** Buffer's own slicers: no encoding lookup per call. Node has them, @types/node does not name them. */
type Sliced = Buffer & {
  latin1Slice(start: number, end: number): string;
  hexSlice(start: number, end: number): string;
};

const RECORD_MAGIC_TEXT = RECORD_MAGIC.toString('latin1');
const END = zlib.constants.ZSTD_e_end;
const engines = new Map<string, { z: zlib.ZstdCompress; direct: boolean }>();
let out = Buffer.alloc(0);

function engineFor(params: ZstdParams): { z: zlib.ZstdCompress; direct: boolean } {
  const key = JSON.stringify(params);
  let e = engines.get(key);
  if (!e) {
    const z = new zlib.ZstdCompress({ params });
    z.on('error', () => engines.delete(key));
    const direct = drivable(z as unknown as ZlibInternals);
    e = { z, direct };
    engines.set(key, e);
  }
  return e;
}

/** ZSTD_COMPRESSBOUND: the most a frame of n input bytes can take. */
function bound(n: number): number {
  return n + (n >>> 8) + (n < 131072 ? (131072 - n) >>> 11 : 0);
}

/** Compressed length in out, or -1 when it would not be smaller than the input. */
function compress(slot: Buffer, params: ZstdParams): number {
  const e = engineFor(params);
  if (!e.direct) {
    const packed = zlib.zstdCompressSync(slot, { params });
    if (packed.length >= slot.length) return -1;
    if (out.length < packed.length) out = Buffer.allocUnsafe(packed.length);
    packed.copy(out, 0);
    return packed.length;
  }
  const z = e.z as unknown as Driven;
  // Room for the whole frame, so every frame ends in one call and the context is never
  // reset: a reset zstd context forgets its parameters and goes on at zstd's default
  // level, which made every chunk after the first incompressible one slower and its
  // size depend on which worker had seen what.
  const room = bound(slot.length);
  if (out.length < room) out = Buffer.allocUnsafe(room);
  z._handle.writeSync(END, slot, 0, slot.length, out, 0, room);
  if (z.destroyed) throw new Error('zstd failed to compress a chunk');
  if (z._writeState[1] !== 0) {
    engines.delete(JSON.stringify(params));
    throw new Error('zstd left part of a chunk unread');
  }
  const n = room - (z._writeState[0] as number);
  return n < slot.length ? n : -1;
}

/**
 * A decode job's record read from the image by the worker itself (job.read: the image's
 * descriptor and the record's place), its header checked as reader.ts's readStored
 * checks it. The record goes into the header's room before job.sab/offset, where the
 * stored bytes then are. Returns why the record is damaged, or undefined; an I/O error
 * is thrown.
 */
function readRecord(job: DecodeJob, read: { fd: number; position: number }): string | undefined {
  const size = RECORD_HEADER_SIZE + job.length;
  const rec = Buffer.from(job.sab, job.offset - RECORD_HEADER_SIZE, size) as Sliced;
  let done = 0;
  while (done < size) {
    const n = fs.readSync(read.fd, rec, done, size - done, read.position + done);
    if (n === 0) break;
    done += n;
  }
  if (done < size) return 'the file ends inside its record';
  const ok =
    rec.latin1Slice(0, 4) === RECORD_MAGIC_TEXT &&
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
let dz: (zlib.ZstdDecompress & ZlibInternals) | undefined;
function decodeJob(job: DecodeJob): string | undefined {
  const stored = Buffer.from(job.sab, job.offset, job.length);
  // One spare byte: output that fills it means the chunk is longer than it claims.
  const room = job.rawLength + 1;
  const out = Buffer.from(job.outSab, job.outOffset, room);
  let n: number;
  if (job.codec === job.none) {
    if (job.length > room) return 'it holds ' + job.length + ' bytes instead of ' + job.rawLength;
    n = stored.copy(out);
  } else {
    if (!dz) {
      dz = new zlib.ZstdDecompress() as zlib.ZstdDecompress & ZlibInternals;
      // Errors also show as destroyed right after writeSync; the event itself must not go unhandled.
      dz.on('error', () => {});
    }
    const z = dz;
    try {
      if (drivable(z)) {
        // A damaged chunk before this one may have left the context inside a frame.
        z._handle.reset();
        // As codec.ts's decompressInto: a frame written as a stream may need another call.
        let inOff = 0;
        n = 0;
        for (;;) {
          const inLen = stored.length - inOff;
          const outLen = room - n;
          z._handle.writeSync(END, stored, inOff, inLen, out, n, outLen);
          if (z.destroyed) throw new Error('zstd rejected the data');
          const consumed = inLen - (z._writeState[1] as number);
          const produced = outLen - (z._writeState[0] as number);
          inOff += consumed;
          n += produced;
          if (z._writeState[1] === 0) break;
          if (consumed === 0 && produced === 0) throw new Error('zstd left input over');
        }
      } else {
        n = zlib.zstdDecompressSync(stored, { maxOutputLength: room }).copy(out);
      }
    } catch {
      if (z.destroyed) dz = undefined;
      return 'its compressed data does not decompress';
    }
  }
  if (n !== job.rawLength) return 'it holds ' + n + ' bytes instead of ' + job.rawLength;
  if (crypto.hash('sha256', out.subarray(0, n), 'hex') !== job.id)
    return 'its content does not match its SHA-256';
  return undefined;
}

/** An error a system call threw: its message and code. */
type SystemError = Error & { code?: string };

/**
 * A decoded chunk's writes (ChunkWritePlan, laid out as plan.ts describes): each file
 * created or opened, its ranges written, its owner, mode and times set through the
 * descriptor. Returns the outcome.
 */
// As restore.ts's utimeArg: Node takes a negative number of seconds for "now".
const utimeArg = (seconds: number): number | string => (seconds < 0 ? String(seconds) : seconds);
function writeJob(raw: Buffer, plan: ChunkWritePlan): ChunkWriteOutcome {
  const C = fs.constants;
  let ownersDenied = 0;
  const names = plan.count > 0 ? plan.names.split('\0') : [];
  const nums = plan.nums;
  const extra = plan.extra;
  let x = 0;
  let p = 0;
  for (let i = 0; i < plan.count; i++) {
    const rel = names[i] as string;
    const flags = nums[p] as number;
    const r0 = p + PLAN_FIELDS;
    const r1 = r0 + 3 * (nums[p + 7] as number);
    let path: string | Buffer = plan.prefix + rel;
    let symlink: string | Buffer | undefined;
    const e = extra !== undefined && x < extra.length ? extra[x] : undefined;
    if (e !== undefined && e.index === i) {
      if (e.path !== undefined) path = e.path;
      symlink = e.symlink;
      x++;
    }
    // Owner, mode and times come with the write when PLAN_META is set.
    const meta = (flags & PLAN_META) !== 0;
    const chown = (flags & PLAN_CHOWN) !== 0;
    const uid = nums[p + 1] as number;
    const gid = nums[p + 2] as number;
    const mode = nums[p + 3] as number;
    const atime = nums[p + 4] as number;
    const mtime = nums[p + 5] as number;
    const create = (flags & PLAN_CREATE) !== 0;
    let fd: number | undefined;
    try {
      for (let r = r0; r < r1; r += 3) {
        if ((nums[r + 1] as number) + (nums[r + 2] as number) > raw.length) {
          return {
            ok: false,
            rel,
            reason: 'extent',
            extent: { chunkOffset: nums[r + 1] as number, length: nums[r + 2] as number },
          };
        }
      }
      if ((flags & PLAN_CLEAR) !== 0) {
        let st: fs.Stats | undefined;
        try {
          st = fs.lstatSync(path);
        } catch {
          /* nothing there */
        }
        if (st && st.isDirectory()) return { ok: false, rel, reason: 'a directory is in the way' };
        if (st) fs.unlinkSync(path);
      }
      if ((flags & PLAN_SYMLINK) !== 0) {
        fs.symlinkSync(symlink as string | Buffer, path);
        if (meta) {
          try {
            if (chown) fs.lchownSync(path, uid, gid);
          } catch (err) {
            if ((err as SystemError).code !== 'EPERM' || plan.root) throw err;
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
      if ((flags & PLAN_TRUNCATE) !== 0) fs.ftruncateSync(fd, nums[p + 6]);
      for (let r = r0; r < r1; r += 3) {
        const fileOffset = nums[r] as number;
        const chunkOffset = nums[r + 1] as number;
        const length = nums[r + 2] as number;
        let done = 0;
        // In pieces (WRITE_PIECE) for the reason file-write.ts gives.
        while (done < length) {
          const n = Math.min(length - done, WRITE_PIECE);
          done += fs.writeSync(fd, raw, chunkOffset + done, n, fileOffset + done);
        }
      }
      if (meta) {
        try {
          if (chown) fs.fchownSync(fd, uid, gid);
        } catch (err) {
          if ((err as SystemError).code !== 'EPERM' || plan.root) throw err;
          ownersDenied++;
        }
        if (!create || mode !== bits || (bits & plan.umask) !== 0) fs.fchmodSync(fd, mode);
        fs.futimesSync(fd, utimeArg(atime), utimeArg(mtime));
      }
    } catch (err) {
      return { ok: false, rel, reason: messageOf(err), code: (err as SystemError).code };
    } finally {
      if (fd !== undefined) fs.closeSync(fd);
      p = r1;
    }
  }
  return { ok: true, ownersDenied };
}

/** Text streams (textStream): each one SHA-256'd and zstd-compressed as a single frame. */
interface Text {
  hash: crypto.Hash;
  z: zlib.ZstdCompress;
  stored: Buffer[];
  storedLength: number;
  rawLength: number;
  error: Error | undefined;
}
const texts = new Map<number, Text>();

function textJob(job: TextJob): void {
  if ('open' in job) {
    const z = zlib.createZstdCompress({ params: job.params });
    const t: Text = {
      hash: crypto.createHash('sha256'),
      z,
      stored: [],
      storedLength: 0,
      rawLength: 0,
      error: undefined,
    };
    z.on('data', (b: Buffer) => {
      t.stored.push(b);
      t.storedLength += b.length;
    });
    z.on('error', (e: Error) => (t.error ??= e));
    texts.set(job.stream, t);
    return;
  }
  const t = texts.get(job.stream);
  if (!t) throw new Error('unknown text stream');
  if ('text' in job) {
    const b = Buffer.from(job.text, 'utf8');
    t.rawLength += b.length;
    t.hash.update(b);
    t.z.write(b);
    return;
  }
  texts.delete(job.stream);
  let reported = false;
  const done = (): void => {
    if (reported) return;
    reported = true;
    if (t.error) post({ seq: job.seq, error: messageOf(t.error) });
    else {
      const stored = Buffer.concat(t.stored, t.storedLength);
      post({ seq: job.seq, text: { sha: t.hash.digest(), stored, rawLength: t.rawLength } });
    }
  };
  t.z.on('end', done);
  t.z.on('error', done);
  t.z.end();
}

function decodeAndWrite(job: DecodeJob): void {
  if (job.read) {
    let damage: string | undefined;
    try {
      damage = readRecord(job, job.read);
    } catch (err) {
      post({
        seq: job.seq,
        decoded: true,
        readError: { message: messageOf(err), code: (err as SystemError).code },
      });
      return;
    }
    if (damage !== undefined) {
      post({ seq: job.seq, decoded: true, damage });
      return;
    }
  }
  try {
    const damage = decodeJob(job);
    const written =
      damage === undefined && job.plan
        ? writeJob(Buffer.from(job.outSab, job.outOffset, job.rawLength), job.plan)
        : undefined;
    const reply: DecodeReply = { seq: job.seq, decoded: true, damage, written };
    post(reply);
  } catch (err) {
    post({ seq: job.seq, error: messageOf(err) });
  }
}

function compressJob(job: CompressJob): void {
  try {
    const slot = Buffer.from(job.sab, job.offset, job.length);
    const id = job.hash ? crypto.hash('sha256', slot, 'hex') : undefined;
    const n = job.params && job.length > 0 ? compress(slot, job.params) : -1;
    if (n >= 0) {
      out.copy(slot, 0, 0, n);
      post({ seq: job.seq, id, codec: job.zstd, storedLength: n });
    } else {
      post({ seq: job.seq, id, codec: job.none, storedLength: job.length });
    }
  } catch (err) {
    post({ seq: job.seq, error: messageOf(err) });
  }
}

port.on('message', (job: PoolJob) => {
  if ('mkdirs' in job) {
    // Folders, parents first, for a restore that fills them next (makeDirs).
    let i = 0;
    try {
      for (; i < job.mkdirs.length; i++) fs.mkdirSync(job.mkdirs[i] as string | Buffer, job.mode);
      post({ seq: job.seq, made: { ok: true } });
    } catch (err) {
      post({
        seq: job.seq,
        made: { ok: false, index: i, reason: messageOf(err), code: (err as SystemError).code },
      });
    }
    return;
  }
  if ('warm' in job) {
    // Loads what jobs use (zstd, the hash), so the first real job does not wait for it.
    crypto.hash('sha256', Buffer.alloc(0));
    zlib.zstdCompressSync(Buffer.alloc(1));
    return;
  }
  if ('decode' in job) {
    decodeAndWrite(job);
    return;
  }
  if ('stream' in job) {
    try {
      textJob(job);
    } catch (err) {
      if ('seq' in job) post({ seq: job.seq, error: messageOf(err) });
    }
    return;
  }
  compressJob(job);
});
