/**
 * Structural checks of a manifest and a walk over every chunk reference in it.
 * A manifest read from disk passed its SHA-256, but a forged or buggy file can
 * still hold nonsense; these checks make sure the rest of imgcast can walk it
 * without crashing, and say where it is wrong.
 */
import { COMPRESSION_LEVELS, type FileExtent, type Manifest } from './types.ts';

/** One place where a manifest points into a chunk's raw bytes. */
export interface ChunkReference {
  chunk: string;
  /** Range within the chunk's raw bytes. */
  chunkOffset: number;
  length: number;
  use: ChunkUse;
}

export type ChunkUse =
  | { kind: 'boot'; area: number; offset: number; length: number }
  | { kind: 'raw'; volume: number; partition?: number; offset: number; length: number }
  | { kind: 'file'; volume: number; partition?: number; path: string; offset: number; length: number };

/**
 * A file extent's reference. Its `use` is built only when asked for: a commit or a
 * verify walks every extent of every file (55k on a system tree), and almost never
 * needs to describe one.
 */
class FileReference implements ChunkReference {
  readonly chunk: string;
  readonly chunkOffset: number;
  readonly length: number;
  readonly #volume: number;
  readonly #partition: number | undefined;
  readonly #path: string;
  readonly #offset: number;

  constructor(volume: number, partition: number | undefined, path: string, x: FileExtent) {
    this.chunk = x.chunk;
    this.chunkOffset = x.chunkOffset;
    this.length = x.length;
    this.#volume = volume;
    this.#partition = partition;
    this.#path = path;
    this.#offset = x.offset;
  }

  get use(): ChunkUse {
    return {
      kind: 'file',
      volume: this.#volume,
      ...(this.#partition === undefined ? {} : { partition: this.#partition }),
      path: this.#path,
      offset: this.#offset,
      length: this.length,
    };
  }
}

/** Every chunk reference in image order: boot areas, then volumes in order. */
export function* manifestReferences(manifest: Manifest): Generator<ChunkReference> {
  const areas = manifest.disk?.bootAreas ?? [];
  for (let a = 0; a < areas.length; a++) {
    for (const x of areas[a]!.extents) {
      yield {
        chunk: x.chunk,
        chunkOffset: 0,
        length: x.length,
        use: { kind: 'boot', area: a, offset: x.offset, length: x.length },
      };
    }
  }
  for (const v of manifest.volumes) {
    if (v.kind === 'raw') {
      const part = v.partition === undefined ? {} : { partition: v.partition };
      for (const x of v.extents) {
        yield {
          chunk: x.chunk,
          chunkOffset: 0,
          length: x.length,
          use: { kind: 'raw', volume: v.index, ...part, offset: x.offset, length: x.length },
        };
      }
      continue;
    }
    for (const e of v.entries) {
      const extents = e.extents;
      if (extents === undefined) continue;
      for (const x of extents) yield new FileReference(v.index, v.partition, e.path, x);
    }
  }
}

const isObj = (x: unknown): x is Record<string, unknown> =>
  typeof x === 'object' && x !== null && !Array.isArray(x);
const isCount = (x: unknown): x is number => Number.isSafeInteger(x) && (x as number) >= 0;
const ID = /^[0-9a-f]{64}$/;

/** Why `m` is not a usable manifest, or undefined when it is; shares one string per chunk id among its extents. */
export function manifestProblem(m: unknown): string | undefined {
  if (!isObj(m)) return 'the manifest is not a JSON object';
  if (typeof m.formatVersion !== 'number') return 'formatVersion is missing';
  if (typeof m.imageId !== 'string' || m.imageId === '') return 'imageId is missing';
  if (!Number.isSafeInteger(m.generation) || (m.generation as number) < 1)
    return 'generation is not a positive integer';
  if (!(COMPRESSION_LEVELS as readonly unknown[]).includes(m.level))
    return `unknown compression level ${String(m.level)}`;
  if (!isObj(m.source)) return 'source is missing';
  if (!Array.isArray(m.filesets)) return 'filesets is not a list';
  if (!Array.isArray(m.volumes)) return 'volumes is not a list';
  // An image has a few hundred chunks and tens of thousands of extents naming them. Every
  // extent is given the one string of its id: JSON.parse makes a string per extent, and
  // each would otherwise be hashed again by every map a restore keys by chunk (and held
  // apart: ~5 MB for 55k files).
  const goodIds = new Map<string, string>();
  const extentProblem = (x: unknown, where: string, withChunkOffset: boolean): string | undefined => {
    if (!isObj(x) || !isCount(x.offset) || !isCount(x.length) || typeof x.chunk !== 'string')
      return `${where}: malformed extent`;
    const id = goodIds.get(x.chunk);
    if (id !== undefined) x.chunk = id;
    else if (ID.test(x.chunk)) goodIds.set(x.chunk, x.chunk);
    else return `${where}: malformed extent`;
    if (withChunkOffset && !isCount(x.chunkOffset)) return `${where}: malformed extent`;
    return undefined;
  };
  if (m.disk !== undefined) {
    const d = m.disk;
    if (!isObj(d) || !Array.isArray(d.bootAreas) || !Array.isArray(d.partitions))
      return 'disk layout is malformed';
    if (d.containers !== undefined) {
      if (!Array.isArray(d.containers)) return 'disk containers are malformed';
      for (const c of d.containers as unknown[]) {
        if (!isObj(c) || !isCount(c.number) || !isCount(c.startBytes) || !isCount(c.sizeBytes))
          return 'a disk container is malformed';
      }
    }
    for (const [i, a] of d.bootAreas.entries()) {
      if (!isObj(a) || !isCount(a.offset) || !isCount(a.length) || !Array.isArray(a.extents)) {
        return `boot area ${i} is malformed`;
      }
      for (const x of a.extents) {
        const p = extentProblem(x, `boot area ${i}`, false);
        if (p) return p;
      }
    }
  }
  for (const [i, v] of m.volumes.entries()) {
    if (!isObj(v) || !Number.isSafeInteger(v.index)) return `volume ${i} is malformed`;
    if (v.kind === 'raw') {
      if (!isCount(v.sizeBytes) || !Array.isArray(v.extents)) return `raw volume ${i} is malformed`;
      for (const x of v.extents) {
        const p = extentProblem(x, `raw volume ${i}`, false);
        if (p) return p;
      }
    } else if (v.kind === 'files') {
      if (!isObj(v.fs) || !Array.isArray(v.entries)) return `file volume ${i} is malformed`;
      for (const e of v.entries) {
        if (!isObj(e) || typeof e.path !== 'string' || typeof e.type !== 'string') {
          return `file volume ${i} has a malformed entry`;
        }
        if (e.flags !== undefined && (typeof e.flags !== 'string' || !/^[A-Za-z]*$/.test(e.flags))) {
          return `file volume ${i}, ${e.path}: flags is not a string of letters`;
        }
        if (e.extents === undefined) continue;
        if (!Array.isArray(e.extents)) return `file volume ${i}, ${e.path}: extents is not a list`;
        for (const x of e.extents) {
          const p = extentProblem(x, `file volume ${i}, ${e.path}`, true);
          if (p) return p;
        }
      }
    } else {
      return `volume ${i} has unknown kind ${String(v.kind)}`;
    }
  }
  return undefined;
}
