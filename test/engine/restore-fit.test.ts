/**
 * Any disk that fits, on real disks: a GPT workstation disk (BIOS boot partition with
 * boot-loader bytes, vfat ESP, ext4 root full of files) and an MBR disk (ext4 root and a
 * raw partition after it) captured with makeImage and restored onto larger and smaller
 * disk-image files and loop devices, then checked with sgdisk/sfdisk, fsck and a
 * file-by-file comparison.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { DiskError } from '../../src/disk/errors.ts';
import { mountFilesystem } from '../../src/disk/filesystem.ts';
import { readPartitionTable } from '../../src/disk/partition-table.ts';
import { makeImage } from '../../src/engine/make.ts';
import { restoreImage } from '../../src/engine/restore.ts';
import { verifyRestoredImage } from '../../src/engine/verify-target.ts';
import type { Manifest } from '../../src/image/types.ts';
import { trackedLoops } from '../disk/loops.ts';
import { hasCommand, loopUnavailable, skipUnless, tempDir } from '../helpers/env.ts';
import { receiveCommand, sendCommand } from '../../src/cli/transfer.ts';
import { MiB, mbrExtDisk, sparse } from './disk-fixtures.ts';
import { compareTrees } from './tree-compare.ts';

const SECTOR = 512;
const GPT_BACKUP = 33 * SECTOR;
const IMG = new URL('../../src/cli/img.ts', import.meta.url).pathname;
const MTOOLS_ENV = { ...process.env, MTOOLS_SKIP_CHECK: '1' };

function sh(cmd: string, args: string[], input?: string): string {
  return execFileSync(cmd, args, {
    encoding: 'utf8',
    stdio: 'pipe',
    env: MTOOLS_ENV,
    ...(input ? { input } : {}),
  });
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

interface Part {
  number: number;
  start: number;
  size: number;
}

async function partsOf(path: string): Promise<Part[]> {
  const t = await readPartitionTable(path);
  return t.partitions
    .filter((p) => !p.extended)
    .map((p) => ({ number: p.number, start: p.startBytes, size: p.sizeBytes }));
}

/** A root tree of real files: documentation, random data, symlinks, an xattr; ~40 MiB. */
async function rootTree(dir: string): Promise<string> {
  const root = join(dir, 'root-tree');
  await mkdir(join(root, 'etc'), { recursive: true });
  sh('sh', ['-c', `cp -a /usr/share/doc/[a-e]* ${root}/ 2>/dev/null || true`]);
  await writeFile(join(root, 'etc/hostname'), 'lab-ref\n');
  await writeFile(join(root, 'etc/fstab'), 'LABEL=labroot / ext4 defaults 0 1\n');
  for (let i = 0; i < 6; i++) await writeFile(join(root, `data${i}.bin`), randomBytes(6 * MiB));
  await symlink('data0.bin', join(root, 'current'));
  if (hasCommand('setfattr'))
    sh('setfattr', ['-n', 'user.lab', '-v', 'room-101', join(root, 'etc/hostname')]);
  return root;
}

interface Source {
  disk: string;
  image: string;
  manifest: Manifest;
  parts: Part[];
}

/**
 * The GPT workstation disk, 256 MiB: 1 BIOS boot (1 MiB, boot-loader bytes), 2 ESP (vfat,
 * 32 MiB), 3 root (ext4, to the end); boot code in the MBR and bytes in the gap after the GPT.
 */
