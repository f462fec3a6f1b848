/**
 * The ext space arithmetic against the real thing: mkfs.ext4 at many sizes, and real
 * trees restored into filesystems made exactly as small as the estimate says they may be.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { link, mkdir, open, readdir, symlink, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { mountFilesystem } from '../../src/disk/filesystem.ts';
import {
  extDefaultInodes,
  extFilesNeed,
  extHolds,
  extMinBytes,
  extMkfsInodes,
  extOverheadBytes,
  spareBytes,
} from '../../src/disk/fs-space.ts';
import { makeImage } from '../../src/engine/make.ts';
import { restoreImage } from '../../src/engine/restore.ts';
import type { FileEntry, FilesystemInfo, FileVolume } from '../../src/image/types.ts';
import { hasCommand, loopUnavailable, skipUnless, tempDir } from '../helpers/env.ts';
import { trackedLoops } from './loops.ts';

const MiB = 1024 * 1024;
const EXT4 = [
  'has_journal',
  'ext_attr',
  'resize_inode',
  'dir_index',
  'filetype',
  'extent',
  '64bit',
  'flex_bg',
  'sparse_super',
  'large_file',
  'huge_file',
  'dir_nlink',
  'extra_isize',
  'metadata_csum',
];
const FEATURE_SETS: Record<string, { type: 'ext2' | 'ext4'; features: string[] }> = {
  ext4: { type: 'ext4', features: EXT4 },
  'ext4 without 64bit, with orphan_file': {
    type: 'ext4',
    features: [...EXT4.filter((f) => f !== '64bit'), 'orphan_file'],
  },
  ext2: {
    type: 'ext2',
    features: ['ext_attr', 'resize_inode', 'dir_index', 'filetype', 'sparse_super', 'large_file'],
  },
};

async function sparse(path: string, size: number): Promise<string> {
  await (await open(path, 'w')).close();
  await truncate(path, size);
  return path;
}

function superblock(path: string): (field: string) => number {
  const out = execFileSync('dumpe2fs', ['-h', path], { encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] });
  return (field) => Number(new RegExp(`^${field}:\\s*(\\d+)`, 'm').exec(out)![1]);
}

function mkfs(path: string, fs: FilesystemInfo, extra: string[] = []): void {
  execFileSync(
    `mkfs.${fs.type}`,
    [
      '-q',
      '-F',
      '-b',
      String(fs.blockSize),
      '-I',
      String(fs.inodeSize),
      '-O',
      ['none', ...(fs.features ?? [])].join(','),
      ...extra,
      path,
    ],
    { stdio: 'pipe' },
  );
}

test('the overhead estimate is never below what mkfs takes, and within 0.2 % + 1.1 MiB above it', async (t) => {
  if (!hasCommand('mkfs.ext4') || !hasCommand('dumpe2fs')) return void t.skip('needs e2fsprogs');
  const dir = await tempDir(t);
  const f = join(dir, 'fs.img');
  for (const [name, set] of Object.entries(FEATURE_SETS)) {
    for (const blockSize of [1024, 4096]) {
      for (const mib of [9, 33, 200, 511, 512, 1500, 5000, 20000]) {
        const fs: FilesystemInfo = { type: set.type, blockSize, inodeSize: 256, features: set.features };
        await sparse(f, mib * MiB);
        mkfs(f, fs);
        const sb = superblock(f);
        const used = (sb('Block count') - sb('Free blocks')) * blockSize;
        const est = extOverheadBytes(mib * MiB, fs);
        const what = `${name}, ${blockSize}-byte blocks, ${mib} MiB: estimate ${est}, mkfs took ${used}`;
        assert.ok(est >= used, what);
        assert.ok(est - used <= mib * MiB * 0.002 + 1.1 * MiB, what);
        assert.equal(extDefaultInodes(mib * MiB, fs), sb('Inode count'), what);
      }
    }
  }
});

/** A tree with what takes room besides file bytes: many small files, big folders, long symlinks, xattrs, hard links, holes. */
async function awkwardTree(root: string): Promise<void> {
  for (let d = 0; d < 30; d++) {
    await mkdir(join(root, `dir${d}`, 'sub'), { recursive: true });
    for (let i = 0; i < 100; i++) {
      await writeFile(join(root, `dir${d}`, `file${i}`), randomBytes((i * 997 + d * 31) % 20000));
    }
  }
  await mkdir(join(root, 'big folder'));
  for (let i = 0; i < 2000; i++)
    await writeFile(join(root, 'big folder', `a-rather-long-file-name-${i}.conf`), 'x');
  for (let i = 0; i < 40; i++)
    await symlink(`/usr/share/${'very-long-target-'.repeat(5)}${i}`, join(root, `link${i}`));
  for (let i = 0; i < 50; i++) {
    const p = join(root, `attr${i}`);
    await writeFile(p, 'a');
    execFileSync('setfattr', ['-n', 'user.note', '-v', `0x${randomBytes(300).toString('hex')}`, p]);
  }
  await writeFile(join(root, 'data.bin'), randomBytes(30 * MiB));
  for (let i = 0; i < 5; i++) await link(join(root, 'data.bin'), join(root, `data-link${i}`));
  const fh = await open(join(root, 'holes.img'), 'w');
  for (const at of [0, 20 * MiB, 63 * MiB]) await fh.write(randomBytes(512 * 1024), 0, 512 * 1024, at);
  await fh.truncate(64 * MiB);
  await fh.close();
}

