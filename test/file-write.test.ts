import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';

import { WRITE_PIECE, writeAll, writeFull, writeFullAt, writeFullSync } from '../src/file-write.ts';

function scratch(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'imgcast-file-write-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A FileHandle that records each write's length and writes at most `cap` bytes per call. */
function recordingHandle(cap: number): { fh: FileHandle; lengths: number[]; file: Buffer } {
  const file = Buffer.alloc(4 * WRITE_PIECE + 100);
  const lengths: number[] = [];
  const write = async (buf: Uint8Array, offset: number, length: number, position: number) => {
    lengths.push(length);
    const n = Math.min(length, cap);
    file.set(buf.subarray(offset, offset + n), position);
    return { bytesWritten: n, buffer: buf };
  };
  const writev = async (bufs: Uint8Array[], position: number) => {
    const all = Buffer.concat(bufs);
    return { bytesWritten: (await write(all, 0, all.length, position)).bytesWritten, buffers: bufs };
  };
  return { fh: { write, writev } as unknown as FileHandle, lengths, file };
}

/** A write's length (none, or over several pieces), offset into its source, and position in the file. */
const placements = [
  fc.integer({ min: 0, max: 3 * WRITE_PIECE + 7 }),
  fc.integer({ min: 0, max: 1000 }),
  fc.integer({ min: 0, max: 100_000 }),
] as const;

/** The file holds src[offset, offset + length) at `position`, zeros before it and nothing after. */
function assertPlaced(path: string, src: Buffer, offset: number, length: number, position: number): void {
  const got = readFileSync(path);
  assert.equal(got.length, length === 0 ? 0 : position + length);
  if (length > 0) {
    assert.ok(got.subarray(0, position).every((b) => b === 0));
    assert.deepEqual(got.subarray(position), src.subarray(offset, offset + length));
  }
}

test('writeFullSync puts every byte where asked, in pieces no bigger than WRITE_PIECE', (t) => {
  const dir = scratch(t);
  fc.assert(
    fc.property(...placements, (length, offset, position) => {
      const src = randomBytes(offset + length);
      const path = join(dir, 'f');
      const fd = openSync(path, 'w');
      try {
        writeFullSync(fd, src, offset, length, position);
      } finally {
        closeSync(fd);
      }
      assertPlaced(path, src, offset, length, position);
    }),
    { numRuns: 40 },
  );
});

test('writeFullSync on a closed descriptor throws the system error', () => {
  const fd = openSync(join(tmpdir(), `imgcast-fw-${process.pid}`), 'w');
  closeSync(fd);
  rmSync(join(tmpdir(), `imgcast-fw-${process.pid}`));
  assert.throws(() => writeFullSync(fd, Buffer.alloc(10), 0, 10, 0), { code: 'EBADF' });
});

test('writeFull asks for at most WRITE_PIECE per call and finishes short writes', async () => {
  const src = randomBytes(3 * WRITE_PIECE + 17);
  const { fh, lengths, file } = recordingHandle(WRITE_PIECE / 4 + 3);
  await writeFull(fh, src, 5, src.length - 5, 40);
  assert.deepEqual(file.subarray(40, 40 + src.length - 5), src.subarray(5));
  assert.ok(
    lengths.every((n) => n > 0 && n <= WRITE_PIECE),
    `lengths ${lengths.slice(0, 5).join(',')}...`,
  );
  // Each call takes only `cap` bytes, so it takes exactly this many calls to finish.
  assert.equal(lengths.length, Math.ceil((src.length - 5) / (WRITE_PIECE / 4 + 3)));
});

test('writeFull fails rather than spin when the file takes no bytes', async () => {
  const { fh } = recordingHandle(0);
  await assert.rejects(writeFull(fh, Buffer.alloc(100), 0, 100, 0), /no progress/);
});

test('writeAll: small buffers in one writev, big ones in pieces, a short writev finished', async () => {
  const small = [randomBytes(100), randomBytes(50)];
  const one = recordingHandle(1 << 30);
  await writeAll(one.fh, small, 7);
  assert.deepEqual(one.lengths, [150]);
  assert.deepEqual(one.file.subarray(7, 157), Buffer.concat(small));

  const big = [randomBytes(30), randomBytes(2 * WRITE_PIECE + 1), randomBytes(20)];
  const many = recordingHandle(1 << 30);
  await writeAll(many.fh, big, 3);
  assert.ok(many.lengths.every((n) => n <= WRITE_PIECE));
  assert.deepEqual(many.file.subarray(3, 3 + 2 * WRITE_PIECE + 51), Buffer.concat(big));

  const short = recordingHandle(60);
  const parts = [randomBytes(40), randomBytes(40), randomBytes(40)];
  await writeAll(short.fh, parts, 0);
  assert.deepEqual(short.file.subarray(0, 120), Buffer.concat(parts));
  assert.equal(short.lengths[0], 120);
});

test('writeAll through a real file handle', async (t) => {
  const path = join(scratch(t), 'f');
  const bufs = [randomBytes(10), randomBytes(WRITE_PIECE + 3), Buffer.alloc(0), randomBytes(9)];
  const fh = await open(path, 'w');
  try {
    await writeAll(fh, bufs, 11);
  } finally {
    await fh.close();
  }
  const got = readFileSync(path);
  assert.deepEqual(got.subarray(11), Buffer.concat(bufs));
});

test('writeFullAt puts every byte where asked, through a descriptor, off the calling thread', async (t) => {
  const dir = scratch(t);
  await fc.assert(
    fc.asyncProperty(...placements, async (length, offset, position) => {
      const src = randomBytes(offset + length);
      const path = join(dir, 'f');
      const fd = openSync(path, 'w');
      try {
        await writeFullAt(fd, src, offset, length, position);
      } finally {
        closeSync(fd);
      }
      assertPlaced(path, src, offset, length, position);
    }),
    { numRuns: 40 },
  );
});

test('writeFullAt refuses a descriptor it cannot write with the system error', async (t) => {
  const path = join(scratch(t), 'f');
  const fd = openSync(path, 'w');
  closeSync(fd);
  const ro = openSync(path, 'r');
  try {
    await assert.rejects(writeFullAt(ro, Buffer.alloc(10), 0, 10, 0), { code: 'EBADF' });
  } finally {
    closeSync(ro);
  }
});
