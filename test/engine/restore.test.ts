/**
 * The real disk test: a GPT disk with a vfat ESP, an ext4 root full of real files and
 * an unformatted partition, captured from a loop device into an image file and
 * restored onto other loop devices and files, then checked with the system's own tools.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  mkdir,
  mkdtemp,
  open,
  readdir,
  readFile,
  rm,
  symlink,
  link,
  truncate,
  writeFile,
  utimes,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { DiskError } from '../../src/disk/errors.ts';
import { InterruptedError } from '../../src/errors.ts';
import { mountFilesystem, readFilesystemInfo, type Mounted } from '../../src/disk/filesystem.ts';
import { makeImage, type MakeProgress } from '../../src/engine/make.ts';
import { openRestore, restoreFromSource, restoreImage } from '../../src/engine/restore.ts';
import { verifyRestoredImage } from '../../src/engine/verify-target.ts';
import { ImageReader } from '../../src/image/reader.ts';
import type { ChunkSource } from '../../src/image/types.ts';
import { mountedUses } from '../../src/disk/device.ts';
import { probePartitionTable } from '../../src/disk/partition-table.ts';
import { hasCommand, loopUnavailable, skipUnless, tempDir } from '../helpers/env.ts';
import { MiB, mbrExtDisk } from './disk-fixtures.ts';
import { compareTrees, countTypes } from './tree-compare.ts';

const DISK = 256 * MiB;
const SECTOR = 512;
const P1 = { start: 2048 * SECTOR, size: 32 * MiB };
const P2 = { start: P1.start + P1.size, size: 160 * MiB };
const MTOOLS_ENV = { ...process.env, MTOOLS_SKIP_CHECK: '1' };

function sh(cmd: string, args: string[], input?: string): string {
  return execFileSync(cmd, args, {
    encoding: 'utf8',
    env: MTOOLS_ENV,
    stdio: 'pipe',
    ...(input ? { input } : {}),
  });
}

async function sparse(path: string, size: number): Promise<string> {
  await (await open(path, 'w')).close();
  await truncate(path, size);
  return path;
}

async function readRange(path: string, position: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const b = Buffer.alloc(length);
    await fh.read(b, 0, length, position);
    return b;
  } finally {
    await fh.close();
  }
}

async function writeRange(path: string, position: number, data: Buffer): Promise<void> {
  const fh = await open(path, 'r+');
  await fh.write(data, 0, data.length, position);
  await fh.close();
}

async function fileHash(path: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(path))
    .digest('hex');
}

/** Loop devices and mounts made by a test, undone even when it fails. */
function resources(t: TestContext) {
  const loops: string[] = [];
  const mounts = new Map<string, Mounted>();
  t.after(async () => {
    for (const m of [...mounts.values()].reverse()) await m.unmount().catch(() => {});
    for (const l of loops.reverse()) spawnSync('losetup', ['-d', l]);
  });
  return {
    loop(
      file: string,
      opts: { offset?: number; size?: number; readOnly?: boolean; partscan?: boolean } = {},
    ) {
      const args = ['--find', '--show'];
      if (opts.offset) args.push('--offset', String(opts.offset));
      if (opts.size) args.push('--sizelimit', String(opts.size));
      if (opts.readOnly) args.push('-r');
      if (opts.partscan) args.push('-P');
      const dev = sh('losetup', [...args, file]).trim();
      loops.push(dev);
      return dev;
    },
    detach(dev: string) {
      sh('losetup', ['-d', dev]);
      loops.splice(loops.indexOf(dev), 1);
    },
    async mount(dev: string, ro: boolean) {
      // imgcast's own mount helper: its mount points survive other tests entering namespaces.
      const m = await mountFilesystem(dev, 'ext4', { readOnly: ro });
      mounts.set(m.dir, m);
      return m.dir;
    },
    async umount(dir: string) {
      await mounts.get(dir)!.unmount();
      mounts.delete(dir);
    },
  };
}

/** A tree with every kind of entry a root filesystem has. */
async function fillRoot(root: string): Promise<void> {
  const docs = sh('sh', ['-c', 'ls -d /usr/share/doc/[a-f]*']).trim().split('\n');
  sh('cp', ['-a', ...docs, root]);
  await mkdir(join(root, 'etc/ssh'), { recursive: true });
  await writeFile(join(root, 'etc/hostname'), 'lab-ref\n');
  await writeFile(join(root, 'etc/ssh/key'), randomBytes(3000), { mode: 0o600 });
  sh('chown', ['1234:5678', join(root, 'etc/ssh/key')]);
  await writeFile(join(root, 'big.bin'), randomBytes(9 * MiB));
  await link(join(root, 'big.bin'), join(root, 'etc/big-hardlink'));
  await symlink('../big.bin', join(root, 'etc/big-link'));
  await symlink('/nonexistent/target', join(root, 'dangling'));
  sh('setfattr', ['-n', 'user.lab', '-v', 'room-101', join(root, 'etc/hostname')]);
  sh('setfattr', ['-n', 'trusted.secret', '-v', '0x00ff10', join(root, 'big.bin')]);
  sh('mkfifo', [join(root, 'fifo')]);
  sh('mknod', [join(root, 'null'), 'c', '1', '3']);
  await writeFile(join(root, 'suid'), '#!/bin/sh\n', { mode: 0o4755 });
  // A sparse file: 1 MiB of data in the middle of 64 MiB.
  const fh = await open(join(root, 'sparse.img'), 'w');
  await fh.write(randomBytes(MiB), 0, MiB, 32 * MiB);
  await fh.truncate(64 * MiB);
  await fh.close();
  await utimes(
    join(root, 'etc/hostname'),
    new Date('2001-02-03T04:05:06Z'),
    new Date('2001-02-03T04:05:06.123Z'),
  );
}

