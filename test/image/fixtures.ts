/** Small hand-made manifests and images for the image-format tests. */
import { randomBytes, randomUUID } from 'node:crypto';
import { join } from 'node:path';

import { ImageWriter } from '../../src/image/writer.ts';
import type { ChunkRef, CompressionLevel, FileEntry, Manifest } from '../../src/image/types.ts';

export function fileEntry(path: string, refs: ChunkRef[], extra: Partial<FileEntry> = {}): FileEntry {
  let offset = 0;
  const extents = refs.map((r) => {
    const x = { offset, length: r.rawLength, chunk: r.id, chunkOffset: 0 };
    offset += r.rawLength;
    return x;
  });
  return {
    path,
    type: 'file',
    mode: 0o644,
    uid: 0,
    gid: 0,
    mtimeNs: '1700000000000000000',
    atimeNs: '1700000000000000000',
    size: offset,
    extents,
    ...extra,
  };
}

export function manifestOf(
  entries: FileEntry[],
  level: CompressionLevel = 'balanced',
  imageId = randomUUID(),
): Manifest {
  return {
    formatVersion: 1,
    imageId,
    createdAt: '2026-11-24T00:00:00.000Z',
    generation: 1,
    level,
    source: { kind: 'directory', path: '/src' },
    volumes: [{ kind: 'files', index: 0, fs: { type: 'directory' }, entries }],
    filesets: [{ number: 1 }],
  };
}

/** Text-like data that compresses, seeded so runs are reproducible. */
export function textData(size: number, seed = 1): Buffer {
  const words = ['alpha', 'beta', 'gamma', 'delta', 'lab', 'image', 'multicast', 'chunk', '\n'];
  const out = Buffer.alloc(size);
  let x = seed >>> 0 || 1;
  let p = 0;
  while (p < size) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const w = words[(x >>> 0) % words.length]!;
    p += out.write(w + ' ', p);
  }
  return out;
}

/** An image with a few files: returns its path, manifest and the content per path. */
export async function smallImage(
  dir: string,
  level: CompressionLevel = 'balanced',
): Promise<{ path: string; manifest: Manifest; files: Map<string, Buffer> }> {
  const path = join(dir, 'small.imgc');
  const w = await ImageWriter.create(path, { level });
  const files = new Map<string, Buffer>([
    ['etc/passwd', textData(5000, 7)],
    ['bin/tool', randomBytes(70_000)],
    ['usr/share/doc.txt', textData(300_000, 9)],
  ]);
  const entries: FileEntry[] = [];
  for (const [p, data] of files) {
    const refs = [];
    for (let i = 0; i < data.length; i += 128 * 1024)
      refs.push(await w.putChunk(data.subarray(i, i + 128 * 1024)));
    entries.push(fileEntry(p, refs));
  }
  const manifest = manifestOf(entries, level);
  await w.commit(manifest);
  return { path, manifest, files };
}
