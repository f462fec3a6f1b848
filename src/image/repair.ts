/**
 * Brings an image back to its last committed generation after an append was
 * interrupted by a crash, using the append journal (see journal.ts). Never touches
 * a committed generation: it only cuts off what the interrupted append wrote.
 */
import { open, stat } from 'node:fs/promises';

import { ImageError } from './errors.ts';
import { TRAILER_SIZE } from './format.ts';
import { checkNotBusy, endJournal, readJournal } from './journal.ts';
import { ioError, readAt } from './io.ts';
import { openContainer } from './reader.ts';

export interface RepairResult {
  repaired: boolean;
  generation: number;
  /** Bytes of the interrupted append that were cut off. */
  bytesDropped: number;
}

export async function repairImage(path: string): Promise<RepairResult> {
  await checkNotBusy(path);
  let openErr: unknown;
  try {
    // Strict open: a plain reader would fall back to the last committed generation and hide the damage.
    const c = await openContainer(path, 'r+');
    await c.fh.close();
    // Intact: a journal left beside it belongs to an append that crashed before writing, or after committing.
    await endJournal(path);
    return { repaired: false, generation: c.trailer.generation, bytesDropped: 0 };
  } catch (err) {
    if (!(err instanceof ImageError) || err.code === 'E_IMAGE_IO') throw err;
    openErr = err;
  }
  const j = await readJournal(path);
  if (!j) throw openErr;
  const size = (await stat(path)).size;
  const fh = await open(path, 'r+').catch((err: unknown) => {
    throw ioError(path, 'open image', err);
  });
  try {
    const t =
      size >= j.baseLength && j.baseLength >= TRAILER_SIZE
        ? await readAt(fh, j.baseLength - TRAILER_SIZE, TRAILER_SIZE)
        : undefined;
    if (!t || t.toString('hex') !== j.trailer) {
      throw new ImageError(
        'E_IMAGE_CORRUPT',
        `${path} cannot be repaired: the generation ${j.generation} it had before the interrupted append is no longer intact`,
        { path, generation: j.generation },
      );
    }
    await fh.truncate(j.baseLength);
    await fh.sync();
  } finally {
    await fh.close();
  }
  const c = await openContainer(path, 'r+');
  await c.fh.close();
  await endJournal(path);
  return { repaired: true, generation: c.trailer.generation, bytesDropped: size - j.baseLength };
}
