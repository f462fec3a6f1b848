/**
 * The volumes of a restored target, mounted read-write for identity and post-imaging scripts:
 * each file volume (ext2/3/4, vfat) and each raw NTFS volume (through ntfs-3g), on a loop
 * device over its partition. Partitions are found in the target's own table, not the image's,
 * so a layout that the restore grew or shrank is followed. A folder target is its own single
 * volume and is used as it is.
 *
 * Release unmounts and detaches everything, checking as the restore does that what was
 * written reached the disk (syncfs and the write-back errors, a clean ext superblock); it runs
 * on every exit path, and what a killed run left is released by the next run (owner.ts).
 */
import { stat } from 'node:fs/promises';

import {
  assertNotMounted,
  attachLoop,
  detachLoop,
  detachLoopVerified,
  deviceSize,
} from '../../disk/device.ts';
import {
  mountFilesystem,
  openTreeForWriting,
  releaseDeadRuns,
  writesInPlace,
  type TreeAccess,
} from '../../disk/filesystem.ts';
import { readPartitionTable } from '../../disk/partition-table.ts';
import { syncChecked, syncFilesystemChecked } from '../../disk/write-errors.ts';
import type { Manifest, Volume } from '../../image/types.ts';
import { systemReason } from '../../wording.ts';
import { volumeName } from '../paths.ts';
import { IdentityError } from './errors.ts';

export interface MountedVolume {
  /** How the image names the volume: p1, p2, … for partitions, v0 for a partition or folder image. */
  name: string;
  volume: Volume;
  /** ext4, vfat, directory, ntfs, … */
  type: string;
  /** Where its files are, read-write. */
  dir: string;
}

export interface RestoredVolumes {
  volumes: MountedVolume[];
  /** Volumes that were wanted but could not be mounted, and why. */
  notes: string[];
  /** Unmounts and detaches everything; safe to call twice. Throws the first failure after releasing the rest. */
  release(): Promise<void>;
}

/** Which volumes this module can mount: file volumes, and raw volumes blkid saw NTFS on. */
export function mountable(v: Volume): boolean {
  return v.kind === 'files' || v.detectedType === 'ntfs';
}

interface Place {
  volume: Volume;
  offset: number;
  size: number;
}

/** Where each volume of the image lies on the restored `target`. */
async function places(target: string, manifest: Manifest): Promise<Place[]> {
  if (!manifest.disk) {
    const volume = manifest.volumes[0];
    if (manifest.volumes.length !== 1 || !volume) return [];
    return [{ volume, offset: 0, size: await deviceSize(target) }];
  }
  const table = await readPartitionTable(target).catch((err: unknown) => {
    throw new IdentityError(
      'E_IDENTITY_TARGET',
      `cannot read the partition table of the restored ${target}: ${systemReason(err)}`,
      { target },
      { cause: err },
    );
  });
  return manifest.disk.partitions.map((p) => {
    const now = table.partitions.find((t) => t.number === p.number);
    if (!now) {
      throw new IdentityError(
        'E_IDENTITY_TARGET',
        `partition ${p.number} of the image is not in the partition table of ${target}; was it restored there?`,
        { target, partition: p.number },
      );
    }
    return { volume: manifest.volumes[p.volume]!, offset: now.startBytes, size: now.sizeBytes };
  });
}

/**
 * Mounts the volumes of the restored `target` that `want` picks (and this module can
 * mount). A volume that cannot be mounted is named in `notes`, unless `strict`, which
 * throws (E_IDENTITY_TARGET) after releasing what was mounted.
 */
export async function mountRestoredVolumes(
  target: string,
  manifest: Manifest,
  want: (v: Volume) => boolean,
  opts: { strict?: boolean; signal?: AbortSignal; onWarning?: (m: string) => void } = {},
): Promise<RestoredVolumes> {
  const st = await stat(target).catch((err: unknown) => {
    throw new IdentityError('E_IDENTITY_TARGET', `cannot reach ${target}: ${systemReason(err)}`, { target });
  });
  const releases: Array<() => Promise<void>> = [];
  const out: RestoredVolumes = {
    volumes: [],
    notes: [],
    async release() {
      let first: unknown;
      while (releases.length > 0) {
        try {
          await releases.pop()!();
        } catch (err) {
          first ??= err;
        }
      }
      if (first) throw first;
    },
  };
  if (st.isDirectory()) {
    const v = manifest.volumes[0];
    if (!manifest.disk && manifest.volumes.length === 1 && v?.kind === 'files' && want(v))
      out.volumes.push({ name: volumeName(v), volume: v, type: 'directory', dir: target });
    return out;
  }
  await releaseDeadRuns(opts.onWarning);
  await assertNotMounted(target, 'restored target');
  try {
    for (const p of await places(target, manifest)) {
      opts.signal?.throwIfAborted();
      if (!mountable(p.volume) || !want(p.volume)) continue;
      const name = volumeName(p.volume);
      const mounted = await mountOne(target, p).catch((err: unknown) => {
        const why = `${name} (${describe(p.volume)}) could not be mounted: ${(err as Error).message}`;
        if (opts.strict)
          throw new IdentityError('E_IDENTITY_TARGET', why, { target, volume: name }, { cause: err });
        out.notes.push(why);
        return undefined;
      });
      if (!mounted) continue;
      releases.push(mounted.release);
      out.volumes.push({ name, volume: p.volume, type: describe(p.volume), dir: mounted.dir });
    }
  } catch (err) {
    await out.release().catch(() => {});
    throw err;
  }
  return out;
}

function describe(v: Volume): string {
  return v.kind === 'files' ? v.fs.type : (v.detectedType ?? 'raw');
}

async function mountOne(target: string, p: Place): Promise<{ dir: string; release: () => Promise<void> }> {
  const v = p.volume;
  const what = `${volumeName(v)} (${describe(v)})`;
  if (v.kind === 'files' && v.fs.type === 'vfat' && !(await writesInPlace('vfat')))
    throw new Error('this kernel cannot mount vfat');
  const loop = await attachLoop(target, { offset: p.offset, size: p.size });
  let tree: TreeAccess;
  try {
    if (v.kind === 'files') tree = await openTreeForWriting(loop, v.fs, { target, what });
    else {
      const m = await mountFilesystem(loop, 'ntfs-3g', { readOnly: false });
      tree = {
        dir: m.dir,
        async close(commit) {
          try {
            if (commit) await syncFilesystemChecked(m.dir, target, what);
          } finally {
            await m.unmount();
          }
        },
      };
    }
  } catch (err) {
    await detachLoop(loop).catch(() => {});
    throw err;
  }
  let released = false;
  return {
    dir: tree.dir,
    async release() {
      if (released) return;
      released = true;
      try {
        await tree.close(true);
        await syncChecked(loop, target, what);
      } catch (err) {
        await detachLoop(loop).catch(() => {});
        throw err;
      }
      await detachLoopVerified(loop);
    },
  };
}
