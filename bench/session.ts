/**
 * npm run bench:session [-- --rounds 3 --only imgcast,pipeline --rebuild]
 *
 * A live master to 3 clients over the namespace lab, against the pipeline administrators build
 * today with Clonezilla's tools for the same job, side by side in one run, in alternating order
 * over ROUNDS rounds. The lab (test/helpers/netlab.ts: veth on one bridge, MTU 1500, no rate
 * limit) has `imgcast server` on host 0, the master on host 1 and the clients on hosts 2-4.
 *
 * Reference disk (built once, cached in /var/tmp/imgcast-bench/session; --rebuild makes it
 * again): a 4 GiB GPT disk file, a 256 MiB vfat EFI system partition holding GRUB's EFI modules
 * and a loader, and an ext4 root holding a copy of /usr/share and part of /usr/lib (about 1 GB
 * of real files). The master sends it from a read-only loop device; each client writes a blank
 * loop disk of the same size, made anew for every run.
 *
 *   imgcast   `img session NAME master clients=3 --server … --disk DEV` on the master and
 *             `img session NAME --server … --disk DEV` on each client (the server runs the whole
 *             time, a new session name per run). The clients verify what they wrote before
 *             they exit. Timed from starting the four commands to the last client's exit.
 *   pipeline  What Clonezilla SE does, by hand: three udpcast sessions one after the other, each
 *             on its own port pair and group in 239/8 (a receiver that starts early must not
 *             join the previous session's sender). 1: a tar of `sgdisk --backup` and `sfdisk -d`
 *             (Clonezilla sends the image's small files first the same way), which each client
 *             loads with `sgdisk --load-backup` before asking the kernel for the new partitions;
 *             2: the vfat partition raw, `dd | zstd -3 -T0 | udp-sender`, written with
 *             `udp-receiver | zstd -d | dd`; 3: the root, `partclone.ext4 -c -s ROOT -o - |
 *             zstd -3 -T0 | udp-sender`, restored with `udp-receiver | zstd -d | partclone.ext4
 *             -r -s - -o ROOT`. udp-sender `--min-receivers 3 --full-duplex --nokbd`, udp-receiver
 *             `--nokbd --rcvbuf` (the host's net.core.rmem_max, up to the 32 MiB imgcast asks
 *             for). Each client ends with `sync` of its partitions. Timed from starting the four
 *             scripts to the last client's exit. (`partx -u` after loading the table: this
 *             kernel has no GPT parser, so the partitions' nodes come from partx, here and in the
 *             checks.)
 * After every run, every copy is checked: sgdisk -v and sfdisk --verify clean, its table (sfdisk
 * -d) equal to the source's, fsck.vfat -n and fsck.ext4 -fn clean, every file of both
 * filesystems equal to the source's by SHA-256; a copy that differs stops the bench. A run whose
 * command fails (or still runs after 10 minutes) is reported and run again, twice at most.
 * Page caches are dropped before each run.
 *
 * Writes BENCHMARKS.md between `<!-- bench:session -->` markers. Logs of the last run, each
 * line stamped with seconds since its run started (imgcast with -v, the pipeline scripts' steps
 * and udpcast's own output): /var/tmp/imgcast-bench/session/logs. IMGCAST_BENCH_PROF=dir writes
 * a CPU profile of every imgcast process (dir/<round>-<process>/).
 *
 * Needs root (namespaces, loop devices, mounts) and: udpcast (udp-sender, udp-receiver),
 * partclone (partclone.ext4), zstd, gdisk (sgdisk), fdisk (sfdisk), dosfstools, mtools,
 * e2fsprogs, GNU time (/usr/bin/time). On Debian: apt-get install udpcast partclone zstd gdisk
 * fdisk dosfstools mtools e2fsprogs time. A benchmark: nothing in CI runs it.
 */
