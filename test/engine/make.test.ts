import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { access, link, mkdir, open, readFile, symlink, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { DiskError } from '../../src/disk/errors.ts';
import { InterruptedError } from '../../src/errors.ts';
import { mountFilesystem } from '../../src/disk/filesystem.ts';
import { makeImage } from '../../src/engine/make.ts';
import { restoreFromSource, restoreImage } from '../../src/engine/restore.ts';
import { ImageReader } from '../../src/image/reader.ts';
import type { ChunkSource } from '../../src/image/types.ts';
import { hasCommand, loopUnavailable, skipUnless, tempDir } from '../helpers/env.ts';
import { compareTrees } from './tree-compare.ts';

const MiB = 1024 * 1024;

async function sparse(path: string, size: number): Promise<string> {
  await (await open(path, 'w')).close();
  await truncate(path, size);
  return path;
}

async function writeRange(path: string, position: number, data: Buffer): Promise<void> {
  const fh = await open(path, 'r+');
  await fh.write(data, 0, data.length, position);
  await fh.close();
}

test('directory → image file → directory keeps every file and its metadata', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(join(src, 'a/b/c'), { recursive: true });
  await writeFile(join(src, 'a/b/c/deep.txt'), 'deep\n');
  await writeFile(join(src, 'big.bin'), randomBytes(5 * MiB + 17));
  await writeFile(join(src, 'empty'), '');
  await writeFile(join(src, 'script.sh'), '#!/bin/sh\n', { mode: 0o750 });
  await link(join(src, 'big.bin'), join(src, 'a/big-again'));
  await symlink('a/b/c/deep.txt', join(src, 'shortcut'));
  for (let i = 0; i < 50; i++) await writeFile(join(src, 'a', `small-${i}`), `small file ${i}\n`);
  if (hasCommand('setfattr')) execFileSync('setfattr', ['-n', 'user.tag', '-v', 'kept', join(src, 'empty')]);

  const image = join(dir, 'tree.imgc');
  const made = await makeImage(src, image, { level: 'balanced' });
  assert.equal(made.manifest.source.kind, 'directory');
  assert.equal(made.manifest.disk, undefined);
  assert.equal(made.manifest.volumes.length, 1);
  assert.equal(made.manifest.generation, 1);
  assert.match(made.manifest.imageId, /^[0-9a-f-]{36}$/);
  assert.ok(made.stats.chunksWritten > 0 && made.stats.uniqueChunks <= made.stats.chunksWritten);

  const reader = await ImageReader.open(image);
  assert.deepEqual(reader.manifest.volumes, made.manifest.volumes);
  await reader.close();

  const out = join(dir, 'out');
  const restored = await restoreImage(image, out, { fileset: 1 });
  assert.match(restored.description, /^directory /);
  assert.deepEqual(await compareTrees(src, out, { ignoreRoot: true }), []);

  // A non-empty directory is refused unless forced, and nothing in it changes.
  await writeFile(join(out, 'a/b/c/deep.txt'), 'changed\n');
  await assert.rejects(restoreImage(image, out, { fileset: 1 }), (e: unknown) => {
    assert.ok(e instanceof DiskError);
    assert.equal(e.code, 'E_DISK_TARGET');
    assert.match(e.message, /is not empty/);
    return true;
  });
  assert.equal(await readFile(join(out, 'a/b/c/deep.txt'), 'utf8'), 'changed\n');

  // A damaged chunk fails the restore with the chunk named; it is never written as good data.
  const damaged = join(dir, 'damaged.imgc');
  const bytes = await readFile(image);
  const at = bytes.indexOf(await readFile(join(src, 'big.bin')).then((b) => b.subarray(MiB, MiB + 64)));
  // Random data never shrinks, so it is stored as is and can be found in the file.
  assert.ok(at >= 0);
  bytes[at + 10]! ^= 0xff;
  await writeFile(damaged, bytes);
  await assert.rejects(restoreImage(damaged, join(dir, 'from-damaged'), { fileset: 1 }), (e: unknown) => {
    assert.equal((e as { code?: string }).code, 'E_CHUNK_CORRUPT');
    assert.match((e as Error).message, /[0-9a-f]{64}/);
    return true;
  });

  // An image of a directory cannot go onto a file as if it were a partition.
  const asFile = await sparse(join(dir, 'file.img'), MiB);
  await assert.rejects(restoreImage(image, asFile, { fileset: 1 }), (e: unknown) => {
    return e instanceof DiskError && e.code === 'E_DISK_TARGET' && /directory tree/.test(e.message);
  });
});

test('capture of something that is not there is refused before an image file is created', async (t) => {
  const dir = await tempDir(t);
  const image = join(dir, 'never.imgc');
  await assert.rejects(makeImage(join(dir, 'missing'), image, { level: 'none' }), (e: unknown) => {
    return e instanceof DiskError && e.code === 'E_DISK_SOURCE' && e.message.includes('missing');
  });
  await assert.rejects(access(image));
  await assert.rejects(access(`${image}.partial`));
});

