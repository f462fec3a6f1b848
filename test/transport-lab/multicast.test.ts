/**
 * The multicast transport end to end in a namespace lab: every sender and receiver
 * is a separate process in its own network namespace (bench/lib/mcast-runner.ts),
 * packets cross a real bridge, loss comes from nftables rules in the receivers' namespaces that drop
 * wire frames (IP fragments one by one) before reassembly.
 * One file on purpose: the scenarios share the 2 CPUs badly when run in parallel.
 */
import assert from 'node:assert/strict';
import { execFileSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { test, type TestContext } from 'node:test';
import { netnsUnavailable, skipUnless, tempDir } from '../helpers/env.ts';
import { lossUnavailable, NetLab } from '../helpers/netlab.ts';
import { MAX_UNITS } from '../../src/transport/packet.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const NODE = join(ROOT, 'node_modules/.bin/node');
const RUNNER = join(ROOT, 'bench/lib/mcast-runner.ts');
const SPRAY = join(ROOT, 'test/transport-lab/spray.ts');
const SIZE = 128 * 1024 * 1024;

interface Counters {
  [k: string]: number;
}
interface ReceiverReport {
  name: string;
  state: string;
  reason: string | null;
  chunksHad: number;
  counters: Counters | null;
}
interface SenderResult {
  ok: boolean;
  chunks: number;
  durationMs: number;
  receivers: ReceiverReport[];
  counters: Counters;
}

/** Datagrams the sender sent by units carried (index = units). */
const byUnits = (sr: SenderResult): number[] =>
  (sr.counters as unknown as { datagramsByUnits: number[] }).datagramsByUnits;
interface ReceiverResult {
  ok: boolean;
  code: string | null;
  message: string | null;
  chunks: number;
  totalChunks: number;
  chunksHad: number;
  durationMs: number;
  counters: Counters;
}
interface Progress {
  receivers?: Array<{ name: string; state: string }>;
  chunks?: number;
  totalChunks?: number;
}

interface Proc<R> {
  child: ChildProcess;
  result: Promise<R | null>;
  onProgress(f: (p: Progress) => void): void;
  stderr(): string;
}

function runner<R>(lab: NetLab, host: number, mode: 'send' | 'receive', args: object): Proc<R> {
  const child = lab.exec(host, NODE, [RUNNER, mode, JSON.stringify(args)], { cwd: ROOT });
  const listeners: Array<(p: Progress) => void> = [];
  let out = '';
  let err = '';
  let result: R | null = null;
  child.stdout?.setEncoding('utf8').on('data', (d: string) => {
    out += d;
    let nl: number;
    while ((nl = out.indexOf('\n')) >= 0) {
      const line = out.slice(0, nl);
      out = out.slice(nl + 1);
      if (line.startsWith('PROGRESS ')) for (const f of listeners) f(JSON.parse(line.slice(9)) as Progress);
      else if (line.startsWith('RESULT ')) result = JSON.parse(line.slice(7)) as R;
    }
  });
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-8000)));
  return {
    child,
    result: new Promise((res) => child.on('close', () => res(result))),
    onProgress: (f) => void listeners.push(f),
    stderr: () => err,
  };
}

/** IP reassembly counters of a lab host (its namespace's /proc/net/snmp). */
function reassembly(lab: NetLab, host: number): { reqds: number; oks: number } {
  const ip = lab
    .runSync(host, 'cat', ['/proc/net/snmp'])
    .split('\n')
    .filter((l) => l.startsWith('Ip:'))
    .map((l) => l.trim().split(/\s+/));
  const v = (name: string): number => Number(ip[1]?.[ip[0]?.indexOf(name) ?? -1] ?? NaN);
  return { reqds: v('ReasmReqds'), oks: v('ReasmOKs') };
}

const sumOf = (a: number[]): number => a.reduce((x, y) => x + y, 0);

function sha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

async function setup(
  t: TestContext,
  receivers: number,
): Promise<{ lab: NetLab; dir: string; src: string; sum: string }> {
  const dir = await tempDir(t, 'imgcast-lab-');
  const lab = NetLab.create(receivers);
  t.after(() => lab.destroy());
  const src = join(dir, 'source.bin');
  execFileSync('sh', ['-c', `head -c ${SIZE} /dev/urandom > ${src}`]);
  return { lab, dir, src, sum: sha256(src) };
}

