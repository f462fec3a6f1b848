/**
 * Copies of a real Debian workstation boot as themselves: the reference disk of reference-disk.ts
 * (GPT, BIOS boot partition, vfat EFI partition, ext4 root, GRUB for BIOS and at the removable
 * UEFI path) is captured with `img make`, put down with `img restore --identity NAME --script
 * FILE` on a disk of its size, on a 4 GiB disk (root grown) and on a 2 GiB one (root shrunk),
 * and through a session of the imaging server to two workstations, one named by the
 * administrator and one by the session's naming template, with a session script. Every copy is
 * booted headless in QEMU (TCG), with a fresh variable store under OVMF, to its `NAME login:`
 * prompt on the serial console, with no unit failed: the same-size and session copies under
 * SeaBIOS and OVMF, the grown one under OVMF and the shrunk one under SeaBIOS only (each boot
 * costs most of a minute).
 *
 * Every product step is the bin script with the arguments an administrator types. The copies'
 * identities (hostname, machine-ids, SSH host keys) are read offline from their roots and
 * compared with what the product reported (`img restore`'s result, `imgcast workstation
 * show`); the checks of what a copy's identity must be are in `assertIdentities`, the one place
 * they belong. The post-imaging script leaves the workstation's name in the root, checked
 * offline, and a unit that reports it on the console at boot with the state of ssh.service and
 * the failed units, which each boot waits for (see POST_IMAGING_SCRIPT for why).
 *
 * Time (TCG, a boot takes 30-125 s, two run side by side): with the reference disk cached the
 * file took 3.2 minutes on an otherwise idle 2-core machine (8 boots of 32-45 s), 7.7 with the
 * two cores shared with other tests (load 8-11, boots of 62-124 s). Building the disk first
 * (the first run on a machine, or after reference-disk.ts changed) adds 3.3 minutes.
 * Console logs of the boots are kept in LOGS_DIR when a boot fails.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { cp, mkdir, mkdtemp, open, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import type { Session, WorkstationDetail } from '../../src/api/schemas.ts';
import { netnsUnavailable, skipUnless } from '../helpers/env.ts';
import { describeExit, indent, secs, settle, startProc, tail, type Proc } from '../helpers/lab-process.ts';
import { NetLab } from '../helpers/netlab.ts';
import { readRootFile, readSystemIdentity, rootFit, type SystemIdentity } from './offline.ts';
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
  /** The workstation's name: its hostname, the one its login prompt must show. */
  hostname: string;
  /** The firmwares to boot it under (default both). */
  firmwares?: Firmware[];
  /** The identity the product says it applied: `img restore`'s result, or what the server lists. */
  reported: { machineId: string | null; sshHostKeys: Array<{ type: string; fingerprint: string }> };
}

/**
 * The post-imaging script every copy runs (given to `img restore --script` and to the session):
 * it leaves the workstation's name in the root, and a unit that reports on the console, once
 * multi-user.target is reached, that file, the state of ssh.service and the failed units.
 *
 * The report is how a boot's outcome is read: systemd stops writing its own status lines
 * (`Started …`, `[FAILED] …`) to the console once the serial getty starts, which it does after
 * at most 5 s of waiting for the other jobs (Type=idle), so a unit slower than that under load
 * is never seen there. A service's output forwarded by journald (journal+console) still is.
 */
const POST_IMAGING_SCRIPT = `#!/bin/sh
set -eu
cd "$IMGCAST_ROOT"
printf '%s\\n' "$IMGCAST_NAME" > etc/imgcast-post-imaging
mkdir -p usr/local/sbin etc/systemd/system/multi-user.target.wants
cat > usr/local/sbin/imgcast-boot-report <<'REPORT'
#!/bin/sh
echo "imgcast post-imaging: $(cat /etc/imgcast-post-imaging)"
failed=$(systemctl list-units --state=failed --plain --no-legend | cut -d' ' -f1 | tr '\\n' ' ')
echo "imgcast boot: ssh.service $(systemctl is-active ssh.service), failed units: [\${failed% }]"
REPORT
chmod 755 usr/local/sbin/imgcast-boot-report
cat > etc/systemd/system/imgcast-boot-report.service <<'UNIT'
[Unit]
Description=Report the post-imaging file and the boot on the console
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/imgcast-boot-report
StandardOutput=journal+console
[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/imgcast-boot-report.service etc/systemd/system/multi-user.target.wants/
`;
const POST_IMAGING_FILE = 'etc/imgcast-post-imaging';