interface Source {
  disk: string;
  p3: { start: number; size: number };
  image: string;
}

/** Builds the reference disk file and captures it from a partition-scanned loop device. */
async function buildAndCapture(
  t: TestContext,
  dir: string,
  r: ReturnType<typeof resources>,
): Promise<Source> {
  const disk = await sparse(join(dir, 'ref.img'), DISK);
  sh('sgdisk', [
    `-n1:${P1.start / SECTOR}:+32M`,
    '-t1:ef00',
    '-c1:EFI system',
    '-n2:0:+160M',
    '-t2:8300',
    '-c2:root',
    '-n3:0:0',
    '-t3:8300',
    '-c3:data',
    disk,
  ]);
  const last = sh('sgdisk', ['-i', '3', disk]);
  const first3 = Number(/First sector: (\d+)/.exec(last)![1]);
  const last3 = Number(/Last sector: (\d+)/.exec(last)![1]);
  const p3 = { start: first3 * SECTOR, size: (last3 - first3 + 1) * SECTOR };

  // Boot code in the MBR (before the partition entries) and a boot loader in the gap after the GPT.
  await writeRange(disk, 0, randomBytes(440));
  await writeRange(disk, 40 * SECTOR, randomBytes(200 * 1024));

  const esp = r.loop(disk, { offset: P1.start, size: P1.size });
  sh('mkfs.vfat', ['-F', '16', '-n', 'LABESP', '-i', '5eed1234', esp]);
  const espFiles = await mkdtemp(join(dir, 'esp-'));
  await mkdir(join(espFiles, 'EFI/BOOT'), { recursive: true });
  await writeFile(join(espFiles, 'EFI/BOOT/BOOTX64.EFI'), randomBytes(700 * 1024));
  await writeFile(join(espFiles, 'EFI/BOOT/grub.cfg'), 'set root=(hd0,gpt2)\n');
  await writeFile(join(espFiles, 'startup.nsh'), 'fs0:\\EFI\\BOOT\\BOOTX64.EFI\n');
  sh('mcopy', ['-s', '-m', '-i', esp, join(espFiles, 'EFI'), join(espFiles, 'startup.nsh'), '::/']);
  r.detach(esp);

  const rootDev = r.loop(disk, { offset: P2.start, size: P2.size });
  sh('mkfs.ext4', ['-q', '-L', 'labroot', rootDev]);
  const mnt = await r.mount(rootDev, false);
  await fillRoot(mnt);
  await r.umount(mnt);
  r.detach(rootDev);

  // The unformatted partition: random runs, a zero run, a run of 0xff, and data in its last sector.
  await writeRange(disk, p3.start + MiB, randomBytes(3 * MiB));
  await writeRange(disk, p3.start + 20 * MiB, Buffer.alloc(2 * MiB, 0xff));
  await writeRange(disk, p3.start + 30 * MiB + 4096, randomBytes(5000));
  await writeRange(disk, p3.start + p3.size - SECTOR, randomBytes(SECTOR));

  const dev = r.loop(disk, { partscan: true });
  const image = join(dir, 'lab.imgc');
  const events: MakeProgress[] = [];
  const { manifest, stats } = await makeImage(dev, image, {
    level: 'speed',
    onProgress: (p) => events.push(p),
  });
  r.detach(dev);

  // One progress bar over the whole disk: never backwards, ending exactly at its total.
  assert.ok(events.length > 3);
  for (let i = 1; i < events.length; i++)
    assert.ok(events[i]!.bytesDone >= events[i - 1]!.bytesDone, 'progress never goes back');
  const lastEvent = events.at(-1)!;
  assert.equal(lastEvent.bytesDone, lastEvent.bytesTotal);
  assert.deepEqual(
    [...new Set(events.map((e) => e.stage))],
    ['boot area', 'partition 1 (vfat)', 'partition 2 (ext4)', 'partition 3 (raw)'],
  );

  assert.equal(manifest.source.kind, 'disk');
  assert.equal(manifest.disk?.table, 'gpt');
  assert.deepEqual(
    manifest.disk.partitions.map((p) => [p.number, p.startBytes, p.sizeBytes, p.name]),
    [
      [1, P1.start, P1.size, 'EFI system'],
      [2, P2.start, P2.size, 'root'],
      [3, p3.start, p3.size, 'data'],
    ],
  );
  assert.deepEqual(
    manifest.volumes.map((v) => (v.kind === 'raw' ? 'raw' : v.fs.type)),
    ['vfat', 'ext4', 'raw'],
  );
  const raw = manifest.volumes[2]!;
  assert.ok(raw.kind === 'raw');
  const rawStored = raw.extents.reduce((n, x) => n + x.length, 0);
  assert.ok(rawStored < 6 * MiB, `raw partition stores only its non-zero runs (${rawStored} bytes)`);
  assert.ok(stats.rawBytes < 40 * MiB, `image holds ${stats.rawBytes} raw bytes, far less than the disk`);
  return { disk, p3, image };
}

