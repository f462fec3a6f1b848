import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { captureTree, type CaptureProgress } from '../../../src/volume/files/capture.ts';
import { CHUNK_SIZE, type FileEntry } from '../../../src/image/types.ts';
import { isRoot, skipUnless } from '../../helpers/env.ts';
import { MemChunkStore } from './memstore.ts';
import { buildTree, scratchDir, NS_MTIME, SMALL_FILES, bytes } from './tree.ts';

function byPath(entries: FileEntry[]): Map<string, FileEntry> {
  return new Map(entries.map((e) => [e.path, e]));
}

test('capture keeps every kind of entry with its metadata, parents first', async (t) => {
  const root = await scratchDir(t);
  buildTree(root, { rootOnly: false });
  const store = new MemChunkStore();
  const progress: CaptureProgress[] = [];
  const entries = await captureTree(root, store, { onProgress: (p) => progress.push(p), generation: 3 });
  const m = byPath(entries);

  assert.equal(entries[0]!.path, '.');
  assert.equal(entries[0]!.type, 'dir');
  const seen = new Set<string>();
  for (const e of entries) {
    const parent = e.path.includes('/') ? e.path.slice(0, e.path.lastIndexOf('/')) : '.';
    if (e.path !== '.') assert.ok(seen.has(parent), `${e.path} comes before its parent`);
    seen.add(e.path);
    assert.equal(e.addedIn, 3);
  }
  assert.equal(m.get('links/abs')!.linkTarget, '/etc/passwd');
  assert.equal(m.get('links/rel')!.linkTarget, '../plain.txt');
  assert.equal(m.get('links/dangling')!.type, 'symlink');
  assert.equal(m.get('fifo')!.type, 'fifo');
  assert.equal(m.get('sock')!.type, 'socket');
  assert.equal(m.get('suid')!.mode, 0o4755);
  assert.equal(m.get('sgid')!.mode, 0o2711);
  assert.equal(m.get('sticky')!.mode, 0o1777);
  assert.equal(m.get('empty')!.size, 0);
  assert.deepEqual(m.get('empty')!.extents, []);
  // Times are captured to the nanosecond.
  assert.equal(m.get('plain.txt')!.mtimeNs, NS_MTIME);
  assert.equal(m.get('plain.txt')!.xattrs?.['user.test'], Buffer.from('value one').toString('base64'));
  assert.equal(m.get('plain.txt')!.xattrs?.['user.empty'], '');
  assert.equal(m.get('small')!.xattrs?.['user.dir'], Buffer.from('on a directory').toString('base64'));
  assert.equal(m.get('odd/new\nline')!.xattrs?.['user.bin'], Buffer.from([0, 0xff, 0x10]).toString('base64'));
  assert.ok(m.has('odd/ünïcödé ☃') && m.has('odd/-leading-dash') && m.has('odd/back\\slash'));

  const last = progress.at(-1)!;
  assert.equal(last.files, entries.length);
  assert.ok(last.bytes > 2 * CHUNK_SIZE);
});

test('big files are cut into CHUNK_SIZE pieces aligned at the file start', async (t) => {
  const root = await scratchDir(t);
  buildTree(root, { rootOnly: false });
  const store = new MemChunkStore();
  const big = byPath(await captureTree(root, store)).get('big.bin')!;
  assert.deepEqual(
    big.extents!.map((x) => [x.offset, x.length, x.chunkOffset]),
    [
      [0, CHUNK_SIZE, 0],
      [CHUNK_SIZE, CHUNK_SIZE, 0],
      [2 * CHUNK_SIZE, 12345, 0],
    ],
  );
  const content = bytes(1, 2 * CHUNK_SIZE + 12345);
  for (const x of big.extents!) {
    assert.ok(store.chunks.get(x.chunk)!.equals(content.subarray(x.offset, x.offset + x.length)));
  }
});

