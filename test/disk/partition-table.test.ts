import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { open, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { crc32 } from 'node:zlib';
import fc from 'fast-check';
import { DiskError } from '../../src/disk/errors.ts';
import {
  parsePartitionTable,
  probePartitionTable,
  readPartitionTable,
  partitionTypeName,
} from '../../src/disk/partition-table.ts';
import { hasCommand, loopUnavailable, skipUnless, tempDir } from '../helpers/env.ts';

const MiB = 1024 * 1024;
const ESP = 'c12a7328-f81f-11d2-ba4b-00a0c93ec93b';
const LINUX = '0fc63daf-8483-4772-8e79-3d69d8477de4';

async function sparse(dir: string, name: string, size: number): Promise<string> {
  const path = join(dir, name);
  await (await open(path, 'w')).close();
  await truncate(path, size);
  return path;
}

async function patch(path: string, position: number, bytes: Buffer): Promise<void> {
  const fh = await open(path, 'r+');
  await fh.write(bytes, 0, bytes.length, position);
  await fh.close();
}

async function readBytes(path: string, position: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  const b = Buffer.alloc(length);
  await fh.read(b, 0, length, position);
  await fh.close();
  return b;
}

async function makeGpt(dir: string): Promise<string> {
  const disk = await sparse(dir, 'gpt.img', 64 * MiB);
  execFileSync('sgdisk', [
    '-n1:2048:+8M',
    '-t1:ef00',
    '-c1:EFI system',
    '-n2:0:+16M',
    '-t2:8300',
    '-c2:root',
    '-n3:0:0',
    '-t3:8300',
    disk,
  ]);
  return disk;
}

function rejectsWith(code: string, pattern: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof DiskError, `expected DiskError, got ${String(err)}`);
    assert.equal(err.code, code);
    assert.match(err.message, pattern);
    return true;
  };
}

test(
  'GPT made by sgdisk: partitions, types, names, GUIDs, geometry',
  { skip: !hasCommand('sgdisk') && 'needs sgdisk' },
  async (t) => {
    const dir = await tempDir(t);
    const disk = await makeGpt(dir);
    const table = await readPartitionTable(disk);
    assert.equal(table.table, 'gpt');
    assert.equal(table.sectorSize, 512);
    assert.equal(table.diskSizeBytes, 64 * MiB);
    assert.deepEqual(
      table.partitions.map((p) => [p.number, p.startBytes, p.sizeBytes, p.type, p.name]),
      [
        [1, 2048 * 512, 8 * MiB, ESP, 'EFI system'],
        [2, 2048 * 512 + 8 * MiB, 16 * MiB, LINUX, 'root'],
        [
          3,
          2048 * 512 + 24 * MiB,
          table.gpt!.lastUsableLba * 512 + 512 - (2048 * 512 + 24 * MiB),
          LINUX,
          undefined,
        ],
      ],
    );
    const info = execFileSync('sgdisk', ['-i', '2', disk], { encoding: 'utf8' });
    const unique = /Partition unique GUID: (\S+)/.exec(info)![1]!.toLowerCase();
    assert.equal(table.partitions[1]!.uuid, unique);
    const printed = execFileSync('sgdisk', ['-p', disk], { encoding: 'utf8' });
    assert.equal(table.gpt!.diskGuid, /Disk identifier \(GUID\): (\S+)/.exec(printed)![1]!.toLowerCase());
    assert.equal(table.gpt!.backupHeaderLba, 64 * 2048 - 1);
    assert.equal(table.gpt!.backupEntriesLba, 64 * 2048 - 33);
  },
);

test(
  'damaged GPT structures are refused with the structure named',
  { skip: !hasCommand('sgdisk') && 'needs sgdisk' },
  async (t) => {
    const dir = await tempDir(t);
    const cases: Array<[string, number, RegExp]> = [
      ['primary header', 512 + 40, /primary GPT header at sector 1 fails its CRC32 check/],
      ['primary entries', 1024 + 200, /primary GPT partition entry array .* fails its CRC32 check/],
      ['backup header', (64 * 2048 - 1) * 512 + 40, /backup GPT header .* fails its CRC32 check.*sgdisk/],
      ['backup entries', (64 * 2048 - 33) * 512 + 100, /backup GPT partition entry array .* fails its CRC32/],
    ];
    // sgdisk takes a second per run (it syncs); one table, copied per case, keeps the test quick.
    const pristine = await makeGpt(dir);
    for (const [name, pos, pattern] of cases) {
      const disk = join(dir, `damaged-${pos}.img`);
      execFileSync('cp', ['--sparse=always', pristine, disk]);
      const before = await readBytes(disk, pos, 1);
      await patch(disk, pos, Buffer.from([before[0]! ^ 0xff]));
      await assert.rejects(readPartitionTable(disk), rejectsWith('E_DISK_TABLE_CORRUPT', pattern), name);
    }
  },
);

