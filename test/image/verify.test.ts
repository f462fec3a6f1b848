import assert from 'node:assert/strict';
import { open, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';

import { ImageError } from '../../src/image/errors.ts';
import { RECORD_HEADER_SIZE } from '../../src/image/format.ts';
import { ImageReader } from '../../src/image/reader.ts';
import type { FileVolume } from '../../src/image/types.ts';
import { verifyImage } from '../../src/image/verify.ts';
import { tempDir } from '../helpers/env.ts';
import { smallImage } from './fixtures.ts';

async function flipInChunk(path: string, id: string): Promise<void> {
  const r = await ImageReader.open(path);
  const info = r.chunk(id)!;
  await r.close();
  const fh = await open(path, 'r+');
  const b = Buffer.alloc(1);
  const at = info.offset + RECORD_HEADER_SIZE + Math.floor(info.storedLength / 3);
  await fh.read(b, 0, 1, at);
  b[0]! ^= 0x80;
  await fh.write(b, 0, 1, at);
  await fh.close();
}

test('a sound image verifies clean and reports progress', async (t) => {
  const dir = await tempDir(t);
  const { path } = await smallImage(dir);
  const seen: Array<[number, number]> = [];
  const report = await verifyImage(path, { onProgress: (d, n) => seen.push([d, n]) });
  assert.equal(report.ok, true);
  assert.deepEqual(report.problems, []);
  assert.equal(report.chunksTotal, 5);
  assert.equal(report.chunksChecked, 5);
  assert.equal(report.bytesChecked, 375_000);
  assert.equal(report.generation, 1);
  assert.deepEqual(seen.at(-1), [5, 5]);
});

test('verify lists every damaged chunk with the files it holds', async (t) => {
  const dir = await tempDir(t);
  const { path, manifest } = await smallImage(dir);
  const entries = (manifest.volumes[0] as FileVolume).entries;
  const passwd = entries.find((e) => e.path === 'etc/passwd')!.extents![0]!.chunk;
  const tool = entries.find((e) => e.path === 'bin/tool')!.extents![0]!.chunk;
  await flipInChunk(path, passwd);
  await flipInChunk(path, tool);
  const report = await verifyImage(path);
  assert.equal(report.ok, false);
  assert.equal(report.chunksChecked, 5);
  assert.equal(report.problems.length, 2);
  for (const [id, file] of [
    [passwd, 'etc/passwd'],
    [tool, 'bin/tool'],
  ] as const) {
    const p = report.problems.find((x) => x.chunk === id);
    assert.ok(p, `problem for ${file}`);
    assert.equal(p.code, 'E_CHUNK_CORRUPT');
    assert.match(p.message, new RegExp(file.replace('/', '\\/')));
    assert.deepEqual(
      p.usage?.map((u) => (u.kind === 'file' ? u.path : u.kind)),
      [file],
    );
  }
});

test('a damaged trailer is a reported problem, a missing file an exception', async (t) => {
  const dir = await tempDir(t);
  const { path } = await smallImage(dir);
  const data = await readFile(path);
  data[data.length - 100]! ^= 1;
  await writeFile(path, data);
  const report = await verifyImage(path);
  assert.equal(report.ok, false);
  assert.equal(report.problems[0]?.code, 'E_IMAGE_CORRUPT');
  await assert.rejects(verifyImage(join(dir, 'absent.imgc')), (err: unknown) => {
    assert.ok(err instanceof ImageError && err.code === 'E_IMAGE_IO');
    return true;
  });
});