let portSeq = 0;
function session(lab: NetLab, extra: object = {}): { port: number; send: object; from: string } {
  const port = 30000 + (process.pid % 1000) * 10 + (portSeq++ % 10) * 2;
  return {
    port,
    from: `${lab.addr(0)}:${port}`,
    send: {
      interface: lab.addr(0),
      group: `239.18.9.${(portSeq % 200) + 1}`,
      port,
      waitSeconds: 30,
      ...extra,
    },
  };
}

function receive(
  lab: NetLab,
  host: number,
  from: string,
  to: string,
  extra: object = {},
): Proc<ReceiverResult> {
  return runner<ReceiverResult>(lab, host, 'receive', {
    from,
    interface: lab.addr(host),
    name: `r${host}`,
    to,
    ...extra,
  });
}

function must<T>(v: T | null, what: string, p: { stderr(): string }): T {
  assert.ok(v, `${what} produced no result; its stderr:\n${p.stderr()}`);
  return v;
}

test(
  '3 receivers at 0 %, 1 % and 5 % random loss all get the exact bytes',
  { timeout: 120_000 },
  async (t) => {
    if (skipUnless(t, netnsUnavailable() ?? lossUnavailable())) return;
    const { lab, dir, src, sum } = await setup(t, 3);
    const loss = [0, 1, 5];
    loss.forEach((pct, k) => lab.loss(k + 1, pct));
    const s = session(lab);
    const sender = runner<SenderResult>(lab, 0, 'send', { file: src, clients: 3, ...s.send });
    const rx = [1, 2, 3].map((h) => receive(lab, h, s.from, join(dir, `r${h}.bin`)));
    const sr = must(await sender.result, 'sender', sender);
    const rr = await Promise.all(rx.map(async (p) => must(await p.result, 'receiver', p)));
    assert.equal(sr.ok, true, JSON.stringify(sr.receivers));
    for (const [k, r] of rr.entries()) {
      assert.equal(r.ok, true, `r${k + 1}: ${r.code} ${r.message}`);
      assert.equal(
        sha256(join(dir, `r${k + 1}.bin`)),
        sum,
        `r${k + 1} (${loss[k]} % loss) is not byte-exact`,
      );
    }
    t.diagnostic(
      `datagrams by units ${JSON.stringify(byUnits(sr))}, fragmentation pauses ${sr.counters.fragmentationPauses}, ` +
        `repair ${sr.counters.repairBytes} bytes, dropped frames ${[1, 2, 3].map((h) => lab.dropped(h).packets).join('/')}, ${sr.durationMs} ms`,
    );
    // The loss was real, and it was repaired rather than ignored.
    assert.ok(lab.dropped(3).packets > 0, 'the loss rule dropped nothing at 5 %');
    assert.ok(sr.counters.repairPackets! >= lab.dropped(3).packets * 0.5, JSON.stringify(sr.counters));
    // With 1-5 % of the frames lost, big datagrams would lose 15-56 % of their units (and fill the
    // receivers' reassembly memory): most units must have gone in datagrams of 6 units or fewer.
    const units = byUnits(sr);
    const carried = (from: number, to: number): number =>
      units.reduce((a, n, k) => (k >= from && k <= to ? a + n * k : a), 0);
    assert.ok(carried(7, MAX_UNITS) < carried(1, 6), `datagrams by units ${JSON.stringify(units)}`);
  },
);

