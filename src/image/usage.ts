/** Which volumes, files and disk areas a chunk feeds, so damage reports name what an admin loses. */
import { manifestReferences, type ChunkUse } from './manifest.ts';
import type { Manifest } from './types.ts';

export type { ChunkUse } from './manifest.ts';

export function chunkUsage(manifest: Manifest, id: string): ChunkUse[] {
  return chunkUsages(manifest, new Set([id])).get(id) ?? [];
}

/** One pass over the manifest for many chunks (verify reports every damaged chunk). */
export function chunkUsages(manifest: Manifest, ids: ReadonlySet<string>): Map<string, ChunkUse[]> {
  const out = new Map<string, ChunkUse[]>();
  if (ids.size === 0) return out;
  for (const ref of manifestReferences(manifest)) {
    if (!ids.has(ref.chunk)) continue;
    let list = out.get(ref.chunk);
    if (!list) out.set(ref.chunk, (list = []));
    list.push(ref.use);
  }
  return out;
}

/** Short human text: "volume 1 (partition 2): files etc/passwd, etc/group and 3 more; boot area at byte 0". */
export function describeUsage(uses: readonly ChunkUse[], maxNames = 5): string {
  if (uses.length === 0) return 'not used by the manifest';
  const parts: string[] = [];
  const boot = uses.filter((u) => u.kind === 'boot');
  if (boot.length > 0) {
    parts.push(`disk boot area bytes ${boot.map((u) => `${u.offset}..${u.offset + u.length}`).join(', ')}`);
  }
  const volumes = new Map<number, ChunkUse[]>();
  for (const u of uses) {
    if (u.kind === 'boot') continue;
    let l = volumes.get(u.volume);
    if (!l) volumes.set(u.volume, (l = []));
    l.push(u);
  }
  for (const [index, list] of volumes) {
    const first = list[0]!;
    const where =
      first.kind !== 'boot' && first.partition !== undefined
        ? `volume ${index} (partition ${first.partition})`
        : `volume ${index}`;
    const files = [...new Set(list.flatMap((u) => (u.kind === 'file' ? [u.path] : [])))];
    const raws = list.filter((u) => u.kind === 'raw');
    if (files.length > 0) {
      const shown = files.slice(0, maxNames).join(', ');
      const more = files.length > maxNames ? ` and ${files.length - maxNames} more` : '';
      parts.push(`${where}: file${files.length > 1 ? 's' : ''} ${shown}${more}`);
    }
    if (raws.length > 0) {
      const shown = raws
        .slice(0, maxNames)
        .map((u) => `${u.offset}..${u.offset + u.length}`)
        .join(', ');
      const more = raws.length > maxNames ? ` and ${raws.length - maxNames} more ranges` : '';
      parts.push(`${where}: raw bytes ${shown}${more}`);
    }
  }
  return parts.join('; ');
}
