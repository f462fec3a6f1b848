/**
 * The table rewrite for a fitted layout, checked with sgdisk and sfdisk: the boot area of
 * one disk copied onto a disk of another size, its table rewritten for a new layout.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { open, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { DiskError } from '../../src/disk/errors.ts';
import { readPartitionTable } from '../../src/disk/partition-table.ts';
import { writeFittedTable } from '../../src/disk/table-write.ts';
import type { DiskLayout, PartitionInfo } from '../../src/image/types.ts';
import { hasCommand, tempDir } from '../helpers/env.ts';

const MiB = 1024 * 1024;
const SECTOR = 512;

function sh(cmd: string, args: string[], input?: string): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: 'pipe', ...(input ? { input } : {}) });
}

async function sparse(path: string, size: number): Promise<string> {
  await (await open(path, 'w')).close();
  await truncate(path, size);
  return path;
}

async function copyRange(from: string, to: string, length: number): Promise<void> {
  const a = await open(from, 'r');
  const b = await open(to, 'r+');
  const buf = Buffer.alloc(length);
  await a.read(buf, 0, length, 0);
  await b.write(buf, 0, length, 0);
  await a.close();
  await b.close();
}

async function readRange(path: string, position: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  const b = Buffer.alloc(length);
  await fh.read(b, 0, length, position);
  await fh.close();
  return b;
}

/** The layout of `disk` as capture records it (volumes do not matter here). */
async function layoutOf(disk: string): Promise<DiskLayout> {
  const t = await readPartitionTable(disk);
  return {
    sizeBytes: t.diskSizeBytes,
    sectorSize: t.sectorSize,
    table: t.table,
    partitions: t.partitions.map((p, i): PartitionInfo => ({
      number: p.number,
      startBytes: p.startBytes,
      sizeBytes: p.sizeBytes,
      type: p.type,
      volume: i,
    })),
    bootAreas: [],
  };
}

function fitted(image: DiskLayout, size: number, spans: Record<number, [number, number]>): DiskLayout {
  return {
    ...image,
    sizeBytes: size,
    partitions: image.partitions.map((p) => {
      const s = spans[p.number];
      return s ? { ...p, startBytes: s[0], sizeBytes: s[1] } : p;
    }),
  };
}

function sgdiskClean(path: string): void {
  const v = spawnSync('sgdisk', ['-v', path], { encoding: 'utf8' });
  assert.equal(v.status, 0, v.stderr);
  assert.match(v.stdout, /No problems found/, v.stdout + v.stderr);
}

function identity(path: string, n: number): string {
  return sh('sgdisk', ['-i', String(n), path])
    .split('\n')
    .filter((l) => !/^(First sector|Last sector|Partition size)/.test(l))
    .join('\n');
}

test('GPT onto a smaller disk: entries moved and resized, headers, CRCs and backup rewritten, the rest kept', async (t) => {
  if (!hasCommand('sgdisk')) return void t.skip('needs sgdisk');
  const dir = await tempDir(t);
  const src = await sparse(join(dir, 'src.img'), 64 * MiB);
  sh('sgdisk', [
    '-n1:2048:+8M',
    '-t1:ef00',
    '-c1:ESP',
    '-n2:0:+40M',
    '-t2:8304',
    '-c2:root',
    '-A2:set:2',
    '-n3:0:0',
    '-t3:8200',
    '-c3:swap',
    src,
  ]);
  const image = await layoutOf(src);
  const target = await sparse(join(dir, 'target.img'), 40 * MiB);
  // What the restore writes first: the boot area, from sector 0 up to the first partition.
  await copyRange(src, target, MiB);
  const p3 = image.partitions[2]!;
  const swapStart = 40 * MiB - 33 * SECTOR - MiB - p3.sizeBytes + (p3.sizeBytes % MiB);
  const layout = fitted(image, 40 * MiB, {
    2: [9 * MiB, swapStart - 9 * MiB],
    3: [swapStart, p3.sizeBytes],
  });
  await writeFittedTable(target, image, layout);
  sgdiskClean(target);
  const back = await readPartitionTable(target);
  assert.deepEqual(
    back.partitions.map((p) => [p.number, p.startBytes, p.sizeBytes]),
    layout.partitions.map((p) => [p.number, p.startBytes, p.sizeBytes]),
  );
  for (const n of [1, 2, 3])
    assert.equal(identity(target, n), identity(src, n), `partition ${n}: type, GUID, name, attributes`);
  const guid = (f: string) => /Disk identifier \(GUID\): (\S+)/.exec(sh('sgdisk', ['-p', f]))![1];
  assert.equal(guid(target), guid(src));
  assert.equal(back.gpt!.backupHeaderLba, (40 * MiB) / SECTOR - 1);
  // The protective MBR's entry covers the new disk, as sgdisk itself writes it.
  const ref = await sparse(join(dir, 'ref.img'), 40 * MiB);
  sh('sgdisk', ['-o', ref]);
  assert.ok((await readRange(target, 446, 16)).equals(await readRange(ref, 446, 16)));
});

