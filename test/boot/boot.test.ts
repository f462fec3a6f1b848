/**
 * Copies of a real Debian workstation boot: the reference disk of reference-disk.ts (GPT, BIOS
 * boot partition, vfat EFI partition, ext4 root, GRUB for BIOS and at the removable UEFI path) is
 * captured with `img make`, put down with `img restore` and, to two workstations, through a
 * session of the imaging server, and every copy is booted headless in QEMU (TCG) under SeaBIOS
 * and under OVMF with a fresh variable store, to its `NAME login:` prompt on the serial console,
 * with no unit failed.
 *
 * Every product step is the bin script with the arguments an administrator types. The copies'
 * identities (hostname, machine-ids, SSH host keys) are read offline from their roots; the checks
 * of what a copy's identity must be are in `assertIdentities`, the one place they belong.
 *
 * Time (2 cores shared with other work, TCG): a boot takes 50-80 s, and two run side by side;
 * with the reference disk cached the file took 4.0 minutes, 7.8 with the disk built first (the
 * first run on a machine, or after reference-disk.ts changed). Console logs of the boots are
 * kept in LOGS_DIR when a boot fails.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { cp, mkdir, mkdtemp, open, rm, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import type { Session } from '../../src/api/schemas.ts';
import { netnsUnavailable, skipUnless } from '../helpers/env.ts';
import { describeExit, indent, secs, settle, startProc, tail, type Proc } from '../helpers/lab-process.ts';
import { NetLab } from '../helpers/netlab.ts';
import { readSystemIdentity, type SystemIdentity } from './offline.ts';
import { bootToLogin, BootError, qemuVersion, type BootResult, type Firmware } from './qemu.ts';
import { referenceDisk, referenceDiskUnavailable, type ReferenceDisk } from './reference-disk.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const IMG = join(ROOT, 'bin/img.js');
const IMGCAST = join(ROOT, 'bin/imgcast.js');
/** Where the console logs of a failed run are kept (replaced by the next failed run). */
const LOGS_DIR = '/var/tmp/imgcast-boot-test-logs';
const FIRMWARES: Firmware[] = ['bios', 'uefi'];
/** TCG on two shared cores: a boot that takes a minute alone can take three beside other work. */
const BOOT_TIMEOUT_MS = 6 * 60_000;
/** Lines every clean boot shows before it counts: SSH up (host keys usable), the target reached. */
const BOOTED = [/Started ssh\.service/, /Reached target multi-user\.target/];

let work: string | undefined;
async function workDir(): Promise<string> {
  work ??= await mkdtemp(join(tmpdir(), 'imgcast-boot-test-'));
  return work;
}
after(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

/** The product's commands only: no IMGCAST_* variable or client.json of this user may steer them. */
function productEnv(dir: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('IMGCAST_')) env[k] = v;
  return {
    ...env,
    PATH: `${join(ROOT, 'node_modules/.bin')}:${process.env.PATH ?? ''}`,
    XDG_CONFIG_HOME: join(dir, 'config'),
  };
}