async function gptWorkstation(t: TestContext, dir: string): Promise<Source> {
  const loops = trackedLoops(t);
  const disk = await sparse(join(dir, 'ws.img'), 256 * MiB);
  sh('sgdisk', [
    '-n1:2048:+1M',
    '-t1:ef02',
    '-c1:BIOS boot',
    '-n2:0:+32M',
    '-t2:ef00',
    '-c2:EFI system',
    '-n3:0:0',
    '-t3:8304',
    '-c3:root',
    '-A3:set:2',
    disk,
  ]);
  const parts = await partsOf(disk);
  await writeRange(disk, 0, randomBytes(440));
  await writeRange(disk, 40 * SECTOR, randomBytes(100 * 1024));
  await writeRange(disk, parts[0]!.start, randomBytes(300 * 1024));
  const esp = await loops.attach(disk, { offset: parts[1]!.start, size: parts[1]!.size });
  sh('mkfs.vfat', ['-F', '16', '-n', 'LABESP', '-i', '5eed1234', esp]);
  const espTree = join(dir, 'esp-tree');
  await mkdir(join(espTree, 'EFI/BOOT'), { recursive: true });
  await writeFile(join(espTree, 'EFI/BOOT/BOOTX64.EFI'), randomBytes(600 * 1024));
  sh('mcopy', ['-s', '-m', '-i', esp, join(espTree, 'EFI'), '::/']);
  await loops.detach(esp);
  const root = await loops.attach(disk, { offset: parts[2]!.start, size: parts[2]!.size });
  sh('mkfs.ext4', ['-q', '-L', 'labroot', '-d', await rootTree(dir), root]);
  await loops.detach(root);
  const image = join(dir, 'ws.imgc');
  const { manifest } = await makeImage(disk, image, { level: 'speed' });
  return { disk, image, manifest, parts };
}

function sgdiskClean(path: string): void {
  const v = spawnSync('sgdisk', ['-v', path], { encoding: 'utf8' });
  assert.equal(v.status, 0, v.stderr);
  assert.match(v.stdout, /No problems found/, v.stdout + v.stderr);
}

/** sgdisk -i N without the lines that say where and how big: type, GUID, name, attributes. */
function partitionIdentity(path: string, n: number): string {
  return sh('sgdisk', ['-i', String(n), path])
    .split('\n')
    .filter((l) => !/^(First sector|Last sector|Partition size)/.test(l))
    .join('\n');
}

function diskGuid(path: string): string {
  return /Disk identifier \(GUID\): (\S+)/.exec(sh('sgdisk', ['-p', path]))![1]!;
}

/** fsck -fn of one partition, the filesystem's own size, and its files against the source's. */
async function checkFilesystems(
  t: TestContext,
  src: Source,
  target: string,
  fitted: Part[],
  which: Array<{ number: number; type: 'ext4' | 'vfat' }>,
): Promise<void> {
  const loops = trackedLoops(t);
  for (const { number, type } of which) {
    const a = src.parts.find((p) => p.number === number)!;
    const b = fitted.find((p) => p.number === number)!;
    const la = await loops.attach(src.disk, { offset: a.start, size: a.size, readOnly: true });
    const lb = await loops.attach(target, { offset: b.start, size: b.size, readOnly: true });
    const fsck = spawnSync(
      type === 'ext4' ? 'fsck.ext4' : 'fsck.vfat',
      ['-n', ...(type === 'ext4' ? ['-f'] : []), lb],
      {
        encoding: 'utf8',
      },
    );
    assert.equal(fsck.status, 0, `partition ${number}: ${fsck.stdout}${fsck.stderr}`);
    const blkid = (dev: string) =>
      sh('blkid', ['-p', '-o', 'export', dev])
        .split('\n')
        .filter((l) => /^(TYPE|LABEL|UUID)=/.test(l));
    assert.deepEqual(blkid(lb), blkid(la), `partition ${number}: type, label and UUID kept`);
    if (type === 'ext4') {
      const out = sh('dumpe2fs', ['-h', lb]);
      const blocks = Number(/^Block count:\s+(\d+)/m.exec(out)![1]);
      const bs = Number(/^Block size:\s+(\d+)/m.exec(out)![1]);
      assert.ok(
        b.size - blocks * bs < Math.max(bs, 4096), // mke2fs rounds the block count down to whole pages
        `partition ${number}: filesystem of ${blocks * bs} bytes fills its ${b.size}`,
      );
    }
    if (type === 'vfat') {
      // Copied out with mtools: this kernel may have no vfat driver.
      const dirs: string[] = [];
      for (const dev of [la, lb]) {
        const out = await mkdtemp(join(tmpdir(), 'imgcast-test-esp-'));
        t.after(() => rm(out, { recursive: true, force: true }));
        sh('mcopy', ['-s', '-m', '-n', '-i', dev, '::/*', out]);
        dirs.push(out);
      }
      const diffs = await compareTrees(dirs[0]!, dirs[1]!, { ignoreRoot: true, contentAndMtimeOnly: true });
      assert.deepEqual(diffs, [], `partition ${number}: files identical`);
    } else {
      const ma = await mountFilesystem(la, type, { readOnly: true });
      try {
        const mb = await mountFilesystem(lb, type, { readOnly: true });
        try {
          assert.deepEqual(
            await compareTrees(ma.dir, mb.dir, { ignoreRoot: true }),
            [],
            `partition ${number}: files identical`,
          );
        } finally {
          await mb.unmount();
        }
      } finally {
        await ma.unmount();
      }
    }
    await loops.detach(la);
    await loops.detach(lb);
  }
}

