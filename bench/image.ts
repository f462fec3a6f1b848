/**
 * npm run bench:image — capture and restore a real ~1 GB tree with imgcast and with
 * tar + zstd, side by side in one run, and record the ratios in BENCHMARKS.md.
 *
 *   node bench/image.ts [--source DIR ...] [--rounds N] [--work DIR] [--skip-size] [--skip-disk | --disk-only]
 *
 * The default source is a private copy of /usr/share and /usr/bin (about 0.9 GB,
 * 50k+ files), made once, so every tool reads the same tree from the page cache.
 * Each step runs `rounds` times, alternating tools, and the median is reported.
 *
 * Then the real workstation disk of the boot test (test/boot/reference-disk.ts: a Debian on
 * GPT with BIOS boot, EFI and ext4 root partitions, cached once built), against what Clonezilla
 * and FOG run underneath: `img make` of the whole disk against `partclone.ext4 -c | zstd -3 -T0`
 * of its root partition alone, and `img restore` of the whole disk against
 * `zstd -d | partclone.ext4 -r` of the root alone, each onto a fresh sparse file, synced. The
 * imgcast restore does what a lab's restore does (issue #16's target): it applies an identity
 * (`--identity`) and fits the layout to a disk 1 GiB larger than the reference, so the root grows.
 * `--skip-disk` leaves that out; `--disk-only` runs only that. Either writes its own section of
 * BENCHMARKS.md (`image-disk`), with the command that made it, unless `--no-write`.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, statSync } from 'node:fs';
import { loadavg } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { machineLine, measure, median, writeSection, type Measured } from './report.ts';
import { referenceDisk, referenceDiskUnavailable } from '../test/boot/reference-disk.ts';

const root = resolve(dirname(new URL(import.meta.url).pathname), '..');
const { values } = parseArgs({
  options: {
    source: { type: 'string', multiple: true },
    rounds: { type: 'string', default: '3' },
    work: { type: 'string', default: '/var/tmp/imgcast-bench-image' },
    'skip-size': { type: 'boolean', default: false },
    'no-write': { type: 'boolean', default: false },
    'skip-disk': { type: 'boolean', default: false },
    'disk-only': { type: 'boolean', default: false },
  },
});
const rounds = Number(values.rounds);
const args = process.argv.slice(2);
const command = `npm run bench:image${args.length ? ` -- ${args.join(' ')}` : ''}`;
const loadBefore = loadAverage();
const work = values.work as string;
// The installed entry point, run the way `npx img` runs it (as an executable, with the project's
// Node first on PATH), so its shebang's V8 flags and the compile cache apply as they do for users.
process.env.PATH = `${join(root, 'node_modules/.bin')}:${process.env.PATH ?? ''}`;
const img = join(root, 'bin/img.js');

function sh(cmd: string): string {
  return execFileSync('bash', ['-o', 'pipefail', '-c', cmd], { encoding: 'utf8', maxBuffer: 1 << 28 });
}

function prepareSource(): string {
  const src = join(work, 'src');
  const marker = join(work, 'src.ready');
  const sources = values.source ?? ['/usr/share', '/usr/bin'];
  const wanted = sources.join('\n');
  if (existsSync(marker) && sh(`cat ${marker}`) === wanted) return src;
  rmSync(src, { recursive: true, force: true });
  mkdirSync(src, { recursive: true });
  for (const s of sources) sh(`cp -a ${s} ${src}/`);
  sh(`printf '%s' '${wanted}' > ${marker}`);
  return src;
}

/**
 * Where each restore writes: a new ext4 filesystem every time (a loop device over a
 * file), as a workstation's restore does after mkfs. Restoring into the bench's own
 * filesystem right after deleting the previous copy made both tools pay ext4's search for
 * inodes not deleted recently (minutes of history on this kind of filesystem), which made
 * every restore 3-5x slower and hid the tools' own costs. Without root or loop devices,
 * a folder of the bench's filesystem is used, and the report says so.
 *
 * Two backings, measured alike: a file in RAM (/dev/shm) and a file on the bench's disk.
 * On the disk-backed one, the loop device's writeback starts during a restore and its
 * kernel workers copy every page a second time (into the backing file's page cache),
 * on the same two cores the tools use: a tool that keeps both cores busy pays for that,
 * one that leaves a core idle does not. A real disk takes its writeback by DMA. The
 * RAM-backed filesystem shows the tools' own work; the disk-backed one is kept beside it.
 */
