/**
 * node bench/live.ts [--receivers 2] [--level balanced] [--repeat 1] [--keep] [--only live]
 *
 * A sketch of the live master against what it replaces, on loopback multicast: the same
 * reference disk (GPT: a vfat ESP, an ext4 root holding /usr/share and /usr/bin) is
 *   live:   imgcast send --live DISK to N img receive processes (capture and send overlap);
 *   image:  img make DISK IMAGE, then imgcast send IMAGE to N img receive processes;
 * each copy checked (sgdisk -v, fsck of both filesystems, the root tree's file contents
 * against the source's by SHA-256). Prints the times; writes nothing into BENCHMARKS.md.
 * Page caches are dropped before each run, so each reads the disk from the device.
 * Needs root (loop devices, mounts). The disk is built once in /var/tmp/imgcast-bench-live
 * (kept with --keep).
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import { mkdir, open, rm, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const DIR = '/var/tmp/imgcast-bench-live';
const DISK = join(DIR, 'ref.img');
const DISK_BYTES = 3 * 1024 ** 3;
const ESP_MIB = 64;
/** IMGCAST_BENCH_LOG=dir: every process's stderr (run with -v) goes to dir/LABEL.log. */
const LOG = process.env.IMGCAST_BENCH_LOG;
/** IMGCAST_BENCH_PROF=dir: a CPU profile of every process, in dir/LABEL/. */
const PROF = process.env.IMGCAST_BENCH_PROF;
const IMG = new URL('../src/cli/img.ts', import.meta.url).pathname;
const IMGCAST = new URL('../src/cli/imgcast.ts', import.meta.url).pathname;

const { values: args } = parseArgs({
  options: {
    receivers: { type: 'string', default: '2' },
    level: { type: 'string', default: 'balanced' },
    repeat: { type: 'string', default: '1' },
    keep: { type: 'boolean', default: false },
    only: { type: 'string' },
  },
});
const receivers = Number(args.receivers);
const level = args.level!;

function sh(cmd: string, a: string[], input?: string): string {
  return execFileSync(cmd, a, {
    encoding: 'utf8',
    stdio: input ? ['pipe', 'pipe', 'pipe'] : 'pipe',
    ...(input ? { input } : {}),
    env: { ...process.env, MTOOLS_SKIP_CHECK: '1' },
    maxBuffer: 64 * 1024 * 1024,
  });
}

async function sparse(path: string, size: number): Promise<void> {
  await (await open(path, 'w')).close();
  await truncate(path, size);
}

async function buildDisk(): Promise<void> {
  if (existsSync(DISK)) return;
  await mkdir(DIR, { recursive: true });
  await sparse(`${DISK}.new`, DISK_BYTES);
  sh('sgdisk', [
    '-n1:2048:+64M',
    '-t1:ef00',
    '-c1:EFI system',
    '-n2:0:0',
    '-t2:8300',
    '-c2:root',
    `${DISK}.new`,
  ]);
  const esp = sh('losetup', [
    '--find',
    '--show',
    '--offset',
    String(MiB),
    '--sizelimit',
    String(ESP_MIB * MiB),
    `${DISK}.new`,
  ]).trim();
  try {
    sh('mkfs.vfat', ['-F', '32', '-n', 'BENCHESP', esp]);
    sh('mmd', ['-i', esp, '::/EFI', '::/EFI/BOOT']);
    sh('mcopy', ['-i', esp, '/usr/bin/bash', '::/EFI/BOOT/BOOTX64.EFI']);
  } finally {
    sh('losetup', ['-d', esp]);
  }
  const root = sh('losetup', ['--find', '--show', ...rootRange(`${DISK}.new`), `${DISK}.new`]).trim();
  const mnt = join(DIR, 'mnt');
  await mkdir(mnt, { recursive: true });
  try {
    sh('mkfs.ext4', ['-q', '-L', 'benchroot', root]);
    sh('mount', [root, mnt]);
    try {
      await mkdir(join(mnt, 'usr'));
      sh('cp', ['-a', '/usr/share', '/usr/bin', join(mnt, 'usr')]);
    } finally {
      sh('umount', [mnt]);
    }
  } finally {
    sh('losetup', ['-d', root]);
  }
  sh('mv', [`${DISK}.new`, DISK]);
}

