/**
 * `imgcast server --pxe`: answers network boot requests with dnsmasq (a well-kept DHCP and
 * TFTP implementation) run as a supervised child with a configuration generated here, in a
 * private temporary directory removed on every way out.
 *
 * Proxy mode (the default) hands out no addresses: beside the site's DHCP server, dnsmasq only
 * adds the boot offer to PXE clients. Firmware that is not iPXE gets iPXE by TFTP (Debian's
 * `ipxe`: undionly.kpxe for BIOS, snponly.efi for x86-64 UEFI); iPXE (the NIC's own or the one
 * just loaded, which says so in its user class) gets a two-line script that chains to the
 * server's /boot/boot.ipxe. DHCP mode hands out addresses from a range, for an isolated lab.
 *
 * dnsmasq that dies is started again after a growing pause; its log goes to the server's.
 *
 * A server killed outright (SIGKILL, OOM) must not leave dnsmasq holding ports 67/69 and
 * answering boots for a server that is gone. Two layers see to it:
 * - a watchdog per dnsmasq: a tiny `sh` whose stdin is a pipe from the server, reading nothing;
 *   the kernel closes the pipe however the server ends, and the watchdog then stops that dnsmasq
 *   (only if it is still that process: pid and start time) and removes the temporary directory
 *   and the state record. It runs in a session of its own, so a signal to the server's process
 *   group (Ctrl-C) does not take it too. (prctl PR_SET_PDEATHSIG would need native code, and
 *   dnsmasq's switch to the nobody user clears it anyway.)
 * - a state record per server in /run/imgcast/pxe (the server's and dnsmasq's pid and start
 *   time, and the directory), removed on a clean stop; the next `--pxe` start, before it checks
 *   the ports, stops the dnsmasq of every record whose server is gone and removes what it left,
 *   for when the watchdog was killed too. Records of live servers (another namespace) are left.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { chmod, mkdir, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { networkInterfaces, tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { ownedTempDir, runAlive, runStateDir, runTag, tagOf, type RunTag } from '../disk/owner.ts';
import { ImgcastError } from '../errors.ts';

export type PxeMode = 'proxy' | 'dhcp';

export interface PxeOptions {
  mode: PxeMode;
  /** The interface to answer on; default: the only one with an IPv4 address besides loopback. */
  interface?: string;
  /** DHCP mode: the addresses to hand out. */
  range?: { start: string; end: string };
  /** The API's HTTP port (boot.ipxe and the environment are served there). */
  httpPort: number;
  log: { info: (o: object, m: string) => void; warn: (o: object, m: string) => void };
  /** The dnsmasq binary (default: dnsmasq on PATH, else /usr/sbin/dnsmasq). */
  dnsmasq?: string;
  /** DHCP mode: the radvd binary (default: radvd on PATH, else /usr/sbin/radvd; none: no advertisements). */
  radvd?: string;
  /** Where Debian's ipxe package keeps its images. */
  ipxeDir?: string;
  /** Where the record of each server's dnsmasq is kept (default /run/imgcast/pxe). */
  stateDir?: string;
  /**
   * DHCP mode: the lease file, kept across restarts of the server (default: in the run's
   * temporary folder, forgotten when it stops).
   */
  leaseFile?: string;
}

export interface PxeConfigInput {
  mode: PxeMode;
  interface: string;
  /** The interface's IPv4 address: where iPXE is told to fetch from. */
  address: string;
  /** Its netmask, dotted. */
  netmask: string;
  range?: { start: string; end: string };
  httpPort: number;
  tftpRoot: string;
  pidFile: string;
  leaseFile: string;
  /** The TFTP file name of the UEFI iPXE. */
  efiFile: string;
}

export class PxeError extends ImgcastError {}

/** Kernel arguments an administrator may add to the environment's: plain words, nothing iPXE or a shell reads. */
export const KERNEL_ARGS = /^[A-Za-z0-9._,:=/+-]+(?: [A-Za-z0-9._,:=/+-]+)*$/;

/** The file dnsmasq serves iPXE clients over TFTP: it chains to the server's entry script. */
export const CHAIN_FILE = 'imgcast.ipxe';

export function chainScript(address: string, httpPort: number): string {
  return `#!ipxe\nchain http://${address}:${httpPort}/boot/boot.ipxe\n`;
}