function sgdiskClean(path: string): void {
  const v = spawnSync('sgdisk', ['-v', path], { encoding: 'utf8' });
  assert.equal(v.status, 0, v.stderr);
  assert.match(v.stdout, /No problems found/, v.stdout + v.stderr);
}

async function checkRestoredDisk(
  t: TestContext,
  src: Source,
  target: string,
  r: ReturnType<typeof resources>,
  sameSize: boolean,
) {
  sgdiskClean(target);
  if (sameSize) {
    assert.ok(
      (await readRange(target, 0, P1.start)).equals(await readRange(src.disk, 0, P1.start)),
      'boot area byte-identical',
    );
    const backup = 33 * SECTOR;
    assert.ok(
      (await readRange(target, DISK - backup, backup)).equals(
        await readRange(src.disk, DISK - backup, backup),
      ),
      'backup GPT byte-identical',
    );
  } else {
    // sgdisk -e rewrites the protective MBR's size and the primary header (new backup LBA, CRC);
    // boot code, the partition entries and the boot-loader gap stay exact.
    const skip = (b: Buffer) => Buffer.concat([b.subarray(0, 440), b.subarray(2 * SECTOR)]);
    assert.ok(
      skip(await readRange(target, 0, P1.start)).equals(skip(await readRange(src.disk, 0, P1.start))),
      'boot area',
    );
    const { size } = await import('node:fs/promises').then((f) => f.stat(target));
    assert.equal(
      (await readRange(target, size - SECTOR, 8)).toString('latin1'),
      'EFI PART',
      'backup GPT moved to the end',
    );
    assert.notEqual(
      (await readRange(target, DISK - SECTOR, 8)).toString('latin1'),
      'EFI PART',
      'no backup GPT header left where the source disk ended',
    );
    assert.deepEqual(wipefsTypes(target), [
      'gpt@0x200',
      `gpt@0x${(size - SECTOR).toString(16)}`,
      'PMBR@0x1fe',
    ]);
  }
  assert.deepEqual(
    sh('sgdisk', ['-p', target])
      .split('\n')
      .filter((l) => /^\s+\d/.test(l)),
    sh('sgdisk', ['-p', src.disk])
      .split('\n')
      .filter((l) => /^\s+\d/.test(l)),
    'same partitions',
  );
  assert.ok(
    (await readRange(target, src.p3.start, src.p3.size)).equals(
      await readRange(src.disk, src.p3.start, src.p3.size),
    ),
    'raw partition byte-identical',
  );

  // ESP: fsck, label, volume id, files.
  for (const [p, fsck] of [
    [P1, ['fsck.vfat', '-n']],
    [P2, ['fsck.ext4', '-fn']],
  ] as const) {
    const blk = (file: string) =>
      sh('blkid', ['-p', '-o', 'export', '-O', String(p.start), '-S', String(p.size), file])
        .split('\n')
        .filter((l) => /^(TYPE|LABEL|UUID|VERSION)=/.test(l));
    assert.deepEqual(blk(target), blk(src.disk));
    const dev = r.loop(target, { offset: p.start, size: p.size, readOnly: true });
    const f = spawnSync(fsck[0], [...fsck.slice(1), dev], { encoding: 'utf8' });
    assert.equal(f.status, 0, `${fsck[0]} on the restored partition: ${f.stdout}${f.stderr}`);
    // Same geometry and ext4 feature set, not just the same label and UUID.
    const orig = r.loop(src.disk, { offset: p.start, size: p.size, readOnly: true });
    const { usedBytes: _a, ...restored } = await readFilesystemInfo(dev);
    const { usedBytes: _b, ...original } = await readFilesystemInfo(orig);
    assert.deepEqual(restored, original);
    r.detach(orig);
    r.detach(dev);
  }
  const dirs: string[] = [];
  for (const file of [src.disk, target]) {
    const dev = r.loop(file, { offset: P1.start, size: P1.size, readOnly: true });
    const out = await mkdtemp(join(tmpdir(), 'imgcast-test-esp-'));
    t.after(() => rm(out, { recursive: true, force: true }));
    sh('mcopy', ['-s', '-m', '-n', '-i', dev, '::/*', out]);
    r.detach(dev);
    dirs.push(out);
  }
  assert.deepEqual(
    await compareTrees(dirs[0]!, dirs[1]!, { contentAndMtimeOnly: true, ignoreRoot: true }),
    [],
  );

  // Root: every file with content and metadata.
  const a = r.loop(src.disk, { offset: P2.start, size: P2.size, readOnly: true });
  const b = r.loop(target, { offset: P2.start, size: P2.size, readOnly: true });
  const ma = await r.mount(a, true);
  const mb = await r.mount(b, true);
  const counts = await countTypes(ma);
  assert.ok(
    (counts.file ?? 0) > 300 && (counts.symlink ?? 0) >= 3 && counts.fifo === 1 && counts.chardev === 1,
  );
  assert.deepEqual(await compareTrees(ma, mb, { ignoreRoot: true }), []);
  await r.umount(ma);
  await r.umount(mb);
  r.detach(a);
  r.detach(b);
}