test(
  'coded repairs: 3 receivers at 2 % loss each decode their runs from shared datagrams; repair stays under 3x the loss',
  { timeout: 120_000 },
  async (t) => {
    if (skipUnless(t, netnsUnavailable() ?? lossUnavailable())) return;
    const { lab, dir, src, sum } = await setup(t, 3);
    [1, 2, 3].forEach((h) => lab.loss(h, 2));
    const s = session(lab);
    const sender = runner<SenderResult>(lab, 0, 'send', { file: src, clients: 3, ...s.send });
    const rx = [1, 2, 3].map((h) =>
      receive(lab, h, s.from, join(dir, `r${h}.bin`), { tuneReassembly: true }),
    );
    const sr = must(await sender.result, 'sender', sender);
    const rr = await Promise.all(rx.map(async (p) => must(await p.result, 'receiver', p)));
    assert.equal(sr.ok, true, JSON.stringify(sr.receivers));
    for (const [k, r] of rr.entries()) {
      assert.equal(r.ok, true, `r${k + 1}: ${r.code} ${r.message}`);
      assert.equal(sha256(join(dir, `r${k + 1}.bin`)), sum, `r${k + 1} is not byte-exact`);
    }
    const c = {
      repairPackets: sr.counters.repairPackets ?? 0,
      repairBytes: sr.counters.repairBytes ?? 0,
      codedRepairs: sr.counters.codedRepairs ?? 0,
      codedRuns: sr.counters.codedRuns ?? 0,
    };
    const lostBytes = [1, 2, 3].reduce((a, h) => a + lab.dropped(h).bytes, 0);
    const decoded = rr.map((r) => r.counters.decoded ?? 0);
    const undecodable = rr.map((r) => r.counters.undecodable ?? 0);
    t.diagnostic(
      `coded ${c.codedRepairs} datagrams carrying ${c.codedRuns} runs, plain repairs ${c.repairPackets - c.codedRepairs}; ` +
        `decoded ${decoded.join('/')}, undecodable ${undecodable.join('/')}; repair ${c.repairBytes} bytes for ` +
        `${lostBytes} bytes dropped (${(c.repairBytes / lostBytes).toFixed(2)}x); by units ${JSON.stringify(byUnits(sr))}`,
    );
    // Most repairs served more than one receiver, and each receiver used its share of them.
    assert.ok(c.codedRepairs > c.repairPackets - c.codedRepairs, JSON.stringify(c));
    assert.ok(c.codedRuns >= 2 * c.codedRepairs);
    assert.ok(sumOf(decoded) >= c.codedRuns * 0.8, `decoded ${decoded.join('/')} of ${c.codedRuns} runs`);
    assert.ok(sumOf(undecodable) <= sumOf(decoded) * 0.1, `undecodable ${undecodable.join('/')}`);
    // Union repairs (every lost datagram resent for whoever lost it) would be ~3 x k x the loss.
    assert.ok(c.repairBytes <= 3 * lostBytes, `repair ${c.repairBytes} bytes for ${lostBytes} dropped`);
  },
);

test(
  'maxDatagram 1472: one unit per datagram, nothing IP-fragmented, exact bytes at 1 % and 5 % loss',
  { timeout: 120_000 },
  async (t) => {
    if (skipUnless(t, netnsUnavailable() ?? lossUnavailable())) return;
    const { lab, dir, src, sum: digest } = await setup(t, 2);
    lab.loss(1, 1);
    lab.loss(2, 5);
    const before = [1, 2].map((h) => reassembly(lab, h).reqds);
    const s = session(lab, { maxDatagram: 1472 });
    const sender = runner<SenderResult>(lab, 0, 'send', { file: src, clients: 2, ...s.send });
    const rx = [1, 2].map((h) => receive(lab, h, s.from, join(dir, `r${h}.bin`)));
    const sr = must(await sender.result, 'sender', sender);
    const rr = await Promise.all(rx.map(async (p) => must(await p.result, 'receiver', p)));
    assert.equal(sr.ok, true, JSON.stringify(sr.receivers));
    for (const [k, r] of rr.entries()) {
      assert.equal(r.ok, true, `r${k + 1}: ${r.code} ${r.message}`);
      assert.equal(sha256(join(dir, `r${k + 1}.bin`)), digest, `r${k + 1} is not byte-exact`);
    }
    const units = byUnits(sr);
    t.diagnostic(`datagrams by units ${JSON.stringify(units)}, ${sr.durationMs} ms`);
    assert.deepEqual(units, [0, sr.counters.packets], 'a datagram carried more than one unit');
    // And the receivers' kernels reassembled nothing: no fragment reached them.
    assert.deepEqual(
      [1, 2].map((h, i) => reassembly(lab, h).reqds - before[i]!),
      [0, 0],
    );
    assert.ok(lab.dropped(2).packets > 0, 'the loss rule dropped nothing at 5 %');
  },
);

