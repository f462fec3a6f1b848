/**
 * thread-priority.ts on this kernel: the thread id is the kernel's, a nice value set through it
 * shows in /proc for that thread only, and a refusal is an outcome, not a throw. Each check
 * runs in a child process, so the test runner's own threads keep their priority.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';

const moduleUrl = new URL('../../src/transport/thread-priority.ts', import.meta.url).href;
const helperUrl = new URL('../helpers/thread-nice.ts', import.meta.url).href;

/**
 * Runs `body` (an ES module's text, with the module imported as `tp`, and tp.threadNice from the
 * test helper) in a child node and parses
 * what it prints; `asUser` runs it as that uid (through setpriv, which needs root).
 */
function inChild(body: string, asUser?: number): unknown {
  const src =
    `import * as priority from ${JSON.stringify(moduleUrl)};\n` +
    `import { threadNice } from ${JSON.stringify(helperUrl)};\n` +
    `const tp = { ...priority, threadNice };\n${body}`;
  const node = [process.execPath, '--input-type=module', '-e', src];
  const argv =
    asUser === undefined
      ? node
      : ['setpriv', `--reuid=${asUser}`, `--regid=${asUser}`, '--clear-groups', ...node];
  const out = execFileSync(argv[0] as string, argv.slice(1), { encoding: 'utf8' });
  return JSON.parse(out);
}

test('the main thread id is the process id, and its nice value reads back from /proc', () => {
  const r = inChild(`
    import { getPriority } from 'node:os';
    const tid = tp.currentThreadId();
    console.log(JSON.stringify({ tid, pid: process.pid, nice: tp.threadNice(tid), os: getPriority(tid) }));
  `) as { tid: number; pid: number; nice: number; os: number };
  assert.equal(r.tid, r.pid);
  assert.equal(r.nice, r.os);
});

test('a lowered priority applies to the calling thread only, and shows in /proc', () => {
  // Raising the nice value (running later) needs no privilege, so this runs as any user.
  const r = inChild(`
    import { readdirSync } from 'node:fs';
    const me = tp.currentThreadId();
    const before = tp.threadNice(me);
    const outcome = tp.raiseThreadPriority(before + 3);
    // V8's and libuv's threads of the same process.
    const others = readdirSync('/proc/self/task').map(Number).filter((t) => t !== me).map((t) => tp.threadNice(t));
    console.log(JSON.stringify({ before, outcome, after: tp.threadNice(me), others }));
  `) as { before: number; outcome: { raised: boolean; nice: number }; after: number; others: number[] };
  assert.deepEqual(r.outcome, { raised: true, nice: r.before + 3 });
  assert.equal(r.after, r.before + 3);
  assert.ok(r.others.length > 0, 'the child has other threads to compare with');
  assert.deepEqual(
    r.others,
    r.others.map(() => r.before),
    'the other threads kept their priority',
  );
});

test('a raise that is not allowed is reported with its reason, not thrown', () => {
  // As root the child drops to nobody (65534), where a negative nice value is refused.
  const r = inChild(
    `console.log(JSON.stringify(tp.raiseThreadPriority(-10)));`,
    process.getuid?.() === 0 ? 65534 : undefined,
  ) as { raised: boolean; reason: string };
  assert.equal(r.raised, false);
  assert.match(r.reason, /needs root/);
});
