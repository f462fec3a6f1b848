import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ClientError } from '../../src/client/errors.ts';
import {
  pickDisk,
  systemDiskDevices,
  type DiskCandidate,
  type SystemDisk,
} from '../../src/client/pick-disk.ts';
import { hasCommand, loopUnavailable, skipUnless, tempDir } from '../helpers/env.ts';
import { trackedLoops } from '../disk/loops.ts';

const GiB = 1024 ** 3;
const ssd: DiskCandidate = {
  path: '/dev/nvme0n1',
  sizeBytes: 512 * GiB,
  model: 'Samsung SSD 980',
  removable: false,
};
const hdd: DiskCandidate = {
  path: '/dev/sda',
  sizeBytes: 1000 * GiB,
  model: 'WDC WD10EZEX',
  removable: false,
};
const plain: DiskCandidate = { path: '/dev/vda', sizeBytes: 256 * GiB, removable: false };
const usb: DiskCandidate = {
  path: '/dev/sdb',
  sizeBytes: 16 * GiB,
  model: 'SanDisk Cruzer',
  removable: true,
};
const loop: DiskCandidate = { path: '/dev/loop3', sizeBytes: 8 * GiB, removable: false };
const cardReader: DiskCandidate = { path: '/dev/sdc', sizeBytes: 0, model: 'SD Reader', removable: false };
const system = (disk: DiskCandidate, ...mounts: string[]): SystemDisk => ({ disk: disk.path, mounts });

interface Row {
  rule: string;
  disks: DiskCandidate[];
  systemDisks: SystemDisk[];
  disk?: string;
  code?: string;
  message?: string;
}

const rows: Row[] = [
  {
    rule: 'the one internal disk, netbooted (no system disk)',
    disks: [ssd],
    systemDisks: [],
    disk: ssd.path,
  },
  {
    rule: 'removable, loop and empty devices are never candidates',
    disks: [usb, loop, cardReader, hdd],
    systemDisks: [],
    disk: hdd.path,
  },
  {
    rule: 'the one internal disk that does not hold the running system',
    disks: [ssd, hdd, usb],
    systemDisks: [system(ssd, '/', '/boot/efi', 'swap')],
    disk: hdd.path,
  },
  {
    rule: 'a system on the USB stick leaves the internal disk free',
    disks: [usb, ssd],
    systemDisks: [system(usb, '/')],
    disk: ssd.path,
  },
  {
    rule: 'several free internal disks: the user chooses',
    disks: [ssd, hdd, usb],
    systemDisks: [],
    code: 'E_DISK_AMBIGUOUS',
    message:
      'this workstation has 2 internal disks that could be written: /dev/nvme0n1 (512.0 GiB, Samsung SSD 980); ' +
      '/dev/sda (1000.0 GiB, WDC WD10EZEX); give the one to write with --disk',
  },
  {
    rule: 'no disk at all',
    disks: [],
    systemDisks: [],
    code: 'E_NO_DISK',
    message: 'this workstation has no internal disk to write to',
  },
  {
    rule: 'only removable, loop and empty devices',
    disks: [usb, loop, cardReader],
    systemDisks: [],
    code: 'E_NO_DISK',
    message:
      'this workstation has no internal disk to write to (passed over /dev/sdb (16.0 GiB, SanDisk Cruzer): removable; ' +
      '/dev/loop3 (8.0 GiB): a loop device; /dev/sdc (0 bytes, SD Reader): empty (no medium)); ' +
      'give --disk to write to one of them',
  },
  {
    rule: 'the only internal disk holds the running system',
    disks: [plain, usb],
    systemDisks: [system(plain, '/', '/boot/efi', 'swap')],
    code: 'E_SYSTEM_DISK',
    message:
      'the only internal disk, /dev/vda (256.0 GiB), holds the running system (mounted on /, /boot/efi, used as swap); ' +
      'writing it would destroy the system this workstation is running: start the workstation from the network to image it',
  },
  {
    rule: 'every internal disk holds part of the running system',
    disks: [ssd, hdd],
    systemDisks: [system(ssd, '/'), system(hdd, 'swap')],
    code: 'E_SYSTEM_DISK',
    message:
      'every internal disk holds the running system: /dev/nvme0n1 (512.0 GiB, Samsung SSD 980) mounted on /; ' +
      '/dev/sda (1000.0 GiB, WDC WD10EZEX) used as swap; writing one would destroy the system this workstation ' +
      'is running: start the workstation from the network to image it',
  },
];

