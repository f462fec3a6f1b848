/**
 * Live masters: a folder or a whole disk captured and multicast as it is read (live.ts), on
 * loopback multicast, restored by receivers as it streams (live-restore.ts), and checked as
 * any restore: verify-target.ts against the final manifest, the partition table byte for
 * byte, fsck, the trees compared entry by entry. The master writes no image file.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { statfsSync } from 'node:fs';
import {
  link,
  mkdir,
  mkdtemp,
  open,
  readdir,
  readFile,
  rm,
  symlink,
  truncate,
  utimes,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { liveDiskProvider, type LiveDiskProvider } from '../../src/engine/live.ts';
import { imageDecoder, restoreConsumer } from '../../src/engine/multicast.ts';
import { verifyRestored } from '../../src/engine/verify-target.ts';
import { decodeChunk } from '../../src/image/codec.ts';
import type { ChunkSource, Manifest } from '../../src/image/types.ts';
import { mountFilesystem, releaseDeadRuns } from '../../src/disk/filesystem.ts';
import {
  runReceiver,
  runSender,
  type ChunkConsumer,
  type ChunkInfo,
  type LiveFollower,
} from '../../src/transport/index.ts';
import type { ReceiverResult, SenderResult } from '../../src/transport/types.ts';
import { hasCommand, loopUnavailable, skipUnless, tempDir } from '../helpers/env.ts';
import { trackedLoops } from '../disk/loops.ts';
import { compareTrees, countTypes } from './tree-compare.ts';

const MiB = 1024 * 1024;
const SECTOR = 512;

function endpoint(): { port: number; group: string } {
  return {
    port: 20000 + 2 * Math.floor(Math.random() * 6000),
    group: `239.253.${1 + Math.floor(Math.random() * 250)}.${1 + Math.floor(Math.random() * 250)}`,
  };
}

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, {
    encoding: 'utf8',
    env: { ...process.env, MTOOLS_SKIP_CHECK: '1' },
    stdio: 'pipe',
  });
}

/**
 * Every chunk the sender reads, decoded, and the final manifest: what verify-target.ts needs
 * to read a restored target back (the test's own copy; the master keeps none).
 */
function tap(provider: LiveDiskProvider): { source: ChunkSource; manifest: () => Manifest } {
  const info = new Map<string, ChunkInfo>();
  const raw = new Map<string, Buffer>();
  let manifest: Manifest | undefined;
  const follow = provider.live.follow.bind(provider.live);
  provider.live.follow = (f: LiveFollower) =>
    follow({
      ...f,
      append: (ext) => {
        for (const c of ext.chunks) info.set(c.id, c);
        f.append(ext);
      },
      seal: (meta) => {
        manifest = (meta as { manifest: Manifest }).manifest;
        f.seal(meta);
      },
    });
  const read = provider.readStored.bind(provider);
  provider.readStored = async (id, into) => {
    const stored = await read(id, into);
    const c = info.get(id)!;
    if (!raw.has(id)) raw.set(id, Buffer.from(decodeChunk(id, c.codec, stored, c.rawLength)));
    return stored;
  };
  return {
    source: {
      async readChunk(id) {
        const b = raw.get(id);
        if (!b) throw new Error(`the sender never read chunk ${id}`);
        return b;
      },
    },
    manifest: () => manifest!,
  };
}

interface LiveRun {
  sender: SenderResult;
  receivers: ReceiverResult[];
  tapped: ReturnType<typeof tap>;
  provider: LiveDiskProvider;
}

/** A live session from `source` to `targets` on loopback, receivers in this process. */
async function liveSession(
  source: string,
  targets: string[],
  opts: { level?: 'none' | 'speed' | 'balanced' | 'size'; memoryBytes?: number; loss?: number } = {},
): Promise<LiveRun> {
  const ep = endpoint();
  const provider = await liveDiskProvider(source, {
    level: opts.level ?? 'speed',
    ...(opts.memoryBytes ? { memoryBytes: opts.memoryBytes } : {}),
  });
  const tapped = tap(provider);
  const [sender, ...receivers] = await Promise.all([
    runSender(provider, { interface: '127.0.0.1', ...ep, clients: targets.length, waitSeconds: 60 }),
    ...targets.map((to, i) =>
      runReceiver({
        from: `127.0.0.1:${ep.port}`,
        interface: '127.0.0.1',
        name: `pc${i}`,
        decode: imageDecoder,
        ...(opts.loss ? { simulateLoss: opts.loss } : {}),
        makeConsumer: (session) => restoreConsumer(session, to, { force: true }),
      }),
    ),
  ]);
  return { sender, receivers, tapped, provider };
}

