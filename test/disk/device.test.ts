import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtemp, open, rm, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { test } from 'node:test';
import {
  assertNotMounted,
  blkidProbe,
  detachLoopVerified,
  deviceSize,
  loopRange,
  loopStillOver,
  mountedUses,
  sectorSizeOf,
} from '../../src/disk/device.ts';
import { DiskError } from '../../src/disk/errors.ts';
import {} from '../../src/disk/filesystem.ts';
import { loopUnavailable, skipUnless, tempDir } from '../helpers/env.ts';
import { trackedLoops } from './loops.ts';

const MiB = 1024 * 1024;

async function sparse(path: string, size: number): Promise<string> {
  await (await open(path, 'w')).close();
  await truncate(path, size);
  return path;
}

test('a path that cannot be looked at is named, with the reason in words and the errno', async (t) => {
  const dir = await tempDir(t);
  await assert.rejects(deviceSize(join(dir, 'none.img')), {
    code: 'E_DISK_IO',
    message: `cannot access ${join(dir, 'none.img')}: no such file or directory (ENOENT)`,
  });
});

test('loop device over a byte range: size, sector size, read-only, blkid of the range', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  const loops = trackedLoops(t);
  const dir = await tempDir(t);
  const file = await sparse(join(dir, 'disk.img'), 64 * MiB);
  execFileSync('mkfs.ext4', [
    '-q',
    '-E',
    'offset=' + 8 * MiB,
    '-L',
    'ranged',
    file,
    String((16 * MiB) / 1024),
  ]);
  const probe = await blkidProbe(file, { offset: 8 * MiB, size: 16 * MiB });
  assert.equal(probe.TYPE, 'ext4');
  assert.equal(probe.LABEL, 'ranged');
  assert.deepEqual(await blkidProbe(file, { offset: 40 * MiB, size: 8 * MiB }), {});

  const loop = await loops.attach(file, { offset: 8 * MiB, size: 16 * MiB, readOnly: true });
  assert.match(loop, /^\/dev\/loop\d+$/);
  assert.equal(await deviceSize(loop), 16 * MiB);
  assert.equal(await sectorSizeOf(loop), 512);
  assert.equal((await blkidProbe(loop)).TYPE, 'ext4');
  assert.equal(
    execFileSync('blockdev', ['--getro', loop], { encoding: 'utf8' }).trim(),
    '1',
    'read-only loop',
  );
  await loops.detach(loop);
  assert.deepEqual(await mountedUses(file), []);
});

test('mounted detection follows loop devices over a file and refuses with the mount point', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  const loops = trackedLoops(t);
  const dir = await tempDir(t);
  const file = await sparse(join(dir, 'fs.img'), 32 * MiB);
  execFileSync('mkfs.ext4', ['-q', file]);
  const loop = await loops.attach(file);
  const mnt = await mkdtemp(join(tmpdir(), 'imgcast-dev-test-'));
  execFileSync('mount', ['-o', 'ro', loop, mnt]);
  t.after(async () => {
    execFileSync('umount', [mnt], { stdio: 'ignore' });
    await rm(mnt, { recursive: true, force: true });
  });
  const uses = await mountedUses(file);
  assert.deepEqual(uses, [{ device: loop, mountPoint: mnt, readOnly: true }]);
  assert.deepEqual(await mountedUses(loop), uses);
  await assert.rejects(assertNotMounted(file, 'restore target'), (e: unknown) => {
    assert.ok(e instanceof DiskError);
    assert.equal(e.code, 'E_DISK_MOUNTED');
    assert.ok(e.message.includes(`${loop} on ${mnt} (ro)`), e.message);
    return true;
  });
});

test('a detached loop device attached again by another process to its own file is no longer ours', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  const loops = trackedLoops(t);
  const dir = await tempDir(t);
  const ours = await sparse(join(dir, 'ours.img'), 8 * MiB);
  const theirs = await sparse(join(dir, 'theirs.img'), 8 * MiB);
  const loop = await loops.attach(ours, { offset: MiB });
  const was = await loopRange(basename(loop));
  assert.deepEqual(was && { file: was.backingFile, offset: was.offset }, { file: ours, offset: MiB });
  assert.equal(await loopStillOver(loop, was), true);
  // The same device number, given by the kernel to another client for its own disk.
  execFileSync('losetup', ['-d', loop]);
  assert.equal(await loopStillOver(loop, was), false, 'detached');
  execFileSync('losetup', [loop, theirs]);
  assert.equal(await loopStillOver(loop, was), false, 'attached, but over another file');
  execFileSync('losetup', ['-d', loop]);
  execFileSync('losetup', ['--offset', String(MiB), loop, ours]);
  assert.equal(await loopStillOver(loop, was), true, 'over our file again');
});

test('a loop device still held over our file after detaching is refused as still in use', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  const loops = trackedLoops(t);
  const dir = await tempDir(t);
  const loop = await loops.attach(await sparse(join(dir, 'held.img'), 8 * MiB));
  const holder = spawn('sh', ['-c', `exec 3<${loop}; echo held; exec sleep 30`], {
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  const exited = new Promise((r) => holder.once('exit', r));
  t.after(async () => {
    holder.kill('SIGKILL');
    await exited;
  });
  await new Promise<void>((resolve) => holder.stdout.once('data', () => resolve()));
  await assert.rejects(detachLoopVerified(loop), { code: 'E_DISK_MOUNTED' });
});