/** What stays exactly as captured: boot code, the gap after the GPT, the BIOS boot partition. */
async function checkBootBytes(src: Source, target: string): Promise<void> {
  assert.ok((await readRange(target, 0, 440)).equals(await readRange(src.disk, 0, 440)), 'MBR boot code');
  const gap = [34 * SECTOR, src.parts[0]!.start] as const;
  assert.ok(
    (await readRange(target, gap[0], gap[1] - gap[0])).equals(
      await readRange(src.disk, gap[0], gap[1] - gap[0]),
    ),
    'boot-loader gap',
  );
  const bios = src.parts[0]!;
  assert.ok(
    (await readRange(target, bios.start, bios.size)).equals(await readRange(src.disk, bios.start, bios.size)),
    'BIOS boot partition in place, byte for byte',
  );
  assert.equal(diskGuid(target), diskGuid(src.disk));
  for (const n of [1, 2, 3])
    assert.equal(partitionIdentity(target, n), partitionIdentity(src.disk, n), `partition ${n}`);
}

function tooSmall(have: number, need?: number) {
  return (e: unknown) => {
    assert.ok(e instanceof DiskError, String(e));
    assert.equal(e.code, 'E_DISK_TOO_SMALL', e.message);
    const short = e.details.shortBytes as number;
    assert.equal(e.details.targetBytes, have);
    if (need !== undefined) assert.equal(e.details.neededBytes, need);
    assert.equal(short, (e.details.neededBytes as number) - have);
    assert.match(
      e.message,
      new RegExp(
        `holds ${have} bytes .* needs ${e.details.neededBytes} bytes .*: ${short} bytes \\(\\d+\\.\\d MiB\\) short; partition 3 needs at least`,
      ),
    );
    return true;
  };
}