test(
  'tuneReassembly at 1 % loss: multi-unit datagrams without a fragmentation pause, kernel settings restored after',
  { timeout: 120_000 },
  async (t) => {
    if (skipUnless(t, netnsUnavailable() ?? lossUnavailable())) return;
    const { lab, dir, src, sum: digest } = await setup(t, 2);
    const ipfrag = (h: number): string =>
      lab.runSync(h, 'cat', ['/proc/sys/net/ipv4/ipfrag_time', '/proc/sys/net/ipv4/ipfrag_high_thresh']);
    const before = [1, 2].map(ipfrag);
    [1, 2].forEach((h) => lab.loss(h, 1));
    const s = session(lab);
    const sender = runner<SenderResult>(lab, 0, 'send', { file: src, clients: 2, ...s.send });
    const rx = [1, 2].map((h) => receive(lab, h, s.from, join(dir, `r${h}.bin`), { tuneReassembly: true }));
    let during = '';
    rx[0]!.onProgress((p) => {
      if (!during && (p.chunks ?? 0) > 0) during = ipfrag(1);
    });
    const sr = must(await sender.result, 'sender', sender);
    const rr = await Promise.all(rx.map(async (p) => must(await p.result, 'receiver', p)));
    assert.equal(sr.ok, true, JSON.stringify(sr.receivers));
    for (const [k, r] of rr.entries()) {
      assert.equal(r.ok, true, `r${k + 1}: ${r.code} ${r.message}`);
      assert.equal(sha256(join(dir, `r${k + 1}.bin`)), digest, `r${k + 1} is not byte-exact`);
    }
    assert.match(during, /^1\n33554432\n$/, 'reassembly settings while receiving');
    const units = byUnits(sr);
    t.diagnostic(
      `datagrams by units ${JSON.stringify(units)}, pauses ${sr.counters.fragmentationPauses}, ${sr.durationMs} ms`,
    );
    // A 1 s reassembly timeout keeps the datagrams that lost a fragment from filling the
    // kernel's reassembly memory: no pause, and multi-unit datagrams (k = 2 by the 1 % rule, 1
    // when the measured loss runs above 1.25 %) carry a good share of the units.
    assert.equal(sr.counters.fragmentationPauses, 0);
    const inBig = units.reduce((a, n, k) => a + (k >= 2 ? n * k : 0), 0);
    assert.ok(
      inBig > 0.25 * units.reduce((a, n, k) => a + n * k, 0),
      `datagrams by units ${JSON.stringify(units)}`,
    );
    assert.deepEqual([1, 2].map(ipfrag), before, 'the receivers did not restore the reassembly settings');
  },
);