import { execFileSync, spawnSync, type ChildProcess } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { appendFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { NetLab } from '../test/helpers/netlab.ts';
import { rmemMax } from './lib/conditions.ts';
import { machineLine, median, writeSection } from './report.ts';

const ROOT = resolve(import.meta.dirname, '..');
const DIR = '/var/tmp/imgcast-bench/session';
/** The version in the name: a change to how the disk is built makes a new one. */
const DISK = join(DIR, 'ref-v1.img');
const WORK = join(DIR, 'run');
const LOGS = join(DIR, 'logs');
const MiB = 1024 * 1024;
const DISK_BYTES = 4 * 1024 * MiB;
const ESP_MIB = 256;
/** What the root holds: /usr/share whole, and these of /usr/lib (about 1 GB in all on Debian 12). */
const ROOT_TREES = [
  '/usr/share',
  '/usr/lib/gcc',
  '/usr/lib/python3',
  '/usr/lib/python3.11',
  '/usr/lib/git-core',
  '/usr/lib/postgresql',
  '/usr/lib/systemd',
  '/usr/lib/file',
];
const JOURNALS = '/var/lib/imgcast/journals';
const TARGET = 0.8;
/** What imgcast's receivers ask for; udp-receiver gets the same, capped by rmem_max as imgcast's is. */
const RCVBUF = 32 * MiB;
const PROF = process.env.IMGCAST_BENCH_PROF;
const MASTER = 1;
const CLIENTS = [2, 3, 4];

const { values: args } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    only: { type: 'string', default: 'imgcast,pipeline' },
    rebuild: { type: 'boolean', default: false },
  },
});
const rounds = Number(args.rounds);
const kinds = args.only.split(',') as Kind[];
type Kind = 'imgcast' | 'pipeline';
if (!Number.isInteger(rounds) || rounds < 1)
  throw new Error(`--rounds: a whole number ≥ 1, not ${args.rounds}`);
for (const k of kinds)
  if (k !== 'imgcast' && k !== 'pipeline') throw new Error(`--only: imgcast and/or pipeline, not ${k}`);

function sh(cmd: string, a: string[]): string {
  return execFileSync(cmd, a, {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, MTOOLS_SKIP_CHECK: '1' },
    maxBuffer: 256 * MiB,
  });
}

// ---------------------------------------------------------------- what is undone on every way out

const loops = new Set<string>();
const mounts = new Set<string>();
let lab: NetLab | undefined = undefined;

function losetup(a: string[]): string {
  const dev = sh('losetup', ['--find', '--show', ...a]).trim();
  loops.add(dev);
  return dev;
}

/**
 * A loop device over `file` with its partitions' nodes (DEVpN). This kernel has no GPT parser
 * (CONFIG_EFI_PARTITION is off), so `losetup -P` alone finds none: partx reads the table itself
 * and tells the kernel.
 */
function withPartitions(file: string, readOnly: boolean): string {
  const dev = losetup(['-P', ...(readOnly ? ['-r'] : []), file]);
  sh('partx', ['-u', dev]);
  return dev;
}

function detach(dev: string): void {
  spawnSync('losetup', ['-d', dev], { stdio: 'ignore' });
  loops.delete(dev);
  rmSync(journalOf(dev), { force: true });
}

function cleanup(): void {
  lab?.destroy();
  for (const m of [...mounts].reverse()) spawnSync('umount', [m], { stdio: 'ignore' });
  mounts.clear();
  for (const d of [...loops]) detach(d);
  rmSync(WORK, { recursive: true, force: true });
}
process.on('exit', cleanup);
for (const [sig, code] of [
  ['SIGINT', 130],
  ['SIGTERM', 143],
  ['SIGHUP', 129],
] as const) {
  process.on(sig, () => {
    process.stderr.write(`\n${sig}: removing the lab, the loop devices and the blank disks\n`);
    process.exit(code);
  });
}

function journalOf(dev: string): string {
  return join(JOURNALS, `${dev.slice(1).replaceAll('/', '_')}.journal`);
}

// ---------------------------------------------------------------- the reference disk