function freshFilesystem(backingDir: string, treeBytes: number, name: string) {
  const backing = join(backingDir, `imgcast-bench-restore-${name}.ext4`);
  const mnt = join(work, `restore-mnt-${name}`);
  const usable = process.getuid?.() === 0 && existsSync('/dev/loop-control');
  let loop = '';
  return {
    usable,
    kind: usable
      ? `a fresh ext4 filesystem for each restore (loop device over a file in ${backingDir})`
      : 'a folder of the bench filesystem',
    acquire(): string {
      if (!usable) {
        rmSync(join(work, 'out'), { recursive: true, force: true });
        return join(work, 'out');
      }
      sh(`truncate -s ${Math.ceil((treeBytes * 3) / 2 ** 20)}M ${backing}`);
      sh(`mkfs.ext4 -q -F ${backing}`);
      loop = sh(`losetup -f --show ${backing}`).trim();
      mkdirSync(mnt, { recursive: true });
      sh(`mount ${loop} ${mnt}`);
      return join(mnt, 'out');
    },
    release(): void {
      if (!usable) return;
      sh(`umount ${mnt}`);
      sh(`losetup -d ${loop}`);
      rmSync(backing, { force: true });
    },
  };
}

/** /dev/shm when it can hold a restore's filesystem (sparse, but filled up to ~1.1x the tree). */
function ramBacking(treeBytes: number): string | undefined {
  try {
    const free = Number(sh(`df -B1 --output=avail /dev/shm | tail -1`).trim());
    return free > treeBytes * 3 ? '/dev/shm' : undefined;
  } catch {
    return undefined;
  }
}

function bytesOf(path: string): number {
  return statSync(path).size;
}

interface Row {
  name: string;
  runs: Measured[];
}
const med = (r: Row) => median(r.runs.map((x) => x.seconds));
const rss = (r: Row) => Math.max(...r.runs.map((x) => x.maxRssKiB)) / 1024;

/** Brings a file into the page cache. */
const warmCache = (path: string) => sh(`cat ${path} > /dev/null`);

/**
 * The workstation disk's rows: imgcast on the whole disk against partclone + zstd on its root
 * partition alone (what Clonezilla and FOG store for it), capture and restore, `rounds` times
 * each in alternating order, medians. Restores go to a fresh sparse file on the bench's disk
 * each time (a loop device over it for partclone) and count until the data is synced.
 */
