/**
 * The layout-fitting policy on made-up layouts: what grows, what shrinks, what stays,
 * where partitions go, and the smallest disk, which must fit while a sector less must not.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { fitLayout, layoutNeeds, smallestDisk, type Fit } from '../../src/disk/fit-layout.ts';
import { extFilesNeed, extHolds } from '../../src/disk/fs-space.ts';
import type { DiskLayout, FileEntry, FileVolume, PartitionInfo, Volume } from '../../src/image/types.ts';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const SECTOR = 512;
const BACKUP = 33 * SECTOR;
const BIOS_BOOT = '21686148-6449-6e6f-744e-656564454649';
const ESP = 'c12a7328-f81f-11d2-ba4b-00a0c93ec93b';
const LINUX = '0fc63daf-8483-4772-8e79-3d69d8477de4';
const SWAP = '0657fd6d-a4ab-43c4-84e5-0933c84b4f4f';
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

function file(path: string, size: number): FileEntry {
  return { path, type: 'file', mode: 0o644, uid: 0, gid: 0, mtimeNs: '0', atimeNs: '0', size, extents: [] };
}

function dir(path: string): FileEntry {
  return { path, type: 'dir', mode: 0o755, uid: 0, gid: 0, mtimeNs: '0', atimeNs: '0' };
}

/** An ext4 volume holding `dataBytes` in one file (and `files` small ones). */
function ext4(index: number, partition: number, sizeBytes: number, dataBytes: number, files = 0): FileVolume {
  const entries = [dir('.'), dir('etc'), file('big.bin', dataBytes)];
  for (let i = 0; i < files; i++) entries.push(file(`etc/f${i}`, 100));
  return {
    kind: 'files',
    index,
    partition,
    sizeBytes,
    fs: { type: 'ext4', uuid: 'x', blockSize: 4096, inodeSize: 256, features: EXT4 },
    entries,
  };
}

function vfat(index: number, partition: number, sizeBytes: number): FileVolume {
  return {
    kind: 'files',
    index,
    partition,
    sizeBytes,
    fs: { type: 'vfat', fatBits: 32, blockSize: 512 },
    entries: [dir('.'), file('EFI/BOOT/BOOTX64.EFI', MiB)],
  };
}

function raw(index: number, partition: number, sizeBytes: number): Volume {
  return { kind: 'raw', index, partition, sizeBytes, extents: [] };
}

function gpt(sizeBytes: number, parts: Array<Omit<PartitionInfo, 'volume'>>): DiskLayout {
  return {
    sizeBytes,
    sectorSize: SECTOR,
    table: 'gpt',
    partitions: parts.map((p, i) => ({ ...p, volume: i })),
    bootAreas: [
      { offset: 0, length: parts[0]!.startBytes, extents: [] },
      { offset: sizeBytes - BACKUP, length: BACKUP, extents: [] },
    ],
  };
}

function fitted(f: Fit): Extract<Fit, { fits: true }> {
  assert.ok(f.fits, `expected a fit, got ${JSON.stringify(f)}`);
  return f;
}

function spans(f: Fit): Array<[number, number, number]> {
  return fitted(f).layout.partitions.map((p) => [p.number, p.startBytes, p.sizeBytes]);
}

/** A Debian workstation: BIOS boot, ESP, ext4 root to the end of a 3 GiB disk, 900 MiB of files. */
function workstation() {
  const end = 3 * GiB - BACKUP;
  const disk = gpt(3 * GiB, [
    { number: 1, startBytes: MiB, sizeBytes: MiB, type: BIOS_BOOT, uuid: 'a', name: 'bios' },
    { number: 2, startBytes: 2 * MiB, sizeBytes: 64 * MiB, type: ESP, uuid: 'b', name: 'esp' },
    { number: 3, startBytes: 66 * MiB, sizeBytes: end - 66 * MiB, type: LINUX, uuid: 'c', name: 'root' },
  ]);
  const volumes: Volume[] = [
    raw(0, 1, MiB),
    vfat(1, 2, 64 * MiB),
    ext4(2, 3, end - 66 * MiB, 900 * MiB, 2000),
  ];
  return { disk, volumes };
}

