/**
 * Kernel tuning with real /proc/sys writes, but only to per-namespace settings (net.ipv4.ipfrag_*)
 * inside throwaway network namespaces, so the host's settings are never changed and parallel runs
 * do not meet. The tunings are held by kernel-tuning-driver.ts processes inside the namespace.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  statSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { test, type TestContext } from 'node:test';
import { type SysctlWant, type Tuning, tuneKernel } from '../../src/transport/kernel-tuning.ts';
import { TransportError } from '../../src/transport/errors.ts';
import { netnsUnavailable, skipUnless, tempDir } from '../helpers/env.ts';

const DRIVER = join(import.meta.dirname, 'kernel-tuning-driver.ts');
const TIME = 'net.ipv4.ipfrag_time';
const HIGH = 'net.ipv4.ipfrag_high_thresh';
const RMEM = 'net.core.rmem_max';
const WANTS: SysctlWant[] = [
  { name: TIME, value: 1, perNamespace: true },
  { name: HIGH, atLeast: 32 << 20, perNamespace: true },
];

type Reply = Record<string, unknown> & { error?: { code?: string; message: string }; log: string[] };
type TuneReply = Pick<Tuning, 'applied' | 'satisfied' | 'refused'> & { log: string[] };

/** One kernel-tuning-driver.ts process inside a namespace; calls are answered in order. */
class Driver {
  readonly child: ChildProcess;
  #waiting: Array<(r: Reply) => void> = [];
  /** Rejects when the driver exits, so a call to a driver that died fails instead of hanging. */
  readonly #exited: Promise<never>;
  readonly ready: Promise<Reply>;