/** The reference GPT disk, captured; undefined (the test skipped, with the reason) where it cannot be built. */
async function referenceDisk(
  t: TestContext,
): Promise<{ dir: string; r: ReturnType<typeof resources>; src: Source } | undefined> {
  if (skipUnless(t, loopUnavailable())) return undefined;
  for (const c of ['mcopy', 'setfattr', 'fsck.vfat', 'fsck.ext4']) {
    if (spawnSync('sh', ['-c', `command -v ${c}`]).status !== 0) return void t.skip(`needs ${c}`);
  }
  const dir = await tempDir(t, 'imgcast-disk-test-');
  const r = resources(t);
  return { dir, r, src: await buildAndCapture(t, dir, r) };
}

test('whole GPT disk: make from a loop device, restore onto same-size and larger targets, refusals', async (t) => {
  const setup = await referenceDisk(t);
  if (!setup) return;
  const { dir, r, src } = setup;

  await t.test('restore onto a loop device of the same size', async (t2) => {
    const file = await sparse(join(dir, 'same.img'), DISK);
    // Old content everywhere the restore must overwrite: the boot area gaps and the raw partition's zero runs.
    await writeRange(file, 0, Buffer.alloc(P1.start, 0xaa));
    await writeRange(file, src.p3.start, Buffer.alloc(8 * MiB, 0x55));
    const dev = r.loop(file);
    const result = await restoreImage(src.image, dev, { fileset: 1 });
    assert.match(result.description, /GPT disk of 3 partitions — /);
    r.detach(dev);
    await checkRestoredDisk(t2, src, file, r, true);
    const readBack = await verifyRestoredImage(src.image, file, { fileset: 1 });
    assert.ok(readBack.entries > 300 && readBack.rawBytes > 60 * MiB, JSON.stringify(readBack));
  });

  await t.test(
    'restore onto a larger disk-image file keeping sizes moves the backup GPT to the end',
    async (t2) => {
      const file = await sparse(join(dir, 'large.img'), DISK + 64 * MiB);
      await restoreImage(src.image, file, { fileset: 1, keepSizes: true });
      await checkRestoredDisk(t2, src, file, r, false);
      await verifyRestoredImage(src.image, file, { fileset: 1, keepSizes: true });
    },
  );

  await t.test(
    'a restore that fails midway unmounts, detaches and leaves the disk without a table',
    async () => {
      const file = await sparse(join(dir, 'broken.img'), DISK);
      const reader = await ImageReader.open(src.image);
      let served = 0;
      const failing: ChunkSource = {
        async readChunk(id) {
          // Enough chunks for the boot areas and the start of the file volumes, then the source dies.
          if (++served > 12) throw new Error('network gone');
          return reader.readChunk(id);
        },
      };
      try {
        await assert.rejects(
          restoreFromSource(reader.manifest, failing, file, { fileset: 1 }),
          /network gone/,
        );
      } finally {
        await reader.close();
      }
      assert.deepEqual(await mountedUses(file), []);
      assert.equal(sh('losetup', ['-j', file]).trim(), '');
      assert.ok(
        (await readRange(file, 0, 2 * SECTOR)).equals(Buffer.alloc(2 * SECTOR)),
        'MBR and GPT header wiped',
      );
      assert.ok(
        (await readRange(file, DISK - SECTOR, SECTOR)).equals(Buffer.alloc(SECTOR)),
        'backup GPT header wiped',
      );
    },
  );

  await t.test('a mounted target is refused and left untouched', async () => {
    const file = await sparse(join(dir, 'busy.img'), DISK);
    const part = r.loop(file, { offset: P2.start, size: P2.size });
    sh('mkfs.ext4', ['-q', part]);
    const mnt = await r.mount(part, false);
    // The mounted filesystem itself changes on unmount; everything around it must not change at all.
    const outside = async () => [
      await readRange(file, 0, P2.start),
      await readRange(file, P2.start + P2.size, DISK - P2.start - P2.size),
    ];
    const before = await outside();
    const dev = r.loop(file);
    await assert.rejects(restoreImage(src.image, dev, { fileset: 1 }), (e: unknown) => {
      assert.ok(e instanceof DiskError);
      assert.equal(e.code, 'E_DISK_MOUNTED');
      assert.ok(e.message.includes(mnt), e.message);
      return true;
    });
    await r.umount(mnt);
    r.detach(part);
    r.detach(dev);
    const after = await outside();
    assert.ok(after[0]!.equals(before[0]!) && after[1]!.equals(before[1]!), 'target untouched');
  });

  await t.test('a too-small target is refused with both sizes and left untouched', async () => {
    const file = await sparse(join(dir, 'small.img'), 128 * MiB);
    await writeRange(file, 0, randomBytes(MiB));
    const before = await fileHash(file);
    await assert.rejects(restoreImage(src.image, file, { fileset: 1 }), (e: unknown) => {
      assert.ok(e instanceof DiskError);
      assert.equal(e.code, 'E_DISK_TOO_SMALL');
      assert.match(e.message, new RegExp(`holds ${128 * MiB} bytes .* needs \\d+ bytes`));
      return true;
    });
    assert.equal(await fileHash(file), before);
  });
});