test('MBR disk-image file with logical partitions: raw partitions and the EBR chain restore byte-exact onto a new file', async (t) => {
  if (!hasCommand('sfdisk')) return void t.skip('needs sfdisk');
  const dir = await tempDir(t);
  const disk = await sparse(join(dir, 'mbr.img'), 48 * MiB);
  execFileSync('sfdisk', ['-q', disk], {
    input:
      'label: dos\nstart=63, size=10MiB, type=7, bootable\ntype=5\nsize=5MiB, type=83\nsize=6MiB, type=82\n',
  });
  await writeRange(disk, 0, randomBytes(440));
  await writeRange(disk, 2 * 512, randomBytes(20 * 512));
  await writeRange(disk, 63 * 512 + 4096, randomBytes(MiB));
  // Data inside a logical partition and after the last partition's start.
  await writeRange(disk, 63 * 512 + 10 * MiB + 2 * MiB, randomBytes(300 * 1024));

  const image = join(dir, 'mbr.imgc');
  const { manifest } = await makeImage(disk, image, { level: 'speed' });
  assert.equal(manifest.disk?.table, 'mbr');
  // The extended container is no volume; its logical partitions are volumes of their own.
  assert.deepEqual(
    manifest.disk.partitions.map((p) => [p.number, p.type, p.bootable]),
    [
      [1, '07', true],
      [5, '83', false],
      [6, '82', false],
    ],
  );
  assert.deepEqual(
    manifest.disk.containers?.map((c) => [c.number, c.type]),
    [[2, '05']],
  );
  assert.deepEqual(
    manifest.volumes.map((v) => v.kind),
    ['raw', 'raw', 'raw'],
  );
  // Sector 0 up to partition 1, then each extended boot record up to its logical partition.
  const [p5, p6] = [manifest.disk.partitions[1]!, manifest.disk.partitions[2]!];
  const ebrs = manifest.disk.bootAreas.slice(1);
  assert.deepEqual(
    manifest.disk.bootAreas[0] && [manifest.disk.bootAreas[0].offset, manifest.disk.bootAreas[0].length],
    [0, 63 * 512],
  );
  assert.equal(ebrs.length, 2);
  assert.equal(ebrs[0]!.offset, manifest.disk.containers![0]!.startBytes);
  assert.equal(ebrs[0]!.offset + ebrs[0]!.length, p5.startBytes);
  assert.equal(ebrs[1]!.offset + ebrs[1]!.length, p6.startBytes);

  const target = join(dir, 'restored.img');
  await restoreImage(image, target, { fileset: 1, create: true });
  const a = await readFile(disk);
  const b = await readFile(target);
  assert.equal(b.length, a.length);
  // Table, boot code, gap, EBR chain, logical partitions' data: everything is identical.
  assert.ok(b.equals(a));
  const dump = (f: string) =>
    execFileSync('sfdisk', ['-d', f], { encoding: 'utf8' })
      .replace(/^(label-id|device):.*$/gm, '')
      .replaceAll(f, 'X');
  assert.equal(dump(target), dump(disk));

  // A restore that fails onto a file it created leaves no file behind.
  const reader = await ImageReader.open(image);
  try {
    const dying: ChunkSource = {
      readChunk: async () => {
        throw new Error('source lost');
      },
    };
    const never = join(dir, 'never.img');
    await assert.rejects(
      restoreFromSource(reader.manifest, dying, never, { fileset: 1, create: true }),
      /source lost/,
    );
    await assert.rejects(access(never));
  } finally {
    await reader.close();
  }
});

