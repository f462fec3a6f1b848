/**
 * Image explorer: browse and edit an image in place. Edits (add, rm, exclude,
 * include) append a new generation to the image file and never rewrite stored data;
 * `compact` reclaims what no generation needs any more.
 */
import { lstat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { layoutNeeds, smallestDisk } from '../disk/fit-layout.ts';
import { ImageError } from '../image/errors.ts';
import { checkFileset, filesetSummary, isExcluded } from '../image/fileset.ts';
import { ImageReader } from '../image/reader.ts';
import { ImageWriter } from '../image/writer.ts';
import { MAX_FILESETS, type FileEntry, type FileVolume, type Manifest } from '../image/types.ts';
import { captureTree, type CaptureProgress } from '../volume/files/capture.ts';
import { selectEntries } from '../volume/files/extract.ts';
import { nameBytes } from '../volume/files/names.ts';
import { normalizeImagePath } from '../volume/files/paths.ts';
import { createTreeRestore } from '../volume/files/restore.ts';
import { systemReason } from '../wording.ts';
import {
  isSameOrBelow,
  isSingleVolume,
  parentOf,
  requireVolumePath,
  resolveVolumePath,
  volumeName,
} from './paths.ts';
import type { RestoreProgress } from './types.ts';

export interface ListedEntry {
  name: string;
  path: string;
  type: FileEntry['type'] | 'volume';
  size: number;
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: string;
  linkTarget?: string;
  /** File sets this entry is excluded from. */
  excludedFrom: number[];
  /** For volume rows of a disk image. */
  filesystem?: string;
  label?: string;
}

export function excludedSets(entry: FileEntry): number[] {
  const sets: number[] = [];
  for (let n = 1; n <= MAX_FILESETS; n++) if (isExcluded(entry, n)) sets.push(n);
  return sets;
}

export function nsToIso(ns: string): string {
  return new Date(Number(BigInt(ns) / 1_000_000n)).toISOString();
}

function toListed(entry: FileEntry, prefix: string): ListedEntry {
  const name = entry.path === '.' ? '.' : entry.path.slice(entry.path.lastIndexOf('/') + 1);
  const row: ListedEntry = {
    name,
    path: prefix ? (entry.path === '.' ? prefix : `${prefix}/${entry.path}`) : entry.path,
    type: entry.type,
    // A symlink's size is its target's length in bytes, as lstat and ls -l give it.
    size: entry.type === 'symlink' ? nameBytes(entry.linkTarget ?? '').length : (entry.size ?? 0),
    mode: entry.mode,
    uid: entry.uid,
    gid: entry.gid,
    mtime: nsToIso(entry.mtimeNs),
    excludedFrom: excludedSets(entry),
  };
  if (entry.linkTarget !== undefined) row.linkTarget = entry.linkTarget;
  return row;
}

function findEntry(volume: FileVolume, path: string, userPath: string): FileEntry {
  const entry = volume.entries.find((e) => e.path === path);
  if (!entry) throw new ImageError('E_PATH_NOT_FOUND', `no "${userPath}" in this image`, { path: userPath });
  return entry;
}

/** The children of a folder (or the entry itself for a file); with a file set, hides what it excludes. */
export function listPath(manifest: Manifest, userPath = '.', fileset?: number): ListedEntry[] {
  if (fileset !== undefined) checkFileset(fileset);
  const resolved = resolveVolumePath(manifest, userPath);
  if (resolved.volume === undefined) {
    return manifest.volumes.map((v) => ({
      name: volumeName(v),
      path: volumeName(v),
      type: 'volume',
      size: v.kind === 'raw' ? v.sizeBytes : (v.sizeBytes ?? 0),
      excludedFrom: [],
      filesystem: v.kind === 'raw' ? `raw${v.detectedType ? ` (${v.detectedType})` : ''}` : v.fs.type,
      ...(v.kind === 'files' && v.fs.label ? { label: v.fs.label } : {}),
    }));
  }
  const { volume, path } = resolved;
  const prefix = isSingleVolume(manifest) ? '' : volumeName(volume);
  const entry = findEntry(volume, path, userPath);
  if (fileset !== undefined && isExcluded(entry, fileset)) {
    throw new ImageError('E_PATH_NOT_FOUND', `"${userPath}" is excluded from file set ${fileset}`, {
      path: userPath,
      fileset,
    });
  }
  if (entry.type !== 'dir') return [toListed(entry, prefix)];
  return volume.entries
    .filter((e) => e.path !== path && parentOf(e.path) === path)
    .filter((e) => fileset === undefined || !isExcluded(e, fileset))
    .map((e) => toListed(e, prefix));
}

/** Everything the image knows about one path, including where its bytes live. */
export function statPath(
  manifest: Manifest,
  userPath: string,
): ListedEntry & { entry: FileEntry; volume: string; hardlinks: string[] } {
  const { volume, path } = requireVolumePath(manifest, userPath);
  const entry = findEntry(volume, path, userPath);
  const hardlinks =
    entry.hardlinkGroup === undefined
      ? []
      : volume.entries
          .filter((e) => e.hardlinkGroup === entry.hardlinkGroup && e !== entry)
          .map((e) => e.path);
  return {
    ...toListed(entry, isSingleVolume(manifest) ? '' : volumeName(volume)),
    entry,
    volume: volumeName(volume),
    hardlinks,
  };
}

export function listFilesets(manifest: Manifest) {
  return filesetSummary(manifest).map((s) => ({
    ...s,
    description: manifest.filesets.find((f) => f.number === s.number)?.description ?? '',
    isDefault: s.number === 1,
  }));
}

/** Extracts paths (and everything below them) to `toDir`, keeping their image paths below it. */
export async function extractPaths(
  imagePath: string,
  userPaths: string[],
  toDir: string,
  opts: { fileset?: number; onProgress?: (p: RestoreProgress) => void } = {},
): Promise<{ entries: number; bytes: number; warnings: string[] }> {
  const fileset = checkFileset(opts.fileset ?? 1);
  const reader = await ImageReader.open(imagePath);
  try {
    const byVolume = new Map<FileVolume, string[]>();
    for (const p of userPaths) {
      const { volume, path } = requireVolumePath(reader.manifest, p);
      const entry = findEntry(volume, path, p);
      if (isExcluded(entry, fileset)) {
        throw new ImageError('E_PATH_NOT_FOUND', `"${p}" is excluded from file set ${fileset}`, { path: p });
      }
      byVolume.set(volume, [...(byVolume.get(volume) ?? []), path]);
    }
    let entries = 0;
    let bytes = 0;
    const warnings: string[] = [];
    for (const [volume, paths] of byVolume) {
      const selected = selectEntries(volume.entries, paths);
      const target = isSingleVolume(reader.manifest) ? toDir : join(toDir, volumeName(volume));
      const sink = createTreeRestore(selected, target, { fileset, fsType: 'directory' });
      await feedSink(reader, sink, opts.onProgress);
      entries += selected.filter((e) => !isExcluded(e, fileset)).length;
      bytes += sink.progress().bytesTotal;
      warnings.push(...sink.warnings);
    }
    return { entries, bytes, warnings };
  } finally {
    await reader.close();
  }
}

/** Runs a RestoreSink to completion from an image, aborting it on any failure. */
export async function feedSink(
  reader: ImageReader,
  sink: import('./types.ts').RestoreSink,
  onProgress?: (p: RestoreProgress) => void,
): Promise<void> {
  try {
    await sink.prepare();
    for (const id of sink.needed) {
      await sink.applyChunk(id, await reader.readChunk(id));
      onProgress?.(sink.progress());
    }
    await sink.finish();
  } catch (err) {
    await sink.abort(err).catch(() => {});
    throw err;
  }
}

function sortEntries(entries: FileEntry[]): FileEntry[] {
  return entries.sort((a, b) => (a.path === '.' ? -1 : b.path === '.' ? 1 : a.path < b.path ? -1 : 1));
}

/** Opens the image for a new generation, lets `edit` change the manifest, and commits or rolls back. */
async function editImage<T>(
  imagePath: string,
  edit: (manifest: Manifest, writer: ImageWriter) => Promise<T>,
): Promise<T> {
  const { writer, manifest } = await ImageWriter.append(imagePath);
  try {
    const result = await edit(manifest, writer);
    // The writer stamps the next generation number itself.
    await writer.commit(manifest);
    return result;
  } catch (err) {
    await writer.abort().catch(() => {});
    throw err;
  }
}

/**
 * Adds a file or folder from the local filesystem under `at` (default: the root),
 * like `cp -a SOURCE AT/`. Added files belong to every file set.
 */
export async function addToImage(
  imagePath: string,
  source: string,
  opts: { at?: string; replace?: boolean; onProgress?: (p: CaptureProgress) => void } = {},
): Promise<{ added: number; bytes: number; path: string }> {
  const info = await lstat(source).catch((err: NodeJS.ErrnoException) => {
    throw new ImageError('E_PATH_NOT_FOUND', `cannot add ${source}: ${systemReason(err)}`, { source });
  });
  return editImage(imagePath, async (manifest, writer) => {
    const { volume, path: at } = requireVolumePath(manifest, opts.at ?? '.');
    // AT and every folder on the way to it must be folders of the image: files added under a
    // symlink would land, once restored, wherever the link points (another volume, the host's /).
    for (let p = at; p !== '.'; p = parentOf(p)) {
      const entry = volume.entries.find((e) => e.path === p);
      if (!entry || entry.type === 'dir') continue;
      if (entry.type === 'symlink') {
        throw new ImageError(
          'E_PATH_ESCAPE',
          `"${p}" is a symlink in the image: what is added under it would land where the link points once restored`,
          { path: opts.at, symlink: p },
        );
      }
      throw new ImageError('E_PATH_EXISTS', `"${p}" is a ${entry.type} in the image, not a folder`, {
        path: opts.at,
      });
    }
    const name = basename(source.replace(/\/+$/, '')) || 'root';
    const dest = at === '.' ? normalizeImagePath(name) : `${at}/${normalizeImagePath(name)}`;
    if (volume.entries.some((e) => e.path === dest)) {
      if (!opts.replace) {
        throw new ImageError('E_PATH_EXISTS', `"${dest}" already exists in the image (use --replace)`, {
          path: dest,
        });
      }
      volume.entries = volume.entries.filter((e) => !isSameOrBelow(e.path, dest));
    }
    const generation = manifest.generation + 1;
    let captured: FileEntry[];
    if (info.isDirectory()) {
      captured = await captureTree(source, writer, { generation, onProgress: opts.onProgress });
    } else {
      // A lone file is captured where it is, its folder walked for that one name: a copy made
      // for the walk (fs.cp) kept its times only to the millisecond, and no xattrs or flags.
      const abs = resolve(source);
      const inner = await captureTree(dirname(abs), writer, {
        generation,
        onProgress: opts.onProgress,
        only: basename(abs),
      });
      captured = inner.filter((e) => e.path === basename(abs)).map((e) => ({ ...e, path: '.' }));
      if (captured.length !== 1) {
        throw new ImageError('E_PATH_NOT_FOUND', `cannot add ${source}: it is gone`, { source });
      }
    }
    const now = `${BigInt(Date.now()) * 1_000_000n}`;
    // Missing folders on the way to `at` are created like mkdir -p would.
    const missing: FileEntry[] = [];
    for (let p = at; p !== '.' && !volume.entries.some((e) => e.path === p); p = parentOf(p)) {
      missing.push({
        path: p,
        type: 'dir',
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtimeNs: now,
        atimeNs: now,
        addedIn: generation,
      });
    }
    // Every capture numbers its hard-link groups from 1: the added ones take numbers the
    // volume does not use yet, or a restore would link them with unrelated files already in it.
    let lastGroup = 0;
    for (const e of volume.entries)
      if (e.hardlinkGroup !== undefined) lastGroup = Math.max(lastGroup, e.hardlinkGroup);
    const placed = captured.map((e) => ({
      ...e,
      path: e.path === '.' ? dest : `${dest}/${e.path}`,
      excludedFrom: 0,
      addedIn: generation,
      ...(e.hardlinkGroup !== undefined ? { hardlinkGroup: lastGroup + e.hardlinkGroup } : {}),
    }));
    volume.entries = sortEntries([...volume.entries, ...missing, ...placed]);
    const bytes = placed.reduce((n, e) => n + (e.size ?? 0), 0);
    return {
      added: placed.length,
      bytes,
      path: isSingleVolume(manifest) ? dest : `${volumeName(volume)}/${dest}`,
    };
  });
}

/** Removes paths and everything below them from the image (space is reclaimed by compact). */
export async function removeFromImage(imagePath: string, userPaths: string[]): Promise<{ removed: number }> {
  return editImage(imagePath, async (manifest) => {
    let removed = 0;
    for (const p of userPaths) {
      const { volume, path } = requireVolumePath(manifest, p);
      if (path === '.') {
        throw new ImageError('E_USAGE', `"${p}" is the root of a volume; it cannot be removed`, { path: p });
      }
      findEntry(volume, path, p);
      const before = volume.entries.length;
      volume.entries = volume.entries.filter((e) => !isSameOrBelow(e.path, path));
      removed += before - volume.entries.length;
    }
    return { removed };
  });
}

/**
 * Excluding marks a path and everything below it; including clears the path, what is
 * below it, and its parent folders, so an included file is never orphaned.
 */
export async function setExcluded(
  imagePath: string,
  fileset: number,
  userPaths: string[],
  excluded: boolean,
): Promise<{ changed: number }> {
  checkFileset(fileset);
  const bit = 1 << (fileset - 1);
  return editImage(imagePath, async (manifest) => {
    let changed = 0;
    for (const p of userPaths) {
      const { volume, path } = requireVolumePath(manifest, p);
      findEntry(volume, path, p);
      for (const e of volume.entries) {
        const below = isSameOrBelow(e.path, path);
        const above = !excluded && isSameOrBelow(path, e.path);
        if (!below && !above) continue;
        const before = e.excludedFrom ?? 0;
        const after = excluded ? before | bit : before & ~bit;
        if (after !== before) changed++;
        if (after === 0) delete e.excludedFrom;
        else e.excludedFrom = after;
      }
    }
    return { changed };
  });
}

/** A summary of the image for `img info`. */
export function describeImage(reader: ImageReader) {
  let rawBytes = 0;
  let storedBytes = 0;
  let chunks = 0;
  for (const id of reader.chunkIds()) {
    const c = reader.chunk(id);
    if (!c) continue;
    chunks++;
    rawBytes += c.rawLength;
    storedBytes += c.storedLength;
  }
  return describeManifest(reader.manifest, {
    path: reader.path,
    fileBytes: reader.fileSize,
    chunks,
    chunkRawBytes: rawBytes,
    chunkStoredBytes: storedBytes,
  });
}

/** What the image file holds, besides its manifest. */
export interface ImageFileFacts {
  path: string;
  fileBytes: number;
  chunks: number;
  chunkRawBytes: number;
  chunkStoredBytes: number;
}

/** describeImage from a manifest in memory, e.g. the one a capture just committed (no second copy parsed). */
export function describeManifest(m: Manifest, file: ImageFileFacts) {
  return {
    path: file.path,
    imageId: m.imageId,
    formatVersion: m.formatVersion,
    createdAt: m.createdAt,
    generation: m.generation,
    level: m.level,
    source: m.source,
    fileBytes: file.fileBytes,
    chunks: file.chunks,
    chunkRawBytes: file.chunkRawBytes,
    chunkStoredBytes: file.chunkStoredBytes,
    disk: m.disk
      ? {
          sizeBytes: m.disk.sizeBytes,
          table: m.disk.table,
          // The smallest disk the image (file set 1) restores onto, fitted and with --keep-sizes.
          smallestDiskBytes: smallestDisk(m.disk, m.volumes, { fileset: 1 }),
          keepSizesDiskBytes: layoutNeeds(m.disk),
          partitions: m.disk.partitions.map((p) => ({
            number: p.number,
            startBytes: p.startBytes,
            sizeBytes: p.sizeBytes,
            type: p.type,
            name: p.name,
          })),
        }
      : undefined,
    volumes: m.volumes.map((v) =>
      v.kind === 'files'
        ? {
            name: volumeName(v),
            kind: v.kind,
            filesystem: v.fs.type,
            label: v.fs.label,
            uuid: v.fs.uuid,
            entries: v.entries.length,
            bytes: v.entries.reduce((n, e) => n + (e.size ?? 0), 0),
          }
        : {
            name: volumeName(v),
            kind: v.kind,
            detectedType: v.detectedType,
            sizeBytes: v.sizeBytes,
            storedExtents: v.extents.length,
            bytes: v.extents.reduce((n, x) => n + x.length, 0),
            unused: v.unused,
          },
    ),
    filesets: listFilesets(m),
  };
}