  constructor(ns: string, stateDir: string) {
    const args = ['netns', 'exec', ns, process.execPath, DRIVER, stateDir, readlinkSync('/proc/self/ns/net')];
    this.child = spawn('ip', args, { stdio: ['pipe', 'pipe', 'inherit'] });
    this.#exited = new Promise<never>((_, reject) =>
      this.child.on('exit', (code, sig) => reject(new Error(`driver exited (${code ?? sig})`))),
    );
    this.#exited.catch(() => {});
    createInterface({ input: this.child.stdout! }).on('line', (l) => this.#waiting.shift()?.(JSON.parse(l)));
    this.ready = Promise.race([new Promise<Reply>((r) => this.#waiting.push(r)), this.#exited]);
  }

  async call(cmd: Record<string, unknown>): Promise<Reply> {
    await this.ready;
    const reply = new Promise<Reply>((r) => this.#waiting.push(r));
    this.child.stdin!.write(`${JSON.stringify(cmd)}\n`);
    return Promise.race([reply, this.#exited]);
  }

  /** Like call, but fails the test on an error reply. */
  async ok(cmd: Record<string, unknown>): Promise<Reply> {
    const r = await this.call(cmd);
    assert.equal(r.error, undefined, `${JSON.stringify(cmd)}: ${JSON.stringify(r.error)}`);
    return r;
  }

  async read(name: string): Promise<number> {
    return (await this.ok({ op: 'read', name })).value as number;
  }

  async tune(id: string, wants = WANTS): Promise<TuneReply> {
    return (await this.ok({ op: 'tune', id, wants })) as unknown as TuneReply;
  }

  async kill(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const gone = new Promise((r) => this.child.once('exit', r));
    this.child.kill('SIGKILL');
    await gone;
  }
}

/**
 * Runs `body` with `count` fresh namespaces and one state directory, then kills every driver
 * it started and deletes the namespaces, however it ends.
 */
async function inNamespaces(
  t: TestContext,
  count: number,
  body: (start: (i?: number) => Driver, stateDir: string, names: string[]) => Promise<void>,
): Promise<void> {
  const stateDir = join(await tempDir(t, 'imgcast-kt-'), 'state');
  const names: string[] = [];
  const drivers: Driver[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const name = `imgkt${randomBytes(4).toString('hex')}`;
      execFileSync('ip', ['netns', 'add', name], { stdio: 'pipe' });
      names.push(name);
    }
    const start = (i = 0): Driver => {
      const d = new Driver(names[i] as string, stateDir);
      drivers.push(d);
      return d;
    };
    await body(start, stateDir, names);
  } finally {
    await Promise.all(drivers.map((d) => d.kill()));
    for (const name of names) execFileSync('ip', ['netns', 'del', name], { stdio: 'pipe' });
  }
}

const stateFiles = (dir: string): string[] => {
  try {
    return readdirSync(dir).sort();
  } catch {
    return [];
  }
};

const netnsSkip = netnsUnavailable();

/** Start time (field 22 of /proc/PID/stat) of this test process, as a lock owner record holds it. */
function myStart(): number {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
}

/** A lock directory as the module makes it: the owner record inside, its age set through its mtime. */
function makeLock(dir: string, pid: number, start: number, ageMs: number): void {
  const lock = join(dir, '.lock');
  mkdirSync(lock);
  writeFileSync(join(lock, 'owner'), JSON.stringify({ pid, start }));
  const when = (Date.now() - ageMs) / 1000;
  utimesSync(lock, when, when);
}

test('a tuning applies, release restores the original, a second release is harmless', async (t) => {
  if (skipUnless(t, netnsSkip)) return;
  await inNamespaces(t, 1, async (start, dir) => {
    const d = start();
    const [time0, high0] = [await d.read(TIME), await d.read(HIGH)];
    assert.notEqual(time0, 1, 'a fresh namespace has the default reassembly timeout');
    const r = await d.tune('a');
    assert.deepEqual(r.applied, [
      { name: TIME, from: time0, to: 1, shared: false },
      { name: HIGH, from: high0, to: 32 << 20, shared: false },
    ]);
    assert.deepEqual([r.refused, r.satisfied], [[], []]);
    assert.equal(await d.read(TIME), 1);
    assert.equal(await d.read(HIGH), 32 << 20);
    assert.equal(stateFiles(dir).length, 2, 'one state file per setting');

    await d.ok({ op: 'release', id: 'a' });
    assert.equal(await d.read(TIME), time0);
    assert.equal(await d.read(HIGH), high0);
    assert.deepEqual(stateFiles(dir), []);

    // A second release of an old tuning must not take away a newer holder's hold.
    await d.tune('b');
    const again = await d.ok({ op: 'release', id: 'a' });
    assert.deepEqual(again.log, []);
    assert.equal(await d.read(TIME), 1);
    await d.ok({ op: 'release', id: 'b' });
    await d.ok({ op: 'release', id: 'b' });
    assert.equal(await d.read(TIME), time0);
    assert.deepEqual(stateFiles(dir), []);

    // Already as wanted: nothing held, nothing to restore.
    const sat = await d.tune('c', [{ name: TIME, atLeast: 1, perNamespace: true }]);
    assert.deepEqual(sat.satisfied, [{ name: TIME, value: time0 }]);
    assert.deepEqual(stateFiles(dir), []);
  });
});

test('a second holder shares the tuning; the value comes back only when the last one releases', async (t) => {
  if (skipUnless(t, netnsSkip)) return;
  await inNamespaces(t, 1, async (start, dir) => {
    const [a, b] = [start(), start()];
    const time0 = await a.read(TIME);
    assert.equal((await a.tune('a')).applied[0]?.shared, false);
    const rb = await b.tune('b');
    assert.deepEqual(rb.applied[0], { name: TIME, from: time0, to: 1, shared: true });
    // A second hold in the same process counts as its own holder.
    assert.equal((await b.tune('b2')).applied[0]?.shared, true);

    await a.ok({ op: 'release', id: 'a' });
    assert.equal(await b.read(TIME), 1, 'still held by b');
    await b.ok({ op: 'release', id: 'b' });
    assert.equal(await b.read(TIME), 1, 'still held by b2');
    await b.ok({ op: 'release', id: 'b2' });
    assert.equal(await b.read(TIME), time0);
    assert.deepEqual(stateFiles(dir), []);
  });
});

test('three receivers starting at once save the true original and restore it after the last', async (t) => {
  if (skipUnless(t, netnsSkip)) return;
  await inNamespaces(t, 1, async (start, dir) => {
    const ds = [start(), start(), start()];
    await Promise.all(ds.map((d) => d.ready));
    const [time0, high0] = [await ds[0]!.read(TIME), await ds[0]!.read(HIGH)];
    const rs = await Promise.all(ds.map((d, i) => d.tune(`r${i}`)));
    for (const name of [TIME, HIGH]) {
      const mine = rs.map((r) => r.applied.find((a) => a.name === name)!);
      assert.equal(mine.filter((a) => !a.shared).length, 1, `${name}: exactly one receiver changed it`);
      assert.deepEqual(new Set(mine.map((a) => a.from)), new Set([name === TIME ? time0 : high0]));
    }
    await Promise.all(ds.map((d, i) => d.ok({ op: 'release', id: `r${i}` })));
    assert.equal(await ds[0]!.read(TIME), time0);
    assert.equal(await ds[0]!.read(HIGH), high0);
    assert.deepEqual(stateFiles(dir), []);

    // Many overlapping tune/release rounds: the lock keeps the state consistent throughout.
    const cycles = await Promise.all(ds.map((d) => d.ok({ op: 'cycle', wants: WANTS, count: 40 })));
    // 3 x 40 rounds of 2 settings: fewer first changes than 240 means rounds did overlap.
    const firsts = cycles.reduce((n, c) => n + (c.first as number), 0);
    assert.ok(firsts < 240, `no round overlapped another (${firsts} first changes)`);
    assert.equal(await ds[0]!.read(TIME), time0);
    assert.equal(await ds[0]!.read(HIGH), high0);
    assert.deepEqual(stateFiles(dir), []);
  });
});

test('a holder killed with SIGKILL is undone by the next tuneKernel or recoverKernelSettings', async (t) => {
  if (skipUnless(t, netnsSkip)) return;
  await inNamespaces(t, 1, async (start, dir) => {
    const a = start();
    const time0 = await a.read(TIME);
    await a.tune('a');
    await a.kill();
    const b = start();
    assert.equal(await b.read(TIME), 1, 'the killed holder left its change');
    const rec = await b.ok({ op: 'recover' });
    assert.deepEqual(new Set(rec.restored as string[]), new Set([TIME, HIGH]));
    assert.equal(await b.read(TIME), time0);
    assert.deepEqual(stateFiles(dir), []);

    // The next tuneKernel recovers too, even of settings it does not want itself.
    const c = start();
    await c.tune('c', [WANTS[0]!]);
    await c.kill();
    const r = await b.ok({ op: 'tune', id: 'b', wants: [WANTS[1]!] });
    assert.ok(
      (r.log as string[]).some((l) => l.includes(`${TIME} restored`) && l.includes('receiver that is gone')),
      r.log.join('\n'),
    );
    assert.equal(await b.read(TIME), time0);
    await b.ok({ op: 'release', id: 'b' });
    assert.deepEqual(stateFiles(dir), []);

    // A dead holder next to a live one: only the dead one is dropped.
    const [d, e] = [start(), start()];
    await d.tune('d');
    await e.tune('e');
    await d.kill();
    assert.deepEqual((await b.ok({ op: 'recover' })).restored, []);
    assert.equal(await b.read(TIME), 1);
    await e.ok({ op: 'release', id: 'e' });
    assert.equal(await b.read(TIME), time0);
    assert.deepEqual(stateFiles(dir), []);
  });
});

test('a recycled pid is no holder, and state from an earlier boot is dropped without a write', async (t) => {
  if (skipUnless(t, netnsSkip)) return;
  await inNamespaces(t, 1, async (start, dir) => {
    const d = start();
    const time0 = await d.read(TIME);
    const edit = (f: (s: { boot: string; holders: Array<{ start: number }> }) => void): void => {
      const path = join(
        dir,
        stateFiles(dir).find((n) => n.startsWith(`${TIME}@`))!,
      );
      const s = JSON.parse(readFileSync(path, 'utf8')) as never;
      f(s);
      writeFileSync(path, JSON.stringify(s));
    };
    // The holder's pid is alive (the driver itself), but its start time says it is another process.
    await d.tune('a', [WANTS[0]!]);
    edit((s) => (s.holders[0]!.start += 1));
    assert.deepEqual((await d.ok({ op: 'recover' })).restored, [TIME]);
    assert.equal(await d.read(TIME), time0);

    await d.tune('b', [WANTS[0]!]);
    edit((s) => (s.boot = 'another boot'));
    const r = await d.ok({ op: 'recover' });
    assert.deepEqual(r.restored, []);
    assert.equal(await d.read(TIME), 1, 'nothing written for a state file of another boot');
    assert.deepEqual(stateFiles(dir), []);
  });
});

test('a value changed by someone else meanwhile is left alone at release', async (t) => {
  if (skipUnless(t, netnsSkip)) return;
  await inNamespaces(t, 1, async (start, dir) => {
    const d = start();
    await d.tune('a', [WANTS[0]!]);
    await d.ok({ op: 'write', name: TIME, value: 7 });
    const r = await d.ok({ op: 'release', id: 'a' });
    assert.equal(await d.read(TIME), 7);
    assert.ok(
      r.log.some((l) => l.includes('which imgcast did not set')),
      r.log.join('\n'),
    );
    assert.deepEqual(stateFiles(dir), []);
  });
});

test('net.core.rmem_max inside a namespace is refused with a reason and leaves no state', async (t) => {
  if (skipUnless(t, netnsSkip)) return;
  await inNamespaces(t, 1, async (start, dir, [ns]) => {
    // Guard for the host: on a kernel where rmem_max is writable inside a namespace this would change it.
    const stat = ['netns', 'exec', ns!, 'stat', '-c', '%a', '/proc/sys/net/core/rmem_max'];
    const mode = execFileSync('ip', stat, { encoding: 'utf8' }).trim();
    if (!/^[0-7]?[45][45][45]$/.test(mode)) {
      t.skip(`rmem_max is writable inside a namespace here (mode ${mode}); not risking the host's value`);
      return;
    }
    const d = start();
    const rmem = await d.read(RMEM);
    const r = await d.tune('a', [{ name: RMEM, atLeast: rmem + 4096, perNamespace: false }, WANTS[0]!]);
    assert.deepEqual(
      r.applied.map((a) => a.name),
      [TIME],
    );
    assert.equal(r.refused.length, 1);
    assert.equal(r.refused[0]!.name, RMEM);
    assert.match(
      String(r.refused[0]!.reason),
      /net\.core\.rmem_max is read-only here \(inside a network namespace/,
    );
    assert.deepEqual(stateFiles(dir), [`${TIME}@${(await d.ok({ op: 'ns' })).ns}.json`]);
    await d.ok({ op: 'release', id: 'a' });
    await d.ok({ op: 'release', id: 'a' });
    assert.equal(await d.read(RMEM), rmem);
    assert.deepEqual(stateFiles(dir), []);
  });
});

test('a release that cannot get the lock gives up without throwing; recovery finishes it', async (t) => {
  if (skipUnless(t, netnsSkip)) return;
  await inNamespaces(t, 1, async (start, dir) => {
    const d = start();
    const time0 = await d.read(TIME);
    await d.ok({ op: 'tune', id: 'a', wants: [WANTS[0]!], lockWaitMs: 150 });
    makeLock(dir, process.pid, myStart(), 0);
    const r = await d.ok({ op: 'release', id: 'a' });
    assert.ok(
      r.log.some((l) => l.includes('not released now')),
      r.log.join('\n'),
    );
    execFileSync('rm', ['-r', join(dir, '.lock')]);
    assert.equal(await d.read(TIME), 1, 'still held');
    await d.ok({ op: 'release', id: 'a' }); // already released: does not try again
    assert.equal(await d.read(TIME), 1);
    await d.kill();
    const e = start();
    assert.deepEqual((await e.ok({ op: 'recover' })).restored, [TIME]);
    assert.equal(await e.read(TIME), time0);
  });
});

test("another namespace's state is left alone", async (t) => {
  if (skipUnless(t, netnsSkip)) return;
  await inNamespaces(t, 2, async (start, dir) => {
    const [a, other] = [start(0), start(1)];
    const time0 = await a.read(TIME);
    await a.tune('a', [WANTS[0]!]);
    await a.kill();
    assert.deepEqual((await other.ok({ op: 'recover' })).restored, []);
    assert.equal(stateFiles(dir).length, 1);
    assert.equal(await other.read(TIME), time0, 'the other namespace has its own value');
    const b = start(0);
    assert.equal(await b.read(TIME), 1);
    assert.deepEqual((await b.ok({ op: 'recover' })).restored, [TIME]);
    assert.equal(await b.read(TIME), time0);
  });
});

test('the state lock: a live holder makes others wait, a dead one is broken once stale', async (t) => {
  // No /proc/sys writes: an empty want list only takes the lock and recovers (nothing to recover).
  const dir = await tempDir(t, 'imgcast-kt-');
  const lock = join(dir, '.lock');
  const timesOut = (): void =>
    assert.throws(
      () => tuneKernel([], { stateDir: dir, lockWaitMs: 150 }),
      (e) => e instanceof TransportError && e.code === 'E_TUNING' && /stayed locked by pid/.test(e.message),
    );

  makeLock(dir, process.pid, myStart(), 60_000);
  timesOut(); // a live owner, however old
  execFileSync('rm', ['-r', lock]);

  // Whatever process has this pid, if any, did not start 1 tick after boot.
  const deadPid = 0x3fffff;
  makeLock(dir, deadPid, 1, 0);
  timesOut(); // dead but fresh: its owner may have just written it
  execFileSync('rm', ['-r', lock]);

  makeLock(dir, deadPid, 1, 20_000);
  tuneKernel([], { stateDir: dir, lockWaitMs: 150 }).release();
  assert.throws(() => statSync(lock), { code: 'ENOENT' });
  assert.deepEqual(stateFiles(dir), []);
});

test('malformed wants are usage bugs: TransportError E_TUNING before anything is touched', () => {
  for (const bad of [
    { name: 'net/core/rmem_max', atLeast: 1, perNamespace: false },
    { name: TIME, perNamespace: true },
    { name: TIME, value: 1, atLeast: 1, perNamespace: true },
    { name: TIME, value: 1.5, perNamespace: true },
  ]) {
    assert.throws(
      () => tuneKernel([bad], { stateDir: '/nonexistent/never-made' }),
      (e) => e instanceof TransportError && e.code === 'E_TUNING',
      JSON.stringify(bad),
    );
  }
  assert.throws(() => tuneKernel([WANTS[0]!, WANTS[0]!], { stateDir: '/nonexistent/never-made' }), {
    code: 'E_TUNING',
  });
});