test('MBR disk with ext4 in a logical partition: captured as files, restored with the same chain, fsck clean', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  if (!hasCommand('sfdisk')) return void t.skip('needs sfdisk');
  const dir = await tempDir(t);
  const disk = await sparse(join(dir, 'logical.img'), 80 * MiB);
  execFileSync('sfdisk', ['-q', disk], {
    input: 'label: dos\nsize=8MiB, type=83\ntype=5\nsize=40MiB, type=83\nsize=8MiB, type=83\n',
  });
  // This kernel may not scan loop partitions: attach partition 5 by offset, as the engine does.
  const part5 = (f: string): string => {
    const table = JSON.parse(execFileSync('sfdisk', ['-J', f], { encoding: 'utf8' })) as {
      partitiontable: { partitions: Array<{ node: string; start: number; size: number }> };
    };
    const p = table.partitiontable.partitions.find((x) => x.node.endsWith('5'))!;
    const dev = execFileSync(
      'losetup',
      ['--find', '--show', '-o', String(p.start * 512), '--sizelimit', String(p.size * 512), f],
      { encoding: 'utf8' },
    ).trim();
    t.after(() => void spawnSync('losetup', ['-d', dev]));
    return dev;
  };
  const files = new Map<string, Buffer>([
    ['etc/hostname', Buffer.from('lab-pc-01\n')],
    ['home/demo/notes.txt', Buffer.from('logical partitions hold files too\n'.repeat(100))],
    ['srv/blob.bin', randomBytes(3 * MiB)],
  ]);
  const loop = part5(disk);
  execFileSync('mkfs.ext4', ['-q', '-L', 'logicalroot', loop]);
  const m = await mountFilesystem(loop, 'ext4', { readOnly: false });
  try {
    for (const [name, data] of files) {
      await mkdir(join(m.dir, name, '..'), { recursive: true });
      await writeFile(join(m.dir, name), data);
    }
  } finally {
    await m.unmount();
  }
  execFileSync('losetup', ['-d', loop]);

  const image = join(dir, 'logical.imgc');
  const { manifest } = await makeImage(disk, image, { level: 'speed' });
  const p5 = manifest.disk!.partitions.find((p) => p.number === 5)!;
  const v5 = manifest.volumes[p5.volume]!;
  assert.ok(
    v5.kind === 'files' && v5.fs.type === 'ext4' && v5.fs.label === 'logicalroot',
    JSON.stringify(v5.kind),
  );
  assert.deepEqual(
    v5.entries
      .filter((e) => e.type === 'file')
      .map((e) => e.path)
      .sort(),
    [...files.keys()].sort(),
  );

  const target = join(dir, 'restored.img');
  await restoreImage(image, target, { fileset: 1, create: true });
  const dump = (f: string) =>
    execFileSync('sfdisk', ['-d', f], { encoding: 'utf8' })
      .replace(/^(label-id|device):.*$/gm, '')
      .replaceAll(f, 'X');
  assert.equal(dump(target), dump(disk));
  const back = part5(target);
  const fsck = spawnSync('fsck.ext4', ['-fn', back], { encoding: 'utf8' });
  assert.equal(fsck.status, 0, fsck.stdout + fsck.stderr);
  const mb = await mountFilesystem(back, 'ext4', { readOnly: true });
  try {
    for (const [name, data] of files) assert.deepEqual(await readFile(join(mb.dir, name)), data, name);
  } finally {
    await mb.unmount();
  }
});

test('NTFS partition: only the blocks NTFS uses are stored (partclone map), and the restore reads back', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  for (const c of ['sfdisk', 'mkntfs', 'ntfscp', 'ntfscat', 'partclone.ntfs']) {
    if (!hasCommand(c)) return void t.skip(`needs ${c} (packages fdisk, ntfs-3g, partclone)`);
  }
  const dir = await tempDir(t);
  const disk = await sparse(join(dir, 'win.img'), 72 * MiB);
  execFileSync('sfdisk', ['-q', disk], { input: 'label: dos\nstart=2048, size=64MiB, type=7\n' });
  // A used disk: the partition is full of old data before NTFS is made on it (mkntfs -Q keeps it).
  const start = 2048 * 512;
  await writeRange(disk, start, randomBytes(64 * MiB));
  const part = execFileSync(
    'losetup',
    ['--find', '--show', '-o', String(start), '--sizelimit', String(64 * MiB), disk],
    { encoding: 'utf8' },
  ).trim();
  t.after(() => void spawnSync('losetup', ['-d', part]));
  execFileSync('mkntfs', ['-Q', '-F', '-q', '-L', 'labwin', part], { stdio: 'ignore' });
  const doc = randomBytes(3 * MiB);
  await writeFile(join(dir, 'report.bin'), doc);
  execFileSync('ntfscp', ['-q', part, join(dir, 'report.bin'), 'report.bin']);
  execFileSync('losetup', ['-d', part]);

  const image = join(dir, 'win.imgc');
  const { manifest } = await makeImage(disk, image, { level: 'speed' });
  const v = manifest.volumes[0]!;
  assert.ok(v.kind === 'raw' && v.detectedType === 'ntfs', JSON.stringify(v.kind));
  assert.equal(v.unused?.tool, 'partclone.ntfs');
  const stored = v.extents.reduce((n, x) => n + x.length, 0);
  // The file and NTFS's metadata, not the 64 MiB of old data around them.
  assert.ok(stored > 3 * MiB && stored < 24 * MiB, `stored ${stored} bytes`);
  assert.ok(v.unused!.bytes > 40 * MiB, `unused ${v.unused!.bytes}`);

  const target = join(dir, 'restored.img');
  await restoreImage(image, target, { fileset: 1, create: true });
  const back = execFileSync(
    'losetup',
    ['--find', '--show', '-r', '-o', String(start), '--sizelimit', String(64 * MiB), target],
    { encoding: 'utf8' },
  ).trim();
  t.after(() => void spawnSync('losetup', ['-d', back]));
  const got = execFileSync('ntfscat', [back, 'report.bin'], { maxBuffer: 16 * MiB });
  assert.ok(got.equals(doc), 'the file reads back from the restored NTFS');
  const label = execFileSync('blkid', ['-p', '-o', 'value', '-s', 'LABEL', back], {
    encoding: 'utf8',
  }).trim();
  assert.equal(label, 'labwin');
});

