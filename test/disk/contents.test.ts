import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdir, open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { describeTargetContents } from '../../src/disk/contents.ts';
import { hasCommand, tempDir } from '../helpers/env.ts';
import { MiB, sparse } from '../engine/disk-fixtures.ts';

async function zero(path: string, position: number, length: number): Promise<void> {
  const fh = await open(path, 'r+');
  await fh.write(Buffer.alloc(length), 0, length, position);
  await fh.close();
}

test('describeTargetContents: missing, folders, blank and used disks, in words and as data', async (t) => {
  for (const c of ['sfdisk', 'sgdisk', 'mkfs.ext4', 'wipefs'])
    if (!hasCommand(c)) return void t.skip(`needs ${c}`);
  const dir = await tempDir(t);

  const missing = await describeTargetContents(join(dir, 'nothing'));
  assert.equal(missing.kind, 'missing');
  assert.equal(missing.empty, true);

  const folder = join(dir, 'folder');
  await mkdir(join(folder, 'lost+found'), { recursive: true });
  assert.equal((await describeTargetContents(folder)).empty, true, 'lost+found alone is an empty folder');
  await writeFile(join(folder, 'a'), 'x');
  const full = await describeTargetContents(folder);
  assert.equal(full.empty, false);
  assert.match(full.summary, /holds 1 entry$/);
  await assert.rejects(describeTargetContents(join(folder, 'a', 'x')), {
    code: 'E_DISK_IO',
    message: `cannot access ${join(folder, 'a', 'x')}: a part of the path is not a directory (ENOTDIR)`,
  });

  const blank = await sparse(join(dir, 'blank.img'), 16 * MiB);
  const b = await describeTargetContents(blank);
  assert.deepEqual([b.kind, b.empty, b.sizeBytes, b.table], ['file', true, 16 * MiB, undefined]);
  assert.match(b.summary, /no partition table and no filesystem signature/);

  // MBR, partition 1 ext4 at 1 MiB with a label.
  const mbr = await sparse(join(dir, 'mbr.img'), 16 * MiB);
  execFileSync('sfdisk', ['-q', mbr], {
    input: 'label: dos\nstart=2048, size=8MiB, type=83\nsize=4MiB, type=82\n',
  });
  execFileSync('mkfs.ext4', ['-q', '-F', '-L', 'labroot', '-E', `offset=${MiB}`, mbr, '8M'], {
    stdio: 'pipe',
  });
  const m = await describeTargetContents(mbr);
  assert.equal(m.table?.type, 'mbr');
  assert.deepEqual(
    m.partitions.map((p) => [p.number, p.sizeBytes, p.typeName, p.filesystem?.type, p.filesystem?.label]),
    [
      [1, 8 * MiB, 'Linux', 'ext4', 'labroot'],
      [2, 4 * MiB, 'Linux swap', undefined, undefined],
    ],
  );
  assert.match(
    m.summary,
    /an MBR partition table with 2 partitions \(1: 8\.0 MiB, Linux, ext4 "labroot"; 2: 4\.0 MiB, Linux swap, no filesystem found\)/,
  );

  // The table wiped (as a killed restore leaves a disk): the filesystem where partition 1 began is still data.
  await zero(mbr, 0, 512);
  const wiped = await describeTargetContents(mbr);
  assert.equal(wiped.table, undefined);
  assert.equal(wiped.empty, false);
  assert.deepEqual(
    wiped.signatures.map((s) => [s.offset, s.type, s.label]),
    [[MiB, 'ext4', 'labroot']],
  );

  // A GPT whose primary header is damaged: still a table, and said to be damaged.
  const gpt = await sparse(join(dir, 'gpt.img'), 16 * MiB);
  execFileSync('sgdisk', ['-n1:2048:+4M', gpt], { stdio: 'pipe' });
  await zero(gpt, 512 + 16, 4);
  const g = await describeTargetContents(gpt);
  assert.equal(g.table?.type, 'gpt');
  assert.match(g.table?.damaged ?? '', /primary GPT header .* CRC32/);
  assert.match(g.summary, /a GPT partition table that is damaged/);

  // An MBR written over a GPT without wiping it: both old GPT headers are named apart from the table.
  const mixed = await sparse(join(dir, 'mixed.img'), 16 * MiB);
  execFileSync('sgdisk', ['-n1:2048:+4M', mixed], { stdio: 'pipe' });
  execFileSync('sfdisk', ['-q', '--wipe', 'never', mixed], {
    input: 'label: dos\nstart=2048, size=4MiB, type=83\n',
  });
  const x = await describeTargetContents(mixed);
  assert.equal(x.table?.type, 'mbr');
  assert.match(x.summary, /signatures: gpt at byte 512, gpt at byte 16776704/);
});
