/**
 * Boots a disk-image file headless in QEMU and reads its serial console up to the login prompt:
 * under SeaBIOS (QEMU's default firmware) or under OVMF (UEFI) with a fresh variable store, as a
 * machine that never booted this disk before. No login, no network: what a test learns from the
 * boot is what the console shows (the hostname in `NAME login:`, failed units); what is on the
 * disk afterwards it reads offline (offline.ts).
 *
 * TCG, not KVM: the KVM on these machines is nested and hangs a stock guest kernel after GRUB.
 * A boot of the reference Debian takes 40-70 s this way on an idle core, more when other work
 * shares the two cores.
 */
import { spawn, spawnSync } from 'node:child_process';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hasCommand } from '../helpers/env.ts';

export type Firmware = 'bios' | 'uefi';

/** Debian's OVMF (package ovmf): the code read-only, the variable store copied for each boot. */
const OVMF_PAIRS = [
  { code: '/usr/share/OVMF/OVMF_CODE_4M.fd', vars: '/usr/share/OVMF/OVMF_VARS_4M.fd' },
  { code: '/usr/share/OVMF/OVMF_CODE.fd', vars: '/usr/share/OVMF/OVMF_VARS.fd' },
];

export function ovmf(): { code: string; vars: string } | undefined {
  return OVMF_PAIRS.find((p) => existsSync(p.code) && existsSync(p.vars));
}

/** Why a disk cannot be booted here, or undefined. */
export function qemuUnavailable(): string | undefined {
  for (const c of ['qemu-system-x86_64', 'qemu-img']) {
    if (!hasCommand(c)) return `needs ${c} (apt-get install qemu-system-x86 qemu-utils)`;
  }
  if (!ovmf()) return 'needs OVMF for the UEFI boots (apt-get install ovmf)';
  return undefined;
}

export interface BootOptions {
  disk: string;
  firmware: Firmware;
  /**
   * Writes of the guest go to a temporary overlay, so the disk stays as the test made it
   * (default true). False lets the boot change it, as a real first boot does.
   */
  snapshot?: boolean;
  /** Gives up this long after QEMU started (default 8 minutes: TCG on shared cores is slow). */
  timeoutMs?: number;
  /** Keeps reading this long after the prompt, for units that fail late (default 3 s). */
  settleMs?: number;
  /** Console lines that must also have appeared (after ANSI codes are removed) before it counts. */
  expect?: RegExp[];
  /** Where to keep the whole console output (raw, with escape codes), for diagnosis. */
  logFile?: string;
  /** Aborting kills QEMU at once (pass the test's t.signal). */
  signal?: AbortSignal;
  memoryMiB?: number;
}

export interface BootResult {
  firmware: Firmware;
  /** The name in the `NAME login:` prompt. */
  hostname: string;
  /** Seconds from QEMU's start to the login prompt. */
  seconds: number;
  /** When each stage was first seen, in seconds from QEMU's start (boot loader, kernel, systemd, login). */
  milestones: Record<string, number>;
  /** The console output, escape codes and carriage returns removed. */
  log: string;
  /**
   * Console lines of units that failed: `[FAILED] …` and `Failed to start …`. Only those systemd
   * wrote before the serial getty started: it writes no status line to the console after that.
   */
  failedUnits: string[];
  /** The `expect` lines that never showed (only when a unit failed: else the boot times out). */
  missing: string[];
}

/** A boot that did not reach the login prompt; carries the console output. */
export class BootError extends Error {
  declare readonly log: string;
  declare readonly logFile: string | undefined;
  constructor(message: string, log: string, logFile: string | undefined) {
    super(
      `${message}\n--- console (last 60 lines)${logFile ? `; all of it in ${logFile}` : ''}:\n${lastLines(log, 60)}`,
    );
    this.name = 'BootError';
    // Not enumerable: a test runner prints an error's own fields, and the log is ~50 kB.
    Object.defineProperty(this, 'log', { value: log, enumerable: false });
    Object.defineProperty(this, 'logFile', { value: logFile, enumerable: false });
  }
}