test('files fit an ext filesystem made exactly as small as the estimate allows (no spare), and not in 4 MiB less', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  if (!hasCommand('setfattr')) return void t.skip('needs setfattr (package attr)');
  const loops = trackedLoops(t);
  const dir = await tempDir(t);
  const tree = join(dir, 'tree');
  await mkdir(tree);
  await awkwardTree(tree);
  const image = join(dir, 'tree.imgc');
  const { manifest } = await makeImage(tree, image, { level: 'none' });
  const captured = manifest.volumes[0] as FileVolume;
  for (const blockSize of [1024, 4096]) {
    const fs: FilesystemInfo = { type: 'ext4', blockSize, inodeSize: 256, features: EXT4 };
    const volume: FileVolume = { ...captured, fs };
    const need = extFilesNeed(volume, 1, blockSize);
    let size = MiB;
    while (!extHolds(size, fs, need, false)) size += MiB;
    // At the estimate's size everything fits; 4 MiB less does not: the estimate is safe and tight.
    for (const [bytes, fits] of [
      [size, true],
      [size - 4 * MiB, false],
    ] as const) {
      const file = await sparse(join(dir, `fs-${blockSize}-${bytes}.img`), bytes);
      const inodes = extMkfsInodes(volume, 1, bytes);
      mkfs(file, fs, inodes ? ['-N', String(inodes)] : []);
      const loop = await loops.attach(file);
      const m = await mountFilesystem(loop, 'ext4', { readOnly: false });
      const what = `${blockSize}-byte blocks, ${bytes} bytes`;
      try {
        if (fits) {
          await restoreImage(image, m.dir, { fileset: 1, force: true });
          assert.equal((await readdir(join(m.dir, 'big folder'))).length, 2000);
        } else {
          await assert.rejects(restoreImage(image, m.dir, { fileset: 1, force: true }), /ENOSPC/, what);
        }
      } finally {
        await m.unmount();
      }
      await loops.detach(loop);
      if (!fits) continue;
      const fsck = spawnSync('fsck.ext4', ['-fn', file], { encoding: 'utf8' });
      assert.equal(fsck.status, 0, `${what}: ${fsck.stdout}${fsck.stderr}`);
    }
  }
});

