/**
 * Network conditions the multicast bench sets around a transfer, done here by running
 * `nft` and `tc` inside the lab's namespaces (NetLab only knows frame loss), plus the
 * host-wide net.core.rmem_max, which this kernel does not keep per namespace.
 *
 * Everything set inside a namespace goes away with the lab (NetLab.destroy deletes the
 * namespaces); rmem_max is the one host setting, so whoever sets it must restore it on
 * every way out (see setRmemMax / restoreRmemMax / recoverRmemMax).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { NetLab } from '../../test/helpers/netlab.ts';

const NFT = existsSync('/usr/sbin/nft') ? '/usr/sbin/nft' : 'nft';
const TC = existsSync('/usr/sbin/tc') ? '/usr/sbin/tc' : 'tc';
const DGRAM_TABLE = 'imgcastbenchdgram';

function inNs(lab: NetLab, host: number, cmd: string, args: string[], input?: string): string {
  return execFileSync('ip', ['netns', 'exec', lab.ns(host), cmd, ...args], {
    encoding: 'utf8',
    ...(input === undefined
      ? { stdio: ['ignore', 'pipe', 'pipe'] }
      : { input, stdio: ['pipe', 'pipe', 'pipe'] }),
  });
}

function quietInNs(lab: NetLab, host: number, cmd: string, args: string[]): void {
  spawnSync('ip', ['netns', 'exec', lab.ns(host), cmd, ...args], { stdio: 'ignore' });
}

export interface Drops {
  packets: number;
  bytes: number;
}

// ---------------------------------------------------------------- whole-datagram loss

/**
 * Drops `pct` % of the UDP datagrams host i takes in, each one independently at random,
 * at `type filter hook input priority 0`: after IP reassembly, so a datagram sent as 16
 * fragments is lost as one. Replaces an earlier rule of this kind; 0 removes it.
 */
export function setDatagramLoss(lab: NetLab, host: number, pct: number): void {
  if (!(pct >= 0 && pct <= 100)) throw new RangeError(`datagram loss must be 0..100 %, got ${pct}`);
  clearDatagramLoss(lab, host);
  if (pct === 0) return;
  const below = Math.round(pct * 10_000);
  inNs(
    lab,
    host,
    NFT,
    ['-f', '-'],
    `table ip ${DGRAM_TABLE} {\n` +
      `  counter dropped {}\n` +
      `  chain input {\n` +
      `    type filter hook input priority 0; policy accept;\n` +
      `    ip protocol udp numgen random mod 1000000 < ${below} counter name "dropped" drop\n` +
      `  }\n` +
      `}\n`,
  );
}

/** Datagrams (and their reassembled IP bytes) host i's datagram-loss rule dropped since it was set. */
export function datagramDrops(lab: NetLab, host: number): Drops {
  const r = spawnSync(
    'ip',
    ['netns', 'exec', lab.ns(host), NFT, 'list', 'counter', 'ip', DGRAM_TABLE, 'dropped'],
    {
      encoding: 'utf8',
    },
  );
  if (r.status !== 0) return { packets: 0, bytes: 0 };
  const m = /packets (\d+) bytes (\d+)/.exec(r.stdout);
  return { packets: Number(m?.[1] ?? 0), bytes: Number(m?.[2] ?? 0) };
}

export function clearDatagramLoss(lab: NetLab, host: number): void {
  quietInNs(lab, host, NFT, ['delete', 'table', 'ip', DGRAM_TABLE]);
}

// ---------------------------------------------------------------- tbf on the sender's link

export const TBF_BURST = '256k';
export const TBF_LATENCY = '20ms';

/** `tc qdisc replace dev eth0 root tbf rate <mbit>mbit burst 256k latency 20ms` in host i (its counters start at 0). */
export function setTbf(lab: NetLab, host: number, mbit: number): void {
  clearTbf(lab, host);
  inNs(lab, host, TC, [
    'qdisc',
    'add',
    'dev',
    'eth0',
    'root',
    'tbf',
    'rate',
    `${mbit}mbit`,
    'burst',
    TBF_BURST,
    'latency',
    TBF_LATENCY,
  ]);
}

export interface TbfStats {
  /** Bytes and frames tbf let through (as tbf counts them: each frame with its Ethernet header). */
  sentBytes: number;
  sentPackets: number;
  /** Frames tbf dropped because its queue was full. */
  dropped: number;
}