/** A folder with every kind of entry a system tree has, many small files among them. */
async function fillTree(root: string): Promise<void> {
  await mkdir(join(root, 'etc/ssh'), { recursive: true });
  await writeFile(join(root, 'etc/hostname'), 'lab-ref\n');
  await writeFile(join(root, 'etc/ssh/key'), randomBytes(3000), { mode: 0o600 });
  sh('chown', ['1234:5678', join(root, 'etc/ssh/key')]);
  await writeFile(join(root, 'big.bin'), randomBytes(9 * MiB + 12345));
  await link(join(root, 'big.bin'), join(root, 'etc/big-hardlink'));
  await writeFile(join(root, 'copy-of-big.bin'), await readFile(join(root, 'big.bin')));
  await symlink('../big.bin', join(root, 'etc/big-link'));
  await symlink('/nonexistent/target', join(root, 'dangling'));
  sh('setfattr', ['-n', 'user.lab', '-v', 'room-101', join(root, 'etc/hostname')]);
  sh('setfattr', ['-n', 'trusted.secret', '-v', '0x00ff10', join(root, 'big.bin')]);
  sh('mkfifo', [join(root, 'fifo')]);
  sh('mknod', [join(root, 'null'), 'c', '1', '3']);
  await writeFile(join(root, 'suid'), '#!/bin/sh\n', { mode: 0o4755 });
  // Sparse: 1 MiB of data in the middle of 64 MiB.
  const fh = await open(join(root, 'sparse.img'), 'w');
  await fh.write(randomBytes(MiB), 0, MiB, 32 * MiB);
  await fh.truncate(64 * MiB);
  await fh.close();
  // Many small files (packed several to a chunk), some repeated, some hard-linked across packs.
  for (let d = 0; d < 20; d++) {
    await mkdir(join(root, `usr/share/pkg${d}`), { recursive: true });
    for (let f = 0; f < 100; f++) {
      const body =
        f % 10 === 0 ? 'same license text\n'.repeat(40) : randomBytes(200 + ((d * 131 + f * 17) % 9000));
      await writeFile(join(root, `usr/share/pkg${d}/f${f}.txt`), body);
    }
  }
  await link(join(root, 'usr/share/pkg0/f1.txt'), join(root, 'usr/share/pkg19/link-to-pkg0-f1'));
  await writeFile(join(root, 'empty'), '');
  await utimes(
    join(root, 'etc/hostname'),
    new Date('2001-02-03T04:05:06Z'),
    new Date('2001-02-03T04:05:06.123Z'),
  );
}

test('a folder streamed live to two folders: trees identical, verified against the final manifest', async (t) => {
  if (skipUnless(t, hasCommand('setfattr') ? undefined : 'needs setfattr')) return;
  if (skipUnless(t, process.getuid?.() === 0 ? undefined : 'needs root (owners, device nodes)')) return;
  const dir = await tempDir(t, 'imgcast-live-');
  const src = join(dir, 'src');
  await mkdir(src);
  await fillTree(src);
  const targets = [join(dir, 'a'), join(dir, 'b')];
  const run = await liveSession(src, targets, { loss: 0.02 });
  assert.equal(run.sender.ok, true, JSON.stringify(run.sender.receivers.map((r) => [r.name, r.reason])));
  for (const r of run.receivers) assert.equal(r.ok, true, `${r.name}: ${r.code} ${r.message}`);
  const manifest = run.tapped.manifest();
  for (const to of targets) {
    assert.deepEqual(await compareTrees(src, to, { ignoreRoot: true }), []);
    const report = await verifyRestored(manifest, run.tapped.source, to, { fileset: 1 });
    assert.ok(report.entries > 2000, `verified ${report.entries} entries`);
  }
  const { stats } = run.provider;
  assert.ok(stats.deduplicated > 0, 'the copy of big.bin and the repeated small files were deduplicated');
  t.diagnostic(
    `${run.sender.chunks} chunks, ${stats.rawBytes} raw / ${stats.storedBytes} stored bytes, ${stats.deduplicated} dedup hits, peak held ${stats.peakHeldBytes}; ${run.sender.durationMs} ms`,
  );
});

