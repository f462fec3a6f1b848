/**
 * Reclaims the space of chunks no manifest reference uses any more (after rm,
 * or older generations' data). Writes a new file beside the old one, copying
 * stored bytes after verifying them, and renames it over the original only when
 * complete: on any failure the original is untouched. The image keeps its id and
 * generation; older generations are dropped (they are what compaction reclaims).
 */
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';

import { decodeChunk } from './codec.ts';
import {
  RECORD_CHUNK,
  encodeGenerationTail,
  encodeHeader,
  encodeRecordHeader,
  type IndexEntry,
} from './format.ts';
import { manifestReferences } from './manifest.ts';
import { encodeManifest } from './manifest-encoding.ts';
import { ioError } from './io.ts';
import { ImageReader } from './reader.ts';
import { FORMAT_VERSION } from './types.ts';
import { writeAll } from './writer.ts';

export interface CompactResult {
  bytesBefore: number;
  bytesAfter: number;
  chunksDropped: number;
}

export async function compactImage(
  path: string,
  opts: { onProgress?: (done: number, total: number) => void } = {},
): Promise<CompactResult> {
  const reader = await ImageReader.open(path);
  const tmp = `${path}.compact.partial`;
  let fh: FileHandle | undefined;
  try {
    const m = reader.manifest;
    const keep = new Set<string>();
    for (const ref of manifestReferences(m)) keep.add(ref.chunk);
    const infos = [...reader.chunkInfos()].filter((i) => keep.has(i.id)).sort((a, b) => a.offset - b.offset);
    const dropped = reader.chunkCount - infos.length;

    try {
      fh = await open(tmp, 'w');
    } catch (err) {
      throw ioError(tmp, 'create', err);
    }
    const entries: IndexEntry[] = [];
    let end = 0;
    const write = async (bufs: Buffer[]): Promise<number> => {
      const at = end;
      end += bufs.reduce((n, b) => n + b.length, 0);
      try {
        await writeAll(fh!, bufs, at);
      } catch (err) {
        throw ioError(tmp, 'write', err);
      }
      return at;
    };
    await write([encodeHeader({ version: FORMAT_VERSION, flags: 0, imageId: m.imageId })]);
    let done = 0;
    for (const info of infos) {
      // A chunk that fails here throws E_CHUNK_CORRUPT naming its files: compaction never launders damage.
      const { stored } = await reader.readStored(info.id);
      try {
        decodeChunk(info.id, info.codec, stored, info.rawLength);
      } catch {
        await reader.readChunk(info.id);
      }
      const head = encodeRecordHeader({
        type: RECORD_CHUNK,
        codec: info.codec,
        rawLength: info.rawLength,
        storedLength: info.storedLength,
        sha: Buffer.from(info.id, 'hex'),
      });
      const offset = await write([head, stored]);
      entries.push({ ...info, offset });
      opts.onProgress?.(++done, infos.length);
    }

    const tail = encodeGenerationTail({
      manifest: await encodeManifest(m),
      index: entries,
      chunkCount: entries.length,
      generation: reader.generation,
      previousTrailer: 0,
      at: end,
    });
    await write(tail.records);
    await write([tail.trailer]);
    try {
      await fh.sync();
      await fh.close();
      fh = undefined;
      await rename(tmp, path);
    } catch (err) {
      throw ioError(path, 'replace', err);
    }
    const dirFh = await open(dirname(path), 'r').catch(() => undefined);
    await dirFh?.sync().catch(() => {});
    await dirFh?.close().catch(() => {});
    return { bytesBefore: reader.fileSize, bytesAfter: end, chunksDropped: dropped };
  } catch (err) {
    await fh?.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    throw err;
  } finally {
    await reader.close();
  }
}
