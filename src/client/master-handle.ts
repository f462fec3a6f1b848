/**
 * Where a running `img session NAME master` leaves what `img session start NAME` needs to start
 * the session from another shell of the same workstation: the server and the master's token (a
 * new registration would replace that token). The file is the master process's: private to its
 * user (0600 in a 0700 folder), removed when it ends, and ignored once its process is gone.
 */
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { ClientError } from './errors.ts';

export interface MasterHandle {
  session: string;
  server: string;
  token: string;
  pid: number;
}

function folder(): string {
  const uid = process.getuid?.() ?? 0;
  return uid === 0 ? '/run/imgcast' : join(process.env.XDG_RUNTIME_DIR ?? tmpdir(), `imgcast-${uid}`);
}

function fileOf(session: string): string {
  return join(folder(), `master-${session}.json`);
}

export async function saveMasterHandle(h: Omit<MasterHandle, 'pid'>): Promise<() => Promise<void>> {
  await mkdir(folder(), { recursive: true, mode: 0o700 });
  const file = fileOf(h.session);
  await writeFile(file, JSON.stringify({ ...h, pid: process.pid }), { mode: 0o600 });
  return () => rm(file, { force: true });
}

/** The handle of the master of `session` running on this workstation; E_NOT_MASTER when none runs. */
export async function readMasterHandle(session: string): Promise<MasterHandle> {
  const file = fileOf(session);
  let h: MasterHandle;
  try {
    h = JSON.parse(await readFile(file, 'utf8')) as MasterHandle;
  } catch {
    throw new ClientError(
      'E_NOT_MASTER',
      `no img session ${session} master runs on this workstation (as this user); start the session on the master, or on the server with imgcast session start ${session}`,
      { session },
    );
  }
  if (!alive(h.pid)) {
    await rm(file, { force: true });
    throw new ClientError(
      'E_NOT_MASTER',
      `the img session ${session} master that ran on this workstation (process ${h.pid}) has ended`,
      { session },
    );
  }
  return h;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