function buildDisk(): void {
  if (existsSync(DISK) && !args.rebuild) return;
  mkdirSync(DIR, { recursive: true });
  const file = `${DISK}.new`;
  rmSync(file, { force: true });
  writeFileSync(file, '');
  sh('truncate', ['-s', String(DISK_BYTES), file]);
  sh('sgdisk', [
    `-n1:2048:+${ESP_MIB}M`,
    '-t1:ef00',
    '-c1:EFI system partition',
    '-n2:0:0',
    '-t2:8304',
    '-c2:root',
    file,
  ]);
  const dev = withPartitions(file, false);
  const mnt = join(DIR, 'mnt');
  try {
    waitFor(`${dev}p2`);
    sh('mkfs.vfat', ['-F', '32', '-n', 'EFI', `${dev}p1`]);
    const esp = ['-i', `${dev}p1`];
    sh('mmd', [...esp, '::/EFI', '::/EFI/BOOT', '::/EFI/debian']);
    sh('mcopy', [...esp, '/usr/bin/bash', '::/EFI/BOOT/BOOTX64.EFI']);
    if (existsSync('/usr/lib/grub/x86_64-efi'))
      sh('mcopy', [...esp, '-s', '/usr/lib/grub/x86_64-efi', '::/EFI/debian/']);
    sh('mkfs.ext4', ['-q', '-L', 'root', `${dev}p2`]);
    mkdirSync(mnt, { recursive: true });
    sh('mount', [`${dev}p2`, mnt]);
    mounts.add(mnt);
    try {
      for (const tree of ROOT_TREES) {
        if (!existsSync(tree)) continue;
        const into = join(mnt, tree, '..');
        mkdirSync(into, { recursive: true });
        sh('cp', ['-a', tree, into]);
      }
    } finally {
      sh('umount', [mnt]);
      mounts.delete(mnt);
    }
  } finally {
    detach(dev);
  }
  sh('mv', [file, DISK]);
}

/** Waits (up to 10 s) for a partition's device node to show up. */
function waitFor(node: string): void {
  const until = Date.now() + 10_000;
  while (!existsSync(node)) {
    if (Date.now() > until) throw new Error(`${node} never appeared`);
    spawnSync('sleep', ['0.05']);
  }
}

// ---------------------------------------------------------------- checks of a copy

interface Contents {
  /** sfdisk -d with the device's name taken out. */
  table: string;
  esp: string;
  root: string;
  files: number;
  bytes: number;
}

/** SHA-256 of every file under `dir`, sorted, as one text. */
function sumsOf(dir: string): string {
  return sh('sh', ['-c', `cd '${dir}' && find . -type f -print0 | sort -z | xargs -0 -r sha256sum`]);
}

/** A disk file's table and both filesystems, each checked as an administrator would. */
function contents(file: string, check: boolean): Contents {
  const dev = withPartitions(file, true);
  const scratch = join(WORK, `check-${randomInt(1e9)}`);
  try {
    waitFor(`${dev}p2`);
    if (check) {
      const v = spawnSync('sgdisk', ['-v', dev], { encoding: 'utf8' });
      if (!/No problems found/.test(v.stdout)) throw new Error(`sgdisk -v ${file}: ${v.stdout}${v.stderr}`);
      const s = spawnSync('sfdisk', ['--verify', dev], { encoding: 'utf8' });
      if (s.status !== 0 || !/No errors detected/.test(s.stdout) || /warn/i.test(s.stdout + s.stderr))
        throw new Error(`sfdisk --verify ${file}: ${s.stdout}${s.stderr}`);
      sh('fsck.vfat', ['-n', `${dev}p1`]);
      sh('fsck.ext4', ['-fn', `${dev}p2`]);
    }
    const table = sh('sfdisk', ['-d', dev]).replaceAll(dev, 'DISK');
    // This kernel has no vfat module: the ESP's files are read with mtools.
    mkdirSync(join(scratch, 'esp'), { recursive: true });
    sh('mcopy', ['-s', '-n', '-i', `${dev}p1`, '::/*', join(scratch, 'esp')]);
    const esp = sumsOf(join(scratch, 'esp'));
    const mnt = join(scratch, 'root');
    mkdirSync(mnt);
    sh('mount', ['-o', 'ro', `${dev}p2`, mnt]);
    mounts.add(mnt);
    try {
      const root = sumsOf(mnt);
      const [files, bytes] = sh('sh', [
        '-c',
        `cd '${mnt}' && find . -type f -printf '%s\\n' | awk '{n++; b+=$1} END {print n, b}'`,
      ])
        .trim()
        .split(' ')
        .map(Number);
      return { table, esp, root, files: files ?? 0, bytes: bytes ?? 0 };
    } finally {
      sh('umount', [mnt]);
      mounts.delete(mnt);
    }
  } finally {
    detach(dev);
    rmSync(scratch, { recursive: true, force: true });
  }
}

