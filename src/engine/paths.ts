import { ImageError } from '../image/errors.ts';
import type { FileVolume, Manifest, Volume } from '../image/types.ts';
import { parseDisplayName } from '../volume/files/names.ts';
import { normalizeImagePath } from '../volume/files/paths.ts';

/**
 * Explorer paths address files across an image's volumes. An image with a single
 * file volume (a directory capture) is addressed directly ("etc/hosts"). A disk
 * image shows its partitions as top-level folders p1, p2, … ("p2/etc/hosts"), the
 * way an administrator sees them in a partition list.
 */
export interface VolumePath {
  volume: FileVolume;
  /** Normalized path inside the volume ('.' for its root). */
  path: string;
}

export function volumeName(volume: Volume): string {
  return volume.partition !== undefined ? `p${volume.partition}` : `v${volume.index}`;
}

export function isSingleVolume(manifest: Manifest): boolean {
  return (
    manifest.disk === undefined && manifest.volumes.length === 1 && manifest.volumes[0]?.kind === 'files'
  );
}

/** Resolves a user's path to a file volume and an inner path; '.' on a disk image means the volume list itself. */
export function resolveVolumePath(manifest: Manifest, userPath: string): VolumePath | { volume: undefined } {
  const resolved = resolveLiteral(manifest, userPath);
  if (resolved.volume === undefined || !userPath.includes('\\')) return resolved;
  // Names that are not UTF-8 (or hold control characters) are shown escaped, as \xE9; a
  // path typed that way names them when the literal path names nothing.
  const { volume, path } = resolved;
  if (volume.entries.some((e) => e.path === path)) return resolved;
  const unescaped = parseDisplayName(path);
  return volume.entries.some((e) => e.path === unescaped) ? { volume, path: unescaped } : resolved;
}

function resolveLiteral(manifest: Manifest, userPath: string): VolumePath | { volume: undefined } {
  const normalized = normalizeImagePath(userPath);
  if (isSingleVolume(manifest)) return { volume: manifest.volumes[0] as FileVolume, path: normalized };
  if (normalized === '.') return { volume: undefined };
  const slash = normalized.indexOf('/');
  const head = slash < 0 ? normalized : normalized.slice(0, slash);
  const rest = slash < 0 ? '.' : normalized.slice(slash + 1);
  const volume = manifest.volumes.find((v) => volumeName(v) === head);
  if (!volume) {
    const names = manifest.volumes.map(volumeName).join(', ');
    throw new ImageError('E_PATH_NOT_FOUND', `no volume "${head}" in this image (volumes: ${names})`, {
      path: userPath,
    });
  }
  if (volume.kind !== 'files') {
    throw new ImageError(
      'E_PATH_NOT_FOUND',
      `volume ${head} is a raw volume (${volume.detectedType ?? 'unknown content'}); it holds blocks, not files`,
      { path: userPath },
    );
  }
  return { volume, path: rest };
}

/** Same, but a path that must name something inside a file volume. */
export function requireVolumePath(manifest: Manifest, userPath: string): VolumePath {
  const resolved = resolveVolumePath(manifest, userPath);
  if (resolved.volume === undefined) {
    throw new ImageError(
      'E_PATH_NOT_FOUND',
      `"${userPath}" is the image itself; name a path inside a volume`,
      {
        path: userPath,
      },
    );
  }
  return resolved;
}

export function isSameOrBelow(path: string, ancestor: string): boolean {
  return ancestor === '.' || path === ancestor || path.startsWith(`${ancestor}/`);
}

export function parentOf(path: string): string {
  const slash = path.lastIndexOf('/');
  return slash < 0 ? (path === '.' ? '.' : '.') : path.slice(0, slash);
}