test('GPT workstation disk onto larger and smaller disks: grown, kept, shrunk, refused', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  for (const c of ['mcopy', 'fsck.vfat', 'fsck.ext4', 'dumpe2fs'])
    if (!hasCommand(c)) return void t.skip(`needs ${c}`);
  const dir = await tempDir(t, 'imgcast-fit-test-');
  const src = await gptWorkstation(t, dir);
  const root = src.parts[2]!;

  await t.test(
    'twice as large (a loop device): the root grows to the backup GPT, the rest stays',
    async (t2) => {
      const file = await sparse(join(dir, 'large.img'), 512 * MiB);
      const loops = trackedLoops(t2);
      const dev = await loops.attach(file);
      const result = await restoreImage(src.image, dev, { fileset: 1 });
      await loops.detach(dev);
      const rootSize = 512 * MiB - GPT_BACKUP - root.start;
      assert.match(
        result.description,
        new RegExp(
          `3: ext4 files \\(grown from ${(root.size / MiB).toFixed(1)} MiB to ${(rootSize / MiB).toFixed(1)} MiB\\)`,
        ),
      );
      sgdiskClean(file);
      const parts = await partsOf(file);
      assert.deepEqual(parts, [src.parts[0], src.parts[1], { number: 3, start: root.start, size: rootSize }]);
      assert.equal(
        (await readRange(file, 512 * MiB - SECTOR, 8)).toString('latin1'),
        'EFI PART',
        'backup GPT at the end',
      );
      await checkBootBytes(src, file);
      await checkFilesystems(t2, src, file, parts, [
        { number: 2, type: 'vfat' },
        { number: 3, type: 'ext4' },
      ]);
      const back = await verifyRestoredImage(src.image, file, { fileset: 1 });
      assert.ok(back.entries > 100, JSON.stringify(back));
    },
  );

  await t.test('--keep-sizes: the image layout on the larger disk, and only that verifies', async () => {
    const file = await sparse(join(dir, 'kept.img'), 512 * MiB);
    const result = await restoreImage(src.image, file, { fileset: 1, keepSizes: true });
    assert.doesNotMatch(result.description, /grown|shrunk/);
    sgdiskClean(file);
    assert.deepEqual(await partsOf(file), src.parts);
    await checkBootBytes(src, file);
    await verifyRestoredImage(src.image, file, { fileset: 1, keepSizes: true });
    // Verified as a fitted restore, the table is not what that would have made.
    await assert.rejects(verifyRestoredImage(src.image, file, { fileset: 1 }), (e: unknown) => {
      assert.ok(e instanceof DiskError && e.code === 'E_DISK_VERIFY', String(e));
      assert.match(e.message, /partition table: read back as GPT .* the restore made /);
      return true;
    });
  });

  const info = JSON.parse(sh(process.execPath, [IMG, 'info', src.image, '--json'])) as {
    disk: { smallestDiskBytes: number; keepSizesDiskBytes: number };
  };
  const smallest = info.disk.smallestDiskBytes;
  assert.equal(info.disk.keepSizesDiskBytes, 256 * MiB);
  assert.ok(smallest < 200 * MiB && smallest > 100 * MiB, `smallest disk ${smallest}`);
  assert.match(
    sh(process.execPath, [IMG, 'info', src.image]),
    new RegExp(
      `fits on: +a disk of ${smallest} bytes \\(\\d+\\.\\d MiB\\) or more \\(file set 1\\); ${256 * MiB} bytes \\(256\\.0 MiB\\) with --keep-sizes`,
    ),
  );

  await t.test(
    'a smaller disk that holds the files: the root shrinks; sgdisk, fsck, files all clean',
    async (t2) => {
      const size = smallest + 20 * MiB;
      const file = await sparse(join(dir, 'smaller.img'), size);
      const result = await restoreImage(src.image, file, { fileset: 1 });
      assert.match(result.description, /3: ext4 files \(shrunk from /);
      sgdiskClean(file);
      const parts = await partsOf(file);
      assert.deepEqual(parts.slice(0, 2), src.parts.slice(0, 2));
      assert.deepEqual(parts[2], { number: 3, start: root.start, size: size - GPT_BACKUP - root.start });
      await checkBootBytes(src, file);
      await checkFilesystems(t2, src, file, parts, [{ number: 3, type: 'ext4' }]);
      await verifyRestoredImage(src.image, file, { fileset: 1 });
    },
  );

  await t.test('exactly the smallest disk img info names: restored and verified', async (t2) => {
    const file = await sparse(join(dir, 'smallest.img'), smallest);
    await restoreImage(src.image, file, { fileset: 1 });
    sgdiskClean(file);
    const parts = await partsOf(file);
    await checkFilesystems(t2, src, file, parts, [{ number: 3, type: 'ext4' }]);
    await verifyRestoredImage(src.image, file, { fileset: 1 });
  });

  await t.test('4 MiB less than the smallest disk: refused with the shortfall, nothing written', async () => {
    const have = smallest - 4 * MiB;
    const file = await sparse(join(dir, 'short.img'), have);
    // Old content everywhere a half-done restore would write first: the table, the partitions' starts, the end.
    for (const at of [0, MiB, 2 * MiB, root.start, have - MiB])
      await writeRange(file, at, randomBytes(64 * 1024));
    const before = await fileHash(file);
    await assert.rejects(
      restoreImage(src.image, file, { fileset: 1, overwrite: true }),
      tooSmall(have, smallest),
    );
    assert.equal(await fileHash(file), before, 'target untouched');
    assert.equal((await stat(file)).size, have);
    // The CLI says the same and exits 1.
    const r = spawnSync(process.execPath, [IMG, 'restore', src.image, file, '--force'], { encoding: 'utf8' });
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /\(4\.0 MiB\) short; partition 3 needs at least .*\[E_DISK_TOO_SMALL\]/);
    assert.equal(await fileHash(file), before, 'target untouched by the CLI');
  });

  await t.test('--keep-sizes on a smaller disk: refused, naming the image layout', async () => {
    const file = await sparse(join(dir, 'kept-small.img'), 200 * MiB);
    await assert.rejects(restoreImage(src.image, file, { fileset: 1, keepSizes: true }), (e: unknown) => {
      assert.ok(e instanceof DiskError && e.code === 'E_DISK_TOO_SMALL', String(e));
      assert.equal(e.details.neededBytes, 256 * MiB);
      assert.match(e.message, /GPT disk layout needs .* short; the image's partitions at their own sizes/);
      return true;
    });
  });
});

