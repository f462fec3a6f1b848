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

import { workerExecArgv } from '../worker-argv.ts';
import { CODEC_NONE, CODEC_ZSTD, LEVEL_PARAMS } from './codec.ts';
import { RECORD_HEADER_SIZE } from './record.ts';
import type {
  DirsOutcome,
  PoolJob,
  PoolReply,
  TextOpenJob,
  TextWriteJob,
  UnnumberedJob,
  WarmJob,
} from './pool-messages.ts';
import type { ChunkWriteOutcome, ChunkWritePlan, CompressionLevel } from './types.ts';

export type { DirsOutcome } from './pool-messages.ts';

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
    const sab = stored.buffer;
    const outSab = into.buffer;
    if (!(sab instanceof SharedArrayBuffer) || !(outSab instanceof SharedArrayBuffer)) {
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
          sab,
          offset: stored.byteOffset,
          length: stored.length,
          outSab,
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
    slot.worker.postMessage({ stream, open: true, params } satisfies TextOpenJob);
    let open = true;
    return {
      write: (text: string) => {
        if (!open) throw new Error('the text stream is already ended');
        slot.worker.postMessage({ stream, text } satisfies TextWriteJob);
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
    worker.postMessage({ warm: true } satisfies WarmJob);
    worker.once('online', () => this.warm());
  }

  /** Sends a job whose reply settles `pending`; the worker keeps the process alive while replies are due. */
  #post(slot: Slot, pending: Pending, message: UnnumberedJob): void {
    const seq = ++this.#seq;
    slot.jobs.set(seq, pending);
    if (slot.jobs.size === 1) slot.worker.ref();
    slot.worker.postMessage({ seq, ...message } satisfies PoolJob);
  }

  #pick(): Slot {
    let best: Slot | undefined;
    for (const s of this.#slots) if (!best || s.jobs.size < best.jobs.size) best = s;
    if (best && (best.jobs.size === 0 || this.#slots.length >= this.size)) return best;
    return this.#spawn();
  }

  #spawn(): Slot {
    // The worker is pool-worker.ts (what a job does, and why, is told there). It loads only
    // small modules: a thread's start is part of a restore's wait for its first chunks. A
    // TypeScript worker also loads the type stripper in its own isolate (measured here: first
    // result in ~55 ms instead of ~30 ms) unless Node's compile cache holds its stripped
    // source, which it does under the launchers (bin/launch.js).
    const worker = new Worker(new URL('./pool-worker.ts', import.meta.url), {
      execArgv: workerExecArgv(),
    });
    const slot: Slot = { worker, jobs: new Map() };
    const failAll = (err: Error): void => {
      slot.failure ??= err;
      this.#slots = this.#slots.filter((s) => s !== slot);
      for (const p of slot.jobs.values()) p.reject(err);
      slot.jobs.clear();
    };
    worker.on('message', (m: PoolReply) => {
      const p = slot.jobs.get(m.seq);
      if (!p) return;
      slot.jobs.delete(m.seq);
      if (slot.jobs.size === 0) worker.unref();
      if ('made' in m && p.resolveMade) {
        p.resolveMade(m.made);
      } else if ('decoded' in m && p.resolveDecoded) {
        p.resolveDecoded({
          ...(m.damage !== undefined ? { damage: m.damage } : {}),
          ...(m.readError !== undefined ? { readError: m.readError } : {}),
          ...(m.written !== undefined ? { written: m.written } : {}),
        });
      } else if ('text' in m && p.resolveText) {
        const t = m.text;
        p.resolveText({
          rawLength: t.rawLength,
          sha: Buffer.from(t.sha.buffer, t.sha.byteOffset, t.sha.byteLength),
          stored: Buffer.from(t.stored.buffer, t.stored.byteOffset, t.stored.byteLength),
        });
      } else if (!('codec' in m)) {
        p.reject(new Error(`compression worker failed: ${'error' in m ? m.error : 'no result'}`));
      } else {
        p.resolve(
          m.id === undefined
            ? { codec: m.codec, storedLength: m.storedLength }
            : { codec: m.codec, storedLength: m.storedLength, id: m.id },
        );
      }
    });
    worker.on('error', (err) => failAll(err));
    worker.on('exit', (code) => failAll(new Error(`compression worker exited with code ${code}`)));
    worker.unref();
    this.#slots.push(slot);
    return slot;
  }
}
