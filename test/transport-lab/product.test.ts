/**
 * The product end to end, the way a user runs it (issue #12): `img make` on the host, then
 * `imgcast send` in the lab's server namespace and `img receive` in three workstation
 * namespaces, each the bin script itself (`#!/usr/bin/env -S node`, so the project's Node 24
 * goes first on PATH), with the command lines of the README plus `-v`, whose session log
 * is what a failure message shows. Nothing of the transport is called from here; the
 * results are read back from the targets: every file's sha256 and every symlink of a folder,
 * and for a disk its partition table (sfdisk -d), its filesystem's label and UUID and every file in
 * it, mounted read-only.
 *
 * Conditions (test/helpers/netlab.ts, the loss models of /work/shared/lab/netlab.sh): frame
 * loss (before IP reassembly), datagram loss (after it), bursts, a slow switch port, a rate
 * cap on the server's link, stopped processes. net.core.rmem_max is global (the namespaces
 * read the host's), so every test sets it, and puts it back after: to the stock 212992, the
 * world as users have it (IMGCAST_LAB_RMEM_MAX=N runs the file at another value, to tell a
 * loss problem from a socket-buffer one), except the baseline, which raises it to 4 MiB and
 * loses nothing: what the product did before these tests, so a failure there is the harness's.
 *
 * One lab at a time, one file: the machine has 2 cores and the setting is global. About
 * 3-4 minutes when the product works (each transfer of 48 MiB takes ~5 s in this lab).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
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
import { loopUnavailable, netnsUnavailable, setSysctl, skipUnless, sysctlNow } from '../helpers/env.ts';
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
import { lossUnavailable, NetLab, shapingUnavailable } from '../helpers/netlab.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const IMG = join(ROOT, 'bin/img.js');
const IMGCAST = join(ROOT, 'bin/imgcast.js');
const ENV = { ...process.env, PATH: `${join(ROOT, 'node_modules/.bin')}:${process.env.PATH ?? ''}` };

const STOCK_RMEM_MAX = 212_992;
const RAISED_RMEM_MAX = 4_194_304;
/** What the tests other than the baseline and the stock one run at (see the file comment). */
const USERS_RMEM_MAX = Number(process.env.IMGCAST_LAB_RMEM_MAX ?? STOCK_RMEM_MAX);
/** A whole session (3 receivers, 48 MiB or a 32 MiB disk) must end within this; it takes ~5 s without loss. */
const SESSION_BOUND_MS = 60_000;
const MIB = 1024 * 1024;
const DISK_BYTES = 80 * MIB;

// ---------------------------------------------------------------- processes

function start(lab: NetLab, host: number, name: string, bin: string, args: string[]): Proc {
  return startProc(lab, host, name, bin, args, { env: ENV, root: ROOT, keep: 200_000 });
}

/** Every process's exit, the last 20 lines of its stderr, and the sender's whole stdout (its result table). */
function report(procs: Proc[]): string {
  const now = Date.now();
  return procs
    .map((p) =>
      [
        `--- ${p.name} in ${p.where}: ${describeExit(p, now)}`,
        `  $ ${p.argv.join(' ')}`,
        `  stdout${p.name.startsWith('sender') ? '' : ' (last 20 lines)'}:`,
        indent(p.name.startsWith('sender') ? p.stdout() : tail(p.stdout(), 20)),
        '  stderr (last 20 lines):',
        indent(tail(p.stderr(), 20)),
      ].join('\n'),
    )
    .join('\n');
}

/** Waits until `re` shows in p's stderr; false if p exits or `ms` pass first. */
async function stderrShows(p: Proc, re: RegExp, ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (re.test(p.stderr())) return true;
    if (p.exited) return re.test(p.stderr());
    await sleep(50);
  }
  return false;
}

// ---------------------------------------------------------------- one lab per test

let sessionNo = 0;
/** A control port (data = port + 1) and a group of our own, never imgcast's defaults 7747 / 239.255.42.1. */
function newSession(): { port: number; group: string } {
  const n = sessionNo++;
  return {
    port: 20_000 + (process.pid % 1400) * 30 + (n % 15) * 2,
    group: `239.77.${process.pid % 250}.${(n % 250) + 1}`,
  };
}

class Run {
  readonly procs: Proc[] = [];
  readonly #undo: Array<() => void> = [];
  readonly t: TestContext;
  rmemMax = 0;
  lab!: NetLab;
  dir!: string;

