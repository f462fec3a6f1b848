/**
 * One multicast transfer of a file from lab host 0 to hosts 1..n with imgcast, udpcast
 * or uftp, each process a real separate process in its namespace, every process
 * wrapped in /usr/bin/time so peak RSS is measured the same way for all three tools
 * (getrusage of the exited child, which `ip netns exec` does not hide because it execs).
 *
 * Wall time runs from starting the sender to the exit of the last of the sender and the
 * receivers (uftp's client daemons never exit: for uftp, the sender's exit, which waits for
 * every client's confirmation), so each tool's start-up and handshake are included the same
 * way; receivers started before the sender (udpcast, uftp: 300 ms, so they hear its first
 * announcement) do not count. Every copy is checked by SHA-256.
 *
 * A transfer still running `timeoutMs` after its sender started is stopped (SIGKILL to each
 * tool process, so /usr/bin/time still reports its usage) and returned with `timedOutS`;
 * only a receiver that exited by itself before that can have an intact copy.
 */
import { spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, readFileSync, writeFileSync } from 'node:fs';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import type { NetLab } from '../../test/helpers/netlab.ts';

export type Tool = 'imgcast' | 'udpcast' | 'uftp';

export interface Outcome {
  tool: Tool;
  receivers: number;
  lossPct: number;
  bytes: number;
  wallMs: number;
  /** Per receiver: its copy matched the source. */
  intact: boolean[];
  senderRssKb: number;
  receiverRssKb: number[];
  /** CPU seconds (user + system) of the sender and of each receiver. */
  senderCpuS: number;
  receiverCpuS: number[];
  /** Wire frames (IP fragments count one by one) and their bytes the nftables loss rules dropped, summed over receivers. */
  lostPackets: number;
  lostBytes: number;
  /** imgcast only: repair traffic the sender put on the wire. */
  repairBytes?: number;
  repairPackets?: number;
  wireBytes?: number;
  /** Set when the transfer was stopped after this many seconds (wallMs is then NaN). */
  timedOutS?: number;
  /**
   * File data per second while the transfer was settled: the sender's eth0 sent bytes
   * (/proc/PID/net/dev, sampled every 50 ms) between the moments 10 % and 90 % of its whole
   * transfer's bytes had left, times the share of those bytes that was file data (bits/s).
   */
  settledBitsPerS?: number;
  note?: string;
}

const ROOT = resolve(import.meta.dirname, '../..');
const NODE = join(ROOT, 'node_modules/.bin/node');
const RUNNER = join(ROOT, 'bench/lib/mcast-runner.ts');
/**
 * imgcast's processes run as the installed launchers (bin/img.js, bin/imgcast.js) run
 * them: the same V8 flag as their shebang, and Node's compile cache (which the
 * launchers enable) so the type stripper is not loaded on every start.
 */
const NODE_FLAGS = [
  '--max-semi-space-size=8',
  ...(process.env.IMGCAST_BENCH_PROF
    ? ['--cpu-prof', '--cpu-prof-dir=' + process.env.IMGCAST_BENCH_PROF]
    : []),
];
process.env.NODE_COMPILE_CACHE ??= '/var/tmp/imgcast-bench/node-compile-cache';
const GROUP_BASE = '239.18.7.';

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const b of createReadStream(path, { highWaterMark: 4 << 20 })) h.update(b as Buffer);
  return h.digest('hex');
}

interface Proc {
  child: ChildProcess;
  /** `end` is Date.now() at the process's exit. */
  done: Promise<{ code: number | null; stdout: string; stderr: string; end: number }>;
  timeFile: string;
}

function start(lab: NetLab, host: number, timeFile: string, cmd: string, args: string[]): Proc {
  const child = lab.exec(host, '/usr/bin/time', ['-f', 'MAXRSS %M CPU %U %S', '-o', timeFile, cmd, ...args], {
    cwd: ROOT,
  });
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-20000)));
  const done = new Promise<{ code: number | null; stdout: string; stderr: string; end: number }>((res) =>
    child.on('close', (code) => res({ code, stdout, stderr, end: Date.now() })),
  );
  return { child, done, timeFile };
}

/** Signals the command under /usr/bin/time rather than time itself, so time still records its usage. */
function signalWrapped(child: ChildProcess, sig: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  let kids: string[] = [];
  try {
    kids = readFileSync(`/proc/${child.pid}/task/${child.pid}/children`, 'utf8')
      .trim()
      .split(/\s+/)
      .filter(Boolean);
  } catch {
    // already gone
  }
  for (const k of kids) {
    try {
      process.kill(Number(k), sig);
    } catch {
      // raced with its exit
    }
  }
}

