/**
 * The receiving side of a live session, short of the network: placements checked against
 * the layout (parseLiveDelta), and a live restore driven by hand through its ChunkConsumer
 * (chunks, placements, a run reusing a chunk written before, the seal, finish) into a folder.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { lstat, mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { liveRestoreConsumer, parseLiveDelta } from '../../src/engine/live-restore.ts';
import type { FileEntry, Manifest } from '../../src/image/types.ts';
import { TransportError } from '../../src/transport/errors.ts';
import { ImageError } from '../../src/image/errors.ts';
import type { SessionInfo } from '../../src/transport/types.ts';
import { tempDir } from '../helpers/env.ts';

const id = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const A = 'a'.repeat(64);

function diskLayout(): Manifest {
  return {
    formatVersion: 1,
    imageId: 'x',
    createdAt: '2026-01-01T00:00:00Z',
    generation: 1,
    level: 'speed',
    source: { kind: 'disk', path: '/dev/sda' },
    disk: {
      sizeBytes: 64 << 20,
      sectorSize: 512,
      table: 'gpt',
      partitions: [
        { number: 1, startBytes: 1 << 20, sizeBytes: 32 << 20, type: 'x', volume: 0 },
        { number: 2, startBytes: 33 << 20, sizeBytes: 16 << 20, type: 'x', volume: 1 },
      ],
      bootAreas: [
        { offset: 0, length: 1 << 20, extents: [] },
        { offset: (64 << 20) - 16896, length: 16896, extents: [] },
      ],
    },
    volumes: [
      { kind: 'files', index: 0, sizeBytes: 32 << 20, fs: { type: 'ext4' }, entries: [] },
      { kind: 'raw', index: 1, sizeBytes: 16 << 20, extents: [] },
    ],
    filesets: [],
  };
}

test('placements are checked against the layout before anything is written', () => {
  const layout = diskLayout();
  assert.deepEqual(
    parseLiveDelta(
      {
        done: [[0, 'etc/hostname', 0, 5, 0o644, 0, 0, '1700000000000000000', '-5', 1]],
        files: [[0, 'etc/hostname', 0, 0, 5, 100, A]],
        raw: [
          [1, 4096, 10, A],
          [-2, (64 << 20) - 512, 512, A],
        ],
      },
      layout,
    ),
    {
      done: [
        {
          volume: 0,
          path: 'etc/hostname',
          group: 0,
          size: 5,
          mode: 0o644,
          uid: 0,
          gid: 0,
          atimeNs: '1700000000000000000',
          mtimeNs: '-5',
          runs: 1,
        },
      ],
      runs: [
        {
          kind: 'file',
          volume: 0,
          path: 'etc/hostname',
          group: 0,
          fileOffset: 0,
          length: 5,
          chunkOffset: 100,
          chunk: A,
        },
        { kind: 'raw', volume: 1, offset: 4096, length: 10, chunk: A },
        { kind: 'boot', area: 1, offset: (64 << 20) - 512, length: 512, chunk: A },
      ],
    },
  );
  assert.deepEqual(parseLiveDelta(null, layout), { runs: [], done: [] });
  const refused: Array<[unknown, RegExp]> = [
    ['text', /not an object/],
    [{ files: 'x' }, /files is not a list/],
    [{ files: [[0, 'a', 0, 0, 5, 0]] }, /not \[volume, path/],
    [{ files: [[1, 'a', 0, 0, 5, 0, A]] }, /volume 1 holds no files/],
    [{ files: [[7, 'a', 0, 0, 5, 0, A]] }, /volume 7 holds no files/],
    [{ files: [[0, '.', 0, 0, 5, 0, A]] }, /has no path/],
    [{ files: [[0, 'a', 0, -1, 5, 0, A]] }, /bad group, offset or length/],
    [{ files: [[0, 'a', 0, 0, 0, 0, A]] }, /bad group, offset or length/],
    [{ files: [[0, 'a', 0, 0, 5, 0, 'nope']] }, /names no chunk/],
    [{ raw: [[0, 0, 10, A]] }, /volume 0 is not raw/],
    [{ raw: [[1, (16 << 20) - 5, 10, A]] }, /raw volume 1 does not hold/],
    [{ raw: [[-3, 0, 10, A]] }, /boot area 3 does not hold/],
    [{ raw: [[-1, (1 << 20) - 5, 10, A]] }, /boot area 1 does not hold/],
    [{ raw: [[1.5, 0, 10, A]] }, /names no volume/],
    [{ done: {} }, /done is not a list/],
    [{ done: [[0, 'a', 0, 5, 0o644, 0, 0, '1', '1']] }, /not \[volume, path, group/],
    [{ done: [[1, 'a', 0, 5, 0o644, 0, 0, '1', '1', 1]] }, /volume 1 holds no files/],
    [{ done: [[0, 'a', 0, 5, 0o17777, 0, 0, '1', '1', 1]] }, /bad group, size, mode/],
    [{ done: [[0, 'a', 0, -5, 0o644, 0, 0, '1', '1', 1]] }, /bad group, size, mode/],
    [{ done: [[0, 'a', 0, 5, 0o644, 0, 0, '1.5', '1', 1]] }, /bad times/],
    [{ done: [[0, 'a', 0, 5, 0o644, 0, 0, '1', 7, 1]] }, /bad times/],
  ];
  for (const [delta, why] of refused) {
    assert.throws(
      () => parseLiveDelta(delta, layout),
      (e: unknown) => e instanceof TransportError && e.code === 'E_CONSUMER' && why.test(e.message),
      JSON.stringify(delta),
    );
  }
  for (const path of ['../etc/passwd', '/etc/passwd', 'a//b', 'a/./b']) {
    assert.throws(
      () => parseLiveDelta({ files: [[0, path, 0, 0, 5, 0, A]] }, layout),
      (e: unknown) => e instanceof ImageError && e.code === 'E_PATH_ESCAPE',
      path,
    );
  }
});

function folderLayout(entries: FileEntry[]): Manifest {
  return {
    formatVersion: 1,
    imageId: 'x',
    createdAt: '2026-01-01T00:00:00Z',
    generation: 1,
    level: 'speed',
    source: { kind: 'directory', path: '/src' },
    volumes: [{ kind: 'files', index: 0, fs: { type: 'directory' }, entries }],
    filesets: [],
  };
}

const meta = (path: string, type: FileEntry['type'], extra: Partial<FileEntry> = {}): FileEntry => ({
  path,
  type,
  mode: type === 'dir' ? 0o755 : 0o644,
  uid: process.getuid?.() ?? 0,
  gid: process.getgid?.() ?? 0,
  mtimeNs: '1700000000123456789',
  atimeNs: '1700000000123456789',
  ...extra,
});

const done = (path: string, group: number, size: number, mode: number, runs: number) =>
  [
    0,
    path,
    group,
    size,
    mode,
    process.getuid?.() ?? 0,
    process.getgid?.() ?? 0,
    '1700000000123456789',
    '1700000000123456789',
    runs,
  ] as const;

test('a live restore into a folder: runs written as chunks come, a reused chunk copied from the target, the rest made at the end', async (t) => {
  const dir = await tempDir(t);
  const target = join(dir, 'target');
  const pack = Buffer.concat([Buffer.from('hello\n'), randomBytes(5000)]);
  const big = randomBytes(3000);
  const P = id(pack);
  const B = id(big);
  const entries: FileEntry[] = [
    meta('.', 'dir'),
    meta('etc', 'dir', { mode: 0o700 }),
    meta('etc/hello', 'file', { size: 6, extents: [{ offset: 0, length: 6, chunk: P, chunkOffset: 0 }] }),
    meta('etc/rest', 'file', {
      size: 5000,
      extents: [{ offset: 0, length: 5000, chunk: P, chunkOffset: 6 }],
    }),
    meta('big', 'file', {
      size: 3000,
      hardlinkGroup: 1,
      extents: [{ offset: 0, length: 3000, chunk: B, chunkOffset: 0 }],
    }),
    meta('etc/big-link', 'file', {
      size: 3000,
      hardlinkGroup: 1,
      extents: [{ offset: 0, length: 3000, chunk: B, chunkOffset: 0 }],
    }),
    // Found again in another pack later: the same bytes, placed after the chunk was written.
    meta('copy-of-rest', 'file', {
      size: 5000,
      mode: 0o600,
      extents: [{ offset: 0, length: 5000, chunk: P, chunkOffset: 6 }],
    }),
    meta('sparse', 'file', {
      size: 1 << 20,
      sparse: true,
      extents: [{ offset: 4096, length: 6, chunk: P, chunkOffset: 0 }],
    }),
    meta('link', 'symlink', { linkTarget: 'etc/hello' }),
    meta('empty', 'file', { size: 0, extents: [] }),
  ];
  const session: SessionInfo = {
    nonce: '0123456789abcdef',
    group: '239.1.1.1',
    port: 1,
    chunks: [],
    meta: { kind: 'live', layout: folderLayout([]) },
    encrypted: false,
    sender: 'test',
    live: true,
  };
  const c = await liveRestoreConsumer(session, target);
  await c.prepare(session);
  await c.extend!({
    chunks: [{ id: P, codec: 0, storedLength: pack.length, rawLength: pack.length }],
    metaDelta: {
      files: [
        [0, 'etc/hello', 0, 0, 6, 0, P],
        [0, 'etc/rest', 0, 0, 5000, 6, P],
        [0, 'sparse', 0, 4096, 6, 0, P],
      ],
      // Finished files: what they look like once their runs are written.
      done: [
        done('etc/hello', 0, 6, 0o644, 1),
        // Said otherwise than the final manifest will: the last pass sets what the manifest says.
        done('etc/rest', 0, 5000, 0o640, 1),
        done('sparse', 0, 1 << 20, 0o644, 1),
        done('empty', 0, 0, 0o644, 0),
      ],
    },
  });
  assert.equal(
    (await lstat(join(target, 'empty'))).mode & 0o7777,
    0o644,
    'a file without data is finished at once',
  );
  await c.apply(P, pack);
  assert.equal(await readFile(join(target, 'etc/hello'), 'utf8'), 'hello\n', 'written as the chunk came');
  const hello = await lstat(join(target, 'etc/hello'));
  assert.equal(hello.mode & 0o7777, 0o644, 'finished as its last run was written');
  assert.equal(Math.round(hello.mtimeMs), 1700000000123);
  await c.extend!({
    chunks: [{ id: B, codec: 0, storedLength: big.length, rawLength: big.length }],
    metaDelta: {
      files: [
        [0, 'big', 1, 0, 3000, 0, B],
        [0, 'etc/big-link', 1, 0, 3000, 0, B],
        [0, 'copy-of-rest', 0, 0, 5000, 6, P],
      ],
      done: [
        done('big', 1, 3000, 0o644, 1),
        done('etc/big-link', 1, 3000, 0o644, 1),
        done('copy-of-rest', 0, 5000, 0o600, 1),
      ],
    },
  });
  assert.ok(
    (await readFile(join(target, 'copy-of-rest'))).equals(pack.subarray(6)),
    'copied from etc/rest at once',
  );
  await c.apply(B, big);
  await assert.rejects(lstat(join(target, 'etc/big-link')), 'a later name of a hard link waits for the end');
  await c.seal!({ kind: 'image', fileset: 1, manifest: folderLayout(entries) });
  await c.finish();

  assert.ok((await readFile(join(target, 'big'))).equals(big));
  const [a, b] = [await lstat(join(target, 'big')), await lstat(join(target, 'etc/big-link'))];
  assert.equal(a.ino, b.ino, 'hard link');
  assert.equal((await lstat(join(target, 'link'))).isSymbolicLink(), true);
  const sp = await lstat(join(target, 'sparse'));
  assert.equal(sp.size, 1 << 20);
  assert.ok(sp.blocks * 512 < 64 * 1024, `sparse file kept its hole (${sp.blocks} blocks)`);
  assert.equal((await lstat(join(target, 'etc'))).mode & 0o777, 0o700);
  assert.equal((await lstat(join(target, 'copy-of-rest'))).mode & 0o777, 0o600);
  assert.equal((await lstat(join(target, 'etc/rest'))).mode & 0o777, 0o644, 'the manifest wins');
  assert.equal(Math.round((await lstat(join(target, 'etc/hello'))).mtimeMs), 1700000000123);
  assert.equal((await lstat(join(target, 'empty'))).size, 0);
});

test('a live restore never writes through a symlink it finds in a forced folder', async (t) => {
  const dir = await tempDir(t);
  const target = join(dir, 'target');
  const outside = join(dir, 'outside');
  await mkdir(target);
  await mkdir(outside);
  await symlink(outside, join(target, 'etc'));
  await writeFile(join(target, 'old'), 'x');
  const data = Buffer.from('secret\n');
  const session: SessionInfo = {
    nonce: '0123456789abcdef',
    group: '239.1.1.1',
    port: 1,
    chunks: [],
    meta: { kind: 'live', layout: folderLayout([]) },
    encrypted: false,
    sender: 'test',
    live: true,
  };
  const c = await liveRestoreConsumer(session, target, { force: true });
  await c.prepare(session);
  await c.extend!({
    chunks: [{ id: id(data), codec: 0, storedLength: data.length, rawLength: data.length }],
    metaDelta: { files: [[0, 'etc/passwd', 0, 0, data.length, 0, id(data)]] },
  });
  await assert.rejects(
    c.apply(id(data), data),
    (e: unknown) => e instanceof ImageError && e.code === 'E_PATH_ESCAPE',
  );
  await assert.rejects(lstat(join(outside, 'passwd')), 'nothing was written outside the target');
  await c.abort(new Error('test'));
});