let scriptFile: Promise<string> | undefined;
function postImagingScript(): Promise<string> {
  scriptFile ??= (async () => {
    const file = join(await workDir(), 'post-imaging.sh');
    await writeFile(file, POST_IMAGING_SCRIPT, { mode: 0o755 });
    return file;
  })();
  return scriptFile;
}

/** The report's lines (journald prefixes them with the time and `imgcast-boot-r[PID]: `). */
const postImagingLine = (name: string) => new RegExp(`imgcast post-imaging: ${name}$`, 'm');
const BOOT_REPORT = /imgcast boot: ssh\.service (\S+), failed units: \[([^\]]*)\]$/m;

interface Booted {
  copy: Copy;
  firmware: Firmware;
  result?: BootResult;
  error?: Error;
}

/**
 * Boots every copy under its firmwares, two QEMUs at a time (one per core), and fails with all
 * the failed boots at once, their console tails in the message and their logs kept in LOGS_DIR.
 * A boot counts once the console shows the copy's `NAME login:` and both lines of the boot
 * report (see POST_IMAGING_SCRIPT): it must say ssh.service is active and no unit failed.
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
          expect: [BOOT_REPORT, postImagingLine(job.copy.hostname)],
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
    const line = `${b.copy.label} under ${b.firmware}: ${b.result ? `"${b.result.hostname} login:" after ${b.result.seconds} s (loader ${m?.loader ?? '?'} s, kernel ${m?.kernel ?? '?'} s, systemd ${m?.systemd ?? '?'} s)` : 'FAILED'}`;
    t.diagnostic(line);
    bootTimes.push(line);
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
    if (r.missing.length) out.push(`${where}: the console never showed ${r.missing.join(', ')}`);
    const report = BOOT_REPORT.exec(r.log);
    if (report && report[1] !== 'active') out.push(`${where}: ssh.service is ${report[1]}, not active`);
    if (report?.[2]) out.push(`${where}: units failed: ${report[2]}`);
    return out;
  });
  if (problems.length) {
    await rm(LOGS_DIR, { recursive: true, force: true });
    await cp(logs, LOGS_DIR, { recursive: true });
    assert.fail(`${problems.join('\n\n')}\n\n(every console log of these boots is in ${LOGS_DIR})`);
  }
  return results;
}

/** Every boot's line, for the file's last diagnostic. */
const bootTimes: string[] = [];

/** Identities of every copy checked so far in this file: no two copies may share one. */
const seen = new Map<string, SystemIdentity>();

/**
 * What the copies' identities must be, read offline from their roots after imaging: each is its
 * workstation (hostname, the 127.0.1.1 line), with a machine-id and SSH host keys of the
 * reference's types that are its own (neither the reference's nor any other copy's of this
 * file), and they are the ones the product reported. sshd starts only with usable host keys:
 * the boot report's `ssh.service active` proves these are.
 */