/** Every partition inside the usable area, in order, not overlapping; moved ones on 1 MiB. */
function assertSane(f: Fit, image: DiskLayout, size: number): void {
  const { layout } = fitted(f);
  const sorted = [...layout.partitions].sort((a, b) => a.startBytes - b.startBytes);
  const usableEnd = size - (layout.table === 'gpt' ? BACKUP : 0);
  let prevEnd = image.bootAreas[0]!.length;
  for (const p of sorted) {
    assert.ok(p.startBytes >= prevEnd, `partition ${p.number} overlaps the one before`);
    assert.ok(p.startBytes + p.sizeBytes <= usableEnd, `partition ${p.number} runs past the usable area`);
    const orig = image.partitions.find((q) => q.number === p.number)!;
    if (p.startBytes !== orig.startBytes)
      assert.equal(p.startBytes % MiB, 0, `moved partition ${p.number} aligned`);
    assert.equal(p.sizeBytes % SECTOR, 0);
    assert.deepEqual({ ...p, startBytes: 0, sizeBytes: 0 }, { ...orig, startBytes: 0, sizeBytes: 0 });
    prevEnd = p.startBytes + p.sizeBytes;
  }
}

test('a larger disk: the last ext volume grows to the backup GPT; boot partitions stay; --keep-sizes keeps all', () => {
  const { disk, volumes } = workstation();
  const size = 6 * GiB;
  const f = fitted(fitLayout(disk, volumes, size, { fileset: 1 }));
  assertSane(f, disk, size);
  assert.deepEqual(spans(f), [
    [1, MiB, MiB],
    [2, 2 * MiB, 64 * MiB],
    [3, 66 * MiB, size - BACKUP - 66 * MiB],
  ]);
  assert.equal(f.changed, true);
  assert.deepEqual(f.resized, [
    { number: 3, fromBytes: 3 * GiB - BACKUP - 66 * MiB, toBytes: size - BACKUP - 66 * MiB },
  ]);
  assert.equal(f.layout.sizeBytes, size);

  const kept = fitted(fitLayout(disk, volumes, size, { fileset: 1, keepSizes: true }));
  assert.deepEqual(kept.layout.partitions, disk.partitions);
  assert.equal(kept.changed, false);
  assert.equal(kept.kept, undefined);
});

test('the same size changes nothing; a disk less than 1 MiB larger is not worth a new table', () => {
  const { disk, volumes } = workstation();
  for (const size of [3 * GiB, 3 * GiB + 512 * 1024]) {
    const f = fitted(fitLayout(disk, volumes, size, { fileset: 1 }));
    assert.equal(f.changed, false, `at ${size}`);
    assert.deepEqual(f.layout.partitions, disk.partitions);
  }
});

test('a smaller disk: the ext volume shrinks to the end, keeping room for its files and the spare', () => {
  const { disk, volumes } = workstation();
  const size = 1536 * MiB;
  const f = fitted(fitLayout(disk, volumes, size, { fileset: 1 }));
  assertSane(f, disk, size);
  const root = f.layout.partitions[2]!;
  assert.equal(root.startBytes, 66 * MiB);
  assert.equal(root.startBytes + root.sizeBytes, size - BACKUP);
  const v = volumes[2] as FileVolume;
  assert.ok(extHolds(root.sizeBytes, v.fs, extFilesNeed(v, 1, 4096)), 'its files and the spare fit');
  assert.deepEqual(
    f.resized.map((r) => r.number),
    [3],
  );
});

test('too small: refused with the smallest disk that fits and what takes the room', () => {
  const { disk, volumes } = workstation();
  const f = fitLayout(disk, volumes, 900 * MiB, { fileset: 1 });
  assert.ok(!f.fits);
  assert.equal(f.haveBytes, 900 * MiB);
  assert.equal(f.needBytes, smallestDisk(disk, volumes, { fileset: 1 }));
  // 900 MiB of files, 10 % spare, ext4's own blocks: about 1.1 GiB for the root, 1.13 GiB in all.
  assert.ok(f.needBytes > 1050 * MiB && f.needBytes < 1200 * MiB, `${f.needBytes}`);
  assert.match(f.why, /^partition 3 needs at least \d+\.\d MiB for 90\d\.\d MiB of files$/);
  // With --keep-sizes the image's own layout is the need.
  const k = fitLayout(disk, volumes, 2 * GiB, { fileset: 1, keepSizes: true });
  assert.ok(!k.fits && k.needBytes === 3 * GiB && /own sizes/.test(k.why));
});