test(
  'kill -9 of one receiver: others finish, it is dropped in time, and resumes from its journal',
  { timeout: 120_000 },
  async (t) => {
    if (skipUnless(t, netnsUnavailable() ?? lossUnavailable())) return;
    const { lab, dir, src, sum } = await setup(t, 3);
    const deadAfterMs = 2000;
    const s = session(lab, { deadAfterMs });
    const sender = runner<SenderResult>(lab, 0, 'send', { file: src, clients: 3, ...s.send });
    const journal = join(dir, 'r2.journal');
    const rx = [1, 2, 3].map((h) =>
      // Checkpoints every 4 MiB (64 MiB by default) so the kill at 30 % finds some journaled.
      receive(
        lab,
        h,
        s.from,
        join(dir, `r${h}.bin`),
        h === 2 ? { journal, journalCheckpointBytes: 4 << 20 } : {},
      ),
    );
    let killedAt = 0;
    let killedChunks = 0;
    let droppedSeenAt = 0;
    const victim = rx[1]!;
    victim.onProgress((p) => {
      if (!killedAt && p.chunks !== undefined && p.totalChunks && p.chunks >= p.totalChunks * 0.3) {
        killedAt = Date.now();
        killedChunks = p.chunks;
        lab.kill9(victim.child);
      }
    });
    sender.onProgress((p) => {
      if (killedAt && !droppedSeenAt && p.receivers?.some((r) => r.name === 'r2' && r.state === 'dropped')) {
        droppedSeenAt = Date.now();
      }
    });
    const sr = must(await sender.result, 'sender', sender);
    assert.ok(killedAt > 0, 'the victim never reached 30 % (nothing to kill)');
    for (const h of [1, 3]) {
      const r = must(await rx[h - 1]!.result, `r${h}`, rx[h - 1]!);
      assert.equal(r.ok, true, `r${h}: ${r.code} ${r.message}`);
      assert.equal(sha256(join(dir, `r${h}.bin`)), sum);
    }
    const r2 = sr.receivers.find((r) => r.name === 'r2');
    assert.equal(r2?.state, 'dropped', JSON.stringify(sr.receivers));
    assert.ok(r2?.reason, 'a drop must carry a reason');
    // Bound from the policy: unresponsive after deadAfterMs; a closed TCP connection is noticed at once.
    // Slack covers the 100 ms progress throttle and a busy 2-CPU machine.
    t.diagnostic(
      `r2 killed after ${killedChunks} chunks; reported dropped ${droppedSeenAt - killedAt} ms later: ${r2?.reason}`,
    );
    assert.ok(droppedSeenAt > 0, 'the sender never reported r2 dropped in its progress');
    assert.ok(
      droppedSeenAt - killedAt <= deadAfterMs + 3000,
      `dropped ${droppedSeenAt - killedAt} ms after kill -9`,
    );

    // Restart with the same journal against a new session of the same file.
    const journaled = readFileSync(journal, 'utf8')
      .split('\n')
      .filter((l) => /^[0-9a-f]{64}$/.test(l)).length;
    assert.ok(journaled > 0, 'the killed receiver journaled nothing');
    const s2 = session(lab, { deadAfterMs });
    const sender2 = runner<SenderResult>(lab, 0, 'send', { file: src, clients: 1, ...s2.send });
    const again = receive(lab, 2, s2.from, join(dir, 'r2.bin'), { journal });
    const sr2 = must(await sender2.result, 'second sender', sender2);
    const rr2 = must(await again.result, 'resumed receiver', again);
    t.diagnostic(
      `resume: journal ${journaled}, had ${rr2.chunksHad}, sender sent ${sr2.counters.chunksSent} of ${sr2.chunks} chunks`,
    );
    assert.equal(rr2.ok, true, `${rr2.code} ${rr2.message}`);
    assert.equal(sha256(join(dir, 'r2.bin')), sum);
    // Chunks written before the kill may have missed the journal (they were in flight); never the reverse.
    assert.ok(rr2.chunksHad >= journaled, `had ${rr2.chunksHad}, journal listed ${journaled}`);
    assert.equal(sr2.counters.chunksSkipped, rr2.chunksHad, 'sender did not skip what the receiver had');
    assert.equal(
      sr2.counters.chunksSent,
      sr2.chunks - rr2.chunksHad,
      'sender sent more than the missing chunks',
    );
  },
);

test(
  'a frozen receiver (SIGSTOP, connection still open) is dropped as unresponsive within deadAfter',
  { timeout: 90_000 },
  async (t) => {
    if (skipUnless(t, netnsUnavailable() ?? lossUnavailable())) return;
    const { lab, dir, src, sum } = await setup(t, 3);
    const deadAfterMs = 2000;
    const s = session(lab, { deadAfterMs });
    const sender = runner<SenderResult>(lab, 0, 'send', { file: src, clients: 3, ...s.send });
    const rx = [1, 2, 3].map((h) => receive(lab, h, s.from, join(dir, `r${h}.bin`)));
    let frozenAt = 0;
    let droppedSeenAt = 0;
    const victim = rx[2]!;
    victim.onProgress((p) => {
      if (!frozenAt && p.chunks !== undefined && p.totalChunks && p.chunks >= p.totalChunks * 0.2) {
        frozenAt = Date.now();
        victim.child.kill('SIGSTOP');
      }
    });
    sender.onProgress((p) => {
      if (frozenAt && !droppedSeenAt && p.receivers?.some((r) => r.name === 'r3' && r.state === 'dropped')) {
        droppedSeenAt = Date.now();
      }
    });
    const sr = must(await sender.result, 'sender', sender);
    lab.kill9(victim.child);
    assert.ok(frozenAt > 0, 'the victim never reached 20 % (nothing to freeze)');
    for (const h of [1, 2]) {
      const r = must(await rx[h - 1]!.result, `r${h}`, rx[h - 1]!);
      assert.equal(r.ok, true, `r${h}: ${r.code} ${r.message}`);
      assert.equal(sha256(join(dir, `r${h}.bin`)), sum);
    }
    const r3 = sr.receivers.find((r) => r.name === 'r3');
    t.diagnostic(`r3 frozen; reported dropped ${droppedSeenAt - frozenAt} ms later: ${r3?.reason}`);
    assert.equal(r3?.state, 'dropped', JSON.stringify(sr.receivers));
    assert.match(r3?.reason ?? '', /unresponsive/);
    assert.ok(droppedSeenAt > 0, 'the sender never reported r3 dropped in its progress');
    // deadAfterMs plus one housekeeping tick, the progress throttle and a busy machine.
    assert.ok(
      droppedSeenAt - frozenAt <= deadAfterMs + 3000,
      `dropped ${droppedSeenAt - frozenAt} ms after SIGSTOP`,
    );
  },
);