async function assertIdentities(c: Captured, copies: Copy[]): Promise<void> {
  if (seen.size === 0) seen.set('the reference', c.refIdentity);
  for (const copy of copies) {
    const id = await readSystemIdentity(copy.disk);
    const what = (s: string) => `${copy.label}: ${s}`;
    assert.equal(id.hostname, copy.hostname, what('/etc/hostname'));
    assert.match(
      id.hostsLine,
      new RegExp(`^127\\.0\\.1\\.1\\s+${copy.hostname}(\\s|$)`),
      what('the 127.0.1.1 line of /etc/hosts'),
    );
    assert.match(id.machineId, /^[0-9a-f]{32}$/, what('/etc/machine-id'));
    assert.equal(id.machineId, copy.reported.machineId, what('/etc/machine-id against the reported one'));
    // The reference has none; one that appeared must be the machine's own id.
    if (id.dbusMachineId !== null && !id.dbusMachineId.startsWith('-> '))
      assert.equal(id.dbusMachineId, id.machineId, what('/var/lib/dbus/machine-id'));
    assert.deepEqual(
      id.hostKeys.map((k) => k.type),
      c.refIdentity.hostKeys.map((k) => k.type),
      what('the SSH host key types'),
    );
    const onDisk = id.hostKeys.map((k) => `${/^ssh_host_(\w+)_key$/.exec(k.file)?.[1]} ${k.fingerprint}`);
    const reported = copy.reported.sshHostKeys.map((k) => `${k.type} ${k.fingerprint}`);
    assert.deepEqual(
      onDisk.sort(),
      reported.sort(),
      what('the SSH host keys on disk against the reported ones'),
    );
    for (const [other, o] of seen) {
      assert.notEqual(id.machineId, o.machineId, what(`the machine-id is ${other}'s`));
      const theirs = new Set(o.hostKeys.map((k) => k.fingerprint));
      for (const k of id.hostKeys)
        assert.ok(!theirs.has(k.fingerprint), what(`${k.file} is ${other}'s (${k.fingerprint})`));
    }
    seen.set(copy.label, id);
  }
}

/** The file the post-imaging script wrote, read offline: the workstation's name. */
async function assertPostImaging(copies: Copy[]): Promise<void> {
  for (const copy of copies) {
    assert.equal(
      await readRootFile(copy.disk, POST_IMAGING_FILE),
      `${copy.hostname}\n`,
      `${copy.label}: /${POST_IMAGING_FILE}, written by the post-imaging script`,
    );
  }
}

/** What `img restore --json` says it did, as far as this file reads it. */
interface RestoreReport {
  identity: {
    name: string | null;
    machineId: string | null;
    sshHostKeys: Array<{ type: string; fingerprint: string }>;
  };
  scripts: Array<{ name: string; status: number | null; output: string }>;
}

const GiB = 1024 ** 3;

