/**
 * Append journal: a small sidecar `<image>.append-journal` that exists only while an
 * append runs. It records the image's length and trailer before the append, so after
 * a crash (power loss, kill -9) mid-append `repairImage` can cut the file back to the
 * last committed generation without scanning it, and it keeps two processes from
 * appending to one image at once.
 */
import { open, readFile, unlink } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname } from 'node:path';

import { ImageError } from './errors.ts';
import { JOURNAL_SUFFIX } from './format.ts';
import { ioError } from './io.ts';

export interface Journal {
  pid: number;
  hostname: string;
  baseLength: number;
  generation: number;
  /** Hex of the trailer that ended the file before the append. */
  trailer: string;
}

export function journalPath(image: string): string {
  return image + JOURNAL_SUFFIX;
}

export async function readJournal(image: string): Promise<Journal | undefined> {
  let text: string;
  try {
    text = await readFile(journalPath(image), 'utf8');
  } catch {
    return undefined;
  }
  try {
    const j = JSON.parse(text) as Journal;
    if (Number.isSafeInteger(j.baseLength) && typeof j.trailer === 'string' && Number.isSafeInteger(j.pid))
      return j;
  } catch {
    // A journal torn by the crash itself: its append never wrote anything it would need.
  }
  return undefined;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Throws E_IMAGE_BUSY while another live process on this host appends to the image. */
export async function checkNotBusy(image: string): Promise<void> {
  const old = await readJournal(image);
  if (old && old.pid !== process.pid && old.hostname === hostname() && alive(old.pid)) {
    throw new ImageError(
      'E_IMAGE_BUSY',
      `${image} is being changed by another imgcast process (pid ${old.pid}); try again when it has finished`,
      { path: image, pid: old.pid },
    );
  }
}

/** Creates the journal, refusing while another live process on this host appends to the image. */
export async function beginJournal(image: string, j: Omit<Journal, 'pid' | 'hostname'>): Promise<void> {
  const path = journalPath(image);
  await checkNotBusy(image);
  const body = JSON.stringify({ pid: process.pid, hostname: hostname(), ...j });
  try {
    const fh = await open(path, 'w');
    try {
      await fh.writeFile(body);
      await fh.sync();
    } finally {
      await fh.close();
    }
    const dir = await open(dirname(path), 'r');
    await dir.sync().catch(() => {});
    await dir.close();
  } catch (err) {
    throw ioError(path, 'write append journal', err);
  }
}

export async function endJournal(image: string): Promise<void> {
  await unlink(journalPath(image)).catch(() => {});
}
