import { lstatSync, mkdirSync, statSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { ImageError } from '../../image/errors.ts';
import { systemReason } from '../../wording.ts';
import { FileVolumeError } from './errors.ts';
import { displayName, fsPath, nameBytes } from './names.ts';

/**
 * Canonical form of a path an administrator typed for an image ('/etc/./x/' → 'etc/x',
 * '' or '/' → '.'). A leading '/' means the image root, not the host's. '..' may step
 * back inside the path but never above the image root.
 */
export function normalizeImagePath(p: string): string {
  if (p.includes('\0')) throw escape(p, 'contains a NUL byte');
  const out: string[] = [];
  for (const part of p.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (out.length === 0) throw escape(p, "goes above the image root with '..'");
      out.pop();
      continue;
    }
    out.push(part);
  }
  return out.length === 0 ? '.' : out.join('/');
}

/**
 * Where an image entry lands under targetDir. Entry paths come from an image file we
 * may not trust, so anything that is not already canonical and relative is refused
 * rather than repaired, and no existing parent inside the target may be a symlink
 * (it could point anywhere on the host).
 */
export function safeJoin(targetDir: string, imagePath: string): string {
  const parts = checkEntryPath(imagePath);
  const root = resolve(targetDir);
  let dir = root;
  for (let i = 0; i < parts.length - 1; i++) {
    dir = join(dir, parts[i]!);
    if (!isRealDirOrMissing(dir))
      throw escape(imagePath, `its parent ${dir} is a symlink or not a directory`);
  }
  return parts.length === 0 ? root : join(root, ...parts);
}

/** An empty, '.' or '..' component anywhere in a path. */
const BAD_COMPONENT = /(?:^|\/)\.{0,2}(?:\/|$)/;

/** Throws what checkEntryPath throws for a path that is not canonical; splits nothing when it is. */
export function assertEntryPath(imagePath: string): void {
  if (imagePath === '.') return;
  if (
    imagePath === '' ||
    imagePath.charCodeAt(0) === 0x2f ||
    BAD_COMPONENT.test(imagePath) ||
    imagePath.includes('\0') ||
    !imagePath.isWellFormed()
  ) {
    checkEntryPath(imagePath);
  }
}

/** Components of a canonical relative entry path ('.' → none); throws E_PATH_ESCAPE otherwise. */
export function checkEntryPath(imagePath: string): string[] {
  if (imagePath === '.') return [];
  if (imagePath === '' || isAbsolute(imagePath)) throw escape(imagePath, 'is not a relative path');
  if (imagePath.includes('\0')) throw escape(imagePath, 'contains a NUL byte');
  // A lone surrogate must stand for a byte (names.ts); nameBytes throws E_NAME_INVALID otherwise.
  if (!imagePath.isWellFormed()) nameBytes(imagePath);
  const parts = imagePath.split('/');
  for (const part of parts) {
    if (part === '' || part === '.' || part === '..') {
      throw escape(imagePath, `has a '${part === '' ? '//' : part}' component`);
    }
  }
  return parts;
}

function isRealDirOrMissing(p: string): boolean {
  try {
    return lstatSync(fsPath(p)).isDirectory();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return true;
    throw err;
  }
}

function escape(p: string, why: string): ImageError {
  return new ImageError('E_PATH_ESCAPE', `image path ${JSON.stringify(p)} ${why}; refusing it`, { path: p });
}

/**
 * Makes the folder `dir` of the host and the folders missing above it, as mkdir -p does,
 * one at a time. Not Node's recursive mkdir: where a parent exists but refuses new entries
 * with ENOENT (/proc, much of /sys), that takes the ENOENT for a missing parent, finds the
 * parent there (EEXIST) and tries again, forever. Here every failure is an E_RESTORE_IO
 * naming the folder asked for, and the one that could not be made when that is another.
 */
export function makeFolder(dir: string): void {
  const target = resolve(dir);
  const missing: string[] = [];
  for (let cur = target; ; cur = dirname(cur)) {
    let isDir: boolean;
    try {
      isDir = statSync(cur).isDirectory();
    } catch (err) {
      // ENOTDIR: a file further up is in the way, which the walk up finds and names.
      const code = (err as NodeJS.ErrnoException).code;
      if ((code !== 'ENOENT' && code !== 'ENOTDIR') || cur === dirname(cur)) {
        throw folderError(target, cur, systemReason(err), err);
      }
      missing.push(cur);
      continue;
    }
    if (!isDir) throw folderError(target, cur, 'it is not a folder');
    break;
  }
  for (const folder of missing.reverse()) {
    try {
      mkdirSync(folder);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // Made meanwhile by someone else: as good.
      if (code === 'EEXIST' && statSync(folder, { throwIfNoEntry: false })?.isDirectory()) continue;
      // Its parent is there (found or just made): ENOENT means that parent takes no new folders.
      if (code === 'ENOENT') {
        const parent = displayName(dirname(folder));
        throw folderError(target, target, `${parent} does not let folders be made in it (ENOENT)`, err);
      }
      throw folderError(target, folder, systemReason(err), err);
    }
  }
}

function folderError(target: string, at: string, why: string, cause?: unknown): FileVolumeError {
  const where = at === target ? '' : `${displayName(at)}: `;
  return new FileVolumeError(
    'E_RESTORE_IO',
    `cannot create the folder ${displayName(target)}: ${where}${why}`,
    { path: target, ...(at !== target ? { at } : {}) },
    cause === undefined ? undefined : { cause },
  );
}
