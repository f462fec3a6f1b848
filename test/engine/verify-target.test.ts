import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, open, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { attachLoop, detachLoop } from '../../src/disk/device.ts';
import { DiskError } from '../../src/disk/errors.ts';
import { mountFilesystem } from '../../src/disk/filesystem.ts';
import { makeImage } from '../../src/engine/make.ts';
import { restoreImage } from '../../src/engine/restore.ts';
import { verifyRestoredImage } from '../../src/engine/verify-target.ts';
import { hasCommand, loopUnavailable, skipUnless, tempDir } from '../helpers/env.ts';
import { MiB, mbrExtDisk, sparse } from './disk-fixtures.ts';

async function writeAt(path: string, position: number, data: Buffer): Promise<void> {
  const fh = await open(path, 'r+');
  await fh.write(data, 0, data.length, position);
  await fh.close();
}

function rejectsWith(pattern: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof DiskError, String(e));
    assert.equal(e.code, 'E_DISK_VERIFY', e.message);
    assert.match(e.message, pattern);
    return true;
  };
}

test('--verify-after reads a restored disk back: a clean restore passes, a changed byte anywhere is named', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  if (!hasCommand('sfdisk')) return void t.skip('needs sfdisk');
  const dir = await tempDir(t);
  const { image, parts } = await mbrExtDisk(dir, { dataBytes: 6 * MiB });
  const target = await sparse(join(dir, 'target.img'), 64 * MiB);
  await restoreImage(image, target, { fileset: 1 });

  const report = await verifyRestoredImage(image, target, { fileset: 1 });
  assert.ok(report.entries >= 40, `${report.entries} entries`);
  assert.ok(report.fileBytes >= 6 * MiB, `${report.fileBytes} file bytes`);
  // The boot area less the MBR's partition entries: partition 2 grew to the end of the disk,
  // and the table is compared as the layout the restore fitted.
  assert.ok(report.rawBytes >= MiB - 64, `${report.rawBytes} raw bytes (the boot area)`);

  // A stray byte in the boot area, where the image has zeros.
  await writeAt(target, 600_000, Buffer.from([0xff]));
  await assert.rejects(
    verifyRestoredImage(image, target, { fileset: 1 }),
    rejectsWith(/boot area 1: byte 600000 is not zero/),
  );
  await writeAt(target, 600_000, Buffer.from([0]));

  // A file whose content changed on the disk, its time put back so that only the content tells.
  const loop = await attachLoop(target, { offset: parts[0]!.start, size: parts[0]!.size });
  try {
    const m = await mountFilesystem(loop, 'ext4', { readOnly: false });
    try {
      // Every byte flipped, so the first difference is where the write began whatever the
      // random content was (a fixed text matched it by chance once in 256 runs).
      const fh = await open(join(m.dir, 'big.bin'), 'r+');
      const was = Buffer.alloc(7);
      await fh.read(was, 0, 7, 3 * MiB + 5);
      await fh.write(
        was.map((b) => b ^ 0xff),
        0,
        7,
        3 * MiB + 5,
      );
      await fh.close();
      await utimes(join(m.dir, 'big.bin'), new Date(), new Date(0));
      await chmod(join(m.dir, 'etc/hostname'), 0o600);
      await rm(join(m.dir, 'etc/f3.conf'));
    } finally {
      await m.unmount();
    }
  } finally {
    await detachLoop(loop);
  }
  await assert.rejects(verifyRestoredImage(image, target, { fileset: 1 }), (e: unknown) => {
    rejectsWith(/differs from the image in \d+ places/)(e);
    const diffs = (e as DiskError).details.differences as string[];
    const has = (re: RegExp) =>
      assert.ok(
        diffs.some((d) => re.test(d)),
        `${re}: ${diffs.join('\n')}`,
      );
    has(/^partition 1 \(ext4\): big\.bin: byte 3145733 differs from the image/);
    has(/^partition 1 \(ext4\): big\.bin: modified 0 ns/);
    has(/^partition 1 \(ext4\): etc\/hostname: mode 600, the image says 644/);
    has(/^partition 1 \(ext4\): etc\/f3\.conf: missing/);
    return true;
  });
});

test('--verify-after on a folder: type, content, links and metadata of every entry', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(join(src, 'sub'), { recursive: true });
  await writeFile(join(src, 'sub/data.bin'), randomBytes(5 * MiB + 3));
  for (let i = 0; i < 30; i++) await writeFile(join(src, 'sub', `small-${i}`), `small ${i}\n`);
  await symlink('sub/data.bin', join(src, 'link'));
  const image = join(dir, 'tree.imgc');
  await makeImage(src, image, { level: 'speed' });
  const out = join(dir, 'out');
  await restoreImage(image, out, { fileset: 1 });
  const ok = await verifyRestoredImage(image, out, { fileset: 1 });
  assert.equal(
    ok.fileBytes,
    5 * MiB + 3 + [...Array(30).keys()].reduce((n, i) => n + `small ${i}\n`.length, 0),
  );

  // A packed small file changed at the same length: only its bytes, compared with its chunk's, tell.
  await writeFile(join(out, 'sub/small-7'), 'SMALL 7\n');
  await utimes(join(out, 'sub/small-7'), new Date(), new Date(0));
  await rm(join(out, 'link'));
  await writeFile(join(out, 'link'), 'not a link');
  await assert.rejects(verifyRestoredImage(image, out, { fileset: 1 }), (e: unknown) => {
    rejectsWith(/differ/)(e);
    const diffs = ((e as DiskError).details.differences as string[]).join('\n');
    assert.match(diffs, /sub\/small-7: byte 0 differs from the image/);
    assert.match(diffs, /link: is a file, the image has a symlink/);
    return true;
  });
});

test('img restore --verify-after says what it read back', async (t) => {
  if (!hasCommand('sfdisk')) return void t.skip('needs sfdisk');
  const dir = await tempDir(t);
  const disk = await sparse(join(dir, 'raw-disk.img'), 8 * MiB);
  execFileSync('sfdisk', ['-q', disk], { input: 'label: dos\nstart=2048, size=4MiB, type=83\n' });
  await writeAt(disk, 2 * MiB, randomBytes(200_000));
  const image = join(dir, 'raw.imgc');
  await makeImage(disk, image, { level: 'speed' });
  const img = new URL('../../src/cli/img.ts', import.meta.url).pathname;
  const out = execFileSync(
    process.execPath,
    [img, 'restore', image, join(dir, 'copy.img'), '--create', '--verify-after', '--json'],
    { encoding: 'utf8' },
  );
  const r = JSON.parse(out) as { readBack: { rawBytes: number } };
  // The boot area and the raw partition, every byte: stored runs by hash, the rest as zeros.
  assert.equal(r.readBack.rawBytes, MiB + 4 * MiB);
  const text = execFileSync(
    process.execPath,
    [img, 'restore', image, join(dir, 'copy.img'), '--force', '--verify-after'],
    {
      encoding: 'utf8',
    },
  );
  assert.match(text, /read back from .*copy\.img and compared with the image: .* all as the image says/);
});