const MILESTONES: Array<[string, RegExp]> = [
  ['loader', /GNU GRUB|Welcome to GRUB|Booting `/],
  ['kernel', /Linux version \d/],
  ['systemd', /systemd\[1\]: |Welcome to .*Debian/],
];

/** The getty's prompt: `NAME login: `. */
const LOGIN = /^([A-Za-z0-9][A-Za-z0-9.-]*) login: /m;

/** Stops at once: what a console shows when a boot went wrong and waiting cannot help. */
const DEAD_ENDS: Array<[string, RegExp]> = [
  ['the firmware found nothing to boot', /No bootable device|No bootable option or device was found/],
  ['OVMF dropped to its UEFI shell', /^Shell> /m],
  ['GRUB dropped to its prompt', /^grub(?: rescue)?> /m],
  ['the kernel panicked', /Kernel panic - not syncing/],
  ['the initramfs gave up on the root', /ALERT! .* does not exist|Gave up waiting for root/],
  ['systemd went to emergency mode', /You are in emergency mode|Give root password for maintenance/],
];

// Terminal escapes: CSI sequences (colours, cursor moves, `ESC[=3h`) and two-byte ones.
// eslint-disable-next-line no-control-regex -- the escape character is what it looks for
const ESCAPES = /\x1b\[[0-9;?=]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1b[A-Za-z=>]/g;

/** Removes terminal escape sequences and carriage returns, so lines read as a person sees them. */
export function plainConsole(raw: string): string {
  return raw.replace(ESCAPES, '').replace(/\r/g, '');
}

export function failedUnitLines(log: string): string[] {
  return log
    .split('\n')
    .filter((l) => /\[FAILED\]|Failed to start /.test(l))
    .map((l) => l.trim());
}

/**
 * Boots `disk` and resolves once the console shows `NAME login:` (and every `expect` line),
 * `settleMs` later. Rejects with a BootError holding the console output when the boot ends,
 * reaches a dead end or times out. QEMU is killed on every path out.
 */
export async function bootToLogin(o: BootOptions): Promise<BootResult> {
  const timeoutMs = o.timeoutMs ?? 8 * 60_000;
  const settleMs = o.settleMs ?? 3000;
  const scratch = await mkdtemp(join(tmpdir(), `imgcast-boot-${o.firmware}-`));
  const args = [
    '-accel',
    'tcg',
    '-m',
    String(o.memoryMiB ?? 1024),
    '-display',
    'none',
    '-monitor',
    'none',
    '-serial',
    'stdio',
    '-nic',
    'none',
    // A guest that resets (a panic with panic=N, a triple fault) ends QEMU instead of looping.
    '-no-reboot',
    '-drive',
    `file=${o.disk},format=raw,if=virtio,cache=unsafe${o.snapshot === false ? '' : ',snapshot=on'}`,
  ];
  const firmwareLog = join(scratch, 'firmware.log');
  args.push(...(await firmwareArgs(o.firmware, scratch)));
  // -snapshot's overlay goes to TMPDIR: keep it in this boot's scratch folder.
  const child = spawn('qemu-system-x86_64', args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, TMPDIR: scratch },
  });
  const started = Date.now();
  let raw = '';
  let plain = '';
  let stderr = '';
  const milestones: Record<string, number> = {};
  const kill = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  process.once('exit', kill);
  o.signal?.addEventListener('abort', kill, { once: true });
  const exited = new Promise<void>((res) => {
    child.once('close', () => res());
    child.once('error', () => res());
  });
  const timers: NodeJS.Timeout[] = [];
  let cancelled: (() => void) | undefined;

  try {
    return await new Promise<BootResult>((resolve, reject) => {
      let loginAt: number | undefined;
      let settling = false;
      const fail = (why: string) =>
        reject(
          new BootError(
            `${o.firmware} boot of ${o.disk}: ${why} after ${secs(Date.now() - started)}` +
              (stderr.trim() ? `\nqemu: ${stderr.trim()}` : ''),
            plain,
            o.logFile,
          ),
        );
      const seen = new Set<RegExp>();
      let failed = false;
      let carry = '';
      const missing = () => (o.expect ?? []).filter((re) => !seen.has(re)).map(String);
      timers.push(
        setTimeout(
          () => fail(`no login prompt${missing().length ? ` (or no ${missing().join(', ')})` : ''}`),
          timeoutMs,
        ),
      );
      if (o.firmware === 'bios') {
        timers.push(
          setInterval(() => {
            readFile(firmwareLog, 'utf8').then(
              (text) =>
                /No bootable device/.test(text) &&
                fail(`SeaBIOS found no bootable device; its messages end:\n${lastLines(text, 8)}\n`),
              () => {},
            );
          }, 1000),
        );
      }
      const done = () => {
        const hostname = LOGIN.exec(plain)?.[1] ?? '';
        resolve({
          firmware: o.firmware,
          hostname,
          seconds: Math.round((loginAt! - started) / 100) / 10,
          milestones,
          log: plain,
          failedUnits: failedUnitLines(plain),
          missing: missing(),
        });
      };
      cancelled = () => fail('the test was cancelled');
      o.signal?.addEventListener('abort', cancelled, { once: true });
      child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-10_000)));
      child.stdout.setEncoding('utf8').on('data', (d: string) => {
        raw += d;
        // An escape sequence cut in two by the pipe waits for its end before it is removed.
        const text = carry + d;
        const esc = text.lastIndexOf('\x1b');
        const cut =
          esc >= 0 && esc > text.length - 16 && !/[A-Za-z]/.test(text.slice(esc + 2)) ? esc : text.length;
        carry = text.slice(cut);
        // Only what came in (with the line before it) is searched: the log grows to ~100 kB.
        const from = Math.max(0, plain.lastIndexOf('\n', plain.length - 2) + 1);
        plain += plainConsole(text.slice(0, cut));
        const fresh = plain.slice(from);
        const at = Math.round((Date.now() - started) / 100) / 10;
        for (const [name, re] of MILESTONES)
          if (milestones[name] === undefined && re.test(fresh)) milestones[name] = at;
        for (const re of o.expect ?? []) if (re.test(fresh)) seen.add(re);
        const deadEnd = DEAD_ENDS.find(([, re]) => re.test(fresh));
        if (deadEnd) return fail(deadEnd[0]);
        if (loginAt === undefined && LOGIN.test(fresh)) {
          loginAt = Date.now();
          milestones.login = at;
        }
        if (/\[FAILED\]|Failed to start /.test(fresh)) failed = true;
        // A failed unit can keep an expected line from ever showing: the boot is over then.
        if (loginAt !== undefined && !settling && (missing().length === 0 || failed)) {
          settling = true;
          timers.push(setTimeout(done, settleMs));
        }
      });
      child.once('error', (err) => fail(`qemu-system-x86_64 could not run: ${err.message}`));
      child.once('close', (code, signal) => {
        if (!settling) fail(`QEMU ended (${signal ?? `exit ${code}`}) before the login prompt`);
      });
    });
  } finally {
    for (const t of timers) clearTimeout(t);
    kill();
    await exited;
    process.off('exit', kill);
    o.signal?.removeEventListener('abort', kill);
    if (cancelled) o.signal?.removeEventListener('abort', cancelled);
    if (o.logFile) await writeFile(o.logFile, raw).catch(() => {});
    await rm(scratch, { recursive: true, force: true });
  }
}

/**
 * QEMU arguments of a firmware: OVMF with a fresh copy of its variable store in `scratch` (a
 * machine that never booted before), or SeaBIOS with its debug port going to
 * `scratch/firmware.log` (SeaBIOS writes "No bootable device." there, not to the serial line).
 */
export async function firmwareArgs(firmware: Firmware, scratch: string): Promise<string[]> {
  if (firmware === 'uefi') {
    const fw = ovmf();
    if (!fw) throw new Error('OVMF is not installed (apt-get install ovmf)');
    const vars = join(scratch, 'OVMF_VARS.fd');
    await copyFile(fw.vars, vars);
    return [
      '-drive',
      `if=pflash,format=raw,unit=0,readonly=on,file=${fw.code}`,
      '-drive',
      `if=pflash,format=raw,unit=1,file=${vars}`,
    ];
  }
  return [
    '-chardev',
    `file,id=fwlog,path=${join(scratch, 'firmware.log')}`,
    '-device',
    'isa-debugcon,iobase=0x402,chardev=fwlog',
  ];
}

/** QEMU's own version line, for reports. */
export function qemuVersion(): string {
  const r = spawnSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8' });
  return r.stdout.split('\n')[0]?.trim() ?? 'unknown';
}

function lastLines(text: string, n: number): string {
  return text.trimEnd().split('\n').slice(-n).join('\n');
}

const secs = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