test(
  'MBR with an extended partition: primaries and the logical chain',
  { skip: !hasCommand('sfdisk') && 'needs sfdisk' },
  async (t) => {
    const dir = await tempDir(t);
    const disk = await sparse(dir, 'mbr.img', 64 * MiB);
    execFileSync('sfdisk', ['-q', disk], {
      input:
        'label: dos\nstart=2048, size=20MiB, type=83, bootable\nsize=10MiB, type=c\ntype=5\nsize=5MiB, type=83\nsize=6MiB, type=82\n',
    });
    const table = await readPartitionTable(disk);
    assert.equal(table.table, 'mbr');
    const summary = table.partitions.map((p) => ({
      n: p.number,
      type: p.type,
      start: p.startBytes / 512,
      size: p.sizeBytes / MiB,
      boot: p.bootable,
      ext: p.extended ?? false,
      log: p.logical ?? false,
    }));
    const dump = JSON.parse(execFileSync('sfdisk', ['-J', disk], { encoding: 'utf8' })) as {
      partitiontable: { partitions: Array<{ node: string; start: number; size: number; type: string }> };
    };
    assert.equal(summary.length, dump.partitiontable.partitions.length);
    for (const p of dump.partitiontable.partitions) {
      const n = Number(/(\d+)$/.exec(p.node)![1]);
      const mine = summary.find((s) => s.n === n)!;
      assert.equal(mine.start, p.start, `partition ${n} start`);
      assert.equal(mine.size * MiB, p.size * 512, `partition ${n} size`);
      assert.equal(mine.type, p.type.padStart(2, '0'));
    }
    assert.equal(summary[0]!.boot, true);
    assert.equal(summary[2]!.ext, true);
    assert.deepEqual(
      summary.filter((s) => s.log).map((s) => [s.n, s.type, s.size]),
      [
        [5, '83', 5],
        [6, '82', 6],
      ],
    );
  },
);

test('filesystem images and empty files have no partition table', async (t) => {
  const dir = await tempDir(t);
  const empty = await sparse(dir, 'empty.img', 4 * MiB);
  assert.equal(await probePartitionTable(empty), null);
  await assert.rejects(readPartitionTable(empty), rejectsWith('E_DISK_NO_TABLE', /no partition table/));
  if (hasCommand('mkfs.vfat')) {
    const fat = await sparse(dir, 'fat.img', 32 * MiB);
    execFileSync('mkfs.vfat', ['-F', '32', fat], { stdio: 'ignore' });
    assert.equal((await readBytes(fat, 510, 2)).toString('hex'), '55aa');
    await assert.rejects(readPartitionTable(fat), rejectsWith('E_DISK_NO_TABLE', /filesystem boot sector/));
  }
  // A missing file: the reason in words, with the errno.
  await assert.rejects(readPartitionTable(join(dir, 'none.img')), {
    code: 'E_DISK_IO',
    message: `cannot access ${join(dir, 'none.img')}: no such file or directory (ENOENT)`,
  });
});

/** Sector 0 with a protective MBR entry, so the parser goes on to GPT. */
function protectiveMbr(): Buffer {
  const s = Buffer.alloc(512);
  s[446 + 4] = 0xee;
  s.writeUInt32LE(1, 446 + 8);
  s.writeUInt32LE(0xffffffff, 446 + 12);
  s[510] = 0x55;
  s[511] = 0xaa;
  return s;
}

