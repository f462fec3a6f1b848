/**
 * Reclaims the space of data no manifest reference uses any more (after rm, or older
 * generations' data). Writes a new file beside the old one, copying stored bytes after
 * verifying them, and renames it over the original only when complete: on any failure
 * the original is untouched. The image keeps its id and generation; older generations
 * are dropped (they are what compaction reclaims).
 *
 * Chunks nothing uses are dropped. Packs of small files that are now mostly dead (a
 * removed file's bytes still sit in the pack its neighbours keep alive) are re-packed:
 * their live byte ranges are copied into new packs and the files' extents rewritten,
 * so `img rm` of many small files followed by compact gives the space back too.
 */
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';

import { writeAll } from '../file-write.ts';
import { chunkId, decodeChunk, encodeChunk } from './codec.ts';
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
import { CHUNK_SIZE, FORMAT_VERSION, type FileExtent, type Manifest } from './types.ts';

export interface CompactResult {
  bytesBefore: number;
  bytesAfter: number;
  chunksDropped: number;
  /** Mostly-dead packs whose live bytes moved into `packsWritten` new packs. */
  chunksRepacked: number;
  packsWritten: number;
}

/** A pack is re-packed when at least this share of it is dead, and at least REPACK_MIN_DEAD bytes. */
const REPACK_DEAD_SHARE = 0.25;
const REPACK_MIN_DEAD = 64 * 1024;

export async function compactImage(
  path: string,
  opts: { onProgress?: (done: number, total: number) => void } = {},
): Promise<CompactResult> {
  const reader = await ImageReader.open(path);
  const tmp = `${path}.compact.partial`;
  let fh: FileHandle | undefined;
  try {
    const m = reader.manifest;
    const live = liveRanges(m);
    const all = [...reader.chunkInfos()].filter((i) => live.has(i.id)).sort((a, b) => a.offset - b.offset);
    const dropped = reader.chunkCount - all.length;
    const repack = new Set(
      all
        .filter((i) => {
          const l = live.get(i.id)!;
          const dead = i.rawLength - l.bytes;
          return !l.pinned && dead >= REPACK_MIN_DEAD && dead >= i.rawLength * REPACK_DEAD_SHARE;
        })
        .map((i) => i.id),
    );
    const infos = all.filter((i) => !repack.has(i.id));

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
      opts.onProgress?.(++done, all.length);
    }

    // Live ranges of mostly-dead packs, packed afresh in file order; `moved` maps each range to its new home.
    const moved = new Map<string, Array<{ start: number; end: number; pack: number; at: number }>>();
    const packIds: string[] = [];
    const pack = Buffer.allocUnsafe(CHUNK_SIZE);
    let packPos = 0;
    const kept = new Set(entries.map((e) => e.id));
    const seal = async (): Promise<void> => {
      if (packPos === 0) return;
      const raw = pack.subarray(0, packPos);
      const id = chunkId(raw);
      packIds.push(id);
      packPos = 0;
      if (kept.has(id)) return;
      kept.add(id);
      const { codec, stored } = encodeChunk(raw, m.level);
      const head = encodeRecordHeader({
        type: RECORD_CHUNK,
        codec,
        rawLength: raw.length,
        storedLength: stored.length,
        sha: Buffer.from(id, 'hex'),
      });
      const offset = await write([head, stored]);
      entries.push({ id, offset, codec, storedLength: stored.length, rawLength: raw.length });
    };
    for (const info of all) {
      if (!repack.has(info.id)) continue;
      const raw = await reader.readChunk(info.id);
      const homes: Array<{ start: number; end: number; pack: number; at: number }> = [];
      for (const [start, end] of live.get(info.id)!.ranges) {
        if (packPos + (end - start) > CHUNK_SIZE) await seal();
        raw.copy(pack, packPos, start, end);
        homes.push({ start, end, pack: packIds.length, at: packPos });
        packPos += end - start;
      }
      moved.set(info.id, homes);
      opts.onProgress?.(++done, all.length);
    }
    await seal();
    rewriteExtents(m, moved, packIds);

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
    return {
      bytesBefore: reader.fileSize,
      bytesAfter: end,
      chunksDropped: dropped,
      chunksRepacked: repack.size,
      packsWritten: packIds.length,
    };
  } catch (err) {
    await fh?.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    throw err;
  } finally {
    await reader.close();
  }
}

interface Live {
  /** Merged [start, end) byte ranges of the chunk that references use, sorted. */
  ranges: Array<[number, number]>;
  bytes: number;
  /** Used whole by a raw volume or boot area: never re-packed. */
  pinned: boolean;
}

function liveRanges(m: Manifest): Map<string, Live> {
  const raw = new Map<string, { ranges: Array<[number, number]>; pinned: boolean }>();
  for (const ref of manifestReferences(m)) {
    let l = raw.get(ref.chunk);
    if (!l) raw.set(ref.chunk, (l = { ranges: [], pinned: false }));
    if (ref.use.kind !== 'file') l.pinned = true;
    l.ranges.push([ref.chunkOffset, ref.chunkOffset + ref.length]);
  }
  const out = new Map<string, Live>();
  for (const [id, l] of raw) {
    l.ranges.sort((a, b) => a[0] - b[0]);
    const merged: Array<[number, number]> = [];
    for (const [s, e] of l.ranges) {
      const last = merged[merged.length - 1];
      if (last && s <= last[1]) last[1] = Math.max(last[1], e);
      else merged.push([s, e]);
    }
    out.set(id, { ranges: merged, bytes: merged.reduce((n, [s, e]) => n + (e - s), 0), pinned: l.pinned });
  }
  return out;
}

/** Points every file extent that lay in a re-packed chunk at the new pack holding its bytes. */
function rewriteExtents(
  m: Manifest,
  moved: Map<string, Array<{ start: number; end: number; pack: number; at: number }>>,
  packIds: string[],
): void {
  if (moved.size === 0) return;
  const move = (x: FileExtent): void => {
    const homes = moved.get(x.chunk);
    if (!homes) return;
    // Ranges are merged unions of extents, so each extent lies within exactly one.
    let lo = 0;
    let hi = homes.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (homes[mid]!.start <= x.chunkOffset) lo = mid;
      else hi = mid - 1;
    }
    let h = homes[lo];
    if (h && !(x.chunkOffset >= h.start && x.chunkOffset + x.length <= h.end)) h = undefined;
    if (!h)
      throw new Error(`compact: no new home for bytes ${x.chunkOffset}+${x.length} of chunk ${x.chunk}`);
    x.chunk = packIds[h.pack]!;
    x.chunkOffset = h.at + (x.chunkOffset - h.start);
  };
  for (const v of m.volumes) {
    if (v.kind !== 'files') continue;
    for (const e of v.entries) for (const x of e.extents ?? []) move(x);
  }
}
