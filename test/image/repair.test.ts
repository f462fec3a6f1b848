import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { ImageError } from '../../src/image/errors.ts';
import { journalPath } from '../../src/image/journal.ts';
import { ImageReader } from '../../src/image/reader.ts';
import { repairImage } from '../../src/image/repair.ts';
import { verifyImage } from '../../src/image/verify.ts';
import { ImageWriter } from '../../src/image/writer.ts';
import { tempDir } from '../helpers/env.ts';
import type { FileVolume } from '../../src/image/types.ts';
import { fileEntry, smallImage, textData } from './fixtures.ts';

const writerUrl = new URL('../../src/image/writer.ts', import.meta.url).href;

test('an append killed mid-way is detected and repaired back to the last generation', async (t) => {
  const dir = await tempDir(t);
  const { path } = await smallImage(dir);
  const before = await readFile(path);
  // A real crash: a separate process appends chunks and is killed with SIGKILL before committing.
  const script = `
    import { randomBytes } from 'node:crypto';
    const { ImageWriter } = await import(${JSON.stringify(writerUrl)});
    const { writer } = await ImageWriter.append(${JSON.stringify(path)});
    for (let i = 0; i < 6; i++) await writer.putChunk(randomBytes(256 * 1024));
    for (let k = 0; k < 500 && writer.stats.chunksStored < 6; k++) await new Promise((r) => setTimeout(r, 10));
    process.kill(process.pid, 'SIGKILL');
  `;
  const node = process.execPath;
  const res = spawnSync(node, ['--input-type=module', '-e', script], {
    cwd: fileURLToPath(new URL('../..', import.meta.url)),
  });
  assert.equal(res.signal, 'SIGKILL', res.stderr.toString());
  assert.ok((await stat(path)).size > before.length, 'the killed append wrote data');
  assert.ok(existsSync(journalPath(path)));

  // Readers still see the last committed generation; a new append is refused until repaired.
  const reader = await ImageReader.open(path);
  assert.equal(reader.generation, 1);
  assert.equal(reader.fileSize, before.length);
  for (const id of reader.chunkIds()) await reader.readChunk(id);
  await reader.close();
  const report = await verifyImage(path);
  assert.equal(report.ok, false);
  assert.equal(report.chunksTotal, 5);
  assert.deepEqual(
    report.problems.map((p) => p.code),
    ['E_IMAGE_TRUNCATED'],
  );
  assert.match(report.problems[0]!.message, /img repair/);
  await assert.rejects(ImageWriter.append(path), (err: unknown) => {
    assert.ok(err instanceof ImageError);
    assert.equal(err.code, 'E_IMAGE_TRUNCATED');
    assert.match(err.message, /img repair/);
    assert.equal(err.details.interruptedAppend, true);
    return true;
  });
  const r = await repairImage(path);
  assert.equal(r.repaired, true);
  assert.equal(r.generation, 1);
  assert.ok(r.bytesDropped >= 6 * 256 * 1024);
  assert.deepEqual(await readFile(path), before);
  assert.ok(!existsSync(journalPath(path)));
  assert.deepEqual(await repairImage(path), { repaired: false, generation: 1, bytesDropped: 0 });
});

test('a second append while one runs is refused; the journal goes away after commit', async (t) => {
  const dir = await tempDir(t);
  const { path } = await smallImage(dir);
  const a = await ImageWriter.append(path);
  assert.ok(existsSync(journalPath(path)));
  // Same process: the journal names our own pid, so simulate another live process by rewriting it.
  const j = JSON.parse(await readFile(journalPath(path), 'utf8'));
  const { writeFile } = await import('node:fs/promises');
  await writeFile(journalPath(path), JSON.stringify({ ...j, pid: process.ppid }));
  await assert.rejects(ImageWriter.append(path), (err: unknown) => {
    assert.ok(err instanceof ImageError && err.code === 'E_IMAGE_BUSY', String(err));
    return true;
  });
  await a.writer.commit(a.manifest);
  assert.ok(!existsSync(journalPath(path)));
  const r = await ImageReader.open(path);
  t.after(() => r.close());
  assert.equal(r.generation, 2);
});

test('readers opened during an append see the last committed generation, then the new one', async (t) => {
  const dir = await tempDir(t);
  const { path, files } = await smallImage(dir);
  const { writer, manifest } = await ImageWriter.append(path);
  const added = textData(100_000, 77);
  const ref = await writer.putChunk(added);
  await writer.putChunk(textData(90_000, 78));
  while (writer.stats.chunksStored < 2) await new Promise((r) => setTimeout(r, 5));
  const during = await ImageReader.open(path);
  t.after(() => during.close());
  assert.equal(during.generation, 1);
  assert.equal(during.chunk(ref.id), undefined);
  const passwd = (during.manifest.volumes[0] as FileVolume).entries.find((e) => e.path === 'etc/passwd')!;
  assert.deepEqual(await during.readChunk(passwd.extents![0]!.chunk), files.get('etc/passwd'));

  (manifest.volumes[0] as FileVolume).entries.push(fileEntry('new', [ref]));
  await writer.commit(manifest);
  const after = await ImageReader.open(path);
  t.after(() => after.close());
  assert.equal(after.generation, 2);
  assert.deepEqual(await after.readChunk(ref.id), added);
  // The reader opened earlier keeps working on its generation.
  assert.deepEqual(await during.readChunk(passwd.extents![0]!.chunk), files.get('etc/passwd'));
});