function verify(kind: Kind, file: string, ref: Contents): void {
  const got = contents(file, true);
  const differs = (['table', 'esp', 'root'] as const).filter((k) => got[k] !== ref[k]);
  if (differs.length) throw new Error(`${kind}: ${file}: ${differs.join(', ')} differ(s) from the source's`);
}

// ---------------------------------------------------------------- processes in the lab

interface Ended {
  label: string;
  code: number | null;
  /** Seconds since the run started. */
  end: number;
  /** User + system CPU seconds, and the system part. */
  cpu: number;
  sys: number;
  rssKiB: number;
  stdout: string;
  stderr: string;
}

/**
 * `cmd args` in lab host `host` under /usr/bin/time (CPU seconds, peak RSS); its stderr, each
 * line stamped with seconds since `t0`, goes to LOGS/<run>-<label>.log.
 */
function started(
  host: number,
  run: string,
  label: string,
  cmd: string,
  a: string[],
  t0: number,
  env: NodeJS.ProcessEnv = process.env,
): { child: ChildProcess; done: Promise<Ended> } {
  const timing = join(WORK, `time-${run}-${label}.txt`);
  const log = join(LOGS, `${run}-${label}.log`);
  const child = lab!.exec(host, '/usr/bin/time', ['-f', '@@ %U %S %M', '-o', timing, cmd, ...a], {
    cwd: ROOT,
    env,
  });
  let stdout = '';
  let stderr = '';
  let partial = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => {
    stderr = (stderr + d).slice(-8000);
    const at = ((performance.now() - t0) / 1000).toFixed(2);
    const lines = (partial + d).split(/\r|\n/);
    partial = lines.pop() ?? '';
    const text = lines
      .filter((l) => l.trim())
      .map((l) => `[${at} s] ${l}\n`)
      .join('');
    if (text) appendFileSync(log, text);
  });
  const done = new Promise<Ended>((res) =>
    child.on('close', (code) => {
      const end = (performance.now() - t0) / 1000;
      let cpu = NaN;
      let sys = NaN;
      let rssKiB = NaN;
      try {
        const m = /@@ ([\d.]+) ([\d.]+) (\d+)/.exec(readFileSync(timing, 'utf8'));
        if (m) [cpu, sys, rssKiB] = [Number(m[1]) + Number(m[2]), Number(m[2]), Number(m[3])];
      } catch {
        // time was killed before it wrote
      }
      if (partial.trim()) appendFileSync(log, `[${end.toFixed(2)} s] ${partial}\n`);
      res({ label, code, end, cpu, sys, rssKiB, stdout, stderr });
    }),
  );
  return { child, done };
}

function dropCaches(): void {
  sh('sync', []);
  writeFileSync('/proc/sys/vm/drop_caches', '3');
}

/** A blank disk file of the reference's size, on a loop device (with its partitions scanned). */
function blankDisk(name: string): { file: string; dev: string } {
  const file = join(WORK, `${name}.img`);
  rmSync(file, { force: true });
  writeFileSync(file, '');
  sh('truncate', ['-s', String(DISK_BYTES), file]);
  const dev = losetup(['-P', file]);
  rmSync(journalOf(dev), { force: true });
  return { file, dev };
}

interface RunResult {
  /** Start to the last client's exit, seconds. */
  wall: number;
  /** Start to the master's exit. */
  masterEnd: number;
  clientEnds: number[];
  /** User + system CPU seconds, and the system part (GNU time). */
  masterCpu: number;
  masterSys: number;
  clientCpu: number[];
  clientSys: number[];
  masterRssKiB: number;
  load: number;
}

