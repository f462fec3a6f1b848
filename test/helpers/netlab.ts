/**
 * A throwaway multicast LAN made of network namespaces on one bridge, for lab tests
 * and benchmarks (the programmatic twin of /work/shared/lab/netlab.sh).
 *
 * Every lab gets a random id `ic<4 hex>`; its bridge is `<id>br`, its hosts are
 * namespaces `<id>n0` (the server) .. `<id>n<N>` and the host-side veth ends are
 * `<id>v<i>`, so parallel runs, and the shared script's `ml*` hosts, never clash.
 * Each host has eth0 = 198.18.0.<i+1>/24 with 224.0.0.0/4 routed on it; IGMP
 * snooping is off on the bridge so every group reaches every port.
 *
 * The loss and rate models are netlab.sh's, one method each, each replacing the host's earlier
 * rule of its kind (kinds add up) and going with the lab at destroy():
 *   frameLoss(h, pct)    nft, prerouting priority -450: frames dropped before IP reassembly
 *                        (`loss()` is its older name)
 *   datagramLoss(h, pct) nft, input priority 0: whole datagrams dropped after reassembly
 *   burstLoss(h, k, n)   nft, input priority 0: `numgen inc mod n < k`, k of every n datagrams
 *   rate(h, rate)        tc tbf on the host's eth0: what the host sends
 *   portRate(h, rate)    tc tbf on the bridge-side veth end: what the host receives
 *
 * A marker file /run/imgcast-netlab/<id> holds the creating process id: a new lab
 * removes the leftovers of labs whose creator is dead (crashed runs), and never
 * touches a live lab or anything outside the `ic<hex>` naming scheme.
 *
 * Socket buffer limits: on this kernel (6.18) net.core.rmem_max/wmem_max are NOT
 * per namespace: inside a namespace they read as the host value and are read-only
 * (writing gives EACCES/EINVAL). So the lab cannot raise them per host; it reports
 * the effective value in `socketBufferMax` and leaves the host setting alone.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';

const MARKER_DIR = '/run/imgcast-netlab';
const ID_RE = /^ic[0-9a-f]{4}$/;
const NS_RE = /^(ic[0-9a-f]{4})n\d+$/;
const BR_RE = /^(ic[0-9a-f]{4})br$/;
/** /usr/sbin is not on every caller's PATH (sudo, CI shells); nft lives there on Debian. */
const NFT = existsSync('/usr/sbin/nft') ? '/usr/sbin/nft' : 'nft';
/** tc (tbf rate limits) lives in /usr/sbin too. */
const TC = existsSync('/usr/sbin/tc') ? '/usr/sbin/tc' : 'tc';

/** The loss models of netlab.sh; each has its own nft table per host, so they add up. */
export type LossKind = 'frame' | 'datagram' | 'burst';
const LOSS_KINDS: readonly LossKind[] = ['frame', 'datagram', 'burst'];
const LOSS_TABLES: Record<LossKind, string> = {
  frame: 'imgcastloss',
  datagram: 'imgcastdgloss',
  burst: 'imgcastburst',
};

/** Why NetLab's loss rules cannot work here (no nft binary), or undefined when they can. */
export function lossUnavailable(): string | undefined {
  const r = spawnSync(NFT, ['--version'], { stdio: 'ignore' });
  return r.status === 0 ? undefined : 'needs nftables (nft) for packet-loss rules';
}

let shapingCache: string | undefined | null = null;
/**
 * Why NetLab.rate/portRate cannot work here (no tc, or no tbf qdisc), or undefined when they can.
 * Probes by putting a tbf on the loopback of a throwaway namespace (needs root, like the lab).
 */
export function shapingUnavailable(): string | undefined {
  if (shapingCache !== null) return shapingCache;
  const probe = `imgcast-tbf-${process.pid}`;
  if (spawnSync('ip', ['netns', 'add', probe], { stdio: 'ignore' }).status !== 0) {
    return (shapingCache = 'cannot create a network namespace to probe tc tbf');
  }
  try {
    const r = spawnSync(
      'ip',
      [
        'netns',
        'exec',
        probe,
        TC,
        'qdisc',
        'add',
        'dev',
        'lo',
        'root',
        'tbf',
        'rate',
        '1mbit',
        'burst',
        '256k',
        'latency',
        '20ms',
      ],
      { encoding: 'utf8' },
    );
    return (shapingCache =
      r.status === 0
        ? undefined
        : `needs tc with the tbf qdisc for rate limits (${(r.stderr ?? '').trim() || 'tc failed'})`);
  } finally {
    spawnSync('ip', ['netns', 'del', probe], { stdio: 'ignore' });
  }
}