test('the spare: 10 % of the files, at least 64 MiB; the minimum size holds files and spare', () => {
  assert.equal(spareBytes(0), 64 * MiB);
  assert.equal(spareBytes(100 * MiB), 64 * MiB);
  assert.equal(spareBytes(2000 * MiB), 200 * MiB);
  const fs: FilesystemInfo = { type: 'ext4', blockSize: 4096, inodeSize: 256, features: EXT4 };
  const need = { bytes: 900 * MiB, inodes: 30000 };
  const min = extMinBytes(fs, need, MiB);
  assert.ok(extHolds(min, fs, need) && !extHolds(min - MiB, fs, need));
  assert.ok(min - extOverheadBytes(min, fs) >= need.bytes + 90 * MiB);
});

test('hard links count once, holes not at all, excluded files not for their file set', () => {
  const entry = (path: string, more: Partial<FileEntry>): FileEntry => ({
    path,
    type: 'file',
    mode: 0o644,
    uid: 0,
    gid: 0,
    mtimeNs: '0',
    atimeNs: '0',
    ...more,
  });
  const volume: FileVolume = {
    kind: 'files',
    index: 0,
    fs: { type: 'ext4', blockSize: 4096, inodeSize: 256, features: EXT4 },
    entries: [
      { ...entry('.', {}), type: 'dir' },
      entry('a', { size: 10 * MiB, hardlinkGroup: 1 }),
      entry('b', { size: 10 * MiB, hardlinkGroup: 1 }),
      entry('holes', {
        size: 1024 * MiB,
        sparse: true,
        extents: [
          { offset: 0, length: 4096, chunk: 'x', chunkOffset: 0 },
          { offset: 512 * MiB, length: 8192, chunk: 'y', chunkOffset: 0 },
        ],
      }),
      entry('big', { size: 100 * MiB, excludedFrom: 0b10 }),
    ],
  };
  const all = extFilesNeed(volume, 1, 4096);
  const set2 = extFilesNeed(volume, 2, 4096);
  // Root folder 1 block, a+b 2560 blocks once, the sparse file 3 blocks, big 25600 blocks.
  assert.deepEqual(set2, { bytes: (1 + 2560 + 3) * 4096, inodes: 3 });
  assert.deepEqual(all, { bytes: (1 + 2560 + 3 + 25600) * 4096, inodes: 4 });
});

test('a filesystem restored larger than its source still gets the inodes its files need', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  const dir = await tempDir(t);
  // 200 MiB made with one inode per 4 KiB (mke2fs's "small"), holding 34000 files.
  const tree = join(dir, 'tree');
  for (let d = 0; d < 34; d++) {
    await mkdir(join(tree, `d${d}`), { recursive: true });
    for (let i = 0; i < 1000; i++) await writeFile(join(tree, `d${d}`, `f${i}`), '');
  }
  const source = await sparse(join(dir, 'source.img'), 200 * MiB);
  execFileSync('mkfs.ext4', ['-q', '-F', '-b', '4096', '-d', tree, source], { stdio: 'pipe' });
  const image = join(dir, 'many.imgc');
  const { manifest } = await makeImage(source, image, { level: 'none' });
  const volume = manifest.volumes[0] as FileVolume;
  assert.ok(volume.entries.length > 34000);
  // At 520 MiB mke2fs gives one inode per 16 KiB: fewer than the files.
  const plain = await sparse(join(dir, 'plain.img'), 520 * MiB);
  execFileSync('mkfs.ext4', ['-q', '-F', '-b', '4096', plain], { stdio: 'pipe' });
  assert.ok(superblock(plain)('Inode count') < volume.entries.length, 'the default would be too few');

  const target = await sparse(join(dir, 'target.img'), 520 * MiB);
  await restoreImage(image, target, { fileset: 1, overwrite: true });
  const sb = superblock(target);
  assert.ok(sb('Inode count') >= volume.entries.length + 4096, `${sb('Inode count')} inodes`);
  assert.ok(sb('Inode count') - sb('Free inodes') >= volume.entries.length);
  const fsck = spawnSync('fsck.ext4', ['-fn', target], { encoding: 'utf8' });
  assert.equal(fsck.status, 0, fsck.stdout + fsck.stderr);
});