test('a whole-disk restore stopped by its signal unmounts, detaches and leaves a disk with no partition table', async (t) => {
  const setup = await referenceDisk(t);
  if (!setup) return;
  const { dir, src } = setup;
  // An existing disk with a valid table of its own: a stopped restore must not leave it (or the new one) showing.
  const target = await sparse(join(dir, 'stopped.img'), DISK);
  sh('sgdisk', ['-n1:2048:+4M', target]);
  assert.ok(await probePartitionTable(target));
  const stop = new AbortController();
  await assert.rejects(
    restoreImage(src.image, target, {
      fileset: 1,
      overwrite: true,
      signal: stop.signal,
      onProgress: (p) => {
        if (p.bytesDone > 0 && !stop.signal.aborted) stop.abort(new InterruptedError('SIGINT'));
      },
    }),
    { code: 'E_INTERRUPTED' },
  );
  assert.equal(await probePartitionTable(target), null);
  assert.deepEqual(await mountedUses(target), []);
  const loops = spawnSync('losetup', ['-j', target], { encoding: 'utf8' }).stdout.trim();
  assert.equal(loops, '', `loop devices left on the target: ${loops}`);
});

test('chunks in image order (as a multicast sends them): the partition table appears only when the rest is written', async (t) => {
  const setup = await referenceDisk(t);
  if (!setup) return;
  const { dir, r, src } = setup;
  const reader = await ImageReader.open(src.image);
  t.after(() => reader.close());
  const manifest = reader.manifest;
  const target = join(dir, 'multicast-order.img');
  const sink = await openRestore(manifest, target, { fileset: 1, create: true });
  await sink.prepare();
  const boot = manifest.disk!.bootAreas.flatMap((a) => a.extents.map((x) => x.chunk));
  const rest = [...sink.needed].filter((id) => !boot.includes(id));
  for (const id of [...new Set(boot), ...rest.slice(0, Math.ceil(rest.length / 2))]) {
    await sink.applyChunk(id, await reader.readChunk(id));
  }
  assert.equal(await probePartitionTable(target), null, 'the boot areas wait for the rest of the disk');
  for (const id of rest.slice(Math.ceil(rest.length / 2)))
    await sink.applyChunk(id, await reader.readChunk(id));
  await sink.finish();
  await checkRestoredDisk(t, src, target, r, true);
});

test('an interrupted whole-disk restore (process killed mid-way) resumes with only the chunks it lacked', async (t) => {
  const setup = await referenceDisk(t);
  if (!setup) return;
  const { dir, r, src } = setup;
  const target = join(dir, 'resumed.img');
  const reader = await ImageReader.open(src.image);
  t.after(() => reader.close());
  const manifest = reader.manifest;

  // First run, in a process of its own: prepared, half the chunks written, then killed with SIGKILL,
  // so nothing finishes or cleans up: its filesystem stays mounted and its loop devices attached.
  const journal = join(dir, 'written.txt');
  const child = spawn(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `
      import { appendFileSync } from 'node:fs';
      import { openRestore } from ${JSON.stringify(new URL('../../src/engine/restore.ts', import.meta.url).href)};
      import { ImageReader } from ${JSON.stringify(new URL('../../src/image/reader.ts', import.meta.url).href)};
      const [image, target, journal] = process.argv.slice(1);
      const reader = await ImageReader.open(image);
      const sink = await openRestore(reader.manifest, target, { fileset: 1, create: true });
      await sink.prepare();
      const order = [...sink.needed];
      for (const id of order.slice(0, Math.ceil(order.length / 2))) {
        await sink.applyChunk(id, await reader.readChunk(id));
        appendFileSync(journal, id + '\\n');
      }
      process.stdout.write('half\\n');
      setInterval(() => {}, 1000);
      `,
      src.image,
      target,
      journal,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (b: Buffer) => b.toString().includes('half') && resolve());
    child.on('exit', (code) => reject(new Error(`first run exited early (${code})`)));
  });
  child.kill('SIGKILL');
  await new Promise((resolve) => child.once('exit', resolve));
  const written = new Set((await readFile(journal, 'utf8')).trim().split('\n'));
  assert.ok((await mountedUses(target)).length > 0, 'the killed run left its filesystem mounted');
  // Boot areas come last, so the half-restored disk shows no partition table at all.
  assert.equal(await probePartitionTable(target), null, 'a half-restored disk shows no partition table');

  const warnings: string[] = [];
  const second = await openRestore(manifest, target, {
    fileset: 1,
    resume: written,
    onWarning: (m) => warnings.push(m),
  });
  assert.ok(
    warnings.some((w) =>
      /released .* on \/run\/imgcast-mounts\/mnt-.*, left behind by an imgcast run that was killed/.test(w),
    ),
    warnings.join('\n'),
  );
  const order = [
    ...(await openRestore(manifest, join(dir, 'plan.img'), { fileset: 1, create: true })).needed,
  ];
  // Boot areas are written again, and so is the vfat volume, which goes through a staging folder on this kernel.
  const boot = new Set(manifest.disk!.bootAreas.flatMap((a) => a.extents.map((x) => x.chunk)));
  for (const id of second.resumed) assert.ok(written.has(id) && !boot.has(id));
  assert.ok(second.resumed.size > 0 && second.resumed.size < written.size + 1);
  await second.prepare();
  let sent = 0;
  for (const id of second.needed) {
    if (second.resumed.has(id)) continue;
    await second.applyChunk(id, await reader.readChunk(id));
    sent++;
  }
  assert.ok(sent < order.length, `${sent} of ${order.length} chunks needed again`);
  await second.finish();
  assert.deepEqual(await mountedUses(target), []);
  await checkRestoredDisk(t, src, target, r, true);
});