/** Runs a bin script as a user does (its shebang, the project's Node on PATH); its exit and output. */
async function cli(bin: string, args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  const env = productEnv(await workDir());
  return new Promise((res, rej) => {
    const child = spawn(bin, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    child.on('error', rej);
    child.on('close', (code) => res({ code, out, err }));
  });
}

async function mustRun(bin: string, args: string[]): Promise<string> {
  const started = Date.now();
  const r = await cli(bin, args);
  const what = `${bin.slice(ROOT.length + 1)} ${args.join(' ')}`;
  assert.equal(r.code, 0, `${what} failed (exit ${r.code}):\n${r.err}${r.out}`);
  timings.push(`${what.split(' ').slice(0, 2).join(' ')}: ${secs(Date.now() - started)}`);
  return r.out;
}

/** What each step took, for the test's diagnostics. */
const timings: string[] = [];

async function sparseDisk(path: string, size: number): Promise<string> {
  await (await open(path, 'w')).close();
  await truncate(path, size);
  return path;
}

interface Captured {
  ref: ReferenceDisk;
  refIdentity: SystemIdentity;
  /** The image folder the server serves, holding reference.imgc. */
  images: string;
  image: string;
}

let captured: Promise<Captured> | undefined;
/** The reference disk (cached or built) captured once for the file with `img make`. */
function capture(t: TestContext): Promise<Captured> {
  captured ??= (async () => {
    const ref = await referenceDisk((line) => t.diagnostic(`reference disk: ${line}`));
    t.diagnostic(
      ref.cached
        ? `reference disk from the cache: ${ref.path} (built ${ref.builtAt} in ${ref.buildSeconds} s)`
        : `reference disk built in ${ref.buildSeconds} s: ${ref.path}`,
    );
    t.diagnostic(
      `reference boots when built: ${ref.provenBoots.map((b) => `${b.firmware} ${b.seconds} s`).join(', ')}; ${qemuVersion()}`,
    );
    const images = join(await workDir(), 'images');
    await mkdir(images, { recursive: true });
    const image = join(images, 'reference.imgc');
    // The cached disk is read, never written: img make opens a disk-image file read-only.
    await mustRun(IMG, ['make', ref.path, image, '--json']);
    return { ref, refIdentity: await readSystemIdentity(ref.path), images, image };
  })();
  return captured;
}

/** Why this file cannot run here, or undefined. */
let unavailable: Promise<string | undefined> | undefined;
const bootUnavailable = () => (unavailable ??= referenceDiskUnavailable());

/** One restored disk and what it must show when booted. */
interface Copy {
  /** How the report names it: `restored`, `lab1-01`, … */
  label: string;
  disk: string;
  /**
   * The hostname its login prompt must show. The reference's own, until workstations get their
   * identity applied (issue 16): then the workstation's name.
   */
  hostname: string;
  /** The firmwares to boot it under (default both). */
  firmwares?: Firmware[];
}

interface Booted {
  copy: Copy;
  firmware: Firmware;
  result?: BootResult;
  error?: Error;
}

/**
 * Boots every copy under every firmware, two QEMUs at a time (one per core), and fails with all
 * the failed boots at once, their console tails in the message and their logs kept in LOGS_DIR.
 */
async function bootAll(t: TestContext, copies: Copy[]): Promise<Booted[]> {
  const logs = join(await workDir(), `logs-${randomInt(1e9)}`);
  await mkdir(logs);
  const jobs = copies.flatMap((copy) =>
    (copy.firmwares ?? FIRMWARES).map((firmware) => ({ copy, firmware })),
  );
  const results: Booted[] = [];
  const started = Date.now();
  const next = async (): Promise<void> => {
    for (let job = jobs.shift(); job; job = jobs.shift()) {
      const b: Booted = { ...job };
      results.push(b);
      try {
        b.result = await bootToLogin({
          disk: job.copy.disk,
          firmware: job.firmware,
          expect: BOOTED,
          timeoutMs: BOOT_TIMEOUT_MS,
          logFile: join(logs, `${job.copy.label}-${job.firmware}.log`),
          signal: t.signal,
        });
      } catch (err) {
        b.error = err as Error;
      }
    }
  };
  await Promise.all([next(), next()]);
  for (const b of results) {
    const m = b.result?.milestones;
    t.diagnostic(
      `${b.copy.label} under ${b.firmware}: ${b.result ? `"${b.result.hostname} login:" after ${b.result.seconds} s (loader ${m?.loader ?? '?'} s, kernel ${m?.kernel ?? '?'} s, systemd ${m?.systemd ?? '?'} s)` : 'FAILED'}`,
    );
  }
  timings.push(`${results.length} boots, two at a time: ${secs(Date.now() - started)}`);
  const problems = results.flatMap((b) => {
    const where = `${b.copy.label} under ${b.firmware === 'bios' ? 'SeaBIOS' : 'OVMF (UEFI)'}`;
    if (b.error) return [`${where}: ${b.error instanceof BootError ? b.error.message : b.error.stack}`];
    const r = b.result!;
    const out: string[] = [];
    if (r.hostname !== b.copy.hostname)
      out.push(`${where}: the login prompt is "${r.hostname} login:", not "${b.copy.hostname} login:"`);
    if (r.failedUnits.length) out.push(`${where}: units failed:\n${indent(r.failedUnits.join('\n'))}`);
    return out;
  });
  if (problems.length) {
    await rm(LOGS_DIR, { recursive: true, force: true });
    await cp(logs, LOGS_DIR, { recursive: true });
    assert.fail(`${problems.join('\n\n')}\n\n(every console log of these boots is in ${LOGS_DIR})`);
  }
  return results;
}

/**
 * What the copies' identities must be, read offline from their roots after imaging. Each root
 * must be a working system's: a hostname (the one its login prompt shows), a machine-id, and
 * SSH host keys of the reference's types (sshd starts only with them).
 */
async function assertIdentities(c: Captured, copies: Copy[]): Promise<Map<string, SystemIdentity>> {
  const ids = new Map<string, SystemIdentity>();
  for (const copy of copies) {
    const id = await readSystemIdentity(copy.disk);
    ids.set(copy.label, id);
    assert.equal(id.hostname, copy.hostname, `${copy.label}: /etc/hostname`);
    assert.match(id.machineId, /^[0-9a-f]{32}$/, `${copy.label}: /etc/machine-id`);
    assert.deepEqual(
      id.hostKeys.map((k) => k.type),
      c.refIdentity.hostKeys.map((k) => k.type),
      `${copy.label}: the SSH host key types`,
    );
  }
  // Identity application (issue 16) adds here: the hostname and 127.0.1.1 line are the
  // workstation's, machine-ids differ from each other and from the reference's, host keys too,
  // and each copy's fingerprints are the ones `imgcast workstation show` lists.
  return ids;
}

test(
  'img make of the reference Debian disk, img restore to a new disk of the same size: it boots to its login prompt under SeaBIOS and OVMF, no unit failed',
  { timeout: 25 * 60_000 },
  async (t) => {
    if (skipUnless(t, await bootUnavailable())) return;
    const c = await capture(t);
    const disk = await sparseDisk(join(await workDir(), 'restored.img'), c.ref.diskBytes);
    await mustRun(IMG, ['restore', c.image, disk, '--json']);
    const copies: Copy[] = [{ label: 'restored', disk, hostname: c.ref.hostname }];
    await assertIdentities(c, copies);
    await bootAll(t, copies);
    t.diagnostic(`timings: ${timings.join('; ')}`);
    await rm(disk);
  },
);

// ------------------------------------------------------------------ through a server session

/** The imaging server in namespace 0 of a NetLab, workstations in the others. */
class SessionLab {
  readonly procs: Proc[] = [];
  readonly port = randomInt(20_000, 60_000);
  readonly lab: NetLab;
  readonly dir: string;
  readonly env: NodeJS.ProcessEnv;

  constructor(t: TestContext, workstations: number, dir: string) {
    this.dir = dir;
    this.env = productEnv(dir);
    this.lab = NetLab.create(workstations);
    t.after(() => {
      for (const p of this.procs) if (!p.exited) this.lab.kill9(p.child);
      this.lab.destroy();
    });
  }

  get api(): string {
    return `${this.lab.addr(0)}:${this.port}`;
  }

  start(host: number, name: string, bin: string, args: string[]): Proc {
    const p = startProc(this.lab, host, name, bin, args, { env: this.env, root: ROOT, keep: 200_000 });
    this.procs.push(p);
    return p;
  }

  async startServer(images: string): Promise<void> {
    const third = randomInt(3, 250);
    const p = this.start(0, 'server', IMGCAST, [
      'server',
      '--data',
      join(this.dir, 'data'),
      '--images',
      images,
      '--listen',
      this.api,
      '--ports',
      `${this.port + 10}-${this.port + 29}`,
      '--groups',
      `239.78.${third}.1`,
      '--discovery',
      'off',
    ]);
    for (const until = Date.now() + 60_000; !/: API on /.test(p.stderr()); await sleep(50)) {
      if (p.exited || Date.now() > until)
        assert.fail(`the server did not come up (${describeExit(p)})\n${this.report()}`);
    }
  }

  /** An admin command with --json in the server's namespace, which must succeed; its document. */
  async admin<T>(args: string[]): Promise<T> {
    const r = await this.lab.run(
      0,
      IMGCAST,
      [...args, '-i', this.api, '--data', join(this.dir, 'data'), '--json'],
      {
        env: this.env,
        cwd: ROOT,
      },
    );
    assert.equal(r.code, 0, `imgcast ${args.join(' ')} failed (exit ${r.code}):\n${r.stderr}${r.stdout}`);
    return JSON.parse(r.stdout) as T;
  }

  mac(host: number): string {
    return this.lab.runSync(host, 'cat', ['/sys/class/net/eth0/address']).trim();
  }

  report(): string {
    return this.procs
      .map((p) =>
        [
          `--- ${p.name} in ${p.where}: ${describeExit(p)}`,
          `  $ ${p.argv.join(' ')}`,
          '  stdout (last 15 lines):',
          indent(tail(p.stdout(), 15)),
          '  stderr (last 15 lines):',
          indent(tail(p.stderr(), 15)),
        ].join('\n'),
      )
      .join('\n');
  }
}

test(
  'a session of the imaging server images two workstations, lab1-01 and lab1-02, with the reference Debian disk: each copy boots to its login prompt under SeaBIOS and OVMF, no unit failed',
  { timeout: 25 * 60_000 },
  async (t) => {
    if (skipUnless(t, (await bootUnavailable()) ?? netnsUnavailable())) return;
    const c = await capture(t);
    const dir = await mkdtemp(join(await workDir(), 'session-'));
    const L = new SessionLab(t, 2, dir);
    await L.startServer(c.images);
    const names = ['lab1-01', 'lab1-02'];
    // Known before they boot, as an inventory import makes them: registering keeps these names.
    for (const [i, name] of names.entries()) await L.admin(['workstation', 'add', name, L.mac(i + 1)]);
    await L.admin<Session>(['mcast', 'lab1', '-p', 'reference.imgc', '-c', String(names.length)]);
    const copies: Copy[] = [];
    for (const name of names) {
      copies.push({
        label: name,
        disk: await sparseDisk(join(dir, `${name}.img`), c.ref.diskBytes),
        hostname: c.ref.hostname,
      });
    }
    const started = Date.now();
    const ws = copies.map((copy, i) =>
      L.start(i + 1, copy.label, IMG, [
        'session',
        'lab1',
        '--server',
        L.api,
        '--disk',
        copy.disk,
        '--json',
        '-v',
      ]),
    );
    if (!(await settle(ws, 10 * 60_000)))
      assert.fail(`the session did not end within 10 minutes\n${L.report()}`);
    for (const p of ws) assert.equal(p.exited?.code, 0, `${p.name}: ${describeExit(p)}\n${L.report()}`);
    timings.push(`session to ${names.length} workstations: ${secs(Date.now() - started)}`);
    const s = await L.admin<Session>(['session', 'show', 'lab1']);
    assert.equal(s.state, 'done', `lab1: ${s.message}`);
    assert.deepEqual(
      s.clients.map((x) => [x.name, x.state]).sort(),
      names.map((n) => [n, 'ok']),
      `the session's workstations: ${JSON.stringify(s.clients)}`,
    );
    await assertIdentities(c, copies);
    await bootAll(t, copies);
    t.diagnostic(`timings: ${timings.join('; ')}`);
  },
);
