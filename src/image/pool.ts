/**
 * Compression on every core. A pool of worker threads is shared by all writers in
 * the process (two captures at once still use each core once). Workers are unref'd
 * while idle so an idle pool never keeps the process alive.
 *
 * Workers rather than zlib's async zstd on the libuv threadpool: that pool is shared
 * with all fs I/O (a capture reads files through it), and workers can compress in
 * place in shared memory, which keeps chunk-sized garbage off the writer's thread.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';

import { CODEC_NONE, CODEC_ZSTD, LEVEL_PARAMS } from './codec.ts';
import type { CompressionLevel } from './types.ts';

/**
 * The worker, as plain JavaScript: a TypeScript worker file costs ~0.5 s of start-up
 * per thread (the type-stripping loader initialises in every isolate); this starts in
 * ~80 ms. Built-ins come from process.getBuiltinModule because an eval'd worker is
 * CommonJS or ESM depending on the parent's --input-type. It compresses a slot of shared memory in place: on return the slot holds the
 * stored form, so no chunk-sized buffer crosses threads. Content that does not shrink
 * is left as is (CODEC_NONE), as encodeChunk does.
 *
 * zstd output buffers are external memory V8 collects lazily (tens of MiB per thread);
 * collecting this tiny heap every other chunk cut peak RSS of a capture from ~270 to
 * ~180 MiB for ~1% CPU. The flag that exposes gc is process-wide, so it is switched
 * back off at once: other code's new contexts must not find a global \`gc\`.
 */
const WORKER_SOURCE = `{
const { parentPort } = process.getBuiltinModule('node:worker_threads');
const zlib = process.getBuiltinModule('node:zlib');
const collect = (() => {
  if (typeof globalThis.gc === 'function') return globalThis.gc;
  const v8 = process.getBuiltinModule('node:v8');
  try {
    v8.setFlagsFromString('--expose-gc');
    return process.getBuiltinModule('node:vm').runInNewContext('gc');
  } catch {
    return undefined;
  } finally {
    v8.setFlagsFromString('--no-expose-gc');
  }
})();
let jobs = 0;
parentPort.on('message', (job) => {
  try {
    const slot = Buffer.from(job.sab, job.offset, job.length);
    const out = zlib.zstdCompressSync(slot, { params: job.params });
    if (out.length < slot.length) {
      out.copy(slot, 0);
      parentPort.postMessage({ seq: job.seq, codec: job.zstd, storedLength: out.length });
    } else {
      parentPort.postMessage({ seq: job.seq, codec: job.none, storedLength: job.length });
    }
  } catch (err) {
    parentPort.postMessage({ seq: job.seq, error: String((err && err.message) || err) });
  }
  if (++jobs % 2 === 0 && typeof collect === 'function') collect();
});
}
`;

interface Pending {
  resolve: (r: { codec: number; storedLength: number }) => void;
  reject: (e: Error) => void;
}

interface Slot {
  worker: Worker;
  jobs: Map<number, Pending>;
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
   * the stored form (the raw bytes untouched when the codec is CODEC_NONE).
   */
  compress(
    sab: SharedArrayBuffer,
    offset: number,
    length: number,
    level: CompressionLevel,
  ): Promise<{ codec: number; storedLength: number }> {
    const params = LEVEL_PARAMS[level];
    if (!params) return Promise.reject(new TypeError(`level ${level} does not compress`));
    const slot = this.#pick();
    const seq = ++this.#seq;
    return new Promise((resolve, reject) => {
      slot.jobs.set(seq, { resolve, reject });
      if (slot.jobs.size === 1) slot.worker.ref();
      slot.worker.postMessage({ seq, params, sab, offset, length, zstd: CODEC_ZSTD, none: CODEC_NONE });
    });
  }

  /** Stops the workers; pending jobs fail. */
  async close(): Promise<void> {
    const slots = this.#slots;
    this.#slots = [];
    await Promise.all(slots.map((s) => s.worker.terminate()));
    if (shared === this) shared = undefined;
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
      this.#slots = this.#slots.filter((s) => s !== slot);
      for (const p of slot.jobs.values()) p.reject(err);
      slot.jobs.clear();
    };
    worker.on('message', (m: { seq: number; codec?: number; storedLength?: number; error?: string }) => {
      const p = slot.jobs.get(m.seq);
      if (!p) return;
      slot.jobs.delete(m.seq);
      if (slot.jobs.size === 0) worker.unref();
      if (m.error !== undefined || m.storedLength === undefined || m.codec === undefined) {
        p.reject(new Error(`compression worker failed: ${m.error ?? 'no result'}`));
      } else {
        p.resolve({ codec: m.codec, storedLength: m.storedLength });
      }
    });
    worker.on('error', (err) => failAll(err));
    worker.on('exit', (code) => failAll(new Error(`compression worker exited with code ${code}`)));
    worker.unref();
    this.#slots.push(slot);
    return slot;
  }
}