export interface NetLabOptions {
  /** Link MTU of the bridge and every veth (default 1500). */
  mtu?: number;
}

export interface LossOptions {
  /**
   * Only drop UDP frames to this destination port (default: all UDP). Non-first IP fragments
   * carry no UDP header, so with a port only unfragmented datagrams and first fragments are dropped.
   */
  port?: number;
}

export interface DropCounters {
  packets: number;
  bytes: number;
}

export interface ShapingCounters {
  /** What went through the tbf qdisc. */
  bytes: number;
  packets: number;
  /** Packets it dropped (its queue was full) and times it had to hold packets back. */
  dropped: number;
  overlimits: number;
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

function ip(args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

function quietIp(args: string[]): void {
  spawnSync('ip', args, { stdio: 'ignore' });
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function listNamespaces(): string[] {
  const out = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout ?? '';
  return out
    .split('\n')
    .map((l) => l.split(/\s+/)[0] ?? '')
    .filter((n) => n.length > 0);
}

function listLinks(): string[] {
  const out = spawnSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' }).stdout ?? '';
  const names: string[] = [];
  for (const line of out.split('\n')) {
    const m = /^\d+:\s+([^:@\s]+)/.exec(line);
    if (m?.[1]) names.push(m[1]);
  }
  return names;
}

function ownerAlive(id: string): boolean {
  try {
    const pid = Number(readFileSync(`${MARKER_DIR}/${id}`, 'utf8').trim());
    return Number.isInteger(pid) && pid > 0 && pidAlive(pid);
  } catch {
    // No marker: created by a run that died before writing it, or by hand; treat as stale.
    return false;
  }
}

/** Removes every `ic<hex>` lab whose creating process is gone. Returns the ids removed. */
export function removeStaleLabs(keep?: string): string[] {
  const ids = new Set<string>();
  for (const ns of listNamespaces()) {
    const id = NS_RE.exec(ns)?.[1];
    if (id) ids.add(id);
  }
  for (const link of listLinks()) {
    const id = BR_RE.exec(link)?.[1];
    if (id) ids.add(id);
  }
  try {
    for (const f of readdirSync(MARKER_DIR)) if (ID_RE.test(f)) ids.add(f);
  } catch {
    // no marker dir yet
  }
  const removed: string[] = [];
  for (const id of ids) {
    if (id === keep || ownerAlive(id)) continue;
    destroyById(id);
    removed.push(id);
  }
  return removed;
}

function destroyById(id: string): void {
  for (const ns of listNamespaces()) {
    if (NS_RE.exec(ns)?.[1] !== id) continue;
    // Killing what still runs inside first lets `ip netns del` free the namespace at once.
    const pids = spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).stdout ?? '';
    for (const p of pids.split(/\s+/).filter(Boolean)) {
      try {
        process.kill(Number(p), 'SIGKILL');
      } catch {
        // already gone
      }
    }
    quietIp(['netns', 'del', ns]);
  }
  for (const link of listLinks()) {
    if (link === `${id}br` || new RegExp(`^${id}v\\d+$`).test(link)) quietIp(['link', 'del', link]);
  }
  rmSync(`${MARKER_DIR}/${id}`, { force: true });
}

const liveLabs = new Set<NetLab>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Synchronous on purpose: 'exit' handlers cannot await, and a crashed test must not leave a lab behind.
  process.on('exit', () => {
    for (const lab of liveLabs) lab.destroy();
  });
}

export class NetLab {
  readonly id: string;
  readonly bridge: string;
  readonly mtu: number;
  /** Number of hosts including the server (host 0). */
  readonly size: number;
  /** Effective net.core.rmem_max inside the hosts (global on this kernel, see the file comment). */
  readonly socketBufferMax: number;
  #children = new Set<ChildProcess>();
  #destroyed = false;

  private constructor(id: string, size: number, mtu: number, socketBufferMax: number) {
    this.id = id;
    this.bridge = `${id}br`;
    this.size = size;
    this.mtu = mtu;
    this.socketBufferMax = socketBufferMax;
  }

