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
import { resolve } from 'node:path';

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

export type Access = 'rw' | 'ro';

export interface MountedVolume {
  /** How the image names the volume: p1, p2, … for partitions, v0 for a partition or folder image. */
  name: string;
  volume: Volume;
  /** ext4, vfat, directory, ntfs, … */
  type: string;
  /** Where its files are; null when this machine cannot mount it (`why` says why). */
  dir: string | null;
  readOnly: boolean;
  /** The loop device over its partition; null for a folder target. */
  device: string | null;
  why?: string;
  /** Mounts a read-only volume read-write (`dir` changes); nothing when it is already. */
  makeWritable(): Promise<void>;
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
 * Mounts the volumes of the restored `target` that `pick` asks for, read-write or
 * read-only (this module mounts file volumes and NTFS). A volume that cannot be mounted is
 * named in `notes` and left out; a vfat volume on a kernel without vfat is listed with its
 * loop device and no folder (mtools can still reach it).
 */
export async function mountRestoredVolumes(
  target: string,
  manifest: Manifest,
  pick: (v: Volume) => Access | undefined,
  opts: { signal?: AbortSignal; onWarning?: (m: string) => void } = {},
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
    if (!manifest.disk && manifest.volumes.length === 1 && v?.kind === 'files' && pick(v)) {
      out.volumes.push({
        name: volumeName(v),
        volume: v,
        type: 'directory',
        // Scripts get it as IMGCAST_ROOT and run in it: a path that means the same from anywhere.
        dir: resolve(target),
        readOnly: false,
        device: null,
        makeWritable: async () => {},
      });
    }
    return out;
  }
  await releaseDeadRuns(opts.onWarning);
  await assertNotMounted(target, 'restored target');
  try {
    for (const p of await places(target, manifest)) {
      opts.signal?.throwIfAborted();
      const access = mountable(p.volume) ? pick(p.volume) : undefined;
      if (!access) continue;
      const name = volumeName(p.volume);
      const m = await attachVolume(target, p, access).catch((err: unknown) => {
        out.notes.push(`${name} (${describe(p.volume)}) could not be mounted: ${(err as Error).message}`);
        return undefined;
      });
      if (!m) continue;
      releases.push(m.release);
      if (m.volume.why) out.notes.push(`${name} (${m.volume.type}) is not mounted: ${m.volume.why}`);
      out.volumes.push(m.volume);
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

/** A mount of the volume at `p` on `loop`: its folder, and how to end it (`commit` flushes and checks writes). */
async function mountOn(loop: string, target: string, p: Place, access: Access): Promise<TreeAccess> {
  const v = p.volume;
  const what = `${volumeName(v)} (${describe(v)})`;
  if (v.kind === 'files') {
    if (access === 'rw') return openTreeForWriting(loop, v.fs, { target, what });
    const m = await mountFilesystem(loop, v.fs.type, { readOnly: true });
    return { dir: m.dir, close: () => m.unmount() };
  }
  const m = await mountFilesystem(loop, 'ntfs-3g', { readOnly: access === 'ro' });
  return {
    dir: m.dir,
    async close(commit) {
      try {
        if (commit && access === 'rw') await syncFilesystemChecked(m.dir, target, what);
      } finally {
        await m.unmount();
      }
    },
  };
}

async function attachVolume(
  target: string,
  p: Place,
  access: Access,
): Promise<{ volume: MountedVolume; release: () => Promise<void> }> {
  const v = p.volume;
  const name = volumeName(v);
  const type = describe(v);
  const what = `${name} (${type})`;
  const loop = await attachLoop(target, { offset: p.offset, size: p.size });
  let tree: TreeAccess | undefined;
  let current: Access = access;
  const volume: MountedVolume = {
    name,
    volume: v,
    type,
    dir: null,
    readOnly: access === 'ro',
    device: loop,
    async makeWritable() {
      if (current === 'rw' || !tree) return;
      await tree.close(false);
      tree = undefined;
      volume.dir = null;
      tree = await mountOn(loop, target, p, 'rw');
      current = 'rw';
      volume.dir = tree.dir;
      volume.readOnly = false;
    },
  };
  try {
    if (v.kind === 'files' && v.fs.type === 'vfat' && !(await writesInPlace('vfat'))) {
      volume.why = 'this kernel cannot mount vfat';
    } else {
      tree = await mountOn(loop, target, p, access);
      volume.dir = tree.dir;
    }
  } catch (err) {
    await detachLoop(loop).catch(() => {});
    throw err;
  }
  let released = false;
  return {
    volume,
    async release() {
      if (released) return;
      released = true;
      try {
        await tree?.close(true);
        if (current === 'rw') await syncChecked(loop, target, what);
      } catch (err) {
        await detachLoop(loop).catch(() => {});
        throw err;
      }
      await detachLoopVerified(loop);
    },
  };
}