const MiB = 1024 * 1024;

/** losetup arguments for the root partition of `disk`. */
function rootRange(disk: string): string[] {
  const info = sh('sgdisk', ['-i', '2', disk]);
  const first = Number(/First sector: (\d+)/.exec(info)![1]);
  const last = Number(/Last sector: (\d+)/.exec(info)![1]);
  return ['--offset', String(first * 512), '--sizelimit', String((last - first + 1) * 512)];
}

/** CPU seconds (user + system) of the processes run so far, by label. */
const cpu = new Map<string, number>();

function run(
  cmd: string[],
  label: string,
): { done: Promise<{ code: number | null; out: string; err: string; ms: number }> } {
  const t0 = performance.now();
  // The machine is shared: CPU time says what a run cost whatever else ran beside it.
  const timing = join(DIR, `cpu-${label.replaceAll(' ', '-')}.txt`);
  const prof = PROF ? ['--cpu-prof', '--cpu-prof-dir', join(PROF, label.replaceAll(' ', '-'))] : [];
  const child = spawn('/usr/bin/time', ['-f', '%U %S', '-o', timing, process.execPath, ...prof, ...cmd], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => {
    err = (err + d.toString()).slice(-4000);
    if (LOG) {
      const at = `[${((performance.now() - t0) / 1000).toFixed(2)} s] `;
      const text = d.toString().replace(/^(?=.)/gm, at);
      appendFileSync(join(LOG, `${label.replaceAll(' ', '-')}.log`), text);
    }
  });
  return {
    done: new Promise((resolve) =>
      child.on('close', (code) => {
        if (code !== 0) process.stderr.write(`${label} exited ${code}:\n${err}\n`);
        const [user, sys] = readFileSync(timing, 'utf8').trim().split('\n').at(-1)!.split(' ').map(Number);
        cpu.set(label, (user ?? 0) + (sys ?? 0));
        resolve({ code, out, err, ms: performance.now() - t0 });
      }),
    ),
  };
}

function dropCaches(): void {
  sh('sync', []);
  sh('sh', ['-c', 'echo 3 > /proc/sys/vm/drop_caches']);
}

/** A multicast of `source` (an image, or with `live` the disk itself) to fresh target disks. */
async function multicast(source: string, live: boolean, targets: string[]): Promise<number> {
  const port = 20000 + 2 * Math.floor(Math.random() * 6000);
  const group = `239.252.${1 + Math.floor(Math.random() * 250)}.${1 + Math.floor(Math.random() * 250)}`;
  const t0 = performance.now();
  const sender = run(
    [
      IMGCAST,
      'send',
      ...(live ? ['--live', '--level', level] : []),
      source,
      '--clients',
      String(targets.length),
      '--interface',
      '127.0.0.1',
      '--group',
      group,
      '--port',
      String(port),
      '--json',
      ...(LOG ? ['-v'] : []),
    ],
    live ? 'send live' : 'send image',
  );
  const got = targets.map((to, i) =>
    run(
      [
        IMG,
        'receive',
        '--from',
        `127.0.0.1:${port}`,
        '--to',
        to,
        '--interface',
        '127.0.0.1',
        '--name',
        `pc${i}`,
        '--restart',
        '--json',
        ...(LOG ? ['-v'] : []),
      ],
      `receive ${live ? 'live' : 'image'} pc${i}`,
    ),
  );
  const results = await Promise.all([sender.done, ...got.map((g) => g.done)]);
  if (results.some((r) => r.code !== 0)) throw new Error('a transfer failed');
  return (performance.now() - t0) / 1000;
}

