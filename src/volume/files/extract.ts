import { ImageError } from '../../image/errors.ts';
import type { FileEntry } from '../../image/types.ts';
import { normalizeImagePath } from './paths.ts';

/**
 * The entries `img extract` writes for the given image paths: each path and
 * everything below it, in image order. Ancestors are not included, so extracting
 * 'etc/ssh' creates DIR/etc as a plain directory rather than imposing the image
 * root's mode and times on DIR.
 */
export function selectEntries(entries: readonly FileEntry[], paths: string[]): FileEntry[] {
  const wanted = paths.map(normalizeImagePath);
  if (wanted.includes('.')) return [...entries];
  const known = new Set(entries.map((e) => e.path));
  for (let i = 0; i < wanted.length; i++) {
    if (!known.has(wanted[i]!)) {
      throw new ImageError('E_PATH_NOT_FOUND', `no ${JSON.stringify(paths[i])} in the image`, {
        path: paths[i],
      });
    }
  }
  const prefixes = wanted.map((p) => p + '/');
  return entries.filter((e) => wanted.includes(e.path) || prefixes.some((p) => e.path.startsWith(p)));
}