/** The section's lines, or why the disk was left out. */
async function workstationDisk(): Promise<string[] | string> {
  const why = await referenceDiskUnavailable();
  if (why) return `the workstation disk was left out: ${why}`;
  for (const tool of ['partclone.ext4', 'zstd']) {
    try {
      sh(`command -v ${tool}`);
    } catch {
      return `the workstation disk was left out: ${tool} is not installed`;
    }
  }
  const ref = await referenceDisk((line) => process.stderr.write(`reference disk: ${line}\n`));
  const rootPart = ref.partitions.root;
  const image = join(work, 'disk.imgc');
  // A bigger disk than the reference, so the default fitting grows the root to its end.
  const targetBytes = ref.diskBytes + 2 ** 30;
  const pcz = join(work, 'root.pc.zst');
  const target = join(work, 'restored-disk.img');
  const rootTarget = join(work, 'restored-root.img');
  const capImg: Row = { name: 'img make (whole disk)', runs: [] };
  const capPc: Row = { name: 'partclone.ext4 -c (root) \\| zstd -3 -T0', runs: [] };
  const resImg: Row = { name: 'img restore --identity (whole disk, root grown)', runs: [] };
  const resPc: Row = { name: 'zstd -d \\| partclone.ext4 -r (root)', runs: [] };
  const warmDisk = () => sh(`cat ${ref.path} > /dev/null`);
  const srcLoop = sh(
    `losetup -f --show -r -o ${rootPart.start} --sizelimit ${rootPart.size} ${ref.path}`,
  ).trim();
  try {
    for (let i = 0; i < rounds; i++) {
      const order = i % 2 === 0 ? ['img', 'pc'] : ['pc', 'img'];
      for (const tool of order) {
        sh('sync');
        warmDisk();
        if (tool === 'img') capImg.runs.push(await measure(`${img} make ${ref.path} ${image} --force`));
        else
          capPc.runs.push(
            await measure(
              `partclone.ext4 -q -c -s ${srcLoop} -L /dev/null -o - | zstd -q -3 -T0 -f -o ${pcz}`,
            ),
          );
      }
      for (const tool of order) {
        sh('sync');
        if (tool === 'img') {
          rmSync(target, { force: true });
          sh(`truncate -s ${targetBytes} ${target}`);
          warmCache(image);
          // img restore flushes what it wrote before it reports success, and --identity's changes too.
          resImg.runs.push(await measure(`${img} restore ${image} ${target} --identity bench-ws`));
        } else {
          rmSync(rootTarget, { force: true });
          sh(`truncate -s ${rootPart.size} ${rootTarget}`);
          const loop = sh(`losetup -f --show ${rootTarget}`).trim();
          try {
            warmCache(pcz);
            resPc.runs.push(
              await measure(
                `zstd -q -d -c ${pcz} | partclone.ext4 -q -r -s - -L /dev/null -o ${loop} && sync`,
              ),
            );
            // The restored root must be a sound filesystem, or the timing means nothing.
            sh(`e2fsck -f -n ${loop}`);
          } finally {
            sh(`losetup -d ${loop}`);
          }
        }
      }
    }
  } finally {
    sh(`losetup -d ${srcLoop}`);
  }
  // imgcast's copy must hold a sound root too (the boot test proves that it boots), grown to the
  // disk's end, with the identity applied.
  const table = JSON.parse(sh(`sfdisk -J ${target}`)) as {
    partitiontable: { sectorsize?: number; partitions: Array<{ start: number; size: number }> };
  };
  const ss = table.partitiontable.sectorsize ?? 512;
  const last = table.partitiontable.partitions.at(-1)!;
  const grownBytes = last.size * ss;
  if (grownBytes <= rootPart.size) throw new Error(`the restored root was not grown (${grownBytes} bytes)`);
  const restoredRoot = sh(
    `losetup -f --show -r -o ${last.start * ss} --sizelimit ${grownBytes} ${target}`,
  ).trim();
  let hostname: string;
  try {
    sh(`e2fsck -f -n ${restoredRoot}`);
    hostname = sh(`debugfs -R 'cat /etc/hostname' ${restoredRoot} 2>/dev/null`).trim();
  } finally {
    sh(`losetup -d ${restoredRoot}`);
  }
  if (hostname !== 'bench-ws') throw new Error(`the restored root's hostname is ${hostname}, not bench-ws`);
  const imgBytes = bytesOf(image);
  const pcBytes = bytesOf(pcz);
  const used = Number(sh(`du -B1 ${ref.path} | cut -f1`));
  rmSync(target, { force: true });
  rmSync(rootTarget, { force: true });
  return [
    `## The workstation disk (\`npm run bench:image\`, issue #16)`,
    '',
    `Command: \`${command}\` on ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC; ${machineLine()}; load average before the run ${loadBefore}, after it ${loadAverage()}.`,
    `Disk: the boot test's reference workstation (test/boot/reference-disk.ts), Debian ${ref.suite} with kernel ${ref.kernel}: a ${(ref.diskBytes / 2 ** 30).toFixed(0)} GiB GPT disk (BIOS boot, vfat EFI, ext4 root), ${(used / 1e6).toFixed(0)} MB allocated. imgcast captures and restores the whole disk (partition table, boot areas, all three partitions); partclone + zstd -3 only the root partition, as Clonezilla and FOG store it. imgcast's restore goes to a ${(targetBytes / 2 ** 30).toFixed(0)} GiB disk, its root grown from ${(rootPart.size / 2 ** 20).toFixed(0)} to ${(grownBytes / 2 ** 20).toFixed(0)} MiB (the default fitting), with \`--identity bench-ws\` applied; partclone's onto a file the root's size. Each restore writes a fresh sparse file on the bench's disk and is timed until its data is synced. Median of ${rounds} alternating runs.`,
    '',
    '| step | tool | seconds | peak RSS MiB | output size |',
    '|---|---|---:|---:|---:|',
    `| capture | ${capImg.name} | ${med(capImg).toFixed(2)} | ${rss(capImg).toFixed(0)} | ${(imgBytes / 1e6).toFixed(1)} MB |`,
    `| capture | ${capPc.name} | ${med(capPc).toFixed(2)} | ${rss(capPc).toFixed(0)} | ${(pcBytes / 1e6).toFixed(1)} MB |`,
    `| restore | ${resImg.name} | ${med(resImg).toFixed(2)} | ${rss(resImg).toFixed(0)} | |`,
    `| restore | ${resPc.name} | ${med(resPc).toFixed(2)} | ${rss(resPc).toFixed(0)} | |`,
    '',
    `- capture time, whole disk vs root alone: **${(med(capImg) / med(capPc)).toFixed(2)}×** (target ≤ 0.65)`,
    `- restore time, whole disk vs root alone: **${(med(resImg) / med(resPc)).toFixed(2)}×** (target ≤ 0.50)`,
    `- size, whole disk vs root alone: **${(imgBytes / pcBytes).toFixed(3)}×** (target ≤ 1.05)`,
    '',
    "Both restored roots passed `e2fsck -f -n` in the same run; the imgcast copy's root was grown and its `/etc/hostname` reads `bench-ws`.",
  ];
}

