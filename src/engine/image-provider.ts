/**
 * An image file (one file set of it) as the transport's ChunkProvider. Apart from multicast.ts,
 * the restore side, so that a sender loads the image reader and not the restore machinery (a
 * server's sending thread, send-worker.ts, is loaded ahead of each session and kept).
 */
import { basename } from 'node:path';

import { CODEC_NONE } from '../image/codec.ts';
import { chunksForFileset } from '../image/fileset.ts';
import { CHUNK_SIZE } from '../image/types.ts';
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
    let scratch: Buffer | undefined;
    const meta: ImageMeta = { kind: 'image', fileset, image: basename(imagePath), manifest: reader.manifest };
    return {
      chunks: chunks.map(({ id, codec, storedLength, rawLength }) => ({
        id,
        codec,
        storedLength,
        rawLength,
      })),
      meta,
      async readStored(id: string, into?: Buffer): Promise<Buffer> {
        const { info, stored } = into ? await reader.readStoredInto(id, into) : await reader.readStored(id);
        if (!verified.has(id)) {
          // A damaged image must fail on the sender, not leave every receiver re-requesting a chunk
          // forever. Checked on the bytes just read (reading the chunk again doubled the reads and
          // the garbage): a compressed one is decoded into memory kept for that.
          reader.decodeStored(
            info,
            stored,
            info.codec === CODEC_NONE ? undefined : (scratch ??= Buffer.allocUnsafe(CHUNK_SIZE + 1)),
          );
          verified.add(id);
        }
        return stored;
      },
      close: () => reader.close(),
    };
  } catch (e) {
    await reader.close().catch(() => {});
    throw e;
  }
}
