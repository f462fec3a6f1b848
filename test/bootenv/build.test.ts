/**
 * The imaging environment, for real: `imgcast bootenv build` refuses clearly without a mirror,
 * and the environment it builds boots in QEMU (TCG, q35, 512 MiB) on a LAN namespace, gets an
 * address by DHCP, runs `img auto` against a real `imgcast server`, images its blank virtio disk
 * from an automatic session whose rule matches its MAC, and powers off by itself. The disk is
 * then read offline: the image's partition table and files.
 *
 * The environment is built once and cached (cached.ts); a first run spends ~2 minutes on it.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readdir, readFile, rename, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { test } from 'node:test';

import type { HistoryEntry } from '../../src/api/schemas.ts';
import { mountFilesystem } from '../../src/disk/filesystem.ts';
import { mbrExtDisk, sparse, MiB } from '../engine/disk-fixtures.ts';
import { trackedLoops } from '../disk/loops.ts';
import { hasCommand, loopUnavailable, skipUnless, tempDir } from '../helpers/env.ts';
import { Lan, lanUnavailable } from '../boot/lan.ts';
import { bootenvUnavailable, cachedBootenv } from './cached.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const IMGCAST = join(ROOT, 'bin/imgcast.js');

interface Ran {
  code: number | null;
  out: string;
  err: string;
}

function collect(child: ReturnType<typeof spawn>): Promise<Ran> {
  return new Promise((done) => {
    let out = '';
    let err = '';
    child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    child.on('close', (code) => done({ code, out, err }));
  });
}

test('imgcast bootenv build without a Debian mirror: E_BOOTENV_APT saying what to do, and nothing written', async (t) => {
  const dir = await tempDir(t, 'imgcast-bootenv-noapt-');
  const bin = join(dir, 'bin');
  await mkdir(bin);
  // apt-cache as it answers when the sources name no mirror that has the package.
  await writeFile(join(bin, 'apt-cache'), '#!/bin/sh\necho "E: No packages found" >&2\nexit 100\n');
  await chmod(join(bin, 'apt-cache'), 0o755);
  const out = join(dir, 'out');
  const r = await collect(
    spawn(process.execPath, [IMGCAST, 'bootenv', 'build', '--out', out, '--json'], {
      env: { ...process.env, PATH: `${bin}:${process.env.PATH}` },
    }),
  );
  assert.equal(r.code, 1, r.err);
  const e = JSON.parse(r.out) as { error: string; message: string };
  assert.equal(e.error, 'E_BOOTENV_APT');
  assert.match(e.message, /sources\.list.*apt-get update/s);
  assert.match(r.err, /\[E_BOOTENV_APT\]/);
  assert.deepEqual(await readdir(out), [], 'nothing written into the bootenv directory');
  const usage = await collect(
    spawn(process.execPath, [IMGCAST, 'bootenv', 'build', '--out', out, '--data', dir]),
  );
  assert.equal(usage.code, 2);
  assert.match(usage.err, /--data DIR or --out DIR, not both/);
});

test('imgcast bootenv build stopped by SIGTERM while it writes the initramfs: exit 143, no file in the bootenv directory, no scratch folder left', async (t) => {
  if (skipUnless(t, bootenvUnavailable())) return;
  const dir = await tempDir(t, 'imgcast-bootenv-stop-');
  const out = join(dir, 'out');
  const child = spawn(process.execPath, [IMGCAST, 'bootenv', 'build', '--out', out], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.after(() => void child.kill('SIGKILL'));
  const ran = collect(child);
  let err = '';
  await new Promise<void>((res, rej) => {
    child.stderr!.on('data', (d: Buffer) => {
      err += d.toString();
      if (/initramfs: cpio/.test(err)) res();
    });
    child.on('close', () => rej(new Error(`the build ended before writing the initramfs:\n${err}`)));
  });
  // The compressed initramfs is being written into the bootenv directory now.
  await new Promise((r) => setTimeout(r, 3000));
  assert.ok(
    (await readdir(out)).some((f) => f.startsWith('.initrd.img.partial-')),
    'the partial initramfs is there while it is written',
  );
  child.kill('SIGTERM');
  const r = await ran;
  assert.equal(r.code, 143, r.err);
  assert.match(r.err, /SIGTERM: stopping and cleaning up/);
  assert.deepEqual(await readdir(out), [], 'nothing left in the bootenv directory');
  const scratch = (await readdir(tmpdir())).filter((f) => f.startsWith(`imgcast-bootenv-${child.pid}-`));
  assert.deepEqual(scratch, [], 'the scratch folder is gone');
});

test('the environment boots in QEMU, gets an address by DHCP, images its blank disk with img auto from a real server, and powers off', async (t) => {
  if (skipUnless(t, bootenvUnavailable() ?? lanUnavailable() ?? loopUnavailable())) return;
  if (!hasCommand('dnsmasq')) return void t.skip('needs dnsmasq (dnsmasq-base) for the LAN’s DHCP');
  const env = await cachedBootenv((line) => t.diagnostic(`bootenv build: ${line}`));
  t.diagnostic(
    `environment ${env.cached ? 'from the cache' : `built in ${env.buildSeconds} s`}: kernel ${env.info.kernel}, ` +
      `initrd.img ${(env.info.files['initrd.img'].bytes / MiB).toFixed(1)} MiB`,
  );
  assert.ok(env.info.files['initrd.img'].bytes <= 40 * MiB, 'initrd.img is at most 40 MiB');

  const dir = await tempDir(t, 'imgcast-bootenv-vm-');
  const fixtureDir = join(dir, 'fixture');
  await mkdir(fixtureDir);
  const fixture = await mbrExtDisk(fixtureDir, { dataBytes: 4 * MiB });
  const images = join(dir, 'images');
  await mkdir(images);
  await rename(fixture.image, join(images, 'lab.imgc'));

  const lan = Lan.create();
  t.after(() => lan.close());
  lan.startDhcp();
  const serverAddr = lan.address(1);
  const port = 20000 + Math.floor(Math.random() * 10000);
  const data = join(dir, 'data');
  const server = lan.exec(process.execPath, [
    IMGCAST,
    'server',
    '--data',
    data,
    '--images',
    images,
    '--listen',
    `${serverAddr}:${port}`,
    '--interface',
    serverAddr,
    '--discovery',
    'off',
  ]);
  let serverLog = '';
  server.stderr!.on('data', (d: Buffer) => (serverLog = (serverLog + d.toString()).slice(-20_000)));
  server.stdout!.on('data', (d: Buffer) => (serverLog = (serverLog + d.toString()).slice(-20_000)));
  const imgcast = (...args: string[]) =>
    collect(lan.exec(process.execPath, [IMGCAST, ...args, '-i', `${serverAddr}:${port}`, '--data', data]));
  for (let i = 0; ; i++) {
    if ((await imgcast('session', 'list')).code === 0) break;
    if (i > 100) assert.fail(`the server did not answer:\n${serverLog}`);
    await new Promise((r) => setTimeout(r, 200));
  }

  const mac = `52:54:00:${randomBytes(3).toString('hex').match(/../g)!.join(':')}`;
  let r = await imgcast('session', 'add', 'bootenv', '--image', 'lab.imgc', '-c', '1', '-t', '1');
  assert.equal(r.code, 0, r.err);
  r = await imgcast('session', 'rule', 'add', 'bootenv', `mac = ${mac}`);
  assert.equal(r.code, 0, r.err);

  const disk = await sparse(join(dir, 'ws1.img'), 128 * MiB);
  const logFile = join(dir, 'ws1-console.log');
  const vm = await lan.startVm({
    name: 'ws1',
    firmware: 'bios',
    mac,
    disk,
    kernel: env.kernel,
    initrd: env.initrd,
    append: `console=ttyS0 imgcast.server=http://${serverAddr}:${port} imgcast.done=poweroff imgcast.onfail=poweroff`,
    memoryMiB: 512,
    logFile,
  });
  t.after(() => vm.kill());
  const running = await vm.waitFor(/imgcast: running: img auto --server \S+/, 180_000);
  let timer: NodeJS.Timeout | undefined;
  const ended = await Promise.race([
    vm.exit,
    new Promise<never>((_r, reject) => {
      timer = setTimeout(
        () => reject(new Error(`ws1 still running after 10 minutes:\n${vm.console().slice(-4000)}`)),
        600_000,
      );
    }),
  ]).finally(() => clearTimeout(timer));
  const console = vm.console();
  t.diagnostic(
    `console: ${console
      .split('\n')
      .filter((l) => /^imgcast: |^img: |^session /.test(l))
      .join(' | ')}`,
  );
  const sinceKernel = /running: img .* \((\d+(?:\.\d+)?) s after the kernel started\)/.exec(console)?.[1];
  t.diagnostic(
    `QEMU start to img running: ${running.seconds} s (${sinceKernel} s of it after the kernel started); to power-off: ${ended.seconds} s`,
  );
  assert.equal(ended.code, 0, `QEMU ended ${ended.signal ?? `with ${ended.code}`}:\n${console.slice(-4000)}`);
  assert.match(console, /imgcast: address eth0 198\.18\.1\.\d+\/24/);
  assert.match(
    console,
    /session bootenv: lab\.imgc \(file set 1\) written to \/dev\/vda and verified/,
    console.slice(-4000),
  );
  assert.match(console, /imgcast: powering off/);

  r = await imgcast('history', '--json');
  assert.equal(r.code, 0, r.err);
  const [h] = JSON.parse(r.out) as HistoryEntry[];
  assert.deepEqual(
    [h?.session, h?.state, h?.clients.map((c) => c.state)],
    ['bootenv', 'done', ['ok']],
    JSON.stringify(h),
  );

  // The disk, offline: the image's partition table and files.
  const dump = (file: string) =>
    execFileSync('sfdisk', ['--dump', file], { encoding: 'utf8' })
      .split('\n')
      .filter((l) => /^\S+ : start=/.test(l))
      .map((l) => l.replace(/^\S+ :/, ''));
  // The image's table, its last partition grown to the end of the larger disk (img's restore fit).
  const [written, made] = [dump(disk), dump(fixture.disk)];
  assert.equal(written.length, 2, written.join('\n'));
  assert.equal(written[0], made[0], 'partition 1 as in the image');
  const size = (l: string) => Number(/size=\s*(\d+)/.exec(l)![1]);
  assert.equal(
    written[1]!.replace(/size=\s*\d+/, ''),
    made[1]!.replace(/size=\s*\d+/, ''),
    'partition 2 starts as in the image',
  );
  assert.ok(
    size(written[1]!) >= size(made[1]!),
    `partition 2 at least as large as in the image: ${written[1]}`,
  );
  const loops = trackedLoops(t);
  const p1 = fixture.parts[0]!;
  const dev = await loops.attach(disk, { offset: p1.start, size: p1.size, readOnly: true });
  const m = await mountFilesystem(dev, 'ext4', { readOnly: true });
  try {
    for (const f of ['big.bin', 'etc/hostname', 'etc/f7.conf'])
      assert.deepEqual(await readFile(join(m.dir, f)), await readFile(join(fixtureDir, 'tree1', f)), f);
  } finally {
    await m.unmount();
  }
});