test('the smallest disk fits, one sector less does not (several layouts)', () => {
  const { disk, volumes } = workstation();
  const cases: Array<{ disk: DiskLayout; volumes: Volume[] }> = [
    { disk, volumes },
    twoExtAndSwap(),
    mbrDisk(),
  ];
  for (const c of cases) {
    const min = smallestDisk(c.disk, c.volumes, { fileset: 1 });
    assert.equal(min % SECTOR, 0);
    const f = fitLayout(c.disk, c.volumes, min, { fileset: 1 });
    assertSane(f, c.disk, min);
    assert.equal(fitLayout(c.disk, c.volumes, min - SECTOR, { fileset: 1 }).fits, false, `${min - SECTOR}`);
    assert.ok(min < layoutNeeds(c.disk), 'smaller than the image layout');
  }
});

/** / and /home (ext4) and swap at the end of a 20 GiB disk. */
function twoExtAndSwap() {
  const size = 20 * GiB;
  const end = size - BACKUP;
  const swapStart = Math.floor((end - 2 * GiB) / MiB) * MiB;
  const disk = gpt(size, [
    { number: 1, startBytes: MiB, sizeBytes: 6 * GiB, type: LINUX, uuid: 'r' },
    { number: 2, startBytes: MiB + 6 * GiB, sizeBytes: swapStart - MiB - 6 * GiB, type: LINUX, uuid: 'h' },
    { number: 3, startBytes: swapStart, sizeBytes: end - swapStart, type: SWAP, uuid: 's' },
  ]);
  const volumes = [
    ext4(0, 1, 6 * GiB, 2 * GiB, 100),
    ext4(1, 2, swapStart - MiB - 6 * GiB, GiB),
    raw(2, 3, end - swapStart),
  ];
  return { disk, volumes };
}

test('several ext volumes shrink in proportion; the swap after them keeps its size at the end', () => {
  const { disk, volumes } = twoExtAndSwap();
  const size = 14 * GiB;
  const f = fitted(fitLayout(disk, volumes, size, { fileset: 1 }));
  assertSane(f, disk, size);
  const [root, home, swap] = f.layout.partitions as [PartitionInfo, PartitionInfo, PartitionInfo];
  assert.equal(swap.sizeBytes, disk.partitions[2]!.sizeBytes);
  assert.ok(swap.startBytes + swap.sizeBytes > size - BACKUP - MiB, 'swap at the end');
  assert.equal(home.startBytes, root.startBytes + root.sizeBytes);
  assert.equal(home.startBytes + home.sizeBytes, swap.startBytes);
  const ratio = (p: PartitionInfo, i: number) => p.sizeBytes / disk.partitions[i]!.sizeBytes;
  assert.ok(Math.abs(ratio(root, 0) - ratio(home, 1)) < 0.01, `${ratio(root, 0)} vs ${ratio(home, 1)}`);

  // Larger: only /home (the last ext volume) grows; / stays, swap moves to the end.
  const big = fitted(fitLayout(disk, volumes, 40 * GiB, { fileset: 1 }));
  assertSane(big, disk, 40 * GiB);
  assert.deepEqual(big.layout.partitions[0], disk.partitions[0]);
  assert.equal(big.layout.partitions[1]!.startBytes, disk.partitions[1]!.startBytes);
  assert.equal(big.layout.partitions[2]!.sizeBytes, disk.partitions[2]!.sizeBytes);
  assert.equal(
    big.layout.partitions[1]!.startBytes + big.layout.partitions[1]!.sizeBytes,
    big.layout.partitions[2]!.startBytes,
  );
  assert.deepEqual(
    big.resized.map((r) => r.number),
    [2],
  );
});

test('a small volume whose data would need more than its own size with the spare keeps its size', () => {
  const size = 2 * GiB;
  const disk = gpt(size, [
    { number: 1, startBytes: MiB, sizeBytes: 16 * MiB, type: LINUX, uuid: 'boot' },
    { number: 2, startBytes: 17 * MiB, sizeBytes: size - BACKUP - 17 * MiB, type: LINUX, uuid: 'root' },
  ]);
  const volumes = [ext4(0, 1, 16 * MiB, MiB), ext4(1, 2, size - BACKUP - 17 * MiB, 100 * MiB)];
  const f = fitted(fitLayout(disk, volumes, GiB, { fileset: 1 }));
  assert.equal(f.layout.partitions[0]!.sizeBytes, 16 * MiB);
  assert.ok(f.layout.partitions[1]!.sizeBytes < GiB);
});