/** A run in which a command failed (as opposed to a copy that came out wrong, which stops the bench). */
class RunFailure extends Error {}

/** No run here takes minutes on a quiet machine; a hung one is stopped and counted as failed. */
const RUN_TIMEOUT_MS = 10 * 60_000;

async function finish(
  kind: Kind,
  master: { child: ChildProcess; done: Promise<Ended> },
  clients: Array<{ child: ChildProcess; done: Promise<Ended> }>,
  disks: Array<{ file: string; dev: string }>,
  ref: Contents,
  load: number,
): Promise<RunResult> {
  const all = [...clients, master];
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<'timeout'>(
    (res) => (timer = setTimeout(() => res('timeout'), RUN_TIMEOUT_MS)),
  );
  try {
    if ((await Promise.race([Promise.all(all.map((p) => p.done)), timedOut])) === 'timeout') {
      for (const p of all) lab!.kill9(p.child);
      await Promise.all(all.map((p) => p.done));
      throw new RunFailure(`${kind}: still running after ${RUN_TIMEOUT_MS / 60_000} minutes, stopped`);
    }
    const ends = await Promise.all(clients.map((c) => c.done));
    const m = await master.done;
    const bad = [...ends, m].find((e) => e.code !== 0);
    if (bad) {
      const why = bad.stderr.trim().split('\n').filter(Boolean).at(-1) ?? '';
      process.stderr.write(`${kind}: ${bad.label} exited ${bad.code}:\n${bad.stderr}\n`);
      throw new RunFailure(`${kind}: ${bad.label} exited ${bad.code}: ${why.slice(0, 400)}`);
    }
    for (const d of disks) detach(d.dev);
    for (const d of disks) verify(kind, d.file, ref);
    return {
      wall: Math.max(...ends.map((e) => e.end)),
      masterEnd: m.end,
      clientEnds: ends.map((e) => e.end),
      masterCpu: m.cpu,
      masterSys: m.sys,
      clientCpu: ends.map((e) => e.cpu),
      clientSys: ends.map((e) => e.sys),
      masterRssKiB: m.rssKiB,
      load,
    };
  } finally {
    clearTimeout(timer);
    for (const d of disks) {
      if (loops.has(d.dev)) detach(d.dev);
      rmSync(d.file, { force: true });
    }
  }
}

// ---------------------------------------------------------------- (a) imgcast: a live master

const ports = randomInt(20_000, 50_000);
const api = () => `${lab!.addr(0)}:${ports}`;
const workstationEnv = (): NodeJS.ProcessEnv => {
  const env: NodeJS.ProcessEnv = {};
  // Not the caller's server or token; its IMGCAST_DEBUG_* switches (timings in the logs) do pass.
  for (const [k, v] of Object.entries(process.env))
    if (!k.startsWith('IMGCAST_') || k.startsWith('IMGCAST_DEBUG_')) env[k] = v;
  return { ...env, XDG_CONFIG_HOME: join(DIR, 'config') };
};
const node = (run: string, label: string): string[] => [
  '--max-semi-space-size=8',
  ...(PROF ? ['--cpu-prof', '--cpu-prof-dir', join(PROF, `${run}-${label}`)] : []),
];

