/**
 * Manual benchmark (not part of the test run): capture speed of a tree into the
 * in-memory store, and into a sink that only hashes (what the image writer must at
 * least do). Usage: node test/volume/files/capture-bench.ts [DIR]
 */
import { hash } from 'node:crypto';
import { captureTree } from '../../../src/volume/files/capture.ts';
import type { ChunkSink } from '../../../src/image/types.ts';
import { MemChunkStore } from './memstore.ts';

const root = process.argv[2] ?? '/usr/share';
const hashOnly: ChunkSink = {
  async putChunk(raw) {
    return { id: hash('sha256', raw, 'hex'), rawLength: raw.length };
  },
};
for (const [name, makeSink] of [
  ['memory store', () => new MemChunkStore()],
  ['hash-only sink', () => hashOnly],
] as const) {
  for (let run = 1; run <= 2; run++) {
    const t0 = performance.now();
    const entries = await captureTree(root, makeSink());
    const s = (performance.now() - t0) / 1000;
    const bytes = entries.reduce((n, e) => n + (e.size ?? 0), 0);
    console.log(
      `${name}, run ${run}: ${entries.length} entries, ${(bytes / 1e6).toFixed(0)} MB in ${s.toFixed(2)} s = ` +
        `${Math.round(entries.length / s)} entries/s, ${(bytes / 1e6 / s).toFixed(0)} MB/s`,
    );
  }
}
