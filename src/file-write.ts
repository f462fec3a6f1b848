/**
 * Positioned writes of whole buffers, cut into WRITE_PIECE-sized system calls.
 *
 * Why pieces: since Linux 6.x the page cache of ext4 (and others) takes folios as large as
 * the write asks for, up to 2 MiB. Those come from the high-order free lists, and on a
 * virtual machine with free page reporting that is memory the host has taken back: the copy
 * into it faults every page in again. Measured here (kernel 6.18, 800 MiB in 4 MiB chunks
 * onto a fresh ext4): 4 MiB writes took 0.16 s in some runs and 1.4-2.3 s in others, all of
 * it in copy_folio_from_iter_atomic; 256 KiB writes took 0.15-0.17 s every time, and 64 KiB
 * ones no less. coreutils' cp writes 256 KiB at a time too. The system calls this adds (16
 * per 4 MiB chunk) cost nothing measurable.
 */
import { write, writeSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';

export const WRITE_PIECE = 256 * 1024;

/** Writes `length` bytes of `buf` from `offset` at `position` of `fd`, piece by piece. */
export function writeFullSync(
  fd: number,
  buf: Uint8Array,
  offset: number,
  length: number,
  position: number,
): void {
  let done = 0;
  while (done < length) {
    const n = writeSync(fd, buf, offset + done, Math.min(length - done, WRITE_PIECE), position + done);
    if (n === 0) throw new Error('write made no progress');
    done += n;
  }
}

/** The asynchronous writes' loop: `put` writes one piece and says how much it took. */
async function inPieces(
  put: (offset: number, length: number, position: number) => Promise<number>,
  offset: number,
  length: number,
  position: number,
): Promise<void> {
  let done = 0;
  while (done < length) {
    const n = await put(offset + done, Math.min(length - done, WRITE_PIECE), position + done);
    if (n === 0) throw new Error('write made no progress');
    done += n;
  }
}

/**
 * writeFullSync off the calling thread (libuv's pool): the thread stays free while the
 * kernel holds a write back (a sync of the filesystem under way, dirty-page limits).
 */
export function writeFullAt(
  fd: number,
  buf: Uint8Array,
  offset: number,
  length: number,
  position: number,
): Promise<void> {
  const put = (o: number, n: number, at: number) =>
    new Promise<number>((resolve, reject) =>
      write(fd, buf, o, n, at, (err, written) => (err ? reject(err) : resolve(written))),
    );
  return inPieces(put, offset, length, position);
}

/** writeFullSync through a FileHandle. */
export function writeFull(
  fh: FileHandle,
  buf: Uint8Array,
  offset: number,
  length: number,
  position: number,
): Promise<void> {
  const put = async (o: number, n: number, at: number) => (await fh.write(buf, o, n, at)).bytesWritten;
  return inPieces(put, offset, length, position);
}

/** Writes `bufs` back to back from `position`: one writev when they are small, else piece by piece. */
export async function writeAll(fh: FileHandle, bufs: readonly Uint8Array[], position: number): Promise<void> {
  const total = bufs.reduce((n, b) => n + b.length, 0);
  let done = 0;
  if (total <= WRITE_PIECE) {
    done = (await fh.writev(bufs as Uint8Array[], position)).bytesWritten;
    if (done === total) return;
  }
  // After a short writev, `done` bytes are in: skip them and write the rest piece by piece.
  let skip = done;
  for (const b of bufs) {
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    await writeFull(fh, b, skip, b.length - skip, position + done);
    done += b.length - skip;
    skip = 0;
  }
}