function toInt(ip: string): number {
  return ip.split('.').reduce((n, b) => n * 256 + Number(b), 0);
}

function toDotted(n: number): string {
  return [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join('.');
}

/** The network address of `address` under `netmask`. */
export function networkOf(address: string, netmask: string): string {
  const a = toInt(address);
  const m = toInt(netmask);
  // Bitwise on 32-bit unsigned values: >>> 0 keeps them unsigned.
  return toDotted((a & m) >>> 0);
}

/**
 * dnsmasq's configuration for this server (pure: the tests read it line by line).
 *
 * No IPv6 router advertisement from dnsmasq, although iPXE waits about 13 s for one: its
 * autoconfiguration (ifconf) runs DHCPv4 and IPv6 router solicitation side by side and finishes
 * only when both have, and with nothing answering on the segment the solicitations time out.
 * An RA with no prefix, no M/O flags and router lifetime 0 ends that wait at once (measured in
 * test/boot/netboot.test.ts's VM with a throwaway sender: power-on to the boot.ipxe request
 * 18.5 s -> 5.3 s, to QEMU's exit 21.8 s -> 8.6 s). dnsmasq cannot send such an RA: `enable-ra`
 * advertises only prefixes built from a dhcp-range and the interface's own global addresses
 * (with only a link-local address it answers solicitations with nothing, checked with 2.90),
 * and every RA mode then either hands out addresses (ra-only, slaac, ra-stateless set the A
 * bit) or sends iPXE into DHCPv6 (M/O bits), a wait of its own. So in DHCP mode (an isolated lab
 * network the server answers for) radvd sends it (radvdConfig). Beside a site's network (proxy
 * mode) an RA of ours would be wrong: iPXE takes the first RA it gets, so at a site with IPv6 it
 * could lose the site's real configuration; a site with IPv6 has its own routers answering.
 */
export function pxeConfig(c: PxeConfigInput): string {
  const lines = [
    '# generated by imgcast server --pxe; removed when it stops',
    // DHCP and TFTP only: no DNS.
    'port=0',
    `interface=${c.interface}`,
    'bind-interfaces',
    `pid-file=${c.pidFile}`,
    `dhcp-leasefile=${c.leaseFile}`,
    'log-facility=-',
    'log-dhcp',
    'user=nobody',
    'group=nogroup',
    'enable-tftp',
    `tftp-root=${c.tftpRoot}`,
    // iPXE says what it is in its user class (and by sending its own option 175).
    'dhcp-userclass=set:ipxe,iPXE',
    'dhcp-match=set:ipxe,175',
  ];
  if (c.mode === 'proxy') {
    lines.push(
      `dhcp-range=${networkOf(c.address, c.netmask)},proxy,${c.netmask}`,
      // One entry per client type: the firmware boots it without a menu.
      'pxe-service=tag:!ipxe,x86PC,"imgcast: loading iPXE",undionly.kpxe',
      `pxe-service=tag:!ipxe,BC_EFI,"imgcast: loading iPXE",${c.efiFile}`,
      `pxe-service=tag:!ipxe,x86-64_EFI,"imgcast: loading iPXE",${c.efiFile}`,
      `pxe-service=tag:ipxe,x86PC,"imgcast",${CHAIN_FILE}`,
      `pxe-service=tag:ipxe,BC_EFI,"imgcast",${CHAIN_FILE}`,
      `pxe-service=tag:ipxe,x86-64_EFI,"imgcast",${CHAIN_FILE}`,
    );
  } else {
    if (!c.range) throw new PxeError('E_PXE_RANGE', '--pxe-mode dhcp needs --pxe-range START,END');
    lines.push(
      `dhcp-range=${c.range.start},${c.range.end},${c.netmask},1h`,
      // The leases outlive the server (the data folder keeps them), so the ping dnsmasq sends
      // before each offer, to find an address someone took without a lease, is left out: it
      // held every workstation of an isolated lab network back by about 6 s.
      'no-ping',
      'dhcp-match=set:efi64,option:client-arch,7',
      'dhcp-match=set:efi64,option:client-arch,9',
      // Mutually exclusive tags: whichever order dnsmasq weighs them in, one line applies.
      `dhcp-boot=tag:ipxe,http://${c.address}:${c.httpPort}/boot/boot.ipxe`,
      `dhcp-boot=tag:!ipxe,tag:efi64,${c.efiFile}`,
      'dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe',
    );
  }
  return `${lines.join('\n')}\n`;
}

/** The interface network boots are answered on, with its IPv4 address and netmask. */
export function pickInterface(name?: string): { name: string; address: string; netmask: string } {
  const all = networkInterfaces();
  const v4 = (n: string) => (all[n] ?? []).find((a) => a.family === 'IPv4' && !a.internal);
  if (name !== undefined) {
    const a = v4(name);
    if (!a) {
      throw new PxeError(
        'E_PXE_INTERFACE',
        all[name]
          ? `the interface ${name} has no IPv4 address to answer network boots on`
          : `no interface ${name} on this machine (${Object.keys(all).join(', ')})`,
        { interface: name },
      );
    }
    return { name, address: a.address, netmask: a.netmask };
  }
  const found = Object.keys(all).filter((n) => v4(n));
  if (found.length !== 1) {
    throw new PxeError(
      'E_PXE_INTERFACE',
      found.length === 0
        ? 'no interface with an IPv4 address to answer network boots on'
        : `several interfaces could answer network boots (${found.join(', ')}): give --pxe-interface`,
      { interfaces: found },
    );
  }
  const a = v4(found[0]!)!;
  return { name: found[0]!, address: a.address, netmask: a.netmask };
}

/** `given` if it exists, else `name` on PATH or in the sbin folders (a service's usual place). */
function findProgram(name: string, given?: string): string | undefined {
  const candidates = given
    ? [given]
    : [
        ...(process.env.PATH ?? '').split(':').map((d) => join(d, name)),
        `/usr/sbin/${name}`,
        `/sbin/${name}`,
      ];
  return candidates.find((p) => p && existsSync(p));
}

function findDnsmasq(given?: string): string {
  const found = findProgram('dnsmasq', given);
  if (!found) {
    throw new PxeError(
      'E_PXE_NO_DNSMASQ',
      'network boot needs dnsmasq, which is not installed (Debian: apt-get install dnsmasq-base)',
    );
  }
  return found;
}

/** Why dnsmasq could not start, as a coded error. */
function startFailure(text: string, code: number | null): PxeError {
  const said = text.trim().split('\n').slice(-3).join('; ') || `it exited with code ${code}`;
  if (/address already in use/i.test(text)) {
    return new PxeError(
      'E_PXE_PORT_IN_USE',
      `a port network boot needs (DHCP 67, PXE 4011 or TFTP 69) is taken by another program, another DHCP or TFTP server: ${said}`,
    );
  }
  if (/permission denied|operation not permitted/i.test(text)) {
    return new PxeError('E_PXE_PERMISSION', `network boot needs root (ports 67 and 69): ${said}`);
  }
  return new PxeError('E_PXE_DNSMASQ', `dnsmasq did not start: ${said}`);
}

/** The UDP ports dnsmasq takes in this mode: DHCP, PXE boot service (proxy), TFTP. */
export function pxePorts(mode: PxeMode): number[] {
  return mode === 'proxy' ? [67, 4011, 69] : [67, 69];
}

/**
 * Whether the ports are free, by binding each for a moment. dnsmasq cannot tell: it shares its
 * DHCP port (SO_REUSEPORT) with another dnsmasq, and two servers answering one LAN's boots
 * would be worse than none.
 */
export async function checkPorts(ports: readonly number[]): Promise<void> {
  for (const port of ports) {
    const problem = await new Promise<NodeJS.ErrnoException | null>((resolve) => {
      const s = createSocket({ type: 'udp4', reuseAddr: false });
      s.once('error', (err) => {
        s.close();
        resolve(err);
      });
      s.bind({ port, address: '0.0.0.0', exclusive: true }, () => s.close(() => resolve(null)));
    });
    if (!problem) continue;
    if (problem.code === 'EACCES' || problem.code === 'EPERM') {
      throw new PxeError(
        'E_PXE_PERMISSION',
        `network boot needs root: UDP port ${port} is a privileged port`,
        {
          port,
        },
      );
    }
    const what = port === 67 ? 'DHCP' : port === 69 ? 'TFTP' : 'PXE boot service';
    throw new PxeError(
      'E_PXE_PORT_IN_USE',
      `UDP port ${port} (${what}) is taken by another program on this machine (another DHCP/TFTP server, or another imgcast server --pxe): ${problem.message}`,
      { port },
    );
  }
}

// --- what a killed server leaves: its dnsmasq and radvd, its directory ------------------------

const TEMP_PREFIX = 'imgcast-pxe-';
const RECORD_RE = /^dnsmasq@(\d+\.\d+)\.json$/;

/** The programs a `--pxe` server supervises. */
type Helper = 'dnsmasq' | 'radvd';

/** What a running `--pxe` server has started, for the next one to undo if it dies. */
interface PxeRecord {
  v: 1;
  /** The server: pid.start (owner.ts's run tag). */
  server: RunTag;
  /** Its dnsmasq as last started, pid.start; null before it is. */
  dnsmasq: RunTag | null;
  /** Its radvd as last started (DHCP mode), pid.start; absent or null when there is none. */
  radvd?: RunTag | null;
  /** Its temporary directory. */
  dir: string;
}

async function pxeStateDir(given?: string): Promise<string> {
  return given ?? join(await runStateDir(), 'pxe');
}

/** Field 22 of /proc/PID/stat (clock ticks after boot), read at once: null when there is no such process. */
function startTicks(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: count from its last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

/** Written aside and renamed, synchronously (an exit handler may call it): never half a record. */
function writeRecord(file: string, r: PxeRecord): void {
  mkdirSync(join(file, '..'), { recursive: true, mode: 0o755 });
  writeFileSync(`${file}.new`, `${JSON.stringify(r)}\n`, { mode: 0o644 });
  renameSync(`${file}.new`, file);
}

async function stopProcess(tag: RunTag): Promise<boolean> {
  const pid = Number(tag.split('.')[0]);
  for (const [signal, waitMs] of [
    ['SIGTERM', 3000],
    ['SIGKILL', 2000],
  ] as const) {
    if (!(await runAlive(tag))) return true;
    try {
      process.kill(pid, signal);
    } catch {
      return !(await runAlive(tag));
    }
    for (let waited = 0; waited < waitMs && (await runAlive(tag)); waited += 50) await sleep(50);
  }
  return !(await runAlive(tag));
}

/**
 * Undoes what `imgcast server --pxe` runs that are gone left behind: stops their dnsmasq and
 * radvd (each only when still that process), removes their temporary directories and records.
 * Returns one line per server undone; records of live servers are left alone.
 */
export async function recoverPxe(o: { stateDir?: string; log?: PxeOptions['log'] } = {}): Promise<string[]> {
  const dir = await pxeStateDir(o.stateDir);
  const done: string[] = [];
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    const file = join(dir, name);
    if (name.endsWith('.new')) {
      // Never renamed into place: its writer died, or is writing it now (then it is alive).
      const tag = RECORD_RE.exec(name.slice(0, -'.new'.length))?.[1];
      if (tag && !(await runAlive(tag))) await rm(file, { force: true });
      continue;
    }
    const tag = RECORD_RE.exec(name)?.[1];
    if (!tag || (await runAlive(tag))) continue;
    let r: PxeRecord | null = null;
    try {
      r = JSON.parse(await readFile(file, 'utf8')) as PxeRecord;
    } catch {
      // Unreadable (edited by hand): nothing in it to undo.
    }
    let line = `the imgcast server --pxe ${tag.split('.')[0]} is gone`;
    let stuck = false;
    for (const helper of ['dnsmasq', 'radvd'] as const) {
      const run = r?.[helper];
      if (!run) continue;
      const pid = run.split('.')[0];
      if (!(await runAlive(run))) line += `; its ${helper} ${pid} too`;
      else if (await stopProcess(run)) line += `; stopped its ${helper} ${pid}`;
      else {
        o.log?.warn({ record: file }, `${line}; its ${helper} ${pid} did not stop`);
        stuck = true;
      }
    }
    // Still there: keep the record, so the port check says why and a later start tries again.
    if (stuck) continue;
    if (r?.dir && basename(r.dir).startsWith(TEMP_PREFIX)) {
      await rm(r.dir, { recursive: true, force: true });
      line += `; removed ${r.dir}`;
    }
    await rm(file, { force: true });
    o.log?.warn({ record: file }, line);
    done.push(line);
  }
  // Directories of servers killed before their record was written.
  for (const name of await readdir(tmpdir()).catch(() => [] as string[])) {
    const tag = tagOf(name, TEMP_PREFIX);
    if (tag && !(await runAlive(tag))) await rm(join(tmpdir(), name), { recursive: true, force: true });
  }
  return done;
}

/**
 * The watchdog of one helper ($1 pid, $2 start time): waits for the end of its stdin (the
 * server's end of the pipe closes with the server, however it ends), then stops the helper if it
 * is still that process, waits for it to go, and removes the directory ($3) and record ($4).
 * The server kills it (SIGKILL) before it stops the helper itself.
 */
const WATCHDOG = [
  "trap '' INT HUP",
  'read -r _',
  'start=$(cut -d" " -f22 "/proc/$1/stat" 2>/dev/null) && [ "$start" = "$2" ] && kill -TERM "$1"',
  'i=0',
  'while [ "$(cut -d" " -f22 "/proc/$1/stat" 2>/dev/null)" = "$2" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done',
  'rm -rf -- "$3" "$4"',
].join('\n');

function startWatchdog(helper: RunTag, dir: string, record: string): ChildProcess {
  const [pid, start] = helper.split('.') as [string, string];
  const w = spawn('sh', ['-c', WATCHDOG, 'imgcast-pxe-watchdog', pid, start, dir, record], {
    stdio: ['pipe', 'ignore', 'ignore'],
    detached: true,
  });
  // Nothing is ever written to it: its end is the message. Neither it nor the pipe holds the server up.
  w.stdin!.on('error', () => {});
  w.on('error', () => {});
  w.unref();
  (w.stdin as unknown as { unref?: () => void }).unref?.();
  return w;
}

export interface RunningPxe {
  interface: string;
  address: string;
  configFile: string;
  /** Whether router advertisements are sent (DHCP mode with radvd installed). */
  routerAdvertisements: boolean;
  close(): Promise<void>;
}

const START_TIMEOUT_MS = 10_000;

/** How one helper is run: what it is, how to start it, what it says once it serves. */
interface HelperSpec {
  name: Helper;
  binary: string;
  args: string[];
  started: RegExp;
  /** The code of its errors. */
  code: string;
  /** Why it could not start, from what it printed. */
  failure: (text: string, code: number | null) => PxeError;
}

/** The state shared by a server's helpers: the record they are written into, the folder they use. */
interface Supervision {
  me: RunTag;
  record: string;
  dir: string;
  runs: Record<Helper, RunTag | null>;
  log: PxeOptions['log'];
}

interface Supervised {
  /** Starts it; resolves once it serves, rejects with why not. */
  start(): Promise<void>;
  /** Stops it (and its restarts). */
  close(): Promise<void>;
  /** For the exit handler: kills it and its watchdog at once, synchronously. */
  killNow(): void;
}

/**
 * Runs a helper as a watched child: recorded for crash recovery and given a watchdog in the tick
 * it is spawned; its output goes to the server's log; started again after a growing pause when it
 * dies.
 */
function supervise(spec: HelperSpec, s: Supervision): Supervised {
  let child: ChildProcess | undefined;
  let watchdog: ChildProcess | undefined;
  let stopping = false;
  let backoff = 1000;
  let restartTimer: NodeJS.Timeout | undefined;
  const record = () => writeRecord(s.record, { v: 1, server: s.me, ...s.runs, dir: s.dir });

  const launch = () =>
    new Promise<void>((resolve, reject) => {
      const p = spawn(spec.binary, spec.args, { stdio: ['ignore', 'ignore', 'pipe'] });
      child = p;
      let guard: ChildProcess | undefined;
      const start = p.pid === undefined ? null : startTicks(p.pid);
      if (start !== null) {
        // Recorded and watched in the same tick as the spawn: no moment where a kill leaves it unknown.
        const tag = `${p.pid}.${start}`;
        s.runs[spec.name] = tag;
        try {
          record();
        } catch (err) {
          s.log.warn(
            { err: (err as Error).message, record: s.record },
            `cannot record ${spec.name} for crash recovery`,
          );
        }
        guard = watchdog = startWatchdog(tag, s.dir, s.record);
      }
      const startedAt = Date.now();
      let text = '';
      let up = false;
      const timer = setTimeout(() => {
        if (up) return;
        p.kill('SIGKILL');
        reject(new PxeError(spec.code, `${spec.name} did not start within ${START_TIMEOUT_MS / 1000} s`));
      }, START_TIMEOUT_MS);
      let partial = '';
      p.stderr!.setEncoding('utf8');
      p.stderr!.on('data', (chunk: string) => {
        if (!up) text += chunk;
        const lines = (partial + chunk).split('\n');
        partial = lines.pop()!;
        for (const line of lines) if (line.trim()) s.log.info({ [spec.name]: line }, spec.name);
        if (!up && spec.started.test(text)) {
          up = true;
          clearTimeout(timer);
          resolve();
        }
      });
      p.on('error', (err) => {
        clearTimeout(timer);
        if (!up) reject(new PxeError(spec.code, `cannot run ${spec.binary}: ${err.message}`));
      });
      p.on('exit', (code, signal) => {
        clearTimeout(timer);
        guard?.kill('SIGKILL');
        if (!up) return reject(spec.failure(text, code));
        if (stopping) return;
        // Ran a good while: whatever stopped it was not a fault that recurs at once.
        if (Date.now() - startedAt > 60_000) backoff = 1000;
        s.log.warn(
          { code, signal, restartInMs: backoff },
          `${spec.name} stopped; started again in ${backoff} ms`,
        );
        restartLater();
      });
    });

  const restartLater = () => {
    if (stopping) return;
    restartTimer = setTimeout(() => {
      launch().catch((err: unknown) => {
        s.log.warn({ err: (err as Error).message, restartInMs: backoff }, `${spec.name} did not start again`);
        restartLater();
      });
    }, backoff);
    backoff = Math.min(backoff * 2, 30_000);
  };

  return {
    start: launch,
    killNow() {
      watchdog?.kill('SIGKILL');
      child?.kill('SIGTERM');
    },
    async close() {
      stopping = true;
      clearTimeout(restartTimer);
      // Ours to stop now: the watchdog must not remove the directory under the helper's feet.
      watchdog?.kill('SIGKILL');
      const p = child;
      if (p && p.exitCode === null && p.signalCode === null) {
        await new Promise<void>((resolve) => {
          const kill = setTimeout(() => p.kill('SIGKILL'), 5000);
          p.once('exit', () => {
            clearTimeout(kill);
            resolve();
          });
          p.kill('SIGTERM');
        });
      }
    },
  };
}

/** radvd's configuration (pure): see pxeConfig for why the advertisement says nothing. */
export function radvdConfig(iface: string): string {
  return [
    '# generated by imgcast server --pxe; removed when it stops',
    `interface ${iface} {`,
    '  AdvSendAdvert on;',
    // Not a default router, no prefix, no M/O flags: it ends iPXE's wait and configures nothing.
    '  AdvDefaultLifetime 0;',
    '  AdvManagedFlag off;',
    '  AdvOtherConfigFlag off;',
    '  MinRtrAdvInterval 3;',
    '  MaxRtrAdvInterval 10;',
    '};',
    '',
  ].join('\n');
}

export async function startPxe(o: PxeOptions): Promise<RunningPxe> {
  const binary = findDnsmasq(o.dnsmasq);
  const iface = pickInterface(o.interface);
  const ipxeDir = o.ipxeDir ?? '/usr/lib/ipxe';
  const bios = join(ipxeDir, 'undionly.kpxe');
  const efi = ['snponly.efi', 'ipxe.efi'].find((f) => existsSync(join(ipxeDir, f)));
  if (!existsSync(bios) || !efi) {
    throw new PxeError(
      'E_PXE_NO_IPXE',
      `network boot of PXE firmware needs iPXE's images in ${ipxeDir} (Debian: apt-get install ipxe)`,
      { dir: ipxeDir },
    );
  }
  const radvd = o.mode === 'dhcp' ? findProgram('radvd', o.radvd) : undefined;
  if (o.mode === 'dhcp' && !radvd) {
    o.log.warn(
      {},
      'radvd is not installed: iPXE waits about 13 s for IPv6 autoconfiguration at every network boot of this lab (Debian: apt-get install radvd)',
    );
  }
  // Before the ports are checked: a dnsmasq a killed server left would hold them.
  await recoverPxe({ stateDir: o.stateDir, log: o.log });
  await checkPorts(pxePorts(o.mode));
  const me = await runTag();
  const record = join(await pxeStateDir(o.stateDir), `dnsmasq@${me}.json`);
  const dir = await ownedTempDir(tmpdir(), TEMP_PREFIX);
  const s: Supervision = { me, record, dir, runs: { dnsmasq: null, radvd: null }, log: o.log };
  const helpers: Supervised[] = [];
  // A crash of the whole process must not leave the directory or the children behind either.
  const onExit = () => {
    for (const h of helpers) h.killNow();
    rmSync(dir, { recursive: true, force: true });
    rmSync(record, { force: true });
  };
  process.once('exit', onExit);
  const tftp = join(dir, 'tftp');
  const configFile = join(dir, 'dnsmasq.conf');
  const radvdFile = join(dir, 'radvd.conf');
  try {
    writeRecord(record, { v: 1, server: me, ...s.runs, dir });
    // dnsmasq serves TFTP as nobody: the files it serves must be readable to it.
    await chmod(dir, 0o755);
    await mkdir(tftp, { mode: 0o755 });
    await symlink(bios, join(tftp, 'undionly.kpxe'));
    await symlink(join(ipxeDir, efi), join(tftp, efi));
    await writeFile(join(tftp, CHAIN_FILE), chainScript(iface.address, o.httpPort), { mode: 0o644 });
    await writeFile(
      configFile,
      pxeConfig({
        mode: o.mode,
        interface: iface.name,
        address: iface.address,
        netmask: iface.netmask,
        range: o.range,
        httpPort: o.httpPort,
        tftpRoot: tftp,
        pidFile: join(dir, 'dnsmasq.pid'),
        leaseFile: o.leaseFile ?? join(dir, 'dnsmasq.leases'),
        efiFile: efi,
      }),
      { mode: 0o644 },
    );
    if (radvd) await writeFile(radvdFile, radvdConfig(iface.name), { mode: 0o644 });
  } catch (err) {
    process.off('exit', onExit);
    await rm(dir, { recursive: true, force: true });
    await rm(record, { force: true });
    throw err;
  }

  helpers.push(
    supervise(
      {
        name: 'dnsmasq',
        binary,
        args: ['--keep-in-foreground', `--conf-file=${configFile}`],
        started: /started, version/,
        code: 'E_PXE_DNSMASQ',
        failure: startFailure,
      },
      s,
    ),
  );
  if (radvd) {
    helpers.push(
      supervise(
        {
          name: 'radvd',
          binary: radvd,
          // In the foreground, logging to stderr (read into the server's log), as nobody once
          // its socket is open.
          args: ['--nodaemon', '-C', radvdFile, '-p', join(dir, 'radvd.pid'), '-m', 'stderr', '-u', 'nobody'],
          started: /version \S+ started/,
          code: 'E_PXE_RADVD',
          failure: (text, code) =>
            new PxeError(
              'E_PXE_RADVD',
              `radvd did not start: ${text.trim().split('\n').slice(-3).join('; ') || `it exited with code ${code}`}`,
            ),
        },
        s,
      ),
    );
  }

  const close = async () => {
    for (const h of helpers) await h.close();
    process.off('exit', onExit);
    await rm(dir, { recursive: true, force: true });
    await rm(record, { force: true });
  };

  try {
    await helpers[0]!.start();
  } catch (err) {
    await close();
    throw err;
  }
  // Advertisements only save time: without them network boots work, each one slower.
  let advertising = helpers.length > 1;
  if (advertising) {
    await helpers[1]!.start().catch(async (err: unknown) => {
      advertising = false;
      await helpers[1]!.close();
      o.log.warn(
        { err: (err as Error).message },
        'radvd did not start: iPXE waits about 13 s for IPv6 autoconfiguration at every network boot of this lab',
      );
    });
  }
  o.log.info(
    {
      interface: iface.name,
      address: iface.address,
      mode: o.mode,
      config: configFile,
      routerAdvertisements: !!radvd,
    },
    `answering network boots on ${iface.name} (${o.mode === 'proxy' ? 'proxy DHCP beside the site’s DHCP server' : `DHCP, addresses ${o.range?.start}-${o.range?.end}${advertising ? ', and IPv6 router advertisements that configure nothing, so iPXE does not wait for them' : ''}`})`,
  );
  return {
    interface: iface.name,
    address: iface.address,
    configFile,
    routerAdvertisements: advertising,
    close,
  };
}