test('GPT disk onto a smaller target that still holds every partition: backup table rebuilt at the new end', async (t) => {
  for (const c of ['sgdisk'])
    if (spawnSync('sh', ['-c', `command -v ${c}`]).status !== 0) return void t.skip(`needs ${c}`);
  const dir = await tempDir(t);
  const disk = await sparse(join(dir, 'src.img'), 64 * MiB);
  sh('sgdisk', ['-n1:2048:+8M', '-t1:0700', '-n2:0:+8M', '-t2:8200', disk]);
  const p1 = randomBytes(3 * MiB);
  await writeRange(disk, MiB, p1);
  // Partition 2 is swap with leftover pages in it: only its header is worth keeping.
  const swap = await sparse(join(dir, 'swap.img'), 8 * MiB);
  sh('mkswap', ['-q', '-U', '0e3f6c57-1f0e-4b4a-9d55-3c8a2a6f3b11', '-L', 'labswap', swap]);
  const swapHeader = await readRange(swap, 0, 4096);
  await writeRange(disk, 9 * MiB, swapHeader);
  await writeRange(disk, 9 * MiB + MiB, randomBytes(2 * MiB));
  const image = join(dir, 'small.imgc');
  const { manifest } = await makeImage(disk, image, { level: 'none' });
  assert.deepEqual(
    manifest.volumes.map((v) => (v.kind === 'raw' ? (v.detectedType ?? 'raw') : v.fs.type)),
    ['raw', 'swap'],
  );
  const swapVolume = manifest.volumes[1]!;
  assert.ok(swapVolume.kind === 'raw' && swapVolume.extents.reduce((n, x) => n + x.length, 0) <= 64 * 1024);

  const tooSmall = await sparse(join(dir, 'tiny.img'), 16 * MiB);
  await assert.rejects(restoreImage(image, tooSmall, { fileset: 1 }), (e: unknown) => {
    return (
      e instanceof DiskError &&
      e.code === 'E_DISK_TOO_SMALL' &&
      e.message.includes(`needs ${17 * MiB + 33 * SECTOR} bytes`)
    );
  });

  const target = await sparse(join(dir, 'target.img'), 20 * MiB);
  if (!loopUnavailable()) {
    // The same file seen as a 4Kn disk: a 512-byte-sector table cannot go there.
    const dev = sh('losetup', ['--find', '--show', '--sector-size', '4096', target]).trim();
    try {
      await assert.rejects(restoreImage(image, dev, { fileset: 1 }), (e: unknown) => {
        return e instanceof DiskError && e.code === 'E_DISK_TARGET' && /4096-byte sectors/.test(e.message);
      });
    } finally {
      sh('losetup', ['-d', dev]);
    }
  }
  await restoreImage(image, target, { fileset: 1 });
  sgdiskClean(target);
  assert.deepEqual(
    sh('sgdisk', ['-p', target])
      .split('\n')
      .filter((l) => /^\s+\d/.test(l)),
    sh('sgdisk', ['-p', disk])
      .split('\n')
      .filter((l) => /^\s+\d/.test(l)),
  );
  assert.ok((await readRange(target, MiB, 3 * MiB)).equals(p1));
  assert.ok((await readRange(target, 9 * MiB, 4096)).equals(swapHeader));
  assert.ok(
    (await readRange(target, 9 * MiB + MiB, 2 * MiB)).equals(Buffer.alloc(2 * MiB)),
    'stale swap pages not kept',
  );
  const swapProbe = sh('blkid', ['-p', '-o', 'export', '-O', String(9 * MiB), '-S', String(8 * MiB), target]);
  assert.match(swapProbe, /^TYPE=swap$/m);
  assert.match(swapProbe, /^UUID=0e3f6c57-1f0e-4b4a-9d55-3c8a2a6f3b11$/m);
  assert.match(swapProbe, /^LABEL=labswap$/m);
  assert.equal((await readRange(target, 20 * MiB - SECTOR, 8)).toString('latin1'), 'EFI PART');
});

test('restoring a file set reads none of the chunks only its excluded files use', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(join(src, 'drivers'), { recursive: true });
  await writeFile(join(src, 'drivers/huge-driver.bin'), randomBytes(6 * MiB));
  await writeFile(join(src, 'readme.txt'), 'lab image\n');
  const image = join(dir, 'sets.imgc');
  await makeImage(src, image, { level: 'speed' });
  const reader = await ImageReader.open(image);
  t.after(() => reader.close());
  // File set 2 leaves the drivers folder out.
  const manifest = structuredClone(reader.manifest);
  const vol = manifest.volumes[0]!;
  assert.ok(vol.kind === 'files');
  const driverChunks = new Set<string>();
  for (const e of vol.entries) {
    if (e.path === 'drivers' || e.path.startsWith('drivers/')) {
      e.excludedFrom = 0b10;
      for (const x of e.extents ?? []) driverChunks.add(x.chunk);
    }
  }
  assert.ok(driverChunks.size >= 2);
  const read: string[] = [];
  const source: ChunkSource = { readChunk: (id) => (read.push(id), reader.readChunk(id)) };

  const out2 = join(dir, 'set2');
  await restoreFromSource(manifest, source, out2, { fileset: 2 });
  assert.equal(await readFile(join(out2, 'readme.txt'), 'utf8'), 'lab image\n');
  await assert.rejects(readFile(join(out2, 'drivers/huge-driver.bin')));
  assert.deepEqual(
    read.filter((id) => driverChunks.has(id)),
    [],
  );

  read.length = 0;
  const out1 = join(dir, 'set1');
  await restoreFromSource(manifest, source, out1, { fileset: 1 });
  assert.deepEqual(await compareTrees(src, out1, { ignoreRoot: true }), []);
  assert.ok([...driverChunks].every((id) => read.includes(id)));
});