/** Checks a restored disk as an administrator would. */
async function check(target: string, sourceSums: string): Promise<void> {
  const v = spawnSync('sgdisk', ['-v', target], { encoding: 'utf8' });
  if (!/No problems found/.test(v.stdout)) throw new Error(`sgdisk -v ${target}: ${v.stdout}`);
  const esp = sh('losetup', [
    '--find',
    '--show',
    '-r',
    '--offset',
    String(MiB),
    '--sizelimit',
    String(ESP_MIB * MiB),
    target,
  ]).trim();
  try {
    sh('fsck.vfat', ['-n', esp]);
  } finally {
    sh('losetup', ['-d', esp]);
  }
  const root = sh('losetup', ['--find', '--show', '-r', ...rootRange(target), target]).trim();
  try {
    sh('fsck.ext4', ['-fn', root]);
    if (sums(root) !== sourceSums) throw new Error(`${target}: the root tree differs from the source's`);
  } finally {
    sh('losetup', ['-d', root]);
  }
}

/** SHA-256 of every file of the ext4 filesystem on `dev`, sorted, as one text. */
function sums(dev: string): string {
  const mnt = join(DIR, 'check');
  sh('mkdir', ['-p', mnt]);
  sh('mount', ['-o', 'ro', dev, mnt]);
  try {
    return sh('sh', ['-c', `cd ${mnt} && find . -type f -print0 | sort -z | xargs -0 sha256sum`]);
  } finally {
    sh('umount', [mnt]);
  }
}

async function targetsFresh(): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < receivers; i++) {
    const file = join(DIR, `target${i}.img`);
    await rm(file, { force: true });
    await sparse(file, DISK_BYTES);
    out.push(file);
  }
  return out;
}

await buildDisk();
const src = sh('losetup', ['--find', '--show', '-r', DISK]).trim();
try {
  const rootDev = sh('losetup', ['--find', '--show', '-r', ...rootRange(DISK), DISK]).trim();
  let sourceSums: string;
  try {
    sourceSums = sums(rootDev);
  } finally {
    sh('losetup', ['-d', rootDev]);
  }
  const files = sourceSums.split('\n').filter(Boolean).length;
  process.stdout.write(
    `reference disk: ${DISK_BYTES / 1024 ** 3} GiB GPT, ext4 root with ${files} files; ${receivers} receiver(s), level ${level}\n`,
  );
  for (let rep = 0; rep < Number(args.repeat); rep++) {
    // Live master: one session from the disk.
    let targets = await targetsFresh();
    dropCaches();
    const live = await multicast(src, true, targets);
    for (const t of targets) await check(t, sourceSums);
    const cpuOf = (prefix: string) =>
      [...cpu].filter(([k]) => k.startsWith(prefix)).reduce((n, [, v]) => n + v, 0);
    const liveCpu = `CPU: master ${cpuOf('send live').toFixed(1)} s, receivers ${cpuOf('receive live').toFixed(1)} s`;
    if (args.only === 'live') {
      process.stdout.write(`run ${rep + 1}: live ${live.toFixed(1)} s (${liveCpu}); every copy verified\n`);
      continue;
    }

    // What it replaces: make the image, then send it.
    targets = await targetsFresh();
    const image = join(DIR, 'ref.imgc');
    await rm(image, { force: true });
    dropCaches();
    const make = await run([IMG, 'make', src, image, '--level', level], 'make').done;
    if (make.code !== 0) throw new Error('img make failed');
    dropCaches();
    const send = await multicast(image, false, targets);
    for (const t of targets) await check(t, sourceSums);
    const imageBytes = Number(sh('stat', ['-c', '%s', image]).trim());
    process.stdout.write(
      `run ${rep + 1}: live ${live.toFixed(1)} s; img make ${(make.ms / 1000).toFixed(1)} s + imgcast send ${send.toFixed(1)} s = ${(make.ms / 1000 + send).toFixed(1)} s ` +
        `(live / (make + send) = ${(live / (make.ms / 1000 + send)).toFixed(2)}; image ${(imageBytes / MiB).toFixed(0)} MiB); every copy verified\n` +
        `  live ${liveCpu}; image CPU: make ${cpuOf('make').toFixed(1)} s, sender ${cpuOf('send image').toFixed(1)} s, receivers ${cpuOf('receive image').toFixed(1)} s\n`,
    );
    await rm(image, { force: true });
  }
} finally {
  sh('losetup', ['-d', src]);
  for (let i = 0; i < receivers; i++) await rm(join(DIR, `target${i}.img`), { force: true });
  if (!args.keep) await rm(DIR, { recursive: true, force: true });
}