for (const row of rows) {
  test(`pickDisk: ${row.rule}`, () => {
    const r = pickDisk(row.disks, { systemDisks: row.systemDisks });
    if (row.disk !== undefined) {
      assert.deepEqual(r, { disk: row.disk });
      return;
    }
    assert.ok('error' in r, `expected ${row.code}, got ${JSON.stringify(r)}`);
    assert.ok(r.error instanceof ClientError);
    assert.equal(r.error.code, row.code);
    assert.equal(r.error.message, row.message);
    assert.equal(JSON.parse(JSON.stringify(r.error)).error, row.code);
  });
}

test('pickDisk: refusals carry the disks as data for --json', () => {
  const r = pickDisk([ssd, hdd], { systemDisks: [] });
  assert.ok('error' in r);
  assert.deepEqual(r.error.details.candidates, [
    { path: ssd.path, sizeBytes: ssd.sizeBytes, model: ssd.model },
    { path: hdd.path, sizeBytes: hdd.sizeBytes, model: hdd.model },
  ]);
  const s = pickDisk([plain], { systemDisks: [system(plain, '/')] });
  assert.ok('error' in s);
  assert.deepEqual(s.error.details.systemDisks, [
    { path: plain.path, sizeBytes: plain.sizeBytes, mounts: ['/'] },
  ]);
});

/** The whole disks behind `/`, as lsblk sees them, or why that cannot be asked here. */
function rootDisks(): string[] | string {
  if (!hasCommand('findmnt') || !hasCommand('lsblk')) return 'needs findmnt and lsblk';
  const source = execFileSync('findmnt', ['-nvo', 'SOURCE', '/'], { encoding: 'utf8' }).trim();
  if (!source.startsWith('/dev/')) return `/ is on ${source}, no disk (a netboot system)`;
  return execFileSync('lsblk', ['-s', '-nro', 'NAME,TYPE', source], { encoding: 'utf8' })
    .split('\n')
    .filter((l) => l.endsWith(' disk'))
    .map((l) => `/dev/${l.split(' ')[0]}`);
}

test('systemDiskDevices finds the disk behind / on this machine', async (t) => {
  const expected = rootDisks();
  if (typeof expected === 'string') return t.skip(expected);
  const found = await systemDiskDevices();
  for (const disk of expected) {
    const entry = found.find((s) => s.disk === disk);
    assert.ok(entry, `${disk} missing from ${JSON.stringify(found)}`);
    assert.ok(entry.mounts.includes('/'), JSON.stringify(entry));
  }
});

test('systemDiskDevices follows a loop device to the disk its file is on, and stops at one on tmpfs', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  if (!hasCommand('unshare')) return t.skip('needs unshare for a private mount namespace');
  const expected = rootDisks();
  if (typeof expected === 'string') return t.skip(expected);
  const loops = trackedLoops(t);
  // /boot on a loop device over a file in memory: no disk behind it, so the loop device is the disk.
  const shm = await mkdtemp('/dev/shm/imgcast-test-');
  t.after(() => rm(shm, { recursive: true, force: true }));
  await writeFile(join(shm, 'boot.img'), Buffer.alloc(16 * 1024 * 1024));
  const bootLoop = await loops.attach(join(shm, 'boot.img'));
  // /boot/efi on a loop device over a file on the root disk: that disk holds it.
  const dir = await tempDir(t);
  await writeFile(join(dir, 'efi.img'), Buffer.alloc(16 * 1024 * 1024));
  const efiLoop = await loops.attach(join(dir, 'efi.img'));
  execFileSync('mkfs.ext4', ['-q', bootLoop]);
  execFileSync('mkfs.ext4', ['-q', efiLoop]);

  // Mounted in a mount namespace of their own, so this machine's /boot is never touched.
  const module = fileURLToPath(new URL('../../src/client/pick-disk.ts', import.meta.url));
  const script =
    `mount ${bootLoop} /boot && mkdir -p /boot/efi && mount ${efiLoop} /boot/efi && ` +
    `exec "${process.execPath}" --input-type=module -e ` +
    `'const m = await import(process.argv[1]); console.log(JSON.stringify(await m.systemDiskDevices()))' '${module}'`;
  const r = spawnSync('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script], {
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, r.stderr);
  const found = JSON.parse(r.stdout) as SystemDisk[];
  assert.deepEqual(
    found.find((s) => s.disk === bootLoop),
    { disk: bootLoop, mounts: ['/boot'] },
    r.stdout,
  );
  const root = found.find((s) => s.disk === expected[0]);
  assert.ok(root, r.stdout);
  assert.deepEqual([...root.mounts].sort(), ['/', '/boot/efi'], r.stdout);
  assert.ok(!found.some((s) => s.disk === efiLoop), r.stdout);
});