function loadAverage(): string {
  return loadavg()
    .map((x) => x.toFixed(2))
    .join(' ');
}

/** Runs the workstation disk's rows and writes their section. */
async function diskSection(): Promise<void> {
  const lines = await workstationDisk();
  if (typeof lines === 'string') {
    process.stdout.write(`(${lines}; BENCHMARKS.md is left as it was)\n`);
    return;
  }
  const body = lines.join('\n');
  process.stdout.write(`${body}\n`);
  if (!values['no-write']) process.stdout.write(`written to ${writeSection(root, 'image-disk', body)}\n`);
}

async function main() {
  mkdirSync(work, { recursive: true });
  if (values['disk-only']) {
    await diskSection();
    return;
  }
  const src = prepareSource();
  const treeBytes = Number(sh(`du -sb ${src} | cut -f1`));
  const files = Number(sh(`find ${src} | wc -l`));
  const image = join(work, 'bench.imgc');
  const imageSize = join(work, 'bench-size.imgc');
  const tarZst = join(work, 'bench.tar.zst');
  const tarZst19 = join(work, 'bench-19.tar.zst');
  const out = join(work, 'out');
  // Brings the tree's data into the page cache. Through a pipe on purpose: GNU tar writing
  // to /dev/null itself skips reading file contents, which would warm only the metadata.
  const warmTree = () => sh(`tar -cf - -C ${src} . | cat > /dev/null`);
  const warmFile = (path: string) => sh(`cat ${path} > /dev/null`);

  const disk = freshFilesystem(work, treeBytes, 'disk');
  const ram = disk.usable ? ramBacking(treeBytes) : undefined;
  const targets = [
    ...(ram ? [{ label: 'RAM-backed ext4', fs: freshFilesystem(ram, treeBytes, 'ram') }] : []),
    { label: disk.usable ? 'disk-backed ext4' : 'folder', fs: disk },
  ].map((t) => ({
    ...t,
    img: { name: `imgcast restore (${t.label})`, runs: [] } as Row,
    tar: { name: `zstd -d | tar -x (${t.label})`, runs: [] } as Row,
  }));
  const capImg: Row = { name: 'imgcast make --level balanced', runs: [] };
  const capTar: Row = { name: 'tar -cf - | zstd -3 -T0', runs: [] };
  const capImgSize: Row = { name: 'imgcast make --level size', runs: [] };
  const capTar19: Row = { name: 'tar -cf - | zstd -19 -T0', runs: [] };

  for (let i = 0; i < rounds; i++) {
    const order = i % 2 === 0 ? ['img', 'tar'] : ['tar', 'img'];
    // The restores of the previous round left ~2 GB to write back, and this machine reclaims
    // page cache in the background: flush, then bring the source back into the cache, so
    // neither capture pays for the other steps' disk traffic.
    for (const tool of order) {
      // Before each capture: the other tool's output may still be waiting to be written back,
      // and imgcast makes its image durable (fsync) before it reports success, so it would wait
      // for that writeback too. tar | zstd never syncs; its writeback is not counted either way.
      sh('sync');
      warmTree();
      if (tool === 'img') capImg.runs.push(await measure(`${img} make ${src} ${image} --force`));
      else capTar.runs.push(await measure(`tar -cf - -C ${src} . | zstd -q -3 -T0 -f -o ${tarZst}`));
    }
    sh('sync');
    for (const t of targets) {
      for (const tool of order) {
        const target = t.fs.acquire();
        sh('sync');
        warmFile(tool === 'img' ? image : tarZst);
        try {
          if (tool === 'img') t.img.runs.push(await measure(`${img} restore ${image} ${target}`));
          else {
            mkdirSync(target, { recursive: true });
            t.tar.runs.push(await measure(`zstd -q -d -c ${tarZst} | tar -x -C ${target}`));
          }
        } finally {
          t.fs.release();
        }
        sh('sync');
      }
    }
  }
  // The restored tree must be the source tree, or the timings mean nothing.
  rmSync(out, { recursive: true, force: true });
  sh(`${img} restore ${image} ${out}`);
  sh(`diff -r --no-dereference ${src} ${out}`);
  rmSync(out, { recursive: true, force: true });

  if (!values['skip-size']) {
    sh('sync');
    warmTree();
    capImgSize.runs.push(await measure(`${img} make ${src} ${imageSize} --level size --force`));
    sh('sync');
    warmTree();
    capTar19.runs.push(await measure(`tar -cf - -C ${src} . | zstd -q -19 -T0 -f -o ${tarZst19}`));
  }

  const imgBytes = bytesOf(image);
  const tarBytes = bytesOf(tarZst);
  const pct = (x: number) => `${((x / treeBytes) * 100).toFixed(1)} %`;
  const lines = [
    '## Image capture and restore (`npm run bench:image`)',
    '',
    `Command: \`npm run bench:image -- --rounds ${rounds}\` on ${new Date().toISOString().slice(0, 10)}; ${machineLine()}.`,
    `Tree: a copy of ${(values.source ?? ['/usr/share', '/usr/bin']).join(' + ')}, ${(treeBytes / 1e9).toFixed(2)} GB in ${files} entries, read from the page cache. Restores write into ${targets.map((t) => t.fs.kind).join(', and into ')}. Median of ${rounds} alternating runs; peak RSS is the largest process of the command.`,
    '',
    '| step | tool | seconds | peak RSS MiB | output size | size / tree |',
    '|---|---|---:|---:|---:|---:|',
    `| capture | ${capImg.name} | ${med(capImg).toFixed(2)} | ${rss(capImg).toFixed(0)} | ${(imgBytes / 1e6).toFixed(1)} MB | ${pct(imgBytes)} |`,
    `| capture | ${capTar.name} | ${med(capTar).toFixed(2)} | ${rss(capTar).toFixed(0)} | ${(tarBytes / 1e6).toFixed(1)} MB | ${pct(tarBytes)} |`,
    ...targets.flatMap((t) => [
      `| restore | ${t.img.name} | ${med(t.img).toFixed(2)} | ${rss(t.img).toFixed(0)} | | |`,
      `| restore | ${t.tar.name} | ${med(t.tar).toFixed(2)} | ${rss(t.tar).toFixed(0)} | | |`,
    ]),
  ];
  if (!values['skip-size']) {
    const a = bytesOf(imageSize);
    const b = bytesOf(tarZst19);
    lines.push(
      `| capture | ${capImgSize.name} | ${med(capImgSize).toFixed(2)} | ${rss(capImgSize).toFixed(0)} | ${(a / 1e6).toFixed(1)} MB | ${pct(a)} |`,
      `| capture | ${capTar19.name} | ${med(capTar19).toFixed(2)} | ${rss(capTar19).toFixed(0)} | ${(b / 1e6).toFixed(1)} MB | ${pct(b)} |`,
    );
  }
  lines.push(
    '',
    'Ratios (imgcast ÷ peer; below 1 means imgcast is faster or smaller):',
    '',
    `- capture time, balanced vs zstd -3: **${(med(capImg) / med(capTar)).toFixed(2)}×** (target ≤ 1.00)`,
    `- image size, balanced vs zstd -3: **${(imgBytes / tarBytes).toFixed(3)}×** (target ≤ 1.05)`,
    ...targets.map(
      (t) =>
        `- restore time vs zstd -d | tar -x, ${t.label}: **${(med(t.img) / med(t.tar)).toFixed(2)}×** (target ≤ 1.00)`,
    ),
    `- peak RSS: capture ${rss(capImg).toFixed(0)} MiB, restore ${Math.max(...targets.map((t) => rss(t.img))).toFixed(0)} MiB (target ≤ 300)`,
  );
  if (!values['skip-size']) {
    const a = bytesOf(imageSize);
    const b = bytesOf(tarZst19);
    lines.push(
      `- capture time, size vs zstd -19: **${(med(capImgSize) / med(capTar19)).toFixed(2)}×** (target < 1.00); compressed size ${pct(a)} vs ${pct(b)} of the tree, ${(((a - b) / treeBytes) * 100).toFixed(1)} points apart (target ≤ 2)`,
    );
  }
  lines.push(
    '',
    'The restored tree was compared with the source by `diff -r --no-dereference` in the same run: identical.',
  );
  const body = lines.join('\n');
  process.stdout.write(`${body}\n`);
  if (!values['no-write']) process.stdout.write(`written to ${writeSection(root, 'image', body)}\n`);
  if (!values['skip-disk']) await diskSection();
}

await main();