  /** Builds a lab with one server (host 0) and `receivers` workstations (hosts 1..receivers). */
  static create(receivers: number, opts: NetLabOptions = {}): NetLab {
    if (!Number.isInteger(receivers) || receivers < 1 || receivers > 200) {
      throw new RangeError(`netlab: receivers must be 1..200, got ${receivers}`);
    }
    const mtu = opts.mtu ?? 1500;
    let id = '';
    do id = `ic${randomBytes(2).toString('hex')}`;
    while (listNamespaces().some((n) => n.startsWith(`${id}n`)));
    removeStaleLabs(id);
    mkdirSync(MARKER_DIR, { recursive: true });
    writeFileSync(`${MARKER_DIR}/${id}`, `${process.pid}\n`);
    const lab = new NetLab(id, receivers + 1, mtu, 0);
    liveLabs.add(lab);
    installExitHook();
    try {
      ip(['link', 'add', lab.bridge, 'type', 'bridge', 'mcast_snooping', '0']);
      ip(['link', 'set', lab.bridge, 'mtu', String(mtu), 'up']);
      for (let i = 0; i < lab.size; i++) {
        const ns = lab.ns(i);
        const veth = `${id}v${i}`;
        ip(['netns', 'add', ns]);
        ip([
          'link',
          'add',
          veth,
          'mtu',
          String(mtu),
          'type',
          'veth',
          'peer',
          'name',
          'eth0',
          'mtu',
          String(mtu),
          'netns',
          ns,
        ]);
        ip(['link', 'set', veth, 'master', lab.bridge, 'up']);
        ip(['-n', ns, 'addr', 'add', `${lab.addr(i)}/24`, 'dev', 'eth0']);
        ip(['-n', ns, 'link', 'set', 'eth0', 'up']);
        ip(['-n', ns, 'link', 'set', 'lo', 'up']);
        ip(['-n', ns, 'route', 'add', '224.0.0.0/4', 'dev', 'eth0']);
      }
      const rmem = Number(
        execFileSync('ip', ['netns', 'exec', lab.ns(0), 'cat', '/proc/sys/net/core/rmem_max'], {
          encoding: 'utf8',
        }).trim(),
      );
      (lab as { socketBufferMax: number }).socketBufferMax = rmem;
    } catch (err) {
      lab.destroy();
      throw err;
    }
    return lab;
  }

  /** Namespace name of host i (0 = server). */
  ns(i: number): string {
    this.#check(i);
    return `${this.id}n${i}`;
  }

  /** IPv4 address of host i's eth0. */
  addr(i: number): string {
    this.#check(i);
    return `198.18.0.${i + 1}`;
  }