const IMGCAST = new URL('../../src/cli/imgcast.ts', import.meta.url).pathname;
const DISK = 256 * MiB;
const P1 = { start: 2048 * SECTOR, size: 32 * MiB };
const P2 = { start: P1.start + P1.size, size: 160 * MiB };

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

async function sparseFile(path: string, size: number): Promise<string> {
  await (await open(path, 'w')).close();
  await truncate(path, size);
  return path;
}

/**
 * The reference workstation disk: GPT, a vfat ESP, an ext4 root holding a real tree (with
 * hard links, symlinks, a sparse file, xattrs, device nodes and thousands of small files)
 * and an unformatted partition, boot code in the MBR and a boot loader in the gap.
 */
async function referenceDisk(
  t: TestContext,
  dir: string,
): Promise<{ disk: string; p3: { start: number; size: number } }> {
  const loops = trackedLoops(t);
  const disk = await sparseFile(join(dir, 'ref.img'), DISK);
  sh('sgdisk', [
    `-n1:${P1.start / SECTOR}:+32M`,
    '-t1:ef00',
    '-c1:EFI system',
    '-n2:0:+160M',
    '-t2:8300',
    '-c2:root',
    '-n3:0:0',
    '-t3:8300',
    '-c3:data',
    disk,
  ]);
  const info = sh('sgdisk', ['-i', '3', disk]);
  const first3 = Number(/First sector: (\d+)/.exec(info)![1]);
  const last3 = Number(/Last sector: (\d+)/.exec(info)![1]);
  const p3 = { start: first3 * SECTOR, size: (last3 - first3 + 1) * SECTOR };
  await writeRange(disk, 0, randomBytes(440));
  await writeRange(disk, 40 * SECTOR, randomBytes(200 * 1024));

  const esp = await loops.attach(disk, { offset: P1.start, size: P1.size });
  sh('mkfs.vfat', ['-F', '16', '-n', 'LABESP', '-i', '5eed1234', esp]);
  const espFiles = join(dir, 'esp-files');
  await mkdir(join(espFiles, 'EFI/BOOT'), { recursive: true });
  await writeFile(join(espFiles, 'EFI/BOOT/BOOTX64.EFI'), randomBytes(700 * 1024));
  await writeFile(join(espFiles, 'EFI/BOOT/grub.cfg'), 'set root=(hd0,gpt2)\n');
  await writeFile(join(espFiles, 'startup.nsh'), 'fs0:\\EFI\\BOOT\\BOOTX64.EFI\n');
  sh('mcopy', ['-s', '-m', '-i', esp, join(espFiles, 'EFI'), join(espFiles, 'startup.nsh'), '::/']);
  await loops.detach(esp);

  const rootDev = await loops.attach(disk, { offset: P2.start, size: P2.size });
  sh('mkfs.ext4', ['-q', '-L', 'labroot', rootDev]);
  const m = await mountFilesystem(rootDev, 'ext4', { readOnly: false });
  try {
    await fillTree(m.dir);
    // Real files too: documentation of a few packages of this system.
    const docs = sh('sh', ['-c', 'ls -d /usr/share/doc/[a-c]* | head -40']).trim().split('\n');
    sh('cp', ['-a', ...docs, m.dir]);
  } finally {
    await m.unmount();
  }
  await loops.detach(rootDev);

  await writeRange(disk, p3.start + MiB, randomBytes(3 * MiB));
  await writeRange(disk, p3.start + 20 * MiB, Buffer.alloc(2 * MiB, 0xff));
  await writeRange(disk, p3.start + p3.size - SECTOR, randomBytes(SECTOR));
  return { disk, p3 };
}