/** Peak RSS (kB) and CPU seconds (user + system) of a process run under /usr/bin/time. */
async function usageOf(p: Proc): Promise<{ rssKb: number; cpuS: number }> {
  try {
    const m = /MAXRSS (\d+) CPU ([\d.]+) ([\d.]+)/.exec(await readFile(p.timeFile, 'utf8'));
    if (m?.[1] && m[2] && m[3]) return { rssKb: Number(m[1]), cpuS: Number(m[2]) + Number(m[3]) };
  } catch {
    // time was killed before it could write (after a timeout)
  }
  return { rssKb: NaN, cpuS: NaN };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms).unref());

/**
 * SIGKILL to the tool under each /usr/bin/time (so time still writes its usage), then, after
 * up to 3 s, to whatever is left of the wrappers. Returns once every one has closed.
 */
async function stopProcs(lab: NetLab, ps: Proc[]): Promise<void> {
  const live = ps.filter((p) => p.child.exitCode === null && p.child.signalCode === null);
  if (!live.length) return;
  for (const p of live) signalWrapped(p.child, 'SIGKILL');
  await Promise.race([Promise.all(live.map((p) => p.done)), sleep(3000)]);
  for (const p of live) lab.kill9(p.child);
  await Promise.all(live.map((p) => p.done));
}

/**
 * imgcast receivers shorten their namespace's IP reassembly timeout
 * (ReceiverOptions.tuneReassembly), as `img receive` does by default as root;
 * IMGCAST_BENCH_TUNE_REASSEMBLY=0 measures them without. The other tools never fragment.
 */
export const TUNE_REASSEMBLY = process.env.IMGCAST_BENCH_TUNE_REASSEMBLY !== '0';

export interface RunOptions {
  /** Receivers are hosts 1..n of the lab. */
  n: number;
  lossPct: number;
  file: string;
  /** SHA-256 of `file`. */
  sha: string;
  /** Directory for received copies and logs (emptied first). */
  work: string;
  /** Counted from the sender's start; see the file comment. */
  timeoutMs: number;
  /** Index of the run, to pick distinct ports/groups. */
  seq: number;
  /** Receive (and uftp's send) buffer asked of udp-receiver (--rcvbuf) and uftp/uftpd (-B); default lab.socketBufferMax. */
  socketBuffer?: number;
  /**
   * imgcast only: send this image (made by `img make` from a folder holding `file` as
   * `copy.bin`) instead of `file` raw; each receiver restores it into its folder, as `img receive`.
   */
  image?: string;
}