  /** Starts `cmd args` inside host i as a real separate process; killed at destroy(). */
  exec(host: number, cmd: string, args: string[] = [], opts: SpawnOptions = {}): ChildProcess {
    const child = spawn('ip', ['netns', 'exec', this.ns(host), cmd, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      ...opts,
    });
    this.#children.add(child);
    child.on('exit', () => this.#children.delete(child));
    return child;
  }

  /** Runs `cmd args` inside host i to completion, collecting its output. */
  run(host: number, cmd: string, args: string[] = [], opts: SpawnOptions = {}): Promise<RunResult> {
    const child = this.exec(host, cmd, args, opts);
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    return new Promise((resolve, reject) => {
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, stdout, stderr }));
    });
  }

  /** Synchronous command inside host i; throws with its stderr on failure. */
  runSync(host: number, cmd: string, args: string[] = []): string {
    return execFileSync('ip', ['netns', 'exec', this.ns(host), cmd, ...args], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  }

  /**
   * Same as frameLoss (its older name; existing callers keep it): drops `pct` % of the UDP
   * frames arriving at host i, before IP reassembly.
   */
  loss(host: number, pct: number, opts: LossOptions = {}): void {
    this.frameLoss(host, pct, opts);
  }

  /**
   * Drops `pct` % of the UDP frames arriving at host i, each one independently at random
   * (`netlab.sh frameloss`). Replaces any earlier frame-loss rule on that host; 0 clears it.
   *
   * nftables, not iptables: the rule sits in a prerouting chain at priority -450, before IP
   * reassembly (defrag is -400), so it sees every wire frame, each fragment of a big datagram
   * included. iptables' INPUT only ever sees reassembled datagrams, so there "1 % loss" of
   * 6-fragment datagrams would lose 1 % of datagrams instead of the ~6 % a real lossy link
   * causes. With `port`, only frames whose UDP header names that port are dropped: non-first
   * fragments carry no UDP header, so a port filter reaches unfragmented datagrams and first
   * fragments only.
   */
  frameLoss(host: number, pct: number, opts: LossOptions = {}): void {
    this.#lossRule(host, 'frame', pct === 0 ? undefined : this.#randomRule(pct, opts));
  }

  /**
   * Drops `pct` % of the whole UDP datagrams arriving at host i, each one independently at
   * random, after IP reassembly (`netlab.sh loss`): what a full socket buffer or a middlebox
   * does. The rule sits at `hook input priority 0`, so a fragmented datagram is one packet
   * there and its counter counts datagrams (and their reassembled bytes), not frames.
   * Replaces any earlier datagram-loss rule on that host; 0 clears it.
   */
  datagramLoss(host: number, pct: number, opts: LossOptions = {}): void {
    this.#lossRule(host, 'datagram', pct === 0 ? undefined : this.#randomRule(pct, opts));
  }

  /**
   * Drops `k` consecutive UDP datagrams out of every `n` arriving at host i (`netlab.sh burst`):
   * `numgen inc mod n < k` at `hook input priority 0`, after reassembly, so the first k of
   * every n datagrams matched are dropped, deterministically. Replaces any earlier burst rule
   * on that host; k = 0 clears it.
   */
  burstLoss(host: number, k: number, n: number, opts: LossOptions = {}): void {
    if (!Number.isInteger(n) || n < 1 || !Number.isInteger(k) || k < 0 || k > n) {
      throw new RangeError(`netlab: burst loss needs whole numbers 0 <= k <= n, n >= 1; got ${k} of ${n}`);
    }
    this.#lossRule(host, 'burst', k === 0 ? undefined : `${this.#udpMatch(opts)} numgen inc mod ${n} < ${k}`);
  }

  /**
   * Limits what host i sends to `rate` (tc tbf on its eth0, `netlab.sh rate`): a tc rate such
   * as '400mbit'. Replaces any earlier limit on that host; 0 clears it.
   */
  rate(host: number, rate: string | 0): void {
    this.#tbf(this.ns(host), 'eth0', rate);
  }

  /**
   * Limits what the bridge sends to host i to `rate` (tc tbf on the bridge-side veth end
   * `<id>v<i>`, `netlab.sh portrate`): a slow switch port. Replaces any earlier limit on that
   * port; 0 clears it.
   */
  portRate(host: number, rate: string | 0): void {
    this.#tbf(undefined, this.port(host), rate);
  }

  /** Name of the bridge-side veth end of host i (in the root namespace). */
  port(host: number): string {
    this.#check(host);
    return `${this.id}v${host}`;
  }

  /** Counters of host i's rate limit (rate()) or its port's (portRate()); zeros when none is set. */
  shaped(host: number, where: 'host' | 'port' = 'host'): ShapingCounters {
    const args = ['-s', 'qdisc', 'show', 'dev', where === 'host' ? 'eth0' : this.port(host), 'root'];
    const r =
      where === 'host'
        ? spawnSync('ip', ['netns', 'exec', this.ns(host), TC, ...args], { encoding: 'utf8' })
        : spawnSync(TC, args, { encoding: 'utf8' });
    const out = r.status === 0 ? r.stdout : '';
    if (!/qdisc tbf /.test(out)) return { bytes: 0, packets: 0, dropped: 0, overlimits: 0 };
    const m = /Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits (\d+)/.exec(out);
    return {
      bytes: Number(m?.[1] ?? 0),
      packets: Number(m?.[2] ?? 0),
      dropped: Number(m?.[3] ?? 0),
      overlimits: Number(m?.[4] ?? 0),
    };
  }

  /**
   * What host i's loss rules dropped so far: packets and their IP bytes. A frame-loss rule
   * counts wire frames (fragments one by one), datagram and burst rules count whole
   * (reassembled) datagrams. Without `kind`, the sum over the rules set (0 when none is).
   */
  dropped(host: number, kind?: LossKind): DropCounters {
    const total = { packets: 0, bytes: 0 };
    for (const k of kind ? [kind] : LOSS_KINDS) {
      const r = spawnSync(
        'ip',
        ['netns', 'exec', this.ns(host), NFT, 'list', 'counter', 'ip', LOSS_TABLES[k], 'dropped'],
        { encoding: 'utf8' },
      );
      if (r.status !== 0) continue;
      const m = /packets (\d+) bytes (\d+)/.exec(r.stdout);
      total.packets += Number(m?.[1] ?? 0);
      total.bytes += Number(m?.[2] ?? 0);
    }
    return total;
  }

  /** Resets host i's drop counters (of one kind, or all) so a second run in the same lab counts from zero. */
  resetDropped(host: number, kind?: LossKind): void {
    for (const k of kind ? [kind] : LOSS_KINDS) {
      spawnSync(
        'ip',
        ['netns', 'exec', this.ns(host), NFT, 'reset', 'counter', 'ip', LOSS_TABLES[k], 'dropped'],
        {
          stdio: 'ignore',
        },
      );
    }
  }

  /** SIGKILL: `ip netns exec` execs the command, so the child pid is the command itself. */
  kill9(child: ChildProcess): void {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }

  /** Kills whatever still runs in the lab and removes it. Idempotent, synchronous, never throws. */
  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    liveLabs.delete(this);
    for (const c of this.#children) this.kill9(c);
    destroyById(this.id);
  }

  #udpMatch(opts: LossOptions): string {
    return opts.port !== undefined ? `udp dport ${opts.port}` : 'ip protocol udp';
  }

  #randomRule(pct: number, opts: LossOptions): string {
    if (!(pct >= 0 && pct <= 100)) throw new RangeError(`netlab: loss must be 0..100 %, got ${pct}`);
    const below = Math.round(pct * 10_000);
    const chance = below >= 1_000_000 ? '' : ` numgen random mod 1000000 < ${below}`;
    return `${this.#udpMatch(opts)}${chance}`;
  }

  /** Sets host i's one loss rule of `kind` (its own table, so kinds add up), or clears it. */
  #lossRule(host: number, kind: LossKind, rule: string | undefined): void {
    const table = LOSS_TABLES[kind];
    this.#nft(host, `table ip ${table}\ndelete table ip ${table}\n`);
    if (rule === undefined) return;
    const hook = kind === 'frame' ? 'prerouting priority -450' : 'input priority 0';
    this.#nft(
      host,
      `table ip ${table} {\n` +
        `  counter dropped {}\n` +
        `  chain c {\n` +
        `    type filter hook ${hook}; policy accept;\n` +
        `    ${rule} counter name "dropped" drop\n` +
        `  }\n` +
        `}\n`,
    );
  }

  /** tbf as netlab.sh sets it (burst 256k, latency 20ms) on `dev` in namespace `ns` (undefined = root); 0 clears. */
  #tbf(ns: string | undefined, dev: string, rate: string | 0): void {
    if (rate !== 0 && rate !== '0' && !/^\d+(\.\d+)?(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)$/i.test(rate)) {
      throw new RangeError(`netlab: rate must be a tc rate such as '400mbit', or 0; got '${rate}'`);
    }
    const run = (args: string[], check: boolean): void => {
      const cmd = ns ? 'ip' : TC;
      const all = ns ? ['netns', 'exec', ns, TC, ...args] : args;
      if (check) execFileSync(cmd, all, { stdio: ['ignore', 'ignore', 'pipe'] });
      else spawnSync(cmd, all, { stdio: 'ignore' });
    };
    if (rate === 0 || rate === '0') {
      run(['qdisc', 'del', 'dev', dev, 'root'], false);
      return;
    }
    run(
      ['qdisc', 'replace', 'dev', dev, 'root', 'tbf', 'rate', rate, 'burst', '256k', 'latency', '20ms'],
      true,
    );
  }

  #nft(host: number, script: string): void {
    execFileSync('ip', ['netns', 'exec', this.ns(host), NFT, '-f', '-'], {
      input: script,
      stdio: ['pipe', 'ignore', 'pipe'],
    });
  }

  #check(i: number): void {
    if (!Number.isInteger(i) || i < 0 || i >= this.size) {
      throw new RangeError(`netlab ${this.id}: no host ${i} (hosts are 0..${this.size - 1})`);
    }
  }
}