test('small files are packed, duplicates stored once, a file may span two packs', async (t) => {
  const root = await scratchDir(t);
  buildTree(root, { rootOnly: false });
  const store = new MemChunkStore();
  const entries = await captureTree(root, store);
  const m = byPath(entries);
  const small = entries.filter((e) => e.path.startsWith('small/'));
  assert.equal(small.length, SMALL_FILES);
  const packs = new Set(small.flatMap((e) => e.extents!.map((x) => x.chunk)));
  assert.ok(packs.size >= 2 && packs.size <= 4, `${SMALL_FILES} small files in ${packs.size} chunks`);
  for (const id of packs) assert.ok(store.chunks.get(id)!.length <= CHUNK_SIZE);
  assert.ok(
    entries.some((e) => (e.extents?.length ?? 0) === 2 && !e.sparse),
    'some file spans two packs',
  );

  // Every extent reads back the file's bytes.
  for (const e of small) {
    const i = Number(e.path.slice(-4));
    const want = bytes(1000 + i, 3000 + ((i * 7919) % 30000));
    const got = Buffer.concat(
      e.extents!.map((x) => store.chunks.get(x.chunk)!.subarray(x.chunkOffset, x.chunkOffset + x.length)),
    );
    assert.ok(got.equals(want), e.path);
  }

  const [a, b, c] = ['dup/a', 'dup/b', 'dup/c'].map((p) => m.get(p)!);
  assert.deepEqual(b!.extents, a!.extents);
  assert.deepEqual(c!.extents, a!.extents);
  // The three copies of 50000 bytes cost one copy: the packs hold each unique file once.
  let unique = 0;
  const counted = new Set<string>();
  for (const e of entries) {
    for (const x of e.extents ?? []) {
      const key = `${x.chunk}:${x.chunkOffset}`;
      if (!counted.has(key)) unique += x.length;
      counted.add(key);
    }
  }
  let stored = 0;
  for (const buf of store.chunks.values()) stored += buf.length;
  assert.equal(stored, unique);
});

test('small files of the same size are stored once only when their bytes are equal', async (t) => {
  const root = await scratchDir(t);
  mkdirSync(join(root, 'same'));
  const base = bytes(7, 4096);
  const differentEnd = Buffer.from(base);
  differentEnd[4095] = differentEnd[4095]! ^ 1;
  const differentStart = Buffer.from(base);
  differentStart[0] = differentStart[0]! ^ 1;
  writeFileSync(join(root, 'same/a'), base);
  writeFileSync(join(root, 'same/b'), differentEnd);
  writeFileSync(join(root, 'same/c'), differentStart);
  writeFileSync(join(root, 'same/d'), base);
  const store = new MemChunkStore();
  const m = byPath(await captureTree(root, store));
  const read = (p: string): Buffer =>
    Buffer.concat(
      m
        .get(p)!
        .extents!.map((x) => store.chunks.get(x.chunk)!.subarray(x.chunkOffset, x.chunkOffset + x.length)),
    );
  assert.ok(read('same/a').equals(base));
  assert.ok(read('same/b').equals(differentEnd));
  assert.ok(read('same/c').equals(differentStart));
  assert.ok(read('same/d').equals(base));
  assert.deepEqual(m.get('same/d')!.extents, m.get('same/a')!.extents);
  assert.notDeepEqual(m.get('same/b')!.extents, m.get('same/a')!.extents);
  assert.notDeepEqual(m.get('same/c')!.extents, m.get('same/a')!.extents);
});

test('sparse files keep only their data blocks; zero-filled ordinary files keep their zeros', async (t) => {
  const root = await scratchDir(t);
  buildTree(root, { rootOnly: false });
  const store = new MemChunkStore();
  const m = byPath(await captureTree(root, store));
  const sparse = m.get('sparse.img')!;
  assert.equal(sparse.sparse, true);
  assert.equal(sparse.size, 64 * 1024 * 1024);
  const stored = sparse.extents!.reduce((n, x) => n + x.length, 0);
  assert.ok(stored <= 4 * 4096, `sparse file stores ${stored} bytes`);
  assert.ok(sparse.extents!.some((x) => x.offset === 1024 * 1024));
  const zeros = m.get('zeros')!;
  assert.equal(zeros.sparse, undefined);
  assert.equal(
    zeros.extents!.reduce((n, x) => n + x.length, 0),
    20000,
  );
});

test('hard links share a group and each name carries the extents', async (t) => {
  const root = await scratchDir(t);
  buildTree(root, { rootOnly: false });
  const m = byPath(await captureTree(root, new MemChunkStore()));
  const [one, two, three] = ['hard/one', 'hard/two', 'hard/sub/three'].map((p) => m.get(p)!);
  assert.ok(one!.hardlinkGroup !== undefined);
  assert.equal(two!.hardlinkGroup, one!.hardlinkGroup);
  assert.equal(three!.hardlinkGroup, one!.hardlinkGroup);
  assert.deepEqual(three!.extents, one!.extents);
  assert.ok(one!.extents!.length > 0);
  assert.equal(m.get('plain.txt')!.hardlinkGroup, undefined);
});

