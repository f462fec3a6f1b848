/**
 * Live masters: a folder or a whole disk captured and multicast as it is read (live.ts), on
 * loopback multicast, restored by receivers as it streams (live-restore.ts), and checked as
 * any restore: verify-target.ts against the final manifest, the partition table byte for
 * byte, fsck, the trees compared entry by entry. The master writes no image file.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { statfsSync } from 'node:fs';
import { link, mkdir, open, readdir, readFile, symlink, truncate, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { liveDiskProvider, type LiveDiskProvider } from '../../src/engine/live.ts';
import { imageDecoder, restoreConsumer } from '../../src/engine/multicast.ts';
import { verifyRestored } from '../../src/engine/verify-target.ts';
import { decodeChunk } from '../../src/image/codec.ts';
import type { ChunkSource, Manifest } from '../../src/image/types.ts';
import { mountFilesystem, type Mounted } from '../../src/disk/filesystem.ts';
import { runReceiver, runSender, type ChunkInfo, type LiveFollower } from '../../src/transport/index.ts';
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