/** Chunks and the final manifest as a receiver got them (each chunk checked against its SHA-256 id). */
function received() {
  const chunks = new Map<string, Buffer>();
  let manifest: Manifest | undefined;
  return {
    source: {
      async readChunk(id: string) {
        const b = chunks.get(id);
        if (!b) throw new Error(`chunk ${id} never arrived`);
        return b;
      },
    } as ChunkSource,
    manifest: () => manifest!,
    wrap(c: ChunkConsumer): ChunkConsumer {
      return {
        ...c,
        has: (id) => c.has(id),
        prepare: (s) => c.prepare(s),
        extend: (e) => c.extend!(e),
        async apply(id, raw) {
          if (!chunks.has(id)) chunks.set(id, Buffer.from(raw));
          await c.apply(id, raw);
        },
        async seal(meta) {
          manifest = (meta as { manifest: Manifest }).manifest;
          await c.seal!(meta);
        },
        finish: () => c.finish(),
        abort: (r) => c.abort(r),
      };
    },
  };
}

/** A tmpfs for the master's working folder and TMPDIR: what it writes there can be measured. */
async function masterScratch(t: TestContext): Promise<string> {
  const scratch = await mkdtemp(join(tmpdir(), 'imgcast-live-master-'));
  sh('mount', ['-t', 'tmpfs', '-o', 'size=128m', 'tmpfs', scratch]);
  t.after(async () => {
    spawnSync('umount', [scratch]);
    await rm(scratch, { recursive: true, force: true });
  });
  return scratch;
}

function startMaster(
  source: string,
  scratch: string,
  ep: { port: number; group: string },
  extra: string[] = [],
) {
  const child = spawn(
    process.execPath,
    [
      IMGCAST,
      'send',
      '--live',
      source,
      '--level',
      'speed',
      '--interface',
      '127.0.0.1',
      '--group',
      ep.group,
      '--port',
      String(ep.port),
      '--json',
      ...extra,
    ],
    { cwd: scratch, env: { ...process.env, TMPDIR: scratch }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-8000)));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('close', (code, signal) => resolve({ code, signal })),
  );
  return { child, exited, out: () => out, err: () => err };
}

/** Bytes used on the filesystem holding `path`. */
function usedBytes(path: string): number {
  const s = statfsSync(path);
  return (s.blocks - s.bfree) * s.bsize;
}

