import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { DiskError } from '../../src/disk/errors.ts';
import { captureRaw, createRawRestore, nonZeroRuns } from '../../src/disk/raw.ts';
import { CHUNK_SIZE, type ChunkSink } from '../../src/image/types.ts';
import { tempDir } from '../helpers/env.ts';

const MiB = 1024 * 1024;

function memorySink(): ChunkSink & { chunks: Map<string, Buffer> } {
  const chunks = new Map<string, Buffer>();
  return {
    chunks,
    async putChunk(raw) {
      const id = createHash('sha256').update(raw).digest('hex');
      chunks.set(id, Buffer.from(raw));
      return { id, rawLength: raw.length };
    },
  };
}

/** 12 MiB + 1000 bytes: random runs, zero runs, a run across a CHUNK_SIZE boundary, a repeated block, an odd tail. */
function sample(): Buffer {
  const b = Buffer.alloc(12 * MiB + 1000);
  randomBytes(64 * 1024).copy(b, 0);
  randomBytes(10000).copy(b, 1 * MiB + 123);
  randomBytes(2 * MiB).copy(b, CHUNK_SIZE - MiB);
  const repeated = randomBytes(8192);
  repeated.copy(b, 9 * MiB);
  repeated.copy(b, 10 * MiB);
  b[b.length - 1] = 7;
  return b;
}

test('nonZeroRuns works at 4 KiB granularity, including a short tail', () => {
  const b = Buffer.alloc(4096 * 4 + 10);
  b[5000] = 1;
  b[4096 * 4 + 3] = 1;
  assert.deepEqual(nonZeroRuns(b, b.length), [
    { start: 4096, end: 8192 },
    { start: 16384, end: 16394 },
  ]);
  assert.deepEqual(nonZeroRuns(Buffer.alloc(9000), 9000), []);
});

test('raw capture stores only non-zero runs, each within a chunk, and restores byte-exact', async (t) => {
  const dir = await tempDir(t);
  const data = sample();
  const src = join(dir, 'src.img');
  // The range sits at an offset inside a larger file, as a partition does on a disk.
  const offset = 3 * MiB;
  await writeFile(src, Buffer.concat([randomBytes(offset), data, randomBytes(MiB)]));
  const sink = memorySink();
  const extents = await captureRaw(src, offset, data.length, sink);

  for (const x of extents) {
    assert.ok(x.length <= CHUNK_SIZE && x.length > 0);
    assert.equal(Math.floor(x.offset / CHUNK_SIZE), Math.floor((x.offset + x.length - 1) / CHUNK_SIZE));
    assert.ok(sink.chunks.get(x.chunk)!.equals(data.subarray(x.offset, x.offset + x.length)));
  }
  const stored = extents.reduce((n, x) => n + x.length, 0);
  assert.ok(stored < 2.2 * MiB + 100 * 1024, `stored ${stored} bytes of mostly-zero data`);
  // The repeated 8 KiB block is one chunk used twice.
  assert.equal(new Set(extents.map((x) => x.chunk)).size, extents.length - 1);

  for (const fresh of [true, false]) {
    const dst = join(dir, `dst-${fresh}.img`);
    if (fresh) {
      await writeFile(dst, '');
      await truncate(dst, offset + data.length + MiB);
    } else {
      await writeFile(dst, Buffer.alloc(offset + data.length + MiB, 0xee));
    }
    const r = createRawRestore(dst, offset, data.length, extents, offset, { label: 'partition 3' });
    assert.equal(r.needed.size, extents.length - 1);
    await r.prepare();
    // Reverse order, as the network might deliver them.
    for (const id of [...r.needed].reverse()) await r.applyChunk(id, sink.chunks.get(id)!);
    await r.finish();
    assert.deepEqual(r.progress(), { bytesDone: stored, bytesTotal: stored });
    const out = await readFile(dst);
    assert.ok(
      out.subarray(offset, offset + data.length).equals(data),
      `restored range equals source (fresh=${fresh})`,
    );
    // Outside the range nothing was touched.
    assert.equal(out[offset - 1], fresh ? 0 : 0xee);
    assert.equal(out[offset + data.length], fresh ? 0 : 0xee);
  }
});

test('raw restore refuses to finish with a chunk missing, and rejects a wrong-sized chunk', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src.img');
  const data = Buffer.concat([randomBytes(8192), Buffer.alloc(8192), randomBytes(4096)]);
  await writeFile(src, data);
  const sink = memorySink();
  const extents = await captureRaw(src, 0, data.length, sink);
  assert.equal(extents.length, 2);
  const dst = join(dir, 'dst.img');
  await writeFile(dst, Buffer.alloc(data.length));
  const r = createRawRestore(dst, 0, data.length, extents, 0);
  await r.prepare();
  await assert.rejects(r.applyChunk(extents[0]!.chunk, Buffer.alloc(10)), (e: unknown) => {
    assert.ok(e instanceof DiskError);
    assert.match(e.message, /holds 10 bytes but the extent at 0 needs 8192/);
    return true;
  });
  await r.applyChunk(extents[0]!.chunk, sink.chunks.get(extents[0]!.chunk)!);
  await assert.rejects(r.finish(), (e: unknown) => {
    assert.ok(e instanceof DiskError && e.code === 'E_DISK_INCOMPLETE');
    assert.match(e.message, /: 1 chunk never arrived, e\.g\. /);
    return true;
  });
  await r.abort(new Error('test'));
  // A target that cannot be opened is named, with the reason in words and the errno.
  const gone = createRawRestore(join(dir, 'gone.img'), 0, data.length, extents, 0);
  await assert.rejects(gone.prepare(), (e: unknown) => {
    assert.ok(e instanceof DiskError && e.code === 'E_DISK_IO');
    assert.equal(
      e.message,
      `cannot open ${join(dir, 'gone.img')} for writing: no such file or directory (ENOENT)`,
    );
    return true;
  });
});

test('capture of a range past the end of the file is an I/O error naming the file', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'short.img');
  await writeFile(src, randomBytes(4096));
  await assert.rejects(captureRaw(src, 0, 8192, memorySink()), (e: unknown) => {
    assert.ok(e instanceof DiskError);
    assert.equal(e.code, 'E_DISK_IO');
    assert.match(e.message, /short\.img ends at byte 4096/);
    return true;
  });
  await assert.rejects(captureRaw(join(dir, 'none.img'), 0, 4096, memorySink()), (e: unknown) => {
    assert.ok(e instanceof DiskError && e.code === 'E_DISK_IO');
    assert.equal(e.message, `cannot open ${join(dir, 'none.img')}: no such file or directory (ENOENT)`);
    return true;
  });
});