export async function runTransfer(lab: NetLab, tool: Tool, o: RunOptions): Promise<Outcome> {
  await rm(o.work, { recursive: true, force: true });
  await mkdir(o.work, { recursive: true });
  for (let i = 1; i <= o.n; i++) {
    lab.loss(i, o.lossPct);
    lab.resetDropped(i);
  }
  const bytes = Number(spawnSync('stat', ['-c', '%s', o.file], { encoding: 'utf8' }).stdout.trim());
  const group = `${GROUP_BASE}${(o.seq % 100) + 1}`;
  const port = 20000 + (o.seq % 500) * 4;
  const outs = Array.from({ length: o.n }, (_, k) => join(o.work, `r${k + 1}`, 'copy.bin'));
  for (let i = 1; i <= o.n; i++) await mkdir(join(o.work, `r${i}`), { recursive: true });
  const procs: Proc[] = [];
  const sockBuf = String(o.socketBuffer ?? lab.socketBufferMax);
  let tSender = Date.now();
  let sender: Proc;
  const daemons: Proc[] = [];
  const receivers: Proc[] = [];
  let extra: Partial<Outcome> = {};

  if (tool === 'imgcast') {
    const sendArgs = {
      ...(o.image ? { image: o.image } : { file: o.file }),
      interface: lab.addr(0),
      group,
      port,
      clients: o.n,
      waitSeconds: 60,
      ...(JSON.parse(process.env.IMGCAST_BENCH_SEND_EXTRA ?? '{}') as object),
    };
    sender = start(lab, 0, join(o.work, 'sender.time'), NODE, [
      ...NODE_FLAGS,
      RUNNER,
      'send',
      JSON.stringify(sendArgs),
    ]);
    for (let i = 1; i <= o.n; i++) {
      const args = {
        from: `${lab.addr(0)}:${port}`,
        interface: lab.addr(i),
        name: `r${i}`,
        // An image restores into a folder: the file it holds lands where the raw copy would. With a
        // journal, as `img receive` keeps one by default: its checkpoints flush what was written
        // every 64 MiB, where without one the whole copy waited in the page cache for the end.
        ...(o.image
          ? { to: dirname(outs[i - 1]!), image: true, journal: join(o.work, `r${i}.journal`) }
          : { to: outs[i - 1] }),
        tuneReassembly: TUNE_REASSEMBLY,
      };
      receivers.push(
        start(lab, i, join(o.work, `r${i}.time`), NODE, [
          ...NODE_FLAGS,
          RUNNER,
          'receive',
          JSON.stringify(args),
        ]),
      );
    }
  } else if (tool === 'udpcast') {
    const common = ['--interface', 'eth0', '--portbase', String(port), '--mcast-rdv-address', group];
    for (let i = 1; i <= o.n; i++) {
      receivers.push(
        start(lab, i, join(o.work, `r${i}.time`), 'udp-receiver', [
          ...common,
          '--nokbd',
          '--rcvbuf',
          sockBuf,
          '--file',
          outs[i - 1]!,
        ]),
      );
    }
    // Receivers must be listening for the sender's hello before it gives up waiting for them.
    await new Promise((r) => setTimeout(r, 300));
    tSender = Date.now();
    sender = start(lab, 0, join(o.work, 'sender.time'), 'udp-sender', [
      ...common,
      '--mcast-data-address',
      `${GROUP_BASE}${(o.seq % 100) + 101}`,
      '--nokbd',
      '--min-receivers',
      String(o.n),
      '--full-duplex',
      '--file',
      o.file,
    ]);
  } else {
    // uftpd (client daemon, foreground with -d) listens on a public group; uftp announces to it.
    const pub = group;
    const priv = `${GROUP_BASE}${(o.seq % 100) + 101}`;
    for (let i = 1; i <= o.n; i++) {
      daemons.push(
        start(lab, i, join(o.work, `r${i}.time`), 'uftpd', [
          '-d',
          '-x',
          '1',
          '-q',
          '-p',
          String(port),
          '-M',
          pub,
          '-I',
          'eth0',
          '-B',
          sockBuf,
          '-D',
          join(o.work, `r${i}`),
        ]),
      );
    }
    await new Promise((r) => setTimeout(r, 300));
    const clientIds = Array.from({ length: o.n }, (_, k) => lab.addr(k + 1)).join(',');
    tSender = Date.now();
    sender = start(lab, 0, join(o.work, 'sender.time'), 'uftp', [
      '-x',
      '1',
      '-Y',
      'none',
      '-I',
      'eth0',
      '-p',
      String(port),
      '-M',
      pub,
      '-P',
      priv,
      '-H',
      clientIds,
      '-R',
      String(UFTP_RATE_KBPS),
      '-b',
      '1400',
      '-B',
      sockBuf,
      '-D',
      'copy.bin',
      o.file,
    ]);
  }
  procs.push(sender, ...receivers, ...daemons);
  const waited = [sender, ...receivers];
  const txSamples: Array<[number, number]> = [];
  const sampler = setInterval(() => {
    const tx = ethTxBytes(sender.child.pid);
    if (tx !== null) txSamples.push([Date.now(), tx]);
  }, 50);
  const logDir = process.env.IMGCAST_BENCH_LOG;
  let note: string | undefined;
  let timedOut = false;
  /** Processes that had not exited by themselves when the deadline passed. */
  const hung = new Set<Proc>();
  let results: Awaited<Proc['done']>[];
  try {
    let timer: NodeJS.Timeout | undefined;
    const finished = Promise.all(waited.map((p) => p.done));
    const expired = new Promise<'timeout'>((res) => {
      timer = setTimeout(() => res('timeout'), Math.max(0, tSender + o.timeoutMs - Date.now()));
    });
    timedOut = (await Promise.race([finished, expired])) === 'timeout';
    clearTimeout(timer);
    clearInterval(sampler);
    if (timedOut) {
      for (const p of waited) if (p.child.exitCode === null && p.child.signalCode === null) hung.add(p);
      await stopProcs(lab, waited);
    }
    results = await finished;
    const [s, ...rs] = results as [Awaited<Proc['done']>, ...Awaited<Proc['done']>[]];
    if (logDir && (timedOut || tool === 'imgcast')) {
      // For looking into a run afterwards (the work directory is removed): IMGCAST_BENCH_LOG=dir.
      const tag = `${tool}-${o.n}r-${o.lossPct}pct-${o.seq}${timedOut ? '-timeout' : ''}`;
      // Each log ends with /usr/bin/time's line: peak RSS, user and system CPU seconds apart.
      const usage = (p: Proc): string => {
        try {
          return readFileSync(p.timeFile, 'utf8');
        } catch {
          return '';
        }
      };
      writeFileSync(join(logDir, `sender-${tag}.log`), s.stderr + s.stdout + usage(sender));
      rs.forEach((r, k) =>
        writeFileSync(join(logDir, `r${k + 1}-${tag}.log`), r.stderr + r.stdout + usage(receivers[k]!)),
      );
    }
    if (timedOut) {
      const names = waited.flatMap((p, k) => (hung.has(p) ? [k === 0 ? 'sender' : `receiver ${k}`] : []));
      note = `timed out after ${o.timeoutMs / 1000} s (still running: ${names.join(', ') || 'none'})`;
    } else if (s.code !== 0) {
      note = `sender exit ${s.code}: ${s.stderr.trim().split('\n').slice(-3).join(' | ')}`;
    }
    if (tool === 'imgcast') {
      const line = s.stdout.split('\n').find((l) => l.startsWith('RESULT '));
      if (line) {
        const r = JSON.parse(line.slice(7)) as {
          counters: { repairBytes: number; repairPackets: number; bytes: number };
        };
        extra = {
          repairBytes: r.counters.repairBytes,
          repairPackets: r.counters.repairPackets,
          wireBytes: r.counters.bytes,
        };
      }
    }
    const bad = rs.findIndex((r, k) => r.code !== 0 && !hung.has(receivers[k]!));
    if (bad >= 0 && !note)
      note = `receiver ${bad + 1} exit ${rs[bad]!.code}: ${rs[bad]!.stderr.trim().slice(-300)}`;
  } finally {
    clearInterval(sampler);
    // uftpd never exits on its own: SIGTERM, then SIGKILL after 5 s (and anything left after an error).
    for (const d of daemons) signalWrapped(d.child, 'SIGTERM');
    await Promise.race([Promise.all(daemons.map((d) => d.done)), sleep(5000)]);
    await stopProcs(lab, procs);
  }
  const wallMs = timedOut ? NaN : Math.max(...results.map((r) => r.end)) - tSender;
  const intact: boolean[] = [];
  for (const [k, f] of outs.entries()) {
    // A receiver stopped at the deadline never counts, whatever its file holds.
    const r = receivers[k];
    intact.push(
      !(r && hung.has(r)) &&
        (await sha256File(f).then(
          (h) => h === o.sha,
          () => false,
        )),
    );
  }
  let lostPackets = 0;
  let lostBytes = 0;
  for (let i = 1; i <= o.n; i++) {
    const d = lab.dropped(i);
    lostPackets += d.packets;
    lostBytes += d.bytes;
  }
  const rx = tool === 'uftp' ? daemons : receivers;
  const su = await usageOf(sender);
  const ru = await Promise.all(rx.map(usageOf));
  const out: Outcome = {
    tool,
    receivers: o.n,
    lossPct: o.lossPct,
    bytes,
    wallMs,
    intact,
    senderRssKb: su.rssKb,
    receiverRssKb: ru.map((u) => u.rssKb),
    senderCpuS: su.cpuS,
    receiverCpuS: ru.map((u) => u.cpuS),
    lostPackets,
    lostBytes,
    ...extra,
  };
  if (timedOut) out.timedOutS = o.timeoutMs / 1000;
  if (note) out.note = note;
  const settled = timedOut ? null : settledRate(txSamples, bytes);
  if (settled !== null) out.settledBitsPerS = settled;
  return out;
}

