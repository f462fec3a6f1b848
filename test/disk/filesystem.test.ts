import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { mountedUses } from '../../src/disk/device.ts';
import { DiskError } from '../../src/disk/errors.ts';
import {
  makeFilesystem,
  openTreeForReading,
  openTreeForWriting,
  readFilesystemInfo,
  withMounted,
} from '../../src/disk/filesystem.ts';
import type { FilesystemInfo } from '../../src/image/types.ts';
import { hasCommand, loopUnavailable, skipUnless, tempDir } from '../helpers/env.ts';
import { trackedLoops } from './loops.ts';

const MiB = 1024 * 1024;

async function sparse(path: string, size: number): Promise<string> {
  await (await open(path, 'w')).close();
  await truncate(path, size);
  return path;
}

test('ext4 and vfat are read and recreated with the same type, label, UUID and geometry', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  const loops = trackedLoops(t);
  const dir = await tempDir(t);
  const cases: Array<[string, string[]]> = [
    [
      'ext4',
      ['mkfs.ext4', '-q', '-L', 'lab root', '-b', '2048', '-I', '512', '-O', '^metadata_csum,^huge_file'],
    ],
    ['ext2', ['mkfs.ext2', '-q', '-L', 'boot']],
    ['vfat', ['mkfs.vfat', '-F', '16', '-n', 'ESP LAB', '-i', '1a2b3c4d']],
  ];
  for (const [name, mkfs] of cases) {
    const a = await sparse(join(dir, `${name}-a.img`), 48 * MiB);
    const b = await sparse(join(dir, `${name}-b.img`), 48 * MiB);
    execFileSync(mkfs[0]!, [...mkfs.slice(1), a], { stdio: 'ignore' });
    const la = await loops.attach(a, { readOnly: true });
    const info = await readFilesystemInfo(la);
    assert.equal(info.type, name);
    if (name === 'vfat') {
      assert.equal(info.uuid, '1A2B-3C4D');
      assert.equal(info.fatBits, 16);
      assert.equal(info.label, 'ESP LAB');
    } else if (name === 'ext4') {
      assert.equal(info.label, 'lab root');
      assert.equal(info.blockSize, 2048);
      assert.equal(info.inodeSize, 512);
      assert.ok(!info.features!.includes('metadata_csum'));
      assert.ok(info.features!.includes('extent'));
    }
    const lb = await loops.attach(b);
    await makeFilesystem(lb, info);
    const again = await readFilesystemInfo(lb);
    const strip = ({ usedBytes: _u, ...rest }: typeof info) => rest;
    assert.deepEqual(strip(again), strip(info), `${name} recreated identically`);
    const marker = randomBytes(16).toString('hex');
    const w = await openTreeForWriting(lb, again);
    await writeFile(join(w.dir, 'marker.txt'), marker);
    // A long name with non-ASCII characters, as Windows and EFI tools write them.
    await mkdir(join(w.dir, 'Treiber Übersicht'));
    await writeFile(join(w.dir, 'Treiber Übersicht', 'Läbor 日本.txt'), 'ü');
    await w.close(true);
    const r = await openTreeForReading(lb, again);
    const seen = await readFile(join(r.dir, 'marker.txt'), 'utf8');
    const unicode = await readFile(join(r.dir, 'Treiber Übersicht', 'Läbor 日本.txt'), 'utf8');
    await r.close(false);
    assert.equal(seen.trim(), marker);
    assert.equal(unicode, 'ü');
    assert.deepEqual(await mountedUses(b), [], 'unmounted afterwards');
    await loops.detach(la);
    await loops.detach(lb);
  }
});

test('mount failure leaves no mount point behind and says why', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  const loops = trackedLoops(t);
  const dir = await tempDir(t);
  const file = await sparse(join(dir, 'blank.img'), 8 * MiB);
  const loop = await loops.attach(file);
  await assert.rejects(
    withMounted(loop, 'ext4', { readOnly: true }, async () => 1),
    (e: unknown) => e instanceof DiskError && e.code === 'E_DISK_COMMAND' && e.message.includes(loop),
  );
  await assert.rejects(
    readFilesystemInfo(loop),
    (e: unknown) => e instanceof DiskError && e.code === 'E_FS_UNSUPPORTED',
  );
});

test('a filesystem imgcast cannot capture or make is named with its article: "an ntfs"', async (t) => {
  const dir = await tempDir(t);
  const file = await sparse(join(dir, 'fs.img'), 8 * MiB);
  await assert.rejects(makeFilesystem(file, { type: 'ntfs' } as unknown as FilesystemInfo), {
    code: 'E_FS_UNSUPPORTED',
    message: `cannot create an ntfs filesystem on ${file}`,
  });
  if (!hasCommand('mkntfs')) return void t.skip('needs mkntfs for the capture half');
  execFileSync('mkntfs', ['-F', '-Q', '-q', file], { stdio: 'ignore' });
  await assert.rejects(readFilesystemInfo(file), (e: unknown) => {
    assert.ok(e instanceof DiskError && e.code === 'E_FS_UNSUPPORTED');
    assert.match(e.message, /holds an ntfs filesystem; only ext2\/3\/4 and vfat/);
    return true;
  });
});

test('write-back errors of a restored filesystem fail its close, naming the full filesystem under it', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  const loops = trackedLoops(t);
  const small = await mkdtemp(join(tmpdir(), 'imgcast-test-tmpfs-'));
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', small]);
  t.after(async () => {
    execFileSync('umount', [small]);
    await rm(small, { recursive: true, force: true });
  });
  const backing = await sparse(join(small, 'fs.img'), 32 * MiB);
  const loop = await loops.attach(backing);
  const info: FilesystemInfo = { type: 'ext4', label: 'full' };
  await makeFilesystem(loop, info);
  // The writes below land in the page cache and succeed; only their write-back to the
  // loop device, whose file cannot grow past 8 MiB, fails.
  const w = await openTreeForWriting(loop, info, { target: loop, what: 'the test filesystem' });
  await writeFile(join(w.dir, 'big.bin'), randomBytes(12 * MiB));
  await assert.rejects(w.close(true), (e: unknown) => {
    assert.ok(e instanceof DiskError, String(e));
    assert.equal(e.code, 'E_DISK_WRITE', e.message);
    assert.match(
      e.message,
      new RegExp(`${loop}: the test filesystem: .*${backing.replaceAll('/', '\\/')}.* is full`),
    );
    return true;
  });
  assert.deepEqual(await mountedUses(loop), [], 'unmounted all the same');
  await assert.rejects(stat(w.dir), { code: 'ENOENT' });
});