/**
 * The MBR disk, 384 MiB: 1 ext4 root (300 MiB, bootable, ~40 MiB of files), 2 a raw
 * partition (64 MiB, type 82, data at its start and end) after it, 19 MiB free at the end.
 */
async function mbrDisk(t: TestContext, dir: string): Promise<Source> {
  const loops = trackedLoops(t);
  const disk = await sparse(join(dir, 'mbr.img'), 384 * MiB);
  sh('sfdisk', ['-q', disk], 'label: dos\nstart=2048, size=300MiB, type=83, bootable\nsize=64MiB, type=82\n');
  const parts = await partsOf(disk);
  await writeRange(disk, 0, randomBytes(440));
  await writeRange(disk, 4 * SECTOR, randomBytes(64 * 1024));
  const p2 = parts[1]!;
  await writeRange(disk, p2.start, randomBytes(MiB));
  await writeRange(disk, p2.start + p2.size - 4096, randomBytes(4096));
  const root = await loops.attach(disk, { offset: parts[0]!.start, size: parts[0]!.size });
  sh('mkfs.ext4', ['-q', '-L', 'labroot', '-d', await rootTree(dir), root]);
  await loops.detach(root);
  const image = join(dir, 'mbr.imgc');
  const { manifest } = await makeImage(disk, image, { level: 'speed' });
  return { disk, image, manifest, parts };
}

function sfdiskClean(path: string): void {
  const v = spawnSync('sfdisk', ['--verify', path], { encoding: 'utf8' });
  assert.equal(v.status, 0, v.stdout + v.stderr);
  assert.match(v.stdout, /No errors detected/, v.stdout + v.stderr);
  assert.equal(v.stderr, '');
}

test('MBR disk: the root grows or shrinks, the raw partition after it moves whole, boot code and flag stay', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  for (const c of ['sfdisk', 'fsck.ext4', 'dumpe2fs']) if (!hasCommand(c)) return void t.skip(`needs ${c}`);
  const dir = await tempDir(t, 'imgcast-fit-test-');
  const src = await mbrDisk(t, dir);
  const [p1, p2] = src.parts as [Part, Part];
  const smallest = JSON.parse(sh(process.execPath, [IMG, 'info', src.image, '--json'])).disk
    .smallestDiskBytes as number;
  assert.ok(smallest < 250 * MiB, `${smallest}`);

  for (const size of [768 * MiB, smallest]) {
    await t.test(`onto ${(size / MiB).toFixed(1)} MiB`, async (t2) => {
      const file = await sparse(join(dir, `mbr-${size}.img`), size);
      await restoreImage(src.image, file, { fileset: 1 });
      sfdiskClean(file);
      const parts = await partsOf(file);
      const [q1, q2] = parts as [Part, Part];
      assert.equal(q1.start, p1.start);
      assert.equal(q2.size, p2.size, 'the raw partition keeps its size');
      assert.equal(q2.start % MiB, 0);
      assert.ok(
        q2.start + q2.size <= size && q2.start + q2.size > size - MiB,
        'the raw partition at the end',
      );
      assert.equal(q1.start + q1.size, q2.start, 'the root fills the space before it');
      if (size > 384 * MiB) assert.ok(q1.size > p1.size);
      else assert.ok(q1.size < p1.size);
      // Boot code, disk signature, boot flag; the raw partition's bytes where it moved.
      assert.ok((await readRange(file, 0, 446)).equals(await readRange(src.disk, 0, 446)));
      assert.ok(
        (await readRange(file, 4 * SECTOR, 64 * 1024)).equals(
          await readRange(src.disk, 4 * SECTOR, 64 * 1024),
        ),
      );
      const dump = JSON.parse(sh('sfdisk', ['--json', file])) as {
        partitiontable: { partitions: Array<{ bootable?: boolean; type: string }> };
      };
      assert.deepEqual(
        dump.partitiontable.partitions.map((p) => [p.type, !!p.bootable]),
        [
          ['83', true],
          ['82', false],
        ],
      );
      assert.ok(
        (await readRange(file, q2.start, p2.size)).equals(await readRange(src.disk, p2.start, p2.size)),
      );
      await checkFilesystems(t2, src, file, parts, [{ number: 1, type: 'ext4' }]);
      await verifyRestoredImage(src.image, file, { fileset: 1 });
    });
  }

  await t.test('a sector less than the smallest: refused', async () => {
    const file = await sparse(join(dir, 'mbr-short.img'), smallest - SECTOR);
    await assert.rejects(restoreImage(src.image, file, { fileset: 1 }), (e: unknown) => {
      assert.ok(e instanceof DiskError && e.code === 'E_DISK_TOO_SMALL', String(e));
      assert.equal(e.details.shortBytes, SECTOR);
      assert.match(e.message, /partition 1 needs at least/);
      return true;
    });
  });
});

