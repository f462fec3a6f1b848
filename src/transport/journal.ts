/**
 * Resume journal: an append-only text file, a header naming the session layout,
 * then one chunk id per line once that chunk is written. A journal whose header
 * names another layout (another image or file set) is ignored and restarted, so a
 * chunk id is never taken as present at a place it was not written to.
 */
import { createHash } from 'node:crypto';
import { open, readFile, type FileHandle } from 'node:fs/promises';
import { TransportError } from './errors.ts';
import type { SessionInfo } from './types.ts';

const HEADER = '#imgcast-journal 1 ';

export function sessionFingerprint(s: Pick<SessionInfo, 'chunks' | 'meta'>): string {
  // What was sent, not what it was called: a resume from the same image under another file name
  // (or from an older sender that did not say the name) is the same layout.
  const meta =
    s.meta && typeof s.meta === 'object' ? { ...(s.meta as Record<string, unknown>) } : (s.meta ?? null);
  if (meta && typeof meta === 'object') delete (meta as Record<string, unknown>).image;
  return createHash('sha256')
    .update(JSON.stringify([s.chunks.map((c) => [c.id, c.codec, c.rawLength]), meta]))
    .digest('hex');
}

/** Ids recorded under this fingerprint; empty when the file is absent or belongs to another layout. */
export async function readJournal(path: string, fingerprint: string): Promise<Set<string>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return new Set();
    throw new TransportError('E_CONSUMER', `cannot read journal ${path}: ${(e as Error).message}`, { path });
  }
  const lines = text.split('\n');
  if (lines[0] !== HEADER + fingerprint) return new Set();
  // A crash can leave a torn last line; only complete ids count.
  return new Set(lines.slice(1).filter((l) => /^[0-9a-f]{64}$/.test(l)));
}

/** Opens the journal for appending, restarting it when it belongs to another layout or `restart` is set. */
export async function openJournal(path: string, fingerprint: string, restart: boolean): Promise<FileHandle> {
  try {
    const known = restart
      ? false
      : (await readFile(path, 'utf8').catch(() => '')).startsWith(HEADER + fingerprint + '\n');
    const fh = await open(path, known ? 'a' : 'w');
    if (!known) await fh.write(`${HEADER}${fingerprint}\n`);
    return fh;
  } catch (e) {
    throw new TransportError('E_CONSUMER', `cannot write journal ${path}: ${(e as Error).message}`, { path });
  }
}