  private constructor(t: TestContext) {
    this.t = t;
  }

  /**
   * Skips (with the reason) unless root, namespaces, nft and `needs` are there; else sets
   * rmem_max, builds a lab of 3 workstations and a scratch folder, and undoes all of it
   * when the test ends, failed or not: processes killed, lab (namespaces, nft rules, tbf) removed,
   * loop devices detached, files removed, rmem_max put back.
   */
  static open(t: TestContext, rmemMax: number, needs: Array<() => string | undefined> = []): Run | null {
    const why = [netnsUnavailable, lossUnavailable, ...needs].reduce<string | undefined>(
      (r, f) => r ?? f(),
      undefined,
    );
    if (skipUnless(t, why)) return null;
    const run = new Run(t);
    t.after(() => run.#cleanup());
    setSysctl(t, 'net.core.rmem_max', rmemMax);
    run.rmemMax = rmemMax;
    run.dir = mkdtempSync(join(tmpdir(), 'imgcast-product-'));
    run.undo(() => rmSync(run.dir, { recursive: true, force: true }));
    run.lab = NetLab.create(3);
    run.undo(() => run.lab.destroy());
    assert.equal(run.lab.socketBufferMax, rmemMax, 'rmem_max inside the lab');
    return run;
  }

  /** Registers a clean-up step; they run in reverse order. */
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

  send(image: string, s: { port: number; group: string }, clients = 3, name = 'sender'): Proc {
    const p = start(this.lab, 0, name, IMGCAST, [
      'send',
      image,
      '--clients',
      String(clients),
      '--interface',
      this.lab.addr(0),
      '--port',
      String(s.port),
      '--group',
      s.group,
      '--wait',
      '30',
      '-v',
    ]);
    this.procs.push(p);
    return p;
  }

  receive(host: number, s: { port: number }, target: string, name = `r${host}`): Proc {
    const p = start(this.lab, host, name, IMG, [
      'receive',
      '--from',
      `${this.lab.addr(0)}:${s.port}`,
      '--to',
      target,
      '--interface',
      this.lab.addr(host),
      '--name',
      `r${host}`,
      '-v',
    ]);
    this.procs.push(p);
    return p;
  }

  report(): string {
    const dropped = [1, 2, 3].map((h) => {
      const d = this.lab.dropped(h);
      return `n${h} ${d.packets} packets`;
    });
    return `${report(this.procs)}\n--- loss rules dropped: ${dropped.join(', ')}; ${this.rmemNote()}`;
  }

  /** rmem_max is global: another program on this machine may have changed it under the test. */
  rmemNote(): string {
    const now = Number(sysctlNow('net.core.rmem_max'));
    return now === this.rmemMax
      ? `net.core.rmem_max ${now}`
      : `WARNING: net.core.rmem_max is ${now}, not the ${this.rmemMax} this test set: something else on this machine changed it`;
  }

  /** Fails, with every process's report, unless all of `procs` ended within `ms` (counted from now). */
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

  /** Durations and loss counters, for the test log. */
  summary(): string {
    const ends = this.procs.map((p) => `${p.name} ${describeExit(p)}`).join('; ');
    const dropped = [1, 2, 3].map((h) => this.lab.dropped(h).packets).join('/');
    const sender = this.procs.find((p) => p.name === 'sender');
    const said = sender?.stdout().trim() ? sender.stdout().split('\n')[0] : tail(sender?.stderr() ?? '', 1);
    return `${ends}; loss rules dropped ${dropped} packets; ${this.rmemNote()}; sender: ${said}`;
  }
}

// ---------------------------------------------------------------- sources and checks

let work: string | undefined;
function workDir(): string {
  work ??= mkdtempSync(join(tmpdir(), 'imgcast-product-src-'));
  return work;
}
after(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

/** Big files of uneven sizes, small files, an empty one, folders and two symlinks (one dangling). */
function fillTree(dir: string, big: Array<[string, number]>): void {
  for (const [name, size] of big) {
    mkdirSync(join(dir, name, '..'), { recursive: true });
    randomFile(join(dir, name), size);
  }
  mkdirSync(join(dir, 'small'), { recursive: true });
  for (let i = 1; i <= 40; i++) randomFile(join(dir, 'small', `f${i}.dat`), i * 997);
  writeFileSync(join(dir, 'notes.txt'), 'imgcast lab test\n');
  writeFileSync(join(dir, 'empty'), '');
  mkdirSync(join(dir, 'empty-folder'));
  symlinkSync(big[0]![0], join(dir, 'link'));
  symlinkSync('../nowhere', join(dir, 'small', 'dangling'));
}

/** Relative path -> what must match: 'dir', 'file SIZE SHA256' or 'link TARGET'. */
type Tree = Map<string, string>;
function describeTree(root: string, skip: string[] = []): Tree {
  const tree: Tree = new Map();
  const walk = (rel: string): void => {
    for (const e of readdirSync(join(root, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (skip.includes(r)) continue;
      const abs = join(root, r);
      if (e.isSymbolicLink()) tree.set(r, `link ${readlinkSync(abs)}`);
      else if (e.isDirectory()) {
        tree.set(r, 'dir');
        walk(r);
      } else if (e.isFile()) {
        const data = readFileSync(abs);
        tree.set(r, `file ${data.length} ${createHash('sha256').update(data).digest('hex')}`);
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
    else if (g !== v) problems.push(`${k}: ${g.slice(0, 80)} instead of ${v.slice(0, 80)}`);
  }
  for (const k of got.keys()) if (!want.has(k)) problems.push(`extra ${k}`);
  return problems;
}

/** Bytes a folder holds on disk (allocated blocks, so a file truncated to its size but not written counts nothing). */
function allocated(dir: string): number {
  let n = 0;
  const walk = (d: string): void => {
    let entries;
    try {
      entries = readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) {
        try {
          n += lstatSync(p).blocks * 512;
        } catch {
          // written and renamed meanwhile
        }
      }
    }
  };
  walk(dir);
  return n;
}

interface FolderSource {
  image: string;
  tree: Tree;
  bytes: number;
}
let folder: FolderSource | undefined;
/** ~48 MiB of random data in 4 files of uneven sizes, plus small files and symlinks, captured with --level none. */
function folderSource(): FolderSource {
  if (folder) return folder;
  const dir = join(workDir(), 'folder');
  fillTree(dir, [
    ['big.bin', 20 * MIB],
    ['sub/medium.bin', 13 * MIB],
    ['sub/deeper/odd.bin', 9_000_001],
    ['six.bin', 6 * MIB],
  ]);
  const image = join(workDir(), 'folder.imgc');
  execFileSync(IMG, ['make', dir, image, '--level', 'none'], { env: ENV, stdio: 'pipe' });
  const tree = describeTree(dir);
  const bytes = [...tree.values()].reduce(
    (n, v) => n + (v.startsWith('file ') ? Number(v.split(' ')[1]) : 0),
    0,
  );
  folder = { image, tree, bytes };
  return folder;
}

interface DiskContents {
  /** sfdisk -d with the device's path replaced by DISK (partition 1 is DISK1). */
  table: string;
  /** blkid's TYPE, LABEL and UUID of partition 1. */
  fs: string;
  tree: Tree;
}

/** Partition table, filesystem identity and files (partition 1 mounted read-only) of a disk-image file or a disk. */
function diskContents(path: string): DiskContents {
  // The partition lines name the partitions after the path: disk.img1, but /dev/loop0p1.
  const table = execFileSync('sfdisk', ['-d', path], { encoding: 'utf8' })
    .split(path)
    .join('DISK')
    .replace(/^DISKp(\d+) :/gm, 'DISK$1 :');
  const layout = JSON.parse(execFileSync('sfdisk', ['--json', path], { encoding: 'utf8' })) as {
    partitiontable: { partitions: Array<{ start: number; size: number }> };
  };
  const p1 = layout.partitiontable.partitions[0];
  assert.ok(p1, `${path} has no partition: ${table}`);
  // By offset: partition scanning (losetup -P) makes no partition devices on this kernel.
  const dev = execFileSync(
    'losetup',
    [
      '--find',
      '--show',
      '--read-only',
      '--offset',
      String(p1.start * 512),
      '--sizelimit',
      String(p1.size * 512),
      path,
    ],
    { encoding: 'utf8' },
  ).trim();
  const mnt = mkdtempSync(join(tmpdir(), 'imgcast-product-mnt-'));
  let mounted = false;
  try {
    const fs = execFileSync('blkid', ['-p', '-o', 'export', dev], { encoding: 'utf8' })
      .split('\n')
      .filter((l) => /^(TYPE|LABEL|UUID)=/.test(l))
      .sort()
      .join(' ');
    execFileSync('mount', ['-t', 'ext4', '-o', 'ro,noload', dev, mnt], { stdio: 'pipe' });
    mounted = true;
    return { table, fs, tree: describeTree(mnt, ['lost+found']) };
  } finally {
    if (mounted) execFileSync('umount', [mnt], { stdio: 'pipe' });
    execFileSync('losetup', ['-d', dev], { stdio: 'pipe' });
    rmSync(mnt, { recursive: true, force: true });
  }
}

interface DiskSource {
  image: string;
  contents: DiskContents;
}
const disks = new Map<'gpt' | 'mbr', DiskSource>();
/**
 * An 80 MiB disk-image file with a GPT or MBR table and one ext4 partition holding ~32 MiB of
 * random files, captured with `img make DISK.img IMAGE --level none` (a disk-image file).
 */
function diskSource(table: 'gpt' | 'mbr'): DiskSource {
  const had = disks.get(table);
  if (had) return had;
  const path = join(workDir(), `${table}.img`);
  writeFileSync(path, '');
  execFileSync('truncate', ['-s', String(DISK_BYTES), path]);
  if (table === 'gpt')
    execFileSync('sgdisk', ['-n', '1:2048:0', '-t', '1:8300', '-c', '1:data', path], { stdio: 'pipe' });
  else
    execFileSync('sfdisk', ['-q', path], {
      input: 'label: dos\nstart=2048, type=83\n',
      stdio: ['pipe', 'pipe', 'pipe'],
    });
  const layout = JSON.parse(execFileSync('sfdisk', ['--json', path], { encoding: 'utf8' })) as {
    partitiontable: { partitions: Array<{ start: number; size: number }> };
  };
  const p1 = layout.partitiontable.partitions[0]!;
  const dev = execFileSync(
    'losetup',
    ['--find', '--show', '--offset', String(p1.start * 512), '--sizelimit', String(p1.size * 512), path],
    { encoding: 'utf8' },
  ).trim();
  const mnt = join(workDir(), `${table}-mnt`);
  mkdirSync(mnt);
  try {
    execFileSync('mkfs.ext4', ['-q', '-L', `lab-${table}`, dev], { stdio: 'pipe' });
    execFileSync('mount', [dev, mnt], { stdio: 'pipe' });
    try {
      fillTree(mnt, [
        ['a.bin', 17 * MIB],
        ['d/b.bin', 11_000_000],
        ['d/c.bin', 5 * MIB],
      ]);
    } finally {
      execFileSync('umount', [mnt], { stdio: 'pipe' });
    }
  } finally {
    execFileSync('losetup', ['-d', dev], { stdio: 'pipe' });
    rmSync(mnt, { recursive: true, force: true });
  }
  const image = join(workDir(), `${table}.imgc`);
  execFileSync(IMG, ['make', path, image, '--level', 'none'], { env: ENV, stdio: 'pipe' });
  const source = { image, contents: diskContents(path) };
  assert.ok(source.contents.tree.size > 40, `the source disk holds ${source.contents.tree.size} entries`);
  disks.set(table, source);
  return source;
}

/** Restore targets for a disk: a new disk-image file, a loop device, and an existing disk-image file of the same size. */
function diskTargets(run: Run): string[] {
  const fresh = join(run.dir, 'r1.img');
  const backing = join(run.dir, 'r2-backing.img');
  execFileSync('truncate', ['-s', String(DISK_BYTES), backing]);
  const loop = execFileSync('losetup', ['--find', '--show', backing], { encoding: 'utf8' }).trim();
  run.undo(() => execFileSync('losetup', ['-d', loop], { stdio: 'pipe' }));
  const existing = join(run.dir, 'r3.img');
  execFileSync('truncate', ['-s', String(DISK_BYTES), existing]);
  return [fresh, loop, existing];
}

function assertFolder(run: Run, p: Proc, target: string, src: FolderSource): void {
  const problems = treeProblems(describeTree(target), src.tree);
  assert.equal(
    problems.length,
    0,
    `${p.name} exited 0 but ${target} is not byte-exact (${problems.length} differences):\n  ` +
      `${problems.slice(0, 15).join('\n  ')}\n${run.report()}`,
  );
}

function assertDisk(run: Run, p: Proc, target: string, src: DiskSource): void {
  const got = diskContents(target);
  const where = `${p.name} exited 0 but ${target}`;
  assert.equal(got.table, src.contents.table, `${where} has another partition table\n${run.report()}`);
  assert.equal(got.fs, src.contents.fs, `${where} has another filesystem\n${run.report()}`);
  const problems = treeProblems(got.tree, src.contents.tree);
  assert.equal(
    problems.length,
    0,
    `${where}'s files are not byte-exact (${problems.length} differences):\n  ` +
      `${problems.slice(0, 15).join('\n  ')}\n${run.report()}`,
  );
}

// ---------------------------------------------------------------- the matrix

interface Transfer {
  source: 'folder' | 'gpt' | 'mbr';
  rmemMax: number;
  impair?: (lab: NetLab) => void;
  needs?: Array<() => string | undefined>;
}

/** One session of 3 receivers under `impair`: all exit 0 within SESSION_BOUND_MS, every target byte-exact. */
async function transfer(t: TestContext, o: Transfer): Promise<void> {
  const needs = [...(o.needs ?? []), ...(o.source === 'folder' ? [] : [loopUnavailable])];
  const run = Run.open(t, o.rmemMax, needs);
  if (!run) return;
  const folderSrc = o.source === 'folder' ? folderSource() : undefined;
  const diskSrc = o.source === 'folder' ? undefined : diskSource(o.source);
  o.impair?.(run.lab);
  const targets = folderSrc ? [1, 2, 3].map((h) => join(run.dir, `r${h}`)) : diskTargets(run);
  const s = newSession();
  const sender = run.send((folderSrc ?? diskSrc)!.image, s);
  const rx = [1, 2, 3].map((h) => run.receive(h, s, targets[h - 1]!));
  await run.mustEnd(run.procs, SESSION_BOUND_MS, 'the session');
  for (const p of [...rx, sender]) run.mustExit(p, 0);
  rx.forEach((p, i) =>
    folderSrc ? assertFolder(run, p, targets[i]!, folderSrc) : assertDisk(run, p, targets[i]!, diskSrc!),
  );
  t.diagnostic(run.summary());
}

const eachReceiver =
  (f: (lab: NetLab, host: number) => void) =>
  (lab: NetLab): void =>
    [1, 2, 3].forEach((h) => f(lab, h));

test(
  'baseline (harness check): folder to 3 receivers, no loss, rmem_max raised to 4 MiB; all exact within 60 s',
  { timeout: 120_000 },
  (t) => transfer(t, { source: 'folder', rmemMax: RAISED_RMEM_MAX }),
);

test(
  'folder to 3 receivers at 1 % frame loss (before reassembly), stock rmem_max; all exact within 60 s',
  { timeout: 120_000 },
  (t) =>
    transfer(t, {
      source: 'folder',
      rmemMax: USERS_RMEM_MAX,
      impair: eachReceiver((lab, h) => lab.frameLoss(h, 1)),
    }),
);

test(
  'folder to 3 receivers at 1 % datagram loss (after reassembly), stock rmem_max; all exact within 60 s',
  { timeout: 120_000 },
  (t) =>
    transfer(t, {
      source: 'folder',
      rmemMax: USERS_RMEM_MAX,
      impair: eachReceiver((lab, h) => lab.datagramLoss(h, 1)),
    }),
);

test(
  'folder to 3 receivers losing 5 of every 100 datagrams in a burst, stock rmem_max; all exact within 60 s',
  { timeout: 120_000 },
  (t) =>
    transfer(t, {
      source: 'folder',
      rmemMax: USERS_RMEM_MAX,
      impair: eachReceiver((lab, h) => lab.burstLoss(h, 5, 100)),
    }),
);

test(
  'folder to 3 receivers at the stock rmem_max 212992, no loss; all exact within 60 s',
  { timeout: 120_000 },
  (t) => transfer(t, { source: 'folder', rmemMax: STOCK_RMEM_MAX }),
);

test(
  'GPT disk (ext4) to a new disk-image file, a loop device and an existing disk-image file at 1 % frame loss, stock rmem_max; all exact within 60 s',
  { timeout: 120_000 },
  (t) =>
    transfer(t, {
      source: 'gpt',
      rmemMax: USERS_RMEM_MAX,
      impair: eachReceiver((lab, h) => lab.frameLoss(h, 1)),
    }),
);

test(
  'MBR disk (ext4) to a new disk-image file, a loop device and an existing disk-image file at 1 % datagram loss, stock rmem_max; all exact within 60 s',
  { timeout: 120_000 },
  (t) =>
    transfer(t, {
      source: 'mbr',
      rmemMax: USERS_RMEM_MAX,
      impair: eachReceiver((lab, h) => lab.datagramLoss(h, 1)),
    }),
);

// ---------------------------------------------------------------- robustness

test(
  'a receiver stopped (SIGSTOP) for 40 s right after the session starts: the others finish within 30 s, it fails clearly after SIGCONT, and a new receive resumes it exactly',
  { timeout: 200_000 },
  async (t) => {
    const run = Run.open(t, USERS_RMEM_MAX);
    if (!run) return;
    const src = folderSource();
    const targets = [1, 2, 3].map((h) => join(run.dir, `r${h}`));
    const s = newSession();
    const sender = run.send(src.image, s);
    const rx = [1, 2, 3].map((h) => run.receive(h, s, targets[h - 1]!));
    const victim = rx[2]!;
    assert.ok(
      await stderrShows(sender, /starting with \d+ receiver/, SESSION_BOUND_MS),
      `the session never started\n${run.report()}`,
    );
    const startedAt = Date.now();
    // Right after the start, once the victim wrote its first data (at most 3 s), so that it
    // has something to resume from.
    while (Date.now() - startedAt < 3000 && allocated(targets[2]!) < 2 * MIB && !victim.exited)
      await sleep(20);
    const hadBytes = allocated(targets[2]!);
    assert.equal(victim.exited, null, `r3 ended before it could be stopped\n${run.report()}`);
    victim.child.kill('SIGSTOP');
    const stoppedAt = Date.now();
    t.diagnostic(`r3 stopped ${Date.now() - startedAt} ms after the start, holding ${hadBytes} bytes`);

    await run.mustEnd(rx.slice(0, 2), 30_000 - (Date.now() - startedAt), 'r1 and r2 while r3 is stopped');
    for (const p of rx.slice(0, 2)) run.mustExit(p, 0);
    rx.slice(0, 2).forEach((p, i) => assertFolder(run, p, targets[i]!, src));

    await sleep(40_000 - (Date.now() - stoppedAt));
    victim.child.kill('SIGCONT');
    await run.mustEnd([victim, sender], 30_000, 'r3 after SIGCONT, and the sender');
    run.mustExit(victim, 'non-zero', 'the session went on without it');
    assert.match(victim.stderr(), /E_DROPPED|E_SENDER_LOST/, `r3's message\n${run.report()}`);
    // The sender reports what it did: a receiver did not finish, so it fails, naming r3.
    run.mustExit(sender, 'non-zero', 'r3 did not finish');
    assert.match(sender.stderr(), /r3: /, `the sender's message must name r3\n${run.report()}`);
    const first = run.summary();

    const s2 = newSession();
    const sender2 = run.send(src.image, s2, 1, 'sender (second session)');
    const again = run.receive(3, s2, targets[2]!, 'r3 (resumed)');
    await run.mustEnd([sender2, again], SESSION_BOUND_MS, 'the resumed receive');
    run.mustExit(again, 0);
    run.mustExit(sender2, 0);
    // "1 chunk was" or "N chunks were".
    const had = Number(/(\d+) chunks? (?:was|were) already there \(resumed\)/.exec(again.stdout())?.[1] ?? 0);
    assert.ok(
      had > 0,
      `r3 held ${hadBytes} bytes when stopped, but the new receive says no chunk was already there\n${run.report()}`,
    );
    assertFolder(run, again, targets[2]!, src);
    t.diagnostic(`${first}; resumed: ${tail(again.stdout(), 1)}`);
  },
);

test(
  'a receiver behind a 100 Mbit/s port: it finishes exactly or is dropped as too slow; the other two finish within 60 s',
  { timeout: 200_000 },
  async (t) => {
    const run = Run.open(t, USERS_RMEM_MAX, [shapingUnavailable]);
    if (!run) return;
    const src = folderSource();
    run.lab.portRate(3, '100mbit');
    const targets = [1, 2, 3].map((h) => join(run.dir, `r${h}`));
    const s = newSession();
    const sender = run.send(src.image, s);
    const rx = [1, 2, 3].map((h) => run.receive(h, s, targets[h - 1]!));
    await run.mustEnd(rx.slice(0, 2), SESSION_BOUND_MS, 'r1 and r2');
    for (const p of rx.slice(0, 2)) run.mustExit(p, 0);
    rx.slice(0, 2).forEach((p, i) => assertFolder(run, p, targets[i]!, src));
    // The slow one: the drop policy ends it at the latest 60 s (lag limit) after the others.
    await run.mustEnd([rx[2]!, sender], 90_000, 'r3 and the sender');
    const slow = rx[2]!;
    if (slow.exited?.code === 0) {
      run.mustExit(sender, 0, 'every receiver finished');
      assertFolder(run, slow, targets[2]!, src);
    } else {
      run.mustExit(slow, 'non-zero');
      assert.match(slow.stderr(), /E_DROPPED/, `r3 must say it was dropped\n${run.report()}`);
      assert.match(slow.stderr(), /too slow/, `r3's reason must say it was too slow\n${run.report()}`);
      run.mustExit(sender, 'non-zero', 'r3 did not finish');
      assert.match(sender.stderr(), /r3: too slow/, `the sender must name r3 as too slow\n${run.report()}`);
    }
    const port = run.lab.shaped(3, 'port');
    t.diagnostic(
      `${run.summary()}; r3 ${slow.exited?.code === 0 ? 'finished' : 'was dropped'}; its port passed ${port.bytes} bytes, dropped ${port.dropped} packets`,
    );
  },
);

test(
  'the sender stopped (SIGSTOP) for 10 s mid-transfer: receivers finish exactly (or fail with E_SENDER_LOST) within 60 s of SIGCONT',
  { timeout: 150_000 },
  async (t) => {
    const run = Run.open(t, USERS_RMEM_MAX);
    if (!run) return;
    const src = folderSource();
    const targets = [1, 2, 3].map((h) => join(run.dir, `r${h}`));
    const s = newSession();
    const sender = run.send(src.image, s);
    const rx = [1, 2, 3].map((h) => run.receive(h, s, targets[h - 1]!));
    assert.ok(
      await stderrShows(sender, /starting with \d+ receiver/, SESSION_BOUND_MS),
      `the session never started\n${run.report()}`,
    );
    // Mid-transfer: once a receiver holds a quarter of the data.
    const most = (): number => Math.max(...targets.map(allocated));
    const until = Date.now() + SESSION_BOUND_MS;
    while (Date.now() < until && most() < src.bytes / 4 && !run.procs.some((p) => p.exited)) await sleep(20);
    const held = most();
    const gone = run.procs.filter((p) => p.exited).map((p) => p.name);
    assert.ok(
      held >= src.bytes / 4 && gone.length === 0,
      `the session failed before it was a quarter through, so the sender was never stopped: ` +
        (gone.length ? `${gone.join(', ')} ended` : `no receiver got past ${held} of ${src.bytes} bytes`) +
        ` ${secs(Date.now() - sender.startedAt)} after the start\n${run.report()}`,
    );
    sender.child.kill('SIGSTOP');
    await sleep(10_000);
    sender.child.kill('SIGCONT');
    await run.mustEnd(run.procs, SESSION_BOUND_MS, 'the session after SIGCONT');
    const outcome = rx.map((p, i) => {
      if (p.exited?.code === 0) {
        assertFolder(run, p, targets[i]!, src);
        return 'finished';
      }
      assert.match(
        p.stderr(),
        /E_SENDER_LOST/,
        `${p.name} must finish, or fail with E_SENDER_LOST: ${describeExit(p)}\n${run.report()}`,
      );
      return 'E_SENDER_LOST';
    });
    if (outcome.every((o) => o === 'finished')) run.mustExit(sender, 0, 'every receiver finished');
    t.diagnostic(
      `stopped at ${held} of ${src.bytes} bytes; receivers: ${outcome.join('/')}; ${run.summary()}`,
    );
  },
);

test(
  "the sender's link capped at 400 Mbit/s (tbf): all 3 receivers exact within 60 s",
  { timeout: 120_000 },
  (t) =>
    transfer(t, {
      source: 'folder',
      rmemMax: USERS_RMEM_MAX,
      needs: [shapingUnavailable],
      impair: (lab) => lab.rate(0, '400mbit'),
    }),
);
