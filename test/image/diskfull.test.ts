/** Failures of background writes on a real, really full filesystem (a 2 MiB tmpfs). */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';

import { ImageError } from '../../src/image/errors.ts';
import { ImageReader } from '../../src/image/reader.ts';
import type { ChunkRef, FileVolume } from '../../src/image/types.ts';
import { ImageWriter } from '../../src/image/writer.ts';
import { hasCommand, isRoot, skipUnless } from '../helpers/env.ts';
import { fileEntry, manifestOf } from './fixtures.ts';

async function smallFs(t: TestContext): Promise<string | undefined> {
  if (
    skipUnless(
      t,
      !isRoot() ? 'needs root to mount a tmpfs' : !hasCommand('mount') ? 'needs mount' : undefined,
    )
  ) {
    return undefined;
  }
  const dir = await mkdtemp(join(tmpdir(), 'imgcast-full-'));
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'imgcast-test', dir]);
  t.after(async () => {
    execFileSync('umount', ['--lazy', dir]);
    await rm(dir, { recursive: true, force: true });
  });
  return dir;
}

function noSpace(err: unknown): boolean {
  assert.ok(err instanceof ImageError, String(err));
  assert.equal(err.code, 'E_IMAGE_IO');
  assert.match(err.message, /no space left/);
  return true;
}

test('a capture that fills the disk fails with a clear error and leaves no image', async (t) => {
  const dir = await smallFs(t);
  if (!dir) return;
  const path = join(dir, 'full.imgc');
  const w = await ImageWriter.create(path, { level: 'none' });
  const refs: ChunkRef[] = [];
  const put = async (): Promise<void> => {
    for (let i = 0; i < 12; i++) refs.push(await w.putChunk(randomBytes(512 * 1024)));
    await w.commit(manifestOf([fileEntry('big', refs)], 'none'));
  };
  await assert.rejects(put(), noSpace);
  await w.abort();
  assert.ok(!existsSync(path) && !existsSync(`${path}.partial`));
});

test('an append that fills the disk leaves the image exactly as it was', async (t) => {
  const dir = await smallFs(t);
  if (!dir) return;
  const path = join(dir, 'img.imgc');
  const w = await ImageWriter.create(path, { level: 'balanced' });
  const ref = await w.putChunk(randomBytes(300 * 1024));
  await w.commit(manifestOf([fileEntry('a', [ref])]));
  const before = await readFile(path);

  const { writer, manifest } = await ImageWriter.append(path);
  const refs: ChunkRef[] = [];
  const add = async (): Promise<void> => {
    for (let i = 0; i < 8; i++) refs.push(await writer.putChunk(randomBytes(512 * 1024)));
    (manifest.volumes[0] as FileVolume).entries.push(fileEntry('b', refs));
    await writer.commit(manifest);
  };
  await assert.rejects(add(), noSpace);
  await writer.abort();
  assert.deepEqual(await readFile(path), before);
  const r = await ImageReader.open(path);
  try {
    assert.equal(r.generation, 1);
    assert.equal((await r.readChunk(ref.id)).length, 300 * 1024);
  } finally {
    await r.close();
  }
});