test('multicast sessions onto larger disks: each receiver fits the layout to its own disk, or keeps it with keepSizes', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  if (!hasCommand('sfdisk')) return void t.skip('needs sfdisk');
  const dir = await tempDir(t, 'imgcast-fit-test-');
  const { image, manifest } = await mbrExtDisk(dir);
  const imageParts = manifest.disk!.partitions.map((p) => ({
    number: p.number,
    start: p.startBytes,
    size: p.sizeBytes,
  }));
  const targets = [
    await sparse(join(dir, 'fit.img'), 96 * MiB),
    await sparse(join(dir, 'kept.img'), 128 * MiB),
  ];
  // One session per receiver: two disk restores in one process can pick the same free loop
  // device (attachLoop's record of it is per process and device).
  for (const [i, to] of targets.entries()) {
    const port = 20000 + 2 * Math.floor(Math.random() * 6000);
    const group = `239.255.${1 + Math.floor(Math.random() * 250)}.${1 + Math.floor(Math.random() * 250)}`;
    const [sent, got] = await Promise.all([
      sendCommand(image, { clients: 1, wait: 30, interface: '127.0.0.1', group, port }),
      receiveCommand({
        from: `127.0.0.1:${port}`,
        to,
        interface: '127.0.0.1',
        journal: join(dir, `journal${i}`),
        keepSizes: i === 1,
      }),
    ]);
    assert.equal(sent.ok, true);
    assert.equal(got.ok, true);
  }
  // Partition 2, the last ext volume, grew to the end of the 96 MiB disk; the 128 MiB one keeps the image's.
  assert.deepEqual(await partsOf(targets[0]!), [
    imageParts[0],
    { ...imageParts[1], size: 96 * MiB - imageParts[1]!.start },
  ]);
  assert.deepEqual(await partsOf(targets[1]!), imageParts);
  sfdiskClean(targets[0]!);
  await verifyRestoredImage(image, targets[0]!, { fileset: 1 });
  await verifyRestoredImage(image, targets[1]!, { fileset: 1, keepSizes: true });

  // The CLI passes --keep-sizes to the restore and to its read-back.
  const again = await sparse(join(dir, 'cli.img'), 128 * MiB);
  const out = JSON.parse(
    sh(process.execPath, [IMG, 'restore', image, again, '--keep-sizes', '--verify-after', '--json']),
  ) as { description: string; readBack: { entries: number } };
  assert.doesNotMatch(out.description, /grown/);
  assert.ok(out.readBack.entries > 40);
  assert.deepEqual(await partsOf(again), imageParts);
});
