/**
 * A LAN of QEMU workstations for network-boot tests: one network namespace `iclan<4 hex>` holding
 * a bridge `br0` with 198.18.<subnet>.1/24 (the server's side: it runs inside the namespace with
 * `lan.exec`) and a tap device per VM on that bridge. QEMU runs inside the namespace too, so
 * nothing of the LAN touches the host's network. Multicast is routed on the bridge and IGMP
 * snooping is off, so every group reaches every port.
 *
 * Every way out removes the namespace (and with it the bridge and the taps) and kills what ran
 * in it: destroy() (call it from t.after), a process 'exit' hook, and for a run that was killed,
 * the next Lan.create(): a marker file /run/imgcast-lan/<id> holds the creating process id, and
 * LANs whose creator is dead are removed.
 *
 * VMs (startVm): q35, TCG (the KVM here is nested and unreliable, see qemu.ts), SeaBIOS or OVMF
 * with a fresh variable store (qemu.ts's firmwareArgs), virtio-net on the VM's tap, an optional
 * virtio disk, network-first or disk-first boot order (bootindex), or a direct -kernel/-initrd/
 * -append boot; the serial console goes to a log file and is searched with waitFor().
 */
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
  createWriteStream,
} from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { hasCommand, isRoot } from '../helpers/env.ts';
import { firmwareArgs, plainConsole, qemuUnavailable, type Firmware } from './qemu.ts';

const MARKER_DIR = '/run/imgcast-lan';
const NS_RE = /^iclan[0-9a-f]{4}$/;

/** Why a LAN of VMs cannot run here, or undefined. */
export function lanUnavailable(): string | undefined {
  if (!isRoot()) return 'needs root (network namespaces, tap devices)';
  if (!hasCommand('ip')) return 'needs iproute2 (ip)';
  if (!existsSync('/dev/net/tun')) return 'needs /dev/net/tun for tap devices';
  return qemuUnavailable();
}

export interface VmOptions {
  /** How logs and errors name it (ws1, ...). */
  name: string;
  firmware: Firmware;
  /** Default: 52:54:00 and three random bytes. */
  mac?: string;
  /** A disk-image file, attached as a virtio disk (format from its extension: .qcow2 or raw). */
  disk?: string;
  /** An ISO in a CD-ROM drive that boots first (the imaging environment's boot medium). */
  cdrom?: string;
  /** Boot order of the firmware (default 'network' when there is no -kernel). */
  boot?: 'network' | 'disk';
  /** Direct kernel boot: the firmware's own boot order is then unused. */
  kernel?: string;
  initrd?: string;
  append?: string;
  memoryMiB?: number;
  /** The serial console, raw, as it comes. */
  logFile: string;
  /** A guest reboot ends QEMU (default true); false lets it restart, as a real machine does. */
  noReboot?: boolean;
}

export interface VmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Seconds from QEMU's start. */
  seconds: number;
}

export interface Vm {
  name: string;
  mac: string;
  tap: string;
  child: ChildProcess;
  startedAt: number;
  /** Resolves when QEMU ends (a powered-off guest ends it with code 0). */
  exit: Promise<VmExit>;
  /** The console so far, escape codes and carriage returns removed. */
  console(): string;
  /**
   * Resolves with the match and the seconds from QEMU's start when the console shows `re`
   * (already shown counts); rejects when QEMU ends first or after `timeoutMs`.
   */
  waitFor(re: RegExp, timeoutMs: number): Promise<{ match: RegExpExecArray; seconds: number }>;
  kill(): void;
}

export class Lan {
  readonly ns: string;
  readonly bridge = 'br0';
  /** The third octet: 198.18.<subnet>.0/24. */
  readonly subnet: number;
  #children = new Set<ChildProcess>();
  #taps = 0;
  #destroyed = false;
  #scratch: string[] = [];

  private constructor(ns: string, subnet: number) {
    this.ns = ns;
    this.subnet = subnet;
  }

  /** Host `i` of the LAN: address(1) is the bridge, where the server listens. */
  address(i: number): string {
    return `198.18.${this.subnet}.${i}`;
  }

  static create(o: { subnet?: number } = {}): Lan {
    removeStaleLans();
    const subnet = o.subnet ?? 1;
    let ns = '';
    do ns = `iclan${randomBytes(2).toString('hex')}`;
    while (listNamespaces().includes(ns));
    mkdirSync(MARKER_DIR, { recursive: true });
    writeFileSync(join(MARKER_DIR, ns), `${process.pid}\n`);
    const lan = new Lan(ns, subnet);
    live.add(lan);
    installExitHook();
    try {
      ip(['netns', 'add', ns]);
      const n = ['-n', ns];
      ip([...n, 'link', 'set', 'lo', 'up']);
      ip([
        ...n,
        'link',
        'add',
        'br0',
        'type',
        'bridge',
        'mcast_snooping',
        '0',
        'stp_state',
        '0',
        'forward_delay',
        '0',
      ]);
      ip([...n, 'addr', 'add', `${lan.address(1)}/24`, 'dev', 'br0']);
      ip([...n, 'link', 'set', 'br0', 'up']);
      ip([...n, 'route', 'add', '224.0.0.0/4', 'dev', 'br0']);
    } catch (err) {
      lan.destroy();
      throw err;
    }
    return lan;
  }