test('MBR: moved and resized entries get the CHS fields sfdisk writes; boot code, signature and flags stay', async (t) => {
  if (!hasCommand('sfdisk')) return void t.skip('needs sfdisk');
  const dir = await tempDir(t);
  const src = await sparse(join(dir, 'src.img'), 64 * MiB);
  sh(
    'sfdisk',
    ['-q', src],
    'label: dos\nlabel-id: 0x1234abcd\nstart=2048, size=40MiB, type=83, bootable\nsize=16MiB, type=82\n',
  );
  const code = Buffer.from('boot code '.repeat(44));
  const fh = await open(src, 'r+');
  await fh.write(code, 0, 440, 0);
  await fh.close();
  const image = await layoutOf(src);
  const size = 10 * 1024 * MiB;
  const target = await sparse(join(dir, 'target.img'), size);
  await copyRange(src, target, MiB);
  const layout = fitted(image, size, { 1: [MiB, size - 17 * MiB], 2: [size - 16 * MiB, 16 * MiB] });
  await writeFittedTable(target, image, layout);
  const v = spawnSync('sfdisk', ['--verify', target], { encoding: 'utf8' });
  assert.equal(v.status, 0, v.stdout + v.stderr);
  assert.match(v.stdout, /No errors detected/);
  // The same layout as sfdisk writes it: the same 64 bytes of entries.
  const ref = await sparse(join(dir, 'ref.img'), size);
  sh(
    'sfdisk',
    ['-q', ref],
    `label: dos\nlabel-id: 0x1234abcd\nstart=2048, size=${(size - 17 * MiB) / SECTOR}, type=83, bootable\nstart=${(size - 16 * MiB) / SECTOR}, size=16MiB, type=82\n`,
  );
  assert.deepEqual(
    (await readRange(target, 446, 64)).toString('hex'),
    (await readRange(ref, 446, 64)).toString('hex'),
  );
  assert.ok(
    (await readRange(target, 0, 446)).equals(await readRange(src, 0, 446)),
    'boot code and disk signature',
  );
});

test('a hybrid MBR: the entry mirroring a GPT partition follows it, the protective entry stays', async (t) => {
  if (!hasCommand('sgdisk')) return void t.skip('needs sgdisk');
  const dir = await tempDir(t);
  const src = await sparse(join(dir, 'src.img'), 64 * MiB);
  sh('sgdisk', ['-n1:2048:+8M', '-t1:ef00', '-n2:0:0', '-t2:0700', src]);
  sh('sgdisk', ['-h', '2', src]);
  const image = await layoutOf(src);
  const target = await sparse(join(dir, 'target.img'), 128 * MiB);
  await copyRange(src, target, MiB);
  const p2 = image.partitions[1]!;
  const grown = 128 * MiB - 33 * SECTOR - p2.startBytes;
  await writeFittedTable(target, image, fitted(image, 128 * MiB, { 2: [p2.startBytes, grown] }));
  sgdiskClean(target);
  const before = await readRange(src, 446, 32);
  const after = await readRange(target, 446, 32);
  assert.ok(
    after.subarray(0, 16).equals(before.subarray(0, 16)),
    'the hybrid protective entry (sectors 1 to the GPT partitions) stays',
  );
  assert.equal(after.readUInt32LE(16 + 8), p2.startBytes / SECTOR);
  assert.equal(after.readUInt32LE(16 + 12), grown / SECTOR, 'the mirrored entry grew with partition 2');
});

test('a boot area without the GPT it should hold is refused, naming the target', async (t) => {
  const dir = await tempDir(t);
  const target = await sparse(join(dir, 'blank.img'), 8 * MiB);
  const fh = await open(target, 'r+');
  await fh.write(Buffer.from([0x55, 0xaa]), 0, 2, 510);
  await fh.close();
  const image: DiskLayout = {
    sizeBytes: 8 * MiB,
    sectorSize: SECTOR,
    table: 'gpt',
    partitions: [{ number: 1, startBytes: MiB, sizeBytes: 4 * MiB, type: 'x', volume: 0 }],
    bootAreas: [],
  };
  await assert.rejects(
    writeFittedTable(target, image, fitted(image, 8 * MiB, { 1: [MiB, 6 * MiB] })),
    (e: unknown) => {
      assert.ok(e instanceof DiskError && e.code === 'E_DISK_TABLE_CORRUPT', String(e));
      assert.match(e.message, /blank\.img: the restored boot area holds no GPT header/);
      return true;
    },
  );
});
