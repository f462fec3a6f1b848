import { ImageError } from './errors.ts';
import { MAX_FILESETS, type FileEntry, type Manifest, type Volume } from './types.ts';

/** Validates a file-set number from a user or a packet: an integer 1..10. */
export function checkFileset(n: number): number {
  if (!Number.isInteger(n) || n < 1 || n > MAX_FILESETS) {
    throw new ImageError('E_FILESET', `file set must be a whole number from 1 to ${MAX_FILESETS}, not ${n}`, {
      fileset: n,
    });
  }
  return n;
}

export function isExcluded(entry: FileEntry, fileset: number): boolean {
  return ((entry.excludedFrom ?? 0) & (1 << (fileset - 1))) !== 0;
}

/** Entries of a file volume that a restore of `fileset` writes. */
export function includedEntries(entries: readonly FileEntry[], fileset: number): FileEntry[] {
  return entries.filter((e) => !isExcluded(e, fileset));
}

/**
 * Every chunk a restore of `fileset` needs, unique, in image order (boot areas, then
 * volumes in order). Chunks used only by excluded files are absent, so neither
 * restore nor multicast reads them. Raw lengths come from the image index.
 */
export function chunksForFileset(manifest: Manifest, fileset: number): Set<string> {
  checkFileset(fileset);
  const needed = new Set<string>();
  for (const area of manifest.disk?.bootAreas ?? []) for (const x of area.extents) needed.add(x.chunk);
  for (const volume of manifest.volumes) {
    if (volume.kind === 'raw') {
      for (const x of volume.extents) needed.add(x.chunk);
      continue;
    }
    for (const entry of volume.entries) {
      if (isExcluded(entry, fileset)) continue;
      for (const x of entry.extents ?? []) needed.add(x.chunk);
    }
  }
  return needed;
}

/** Which file sets exclude anything, and how much each would leave out. */
export function filesetSummary(
  manifest: Manifest,
): Array<{ number: number; excludedEntries: number; bytes: number }> {
  const out = Array.from({ length: MAX_FILESETS }, (_, i) => ({
    number: i + 1,
    excludedEntries: 0,
    bytes: 0,
  }));
  // One pass over the entries for all ten sets: most entries are excluded from none.
  for (const volume of manifest.volumes) {
    if (volume.kind !== 'files') continue;
    for (const e of volume.entries) {
      const mask = e.excludedFrom ?? 0;
      if (mask === 0) continue;
      for (const s of out) {
        if ((mask & (1 << (s.number - 1))) !== 0) {
          s.excludedEntries++;
          s.bytes += e.size ?? 0;
        }
      }
    }
  }
  return out;
}

export function fileVolumes(manifest: Manifest): Extract<Volume, { kind: 'files' }>[] {
  return manifest.volumes.filter((v): v is Extract<Volume, { kind: 'files' }> => v.kind === 'files');
}
