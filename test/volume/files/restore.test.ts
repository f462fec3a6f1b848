import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import {
  closeSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { test, type TestContext } from 'node:test';
import { makeImage } from '../../../src/engine/make.ts';
import { restoreImage } from '../../../src/engine/restore.ts';
import { ImageReader } from '../../../src/image/reader.ts';
import type { FileEntry, FileVolume } from '../../../src/image/types.ts';
import { captureTree } from '../../../src/volume/files/capture.ts';
import { createTreeRestore, nsToSeconds, type TreeRestore } from '../../../src/volume/files/restore.ts';
import { isRoot, loopUnavailable, skipUnless } from '../../helpers/env.ts';
import { MemChunkStore } from './memstore.ts';
import { buildTree, bytes, scratchDir, snapshot, xattrDump, type Snap } from './tree.ts';

function shuffled<T>(items: T[], seed: number): T[] {
  const out = [...items];
  let s = seed;
  for (let i = out.length - 1; i > 0; i--) {
    s = (s * 1103515245 + 12345) & 0x7fffffff;
    const j = s % (i + 1);
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

async function runRestore(restore: TreeRestore, store: MemChunkStore, seed = 42): Promise<void> {
  await restore.prepare();
  for (const id of shuffled([...restore.needed], seed))
    await restore.applyChunk(id, await store.readChunk(id));
  await restore.finish();
}

async function captured(t: TestContext, rootOnly: boolean) {
  const src = await scratchDir(t);
  const notes = buildTree(src, { rootOnly });
  const store = new MemChunkStore();
  const entries = await captureTree(src, store);
  return { src, notes, store, entries };
}

/** Same entries, content and metadata, times to the nanosecond; allocated blocks may differ. */
function assertSameTree(got: Map<string, Snap>, want: Map<string, Snap>): void {
  assert.deepEqual([...got.keys()].sort(), [...want.keys()].sort());
  for (const [path, w] of want) {
    const { blocks: _gb, ...g } = got.get(path)!;
    const { blocks: _wb, ...rest } = w;
    assert.deepEqual(g, rest, path);
  }
}

test('round trip of every kind of entry, chunks in shuffled order', async (t) => {
  const { src, store, entries } = await captured(t, false);
  const dst = await scratchDir(t);
  const restore = createTreeRestore(entries, dst, { fileset: 1, fsType: 'ext4' });
  assert.ok(restore.progress().bytesTotal > 0);
  await runRestore(restore, store);
  assert.equal(restore.progress().bytesDone, restore.progress().bytesTotal);
  const got = snapshot(dst);
  const want = snapshot(src);
  assert.equal(want.get('sock')?.type, 'socket');
  want.delete('sock');
  assertSameTree(got, want);
  assert.equal(xattrDump(dst), xattrDump(src));
  assert.ok(xattrDump(dst).includes('user.test'));
  // Holes stay holes: 64 MiB logical, a few blocks allocated.
  assert.ok(
    got.get('sparse.img')!.blocks! * 512 < 1024 * 1024,
    `sparse.img uses ${got.get('sparse.img')!.blocks} blocks`,
  );
  assert.equal(got.get('hard/one')!.linkedWith, 'hard/one|hard/sub/three|hard/two');
  assert.equal(readFileSync(join(dst, 'odd/new\nline'), 'utf8'), 'new\nline');
  assert.deepEqual(restore.warnings, [
    'sock: sockets cannot be restored (a program recreates them when it runs); skipped',
  ]);
});

test('chunks handed over all at once (applyChunk not awaited in turn) are written one at a time, each byte in its file', async (t) => {
  // 100 files, each with its first half in one chunk and its second in another: 200 chunks in
  // flight at once would hold more descriptors than the restore keeps open (64), and one closed
  // under a write still under way could be reused by the next open and take another file's bytes.
  const store = new MemChunkStore();
  const entries: FileEntry[] = [];
  const want = new Map<string, Buffer>();
  const base = {
    mode: 0o644,
    uid: process.getuid?.() ?? 0,
    gid: process.getgid?.() ?? 0,
    mtimeNs: '1700000000000000000',
    atimeNs: '1700000000000000000',
    addedIn: 1,
  };
  for (let i = 0; i < 100; i++) {
    const data = Buffer.from(`start of ${i}: ${`file ${i} `.repeat(60_000 + i)}`);
    const half = data.length >> 1;
    const a = await store.putChunk(data.subarray(0, half));
    const b = await store.putChunk(data.subarray(half));
    want.set(`f${i}`, data);
    entries.push({
      ...base,
      path: `f${i}`,
      type: 'file',
      size: data.length,
      extents: [
        { offset: 0, length: half, chunk: a.id, chunkOffset: 0 },
        { offset: half, length: data.length - half, chunk: b.id, chunkOffset: 0 },
      ],
    } as FileEntry);
  }
  const dst = await scratchDir(t);
  const restore = createTreeRestore(entries, dst, { fileset: 1, fsType: 'ext4' });
  await restore.prepare();
  const ids = shuffled([...restore.needed], 7);
  assert.equal(ids.length, 200);
  await Promise.all(ids.map(async (id) => restore.applyChunk(id, await store.readChunk(id))));
  await restore.finish();
  for (const [name, data] of want) assert.deepEqual(readFileSync(join(dst, name)), data, name);
});

test('round trip as root: device nodes, owners, setuid on foreign owners, trusted/security xattrs', async (t) => {
  if (skipUnless(t, isRoot() ? undefined : 'needs root for device nodes and owners')) return;
  const { src, notes, store, entries } = await captured(t, true);
  t.diagnostic(notes.length ? `not set up: ${notes.join('; ')}` : 'all xattr namespaces available');
  const dst = await scratchDir(t);
  const restore = createTreeRestore(entries, dst, { fileset: 1, fsType: 'ext4' });
  await runRestore(restore, store, 7);
  const got = snapshot(dst);
  assertSameTree(got, withoutSocket(snapshot(src)));
  assert.equal(xattrDump(dst), xattrDump(src));
  assert.equal(got.get('null')!.type, 'chardev');
  assert.equal(got.get('blk')!.type, 'blockdev');
  assert.deepEqual([got.get('owned')!.uid, got.get('owned')!.gid], [1234, 5678]);
  assert.deepEqual([got.get('links/rel')!.uid, got.get('links/rel')!.gid], [4321, 8765]);
  assert.equal(got.get('suid-owned')!.mode, 0o6755);
  assert.ok(xattrDump(dst).includes('trusted.imgcast'));
});

test('from an image file the pool workers decode, write and finish files themselves: same tree', async (t) => {
  // restoreImage hands each chunk's files to the worker that decodes it (ChunkWritePlan):
  // creation, data, owner, mode and times through one descriptor, symlinks alongside.
  const src = await scratchDir(t);
  const notes = buildTree(src, { rootOnly: isRoot() });
  t.diagnostic(notes.length ? `not set up: ${notes.join('; ')}` : 'all xattr namespaces available');
  const image = join(await scratchDir(t), 'tree.imgc');
  await makeImage(src, image, { level: 'speed' });
  const dst = join(await scratchDir(t), 'out');
  const warnings: string[] = [];
  await restoreImage(image, dst, { fileset: 1, onWarning: (w) => warnings.push(w) });
  const got = snapshot(dst);
  assertSameTree(got, withoutSocket(snapshot(src)));
  assert.equal(xattrDump(dst), xattrDump(src));
  assert.equal(got.get('hard/one')!.linkedWith, 'hard/one|hard/sub/three|hard/two');
  assert.ok(got.get('sparse.img')!.blocks! * 512 < 1024 * 1024);
  if (isRoot()) assert.equal(got.get('suid-owned')!.mode, 0o6755);
  assert.deepEqual(warnings, [
    'sock: sockets cannot be restored (a program recreates them when it runs); skipped',
  ]);
});

test('from an image file with --force, what is in the way is replaced by the workers, never written through', async (t) => {
  const src = await scratchDir(t);
  writeFileSync(join(src, 'file'), 'new content');
  mkdirSync(join(src, 'sub'));
  writeFileSync(join(src, 'sub/inner'), 'inner content');
  symlinkSync('file', join(src, 'link'));
  const image = join(await scratchDir(t), 'small.imgc');
  await makeImage(src, image, { level: 'balanced' });
  const outside = await scratchDir(t);
  writeFileSync(join(outside, 'victim'), 'keep me');
  const dst = await scratchDir(t);
  symlinkSync(join(outside, 'victim'), join(dst, 'file'));
  mkdirSync(join(dst, 'sub'));
  writeFileSync(join(dst, 'sub/inner'), 'old');
  writeFileSync(join(dst, 'link'), 'a plain file where the image has a symlink');
  await restoreImage(image, dst, { fileset: 1, force: true });
  assert.equal(readFileSync(join(outside, 'victim'), 'utf8'), 'keep me');
  assert.equal(readFileSync(join(dst, 'file'), 'utf8'), 'new content');
  assert.ok(!lstatSync(join(dst, 'file')).isSymbolicLink());
  assert.equal(readFileSync(join(dst, 'sub/inner'), 'utf8'), 'inner content');
  assert.ok(lstatSync(join(dst, 'link')).isSymbolicLink());
});

test('a target that passes its group on (setgid) still ends with the owners the image says', async (t) => {
  // Restoring as root skips chown for entries it made itself with the right owner, but only
  // inside directories it made: the target's own setgid bit hands new files its group.
  if (skipUnless(t, isRoot() ? undefined : 'needs root to own files as another group')) return;
  const src = await scratchDir(t);
  writeFileSync(join(src, 'top'), 'at the top');
  mkdirSync(join(src, 'sub'));
  writeFileSync(join(src, 'sub/deep'), 'one level down');
  const image = join(await scratchDir(t), 'g.imgc');
  await makeImage(src, image, { level: 'speed' });
  const dst = await scratchDir(t);
  execFileSync('chown', ['0:4242', dst]);
  execFileSync('chmod', ['2775', dst]);
  await restoreImage(image, dst, { fileset: 1, force: true });
  for (const p of ['top', 'sub', 'sub/deep']) assert.equal(lstatSync(join(dst, p)).gid, 0, p);
});

test('from an image file, a write a worker cannot make fails the restore and names the file', async (t) => {
  const src = await scratchDir(t);
  mkdirSync(join(src, 'sub'));
  writeFileSync(join(src, 'sub/file'), 'content');
  const image = join(await scratchDir(t), 'small.imgc');
  await makeImage(src, image, { level: 'speed' });
  const dst = await scratchDir(t);
  mkdirSync(join(dst, 'sub/file/inside'), { recursive: true });
  await assert.rejects(
    restoreImage(image, dst, { fileset: 1, force: true }),
    (err: Error & { code?: string }) => {
      assert.equal(err.code, 'E_RESTORE_IO');
      assert.match(err.message, /sub\/file.*a directory is in the way/);
      return true;
    },
  );
  assert.ok(lstatSync(join(dst, 'sub/file/inside')).isDirectory());
});

test('into an empty target the pool workers make the folders, a subtree each; one they cannot make fails prepare() and is named', async (t) => {
  const dir = (path: string): FileEntry => ({
    path,
    type: 'dir',
    mode: 0o755,
    uid: 0,
    gid: 0,
    mtimeNs: '1700000000000000000',
    atimeNs: '1700000000000000000',
    addedIn: 1,
  });
  const tooLong = `a/b/${'x'.repeat(300)}`;
  const dst = await scratchDir(t);
  const restore = createTreeRestore([dir('.'), dir('a'), dir('a/b'), dir(tooLong), dir('c')], dst, {
    fileset: 1,
    fsType: 'ext4',
  });
  await assert.rejects(restore.prepare(), (err: Error & { code?: string; details?: { errno?: string } }) => {
    assert.equal(err.code, 'E_RESTORE_IO');
    assert.equal(err.details?.errno, 'ENAMETOOLONG');
    assert.ok(err.message.includes(`cannot create directory ${join(dst, tooLong)}`), err.message);
    return true;
  });
  // Made before it, parents first, with the owner-only mode a restore fills folders under.
  assert.equal(lstatSync(join(dst, 'a/b')).mode & 0o777, 0o700);
  // Many second-level subtrees, deep ones among them, in the image's order (parents first
  // overall, interleaved between subtrees): every folder is made, whichever worker made it.
  const many = [dir('.'), dir('top'), dir('other')];
  for (let i = 0; i < 12; i++) many.push(dir(`top/s${i}`), dir(`other/o${i}`));
  for (let i = 0; i < 12; i++) many.push(dir(`top/s${i}/x`), dir(`other/o${i}/x`));
  for (let i = 0; i < 12; i++) many.push(dir(`top/s${i}/x/y`));
  const fine = await scratchDir(t);
  await createTreeRestore(many, fine, { fileset: 1, fsType: 'ext4' }).prepare();
  for (const e of many) assert.ok(lstatSync(join(fine, e.path)).isDirectory(), e.path);
  // A top-level folder (made by this thread before the workers start) fails the same way.
  const topLevel = await scratchDir(t);
  await assert.rejects(
    createTreeRestore([dir('.'), dir('x'.repeat(300)), dir('y')], topLevel, {
      fileset: 1,
      fsType: 'ext4',
    }).prepare(),
    (err: Error & { code?: string; details?: { errno?: string } }) =>
      err.code === 'E_RESTORE_IO' &&
      err.details?.errno === 'ENAMETOOLONG' &&
      /cannot create directory/.test(err.message),
  );
  // A folder that already exists where the target was not empty goes through the checks instead.
  const busy = await scratchDir(t);
  writeFileSync(join(busy, 'c'), 'a file where the image has a folder');
  const second = createTreeRestore([dir('.'), dir('a'), dir('c')], busy, { fileset: 1, fsType: 'ext4' });
  await assert.rejects(second.prepare(), /cannot create directory .*\/c: something else is already there/);
});

test('finish() rejects naming the missing chunks and files', async (t) => {
  const { store, entries } = await captured(t, false);
  const dst = await scratchDir(t);
  const restore = createTreeRestore(entries, dst, { fileset: 1, fsType: 'ext4' });
  await restore.prepare();
  const ids = [...restore.needed];
  const big = entries.find((e) => e.path === 'big.bin')!;
  const skip = big.extents![1]!.chunk;
  for (const id of ids) if (id !== skip) await restore.applyChunk(id, await store.readChunk(id));
  await assert.rejects(restore.finish(), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'E_RESTORE_INCOMPLETE');
    assert.match(err.message, new RegExp(`1 of ${ids.length} chunks never arrived`));
    assert.match(err.message, /big\.bin/);
    return true;
  });
  assert.ok(restore.progress().bytesDone < restore.progress().bytesTotal);
});

test('a chunk shorter than its extents is reported as a corrupt image, not written', async (t) => {
  const { store, entries } = await captured(t, false);
  const dst = await scratchDir(t);
  const restore = createTreeRestore(entries, dst, { fileset: 1, fsType: 'ext4' });
  await restore.prepare();
  const id = entries.find((e) => e.path === 'big.bin')!.extents![0]!.chunk;
  await assert.rejects(restore.applyChunk(id, (await store.readChunk(id)).subarray(0, 100)), {
    code: 'E_IMAGE_CORRUPT',
  });
  await restore.abort(new Error('test'));
});

test('file-set restore skips excluded entries, creates their needed parents, needs none of their chunks', async (t) => {
  const { store, entries } = await captured(t, false);
  const set2 = 1 << 1;
  const mark = (p: string) => (entries.find((e) => e.path === p)!.excludedFrom = set2);
  mark('small'); // excluded directory, but small/f0003 stays in: the directory must still be made
  for (const e of entries) if (e.path.startsWith('small/') && e.path !== 'small/f0003') e.excludedFrom = set2;
  mark('big.bin');
  mark('hard/one'); // the data of the hard-link group moves to the next included name
  const dst = await scratchDir(t);
  const restore = createTreeRestore(entries, dst, { fileset: 2, fsType: 'ext4' });
  const bigChunks = entries.find((e) => e.path === 'big.bin')!.extents!.map((x) => x.chunk);
  for (const id of bigChunks) assert.ok(!restore.needed.has(id));
  await runRestore(restore, store);
  assert.ok(!existsSync(join(dst, 'big.bin')));
  assert.ok(!existsSync(join(dst, 'small/f0004')));
  assert.ok(existsSync(join(dst, 'small/f0003')));
  assert.ok(lstatSync(join(dst, 'small')).isDirectory());
  assert.ok(!existsSync(join(dst, 'hard/one')));
  assert.equal(lstatSync(join(dst, 'hard/two')).nlink, 2);
  assert.equal(readFileSync(join(dst, 'hard/sub/three')).length, 70000);

  // Set 1 still holds everything.
  const dst1 = await scratchDir(t);
  const all = createTreeRestore(entries, dst1, { fileset: 1, fsType: 'ext4' });
  for (const id of bigChunks) assert.ok(all.needed.has(id));
});

test('vfat mode skips what vfat cannot hold, with warnings, and writes the rest', async (t) => {
  const { src, store, entries } = await captured(t, false);
  const dst = await scratchDir(t);
  const warnings: string[] = [];
  const restore = createTreeRestore(entries, dst, {
    fileset: 1,
    fsType: 'vfat',
    onWarning: (w) => warnings.push(w),
  });
  await runRestore(restore, store);
  assert.deepEqual(restore.warnings, warnings);
  for (const p of ['links/abs', 'links/rel', 'links/dangling', 'fifo']) {
    assert.ok(!existsSync(join(dst, p)) && !isSymlink(join(dst, p)), `${p} should be skipped`);
    assert.ok(
      warnings.some((w) => w.startsWith(`${p}:`)),
      `a warning names ${p}`,
    );
  }
  assert.ok(warnings.some((w) => /no owners or permission bits/.test(w)));
  assert.ok(warnings.some((w) => /no extended attributes/.test(w)));
  // Hard links become copies.
  assert.equal(lstatSync(join(dst, 'hard/two')).nlink, 1);
  assert.deepEqual(readFileSync(join(dst, 'hard/two')), readFileSync(join(src, 'hard/one')));
  assert.deepEqual(readFileSync(join(dst, 'big.bin')), readFileSync(join(src, 'big.bin')));
});

function withoutSocket(snap: Map<string, Snap>): Map<string, Snap> {
  snap.delete('sock');
  return snap;
}

function isSymlink(p: string): boolean {
  try {
    return lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}

test('restore onto a real vfat filesystem (loop device)', async (t) => {
  if (skipUnless(t, loopUnavailable() ?? vfatUnavailable())) return;
  const mounts: string[] = [];
  t.after(() => {
    for (const m of mounts) execFileSync('umount', [m]);
  });
  const work = await scratchDir(t);
  const img = join(work, 'fat.img');
  execFileSync('truncate', ['-s', '64M', img]);
  execFileSync('mkfs.vfat', ['-F', '32', img], { stdio: 'ignore' });
  const mnt = join(work, 'mnt');
  mkdirSync(mnt);
  execFileSync('mount', ['-o', 'loop', img, mnt]);
  mounts.push(mnt);

  const src = await scratchDir(t);
  mkdirSync(join(src, 'EFI/BOOT'), { recursive: true });
  writeFileSync(join(src, 'EFI/BOOT/BOOTX64.EFI'), Buffer.alloc(300000, 7));
  writeFileSync(join(src, 'README'), 'readme');
  writeFileSync(join(src, 'readme'), 'lower case twin');
  writeFileSync(join(src, 'bad:name'), 'colon');
  symlinkSync('README', join(src, 'link'));
  execFileSync('mkfifo', [join(src, 'pipe')]);
  const store = new MemChunkStore();
  const entries = await captureTree(src, store);
  const restore = createTreeRestore(entries, mnt, { fileset: 1, fsType: 'vfat' });
  await runRestore(restore, store);
  assert.deepEqual(readFileSync(join(mnt, 'EFI/BOOT/BOOTX64.EFI')), Buffer.alloc(300000, 7));
  assert.equal(readFileSync(join(mnt, 'README'), 'utf8'), 'readme');
  const w = restore.warnings.join('\n');
  assert.match(w, /^link: vfat cannot hold a symlink/m);
  assert.match(w, /^pipe: vfat cannot hold a fifo/m);
  assert.match(w, /^readme: vfat already holds a name differing only in letter case/m);
  assert.match(w, /^bad:name: vfat does not accept this name/m);
  // vfat keeps mtime in 2 s steps.
  const srcMtime = lstatSync(join(src, 'README')).mtimeMs;
  assert.ok(Math.abs(lstatSync(join(mnt, 'README')).mtimeMs - srcMtime) <= 2000);
});

function vfatUnavailable(): string | undefined {
  const known = readFileSync('/proc/filesystems', 'utf8');
  return /\bvfat\b/.test(known) ? undefined : 'the kernel has no vfat driver (not in /proc/filesystems)';
}

function entry(path: string, type: FileEntry['type'], extra: Partial<FileEntry> = {}): FileEntry {
  return { path, type, mode: 0o644, uid: 0, gid: 0, mtimeNs: '0', atimeNs: '0', ...extra };
}

test('paths leaving the target are refused before anything is written', async (t) => {
  const dst = await scratchDir(t);
  for (const bad of ['../x', '/etc/passwd', 'a/../../x', 'a//b', './a', '']) {
    assert.throws(
      () =>
        createTreeRestore([entry('.', 'dir'), entry(bad, 'file', { size: 0, extents: [] })], dst, {
          fileset: 1,
          fsType: 'ext4',
        }),
      { code: 'E_PATH_ESCAPE' },
      bad,
    );
  }
});

test('a symlink in the image cannot be used to write outside the target', async (t) => {
  const outside = await scratchDir(t);
  const dst = await scratchDir(t);
  const entries = [
    entry('.', 'dir', { mode: 0o755 }),
    entry('evil', 'symlink', { linkTarget: outside }),
    entry('evil/payload', 'file', { size: 0, extents: [] }),
  ];
  const restore = createTreeRestore(entries, dst, { fileset: 1, fsType: 'ext4' });
  await assert.rejects(restore.prepare(), { code: 'E_PATH_ESCAPE', message: /evil.*symlink/ });
  assert.ok(!existsSync(join(outside, 'payload')));
});

test('symlinks already in the target are replaced, never written through', async (t) => {
  const outside = await scratchDir(t);
  writeFileSync(join(outside, 'victim'), 'keep me');
  const dst = await scratchDir(t);
  symlinkSync(join(outside, 'victim'), join(dst, 'file'));
  symlinkSync(outside, join(dst, 'dir'));
  const store = new MemChunkStore();
  const ref = await store.putChunk(Buffer.from('new content'));
  const x = { offset: 0, length: 11, chunk: ref.id, chunkOffset: 0 };
  const fileOnly = [entry('.', 'dir', { mode: 0o755 }), entry('file', 'file', { size: 11, extents: [x] })];
  await runRestore(createTreeRestore(fileOnly, dst, { fileset: 1, fsType: 'ext4' }), store);
  assert.equal(readFileSync(join(outside, 'victim'), 'utf8'), 'keep me');
  assert.equal(readFileSync(join(dst, 'file'), 'utf8'), 'new content');
  assert.ok(!lstatSync(join(dst, 'file')).isSymbolicLink());

  const through = [entry('dir', 'dir'), entry('dir/f', 'file', { size: 11, extents: [x] })];
  await assert.rejects(createTreeRestore(through, dst, { fileset: 1, fsType: 'ext4' }).prepare(), {
    code: 'E_RESTORE_IO',
  });
  assert.ok(!existsSync(join(outside, 'f')));
  assert.equal(readlinkSync(join(dst, 'dir')), outside);
});

test('round trip onto a fresh ext4 filesystem (loop device), as the disk layer uses it', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  const mounts: string[] = [];
  t.after(() => {
    for (const m of mounts) execFileSync('umount', [m]);
  });
  const work = await scratchDir(t);
  const img = join(work, 'ext4.img');
  execFileSync('truncate', ['-s', '128M', img]);
  execFileSync('mkfs.ext4', ['-q', '-F', img]);
  const mnt = join(work, 'mnt');
  mkdirSync(mnt);
  execFileSync('mount', ['-o', 'loop', img, mnt]);
  mounts.push(mnt);

  const { src, store, entries } = await captured(t, true);
  const restore = createTreeRestore(entries, mnt, { fileset: 1, fsType: 'ext4' });
  await runRestore(restore, store, 99);
  const got = snapshot(mnt);
  assertSameTree(got, withoutSocket(snapshot(src)));
  assert.equal(xattrDump(mnt), xattrDump(src));
  assert.ok(got.get('sparse.img')!.blocks! * 512 < 1024 * 1024);
  // lost+found made by mkfs is left alone.
  assert.ok(lstatSync(join(mnt, 'lost+found')).isDirectory());
});

test('thousands of fifos are made in a few batched runs', async (t) => {
  const dst = await scratchDir(t);
  const entries = [entry('.', 'dir', { mode: 0o755 }), entry('p', 'dir', { mode: 0o755 })];
  for (let i = 0; i < 3000; i++)
    entries.push(entry(`p/fifo-with-a-longish-name-${i}`, 'fifo', { mode: 0o640 }));
  const restore = createTreeRestore(entries, dst, { fileset: 1, fsType: 'ext4' });
  await runRestore(restore, new MemChunkStore());
  const names = readdirSync(join(dst, 'p'));
  assert.equal(names.length, 3000);
  const st = lstatSync(join(dst, 'p/fifo-with-a-longish-name-2999'));
  assert.ok(st.isFIFO());
  assert.equal(st.mode & 0o7777, 0o640);
});

test('abort closes what is open and leaves the partial tree', async (t) => {
  const { store, entries } = await captured(t, false);
  const dst = await scratchDir(t);
  const restore = createTreeRestore(entries, dst, { fileset: 1, fsType: 'ext4' });
  await restore.prepare();
  const big = entries.find((e) => e.path === 'big.bin')!;
  const first = big.extents![0]!.chunk;
  await restore.applyChunk(first, await store.readChunk(first));
  await restore.abort(new Error('operator stopped it'));
  // What was written stays: the first piece of big.bin is there, the rest is not.
  const firstEnd = big.extents![0]!.offset + big.extents![0]!.length;
  assert.equal(lstatSync(join(dst, 'big.bin')).size, firstEnd);
  assert.ok(firstEnd < big.size!);
  await assert.rejects(restore.finish(), { code: 'E_RESTORE_INCOMPLETE' });
});

test('property: random files, sparse layouts and duplicates survive capture and restore byte for byte', async (t) => {
  const piece = fc.record({
    at: fc.integer({ min: 0, max: 3 * 4 * 1024 * 1024 }),
    len: fc.integer({ min: 1, max: 20000 }),
    seed: fc.integer({ min: 0, max: 1000 }),
  });
  const file = fc.oneof(
    fc.record({
      kind: fc.constant('plain' as const),
      len: fc.integer({ min: 0, max: 300000 }),
      seed: fc.integer({ min: 0, max: 5 }),
    }),
    fc.record({
      kind: fc.constant('sparse' as const),
      size: fc.integer({ min: 4096, max: 3 * 4 * 1024 * 1024 + 5000 }),
      pieces: fc.array(piece, { maxLength: 4 }),
    }),
  );
  await fc.assert(
    fc.asyncProperty(fc.array(file, { minLength: 1, maxLength: 12 }), async (files) => {
      const src = await scratchDir(t);
      files.forEach((f, i) => {
        const p = join(src, `f${i}`);
        if (f.kind === 'plain') {
          // Few seeds, so equal files (dedup) are common.
          writeFileSync(p, bytes(f.seed, f.len));
          return;
        }
        writeFileSync(p, '');
        execFileSync('truncate', ['-s', String(f.size), p]);
        const fd = openSync(p, 'r+');
        for (const x of f.pieces) {
          const at = Math.min(x.at, f.size - 1);
          const data = bytes(x.seed, Math.min(x.len, f.size - at));
          writeSync(fd, data, 0, data.length, at);
        }
        closeSync(fd);
      });
      const store = new MemChunkStore();
      const entries = await captureTree(src, store);
      const dst = await scratchDir(t);
      await runRestore(createTreeRestore(entries, dst, { fileset: 1, fsType: 'ext4' }), store, files.length);
      for (let i = 0; i < files.length; i++) {
        assert.ok(readFileSync(join(dst, `f${i}`)).equals(readFileSync(join(src, `f${i}`))), `f${i}`);
      }
    }),
    { numRuns: 15 },
  );
});

test('xattrs the target filesystem cannot hold are a warning, not a failure (ramfs, root)', async (t) => {
  if (skipUnless(t, isRoot() ? undefined : 'needs root to mount a ramfs')) return;
  const mounts: string[] = [];
  t.after(() => {
    for (const m of mounts) execFileSync('umount', [m]);
  });
  const src = await scratchDir(t);
  writeFileSync(join(src, 'f'), 'data');
  execFileSync('setfattr', ['-n', 'user.k', '-v', 'v', join(src, 'f')]);
  const store = new MemChunkStore();
  const entries = await captureTree(src, store);
  const dst = await scratchDir(t);
  execFileSync('mount', ['-t', 'ramfs', 'imgcast-test', dst]);
  mounts.push(dst);
  const restore = createTreeRestore(entries, dst, { fileset: 1, fsType: 'directory' });
  await runRestore(restore, store);
  assert.equal(readFileSync(join(dst, 'f'), 'utf8'), 'data');
  assert.equal(restore.warnings.length, 1);
  assert.match(restore.warnings[0]!, /does not support some extended attributes.*Operation not supported/);
});

test('nsToSeconds gives the same double as exact BigInt arithmetic, for any time', () => {
  const exact = (ns: bigint): number => {
    const sec = ns / 1_000_000_000n;
    return Number(sec) + Number(ns - sec * 1_000_000_000n) / 1e9;
  };
  const times = fc.oneof(
    fc.bigInt({ min: -(10n ** 19n), max: 10n ** 20n }),
    fc.bigInt({ min: 0n, max: 10n ** 10n }),
    fc.constantFrom(0n, 999_999_999n, 1_000_000_000n, 1_700_000_000_123_456_789n, -1n),
  );
  fc.assert(
    fc.property(times, (ns) => {
      assert.equal(nsToSeconds(String(ns)), exact(ns));
    }),
    { numRuns: 2000 },
  );
});

/** Every regular file under root, by path relative to it. */
function filesUnder(root: string, rel = ''): string[] {
  const out: string[] = [];
  for (const d of readdirSync(join(root, rel), { withFileTypes: true })) {
    const p = rel ? `${rel}/${d.name}` : d.name;
    if (d.isDirectory()) out.push(...filesUnder(root, p));
    else if (d.isFile()) out.push(p);
  }
  return out;
}

/** A small tmpfs on a folder of its own, unmounted and removed when the test ends. */
function smallTmpfs(t: TestContext, size: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'imgcast-tmpfs-'));
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'imgcast-test', dir]);
  t.after(() => {
    execFileSync('umount', [dir]);
    rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

/**
 * What a folder restore that ran out of space must leave: an error that says the folder is
 * incomplete and why, and no file with part of its data unless the error names it.
 */
function assertFullRestoreReported(err: unknown, src: string, dst: string): void {
  const e = err as Error & { code?: string; details?: { partlyWrittenKept?: string[] } };
  assert.equal(e.code, 'E_RESTORE_IO', e.message);
  assert.match(
    e.message,
    /^restore into .* is incomplete: cannot write .* \(chunk [0-9a-f]{64}\): no space left on the device \(ENOSPC\)/,
  );
  const kept = new Set(e.details?.partlyWrittenKept ?? []);
  for (const k of kept) assert.ok(e.message.includes(k), `${k} is named in: ${e.message}`);
  for (const rel of filesUnder(dst)) {
    if (kept.has(rel)) continue;
    assert.ok(
      readFileSync(join(dst, rel)).equals(readFileSync(join(src, rel))),
      `${rel} is complete or named`,
    );
  }
}

/** Two big files and a pack of small ones: more than 6 MiB, which the target cannot hold. */
function spaceTree(src: string): void {
  mkdirSync(join(src, 'a'));
  writeFileSync(join(src, 'a/first.bin'), bytes(1, 5 * 1024 * 1024));
  writeFileSync(join(src, 'b.bin'), bytes(2, 3 * 1024 * 1024));
  mkdirSync(join(src, 'small'));
  for (let i = 0; i < 20; i++) writeFileSync(join(src, `small/s${i}`), bytes(100 + i, 10_000));
}

test('a folder restore from an image file that runs out of space says the folder is incomplete and leaves no unnamed partial file (tmpfs)', async (t) => {
  if (skipUnless(t, isRoot() ? undefined : 'needs root to mount a tmpfs')) return;
  const src = await scratchDir(t);
  spaceTree(src);
  const image = join(await scratchDir(t), 'space.imgc');
  await makeImage(src, image, { level: 'speed' });
  const dst = join(smallTmpfs(t, '6m'), 'out');
  let failure: unknown;
  await restoreImage(image, dst, { fileset: 1 }).catch((err: unknown) => (failure = err));
  assert.ok(failure, 'the restore fails');
  assertFullRestoreReported(failure, src, dst);
});

test('a folder restore fed chunk by chunk (as from the network) that runs out of space says so and leaves no unnamed partial file (tmpfs)', async (t) => {
  if (skipUnless(t, isRoot() ? undefined : 'needs root to mount a tmpfs')) return;
  const src = await scratchDir(t);
  spaceTree(src);
  const store = new MemChunkStore();
  const entries = await captureTree(src, store);
  const dst = smallTmpfs(t, '6m');
  const restore = createTreeRestore(entries, dst, { fileset: 1, fsType: 'directory' });
  let failure: unknown;
  try {
    await runRestore(restore, store, 3);
  } catch (err) {
    failure = err;
    await restore.abort(err);
  }
  assert.ok(failure, 'the restore fails');
  assertFullRestoreReported(failure, src, dst);
  // Later chunks are refused with the same error: nothing more is written after it.
  const another = [...restore.needed][0]!;
  await assert.rejects(restore.applyChunk(another, await store.readChunk(another)), (err) => err === failure);
});

test('times come back to the nanosecond through touch too, where perl cannot set them', async (t) => {
  const { src, store, entries } = await captured(t, false);
  const dst = await scratchDir(t);
  const restore = createTreeRestore(entries, dst, { fileset: 1, fsType: 'ext4', timesTool: 'touch' });
  await runRestore(restore, store, 5);
  assertSameTree(snapshot(dst), withoutSocket(snapshot(src)));
});

/** lsattr's letters for each path, without e (extents), which ext4 gives every file itself. */
function lsattr(root: string, rels: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const rel of rels) {
    const field = execFileSync('lsattr', ['-d', '--', join(root, rel)], { encoding: 'utf8' }).split(' ')[0]!;
    out[rel] = field.replace(/[-e]/g, '');
  }
  return out;
}

test('inode flags (immutable, append-only, nodump, noatime…) survive make and restore on ext4 (loop device), set after contents, times and xattrs', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  const work = mkdtempSync(join(tmpdir(), 'imgcast-flags-'));
  const img = join(work, 'ext4.img');
  const mnt = join(work, 'mnt');
  const locked: string[] = [];
  t.after(() => {
    // Immutable and append-only inodes cannot be removed: unlock them before the cleanup.
    for (const p of locked) spawnSync('chattr', ['-R', '-i', '-a', p]);
    spawnSync('umount', [mnt]);
    rmSync(work, { recursive: true, force: true });
  });
  execFileSync('truncate', ['-s', '64M', img]);
  execFileSync('mkfs.ext4', ['-q', '-F', img]);
  mkdirSync(mnt);
  execFileSync('mount', ['-o', 'loop', img, mnt]);
  const src = join(mnt, 'src');
  const dst = join(mnt, 'dst');
  locked.push(src, dst);
  mkdirSync(join(src, 'frozen-dir'), { recursive: true });
  writeFileSync(join(src, 'frozen-dir/inside'), 'in an immutable folder');
  mkdirSync(join(src, 'nodump-dir'));
  writeFileSync(join(src, 'nodump-dir/file'), 'in a nodump folder');
  writeFileSync(join(src, 'immutable'), 'cannot change');
  writeFileSync(join(src, 'append-only.log'), 'line 1\n');
  writeFileSync(join(src, 'nodump'), 'not for dump');
  writeFileSync(join(src, 'several'), 'nodump, noatime and sync');
  writeFileSync(join(src, 'big-immutable.bin'), bytes(7, 5 * 1024 * 1024));
  writeFileSync(join(src, 'plain'), 'no flags');
  execFileSync('setfattr', ['-n', 'user.note', '-v', 'kept', join(src, 'immutable')]);
  execFileSync('touch', ['-m', '-d', '@1600000000.123456789', join(src, 'immutable')]);
  execFileSync('chattr', ['+i', join(src, 'immutable'), join(src, 'big-immutable.bin')]);
  execFileSync('chattr', ['+a', join(src, 'append-only.log')]);
  execFileSync('chattr', ['+d', join(src, 'nodump'), join(src, 'nodump-dir')]);
  execFileSync('chattr', ['+dAS', join(src, 'several')]);
  execFileSync('chattr', ['+i', join(src, 'frozen-dir')]);
  const rels = [
    '.',
    'frozen-dir',
    'frozen-dir/inside',
    'nodump-dir',
    'nodump-dir/file',
    'immutable',
    'append-only.log',
    'nodump',
    'several',
    'big-immutable.bin',
    'plain',
  ];
  const want = lsattr(src, rels);
  assert.equal(want['immutable'], 'i');
  assert.equal(want['several'], 'SdA');

  const image = join(work, 'flags.imgc');
  await makeImage(src, image, { level: 'speed' });
  const reader = await ImageReader.open(image);
  const flags = Object.fromEntries(
    (reader.manifest.volumes[0] as FileVolume).entries.filter((e) => e.flags).map((e) => [e.path, e.flags]),
  );
  await reader.close();
  assert.deepEqual(flags, {
    'frozen-dir': 'i',
    'nodump-dir': 'd',
    immutable: 'i',
    'append-only.log': 'a',
    nodump: 'd',
    several: 'SdA',
    'big-immutable.bin': 'i',
  });

  const warnings: string[] = [];
  await restoreImage(image, dst, { fileset: 1, onWarning: (w) => warnings.push(w) });
  assert.deepEqual(warnings, []);
  assert.deepEqual(lsattr(dst, rels), want);
  // Contents, the folder's content, times and xattrs went in before the flags locked them.
  assert.equal(readFileSync(join(dst, 'frozen-dir/inside'), 'utf8'), 'in an immutable folder');
  assert.ok(
    readFileSync(join(dst, 'big-immutable.bin')).equals(readFileSync(join(src, 'big-immutable.bin'))),
  );
  assert.equal(lstatSync(join(dst, 'immutable'), { bigint: true }).mtimeNs, 1600000000123456789n);
  assert.equal(
    execFileSync('getfattr', ['--only-values', '-n', 'user.note', join(dst, 'immutable')], {
      encoding: 'utf8',
    }),
    'kept',
  );
  // (Its atime in the source moved when the capture read it.)
  const [got, had] = [snapshot(dst).get('frozen-dir')!, snapshot(src).get('frozen-dir')!];
  assert.deepEqual([got.mode, got.mtimeNs], [had.mode, had.mtimeNs]);
  // They hold: the immutable file refuses a write, the append-only one takes only appends.
  assert.throws(() => writeFileSync(join(dst, 'immutable'), 'changed'), { code: 'EPERM' });
  assert.throws(() => writeFileSync(join(dst, 'append-only.log'), 'overwrite'), { code: 'EPERM' });
});
