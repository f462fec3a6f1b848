/**
 * Write errors a restore must not lose. Most writes land in a page cache first: a write
 * that "succeeded" can still fail when the kernel writes the page back, and then only a
 * later syncfs or fsync reports it (once: the kernel's errseq hands each error to one
 * caller). A filesystem on a loop device over a file on a full filesystem is the common
 * case: every write-back of the loop device fails, the filesystem on it logs I/O errors,
 * and nothing else notices. So each layer a restore writes through is flushed and
 * checked (syncfs per mounted filesystem, fsync of every loop device and of the target),
 * and a failure becomes E_DISK_WRITE naming the target and, when that is the cause, the
 * full filesystem the bytes were going to.
 */
import { open, stat, statfs } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { loopRange } from './device.ts';
import { DiskError } from './errors.ts';
import { runTool } from './exec.ts';
import { count, systemReason } from '../wording.ts';

const MiB = 1024 * 1024;

function bytes(n: number): string {
  return n >= MiB ? `${(n / MiB).toFixed(1)} MiB` : count(n, 'byte');
}

/**
 * Why writes to `path` may fail for want of space, or undefined: the file it is (or,
 * through loop devices, the file behind it) lives on a filesystem with less than a MiB
 * free, or `errno` says ENOSPC or EDQUOT.
 */
export async function spaceProblem(path: string, errno?: string): Promise<string | undefined> {
  let file = path;
  const chain: string[] = [];
  for (let depth = 0; depth < 4; depth++) {
    const st = await stat(file).catch(() => undefined);
    if (!st) return undefined;
    if (!st.isBlockDevice()) break;
    const loop = await loopRange(basename(file));
    if (!loop) return errno === 'ENOSPC' ? `${path} has no space left` : undefined;
    chain.push(file);
    file = loop.backingFile;
  }
  const st = await stat(file).catch(() => undefined);
  if (!st?.isFile()) return undefined;
  const fs = await statfs(dirname(file)).catch(() => undefined);
  if (!fs) return undefined;
  const free = fs.bavail * fs.bsize;
  if (free >= MiB && errno !== 'ENOSPC' && errno !== 'EDQUOT') return undefined;
  const mount = (
    await runTool('findmnt', ['-n', '-o', 'TARGET,FSTYPE', '--target', file]).catch(() => undefined)
  )?.stdout
    .trim()
    .split(/\s+/);
  const where = mount?.[0] ? `, mounted on ${mount[0]}${mount[1] ? ` (${mount[1]})` : ''},` : '';
  const via = chain.length > 0 ? ` (the file behind ${chain[chain.length - 1]})` : '';
  const allocated = st.blocks * 512;
  const short =
    allocated < st.size
      ? `; the file is ${bytes(st.size)} but only ${bytes(allocated)} of it could be stored`
      : '';
  const what = errno === 'EDQUOT' ? 'is over its disk quota' : `is full: ${bytes(free)} free`;
  return `the filesystem holding ${file}${via}${where} ${what}${short}`;
}

/**
 * The E_DISK_WRITE for a failed write or flush while restoring onto `target`: `what`
 * says what was being written ("partition 2 (ext4)", "boot area 1"), `err` why.
 */
export async function writeFailure(target: string, what: string, err: unknown): Promise<DiskError> {
  if (err instanceof DiskError && err.code === 'E_DISK_WRITE') return err;
  const e = err as NodeJS.ErrnoException;
  const reason = systemReason(err);
  const space = await spaceProblem(target, e?.code).catch(() => undefined);
  return new DiskError(
    'E_DISK_WRITE',
    `restoring onto ${target}: ${what}: ${reason}${space ? `; ${space}` : ''}; what was restored there is incomplete`,
    { target, what, ...(e?.code ? { errno: e.code } : {}) },
    { cause: err },
  );
}

/**
 * fsync on a fresh descriptor: the kernel reports a write-back error to the first
 * descriptor that syncs after it, opened before it or not, so this finds errors that
 * writes through other descriptors (mkfs, mtools, loop devices stacked on it) left.
 */
export async function syncChecked(path: string, target: string, what: string): Promise<void> {
  try {
    const fh = await open(path, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  } catch (err) {
    throw await writeFailure(target, what, err);
  }
}

/**
 * syncfs of the filesystem mounted at `dir` (sync -f), which reports any write-back
 * error of that filesystem that no one has collected yet.
 */
export async function syncFilesystemChecked(dir: string, target: string, what: string): Promise<void> {
  const r = await runTool('sync', ['-f', dir]);
  if (r.status !== 0) {
    const reason = (r.stderr || r.stdout).trim() || `sync -f exited with status ${r.status}`;
    throw await writeFailure(target, what, new Error(`flushing it failed: ${reason}`));
  }
}