test('random bytes never crash the parser: a table within the disk, or a typed error', async () => {
  const disk = 8 * MiB;
  const check = async (image: Buffer) => {
    const read = async (pos: number, len: number) =>
      image.subarray(Math.min(pos, image.length), Math.min(pos + len, image.length));
    try {
      const table = await parsePartitionTable('garbage', 512, disk, read);
      for (const p of table.partitions) {
        assert.ok(
          p.startBytes >= 512 && p.startBytes + p.sizeBytes <= disk,
          `partition ${p.number} inside the disk`,
        );
      }
    } catch (err) {
      assert.ok(err instanceof DiskError, `unexpected ${String(err)}`);
      assert.match(err.code, /^E_DISK_(NO_TABLE|TABLE_CORRUPT|IO)$/);
    }
  };
  // Whole random sectors with the boot signature forced, so the MBR path is exercised.
  await fc.assert(
    fc.asyncProperty(fc.uint8Array({ minLength: 1024, maxLength: 1024 }), async (bytes) => {
      const img = Buffer.from(bytes);
      img[510] = 0x55;
      img[511] = 0xaa;
      await check(img);
    }),
    { numRuns: 300 },
  );
  // A protective MBR and a GPT header with a valid CRC over random fields: the header's numbers are hostile.
  await fc.assert(
    fc.asyncProperty(
      fc.uint8Array({ minLength: 92, maxLength: 92 }),
      fc.uint8Array({ minLength: 2048, maxLength: 2048 }),
      async (hdr, tail) => {
        const h = Buffer.from(hdr);
        h.write('EFI PART', 0, 'latin1');
        h.writeUInt32LE(92, 12);
        h.writeBigUInt64LE(1n, 24);
        h.writeUInt32LE(0, 16);
        h.writeUInt32LE(crc32(h), 16);
        const sector1 = Buffer.alloc(512);
        h.copy(sector1);
        await check(Buffer.concat([protectiveMbr(), sector1, Buffer.from(tail)]));
      },
    ),
    { numRuns: 300 },
  );
});

test('an MBR whose boot code carries a copied FAT BPB (as GRUB installs it) is still a partition table', async (t) => {
  if (!hasCommand('sfdisk')) return void t.skip('needs sfdisk');
  const dir = await tempDir(t);
  const disk = await sparse(dir, 'grub.img', 16 * MiB);
  execFileSync('sfdisk', ['-q', disk], { input: 'label: dos\nstart=2048, size=8MiB, type=c\n' });
  const bpb = Buffer.alloc(0x5a);
  bpb.set([0xeb, 0x58, 0x90]);
  bpb.write('MSWIN4.1', 3, 'latin1');
  bpb.writeUInt16LE(512, 11);
  bpb[13] = 8;
  bpb[16] = 2;
  bpb.write('FAT32   ', 0x52, 'latin1');
  await patch(disk, 0, bpb);
  const table = await readPartitionTable(disk);
  assert.equal(table.table, 'mbr');
  assert.deepEqual(
    table.partitions.map((p) => [p.number, p.startBytes, p.type]),
    [[1, 2048 * 512, '0c']],
  );
});

test('GPT with 4096-byte sectors: from the 4Kn loop device and from its image file', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  const dir = await tempDir(t);
  const file = await sparse(dir, '4kn.img', 64 * MiB);
  const dev = execFileSync('losetup', ['--find', '--show', '--sector-size', '4096', file], {
    encoding: 'utf8',
  }).trim();
  let attached = true;
  t.after(() => {
    if (attached) execFileSync('losetup', ['-d', dev]);
  });
  execFileSync('sgdisk', ['-n1:256:+16M', '-t1:ef00', '-n2:0:0', dev], { stdio: 'pipe' });
  const fromDevice = await readPartitionTable(dev);
  execFileSync('losetup', ['-d', dev]);
  attached = false;
  const fromFile = await readPartitionTable(file);
  for (const table of [fromDevice, fromFile]) {
    assert.equal(table.table, 'gpt');
    assert.equal(table.sectorSize, 4096);
    assert.equal(table.partitions[0]!.startBytes, 256 * 4096);
    assert.equal(table.partitions[0]!.sizeBytes, 16 * MiB);
    assert.equal(table.gpt!.backupHeaderLba, (64 * MiB) / 4096 - 1);
  }
  assert.deepEqual(fromFile.partitions, fromDevice.partitions);
});

test('common partition types have names for display, others none', () => {
  assert.equal(partitionTypeName('gpt', 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B'), 'EFI System');
  assert.equal(partitionTypeName('gpt', '0657fd6d-a4ab-43c4-84e5-0933c84b4f4f'), 'Linux swap');
  assert.equal(partitionTypeName('mbr', '07'), 'NTFS/exFAT');
  assert.equal(partitionTypeName('mbr', '83'), 'Linux');
  assert.equal(partitionTypeName('mbr', 'ee'), 'GPT protective');
  assert.equal(partitionTypeName('mbr', '99'), undefined);
  assert.equal(partitionTypeName('gpt', '00000000-0000-0000-0000-000000000001'), undefined);
});