  /** Starts `cmd` inside the namespace; it is killed by destroy(). */
  exec(cmd: string, args: string[], opts: SpawnOptions = {}): ChildProcess {
    const child = spawn('ip', ['netns', 'exec', this.ns, cmd, ...args], { stdio: 'pipe', ...opts });
    this.#children.add(child);
    child.on('close', () => this.#children.delete(child));
    return child;
  }

  /** A new tap device on the bridge, for one VM. */
  addTap(): string {
    const tap = `tap${this.#taps++}`;
    const n = ['-n', this.ns];
    ip([...n, 'tuntap', 'add', 'dev', tap, 'mode', 'tap']);
    ip([...n, 'link', 'set', tap, 'master', 'br0']);
    ip([...n, 'link', 'set', tap, 'up']);
    return tap;
  }

  /**
   * A DHCP server on the bridge handing out 198.18.<subnet>.100-199 (dnsmasq, as a plain child
   * process with no configuration file and no DNS), for tests that have no other one.
   */
  async startDhcp(): Promise<ChildProcess> {
    const dir = await mkdtemp(join(tmpdir(), 'imgcast-lan-dhcp-'));
    this.#scratch.push(dir);
    const child = this.exec('dnsmasq', [
      '--keep-in-foreground',
      '--conf-file=/dev/null',
      '--port=0',
      '--user=root',
      '--interface=br0',
      '--bind-interfaces',
      '--pid-file',
      `--dhcp-leasefile=${join(dir, 'leases')}`,
      `--dhcp-range=${this.address(100)},${this.address(199)},255.255.255.0,1h`,
      '--log-facility=-',
      // Offers at once: by default dnsmasq first pings the address it will offer, for seconds.
      '--no-ping',
    ]);
    return child;
  }

  /** Boots a VM on its own tap; QEMU is killed by vm.kill() or destroy(). */
  async startVm(o: VmOptions): Promise<Vm> {
    const tap = this.addTap();
    const mac = o.mac ?? `52:54:00:${[0, 0, 0].map(() => randomBytes(1).toString('hex')).join(':')}`;
    const scratch = await mkdtemp(join(tmpdir(), `imgcast-vm-${o.name}-`));
    this.#scratch.push(scratch);
    const network = o.kernel === undefined && (o.boot ?? 'network') === 'network';
    const args = [
      '-machine',
      'q35',
      '-accel',
      'tcg',
      '-m',
      String(o.memoryMiB ?? 512),
      '-display',
      'none',
      '-monitor',
      'none',
      '-serial',
      'stdio',
      ...(o.noReboot === false ? [] : ['-no-reboot']),
      ...(await firmwareArgs(o.firmware, scratch)),
      '-netdev',
      `tap,id=n0,ifname=${tap},script=no,downscript=no`,
      '-device',
      `virtio-net-pci,netdev=n0,mac=${mac}${o.kernel === undefined ? `,bootindex=${network ? 1 : 2}` : ''}`,
    ];
    if (o.disk) {
      const format = o.disk.endsWith('.qcow2') ? 'qcow2' : 'raw';
      args.push(
        '-drive',
        `file=${o.disk},format=${format},if=none,id=d0,cache=unsafe`,
        '-device',
        `virtio-blk-pci,drive=d0${o.kernel === undefined ? `,bootindex=${network ? 2 : 1}` : ''}`,
      );
    }
    if (o.cdrom) {
      args.push(
        '-drive',
        `file=${o.cdrom},format=raw,media=cdrom,if=none,id=cd0,readonly=on`,
        '-device',
        'ide-cd,drive=cd0,bootindex=0',
      );
    }
    if (o.kernel) args.push('-kernel', o.kernel);
    if (o.initrd) args.push('-initrd', o.initrd);
    if (o.append) args.push('-append', o.append);
    // A firmware that finds nothing to boot tries again after a second instead of stopping.
    if (o.kernel === undefined) args.push('-boot', 'reboot-timeout=1000');
    // Real workstations have CPUs of their own; here every guest (TCG: a core's worth of work
    // each) shares the host's few cores with the server, so they run below it, or a lab of
    // guests starves the server's sender of the CPU it would have on its own machine.
    const child = this.exec('nice', ['-n', '19', 'qemu-system-x86_64', ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const startedAt = Date.now();
    const log = createWriteStream(o.logFile);
    let plain = '';
    let stderr = '';
    const waiters = new Set<() => void>();
    child.stdout!.on('data', (d: Buffer) => {
      log.write(d);
      plain += plainConsole(d.toString('utf8'));
      for (const w of waiters) w();
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-10_000)));
    const seconds = () => Math.round((Date.now() - startedAt) / 100) / 10;
    let exited: VmExit | undefined;
    const exit = new Promise<VmExit>((resolve) => {
      child.on('close', (code, signal) => {
        exited = { code, signal, seconds: seconds() };
        log.end();
        resolve(exited);
        for (const w of waiters) w();
      });
    });
    const name = o.name;
    return {
      name,
      mac,
      tap,
      child,
      startedAt,
      exit,
      console: () => plain,
      waitFor: (re, timeoutMs) =>
        new Promise((resolve, reject) => {
          const check = () => {
            const m = re.exec(plain);
            if (m) return finish(() => resolve({ match: m, seconds: seconds() }));
            if (exited)
              return finish(() =>
                reject(
                  new Error(
                    `${name}: QEMU ended (${exited!.signal ?? `exit ${exited!.code}`}) after ${exited!.seconds} s without ${re}` +
                      `${stderr.trim() ? `\nqemu: ${stderr.trim()}` : ''}\n--- console (last 40 lines, all in ${o.logFile}):\n${lastLines(plain, 40)}`,
                  ),
                ),
              );
          };
          const timer = setTimeout(
            () =>
              finish(() =>
                reject(
                  new Error(
                    `${name}: no ${re} after ${timeoutMs / 1000} s\n--- console (last 40 lines, all in ${o.logFile}):\n${lastLines(plain, 40)}`,
                  ),
                ),
              ),
            timeoutMs,
          );
          const finish = (f: () => void) => {
            clearTimeout(timer);
            waiters.delete(check);
            f();
          };
          waiters.add(check);
          check();
        }),
      kill: () => {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      },
    };
  }

  /** Kills what runs in the LAN and removes it; safe to call twice, synchronous (exit hooks). */
  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    live.delete(this);
    for (const c of this.#children) {
      if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    }
    destroyNamespace(this.ns);
    for (const d of this.#scratch) rmSync(d, { recursive: true, force: true });
  }

  /** destroy(), then waits a moment for killed children to be reaped. */
  async close(): Promise<void> {
    const children = [...this.#children];
    this.destroy();
    await Promise.all(
      children.map(
        (c) =>
          new Promise<void>((r) => {
            if (c.exitCode !== null || c.signalCode !== null) return r();
            c.once('close', () => r());
            setTimeout(r, 5000).unref();
          }),
      ),
    );
    for (const d of this.#scratch) await rm(d, { recursive: true, force: true });
  }
}

const live = new Set<Lan>();
let hooked = false;
function installExitHook(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', () => {
    for (const lan of live) lan.destroy();
  });
}

/** Removes LANs whose creating process is gone (a run that was killed). */
export function removeStaleLans(): string[] {
  const names = new Set(listNamespaces().filter((n) => NS_RE.test(n)));
  try {
    for (const f of readdirSync(MARKER_DIR)) if (NS_RE.test(f)) names.add(f);
  } catch {
    // no marker folder yet
  }
  const removed: string[] = [];
  for (const ns of names) {
    let pid = NaN;
    try {
      pid = Number(readFileSync(join(MARKER_DIR, ns), 'utf8').trim());
    } catch {
      // no marker: its creator is unknown, so it is stale
    }
    if (Number.isInteger(pid) && pid !== process.pid && alive(pid)) continue;
    if (pid === process.pid && [...live].some((l) => l.ns === ns)) continue;
    destroyNamespace(ns);
    removed.push(ns);
  }
  return removed;
}

function destroyNamespace(ns: string): void {
  if (listNamespaces().includes(ns)) {
    // What still runs inside (QEMU, a server) first, so the namespace goes at once.
    const pids = spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).stdout ?? '';
    for (const p of pids.split(/\s+/).filter(Boolean)) {
      try {
        process.kill(Number(p), 'SIGKILL');
      } catch {
        // already gone
      }
    }
    spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
  }
  rmSync(join(MARKER_DIR, ns), { force: true });
}

function listNamespaces(): string[] {
  const r = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  return (r.stdout ?? '')
    .split('\n')
    .map((l) => l.split(' ')[0]!)
    .filter(Boolean);
}

function ip(args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')} failed: ${(r.stderr || r.stdout).trim()}`);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function lastLines(text: string, n: number): string {
  return text.trimEnd().split('\n').slice(-n).join('\n');
}
