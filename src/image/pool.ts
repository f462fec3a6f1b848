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

import type { CompressionLevel } from './types.ts';

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
    const slot = this.#pick();
    const seq = ++this.#seq;
    return new Promise((resolve, reject) => {
      slot.jobs.set(seq, { resolve, reject });
      if (slot.jobs.size === 1) slot.worker.ref();
      slot.worker.postMessage({ seq, level, sab, offset, length });
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
    const worker = new Worker(new URL('./compress-worker.ts', import.meta.url));
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
