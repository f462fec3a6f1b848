/** An image as the sender's chunk source: reads into recycled buffers, and a damaged chunk refused on first read. */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { imageProvider } from '../../src/engine/image-provider.ts';
import { makeImage } from '../../src/engine/make.ts';
import { ImageReader } from '../../src/image/reader.ts';
import { RECORD_HEADER_SIZE } from '../../src/image/record.ts';
import { tempDir } from '../helpers/env.ts';

/** An image of random data (chunks stored as they are) and of text (chunks stored compressed). */
async function images(dir: string): Promise<Array<{ image: string; level: 'none' | 'balanced' }>> {
  const src = join(dir, 'src');
  await mkdir(src, { recursive: true });
  await writeFile(join(src, 'random.bin'), randomBytes(9 * 1024 * 1024 + 333));
  await writeFile(join(src, 'text.txt'), Buffer.from('a lab of forty machines\n'.repeat(400_000)));
  const out = [];
  for (const level of ['none', 'balanced'] as const) {
    const image = join(dir, `${level}.imgc`);
    await makeImage(src, image, { level });
    out.push({ image, level });
  }
  return out;
}

test('readStored with a recycled buffer gives every chunk as a view at its start, the same bytes as a plain read', async (t) => {
  const dir = await tempDir(t);
  for (const { image, level } of await images(dir)) {
    const provider = await imageProvider(image, 1);
    t.after(() => provider.close?.());
    const cap = Math.max(...provider.chunks.map((c) => c.storedLength));
    const into = Buffer.alloc(cap + 100);
    const plain = await imageProvider(image, 1);
    t.after(() => plain.close?.());
    assert.ok(provider.chunks.length >= 3, `${level}: ${provider.chunks.length} chunks`);
    for (const c of provider.chunks) {
      const got = await provider.readStored(c.id, into);
      assert.equal(got.buffer, into.buffer, `${level}: chunk ${c.id} not read into the buffer given`);
      assert.equal(got.byteOffset, into.byteOffset);
      assert.equal(got.length, c.storedLength);
      assert.ok(
        got.equals(await plain.readStored(c.id)),
        `${level}: chunk ${c.id} differs from a plain read`,
      );
    }
  }
});

test('a chunk damaged inside its stored bytes is refused on its first read (E_CHUNK_CORRUPT), with or without a buffer given', async (t) => {
  const dir = await tempDir(t);
  for (const { image, level } of await images(dir)) {
    const reader = await ImageReader.open(image);
    const infos = [...reader.chunkInfos()];
    await reader.close();
    const victim = infos.reduce((a, b) => (b.storedLength > a.storedLength ? b : a));
    // One byte in the middle of the stored bytes: the record header stays intact, so only the
    // check of the data against its id can catch it.
    const fh = await open(image, 'r+');
    const at = victim.offset + RECORD_HEADER_SIZE + Math.floor(victim.storedLength / 2);
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, at);
    b[0] = (b[0] as number) ^ 0x55;
    await fh.write(b, 0, 1, at);
    await fh.close();
    for (const withBuffer of [true, false]) {
      const provider = await imageProvider(image, 1);
      t.after(() => provider.close?.());
      const into = withBuffer ? Buffer.alloc(victim.storedLength) : undefined;
      await assert.rejects(provider.readStored(victim.id, into), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'E_CHUNK_CORRUPT', `${level}: ${err.message}`);
        assert.match(err.message, /is damaged/);
        return true;
      });
      // The others still read.
      const other = infos.find((i) => i.id !== victim.id) as (typeof infos)[number];
      const fine = await provider.readStored(
        other.id,
        withBuffer ? Buffer.alloc(other.storedLength) : undefined,
      );
      assert.equal(fine.length, other.storedLength);
    }
  }
});
