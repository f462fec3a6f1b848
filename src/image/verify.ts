/**
 * Whole-image check. Damage is reported, never thrown: an admin needs the full list
 * of what is broken and which volumes and files it hits, not the first problem.
 */
import { stat } from 'node:fs/promises';
import { availableParallelism } from 'node:os';

import { decodeArgumentProblem } from './codec.ts';
import { ImageError } from './errors.ts';
import { RECORD_HEADER_SIZE } from './format.ts';
import { checkNotBusy } from './journal.ts';
import { manifestReferences, type ChunkUse } from './manifest.ts';
import { CompressPool } from './pool.ts';
import { ImageReader, type ChunkInfo } from './reader.ts';
import { CHUNK_SIZE } from './types.ts';
import { chunkUsages, describeUsage } from './usage.ts';

export interface VerifyProblem {
  /** E_IMAGE_*, E_CHUNK_CORRUPT, E_CHUNK_MISSING or E_EXTENT_RANGE. */
  code: string;
  message: string;
  chunk?: string;
  /** Where the damaged or missing chunk is used. */
  usage?: ChunkUse[];
}

export interface VerifyReport {
  path: string;
  ok: boolean;
  generation?: number;
  imageId?: string;
  chunksTotal: number;
  chunksChecked: number;
  /** Raw bytes of all chunks checked. */
  bytesChecked: number;
  /** Chunks no manifest reference uses any more (reclaimable by compact). */
  unreferencedChunks: number;
  problems: VerifyProblem[];
}

/** Chunks read and checked at once: two per core, so the pool's workers decompress and hash while the next are read. */
const READ_AHEAD = Math.max(4, 2 * availableParallelism());

export async function verifyImage(
  path: string,
  opts: { onProgress?: (done: number, total: number) => void } = {},
): Promise<VerifyReport> {
  const report: VerifyReport = {
    path,
    ok: false,
    chunksTotal: 0,
    chunksChecked: 0,
    bytesChecked: 0,
    unreferencedChunks: 0,
    problems: [],
  };
  let reader: ImageReader;
  try {
    reader = await ImageReader.open(path);
  } catch (err) {
    if (err instanceof ImageError && err.code !== 'E_IMAGE_IO') {
      report.problems.push({ code: err.code, message: err.message });
      return report;
    }
    throw err;
  }
  try {
    const m = reader.manifest;
    report.generation = reader.generation;
    report.imageId = m.imageId;

    const bad = new Map<string, { code: string; reason: string }>();
    const infos: ChunkInfo[] = [...reader.chunkInfos()].sort((a, b) => a.offset - b.offset);
    report.chunksTotal = infos.length;
    let next = 0;
    const pool = CompressPool.shared();
    const work = async (): Promise<void> => {
      // Each reader has its record and output in shared memory: a pool worker decodes and hashes.
      const record = Buffer.from(new SharedArrayBuffer(RECORD_HEADER_SIZE + CHUNK_SIZE));
      const into = Buffer.from(new SharedArrayBuffer(CHUNK_SIZE + 1));
      while (next < infos.length) {
        const info = infos[next++]!;
        try {
          const { stored } = await reader.readStored(info.id, record);
          const damage =
            decodeArgumentProblem(info.id, info.codec, info.rawLength) ??
            (await pool.decode(info.id, info.codec, stored, into, info.rawLength));
          if (damage === undefined) report.bytesChecked += info.rawLength;
          else bad.set(info.id, { code: 'E_CHUNK_CORRUPT', reason: damage });
        } catch (err) {
          if (!(err instanceof ImageError)) throw err;
          const reason = typeof err.details.reason === 'string' ? err.details.reason : err.message;
          bad.set(info.id, { code: err.code === 'E_IMAGE_IO' ? err.code : 'E_CHUNK_CORRUPT', reason });
        }
        report.chunksChecked++;
        opts.onProgress?.(report.chunksChecked, infos.length);
      }
    };
    await Promise.all(Array.from({ length: READ_AHEAD }, work));

    const missing = new Set<string>();
    const referenced = new Set<string>();
    const ranges: VerifyProblem[] = [];
    for (const ref of manifestReferences(m)) {
      referenced.add(ref.chunk);
      const info = reader.chunk(ref.chunk);
      if (!info) {
        missing.add(ref.chunk);
      } else if (ref.chunkOffset + ref.length > info.rawLength) {
        ranges.push({
          code: 'E_EXTENT_RANGE',
          message: `${describeUsage([ref.use])} reads bytes ${ref.chunkOffset}..${ref.chunkOffset + ref.length} of chunk ${ref.chunk}, which holds only ${info.rawLength}`,
          chunk: ref.chunk,
          usage: [ref.use],
        });
      }
    }
    report.unreferencedChunks = infos.filter((i) => !referenced.has(i.id)).length;

    const usages = chunkUsages(m, new Set([...bad.keys(), ...missing]));
    for (const [id, { code, reason }] of bad) {
      const usage = usages.get(id) ?? [];
      report.problems.push({
        code,
        message: `chunk ${id} is damaged (${reason}); it holds data of ${describeUsage(usage)}`,
        chunk: id,
        usage,
      });
    }
    for (const id of missing) {
      const usage = usages.get(id) ?? [];
      report.problems.push({
        code: 'E_CHUNK_MISSING',
        message: `chunk ${id} is referenced but not stored; ${describeUsage(usage)} cannot be restored`,
        chunk: id,
        usage,
      });
    }
    report.problems.push(...ranges);
    const size = (await stat(path)).size;
    if (size > reader.fileSize && !(await appendRunning(path))) {
      report.problems.push({
        code: 'E_IMAGE_TRUNCATED',
        message: `${path}: an append was interrupted; ${size - reader.fileSize} bytes after generation ${reader.generation} were never committed (\`img repair\` removes them)`,
      });
    }
    report.ok = report.problems.length === 0;
    return report;
  } finally {
    await reader.close();
  }
}

async function appendRunning(path: string): Promise<boolean> {
  try {
    await checkNotBusy(path);
    return false;
  } catch {
    return true;
  }
}