test('ext4 filesystem image without a table: partition image restored onto a new file', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  const dir = await tempDir(t);
  const fsImg = await sparse(join(dir, 'root.ext4'), 64 * MiB);
  execFileSync('mkfs.ext4', ['-q', '-L', 'partimg', fsImg]);
  const loop = execFileSync('losetup', ['--find', '--show', fsImg], { encoding: 'utf8' }).trim();
  t.after(() => void spawnSync('losetup', ['-d', loop]));
  const m = await mountFilesystem(loop, 'ext4', { readOnly: false });
  const mnt = m.dir;
  try {
    await mkdir(join(mnt, 'etc'));
    await writeFile(join(mnt, 'etc/motd'), 'welcome\n');
    await writeFile(join(mnt, 'data.bin'), randomBytes(2 * MiB));
    // Refused while mounted read-write.
    await assert.rejects(makeImage(fsImg, join(dir, 'live.imgc'), { level: 'speed' }), (e: unknown) => {
      return e instanceof DiskError && e.code === 'E_DISK_MOUNTED' && e.message.includes(mnt);
    });
  } finally {
    await m.unmount();
    execFileSync('losetup', ['-d', loop]);
  }
  const image = join(dir, 'part.imgc');
  const { manifest } = await makeImage(fsImg, image, { level: 'speed' });
  assert.equal(manifest.source.kind, 'partition');
  const v = manifest.volumes[0]!;
  assert.ok(v.kind === 'files' && v.fs.type === 'ext4' && v.fs.label === 'partimg');

  // A copy whose journal still needs replaying is refused with the reason, not captured half-consistent.
  const dirty = join(dir, 'dirty.ext4');
  execFileSync('cp', ['--sparse=always', fsImg, dirty]);
  execFileSync('debugfs', ['-w', '-R', 'feature needs_recovery', dirty], { stdio: 'pipe' });
  await assert.rejects(makeImage(dirty, join(dir, 'dirty.imgc'), { level: 'speed' }), (e: unknown) => {
    return e instanceof DiskError && e.code === 'E_DISK_SOURCE' && /journal needs recovery/.test(e.message);
  });
  await assert.rejects(access(join(dir, 'dirty.imgc')));

  const target = join(dir, 'copy.ext4');
  await restoreImage(image, target, { fileset: 1, create: true });
  const fsck = spawnSync('fsck.ext4', ['-fn', target], { encoding: 'utf8' });
  assert.equal(fsck.status, 0, fsck.stdout + fsck.stderr);
  const blk = (f: string) =>
    execFileSync('blkid', ['-p', '-o', 'export', f], { encoding: 'utf8' })
      .split('\n')
      .filter((l) => /^(TYPE|LABEL|UUID)=/.test(l));
  assert.deepEqual(blk(target), blk(fsImg));
  const la = execFileSync('losetup', ['--find', '--show', '-r', fsImg], { encoding: 'utf8' }).trim();
  t.after(() => void spawnSync('losetup', ['-d', la]));
  const lb = execFileSync('losetup', ['--find', '--show', '-r', target], { encoding: 'utf8' }).trim();
  t.after(() => void spawnSync('losetup', ['-d', lb]));
  const ma = await mountFilesystem(la, 'ext4', { readOnly: true });
  const mb = await mountFilesystem(lb, 'ext4', { readOnly: true });
  try {
    assert.deepEqual(await compareTrees(ma.dir, mb.dir, { ignoreRoot: true }), []);
  } finally {
    await ma.unmount();
    await mb.unmount();
  }
});

test('a capture stopped by its signal leaves no image and no .partial behind, and says so', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(src);
  for (let i = 0; i < 6; i++) await writeFile(join(src, `f${i}`), randomBytes(6 << 20));
  const image = join(dir, 'stopped.imgc');
  const stop = new AbortController();
  await assert.rejects(
    makeImage(src, image, {
      level: 'balanced',
      signal: stop.signal,
      // Stopped as soon as data flows, the way a Ctrl-C handler would.
      onProgress: (p) => {
        if (p.bytesDone > 0 && !stop.signal.aborted) stop.abort(new InterruptedError('SIGINT'));
      },
    }),
    { code: 'E_INTERRUPTED' },
  );
  await assert.rejects(access(image), { code: 'ENOENT' });
  await assert.rejects(access(`${image}.partial`), { code: 'ENOENT' });
});