test('restore messages count in words and give system errors as sentences with the errno', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(src);
  await writeFile(join(src, 'readme.txt'), 'lab image\n');
  const image = join(dir, 'one.imgc');
  await makeImage(src, image, { level: 'speed' });
  const reader = await ImageReader.open(image);
  t.after(() => reader.close());

  // A restore finished before its only chunk arrived.
  const sink = await openRestore(reader.manifest, join(dir, 'out'), { fileset: 1 });
  assert.equal(sink.needed.size, 1);
  await sink.prepare();
  await assert.rejects(sink.finish(), (e: unknown) => {
    assert.ok(e instanceof DiskError && e.code === 'E_DISK_INCOMPLETE');
    assert.match(e.message, /is incomplete: 1 of 1 chunk never arrived \(first: [0-9a-f]{64}\)$/);
    return true;
  });
  await sink.abort(new Error('test over'));

  // Two file volumes cannot go into one folder.
  const twice = { ...reader.manifest, volumes: [reader.manifest.volumes[0]!, reader.manifest.volumes[0]!] };
  await mkdir(join(dir, 'empty'));
  await assert.rejects(openRestore(twice, join(dir, 'empty'), { fileset: 1 }), (e: unknown) => {
    assert.ok(e instanceof DiskError);
    assert.match(e.message, /the image holds 2 volumes \(2 with files\); only/);
    return true;
  });

  // A target whose path runs through a file.
  const through = join(dir, 'src', 'readme.txt', 'x');
  await assert.rejects(restoreImage(image, through, { fileset: 1 }), {
    code: 'E_DISK_IO',
    message: `cannot access ${through}: a part of the path is not a directory (ENOTDIR)`,
  });

  // A new disk-image file that cannot be created: a dangling symlink is in its place.
  const blob = join(dir, 'blob.bin');
  await writeFile(blob, randomBytes(64 * 1024));
  const rawImage = join(dir, 'raw.imgc');
  await makeImage(blob, rawImage, { level: 'speed' });
  const dangling = join(dir, 'new.img');
  await symlink(join(dir, 'nowhere'), dangling);
  await assert.rejects(restoreImage(rawImage, dangling, { fileset: 1, create: true }), {
    code: 'E_DISK_IO',
    message: `cannot create ${dangling}: it already exists (EEXIST)`,
  });
});

test('a failed restore into a directory resumes: files already written are kept, the rest arrive', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(join(src, 'a/b'), { recursive: true });
  for (let i = 0; i < 40; i++) await writeFile(join(src, 'a', `small-${i}.txt`), `file ${i}\n`.repeat(i + 1));
  await writeFile(join(src, 'a/b/big.bin'), randomBytes(9 * MiB));
  await writeFile(join(src, 'top.bin'), randomBytes(5 * MiB));
  const image = join(dir, 'tree.imgc');
  await makeImage(src, image, { level: 'speed' });
  const reader = await ImageReader.open(image);
  t.after(() => reader.close());
  const target = join(dir, 'out');

  const first = await openRestore(reader.manifest, target, { fileset: 1 });
  await first.prepare();
  const order = [...first.needed];
  assert.ok(order.length >= 4, `${order.length} chunks`);
  const written = new Set(order.slice(0, 2));
  for (const id of written) await first.applyChunk(id, await reader.readChunk(id));
  // The run fails cleanly (say its sender was lost): a folder keeps what was written.
  assert.equal(first.resumableAfterAbort, true);
  await first.abort(new Error('sender lost'));

  // Without resume the half-written directory is refused as not empty.
  await assert.rejects(openRestore(reader.manifest, target, { fileset: 1 }), /not empty/);
  const second = await openRestore(reader.manifest, target, { fileset: 1, resume: written });
  assert.deepEqual([...second.resumed].sort(), [...written].sort());
  await second.prepare();
  for (const id of second.needed) {
    if (!second.resumed.has(id)) await second.applyChunk(id, await reader.readChunk(id));
  }
  await second.finish();
  assert.deepEqual(await compareTrees(src, target, { ignoreRoot: true }), []);
});

test('make and restore of a disk image leave no mount folders behind', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  if (!hasCommand('sfdisk')) return void t.skip('needs sfdisk');
  const dir = await tempDir(t);
  const base = '/run/imgcast-mounts';
  const entries = async () => new Set(await readdir(base).catch(() => [] as string[]));
  const before = await entries();
  const { image } = await mbrExtDisk(dir);
  const target = await sparse(join(dir, 'target.img'), 64 * MiB);
  await restoreImage(image, target, { fileset: 1 });
  const left = [...(await entries())].filter((n) => !before.has(n));
  assert.deepEqual(left, [], `mount folders left in ${base}`);
});

/** wipefs's view of a target: every signature type with its offset. */
function wipefsTypes(target: string): string[] {
  const out = sh('wipefs', ['--no-act', '--json', target]).trim();
  if (!out) return [];
  return (JSON.parse(out) as { signatures: Array<{ type: string; offset: string }> }).signatures.map(
    (s) => `${s.type}@${s.offset}`,
  );
}

