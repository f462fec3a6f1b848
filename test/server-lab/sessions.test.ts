/**
 * The imaging server end to end, the way a lab uses it: `imgcast server` in the lab's server
 * namespace (host n0 of a NetLab), the admin CLI (`imgcast mcast | status | stop | session … |
 * history`) run there too, and `img session NAME` on each workstation, each in its own namespace
 * writing its own loop-device disk. Every command is the bin script itself, with the arguments a
 * user types; nothing of the server, the client or the transport is called from here.
 *
 * What a workstation got is read back from its disk with the system's own tools, never the
 * product's: the partition table (sfdisk -d, device names left out), each filesystem's type,
 * label and UUID (blkid), a full `fsck -n` of each, and every file's type, mode, size and sha256
 * (ext4 mounted read-only; the EFI partition's vfat copied out with mtools, since this kernel
 * cannot mount vfat), all compared with the reference disk they were captured from.
 *
 * Every lab uses a listen port, session ports, session groups and a discovery group and port of
 * its own, never imgcast's defaults, so a server left running elsewhere on this machine (the
 * shared ml* lab) is never reached by mistake.
 *
 * Two cores: one lab at a time, one file. About a minute when the product works. Nothing here
 * changes a kernel setting: the receivers tune IP reassembly in their own namespace (gone with
 * the lab), and net.core.rmem_max, global and read-only inside a namespace, stays as it is.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash, randomInt } from 'node:crypto';
import {
  chmodSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import type { HistoryEntry, Session, Status } from '../../src/api/schemas.ts';
import { hasCommand, isRoot, netnsUnavailable, skipUnless } from '../helpers/env.ts';
import {
  describeExit,
  indent,
  randomFile,
  secs,
  settle,
  startProc,
  tail,
  type Proc,
} from '../helpers/lab-process.ts';
import { NetLab, shapingUnavailable, type RunResult } from '../helpers/netlab.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const IMG = join(ROOT, 'bin/img.js');
const IMGCAST = join(ROOT, 'bin/imgcast.js');
const MIB = 1024 * 1024;
/** The reference disk and every workstation's disk: the same size, so the GPT's last LBA matches too. */
const DISK_BYTES = 64 * MIB;
/** A whole session (join, send, write, verify, report) must end within this; it takes ~10 s unslowed. */
const SESSION_BOUND_MS = 90_000;
const JOURNALS = '/var/lib/imgcast/journals';

let work: string | undefined;
function workDir(): string {
  work ??= mkdtempSync(join(tmpdir(), 'imgcast-server-lab-'));
  return work;
}
after(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

/**
 * The product's commands only: no IMGCAST_* variable or client.json of the machine's user may
 * point them elsewhere (a test sets what it means to, such as IMGCAST_DISCOVERY).
 */
function productEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('IMGCAST_')) env[k] = v;
  return {
    ...env,
    PATH: `${join(ROOT, 'node_modules/.bin')}:${process.env.PATH ?? ''}`,
    XDG_CONFIG_HOME: join(workDir(), 'config'),
    ...extra,
  };
}

// ---------------------------------------------------------------- what the tests need

let loopCache: string | undefined | null = null;
/**
 * Why the disks cannot be built and checked here, or undefined. vfat is not required: without
 * mkfs.vfat (or mtools, or fsck.vfat) the reference has no EFI partition, and the tests say so.
 */
function disksUnavailable(): string | undefined {
  if (loopCache !== null) return loopCache;
  if (!isRoot()) return (loopCache = 'needs root for loop devices');
  for (const c of ['losetup', 'sgdisk', 'sfdisk', 'mkfs.ext4', 'fsck.ext4', 'mount', 'blkid']) {
    if (!hasCommand(c)) return (loopCache = `needs ${c}`);
  }
  if (spawnSync('losetup', ['-f'], { stdio: 'ignore' }).status !== 0) {
    return (loopCache = 'no free loop device (losetup -f failed)');
  }
  return (loopCache = undefined);
}

/** Why the reference cannot have its vfat EFI partition, or undefined when it can. */
function vfatUnavailable(): string | undefined {
  for (const c of ['mkfs.vfat', 'mcopy', 'fsck.vfat']) if (!hasCommand(c)) return `${c} is missing`;
  return undefined;
}

// ---------------------------------------------------------------- processes

function start(
  lab: NetLab,
  host: number,
  name: string,
  bin: string,
  args: string[],
  env = productEnv(),
): Proc {
  return startProc(lab, host, name, bin, args, { env, root: ROOT, keep: 400_000 });
}

/** The JSON document a `--json` command printed on stdout (its result, or its error). */
function jsonOf<T>(p: Proc): T {
  try {
    return JSON.parse(p.stdout()) as T;
  } catch {
    throw new Error(`${p.name} did not print one JSON document on stdout:\n${indent(tail(p.stdout(), 20))}`);
  }
}

// ---------------------------------------------------------------- disks

function losetup(args: string[]): string {
  return execFileSync('losetup', args, { encoding: 'utf8' }).trim();
}

/** Where `img session` keeps the resume journal of a device target (src/engine/multicast.ts). */
function journalOf(dev: string): string {
  return join(JOURNALS, `${dev.slice(1).replaceAll('/', '_')}.journal`);
}

interface PartitionSlice {
  number: number;
  start: number;
  size: number;
}

function partitionsOf(dev: string): PartitionSlice[] {
  const layout = JSON.parse(execFileSync('sfdisk', ['--json', dev], { encoding: 'utf8' })) as {
    partitiontable: {
      sectorsize?: number;
      partitions?: Array<{ node: string; start: number; size: number }>;
    };
  };
  const sector = layout.partitiontable.sectorsize ?? 512;
  return (layout.partitiontable.partitions ?? []).map((p) => ({
    number: Number(/(\d+)$/.exec(p.node)?.[1]),
    start: p.start * sector,
    size: p.size * sector,
  }));
}

/**
 * A loop device over one partition of `dev`, for as long as `use` runs. By offset: partition
 * scanning (losetup -P) makes no partition devices on this kernel.
 */