test('a GPT disk streamed live from a loop device to two loop disks: tables byte-identical, fsck clean, trees identical, verified; no image written', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  for (const c of ['mcopy', 'setfattr', 'fsck.vfat', 'fsck.ext4', 'sgdisk']) {
    if (!hasCommand(c)) return void t.skip(`needs ${c}`);
  }
  const dir = await tempDir(t, 'imgcast-live-disk-');
  const loops = trackedLoops(t);
  const { disk, p3 } = await referenceDisk(t, dir);
  const source = await loops.attach(disk, { readOnly: true });
  const targets: string[] = [];
  for (const name of ['pc1.img', 'pc2.img'])
    targets.push(await loops.attach(await sparseFile(join(dir, name), DISK)));

  const scratch = await masterScratch(t);
  const before = usedBytes(scratch);
  let peak = 0;
  const sampler = setInterval(() => (peak = Math.max(peak, usedBytes(scratch) - before)), 20);
  const ep = endpoint();
  const master = startMaster(source, scratch, ep, ['--clients', '2', '--wait', '30']);
  const taps = targets.map(() => received());
  const t0 = Date.now();
  const results = await Promise.all(
    targets.map((to, i) =>
      runReceiver({
        from: `127.0.0.1:${ep.port}`,
        interface: '127.0.0.1',
        name: `pc${i + 1}`,
        decode: imageDecoder,
        makeConsumer: async (session) => taps[i]!.wrap(await restoreConsumer(session, to)),
      }),
    ),
  );
  const exit = await master.exited;
  clearInterval(sampler);
  const seconds = (Date.now() - t0) / 1000;
  for (const r of results) assert.equal(r.ok, true, `${r.name}: ${r.code} ${r.message}\n${master.err()}`);
  assert.equal(exit.code, 0, master.err());
  const report = JSON.parse(master.out()) as {
    ok: boolean;
    live: { chunks: number; rawBytes: number; storedBytes: number; peakHeldBytes: number };
  };
  assert.equal(report.ok, true);

  // The master wrote no image: nothing left in its folder, and it never held the disk's data there.
  assert.deepEqual(await readdir(scratch), []);
  assert.ok(
    peak < 4 * MiB,
    `the master used ${peak} bytes of its scratch filesystem (the ESP's staging copy at most), for ${report.live.storedBytes} bytes of chunks`,
  );
  assert.ok(
    report.live.storedBytes > 12 * MiB,
    `the capture stored the disk (${report.live.storedBytes} bytes)`,
  );

  for (const [i, target] of targets.entries()) {
    // Partition table and boot areas byte-identical: MBR with boot code, primary GPT, the gap, backup GPT.
    assert.ok((await readRange(target, 0, P1.start)).equals(await readRange(disk, 0, P1.start)), 'boot area');
    const backup = 33 * SECTOR;
    assert.ok(
      (await readRange(target, DISK - backup, backup)).equals(await readRange(disk, DISK - backup, backup)),
      'backup GPT',
    );
    const v = spawnSync('sgdisk', ['-v', target], { encoding: 'utf8' });
    assert.match(v.stdout, /No problems found/, v.stdout + v.stderr);
    assert.ok(
      (await readRange(target, p3.start, p3.size)).equals(await readRange(disk, p3.start, p3.size)),
      'raw partition byte-identical',
    );
    for (const [p, fsck] of [
      [P1, ['fsck.vfat', '-n']],
      [P2, ['fsck.ext4', '-fn']],
    ] as const) {
      const dev = await loops.attach(target, { offset: p.start, size: p.size, readOnly: true });
      const f = spawnSync(fsck[0], [...fsck.slice(1), dev], { encoding: 'utf8' });
      assert.equal(f.status, 0, `${fsck[0]}: ${f.stdout}${f.stderr}`);
      await loops.detach(dev);
    }
    // Read back as any restore is checked: every entry, every byte, against the final manifest.
    const verified = await verifyRestored(taps[i]!.manifest(), taps[i]!.source, target, { fileset: 1 });
    assert.ok(verified.entries > 2000, `verified ${verified.entries} entries`);

    // The root trees entry by entry (content, modes, owners, times, xattrs, hard links).
    const a = await loops.attach(disk, { offset: P2.start, size: P2.size, readOnly: true });
    const b = await loops.attach(target, { offset: P2.start, size: P2.size, readOnly: true });
    const ma = await mountFilesystem(a, 'ext4', { readOnly: true });
    const mb = await mountFilesystem(b, 'ext4', { readOnly: true });
    try {
      const counts = await countTypes(ma.dir);
      assert.ok(
        (counts.file ?? 0) > 2000 && (counts.symlink ?? 0) >= 2 && counts.fifo === 1,
        JSON.stringify(counts),
      );
      assert.deepEqual(await compareTrees(ma.dir, mb.dir, { ignoreRoot: true }), []);
    } finally {
      await ma.unmount();
      await mb.unmount();
      await loops.detach(a);
      await loops.detach(b);
    }
    // The ESP's files.
    const dirs: string[] = [];
    for (const file of [disk, target]) {
      const dev = await loops.attach(file, { offset: P1.start, size: P1.size, readOnly: true });
      const out = join(dir, `esp-${i}-${dirs.length}`);
      await mkdir(out);
      sh('mcopy', ['-s', '-m', '-n', '-i', dev, '::/*', out]);
      await loops.detach(dev);
      dirs.push(out);
    }
    assert.deepEqual(
      await compareTrees(dirs[0]!, dirs[1]!, { contentAndMtimeOnly: true, ignoreRoot: true }),
      [],
    );
  }
  t.diagnostic(
    `live session ${seconds.toFixed(1)} s: ${report.live.chunks} chunks, ${report.live.rawBytes} raw / ${report.live.storedBytes} stored bytes, at most ${report.live.peakHeldBytes} held; master scratch peak ${peak} bytes`,
  );
});