test('onPlaced says where every run of data goes as its chunk is named, each run once, hard links and repeats included', async (t) => {
  const root = await scratchDir(t);
  buildTree(root, { rootOnly: false });
  /** A store that names chunks late, so runs wait for their chunk's id. */
  class SlowStore extends MemChunkStore {
    override async putChunk(raw: Buffer) {
      await new Promise((r) => setTimeout(r, 2));
      return super.putChunk(raw);
    }
  }
  const store = new SlowStore();
  const placed: string[] = [];
  const entries = await captureTree(root, store, {
    onPlaced: (uses) => {
      for (const { entry, extent: x } of uses) {
        // The chunk is named and holds the run's bytes when the run is told.
        assert.ok(store.chunks.has(x.chunk), `${entry.path}: chunk not stored yet`);
        assert.ok(x.chunkOffset + x.length <= store.chunks.get(x.chunk)!.length);
        placed.push(`${entry.path} ${x.offset} ${x.length} ${x.chunkOffset} ${x.chunk}`);
      }
    },
  });
  const want = entries.flatMap((e) =>
    (e.extents ?? []).map((x) => `${e.path} ${x.offset} ${x.length} ${x.chunkOffset} ${x.chunk}`),
  );
  assert.deepEqual([...placed].sort(), [...want].sort());
  assert.equal(new Set(placed).size, placed.length, 'each run once');
  for (const p of ['hard/two', 'hard/sub/three', 'dup/b', 'big.bin', 'sparse.img']) {
    assert.ok(
      placed.some((l) => l.startsWith(`${p} `)),
      `${p} was placed`,
    );
  }
});

test('--at places the tree under a path; abort stops the walk', async (t) => {
  const root = await scratchDir(t);
  mkdirSync(join(root, 'd'));
  writeFileSync(join(root, 'd/f'), 'x');
  const entries = await captureTree(root, new MemChunkStore(), { at: '/opt/./drivers/' });
  assert.deepEqual(
    entries.map((e) => e.path),
    ['opt/drivers', 'opt/drivers/d', 'opt/drivers/d/f'],
  );

  for (let i = 0; i < 2000; i++) writeFileSync(join(root, `n${i}`), '');
  const ac = new AbortController();
  ac.abort(new Error('stop now'));
  await assert.rejects(captureTree(root, new MemChunkStore(), { signal: ac.signal }), /stop now/);
});

test('capture of a missing or non-directory source fails clearly', async (t) => {
  const root = await scratchDir(t);
  await assert.rejects(captureTree(join(root, 'nope'), new MemChunkStore()), { code: 'E_CAPTURE_IO' });
  writeFileSync(join(root, 'file'), 'x');
  await assert.rejects(captureTree(join(root, 'file'), new MemChunkStore()), {
    code: 'E_CAPTURE_IO',
    message: /not a directory/,
  });
});

test('one-file-system: a mount below the root is recorded but not entered (root)', async (t) => {
  if (skipUnless(t, isRoot() ? undefined : 'needs root to mount a tmpfs')) return;
  const mounted: string[] = [];
  // Registered before tempDir so it runs before the directory is removed.
  t.after(() => {
    for (const m of mounted) execFileSync('umount', [m]);
  });
  const root = await scratchDir(t);
  mkdirSync(join(root, 'mnt'));
  writeFileSync(join(root, 'top'), 'x');
  execFileSync('mount', ['-t', 'tmpfs', 'imgcast-test', join(root, 'mnt')]);
  mounted.push(join(root, 'mnt'));
  writeFileSync(join(root, 'mnt/inside'), 'y');
  const paths = (await captureTree(root, new MemChunkStore())).map((e) => e.path);
  assert.deepEqual(paths, ['.', 'mnt', 'top']);
  const all = (await captureTree(root, new MemChunkStore(), { oneFileSystem: false })).map((e) => e.path);
  assert.deepEqual(all, ['.', 'mnt', 'mnt/inside', 'top']);
});