test(
  'a receiver at 20 % loss does not hold the others back beyond the drop policy',
  { timeout: 150_000 },
  async (t) => {
    if (skipUnless(t, netnsUnavailable() ?? lossUnavailable())) return;
    const { lab, dir, src, sum } = await setup(t, 3);
    const lagLimitMs = 5000;
    const run = async (lossy: boolean): Promise<{ sr: SenderResult; rr: ReceiverResult[] }> => {
      lab.loss(3, lossy ? 20 : 0);
      const s = session(lab, { lagLimitMs });
      const sender = runner<SenderResult>(lab, 0, 'send', { file: src, clients: 3, ...s.send });
      const rx = [1, 2, 3].map((h) => receive(lab, h, s.from, join(dir, `r${h}-${lossy}.bin`)));
      const sr = must(await sender.result, 'sender', sender);
      const rr = await Promise.all(rx.map(async (p) => must(await p.result, 'receiver', p)));
      return { sr, rr };
    };
    const reasmBefore = reassembly(lab, 1).oks;
    const base = await run(false);
    const slow = await run(true);
    const baseUnits = byUnits(base.sr);
    const slowUnits = byUnits(slow.sr);
    t.diagnostic(
      `datagrams by units: no loss ${JSON.stringify(baseUnits)}, r3 at 20 % ${JSON.stringify(slowUnits)}`,
    );
    // Without loss the sender moves to big datagrams (up to 16 units = 23132 bytes, IP-fragmented
    // on the wire: the receivers' kernels reassembled them) for most of the data...
    // (by units carried; the sender starts at one unit and at most doubles k per decision, and on a
    // busy machine a stray drop halves it, so how long it stays at 16 depends on the machine: quiet
    // runs carry 73 % of the units at 16, CI runs 46-85 % at 8 or more, one with 48 % at 4. What
    // does not depend on the machine: nearly all of it travels fragmented, it reaches 16, and far
    // more of it travels big than when one receiver loses 20 % of its frames.)
    const big = MAX_UNITS;
    const unitsIn = (a: number[], from = 0): number => a.reduce((x, n, k) => (k >= from ? x + n * k : x), 0);
    const shareBig = (a: number[]): number => unitsIn(a, big / 2) / unitsIn(a);
    assert.ok(
      unitsIn(baseUnits, big / 4) > unitsIn(baseUnits) * 0.75,
      `no loss, mostly small datagrams: ${JSON.stringify(baseUnits)}`,
    );
    assert.ok(
      shareBig(baseUnits) > shareBig(slowUnits) + 0.3,
      `no loss ${JSON.stringify(baseUnits)} not bigger than with r3 at 20 % ${JSON.stringify(slowUnits)}`,
    );
    assert.ok(baseUnits[big]! > 0, `no loss, never at ${big} units: ${JSON.stringify(baseUnits)}`);
    assert.ok(reassembly(lab, 1).oks - reasmBefore >= baseUnits[big]! * 0.5, 'r1 reassembled few datagrams');
    // ...and with one receiver losing 20 % of the frames it uses smaller ones most of the time.
    assert.ok(
      unitsIn(slowUnits, big / 2) < unitsIn(slowUnits) * 0.5,
      `r3 at 20 %: ${JSON.stringify(slowUnits)}`,
    );
    for (const h of [1, 2]) {
      assert.equal(slow.rr[h - 1]!.ok, true, `r${h}: ${slow.rr[h - 1]!.message}`);
      assert.equal(sha256(join(dir, `r${h}-true.bin`)), sum);
    }
    const lossy = slow.sr.receivers.find((r) => r.name === 'r3');
    // The lossy one either kept up (then its copy is exact) or was dropped with a reason.
    if (lossy?.state === 'ok') assert.equal(sha256(join(dir, 'r3-true.bin')), sum);
    else assert.match(lossy?.reason ?? '', /too slow|unresponsive/, JSON.stringify(lossy));
    // Stated policy: the rate follows the median receiver, so the good ones may lose the
    // bandwidth the lossy one's repairs take (≤ 2× with one repair per data packet) but no more.
    const goodBase = Math.max(base.rr[0]!.durationMs, base.rr[1]!.durationMs);
    const goodSlow = Math.max(slow.rr[0]!.durationMs, slow.rr[1]!.durationMs);
    t.diagnostic(
      `good receivers ${goodBase} ms baseline, ${goodSlow} ms with r3 at 20 %; sender ${slow.sr.durationMs} ms; r3 ${lossy?.state}: ${lossy?.reason}`,
    );
    assert.ok(
      goodSlow <= goodBase * 2.5 + 2000,
      `good receivers took ${goodSlow} ms vs ${goodBase} ms baseline`,
    );
    // And the sender did not keep the session open past the lag limit for the lossy one.
    assert.ok(
      slow.sr.durationMs <= goodSlow + lagLimitMs + 3000,
      `sender ran ${slow.sr.durationMs} ms, good receivers were done after ${goodSlow} ms`,
    );
  },
);