function mbrDisk() {
  const size = 4 * GiB;
  const disk: DiskLayout = {
    sizeBytes: size,
    sectorSize: SECTOR,
    table: 'mbr',
    partitions: [
      { number: 1, startBytes: MiB, sizeBytes: 512 * MiB, type: '83', bootable: true, volume: 0 },
      { number: 2, startBytes: 513 * MiB, sizeBytes: size - 513 * MiB, type: '83', volume: 1 },
    ],
    bootAreas: [{ offset: 0, length: MiB, extents: [] }],
  };
  return { disk, volumes: [ext4(0, 1, 512 * MiB, 200 * MiB), ext4(1, 2, size - 513 * MiB, GiB)] };
}

test('MBR: the last ext volume grows to the very end, but never past 2^32 sectors', () => {
  const { disk, volumes } = mbrDisk();
  const f = fitted(fitLayout(disk, volumes, 8 * GiB, { fileset: 1 }));
  assert.deepEqual(spans(f), [
    [1, MiB, 512 * MiB],
    [2, 513 * MiB, 8 * GiB - 513 * MiB],
  ]);
  const huge = fitted(fitLayout(disk, volumes, 3 * 1024 * GiB, { fileset: 1 }));
  const p2 = huge.layout.partitions[1]!;
  assert.equal(p2.startBytes + p2.sizeBytes, 2 ** 32 * SECTOR);
});

test('an ext filesystem without 64bit grows no further than 2^32 blocks', () => {
  const { disk, volumes } = mbrDisk();
  const small = { ...(volumes[1] as FileVolume) };
  small.fs = { ...small.fs, blockSize: 1024, features: EXT4.filter((x) => x !== '64bit') };
  const gptDisk = gpt(
    disk.sizeBytes,
    disk.partitions.map(({ volume: _, ...p }) => ({ ...p, type: LINUX })),
  );
  const f = fitted(fitLayout(gptDisk, [volumes[0]!, small], 8 * 1024 * GiB, { fileset: 1 }));
  assert.equal(f.layout.partitions[1]!.sizeBytes, (2 ** 32 - 1) * 1024);
});

test('layouts that cannot change are kept, and refused only below their own size', () => {
  // An extended partition: logical partitions hang on boot records restored byte for byte.
  const { disk, volumes } = mbrDisk();
  const withExtended: DiskLayout = {
    ...disk,
    containers: [{ number: 2, startBytes: 513 * MiB, sizeBytes: disk.sizeBytes - 513 * MiB, type: '05' }],
    partitions: [
      disk.partitions[0]!,
      { ...disk.partitions[1]!, number: 5, startBytes: 514 * MiB, sizeBytes: disk.sizeBytes - 514 * MiB },
    ],
  };
  const big = fitted(fitLayout(withExtended, volumes, 8 * GiB, { fileset: 1 }));
  assert.equal(big.changed, false);
  assert.match(big.kept!, /extended partition/);
  const small = fitLayout(withExtended, volumes, 2 * GiB, { fileset: 1 });
  assert.ok(!small.fits && small.needBytes === 4 * GiB && /extended partition/.test(small.why));
  assert.equal(smallestDisk(withExtended, volumes, { fileset: 1 }), 4 * GiB);

  // No ext volume: raw partitions only.
  const rawDisk = gpt(GiB, [{ number: 1, startBytes: MiB, sizeBytes: 512 * MiB, type: LINUX }]);
  const r = fitted(fitLayout(rawDisk, [raw(0, 1, 512 * MiB)], 2 * GiB, { fileset: 1 }));
  assert.equal(r.changed, false);
  assert.match(r.kept!, /no ext2\/3\/4 volume/);

  // A BIOS boot partition after a resizable one must not move.
  const late = gpt(4 * GiB, [
    { number: 1, startBytes: MiB, sizeBytes: 2 * GiB, type: LINUX },
    { number: 2, startBytes: MiB + 2 * GiB, sizeBytes: MiB, type: BIOS_BOOT },
  ]);
  const l = fitted(fitLayout(late, [ext4(0, 1, 2 * GiB, MiB), raw(1, 2, MiB)], 8 * GiB, { fileset: 1 }));
  assert.equal(l.changed, false);
  assert.match(l.kept!, /BIOS boot partition \(2\)/);
});

