/** In-memory ChunkSink + ChunkSource for tests: id = hex SHA-256 of the raw bytes, as in the image format. */
import { createHash } from 'node:crypto';
import type { ChunkRef, ChunkSink, ChunkSource } from '../../../src/image/types.ts';

export class MemChunkStore implements ChunkSink, ChunkSource {
  readonly chunks = new Map<string, Buffer>();
  puts = 0;

  async putChunk(raw: Buffer): Promise<ChunkRef> {
    this.puts++;
    const id = createHash('sha256').update(raw).digest('hex');
    // Copy: the contract lets the caller reuse nothing it handed over, but a test store must not alias anyway.
    if (!this.chunks.has(id)) this.chunks.set(id, Buffer.from(raw));
    return { id, rawLength: raw.length };
  }

  async readChunk(id: string): Promise<Buffer> {
    const b = this.chunks.get(id);
    if (!b) throw new Error(`chunk ${id} not in the test store`);
    return b;
  }
}