function withPartition<T>(dev: string, p: PartitionSlice, readOnly: boolean, use: (part: string) => T): T {
  const part = losetup([
    '--find',
    '--show',
    ...(readOnly ? ['--read-only'] : []),
    '--offset',
    String(p.start),
    '--sizelimit',
    String(p.size),
    dev,
  ]);
  try {
    return use(part);
  } finally {
    losetup(['-d', part]);
  }
}

/** Relative path -> what must match: 'dir MODE', 'file MODE SIZE SHA256' or 'link TARGET'. */
type Tree = Map<string, string>;

function describeTree(root: string, opts: { skip?: string[]; modes: boolean }): Tree {
  const tree: Tree = new Map();
  const mode = (abs: string): string => (opts.modes ? (lstatSync(abs).mode & 0o7777).toString(8) : '-');
  const walk = (rel: string): void => {
    for (const e of readdirSync(join(root, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (opts.skip?.includes(r)) continue;
      const abs = join(root, r);
      if (e.isSymbolicLink()) tree.set(r, `link ${readlinkSync(abs)}`);
      else if (e.isDirectory()) {
        tree.set(r, `dir ${mode(abs)}`);
        walk(r);
      } else if (e.isFile()) {
        const data = readFileSync(abs);
        tree.set(r, `file ${mode(abs)} ${data.length} ${createHash('sha256').update(data).digest('hex')}`);
      } else tree.set(r, 'other');
    }
  };
  walk('');
  return tree;
}

function treeProblems(got: Tree, want: Tree): string[] {
  const problems: string[] = [];
  for (const [k, v] of want) {
    const g = got.get(k);
    if (g === undefined) problems.push(`missing ${k}`);
    else if (g !== v) problems.push(`${k}: ${g.slice(0, 90)} instead of ${v.slice(0, 90)}`);
  }
  for (const k of got.keys()) if (!want.has(k)) problems.push(`extra ${k}`);
  return problems;
}

interface PartitionContents {
  number: number;
  /** blkid's TYPE, LABEL and UUID. */
  fs: string;
  tree: Tree;
}

interface DiskContents {
  /** sfdisk -d with the device's path replaced by DISK (partition N is DISKN). */
  table: string;
  partitions: PartitionContents[];
  /** What fsck -n found wrong, one line per partition that is not clean. */
  fsckProblems: string[];
}

/** Everything a workstation's disk must share with the reference, read with the system's tools. */
function diskContents(dev: string): DiskContents {
  const table = execFileSync('sfdisk', ['-d', dev], { encoding: 'utf8' })
    .split(dev)
    .join('DISK')
    .replace(/^DISKp(\d+) :/gm, 'DISK$1 :');
  const fsckProblems: string[] = [];
  const partitions = partitionsOf(dev).map((p) =>
    withPartition(dev, p, true, (part): PartitionContents => {
      const id = execFileSync('blkid', ['-p', '-o', 'export', part], { encoding: 'utf8' })
        .split('\n')
        .filter((l) => /^(TYPE|LABEL|UUID)=/.test(l))
        .sort();
      const type = id.find((l) => l.startsWith('TYPE='))?.slice(5);
      const fs = id.join(' ');
      // -f: a full check even of a filesystem marked clean; -n: change nothing.
      const fsck =
        type === 'vfat'
          ? spawnSync('fsck.vfat', ['-n', part], { encoding: 'utf8' })
          : spawnSync(`fsck.${type ?? 'ext4'}`, ['-n', '-f', part], { encoding: 'utf8' });
      if (fsck.status !== 0) {
        fsckProblems.push(
          `partition ${p.number} (${fs}): fsck -n exit ${fsck.status}: ${tail(`${fsck.stdout}${fsck.stderr}`, 8)}`,
        );
      }
      const mnt = mkdtempSync(join(tmpdir(), 'imgcast-server-lab-mnt-'));
      try {
        if (type === 'vfat') {
          // mtools, not a mount: this kernel has no vfat.
          execFileSync('mcopy', ['-s', '-n', '-i', part, '::/*', mnt], {
            env: { ...process.env, MTOOLS_SKIP_CHECK: '1' },
            stdio: 'pipe',
          });
          return { number: p.number, fs, tree: describeTree(mnt, { modes: false }) };
        }
        execFileSync('mount', ['-t', type ?? 'ext4', '-o', 'ro,noload', part, mnt], { stdio: 'pipe' });
        try {
          return { number: p.number, fs, tree: describeTree(mnt, { skip: ['lost+found'], modes: true }) };
        } finally {
          execFileSync('umount', [mnt], { stdio: 'pipe' });
        }
      } finally {
        rmSync(mnt, { recursive: true, force: true });
      }
    }),
  );
  return { table, partitions, fsckProblems };
}

interface Reference {
  /** The image's path inside the server image directory, as `imgcast mcast -p` takes it. */
  name: string;
  contents: DiskContents;
  /** What the reference lacks on this machine (no vfat tools). */
  notes: string[];
}

/** One image directory for every server of the file: each reference is captured onto it once. */
function imagesDir(): string {
  const dir = join(workDir(), 'images');
  mkdirSync(dir, { recursive: true });
  return dir;
}

const references = new Map<string, Reference>();
const referenceFile = (variant: string) => join(workDir(), `ref-${variant}`, 'disk.img');
/**
 * A reference workstation's disk, on a loop device: GPT, a vfat EFI partition (20 MiB, a boot
 * loader and its config in nested folders) and an ext4 root filling the rest (~14 MiB of random
 * files in nested folders, small config files, an executable, a private file, symlinks relative
 * and absolute, an empty folder). Each `variant` has content of its own. Captured the way an
 * admin captures the reference machine: `img make /dev/loopN --server … --name ref-VARIANT` on
 * one of the lab's workstations, onto the running server of the test that first needs it (all
 * servers of the file share one image directory). It registers itself as a workstation, as a
 * machine without an admin token does.
 */
async function reference(variant: string, L: ServerLab): Promise<Reference> {
  const had = references.get(variant);
  if (had) return had;
  const dir = join(workDir(), `ref-${variant}`);
  // What a failed earlier attempt left.
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const file = referenceFile(variant);
  writeFileSync(file, '');
  execFileSync('truncate', ['-s', String(DISK_BYTES), file]);
  const notes: string[] = [];
  const noVfat = vfatUnavailable();
  if (noVfat) notes.push(`the reference has no vfat EFI partition: ${noVfat}`);
  const dev = losetup(['--find', '--show', file]);
  try {
    execFileSync(
      'sgdisk',
      [
        ...(noVfat ? [] : ['-n', '1:2048:+20M', '-t', '1:ef00', '-c', '1:EFI System']),
        '-n',
        `${noVfat ? 1 : 2}:0:0`,
        '-t',
        `${noVfat ? 1 : 2}:8300`,
        '-c',
        `${noVfat ? 1 : 2}:root ${variant}`,
        dev,
      ],
      { stdio: 'pipe' },
    );
    const parts = partitionsOf(dev);
    if (!noVfat) {
      const efi = join(dir, 'efi');
      mkdirSync(join(efi, 'EFI/BOOT'), { recursive: true });
      mkdirSync(join(efi, 'EFI/imgcast/fonts'), { recursive: true });
      randomFile(join(efi, 'EFI/BOOT/BOOTX64.EFI'), 300 * 1024 + 17);
      writeFileSync(join(efi, 'EFI/imgcast/grub.cfg'), `set default=0\nmenuentry "lab ${variant}" {}\n`);
      randomFile(join(efi, 'EFI/imgcast/fonts/unicode.pf2'), 64 * 1024);
      withPartition(dev, parts[0]!, false, (part) => {
        execFileSync('mkfs.vfat', ['-n', `EFI${variant.toUpperCase()}`, part], { stdio: 'pipe' });
        execFileSync('mcopy', ['-s', '-i', part, join(efi, 'EFI'), '::/'], {
          env: { ...process.env, MTOOLS_SKIP_CHECK: '1' },
          stdio: 'pipe',
        });
      });
    }
    const root = join(dir, 'root');
    for (const d of [
      'etc/ssh',
      'usr/lib/lab/data',
      'usr/share/doc/lab',
      'home/student/work/deep',
      'var/empty',
    ])
      mkdirSync(join(root, d), { recursive: true });
    writeFileSync(join(root, 'etc/hostname'), `reference-${variant}\n`);
    writeFileSync(join(root, 'etc/fstab'), `LABEL=root / ext4 defaults 0 1\n`);
    writeFileSync(join(root, 'etc/ssh/ssh_host_ed25519_key'), `not a real key ${variant}\n`);
    chmodSync(join(root, 'etc/ssh/ssh_host_ed25519_key'), 0o600);
    randomFile(join(root, 'usr/lib/lab/data/payload.bin'), 6 * MIB + 4093);
    randomFile(join(root, 'usr/lib/lab/tool'), 700 * 1024);
    chmodSync(join(root, 'usr/lib/lab/tool'), 0o755);
    randomFile(join(root, 'usr/share/doc/lab/manual.pdf'), 3 * MIB + 1);
    randomFile(join(root, 'home/student/work/deep/results.dat'), 4 * MIB - 5);
    for (let i = 1; i <= 30; i++) randomFile(join(root, 'usr/share/doc/lab', `note${i}.txt`), i * 311);
    symlinkSync('data/payload.bin', join(root, 'usr/lib/lab/current'));
    symlinkSync('/usr/share/zoneinfo/UTC', join(root, 'etc/localtime'));
    withPartition(dev, parts[noVfat ? 0 : 1]!, false, (part) =>
      execFileSync('mkfs.ext4', ['-q', '-F', '-L', `root-${variant}`, '-d', root, part], { stdio: 'pipe' }),
    );
    const made = await L.lab.run(
      1,
      IMG,
      ['make', dev, '--server', L.api, '--name', `ref-${variant}`, '--json'],
      {
        env: productEnv(),
        cwd: ROOT,
      },
    );
    assert.equal(made.code, 0, `img make --server failed (exit ${made.code}):\n${made.stderr}${made.stdout}`);
    const image = (JSON.parse(made.stdout) as { image: { name: string } }).image.name;
    assert.equal(image, `ref-${variant}.imgc`, 'the name the server gave the image');
    const contents = diskContents(dev);
    assert.deepEqual(contents.fsckProblems, [], 'the reference disk itself must be clean');
    assert.equal(contents.partitions.length, noVfat ? 1 : 2, `the reference's partitions: ${contents.table}`);
    const ref = { name: image, contents, notes };
    references.set(variant, ref);
    return ref;
  } finally {
    losetup(['-d', dev]);
  }
}

// ---------------------------------------------------------------- one lab per test

/** Free in the lab's own namespaces (every lab has its own), and never imgcast's defaults. */
function labAddresses(): {
  port: number;
  firstPort: number;
  lastPort: number;
  group: string;
  discovery: string;
} {
  const base = randomInt(20_000, 60_000);
  const third = randomInt(3, 250);
  return {
    port: base,
    firstPort: base + 10,
    lastPort: base + 29,
    group: `239.77.${third}.1`,
    discovery: `239.77.${(third + 1) % 250 || 3}.250:${base + 3}`,
  };
}

class ServerLab {
  readonly t: TestContext;
  readonly procs: Proc[] = [];
  readonly addresses = labAddresses();
  readonly #undo: Array<() => void> = [];
  lab!: NetLab;
  dir!: string;
  data!: string;
  server: Proc | undefined;
  #servers = 0;

  private constructor(t: TestContext) {
    this.t = t;
  }

  /**
   * Skips (with the reason) unless root, namespaces, loop devices and `needs` are there; else
   * builds a lab of `workstations` and a scratch folder, and undoes all of it when the test
   * ends, failed or not: processes killed, lab removed, loop devices detached, journals removed.
   */
  static open(
    t: TestContext,
    workstations: number,
    needs: Array<() => string | undefined> = [],
  ): ServerLab | null {
    const why = [netnsUnavailable, disksUnavailable, ...needs].reduce<string | undefined>(
      (r, f) => r ?? f(),
      undefined,
    );
    if (skipUnless(t, why)) return null;
    const run = new ServerLab(t);
    t.after(() => run.#cleanup());
    run.dir = mkdtempSync(join(workDir(), 'lab-'));
    run.data = join(run.dir, 'data');
    run.lab = NetLab.create(workstations);
    run.undo(() => run.lab.destroy());
    return run;
  }

  undo(f: () => void): void {
    this.#undo.push(f);
  }

  #cleanup(): void {
    for (const f of this.#undo.reverse()) {
      try {
        f();
      } catch (err) {
        this.t.diagnostic(`clean-up step failed: ${(err as Error).message}`);
      }
    }
  }

  /** The server's API as the CLI and the workstations name it. */
  get api(): string {
    return `${this.lab.addr(0)}:${this.addresses.port}`;
  }

  /** Starts `imgcast server` on the lab's data directory and waits until its API listens. */
  async startServer(): Promise<Proc> {
    const a = this.addresses;
    const p = start(this.lab, 0, this.#servers++ === 0 ? 'server' : `server (${this.#servers})`, IMGCAST, [
      'server',
      '--data',
      this.data,
      '--images',
      imagesDir(),
      '--listen',
      this.api,
      '--ports',
      `${a.firstPort}-${a.lastPort}`,
      '--groups',
      a.group,
      '--discovery',
      a.discovery,
    ]);
    this.procs.push(p);
    this.server = p;
    const until = Date.now() + 30_000;
    while (!/: API on /.test(p.stderr())) {
      if (p.exited || Date.now() > until)
        assert.fail(`the server did not come up (${describeExit(p)})\n${this.report()}`);
      await sleep(50);
    }
    return p;
  }

  /** An admin command in the server's namespace, as the admin types it there (plus -i and --data). */
  admin(args: string[]): Promise<RunResult> {
    return this.lab.run(0, IMGCAST, [...args, '-i', this.api, '--data', this.data], {
      env: productEnv(),
      cwd: ROOT,
    });
  }

  /** An admin command with --json that must succeed; its document. */
  async adminJson<T>(args: string[]): Promise<T> {
    const r = await this.admin([...args, '--json']);
    assert.equal(r.code, 0, `imgcast ${args.join(' ')} failed (exit ${r.code}):\n${r.stderr}${r.stdout}`);
    return JSON.parse(r.stdout) as T;
  }

  async show(name: string): Promise<Session> {
    return this.adminJson<Session>(['session', 'show', name]);
  }

  /** A workstation's disk: a sparse file of the reference's size on a loop device, and no old journal. */
  disk(): string {
    const file = join(this.dir, `disk-${randomInt(1e9)}.img`);
    writeFileSync(file, '');
    execFileSync('truncate', ['-s', String(DISK_BYTES), file]);
    const dev = losetup(['--find', '--show', file]);
    // A journal left by another run on this device number would be taken as this disk's.
    rmSync(journalOf(dev), { force: true });
    this.undo(() => {
      rmSync(journalOf(dev), { force: true });
      losetup(['-d', dev]);
    });
    return dev;
  }

  /** `img session NAME --server … --disk DEV --json -v` on workstation `host` (without --server: by discovery). */
  session(host: number, name: string, disk: string, o: { discover?: boolean; label?: string } = {}): Proc {
    const args = [
      'session',
      name,
      ...(o.discover ? [] : ['--server', this.api]),
      '--disk',
      disk,
      '--json',
      '-v',
    ];
    const env = productEnv(o.discover ? { IMGCAST_DISCOVERY: this.addresses.discovery } : {});
    const p = start(this.lab, host, o.label ?? `ws${host}`, IMG, args, env);
    this.procs.push(p);
    return p;
  }

  /**
   * `img session NAME master WORDS… --server … --disk DEV --json -v` on workstation `host`, with a
   * home, a temporary folder and a working folder of its own, so that anything it writes besides
   * the network shows in `masterScratch`.
   */
  master(host: number, name: string, disk: string, words: string[], label = `master${host}`): Proc {
    const scratch = join(this.dir, `${label}-scratch`);
    for (const d of ['home', 'tmp', 'cwd']) mkdirSync(join(scratch, d), { recursive: true });
    this.masterScratch.push(scratch);
    const env = productEnv({ HOME: join(scratch, 'home'), TMPDIR: join(scratch, 'tmp') });
    const args = ['session', name, 'master', ...words, '--server', this.api, '--disk', disk, '--json', '-v'];
    const p = startProc(this.lab, host, label, IMG, args, {
      env,
      root: ROOT,
      keep: 400_000,
      cwd: join(scratch, 'cwd'),
    });
    this.procs.push(p);
    return p;
  }

  readonly masterScratch: string[] = [];

  /** A loop device over a copy-free view of the reference disk file of `variant` (read-write, as a master's disk is). */
  referenceDevice(variant: string): string {
    const dev = losetup(['--find', '--show', referenceFile(variant)]);
    this.undo(() => losetup(['-d', dev]));
    return dev;
  }

  /** Waits until the server logged `msg` (pino JSON lines on its stdout) for session `session`. */
  async logged(msg: string, session: string, ms = SESSION_BOUND_MS, count = 1): Promise<void> {
    const until = Date.now() + ms;
    for (;;) {
      const n = (this.server?.stdout() ?? '')
        .split('\n')
        .filter((l) => l.includes(`"msg":"${msg}"`) && l.includes(`"session":"${session}"`)).length;
      if (n >= count) return;
      if (Date.now() > until || this.server?.exited)
        assert.fail(`the server never logged "${msg}" ${count} time(s) for ${session}\n${this.report()}`);
      await sleep(25);
    }
  }

  /** How many times the servers of this lab started a sender for `session` (their log). */
  sendsStarted(session: string): number {
    return this.procs
      .filter((p) => p.name.startsWith('server'))
      .flatMap((p) => p.stdout().split('\n'))
      .filter((l) => l.includes('"msg":"session sending"') && l.includes(`"session":"${session}"`)).length;
  }

  /** Every process's exit, command line and the tail of its output. */
  report(): string {
    const now = Date.now();
    return this.procs
      .map((p) =>
        [
          `--- ${p.name} in ${p.where}: ${describeExit(p, now)}`,
          `  $ ${p.argv.join(' ')}`,
          '  stdout (last 20 lines):',
          indent(tail(p.stdout(), 20)),
          '  stderr (last 20 lines):',
          indent(tail(p.stderr(), 20)),
        ].join('\n'),
      )
      .join('\n');
  }

  async mustEnd(procs: Proc[], ms: number, what: string): Promise<void> {
    if (await settle(procs, ms)) return;
    const late = procs.filter((p) => !p.exited).map((p) => p.name);
    assert.fail(`${what}: ${late.join(', ')} still running after the ${secs(ms)} bound\n${this.report()}`);
  }

  mustExit(p: Proc, code: 0 | 'non-zero', what = ''): void {
    const ok = code === 0 ? p.exited?.code === 0 : p.exited !== null && p.exited.code !== 0;
    assert.ok(
      ok,
      `${p.name} must exit ${code}${what ? ` (${what})` : ''}: ${describeExit(p)}\n${this.report()}`,
    );
  }

  /** The disk holds exactly the reference: table, filesystems, clean fsck, every file. */
  assertDisk(p: Proc, dev: string, ref: Reference): void {
    const got = diskContents(dev);
    const where = `${p.name}'s disk ${dev}`;
    assert.deepEqual(got.fsckProblems, [], `${where} is not clean\n${this.report()}`);
    assert.equal(got.table, ref.contents.table, `${where} has another partition table\n${this.report()}`);
    assert.equal(got.partitions.length, ref.contents.partitions.length, `${where}'s partitions`);
    for (const [i, want] of ref.contents.partitions.entries()) {
      const part = got.partitions[i]!;
      assert.equal(
        part.fs,
        want.fs,
        `${where}, partition ${want.number}: another filesystem\n${this.report()}`,
      );
      const problems = treeProblems(part.tree, want.tree);
      assert.equal(
        problems.length,
        0,
        `${where}, partition ${want.number}: files differ (${problems.length}):\n  ` +
          `${problems.slice(0, 15).join('\n  ')}\n${this.report()}`,
      );
    }
  }
}

function sessionIn(s: Status, name: string): Session {
  const found = s.sessions.find((x) => x.name === name);
  assert.ok(found, `status lists no session ${name}: ${s.sessions.map((x) => x.name).join(', ')}`);
  return found;
}

function clientStates(s: { clients: Array<{ state: string; code: string | null }> }): string {
  return s.clients.map((c) => `${c.state}${c.code ? `(${c.code})` : ''}`).join(' ');
}

// ---------------------------------------------------------------- the tests

test(
  'a GPT disk (vfat EFI + ext4 root) to 3 workstations with -c 3: each disk has the reference table, clean filesystems and every file; status says done, 3 ok',
  { timeout: 240_000 },
  async (t) => {
    const L = ServerLab.open(t, 3);
    if (!L) return;
    await L.startServer();
    const ref = await reference('a', L);
    for (const n of ref.notes) t.diagnostic(n);
    const disks = [1, 2, 3].map(() => L.disk());
    const created = await L.adminJson<Session>(['mcast', 'lab1', '-p', ref.name, '-c', '3']);
    assert.equal(created.state, 'waiting');
    assert.equal(created.clientCount, 3);
    const ws = [1, 2, 3].map((h) => L.session(h, 'lab1', disks[h - 1]!));
    await L.mustEnd(ws, SESSION_BOUND_MS, 'the session');
    for (const p of ws) L.mustExit(p, 0);
    ws.forEach((p, i) => L.assertDisk(p, disks[i]!, ref));
    const status = await L.adminJson<Status>(['status']);
    const s = sessionIn(status, 'lab1');
    assert.equal(s.state, 'done', `lab1: ${s.message}`);
    assert.equal(s.clients.length, 3);
    assert.deepEqual(
      s.clients.map((c) => c.state),
      ['ok', 'ok', 'ok'],
      clientStates(s),
    );
    assert.equal(status.counters.imagesSent, 3);
    assert.equal(L.sendsStarted('lab1'), 1, 'one sender for the session');
    t.diagnostic(
      `session ${secs(s.finishedAt! - s.startedAt!)} from start to the last result; ws ${ws.map((p) => describeExit(p)).join('; ')}`,
    );
  },
);

test(
  'start by time: -c 5 -t 0.05 (3 s), two workstations join apart: the session starts 3 s after the second join, not the first',
  { timeout: 240_000 },
  async (t) => {
    const L = ServerLab.open(t, 2);
    if (!L) return;
    await L.startServer();
    const ref = await reference('a', L);
    const disks = [1, 2].map(() => L.disk());
    const created = await L.adminJson<Session>(['mcast', 'lab2', '-p', ref.name, '-c', '5', '-t', '0.05']);
    assert.equal(created.waitMs, 3000);
    const first = L.session(1, 'lab2', disks[0]!);
    await L.logged('workstation joined', 'lab2');
    // Apart, but well within the 3 s: a start from the first join would come 1.5 s early.
    await sleep(1500);
    const second = L.session(2, 'lab2', disks[1]!);
    await L.mustEnd([first, second], SESSION_BOUND_MS, 'the session');
    for (const p of [first, second]) L.mustExit(p, 0);
    const s = await L.show('lab2');
    assert.equal(s.state, 'done', `lab2: ${s.message}`);
    assert.equal(s.clients.length, 2);
    const [j1, j2] = s.clients.map((c) => c.joinedAt).sort((a, b) => a - b) as [number, number];
    const started = s.startedAt!;
    const timeline = `joins at +0 and +${j2 - j1} ms, start at +${started - j1} ms`;
    assert.ok(j2 - j1 >= 1000 && j2 - j1 < 2700, `the joins must be apart, and within the wait: ${timeline}`);
    // The trigger checks every 200 ms; the start is recorded before anything is sent.
    assert.ok(
      started - j2 >= 3000 && started - j2 <= 3000 + 1000,
      `the session must start 3 s after the second join: ${timeline}`,
    );
    const h = (await L.adminJson<HistoryEntry[]>(['history'])).find((e) => e.session === 'lab2');
    assert.ok(h, 'history keeps lab2');
    assert.equal(h.startedAt, started);
    assert.deepEqual(
      h.clients.map((c) => c.joinedAt).sort((a, b) => a - b),
      [j1, j2],
    );
    L.assertDisk(first, disks[0]!, ref);
    L.assertDisk(second, disks[1]!, ref);
    t.diagnostic(timeline);
  },
);

test(
  'imgcast stop while sending (server link at 20 Mbit/s): each img session exits non-zero, "stopped by the administrator"; status stopped; history keeps it with the client results',
  { timeout: 240_000 },
  async (t) => {
    const L = ServerLab.open(t, 3, [shapingUnavailable]);
    if (!L) return;
    await L.startServer();
    const ref = await reference('a', L);
    L.lab.rate(0, '20mbit');
    const disks = [1, 2, 3].map(() => L.disk());
    await L.adminJson<Session>(['mcast', 'lab3', '-p', ref.name, '-c', '3']);
    const ws = [1, 2, 3].map((h) => L.session(h, 'lab3', disks[h - 1]!));
    await L.logged('session sending', 'lab3');
    // Mid-send: once every workstation has a tenth, and none has all of it.
    let before: Session;
    for (const until = Date.now() + SESSION_BOUND_MS; ;) {
      before = await L.show('lab3');
      if (before.clients.every((c) => c.totalBytes > 0 && c.bytes >= c.totalBytes / 10)) break;
      if (Date.now() > until || ws.some((p) => p.exited))
        assert.fail(`lab3 never got under way: ${clientStates(before)}\n${L.report()}`);
      await sleep(200);
    }
    assert.equal(before.state, 'sending');
    assert.ok(
      before.clients.every((c) => c.bytes < c.totalBytes),
      `a workstation had everything before the stop: ${before.clients.map((c) => `${c.bytes}/${c.totalBytes}`).join(' ')}`,
    );
    const stopped = await L.adminJson<Session>(['stop', 'lab3']);
    assert.equal(stopped.state, 'stopped');
    await L.mustEnd(ws, 60_000, 'the workstations after the stop');
    for (const p of ws) {
      L.mustExit(p, 'non-zero', 'the session was stopped');
      const err = jsonOf<{ code?: string; error?: string; message: string }>(p);
      assert.match(err.message, /stopped by the administrator/, `${p.name}'s message\n${L.report()}`);
    }
    const s = sessionIn(await L.adminJson<Status>(['status']), 'lab3');
    assert.equal(s.state, 'stopped');
    assert.equal(s.message, 'stopped by the administrator');
    const h = (await L.adminJson<HistoryEntry[]>(['history'])).find((e) => e.session === 'lab3');
    assert.ok(h, 'history keeps lab3');
    assert.equal(h.state, 'stopped');
    assert.equal(h.clients.length, 3);
    for (const c of h.clients) {
      assert.equal(c.state, 'failed', clientStates(h));
      assert.equal(c.code, 'E_STOPPED');
      assert.equal(c.reason, 'stopped by the administrator');
      assert.ok(c.bytes > 0, `the history keeps how far ${c.name} got`);
    }
    t.diagnostic(
      `stopped at ${before.clients.map((c) => `${Math.round((100 * c.bytes) / c.totalBytes)}%`).join('/')}; ` +
        `ws ${ws.map((p) => describeExit(p)).join('; ')}`,
    );
  },
);

interface SessionJson {
  run: number;
  server: string;
  receive: { ok: boolean; chunks: number; totalChunks: number; chunksHad: number; bytes: number };
}

test(
  'the server killed (SIGKILL) mid-send and started again on its data: lab4 is interrupted, the workstations failed with E_SERVER_LOST; after imgcast session restart each gets only what it lacked, and every disk is the reference',
  { timeout: 240_000 },
  async (t) => {
    const L = ServerLab.open(t, 3, [shapingUnavailable]);
    if (!L) return;
    const server = await L.startServer();
    const ref = await reference('a', L);
    L.lab.rate(0, '20mbit');
    const disks = [1, 2, 3].map(() => L.disk());
    await L.adminJson<Session>(['mcast', 'lab4', '-p', ref.name, '-c', '3']);
    const ws = [1, 2, 3].map((h) => L.session(h, 'lab4', disks[h - 1]!));
    await L.logged('session sending', 'lab4');
    // Mid-send, once each workstation holds half of it, so that it has whole chunks to keep.
    let before: Session;
    for (const until = Date.now() + SESSION_BOUND_MS; ;) {
      before = await L.show('lab4');
      if (before.clients.every((c) => c.totalBytes > 0 && c.bytes >= c.totalBytes / 2)) break;
      if (Date.now() > until || ws.some((p) => p.exited))
        assert.fail(`lab4 never got half way: ${clientStates(before)}\n${L.report()}`);
      await sleep(200);
    }
    assert.ok(
      before.clients.every((c) => c.bytes < c.totalBytes),
      `a workstation had everything before the kill: ${before.clients.map((c) => `${c.bytes}/${c.totalBytes}`).join(' ')}`,
    );
    L.lab.kill9(server.child);
    await server.exit;
    await L.mustEnd(ws, 60_000, 'the workstations after the server was killed');
    for (const p of ws) {
      L.mustExit(p, 'non-zero', 'the server went away mid-send');
      const err = jsonOf<{ code?: string; error?: string; message: string }>(p);
      assert.equal(err.code ?? err.error, 'E_SERVER_LOST', `${p.name}'s error\n${L.report()}`);
      assert.match(err.message, /imgcast session restart lab4/, `${p.name} must say what to do`);
    }

    L.lab.rate(0, 0);
    await L.startServer();
    const interrupted = await L.show('lab4');
    assert.equal(interrupted.state, 'interrupted', `lab4 after the restart: ${interrupted.message}`);
    assert.equal(interrupted.clients.length, 3);
    for (const c of interrupted.clients) assert.equal(c.state, 'failed', clientStates(interrupted));
    const reopened = await L.adminJson<Session>(['session', 'restart', 'lab4']);
    assert.equal(reopened.state, 'waiting');
    assert.equal(reopened.run, 2);

    const again = [1, 2, 3].map((h) => L.session(h, 'lab4', disks[h - 1]!, { label: `ws${h} (rerun)` }));
    await L.mustEnd(again, SESSION_BOUND_MS, 'the rerun');
    const results = again.map((p) => {
      L.mustExit(p, 0);
      const r = jsonOf<SessionJson>(p);
      assert.equal(r.run, 2);
      assert.ok(
        r.receive.chunksHad > 0 && r.receive.chunksHad < r.receive.totalChunks,
        `${p.name} must resume: it had ${r.receive.chunksHad} of ${r.receive.totalChunks} chunks\n${L.report()}`,
      );
      return r;
    });
    again.forEach((p, i) => L.assertDisk(p, disks[i]!, ref));
    const s = await L.show('lab4');
    assert.equal(s.state, 'done', `lab4 run 2: ${s.message}`);
    assert.deepEqual(
      s.clients.map((c) => c.state),
      ['ok', 'ok', 'ok'],
    );
    const runs = (await L.adminJson<HistoryEntry[]>(['history']))
      .filter((e) => e.session === 'lab4')
      .map((e) => `${e.run}:${e.state}`);
    assert.deepEqual(runs, ['2:done', '1:interrupted']);
    assert.equal(L.sendsStarted('lab4'), 2, 'one sender for each run');
    t.diagnostic(
      `killed at ${before.clients.map((c) => `${Math.round((100 * c.bytes) / c.totalBytes)}%`).join('/')}; ` +
        `the rerun had ${results.map((r) => `${r.receive.chunksHad}/${r.receive.totalChunks}`).join(', ')} chunks`,
    );
  },
);

test(
  'two sessions at once, different images to different workstations: both done, each disk holds its own image, on different groups and ports',
  { timeout: 240_000 },
  async (t) => {
    const L = ServerLab.open(t, 4, [shapingUnavailable]);
    if (!L) return;
    await L.startServer();
    const refs = { A: await reference('a', L), B: await reference('b', L) };
    assert.notDeepEqual(
      refs.A.contents.partitions.map((p) => [...p.tree.values()]),
      refs.B.contents.partitions.map((p) => [...p.tree.values()]),
      'the two references must differ',
    );
    // Slowed, so that the two sends overlap: a session that ended frees its group and port for the next.
    L.lab.rate(0, '40mbit');
    const disks = [1, 2, 3, 4].map(() => L.disk());
    await L.adminJson<Session>(['mcast', 'labA', '-p', refs.A.name, '-c', '2']);
    await L.adminJson<Session>(['mcast', 'labB', '-p', refs.B.name, '-c', '2']);
    const plan = [
      { host: 1, session: 'labA' },
      { host: 3, session: 'labB' },
      { host: 2, session: 'labA' },
      { host: 4, session: 'labB' },
    ] as const;
    const ws = new Map<number, Proc>();
    for (const [i, w] of plan.entries()) {
      // The second of each pair joins once both first ones did: both sessions then start together.
      if (i === 2) {
        await L.logged('workstation joined', 'labA');
        await L.logged('workstation joined', 'labB');
      }
      ws.set(w.host, L.session(w.host, w.session, disks[w.host - 1]!));
    }
    const all = [...ws.values()];
    await L.mustEnd(all, SESSION_BOUND_MS, 'both sessions');
    for (const p of all) L.mustExit(p, 0);
    for (const w of plan)
      L.assertDisk(ws.get(w.host)!, disks[w.host - 1]!, w.session === 'labA' ? refs.A : refs.B);
    const status = await L.adminJson<Status>(['status']);
    const a = sessionIn(status, 'labA');
    const b = sessionIn(status, 'labB');
    for (const s of [a, b]) {
      assert.equal(s.state, 'done', `${s.name}: ${s.message}`);
      assert.deepEqual(
        s.clients.map((c) => c.state),
        ['ok', 'ok'],
      );
    }
    const timeline = `labA ${a.group}:${a.port} from +0 to +${a.finishedAt! - a.startedAt!} ms, labB ${b.group}:${b.port} from +${b.startedAt! - a.startedAt!} to +${b.finishedAt! - a.startedAt!} ms`;
    assert.ok(
      a.startedAt! < b.finishedAt! && b.startedAt! < a.finishedAt!,
      `the sessions must overlap: ${timeline}`,
    );
    assert.notEqual(a.group, b.group, timeline);
    assert.notEqual(a.port, b.port, timeline);
    assert.equal(L.sendsStarted('labA'), 1, 'one sender for labA');
    assert.equal(L.sendsStarted('labB'), 1, 'one sender for labB');
    const h = await L.adminJson<HistoryEntry[]>(['history']);
    for (const [name, image] of [
      ['labA', refs.A.name],
      ['labB', refs.B.name],
    ]) {
      const e = h.find((x) => x.session === name);
      assert.ok(e, `history keeps ${name}`);
      assert.equal(e.image, image);
      assert.equal(e.state, 'done');
    }
    t.diagnostic(timeline);
  },
);

test(
  "discovery: a workstation without --server (IMGCAST_DISCOVERY set to the server's --discovery) finds the server and completes",
  { timeout: 240_000 },
  async (t) => {
    const L = ServerLab.open(t, 1);
    if (!L) return;
    await L.startServer();
    const ref = await reference('a', L);
    const disk = L.disk();
    await L.adminJson<Session>(['mcast', 'lab6', '-p', ref.name]);
    const p = L.session(1, 'lab6', disk, { discover: true });
    await L.mustEnd([p], SESSION_BOUND_MS, 'the session');
    L.mustExit(p, 0);
    const r = jsonOf<SessionJson>(p);
    assert.equal(r.server, `http://${L.api}`, 'the server discovery found');
    L.assertDisk(p, disk, ref);
    const s = await L.show('lab6');
    assert.equal(s.state, 'done');
    t.diagnostic(`found ${r.server} by ${L.addresses.discovery}; ${describeExit(p)}`);
  },
);

// ---------------------------------------------------------------- live masters (img session NAME master)

function sha256File(file: string): string {
  return createHash('sha256').update(readFileSync(file)).digest('hex');
}

/**
 * Files of more than 1 MiB made since `marker` where the master could have put an image of its
 * disk: its own home, temporary and working folders, the product's folders on this machine, the
 * server's image directory, the temporary folder and the repository (benchmarks on this machine use /var/tmp).
 */
function bigFilesSince(marker: string, L: ServerLab): string[] {
  const places = [...L.masterScratch, imagesDir(), '/var/lib/imgcast', '/run/imgcast', ROOT].filter(
    (d) => spawnSync('test', ['-d', d]).status === 0,
  );
  const found = execFileSync(
    'find',
    [...places, '-xdev', '-newer', marker, '-type', 'f', '-size', '+1M', '-not', '-path', '*/node_modules/*'],
    { encoding: 'utf8' },
  );
  // The temporary folder's own top levels too, for image files (other programs use it as well).
  const tmp = execFileSync(
    'find',
    [tmpdir(), '-maxdepth', '2', '-newer', marker, '-type', 'f', '-size', '+1M'],
    {
      encoding: 'utf8',
    },
  )
    .split('\n')
    // Image files and their unfinished forms (other tests on this machine use the folder too).
    .filter((f) => /\.imgc(\.partial)?$|\.partial$/.test(f) && !f.startsWith(L.dir));
  return [...found.split('\n'), ...tmp].filter((f) => f !== '');
}

test(
  'live master: ws1 sends its own disk as it is read (img session live1 master clients=2) to ws2 and ws3: both disks are the reference; the master disk is unchanged and no image of it is written',
  { timeout: 300_000 },
  async (t) => {
    const L = ServerLab.open(t, 3);
    if (!L) return;
    await L.startServer();
    const ref = await reference('a', L);
    const before = sha256File(referenceFile('a'));
    const source = L.referenceDevice('a');
    const disks = [2, 3].map(() => L.disk());
    const marker = join(L.dir, 'live1.marker');
    writeFileSync(marker, '');
    await sleep(1100); // find -newer compares whole seconds on some filesystems
    const ws = [2, 3].map((h) => L.session(h, 'live1', disks[h - 2]!));
    await L.logged('session opened by a workstation', 'live1');
    const m = L.master(1, 'live1', source, ['clients=2', '--level', 'speed']);
    await L.mustEnd([m, ...ws], SESSION_BOUND_MS, 'the live session');
    for (const p of [m, ...ws]) L.mustExit(p, 0);
    ws.forEach((p, i) => L.assertDisk(p, disks[i]!, ref));
    assert.equal(sha256File(referenceFile('a')), before, 'the master disk must not change');
    assert.deepEqual(bigFilesSince(marker, L), [], 'nothing but the network may carry the master disk');
    const s = await L.show('live1');
    assert.equal(s.state, 'done', `live1: ${s.message}`);
    assert.equal(s.origin, 'workstation');
    assert.equal(s.master?.level, 'speed');
    assert.deepEqual(
      s.clients.map((c) => c.state),
      ['ok', 'ok'],
      clientStates(s),
    );
    const r = jsonOf<{ view: { state: string; clients: Array<{ state: string }> }; send: { bytes: number } }>(
      m,
    );
    assert.equal(r.view.state, 'done');
    assert.ok(r.send.bytes > 10 * MIB, `the master sent ${r.send.bytes} bytes`);
    t.diagnostic(
      `live session ${secs(s.finishedAt! - s.startedAt!)}; ${[m, ...ws].map((p) => `${p.name} ${describeExit(p)}`).join('; ')}`,
    );
  },
);

test(
  'live master without clients= or t=: two clients join and nothing is sent until img session start on the master; a client killed with SIGKILL mid-send is shown on the master with its reason while the other finishes',
  { timeout: 300_000 },
  async (t) => {
    const L = ServerLab.open(t, 3, [shapingUnavailable]);
    if (!L) return;
    await L.startServer();
    const ref = await reference('a', L);
    const source = L.referenceDevice('a');
    const disks = [2, 3].map(() => L.disk());
    const m = L.master(1, 'live2', source, []);
    await L.logged('master connected', 'live2');
    const ws = [2, 3].map((h) => L.session(h, 'live2', disks[h - 2]!));
    await L.logged('workstation joined', 'live2', SESSION_BOUND_MS, 2);
    await sleep(2500);
    const waiting = await L.show('live2');
    assert.deepEqual([waiting.state, waiting.joined, waiting.startBy], ['waiting', 2, 'command'], L.report());
    assert.equal(L.sendsStarted('live2'), 0);
    assert.match(m.stderr(), /waiting: 2 joined .*img session start live2/, L.report());
    // Slow enough to kill a client mid-send: 15 MiB at 40 Mbit/s take 3 s and more.
    L.lab.rate(1, '40mbit');
    const started = await L.lab.run(1, IMG, ['session', 'start', 'live2'], { env: productEnv(), cwd: ROOT });
    assert.equal(started.code, 0, `img session start: ${started.stderr}${started.stdout}`);
    assert.match(started.stdout, /session live2 starts now/);
    const victim = ws[1]!;
    for (const until = Date.now() + SESSION_BOUND_MS; ;) {
      const s = await L.show('live2');
      const c = s.clients.find((x) => x.name === s.clients[1]?.name);
      if (c && c.bytes > 0 && c.bytes < c.totalBytes) break;
      if (Date.now() > until || victim.exited)
        assert.fail(`ws3 never got under way: ${clientStates(s)}\n${L.report()}`);
      await sleep(100);
    }
    victim.child.kill('SIGKILL');
    await L.mustEnd([m, ws[0]!], SESSION_BOUND_MS, 'the master and the client left');
    L.mustExit(ws[0]!, 0);
    L.assertDisk(ws[0]!, disks[0]!, ref);
    L.mustExit(m, 'non-zero', 'one client did not end verified');
    const s = await L.show('live2');
    assert.equal(s.state, 'failed', `live2: ${s.message}`);
    const dead = s.clients.find((c) => c.state !== 'ok');
    assert.ok(dead, clientStates(s));
    assert.ok(dead.reason && dead.reason.length > 5, `the dead client's reason: ${JSON.stringify(dead)}`);
    // The master said it as it happened, with the reason, and ended on it.
    assert.ok(
      m.stderr().includes(`${dead.name} (${dead.mac}`),
      `the master must name ${dead.name}\n${L.report()}`,
    );
    assert.ok(
      m.stderr().includes(dead.reason),
      `the master must give the reason "${dead.reason}"\n${L.report()}`,
    );
    const err = jsonOf<{ error: string; message: string }>(m);
    assert.equal(err.error, 'E_SESSION_FAILED');
    assert.match(err.message, /1 of 2 client\(s\) did not end verified/);
    t.diagnostic(`${dead.name}: ${dead.state}: ${dead.reason}`);
  },
);
