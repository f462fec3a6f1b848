/**
 * Small disks for restore tests: an MBR disk-image file with two ext4 partitions,
 * populated by mke2fs -d (no mount needed to build it) and captured with makeImage.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, open, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeImage } from '../../src/engine/make.ts';
import type { Manifest } from '../../src/image/types.ts';

export const MiB = 1024 * 1024;

export async function sparse(path: string, size: number): Promise<string> {
  await (await open(path, 'w')).close();
  await truncate(path, size);
  return path;
}

export interface MbrDisk {
  disk: string;
  image: string;
  manifest: Manifest;
  /** Byte ranges of the two partitions. */
  parts: Array<{ start: number; size: number }>;
}

/**
 * A 64 MiB MBR disk: partition 1 (40 MiB, ext4 "labdata") holds `dataBytes` of random
 * data in big.bin and a few small files; partition 2 (16 MiB, ext4 "labhome") a few files.
 */
export async function mbrExtDisk(dir: string, opts: { dataBytes?: number } = {}): Promise<MbrDisk> {
  const disk = await sparse(join(dir, 'mbr-ref.img'), 64 * MiB);
  execFileSync('sfdisk', ['-q', disk], {
    input: 'label: dos\nstart=2048, size=40MiB, type=83\nsize=16MiB, type=83\n',
  });
  const parts = [
    { start: MiB, size: 40 * MiB },
    { start: 41 * MiB, size: 16 * MiB },
  ];
  for (const [i, p] of parts.entries()) {
    const tree = join(dir, `tree${i + 1}`);
    await mkdir(join(tree, 'etc'), { recursive: true });
    await writeFile(join(tree, 'etc/hostname'), `part${i + 1}\n`);
    for (let k = 0; k < 20; k++) await writeFile(join(tree, 'etc', `f${k}.conf`), `setting ${k}\n`.repeat(k));
    if (i === 0) await writeFile(join(tree, 'big.bin'), randomBytes(opts.dataBytes ?? 4 * MiB));
    execFileSync(
      'mkfs.ext4',
      [
        '-q',
        '-F',
        '-L',
        i === 0 ? 'labdata' : 'labhome',
        '-E',
        `offset=${p.start}`,
        '-d',
        tree,
        disk,
        `${p.size / 1024}k`,
      ],
      { stdio: 'pipe' },
    );
  }
  const image = join(dir, 'mbr.imgc');
  const { manifest } = await makeImage(disk, image, { level: 'speed' });
  return { disk, image, manifest, parts };
}
