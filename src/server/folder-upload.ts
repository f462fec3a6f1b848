/**
 * A folder sent from the browser (the console's "add a folder"), received into a fresh private
 * folder on the server before `img add` takes it into an image.
 *
 * The body (application/x-imgcast-files) is one record per file, back to back:
 *
 *   {"path":"drivers/nic/e1000.inf","size":1234,"mtimeMs":1700000000000}\n   one line of JSON
 *   <size bytes>                                                              the file's content
 *
 * Every path is relative, '/'-separated, and starts with the same first name (the folder
 * picked, or the one file sent). Nothing a path says may put a file anywhere but inside the
 * receiving folder: an absolute path, an empty, '.' or '..' part, or a part already there as a
 * symlink is refused with E_PATH_ESCAPE, and files are created exclusively without following
 * links. A malformed body, a path sent twice, or a name that is both a file and a folder is
 * E_BAD_REQUEST; the caller removes the receiving folder whatever happens.
 */
import { constants } from 'node:fs';
import { lstat, mkdir, open, utimes, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';

import { ServerError } from './errors.ts';

export const FILES_CONTENT_TYPE = 'application/x-imgcast-files';

export interface FilesLimits {
  /** Bytes of file content in all (the header lines not counted). */
  maxBytes: number;
  maxFiles: number;
}

/** One record's header line is at most this long. */
const MAX_HEADER_BYTES = 16 * 1024;
const MAX_PATH_BYTES = 4096;
const MAX_NAME_BYTES = 255;
const MAX_DEPTH = 64;

export interface FileHeader {
  path: string;
  parts: string[];
  size: number;
  mtimeMs: number | null;
}

/** The parts of an uploaded file's path, or the refusal saying why it may not be used. Pure. */
export function uploadPathParts(path: unknown): string[] {
  if (typeof path !== 'string' || path === '')
    throw new ServerError('E_BAD_REQUEST', 'each file needs a path (a non-empty string)');
  const escape = (why: string) =>
    new ServerError('E_PATH_ESCAPE', `the uploaded path ${JSON.stringify(path)} ${why}`, { path });
  if (path.includes('\0')) throw escape('contains a NUL byte');
  if (path.startsWith('/')) throw escape('is absolute; give it relative to the folder sent');
  if (Buffer.byteLength(path) > MAX_PATH_BYTES)
    throw new ServerError('E_BAD_REQUEST', `the uploaded path is longer than ${MAX_PATH_BYTES} bytes`, {
      path: path.slice(0, 256),
    });
  const parts = path.split('/');
  for (const part of parts) {
    if (part === '..') throw escape("goes up with '..'");
    if (part === '' || part === '.') throw escape("has an empty or '.' part");
    if (Buffer.byteLength(part) > MAX_NAME_BYTES)
      throw new ServerError('E_BAD_REQUEST', `a name in ${path} is longer than ${MAX_NAME_BYTES} bytes`, {
        path,
      });
  }
  if (parts.length > MAX_DEPTH)
    throw new ServerError('E_BAD_REQUEST', `${path} is more than ${MAX_DEPTH} folders deep`, { path });
  return parts;
}

/** A record's header line (without its newline), checked; `left` is how many content bytes may still come. Pure. */
export function parseFileHeader(line: string, left: number): FileHeader {
  let h: unknown;
  try {
    h = JSON.parse(line);
  } catch {
    throw new ServerError('E_BAD_REQUEST', `a file's header is not JSON: ${line.slice(0, 200)}`);
  }
  if (typeof h !== 'object' || h === null || Array.isArray(h))
    throw new ServerError('E_BAD_REQUEST', `a file's header is not a JSON object: ${line.slice(0, 200)}`);
  const { path, size, mtimeMs } = h as Record<string, unknown>;
  const parts = uploadPathParts(path);
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0)
    throw new ServerError('E_BAD_REQUEST', `${String(path)}: size must be a whole number of bytes`, { path });
  if (size > left)
    throw new ServerError('E_TOO_LARGE', `${String(path)}: the files sent go past the limit of the upload`, {
      path,
    });
  if (mtimeMs !== undefined && mtimeMs !== null && (typeof mtimeMs !== 'number' || !Number.isFinite(mtimeMs)))
    throw new ServerError('E_BAD_REQUEST', `${String(path)}: mtimeMs must be a number`, { path });
  return { path: path as string, parts, size, mtimeMs: typeof mtimeMs === 'number' ? mtimeMs : null };
}

