/**
 * Unused blocks of filesystems imgcast keeps as raw volumes (NTFS above all: Windows
 * lab machines). Their free space holds whatever deleted files left there, so zero
 * detection alone stores it all. partclone knows which blocks each of these
 * filesystems uses and writes them out as a ddrescue domain log (-D); the blocks it
 * marks as not in use are left out of the image and restored as zeros.
 *
 * Only blocks the log explicitly marks unused ('?') are skipped. Anything it does not
 * describe (NTFS's backup boot sector lies after the last cluster, for instance) is
 * captured like any raw data.
 */
import { readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { attachLoop, detachLoop } from './device.ts';
import { hasTool, runTool } from './exec.ts';
import { ownedTempDir } from './owner.ts';

/** blkid TYPE → partclone tool that can map its used blocks. */
const PARTCLONE_TOOL: Readonly<Record<string, string>> = {
  ntfs: 'partclone.ntfs',
  exfat: 'partclone.exfat',
  xfs: 'partclone.xfs',
  btrfs: 'partclone.btrfs',
  hfsplus: 'partclone.hfsp',
  f2fs: 'partclone.f2fs',
};

export interface UnusedMap {
  /** [start, end) byte ranges, relative to the device's start, sorted, not overlapping. */
  ranges: Array<[number, number]>;
  bytes: number;
  /** The tool that mapped them, for the manifest and messages. */
  tool: string;
}

/**
 * The unused ranges of the filesystem in bytes [offset, offset+size) of `path` (a device
 * or disk-image file; ranges are relative to `offset`), or why they are not known: no
 * partclone tool for this type, the tool is not installed, or it failed (a damaged
 * filesystem is then captured whole). A loop device is attached only when there is a
 * tool to run on it.
 */
export async function findUnused(
  path: string,
  range: { offset: number; size: number },
  type: string,
): Promise<UnusedMap | { reason: string }> {
  const tool = PARTCLONE_TOOL[type];
  if (!tool) return { reason: `no block map for ${type}` };
  if (!(await hasTool(tool))) return { reason: `${tool} is not installed (package partclone)` };
  const device = await attachLoop(path, { ...range, readOnly: true });
  const dir = await ownedTempDir(tmpdir(), 'imgcast-domain-');
  try {
    const log = join(dir, 'domain.log');
    const r = await runTool(tool, ['-D', '-s', device, '-o', log, '-q', '-L', join(dir, 'partclone.log')]);
    if (r.status !== 0)
      return { reason: `${tool} could not map ${device}: ${(r.stderr || r.stdout).trim()}` };
    const ranges = parseDomainLog(await readFile(log, 'utf8'));
    return { ranges, bytes: ranges.reduce((n, [s, e]) => n + (e - s), 0), tool };
  } finally {
    await rm(dir, { recursive: true, force: true });
    await detachLoop(device);
  }
}

/** The '?' (not used) blocks of a ddrescue domain log, merged; exported for tests. */
export function parseDomainLog(text: string): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  let headerSeen = false;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const f = line.split(/\s+/);
    // The first non-comment line is the current position and status, not a block.
    if (!headerSeen) {
      headerSeen = true;
      continue;
    }
    if (f.length < 3 || f[2] !== '?') continue;
    const start = Number.parseInt(f[0]!, 16);
    const size = Number.parseInt(f[1]!, 16);
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(size) || start < 0 || size <= 0) continue;
    const last = out[out.length - 1];
    if (last && start <= last[1]) last[1] = Math.max(last[1], start + size);
    else out.push([start, start + size]);
  }
  out.sort((a, b) => a[0] - b[0]);
  return out;
}
