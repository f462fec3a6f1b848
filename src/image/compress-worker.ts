/**
 * Worker side of the compression pool. The chunk arrives in a slot of shared
 * memory and its stored form goes back into the same slot, so no chunk-sized
 * buffer crosses threads or becomes garbage on the writer's thread.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { parentPort } from 'node:worker_threads';

import { CODEC_NONE, encodeChunk } from './codec.ts';
import type { CompressionLevel } from './types.ts';

interface Job {
  seq: number;
  level: CompressionLevel;
  sab: SharedArrayBuffer;
  offset: number;
  length: number;
}

// zstd's output buffers are external memory that V8 collects lazily (tens of MiB per
// thread); collecting this tiny heap every few chunks keeps peak RSS down for ~1% CPU.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as (() => void) | undefined;
let jobs = 0;

parentPort?.on('message', (job: Job) => {
  try {
    const slot = Buffer.from(job.sab, job.offset, job.length);
    const { codec, stored } = encodeChunk(slot, job.level);
    if (codec !== CODEC_NONE) stored.copy(slot, 0);
    parentPort?.postMessage({ seq: job.seq, codec, storedLength: stored.length });
  } catch (err) {
    parentPort?.postMessage({ seq: job.seq, error: err instanceof Error ? err.message : String(err) });
  }
  if (++jobs % 2 === 0 && typeof gc === 'function') gc();
});