/**
 * Writes the files `body` carries under `dir` (an empty folder of the caller's); resolves to the
 * one top-level name they share, how many files and how many bytes of content came.
 */
export async function receiveFiles(
  body: AsyncIterable<Buffer>,
  dir: string,
  limits: FilesLimits,
): Promise<{ top: string; files: number; bytes: number }> {
  let top: string | undefined;
  let files = 0;
  let bytes = 0;
  let header: Buffer[] = [];
  let headerBytes = 0;
  let current: { h: FileHeader; fh: FileHandle; left: number } | undefined;
  const made = new Set<string>();

  const begin = async (line: string) => {
    const h = parseFileHeader(line, limits.maxBytes - bytes);
    if (++files > limits.maxFiles)
      throw new ServerError('E_TOO_LARGE', `an upload carries ${limits.maxFiles} files at most`);
    top ??= h.parts[0]!;
    if (h.parts[0] !== top) {
      throw new ServerError(
        'E_BAD_REQUEST',
        `every path starts with the one folder sent (${top}), not ${h.path}`,
        { path: h.path },
      );
    }
    // Folders made one level at a time, each checked to be a real folder of ours, not a link.
    let at = dir;
    for (const part of h.parts.slice(0, -1)) {
      at = join(at, part);
      if (made.has(at)) continue;
      try {
        await mkdir(at, { mode: 0o755 });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        const s = await lstat(at);
        if (s.isSymbolicLink())
          throw new ServerError('E_PATH_ESCAPE', `${h.path} goes through a symlink`, { path: h.path });
        if (!s.isDirectory())
          throw new ServerError('E_BAD_REQUEST', `${h.path}: a file of the upload has that folder's name`, {
            path: h.path,
          });
      }
      made.add(at);
    }
    const file = join(dir, ...h.parts);
    if (made.has(file))
      throw new ServerError('E_BAD_REQUEST', `${h.path} is both a folder and a file in the upload`, {
        path: h.path,
      });
    let fh: FileHandle;
    try {
      // O_EXCL with O_CREAT refuses what exists, a link included; O_NOFOLLOW says so twice.
      fh = await open(
        file,
        constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
        0o644,
      );
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ELOOP' || (code === 'EEXIST' && (await lstat(file)).isSymbolicLink()))
        throw new ServerError('E_PATH_ESCAPE', `${h.path} is a symlink`, { path: h.path });
      if (code === 'EEXIST')
        throw new ServerError('E_BAD_REQUEST', `${h.path} comes twice in the upload`, { path: h.path });
      throw err;
    }
    current = { h, fh, left: h.size };
    if (h.size === 0) await finish();
  };
  const finish = async () => {
    const c = current!;
    current = undefined;
    await c.fh.close();
    if (c.h.mtimeMs !== null) {
      const t = new Date(c.h.mtimeMs);
      await utimes(join(dir, ...c.h.parts), t, t);
    }
  };

  try {
    for await (const chunk of body) {
      let at = 0;
      while (at < chunk.length) {
        if (current) {
          const n = Math.min(current.left, chunk.length - at);
          await current.fh.write(chunk, at, n);
          current.left -= n;
          bytes += n;
          at += n;
          if (current.left === 0) await finish();
          continue;
        }
        const nl = chunk.indexOf(0x0a, at);
        const piece = chunk.subarray(at, nl < 0 ? chunk.length : nl);
        headerBytes += piece.length;
        if (headerBytes > MAX_HEADER_BYTES)
          throw new ServerError(
            'E_BAD_REQUEST',
            `a file's header line is longer than ${MAX_HEADER_BYTES} bytes`,
          );
        header.push(Buffer.from(piece));
        if (nl < 0) break;
        at = nl + 1;
        const line = Buffer.concat(header).toString('utf8');
        header = [];
        headerBytes = 0;
        await begin(line);
      }
    }
    if (current)
      throw new ServerError(
        'E_BAD_REQUEST',
        `the upload ends inside ${current.h.path} (${current.left} of its ${current.h.size} bytes missing)`,
        { path: current.h.path },
      );
    if (headerBytes > 0)
      throw new ServerError('E_BAD_REQUEST', "the upload ends inside a file's header line");
    if (top === undefined) throw new ServerError('E_BAD_REQUEST', 'the upload carries no file');
    return { top, files, bytes };
  } finally {
    await current?.fh.close().catch(() => {});
  }
}
