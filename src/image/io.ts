/** File I/O helpers shared by the reader, writer, journal and compaction. */
import type { FileHandle } from 'node:fs/promises';

import { ImageError } from './errors.ts';
import { systemReason } from '../wording.ts';

export function ioError(path: string, what: string, err: unknown): ImageError {
  const code = (err as NodeJS.ErrnoException)?.code;
  const why =
    code === 'ENOENT'
      ? 'no such file'
      : code === 'EACCES' || code === 'EPERM'
        ? 'permission denied'
        : code === 'EISDIR'
          ? 'it is a directory'
          : code === 'ENOSPC'
            ? 'no space left on the device'
            : systemReason(err);
  return new ImageError(
    'E_IMAGE_IO',
    `cannot ${what} ${path}: ${why}`,
    { path, errno: code },
    { cause: err },
  );
}

/**
 * Reads exactly `length` bytes at `position`, or fewer only at end of file: into `into`
 * when it is big enough (the result is then a view of it), else into a new buffer.
 */
export async function readAt(
  fh: FileHandle,
  position: number,
  length: number,
  into?: Buffer,
): Promise<Buffer> {
  const buf = into && into.length >= length ? into : Buffer.allocUnsafe(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(buf, done, length - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return buf.subarray(0, done);
}