test('a live master killed mid-session: its receivers fail within seconds, saying so, and their disks show no partition table', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  const dir = await tempDir(t, 'imgcast-live-kill-');
  const loops = trackedLoops(t);
  // An MBR disk whose ext4 partition holds 48 MiB of random data, sent at 40 Mbit/s: ~10 s.
  const disk = await sparseFile(join(dir, 'ref.img'), 128 * MiB);
  execFileSync('sfdisk', ['-q', disk], { input: 'label: dos\nstart=2048, size=100MiB, type=83\n' });
  const tree = join(dir, 'tree');
  await mkdir(tree);
  await writeFile(join(tree, 'data.bin'), randomBytes(48 * MiB));
  sh('mkfs.ext4', ['-q', '-F', '-E', `offset=${MiB}`, '-d', tree, disk, `${100 * 1024}k`]);
  const source = await loops.attach(disk, { readOnly: true });
  const targets: string[] = [];
  for (const name of ['pc1.img', 'pc2.img']) {
    targets.push(await loops.attach(await sparseFile(join(dir, name), 128 * MiB)));
  }
  const scratch = await masterScratch(t);
  const ep = endpoint();
  const master = startMaster(source, scratch, ep, ['--clients', '2', '--wait', '30', '--rate', '40']);
  t.after(async () => {
    master.child.kill('SIGKILL');
    // What the killed master left attached and mounted (its capture's loop devices) is released as the next run would.
    await releaseDeadRuns();
  });
  let killedAt = 0;
  const results = await Promise.all(
    targets.map((to, i) =>
      runReceiver({
        from: `127.0.0.1:${ep.port}`,
        interface: '127.0.0.1',
        name: `pc${i + 1}`,
        decode: imageDecoder,
        makeConsumer: (session) => restoreConsumer(session, to),
        onProgress: (p) => {
          if (p.chunks >= 2 && !killedAt) {
            killedAt = Date.now();
            master.child.kill('SIGKILL');
          }
        },
      }).then((r) => ({ r, at: Date.now() })),
    ),
  );
  assert.ok(killedAt > 0, 'the master was killed mid-session');
  assert.equal((await master.exited).signal, 'SIGKILL');
  for (const { r, at } of results) {
    assert.equal(r.ok, false);
    assert.equal(r.code, 'E_SENDER_LOST', `${r.name}: ${r.code} ${r.message}`);
    assert.match(r.message ?? '', /sender 127\.0\.0\.1:\d+ closed the control connection/);
    assert.ok(at - killedAt < 5000, `${r.name} failed ${at - killedAt} ms after the kill`);
    assert.ok(r.chunks < r.totalChunks || r.totalChunks === 0, 'it had not got everything');
  }
  for (const target of targets) {
    // An aborted restore leaves a disk the firmware and the kernel see as empty, not half a system.
    const probe = spawnSync('sfdisk', ['-d', target], { encoding: 'utf8' });
    assert.notEqual(probe.status, 0, `a partition table is left on ${target}: ${probe.stdout}`);
  }
  t.diagnostic(`receivers failed ${results.map(({ at }) => at - killedAt).join(' and ')} ms after the kill`);
});

test('an ext4 filesystem without a partition table, streamed live into a new disk-image file: fsck clean, same tree', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  const dir = await tempDir(t, 'imgcast-live-fs-');
  const loops = trackedLoops(t);
  const tree = join(dir, 'tree');
  await mkdir(join(tree, 'etc'), { recursive: true });
  await writeFile(join(tree, 'etc/hostname'), 'part\n');
  await writeFile(join(tree, 'data.bin'), randomBytes(6 * MiB));
  for (let i = 0; i < 300; i++) await writeFile(join(tree, `etc/f${i}.conf`), `setting ${i}\n`.repeat(i));
  const fs = await sparseFile(join(dir, 'fs.img'), 64 * MiB);
  sh('mkfs.ext4', ['-q', '-F', '-L', 'labfs', '-d', tree, fs]);
  const target = join(dir, 'copy.img');
  const run = await liveSession(fs, [target]);
  assert.equal(run.sender.ok, true, JSON.stringify(run.sender.receivers.map((r) => [r.name, r.reason])));
  const r = run.receivers[0]!;
  assert.equal(r.ok, true, `${r.code} ${r.message}`);
  const f = spawnSync('fsck.ext4', ['-fn', target], { encoding: 'utf8' });
  assert.equal(f.status, 0, f.stdout + f.stderr);
  await verifyRestored(run.tapped.manifest(), run.tapped.source, target, { fileset: 1 });
  const [a, b] = [await loops.attach(fs, { readOnly: true }), await loops.attach(target, { readOnly: true })];
  const [ma, mb] = [
    await mountFilesystem(a, 'ext4', { readOnly: true }),
    await mountFilesystem(b, 'ext4', { readOnly: true }),
  ];
  try {
    assert.deepEqual(await compareTrees(ma.dir, mb.dir, { ignoreRoot: true }), []);
  } finally {
    await ma.unmount();
    await mb.unmount();
  }
});
