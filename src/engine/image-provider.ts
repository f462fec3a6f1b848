/**
 * An image file (one file set of it) as the transport's ChunkProvider. Apart from multicast.ts,
 * the restore side, so that a sender loads the image reader and not the restore machinery (a
 * server's sending thread, send-worker.ts, is loaded ahead of each session and kept).
 */
import { basename } from 'node:path';

import { chunksForFileset } from '../image/fileset.ts';
import { ImageReader } from '../image/reader.ts';
import { TransportError } from '../transport/errors.ts';
import type { ChunkInfo, ChunkProvider } from '../transport/types.ts';
import type { ImageMeta } from './multicast.ts';

/** Serves the chunks one file set of an image needs, in image-file order, each verified on first read. */
export async function imageProvider(imagePath: string, fileset: number): Promise<ChunkProvider> {
  const reader = await ImageReader.open(imagePath);
  try {
    const chunks: Array<ChunkInfo & { offset: number }> = [];
    for (const id of chunksForFileset(reader.manifest, fileset)) {
      const info = reader.chunk(id);
      if (!info) {
        // readStored names the file/volume that uses the missing chunk.
        await reader.readStored(id);
        throw new TransportError('E_CONSUMER', `${imagePath} lacks chunk ${id}`);
      }
      chunks.push(info);
    }
    chunks.sort((a, b) => a.offset - b.offset);
    const verified = new Set<string>();
    const meta: ImageMeta = { kind: 'image', fileset, image: basename(imagePath), manifest: reader.manifest };
    return {
      chunks: chunks.map(({ id, codec, storedLength, rawLength }) => ({
        id,
        codec,
        storedLength,
        rawLength,
      })),
      meta,
      async readStored(id: string): Promise<Buffer> {
        const { info, stored } = await reader.readStored(id);
        if (!verified.has(id)) {
          // A damaged image must fail on the sender, not leave every receiver re-requesting a chunk forever.
          await reader.readChunk(id);
          verified.add(id);
        }
        return stored.length === info.storedLength ? stored : Buffer.from(stored);
      },
      close: () => reader.close(),
    };
  } catch (e) {
    await reader.close().catch(() => {});
    throw e;
  }
}