function blkidAt(target: string, offset: number, size: number): string {
  const r = spawnSync('blkid', ['-p', '-o', 'export', '-O', String(offset), '-S', String(size), target], {
    encoding: 'utf8',
  });
  return r.status === 0 ? r.stdout : '';
}

test('an MBR image over a GPT disk leaves no GPT header and no old filesystem signature anywhere', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  for (const c of ['sfdisk', 'wipefs', 'mkswap']) if (!hasCommand(c)) return void t.skip(`needs ${c}`);
  const dir = await tempDir(t);
  const { image, parts } = await mbrExtDisk(dir);
  // The old disk: GPT, partition 2 (swap) where the new partition 1 will be, partition 3 (ext4)
  // where the new layout has a gap after its last partition.
  const target = await sparse(join(dir, 'was-gpt.img'), 64 * MiB);
  sh('sgdisk', ['-n1:2048:+20M', '-n2:0:+20M', '-t2:8200', `-n3:${(58 * MiB) / SECTOR}:+4M`, target]);
  const swap = await sparse(join(dir, 'swap.img'), 20 * MiB);
  sh('mkswap', ['-q', '-L', 'oldswap', swap]);
  await writeRange(target, 21 * MiB, await readRange(swap, 0, 64 * 1024));
  sh('mkfs.ext4', ['-q', '-F', '-L', 'oldgap', '-E', `offset=${58 * MiB}`, target, '4M']);
  assert.match(blkidAt(target, 58 * MiB, 4 * MiB), /LABEL=oldgap/);
  assert.match(blkidAt(target, 21 * MiB, 20 * MiB), /TYPE=swap/);

  // The image's own layout, so that the old ext4 lies in the gap after its last partition
  // (fitted, that partition would grow over it to the disk's last sector).
  await restoreImage(image, target, { fileset: 1, overwrite: true, keepSizes: true });
  assert.deepEqual(wipefsTypes(target), ['dos@0x1fe'], 'only the new MBR');
  const v = spawnSync('sgdisk', ['-v', target], { encoding: 'utf8' });
  assert.equal(v.status, 0, v.stdout + v.stderr);
  assert.match(v.stdout, /No problems found/);
  assert.doesNotMatch(v.stdout + v.stderr, /backup|regenerat/i);
  assert.equal(blkidAt(target, 58 * MiB, 4 * MiB), '', 'old ext4 in the gap after the last partition');
  assert.equal(blkidAt(target, 21 * MiB, 20 * MiB), '', 'old swap inside the new partition 1');
  for (const p of parts) {
    const f = spawnSync('e2fsck', ['-fn', `${target}?offset=${p.start}`], { encoding: 'utf8' });
    assert.equal(f.status, 0, f.stdout + f.stderr);
  }

  // A single filesystem over a file that was a GPT disk: mkfs rewrites the start, not the backup GPT at the end.
  const fsFile = await sparse(join(dir, 'fs.img'), 16 * MiB);
  sh('mkfs.ext4', ['-q', '-F', '-L', 'single', fsFile]);
  const fsImage = join(dir, 'fs.imgc');
  await makeImage(fsFile, fsImage, { level: 'speed' });
  const wasDisk = await sparse(join(dir, 'was-disk.img'), 16 * MiB);
  sh('sgdisk', ['-n1:2048:+4M', wasDisk]);
  await restoreImage(fsImage, wasDisk, { fileset: 1, overwrite: true });
  assert.deepEqual(wipefsTypes(wasDisk), ['ext4@0x438']);
});

/** A tmpfs of `size` mounted on a fresh folder; unmounted when the test ends (or by the caller). */
async function smallTmpfs(t: TestContext, size: string): Promise<string> {
  const mnt = await mkdtemp(join(tmpdir(), 'imgcast-test-tmpfs-'));
  sh('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', mnt]);
  t.after(async () => {
    spawnSync('umount', [mnt]);
    await rm(mnt, { recursive: true, force: true });
  });
  return mnt;
}

test('a restore whose writes the backing filesystem cannot hold fails, naming the target and that its filesystem is full', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  if (!hasCommand('sfdisk')) return void t.skip('needs sfdisk');
  const dir = await tempDir(t);
  const r = resources(t);
  const { image } = await mbrExtDisk(dir, { dataBytes: 30 * MiB });
  const small = await smallTmpfs(t, '20m');
  const backing = await sparse(join(small, 'disk.img'), 64 * MiB);
  const dev = r.loop(backing);
  await assert.rejects(restoreImage(image, dev, { fileset: 1 }), (e: unknown) => {
    assert.ok(e instanceof DiskError, String(e));
    assert.equal(e.code, 'E_DISK_WRITE', e.message);
    assert.ok(e.message.includes(dev), e.message);
    assert.match(e.message, new RegExp(`${backing.replaceAll('/', '\\/')}.*is full`));
    return true;
  });
  assert.deepEqual(await mountedUses(dev), [], 'nothing left mounted');
  assert.deepEqual(
    sh('losetup', ['-j', backing])
      .trim()
      .split('\n')
      .map((l) => l.split(':')[0]),
    [dev],
    'no loop device left over the target but the test’s own',
  );
  assert.equal(await probePartitionTable(dev), null, 'the failed disk shows no partition table');
});