async function startServer(): Promise<void> {
  const data = join(WORK, 'server');
  mkdirSync(data, { recursive: true });
  const third = randomInt(3, 250);
  const server = started(
    0,
    'server',
    'imgcast-server',
    process.execPath,
    [
      'bin/imgcast.js',
      'server',
      '--data',
      data,
      '--listen',
      api(),
      '--interface',
      lab!.addr(0),
      '--ports',
      `${ports + 10}-${ports + 29}`,
      '--groups',
      `239.93.${third}.1`,
      '--discovery',
      'off',
    ],
    performance.now(),
    workstationEnv(),
  );
  let err = '';
  server.child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  const until = Date.now() + 30_000;
  while (!/API on /.test(err)) {
    if (server.child.exitCode !== null || Date.now() > until)
      throw new Error(`imgcast server did not come up:\n${err}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function imgcastRun(run: string, source: string, ref: Contents): Promise<RunResult> {
  const disks = CLIENTS.map((h) => blankDisk(`${run}-ws${h}`));
  const name = `bench${randomInt(1e6)}`;
  dropCaches();
  const load = loadavg()[0]!;
  const t0 = performance.now();
  const master = started(
    MASTER,
    run,
    'master',
    process.execPath,
    [
      ...node(run, 'master'),
      'bin/img.js',
      'session',
      name,
      'master',
      `clients=${CLIENTS.length}`,
      '--server',
      api(),
      '--disk',
      source,
      '--json',
      '-v',
    ],
    t0,
    workstationEnv(),
  );
  const clients = CLIENTS.map((h, i) =>
    started(
      h,
      run,
      `ws${h}`,
      process.execPath,
      [
        ...node(run, `ws${h}`),
        'bin/img.js',
        'session',
        name,
        '--server',
        api(),
        '--disk',
        disks[i]!.dev,
        '--restart',
        '--json',
        '-v',
      ],
      t0,
      workstationEnv(),
    ),
  );
  return finish('imgcast', master, clients, disks, ref, load);
}

// ---------------------------------------------------------------- (b) the Clonezilla-style pipeline

const STAMP = 't() { echo "@@ step $*" >&2; }';

/** udpcast's options for step `n` (1-3): its own port pair and rendezvous group per step. */
function udpcast(n: number, groupBase: string, port: number): string {
  return `--interface eth0 --portbase ${port + 10 * n} --mcast-rdv-address ${groupBase}.${n} --nokbd`;
}

function masterScript(disk: string, dir: string, groupBase: string, port: number): string {
  const send = (n: number) =>
    `udp-sender ${udpcast(n, groupBase, port)} --mcast-data-address ${groupBase}.${100 + n} --min-receivers ${CLIENTS.length} --full-duplex`;
  return [
    'set -euo pipefail',
    STAMP,
    `mkdir -p ${dir}`,
    't table',
    `sgdisk --backup=${dir}/gpt.bin ${disk} >/dev/null`,
    `sfdisk -d ${disk} > ${dir}/sfdisk.txt`,
    `tar -C ${dir} -cf ${dir}/table.tar gpt.bin sfdisk.txt`,
    't send table',
    `${send(1)} --file ${dir}/table.tar`,
    't send esp',
    `dd if=${disk}p1 bs=4M status=none | zstd -3 -T0 -q | ${send(2)}`,
    't send root',
    `partclone.ext4 -c -q -s ${disk}p2 -o - | zstd -3 -T0 -q | ${send(3)}`,
    't done',
  ].join('\n');
}

function clientScript(disk: string, dir: string, groupBase: string, port: number, rcvbuf: number): string {
  const receive = (n: number) => `udp-receiver ${udpcast(n, groupBase, port)} --rcvbuf ${rcvbuf}`;
  return [
    'set -euo pipefail',
    STAMP,
    `mkdir -p ${dir}`,
    't receive table',
    `${receive(1)} --file ${dir}/table.tar`,
    `tar -C ${dir} -xf ${dir}/table.tar`,
    `sgdisk --load-backup=${dir}/gpt.bin ${disk} >/dev/null`,
    // This kernel has no GPT parser (see withPartitions): partx tells it the new partitions.
    `partx -u ${disk}`,
    `for i in $(seq 200); do [ -b ${disk}p2 ] && break; sleep 0.05; done`,
    't receive esp',
    `${receive(2)} | zstd -d -q | dd of=${disk}p1 bs=4M status=none`,
    't receive root',
    `${receive(3)} | zstd -d -q | partclone.ext4 -r -q -s - -o ${disk}p2`,
    't sync',
    `sync ${disk}p1 ${disk}p2`,
    't done',
  ].join('\n');
}

async function pipelineRun(run: string, source: string, ref: Contents): Promise<RunResult> {
  const disks = CLIENTS.map((h) => blankDisk(`${run}-ws${h}`));
  const groupBase = `239.94.${randomInt(3, 250)}`;
  const port = ports + 100;
  const rcvbuf = Math.min(RCVBUF, rmemMax());
  dropCaches();
  const load = loadavg()[0]!;
  const t0 = performance.now();
  const master = started(
    MASTER,
    run,
    'master',
    'bash',
    ['-c', masterScript(source, join(WORK, `${run}-master`), groupBase, port)],
    t0,
  );
  const clients = CLIENTS.map((h, i) =>
    started(
      h,
      run,
      `ws${h}`,
      'bash',
      ['-c', clientScript(disks[i]!.dev, join(WORK, `${run}-ws${h}`), groupBase, port, rcvbuf)],
      t0,
    ),
  );
  return finish('pipeline', master, clients, disks, ref, load);
}

// ---------------------------------------------------------------- the run

buildDisk();
rmSync(WORK, { recursive: true, force: true });
rmSync(LOGS, { recursive: true, force: true });
mkdirSync(WORK, { recursive: true });
mkdirSync(LOGS, { recursive: true });
const ref = contents(DISK, true);
const esp = ref.esp.split('\n').filter(Boolean).length;
process.stderr.write(
  `reference disk ${DISK}: ${DISK_BYTES / 1024 ** 3} GiB GPT, ${ESP_MIB} MiB ESP (${esp} files), ext4 root with ${ref.files} files, ${(ref.bytes / 1e9).toFixed(2)} GB\n`,
);
const source = withPartitions(DISK, true);
waitFor(`${source}p2`);
lab = NetLab.create(1 + CLIENTS.length);
if (kinds.includes('imgcast')) await startServer();

const uptimes: string[] = [sh('uptime', []).trim()];
const rows: Array<Partial<Record<Kind, RunResult>>> = [];
const failures: string[] = [];
for (let r = 0; r < rounds; r++) {
  // Alternating order: neither kind always runs second, on a machine the other just warmed.
  const order = r % 2 === 0 ? kinds : [...kinds].reverse();
  const row: Partial<Record<Kind, RunResult>> = {};
  for (const kind of order) {
    process.stderr.write(`round ${r + 1}: ${kind}…\n`);
    let x: RunResult | undefined;
    // A run whose command failed is run again (at most twice), and the failure is reported.
    for (let attempt = 1; !x; attempt++) {
      const run = `r${r + 1}-${kind}${attempt > 1 ? `-try${attempt}` : ''}`;
      try {
        x = kind === 'imgcast' ? await imgcastRun(run, source, ref) : await pipelineRun(run, source, ref);
      } catch (err) {
        if (!(err instanceof RunFailure) || attempt >= 3) throw err;
        failures.push(`round ${r + 1}, ${kind}, attempt ${attempt}: ${err.message}`);
        process.stderr.write(`  failed, running it again: ${err.message}\n`);
      }
    }
    row[kind] = x;
    process.stderr.write(
      `  ${x.wall.toFixed(1)} s (clients ${x.clientEnds.map((e) => e.toFixed(1)).join(', ')} s; master ${x.masterEnd.toFixed(1)} s; ` +
        `CPU (system part) master ${x.masterCpu.toFixed(1)} (${x.masterSys.toFixed(1)}) s, clients ${x.clientCpu.map((c, i) => `${c.toFixed(1)} (${x.clientSys[i]!.toFixed(1)})`).join(', ')} s; load ${x.load.toFixed(2)}); 3 copies verified\n`,
    );
  }
  rows.push(row);
  uptimes.push(sh('uptime', []).trim());
}

// ---------------------------------------------------------------- the report

const both = kinds.length === 2;
const ratios = both ? rows.map((r) => r.imgcast!.wall / r.pipeline!.wall) : [];
const total = (x: RunResult) => x.masterCpu + x.clientCpu.reduce((a, b) => a + b, 0);
const fmt = (x: RunResult | undefined) =>
  x
    ? `${x.wall.toFixed(1)} s | ${x.masterCpu.toFixed(1)} / ${Math.max(...x.clientCpu).toFixed(1)} / ${total(x).toFixed(1)} s | ${x.load.toFixed(2)}`
    : '– | – | –';
const body = [
  '## Live master vs. the Clonezilla-style pipeline (`bench/session.ts`)',
  '',
  `Command: \`npm run bench:session -- ${process.argv.slice(2).join(' ')}\`  `,
  `Date: ${new Date().toISOString()}  `,
  `Machine: ${machineLine()}  `,
  `Load (uptime) before the first round and after each: ${uptimes.map((u) => `\`${/load average: (.*)$/.exec(u)?.[1] ?? u}\``).join(', ')}  `,
  `Lab: network namespaces on one bridge (veth, MTU 1500, no rate limit; every process shares the same CPUs), \`imgcast server\` on host 0, the master on host 1, 3 clients; net.core.rmem_max ${rmemMax()}.  `,
  `Disk: ${DISK_BYTES / 1024 ** 3} GiB GPT, ${ESP_MIB} MiB vfat ESP (${esp} files), ext4 root holding ${ref.files} files, ${(ref.bytes / 1e9).toFixed(2)} GB (/usr/share and part of /usr/lib of Debian 12), on loop devices over files in /var/tmp; page caches dropped before each run.  `,
  '- **imgcast**: `img session NAME master clients=3 --server … --disk DEV` on the master (default level, balanced), `img session NAME --server … --disk DEV` on each client (each verifies what it wrote before it exits).',
  `- **pipeline**: three udpcast sessions in turn, each on its own ports and group: a tar of \`sgdisk --backup\` + \`sfdisk -d\` (clients: \`sgdisk --load-backup\`, \`partx -u\`); the ESP raw, \`dd | zstd -3 -T0 | udp-sender\` → \`udp-receiver | zstd -d | dd\`; the root, \`partclone.ext4 -c -s ROOT -o - | zstd -3 -T0 | udp-sender\` → \`udp-receiver | zstd -d | partclone.ext4 -r -s - -o ROOT\`; then \`sync\` of the partitions. udp-sender \`--min-receivers 3 --full-duplex --nokbd\`, udp-receiver \`--nokbd --rcvbuf ${Math.min(RCVBUF, rmemMax())}\`.`,
  '',
  'Wall time: from starting the master and the 3 clients together to the last client’s exit. Every copy checked after each run: `sgdisk -v`, `sfdisk --verify`, its table (`sfdisk -d`) equal to the source’s, `fsck.vfat -n` and `fsck.ext4 -fn` clean, every file of both filesystems equal to the source’s by SHA-256 — all 3 copies of every run passed (the script stops at the first that does not). CPU: user + system seconds (GNU time) of the master’s command, of the busiest client’s, and of all four together — in this lab the four machines share the same cores, so the wall time follows the sum. Load: the 1-minute load average as the run started.',
  '',
  '| round | order | imgcast | CPU master / client / all | load | pipeline | CPU master / client / all | load | imgcast ÷ pipeline |',
  '|---|---|---|---|---|---|---|---|---|',
  ...rows.map((r, i) => {
    const order = (i % 2 === 0 ? kinds : [...kinds].reverse()).join(' → ');
    return `| ${i + 1} | ${order} | ${fmt(r.imgcast)} | ${fmt(r.pipeline)} | ${both ? `${ratios[i]!.toFixed(2)}×` : '–'} |`;
  }),
  '',
  both
    ? `Median ratio **${median(ratios).toFixed(2)}×** (target ≤ ${TARGET}×: **${median(ratios) <= TARGET ? 'met' : 'not met'}**); imgcast median ${median(rows.map((r) => r.imgcast!.wall)).toFixed(1)} s, pipeline median ${median(rows.map((r) => r.pipeline!.wall)).toFixed(1)} s.`
    : `Only ${kinds.join(', ')} ran: no ratio.`,
  '',
  failures.length
    ? `Runs whose command failed and were run again (not in the table):\n${failures.map((f) => `- ${f.replaceAll('\n', ' ')}`).join('\n')}`
    : 'No run failed.',
].join('\n');
process.stdout.write(`${body}\n`);
if (both) writeSection(ROOT, 'session', body);
cleanup();