test(
  'garbage and forged packets at the data and control ports: no crash, exact bytes, counted',
  { timeout: 120_000 },
  async (t) => {
    if (skipUnless(t, netnsUnavailable() ?? lossUnavailable())) return;
    const { lab, dir, src, sum } = await setup(t, 4);
    const s = session(lab);
    const sender = runner<SenderResult>(lab, 0, 'send', { file: src, clients: 3, ...s.send });
    const rx = [1, 2, 3].map((h) => receive(lab, h, s.from, join(dir, `r${h}.bin`)));
    const send = s.send as { group: string; port: number };
    const spray = lab.exec(
      4,
      NODE,
      [
        SPRAY,
        JSON.stringify({
          group: send.group,
          dataPort: send.port + 1,
          controlHost: lab.addr(0),
          controlPort: send.port,
          iface: lab.addr(4),
        }),
      ],
      { cwd: ROOT },
    );
    let sprayOut = '';
    spray.stdout?.setEncoding('utf8').on('data', (d: string) => (sprayOut += d));
    const sprayDone = new Promise((res) => spray.on('close', res));
    const sr = must(await sender.result, 'sender', sender);
    const rr = await Promise.all(rx.map(async (p) => must(await p.result, 'receiver', p)));
    spray.kill('SIGTERM');
    await sprayDone;
    const sent = JSON.parse(/SPRAYED (.*)/.exec(sprayOut)?.[1] ?? '{}') as Record<string, number | boolean>;
    assert.equal(sent.learnedNonce, true, `the sprayer never saw a data packet: ${sprayOut}`);
    assert.ok((sent.wrongPayload as number) > 0 && (sent.control as number) > 0, sprayOut);
    for (const [k, r] of rr.entries()) {
      assert.equal(r.ok, true, `r${k + 1}: ${r.code} ${r.message}`);
      assert.equal(
        sha256(join(dir, `r${k + 1}.bin`)),
        sum,
        `r${k + 1} wrote bytes that are not the source's`,
      );
    }
    const total = (f: string): number => rr.reduce((n, r) => n + (r.counters[f] ?? 0), 0);
    t.diagnostic(
      `sprayed ${JSON.stringify(sent)}; receivers counted stray ${total('stray')}, forged ${total('forged')}, rejected chunks ${total('rejectedChunks')}; sender controlRejected ${sr.counters.controlRejected}`,
    );
    assert.ok(total('stray') > 0, `no stray packets counted: ${JSON.stringify(rr.map((r) => r.counters))}`);
    assert.ok(total('forged') > 0, `no forged packets counted: ${JSON.stringify(rr.map((r) => r.counters))}`);
    assert.ok(
      sr.counters.controlRejected! > 0,
      `junk control connections not counted: ${JSON.stringify(sr.counters)}`,
    );
    for (const name of ['r1', 'r2', 'r3']) {
      assert.equal(sr.receivers.find((r) => r.name === name)?.state, 'ok', JSON.stringify(sr.receivers));
    }
  },
);
