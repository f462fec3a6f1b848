/**
 * `img receive` stopped at any moment leaves the system as it found it (issue #13 items 2 and
 * 3): after SIGINT or SIGTERM at once, after SIGKILL by the next receive. Checked: the kernel
 * settings it raises, the mounts and loop devices of the disk it restores, and the mount
 * folders. Real processes, real multicast on loopback, a real MBR disk with ext4 partitions.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { isRoot, loopUnavailable, skipUnless, tempDir } from '../helpers/env.ts';
import { mbrExtDisk, MiB, sparse } from '../engine/disk-fixtures.ts';

const IMG = new URL('../../src/cli/img.ts', import.meta.url).pathname;
const IMGCAST = new URL('../../src/cli/imgcast.ts', import.meta.url).pathname;
const SYSCTLS = ['net/core/rmem_max', 'net/ipv4/ipfrag_time', 'net/ipv4/ipfrag_high_thresh'];

interface SystemState {
  sysctls: string[];
  mounts: string[];
  folders: string[];
}

function state(): SystemState {
  const mountDir = '/run/imgcast-mounts';
  return {
    sysctls: SYSCTLS.map((s) => readFileSync(`/proc/sys/${s}`, 'utf8').trim()),
    mounts: readFileSync('/proc/self/mounts', 'utf8')
      .split('\n')
      .filter((l) => l.includes(`${mountDir}/`)),
    folders: existsSync(mountDir) ? readdirSync(mountDir).sort() : [],
  };
}

function loopsOf(file: string): string {
  return execFileSync('losetup', ['-j', file], { encoding: 'utf8' }).trim();
}

function start(
  script: string,
  args: string[],
): { child: ChildProcess; done: Promise<number | null>; err: () => string } {
  const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr?.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
  const done = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
  return { child, done, err: () => err };
}

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function session(t: TestContext) {
  const dir = await tempDir(t);
  const { image } = await mbrExtDisk(dir, { dataBytes: 24 * MiB });
  const target = await sparse(join(dir, 'target.img'), 64 * MiB);
  const port = 20000 + 2 * Math.floor(Math.random() * 6000);
  const group = `239.255.${1 + Math.floor(Math.random() * 250)}.${1 + Math.floor(Math.random() * 250)}`;
  const send = (rate?: string) =>
    start(IMGCAST, [
      'send',
      image,
      ...['--clients', '1', '--interface', '127.0.0.1', '--port', `${port}`, '--group', group],
      ...(rate ? ['--rate', rate] : []),
    ]);
  const receive = () =>
    start(IMG, ['receive', '--from', `127.0.0.1:${port}`, '--to', target, '--interface', '127.0.0.1', '-v']);
  return { dir, target, send, receive };
}

const skip = (t: TestContext): boolean =>
  skipUnless(t, isRoot() ? loopUnavailable() : 'needs root (kernel settings, loop devices, mounts)');

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  test(`img receive stopped with ${signal} mid-restore puts back kernel settings, mounts, loop devices and folders`, async (t) => {
    if (skip(t)) return;
    // Settings that a receive changes: start from the kernel's defaults so the change is visible.
    const before = state();
    const s = await session(t);
    const sender = s.send('20');
    t.after(() => sender.child.kill('SIGKILL'));
    const rx = s.receive();
    t.after(() => rx.child.kill('SIGKILL'));
    // Mid-restore: the target's partitions are attached and the session's data is flowing.
    await until(
      () => loopsOf(s.target) !== '' && /joined session/.test(rx.err()),
      20_000,
      'the restore to start',
    );
    await new Promise((r) => setTimeout(r, 1500));
    rx.child.kill(signal);
    const code = await rx.done;
    assert.equal(code, signal === 'SIGINT' ? 130 : 143, rx.err());
    assert.match(rx.err(), /E_INTERRUPTED/);
    assert.deepEqual(state(), before, 'the receive left the system changed');
    assert.equal(loopsOf(s.target), '', 'a loop device is still attached to the target');
  });
}

test('img receive killed with SIGKILL mid-restore: the next receive puts everything back and resumes', async (t) => {
  if (skip(t)) return;
  const before = state();
  const s = await session(t);
  let sender = s.send('20');
  t.after(() => sender.child.kill('SIGKILL'));
  const first = s.receive();
  t.after(() => first.child.kill('SIGKILL'));
  // Killed once the journal names a chunk written for good, so the next receive has something to resume.
  const journal = `${s.target}.imgcast-journal`;
  const journaled = (): boolean =>
    existsSync(journal) && /^[0-9a-f]{64}$/m.test(readFileSync(journal, 'utf8'));
  await until(() => loopsOf(s.target) !== '' && journaled(), 30_000, 'a journaled chunk');
  first.child.kill('SIGKILL');
  await first.done;
  sender.child.kill('SIGKILL');
  await sender.done;
  // What a crash leaves (the test would pass trivially if the receive had changed nothing).
  const left = state();
  assert.notDeepEqual(left.sysctls, before.sysctls, 'the killed receive had not raised its settings');

  sender = s.send();
  const second = s.receive();
  t.after(() => second.child.kill('SIGKILL'));
  assert.equal(await second.done, 0, second.err());
  assert.match(second.err(), /restored .* -> .*\(left changed by a receiver that is gone\)/);
  assert.match(second.err(), /resuming an interrupted restore/);
  assert.equal(await sender.done, 0);
  assert.deepEqual(state(), before, 'the system is not as it was before the killed receive');
  assert.equal(loopsOf(s.target), '');
});
