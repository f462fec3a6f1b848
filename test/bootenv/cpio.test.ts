/** The newc cpio writer (src/bootenv/cpio.ts), checked against busybox's cpio, a real reader. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdir, readFile, readlink, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { finished } from 'node:stream/promises';
import { test } from 'node:test';

import { CpioWriter, newcHeader } from '../../src/bootenv/cpio.ts';
import { hasCommand, tempDir } from '../helpers/env.ts';

test('newcHeader: 110 ASCII bytes of magic and hex fields, the name with its NUL, padded to 4', () => {
  const h = newcHeader({ ino: 1, mode: 0o100644, nlink: 1, mtime: 0, size: 5, name: 'init' });
  assert.equal(h.length, 116); // 110 + "init\0" = 115, padded to 116
  const text = h.toString('latin1');
  assert.equal(text.slice(0, 6), '070701');
  assert.equal(text.slice(6, 14), '00000001');
  assert.equal(text.slice(14, 22), (0o100644).toString(16).padStart(8, '0'));
  assert.equal(text.slice(54, 62), '00000005'); // filesize
  assert.equal(text.slice(94, 102), '00000005'); // namesize, with the NUL
  assert.equal(text.slice(110, 115), 'init\0');
  assert.throws(() => newcHeader({ ino: -1, mode: 0, nlink: 1, mtime: 0, size: 0, name: 'x' }), RangeError);
});

test('an archive of directories, files of every padding, a symlink and a device node unpacks with busybox cpio as written', async (t) => {
  if (!hasCommand('busybox')) return void t.skip('needs busybox (its cpio reads the archive back)');
  const dir = await tempDir(t, 'imgcast-cpio-');
  const src = join(dir, 'big.bin');
  const big = Buffer.alloc(200_003, 7);
  await writeFile(src, big);
  const archive = join(dir, 'a.cpio');
  const out = createWriteStream(archive);
  const w = new CpioWriter(out);
  await w.add({ kind: 'dir', name: 'usr', mode: 0o755 });
  await w.add({ kind: 'dir', name: 'usr/bin', mode: 0o755 });
  for (let n = 0; n < 5; n++)
    await w.add({ kind: 'file', name: `usr/f${n}`, mode: 0o644, size: n, source: Buffer.alloc(n, 65 + n) });
  await w.add({ kind: 'file', name: 'usr/bin/big', mode: 0o755, size: big.length, source: src });
  await w.add({ kind: 'symlink', name: 'bin', target: 'usr/bin' });
  await w.add({ kind: 'char', name: 'console', mode: 0o600, major: 5, minor: 1 });
  await w.finish();
  out.end();
  await finished(out);
  assert.equal((await stat(archive)).size, w.bytes);
  assert.equal(w.bytes % 4, 0);

  const x = join(dir, 'x');
  await mkdir(x);
  const r = spawnSync('busybox', ['cpio', '-i', '-d', '-m', '-F', archive], { cwd: x, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  for (let n = 0; n < 5; n++) assert.deepEqual(await readFile(join(x, `usr/f${n}`)), Buffer.alloc(n, 65 + n));
  assert.deepEqual(await readFile(join(x, 'usr/bin/big')), big);
  assert.equal((await stat(join(x, 'usr/bin/big'))).mode & 0o777, 0o755);
  assert.equal(await readlink(join(x, 'bin')), 'usr/bin');
  const dev = await stat(join(x, 'console'));
  assert.ok(dev.isCharacterDevice());
  assert.equal(dev.rdev, (5 << 8) | 1);
});

test('a file that changed size after it was listed is an error, not a corrupt archive', async (t) => {
  const dir = await tempDir(t, 'imgcast-cpio-');
  await writeFile(join(dir, 'f'), 'abc');
  const out = createWriteStream(join(dir, 'a.cpio'));
  const w = new CpioWriter(out);
  await assert.rejects(
    w.add({ kind: 'file', name: 'f', mode: 0o644, size: 10, source: join(dir, 'f') }),
    /3 bytes read where 10 were announced/,
  );
  out.destroy();
});
