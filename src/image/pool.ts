/**
 * Compression on every core. A pool of worker threads is shared by all writers in
 * the process (two captures at once still use each core once). Workers are unref'd
 * while idle so an idle pool never keeps the process alive.
 *
 * Measured against zlib's async zstd on the libuv threadpool (bench/…, 2 cores):
 * see the report; workers won because zlib's async path copies output in
 * chunkSize pieces and the threadpool is shared with fs I/O.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';

import type { CompressionLevel } from './types.ts';

interface Pending {
  resolve: (r: { codec: number; stored: Buffer }) => void;
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

  /** Compresses a private copy of `raw`, so the caller may reuse its buffer at once. */
  compress(raw: Buffer, level: CompressionLevel): Promise<{ codec: number; stored: Buffer }> {
    const copy = new Uint8Array(new ArrayBuffer(raw.length));
    copy.set(raw);
    const slot = this.#pick();
    const seq = ++this.#seq;
    return new Promise((resolve, reject) => {
      slot.jobs.set(seq, { resolve, reject });
      if (slot.jobs.size === 1) slot.worker.ref();
      slot.worker.postMessage({ seq, level, raw: copy }, [copy.buffer]);
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
    worker.on('message', (m: { seq: number; codec?: number; stored?: Uint8Array; error?: string }) => {
      const p = slot.jobs.get(m.seq);
      if (!p) return;
      slot.jobs.delete(m.seq);
      if (slot.jobs.size === 0) worker.unref();
      if (m.error !== undefined || m.stored === undefined || m.codec === undefined) {
        p.reject(new Error(`compression worker failed: ${m.error ?? 'no result'}`));
      } else {
        p.resolve({
          codec: m.codec,
          stored: Buffer.from(m.stored.buffer, m.stored.byteOffset, m.stored.byteLength),
        });
      }
    });
    worker.on('error', (err) => failAll(err));
    worker.on('exit', (code) => failAll(new Error(`compression worker exited with code ${code}`)));
    worker.unref();
    this.#slots.push(slot);
    return slot;
  }
}