/** Bytes sent on eth0 in the network namespace of process `pid`, or null once it is gone. */
function ethTxBytes(pid: number | undefined): number | null {
  if (pid === undefined) return null;
  try {
    const line = readFileSync(`/proc/${pid}/net/dev`, 'utf8')
      .split('\n')
      .find((l) => l.trim().startsWith('eth0:'));
    // Receive: bytes packets errs drop fifo frame compressed multicast; then transmit: bytes ...
    const f = line?.split(':')[1]?.trim().split(/\s+/);
    return f?.[8] === undefined ? null : Number(f[8]);
  } catch {
    return null;
  }
}

/** See Outcome.settledBitsPerS: [time ms, bytes sent so far] samples, `fileBytes` of data in all. */
export function settledRate(
  samples: ReadonlyArray<readonly [number, number]>,
  fileBytes: number,
): number | null {
  if (samples.length < 3) return null;
  const [t0, b0] = samples[0]!;
  const total = samples[samples.length - 1]![1] - b0;
  if (!(total > 0)) return null;
  const at = (share: number) => samples.find(([, b]) => b - b0 >= share * total);
  const lo = at(0.1);
  const hi = at(0.9);
  if (!lo || !hi || hi[0] <= lo[0] || lo[0] < t0) return null;
  const wireBytesPerS = ((hi[1] - lo[1]) * 1000) / (hi[0] - lo[0]);
  return wireBytesPerS * (fileBytes / total) * 8;
}

/** uftp has no rate discovery without TFMCC; -1 means "as fast as the interface takes". */
export let UFTP_RATE_KBPS = -1;
export function setUftpRate(kbps: number): void {
  UFTP_RATE_KBPS = kbps;
}