test('file sets: a file set that leaves the big files out fits a smaller disk', () => {
  const { disk, volumes } = workstation();
  const root = volumes[2] as FileVolume;
  const lean = {
    ...root,
    entries: root.entries.map((e) => (e.path === 'big.bin' ? { ...e, excludedFrom: 0b10 } : e)),
  };
  const withLean = [volumes[0]!, volumes[1]!, lean];
  const all = smallestDisk(disk, withLean, { fileset: 1 });
  const set2 = smallestDisk(disk, withLean, { fileset: 2 });
  assert.ok(all - set2 > 800 * MiB, `${all} vs ${set2}`);
});

test('any target size: a layout that fits is sane, and fits exactly from the smallest disk on', () => {
  const { disk, volumes } = twoExtAndSwap();
  const min = smallestDisk(disk, volumes, { fileset: 1 });
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 80 * 1024 * 2 * 1024 }), (sectors) => {
      const size = sectors * SECTOR;
      const f = fitLayout(disk, volumes, size, { fileset: 1 });
      assert.equal(f.fits, size >= min, `${size} against ${min}`);
      if (f.fits) assertSane(f, disk, size);
    }),
    { numRuns: 300 },
  );
});

test('a volume its files nearly fill keeps its size on the same disk and is the floor on a smaller one', () => {
  const { disk, volumes } = workstation();
  const root = volumes[2] as FileVolume;
  const full = {
    ...root,
    entries: root.entries.map((e) => (e.path === 'big.bin' ? { ...e, size: 2800 * MiB } : e)),
  };
  const vs = [volumes[0]!, volumes[1]!, full];
  const same = fitted(fitLayout(disk, vs, 3 * GiB, { fileset: 1 }));
  assert.equal(same.changed, false);
  const min = smallestDisk(disk, vs, { fileset: 1 });
  assert.equal(min, layoutNeeds(disk), 'no room to spare: the smallest disk is the image layout');
  assert.equal(fitLayout(disk, vs, min - SECTOR, { fileset: 1 }).fits, false);
});

test('files added to the image beyond the size of their partition: it gets room for them', () => {
  const size = 2 * GiB;
  const disk = gpt(size, [
    { number: 1, startBytes: MiB, sizeBytes: 16 * MiB, type: LINUX, uuid: 'small' },
    { number: 2, startBytes: 17 * MiB, sizeBytes: size - BACKUP - 17 * MiB, type: LINUX, uuid: 'root' },
  ]);
  const volumes = [ext4(0, 1, 16 * MiB, 40 * MiB), ext4(1, 2, size - BACKUP - 17 * MiB, 100 * MiB)];
  const f = fitted(fitLayout(disk, volumes, size, { fileset: 1 }));
  assertSane(f, disk, size);
  const p1 = f.layout.partitions[0]!;
  const v = volumes[0] as FileVolume;
  assert.ok(p1.sizeBytes > 100 * MiB, `${p1.sizeBytes}`);
  assert.ok(extHolds(p1.sizeBytes, v.fs, extFilesNeed(v, 1, 4096)));
  // With --keep-sizes the image's layout is taken as it is.
  assert.deepEqual(
    fitted(fitLayout(disk, volumes, size, { fileset: 1, keepSizes: true })).layout.partitions,
    disk.partitions,
  );
});

test('4096-byte sectors: the backup GPT takes 5 sectors, the last volume grows up to it', () => {
  const ss = 4096;
  const size = 4 * GiB;
  const disk: DiskLayout = {
    sizeBytes: size,
    sectorSize: ss,
    table: 'gpt',
    partitions: [{ number: 1, startBytes: MiB, sizeBytes: size - 5 * ss - MiB, type: LINUX, volume: 0 }],
    bootAreas: [
      { offset: 0, length: MiB, extents: [] },
      { offset: size - 5 * ss, length: 5 * ss, extents: [] },
    ],
  };
  const volumes = [ext4(0, 1, size - 5 * ss - MiB, GiB)];
  const f = fitted(fitLayout(disk, volumes, 8 * GiB + 3 * 512, { fileset: 1 }));
  assert.equal(f.layout.sizeBytes, 8 * GiB, 'whole sectors only');
  assert.equal(f.layout.partitions[0]!.sizeBytes, 8 * GiB - 5 * ss - MiB);
  const min = smallestDisk(disk, volumes, { fileset: 1 });
  assert.equal(min % ss, 0);
  assert.equal(fitLayout(disk, volumes, min - ss, { fileset: 1 }).fits, false);
  assert.ok(fitLayout(disk, volumes, min, { fileset: 1 }).fits);
});