/** Counters of host i's root tbf, from `tc -s qdisc show dev eth0`; null when there is none. */
export function tbfStats(lab: NetLab, host: number): TbfStats | null {
  const out = inNs(lab, host, TC, ['-s', 'qdisc', 'show', 'dev', 'eth0']);
  const at = out.indexOf('qdisc tbf');
  if (at < 0) return null;
  const m = /Sent (\d+) bytes (\d+) pkt \(dropped (\d+)/.exec(out.slice(at));
  if (!m) return null;
  return { sentBytes: Number(m[1]), sentPackets: Number(m[2]), dropped: Number(m[3]) };
}

export function clearTbf(lab: NetLab, host: number): void {
  const out = spawnSync('ip', ['netns', 'exec', lab.ns(host), TC, 'qdisc', 'show', 'dev', 'eth0'], {
    encoding: 'utf8',
  }).stdout;
  if (out?.includes('qdisc tbf')) quietInNs(lab, host, TC, ['qdisc', 'del', 'dev', 'eth0', 'root']);
}

// ---------------------------------------------------------------- processes

/** SIGKILLs whatever still runs inside the lab's namespaces; returns how many processes that was. */
export function killLeftovers(lab: NetLab): number {
  let n = 0;
  for (let i = 0; i < lab.size; i++) {
    const out = spawnSync('ip', ['netns', 'pids', lab.ns(i)], { encoding: 'utf8' }).stdout ?? '';
    for (const p of out.split(/\s+/).filter(Boolean)) {
      try {
        process.kill(Number(p), 'SIGKILL');
        n++;
      } catch {
        // already gone
      }
    }
  }
  return n;
}

// ---------------------------------------------------------------- net.core.rmem_max (host-wide)

const RMEM_MAX = '/proc/sys/net/core/rmem_max';
/**
 * "<pid> <value before the run> <value the run set last>", so the next run can undo one killed
 * with SIGKILL, and only if nobody has changed the setting since.
 */
const RMEM_MARK = '/run/imgcast-bench-rmem_max';
let rmemOriginal: number | null = null;
let rmemLastSet: number | null = null;

export function rmemMax(): number {
  return Number(readFileSync(RMEM_MAX, 'utf8').trim());
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Puts back the value a bench run recorded before it was killed without cleaning up (SIGKILL).
 * Returns a sentence saying what it did, or undefined. A marker of a live run is left alone.
 */
export function recoverRmemMax(): string | undefined {
  let mark: string;
  try {
    mark = readFileSync(RMEM_MARK, 'utf8');
  } catch {
    return undefined;
  }
  const [pid, value, left] = mark.trim().split(/\s+/).map(Number);
  if (pid && pid !== process.pid && pidAlive(pid)) {
    return `warning: bench run ${pid} is changing net.core.rmem_max too (${RMEM_MARK}); figures of both runs are suspect`;
  }
  rmSync(RMEM_MARK, { force: true });
  if (!value || !Number.isInteger(value)) return undefined;
  const now = rmemMax();
  if (now === value) return undefined;
  if (now !== left) {
    return `bench run ${pid} did not finish and had net.core.rmem_max at ${left} (before it: ${value}); someone has set ${now} since, left as it is`;
  }
  writeFileSync(RMEM_MAX, `${value}\n`);
  return `net.core.rmem_max was ${now}, left by bench run ${pid} that did not finish; put back to ${value}`;
}

/** Sets net.core.rmem_max on the host. The first call records the value restoreRmemMax puts back. */
export function setRmemMax(value: number): void {
  rmemOriginal ??= rmemMax();
  writeFileSync(RMEM_MARK, `${process.pid} ${rmemOriginal} ${value}\n`);
  writeFileSync(RMEM_MAX, `${value}\n`);
  rmemLastSet = value;
}

/**
 * Puts back the value from before the first setRmemMax, unless something else on this machine
 * has set another value since this process last set it (that one is left alone). Synchronous
 * and never throws (for exit handlers).
 */
export function restoreRmemMax(): void {
  if (rmemOriginal === null) return;
  try {
    if (rmemMax() === rmemLastSet) writeFileSync(RMEM_MAX, `${rmemOriginal}\n`);
    else
      process.stderr.write(
        `net.core.rmem_max was changed outside the bench (now ${rmemMax()}); left as it is\n`,
      );
    rmSync(RMEM_MARK, { force: true });
    rmemOriginal = null;
  } catch {
    // nothing better to do on the way out; the marker lets the next run put it back
  }
}
