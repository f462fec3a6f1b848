/**
 * Adapters between the transport and images: an image file (one file set of it) as
 * a ChunkProvider, and a restore target as a ChunkConsumer. The session's `meta`
 * carries the manifest and the file set; it arrives over the control channel, which
 * is authenticated when a key is used, and is checked before anything is written.
 */
import { openRestore } from '../engine/restore.ts';
import type { RestoreSink } from '../engine/types.ts';
import { chunksForFileset, decodeChunk, ImageReader } from '../image/index.ts';
import { manifestProblem } from '../image/manifest.ts';
import type { Manifest } from '../image/types.ts';
import { TransportError } from './errors.ts';
import type { ChunkConsumer, ChunkDecoder, ChunkInfo, ChunkProvider, SessionInfo } from './types.ts';

export interface ImageMeta {
  kind: 'image';
  fileset: number;
  manifest: Manifest;
}

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
    const meta: ImageMeta = { kind: 'image', fileset, manifest: reader.manifest };
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

/** The image codec's decoder: decompresses and checks the hash. */
export const imageDecoder: ChunkDecoder = decodeChunk;

/** Restores the session's image onto `target`. No resume: prepare recreates the target, so `has` is always false. */
export async function restoreConsumer(
  session: SessionInfo,
  target: string,
  opts: { force?: boolean; onWarning?: (m: string) => void } = {},
): Promise<ChunkConsumer> {
  const meta = session.meta as Partial<ImageMeta> | null;
  if (!meta || meta.kind !== 'image' || !Number.isInteger(meta.fileset)) {
    throw new TransportError(
      'E_CONSUMER',
      `session from ${session.sender} does not carry an image (was it sent with --raw?)`,
    );
  }
  const problem = manifestProblem(meta.manifest);
  if (problem)
    throw new TransportError('E_CONSUMER', `session from ${session.sender} sent a bad manifest: ${problem}`);
  const sink: RestoreSink = await openRestore(meta.manifest as Manifest, target, {
    fileset: meta.fileset as number,
    force: opts.force,
    onWarning: opts.onWarning,
  });
  const sent = new Set(session.chunks.map((c) => c.id));
  const absent = [...sink.needed].find((id) => !sent.has(id));
  if (absent) {
    throw new TransportError(
      'E_CONSUMER',
      `restoring onto ${target} needs chunk ${absent}, which the session does not send; nothing was written`,
    );
  }
  return {
    has: () => false,
    prepare: () => sink.prepare(),
    async apply(id: string, raw: Buffer): Promise<void> {
      if (sink.needed.has(id)) await sink.applyChunk(id, raw);
    },
    finish: () => sink.finish(),
    abort: (reason: unknown) => sink.abort(reason),
  };
}
