/** Worker side of the compression pool: one chunk in, its stored form out. */
import { parentPort } from 'node:worker_threads';

import { encodeChunk } from './codec.ts';
import type { CompressionLevel } from './types.ts';

interface Job {
  seq: number;
  level: CompressionLevel;
  raw: Uint8Array;
}

parentPort?.on('message', (job: Job) => {
  try {
    const raw = Buffer.from(job.raw.buffer, job.raw.byteOffset, job.raw.byteLength);
    const { codec, stored } = encodeChunk(raw, job.level);
    // Only a buffer that owns its whole ArrayBuffer can be transferred without copying.
    let out: Uint8Array = stored;
    if (stored.byteOffset !== 0 || stored.byteLength !== stored.buffer.byteLength) {
      out = new Uint8Array(new ArrayBuffer(stored.byteLength));
      out.set(stored);
    }
    parentPort?.postMessage({ seq: job.seq, codec, stored: out }, [out.buffer as ArrayBuffer]);
  } catch (err) {
    parentPort?.postMessage({ seq: job.seq, error: err instanceof Error ? err.message : String(err) });
  }
});