test(
  'img make of the reference Debian disk, img restore --identity --script to new disks of the same size, 4 GiB (root grown) and 2 GiB (root shrunk): each boots as itself to its login prompt, the same size under SeaBIOS and OVMF, 4 GiB under OVMF, 2 GiB under SeaBIOS, no unit failed',
  { timeout: 25 * 60_000 },
  async (t) => {
    if (skipUnless(t, await bootUnavailable())) return;
    const c = await capture(t);
    const script = await postImagingScript();
    const info = JSON.parse(await mustRun(IMG, ['info', c.image, '--json'])) as {
      disk: { smallestDiskBytes: number };
    };
    t.diagnostic(`img info: the image fits on ${info.disk.smallestDiskBytes} bytes or more`);
    assert.ok(
      info.disk.smallestDiskBytes <= 2 * GiB,
      `img info: the smallest disk is ${info.disk.smallestDiskBytes}`,
    );
    const plans: Array<{ label: string; hostname: string; bytes: number; firmwares: Firmware[] }> = [
      { label: 'restored', hostname: 'ws-restored', bytes: c.ref.diskBytes, firmwares: FIRMWARES },
      { label: 'grown-4g', hostname: 'ws-grown', bytes: 4 * GiB, firmwares: ['uefi'] },
      { label: 'shrunk-2g', hostname: 'ws-shrunk', bytes: 2 * GiB, firmwares: ['bios'] },
    ];
    const copies: Copy[] = [];
    const refRoot = c.ref.partitions.root;
    for (const p of plans) {
      const disk = await sparseDisk(join(await workDir(), `${p.label}.img`), p.bytes);
      const r = JSON.parse(
        await mustRun(IMG, [
          'restore',
          c.image,
          disk,
          '--identity',
          p.hostname,
          '--script',
          script,
          '--json',
        ]),
      ) as RestoreReport;
      assert.equal(r.identity.name, p.hostname, `${p.label}: the identity applied`);
      assert.deepEqual(
        r.scripts.map((s) => [s.name, s.status]),
        [['post-imaging.sh', 0]],
        `${p.label}: the post-imaging script: ${JSON.stringify(r.scripts)}`,
      );
      copies.push({
        label: p.label,
        disk,
        hostname: p.hostname,
        firmwares: p.firmwares,
        reported: r.identity,
      });
      const fit = await rootFit(disk, p.bytes);
      const end = fit.partition.start + fit.partition.size;
      t.diagnostic(
        `${p.label} (${p.bytes} bytes): root partition ${fit.partition.start}+${fit.partition.size}, ends ${fit.usableEnd - end} bytes before the backup GPT; ext4 of ${fit.filesystemBytes} bytes (the reference's root partition: ${refRoot.size})`,
      );
      if (p.bytes === c.ref.diskBytes) {
        assert.deepEqual(
          [fit.partition.start, fit.partition.size],
          [refRoot.start, refRoot.size],
          `${p.label}: the root partition`,
        );
      } else {
        // Grown or shrunk: the root fills the disk up to the backup GPT (less than 1 MiB of alignment).
        assert.ok(
          end <= fit.usableEnd && fit.usableEnd - end < 1024 ** 2,
          `${p.label}: the root partition ends at ${end}, the disk's usable end is ${fit.usableEnd}`,
        );
        if (p.bytes > c.ref.diskBytes)
          assert.ok(fit.partition.size > refRoot.size, `${p.label}: the root grew`);
        else assert.ok(fit.partition.size < refRoot.size, `${p.label}: the root shrank`);
      }
      // The filesystem was made at its partition's size (ext4 counts whole 4 KiB blocks).
      assert.ok(
        fit.filesystemBytes <= fit.partition.size && fit.partition.size - fit.filesystemBytes < 4096,
        `${p.label}: ext4 of ${fit.filesystemBytes} bytes in a partition of ${fit.partition.size}`,
      );
    }
    await assertIdentities(c, copies);
    await assertPostImaging(copies);
    await bootAll(t, copies);
    t.diagnostic(`timings: ${timings.join('; ')}`);
    for (const copy of copies) await rm(copy.disk);
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
  "a session of the imaging server images two workstations, lab1-01 (named by the administrator) and lab1-02 (by the session's template), with the reference Debian disk and a post-imaging script: each copy boots as itself to its login prompt under SeaBIOS and OVMF, no unit failed, with the SSH host keys the server lists",
  { timeout: 25 * 60_000 },
  async (t) => {
    if (skipUnless(t, (await bootUnavailable()) ?? netnsUnavailable())) return;
    const c = await capture(t);
    const dir = await mkdtemp(join(await workDir(), 'session-'));
    const L = new SessionLab(t, 2, dir);
    await L.startServer(c.images);
    const names = ['lab1-01', 'lab1-02'];
    // The first is known before it boots, as an inventory import makes it: registering keeps
    // its name. The second is not: the session's template names it, after the names taken.
    await L.admin(['workstation', 'add', names[0]!, L.mac(1)]);
    await L.admin<Session>([
      'mcast',
      'lab1',
      '-p',
      'reference.imgc',
      '-c',
      String(names.length),
      '--names',
      'lab1-{nn}',
      '--script',
      await postImagingScript(),
    ]);
    const disks = await Promise.all(
      names.map((name) => sparseDisk(join(dir, `${name}.img`), c.ref.diskBytes)),
    );
    const started = Date.now();
    const ws = names.map((name, i) =>
      L.start(i + 1, name, IMG, ['session', 'lab1', '--server', L.api, '--disk', disks[i]!, '--json', '-v']),
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
    const copies: Copy[] = [];
    for (const [i, name] of names.entries()) {
      // What an administrator reads to fill known_hosts before the lab is booted.
      const w = await L.admin<WorkstationDetail>(['workstation', 'show', name]);
      assert.equal(w.mac.toLowerCase(), L.mac(i + 1).toLowerCase(), `${name}: the workstation's MAC`);
      assert.ok(w.identity, `${name}: the server lists no identity`);
      assert.equal(w.identity.name, name, `${name}: the identity's name`);
      assert.equal(w.identity.session, 'lab1', `${name}: the identity's session`);
      copies.push({ label: name, disk: disks[i]!, hostname: name, reported: w.identity });
    }
    await assertIdentities(c, copies);
    await assertPostImaging(copies);
    await bootAll(t, copies);
    t.diagnostic(`timings: ${timings.join('; ')}`);
    t.diagnostic(`every boot of this file: ${bootTimes.join('; ')}`);
  },
);
