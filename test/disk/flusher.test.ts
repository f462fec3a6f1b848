import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { Flusher } from '../../src/disk/flusher.ts';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function gone(pid: number): Promise<boolean> {
  for (let i = 0; i < 100 && alive(pid); i++) await sleep(20);
  return !alive(pid);
}

test('Flusher runs sync -f on a folder, many times through one shell, answering each flush in turn', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'imgcast-flusher-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const f = new Flusher(['-f', dir]).start();
  const pid = f.pid;
  assert.ok(pid !== undefined);
  const results = await Promise.all(Array.from({ length: 5 }, () => f.run()));
  assert.deepEqual(
    results.map((r) => r.status),
    [0, 0, 0, 0, 0],
  );
  assert.equal((await f.run()).status, 0);
  assert.equal(f.pid, pid, 'the same shell served every flush');
  f.close();
  assert.ok(await gone(pid), 'the shell ends once closed');
  await assert.rejects(f.run(), { code: 'E_DISK_COMMAND', message: /closed/ });
});

test("Flusher reports sync's failure with its status and message", async () => {
  const f = new Flusher(['-f', '/nonexistent/imgcast-flusher-test']);
  const r = await f.run();
  f.close();
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /nonexistent\/imgcast-flusher-test/);
  assert.doesNotMatch(r.stderr, /\n/);
});

test('Flusher starts a new shell when its shell was killed, and a flush under way when it died is refused, not left hanging', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'imgcast-flusher-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const f = new Flusher(['-f', dir]).start();
  const first = f.pid!;
  // Stopped, so the flush asked next cannot be answered before the kill.
  process.kill(first, 'SIGSTOP');
  const pending = f.run();
  process.kill(first, 'SIGKILL');
  await assert.rejects(pending, {
    code: 'E_DISK_COMMAND',
    message: /sync -f .*: its shell ended \(SIGKILL\)/,
  });
  assert.equal((await f.run()).status, 0);
  assert.notEqual(f.pid, first);
  f.close();
});

test('an idle Flusher nobody closed does not keep a process from exiting', () => {
  const code = [
    `import { Flusher } from ${JSON.stringify(new URL('../../src/disk/flusher.ts', import.meta.url).href)};`,
    `const f = new Flusher(['-f', '/tmp']).start();`,
    `const r = await f.run();`,
    `console.log('flushed', r.status, typeof f.pid);`,
  ].join('\n');
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', code], {
    encoding: 'utf8',
    timeout: 20_000,
  });
  assert.equal(out.trim(), 'flushed 0 number');
});
