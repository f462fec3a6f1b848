/**
 * Capability probes for tests that need root, loop devices, namespaces or a command.
 * Tests call these and skip with the returned reason, so a machine without them
 * still runs everything else and says plainly what it skipped.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';

export function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

export function hasCommand(name: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' }).status === 0;
}

let loopCache: string | undefined | null = null;
/** Why loop devices cannot be used here, or undefined when they can. */
export function loopUnavailable(): string | undefined {
  if (loopCache !== null) return loopCache;
  if (!isRoot()) return (loopCache = 'needs root for loop devices');
  for (const c of ['losetup', 'mkfs.ext4', 'mkfs.vfat', 'sgdisk', 'mount', 'blkid']) {
    if (!hasCommand(c)) return (loopCache = `needs ${c}`);
  }
  try {
    execFileSync('losetup', ['-f'], { stdio: 'pipe' });
  } catch {
    return (loopCache = 'no free loop device (losetup -f failed)');
  }
  return (loopCache = undefined);
}

let netnsCache: string | undefined | null = null;
/** Why network namespaces cannot be used here, or undefined when they can. */
export function netnsUnavailable(): string | undefined {
  if (netnsCache !== null) return netnsCache;
  if (!isRoot()) return (netnsCache = 'needs root for network namespaces');
  if (!hasCommand('ip')) return (netnsCache = 'needs iproute2');
  const probe = `imgcast-probe-${process.pid}`;
  const add = spawnSync('ip', ['netns', 'add', probe], { stdio: 'ignore' });
  if (add.status !== 0) return (netnsCache = 'cannot create network namespaces here');
  spawnSync('ip', ['netns', 'del', probe], { stdio: 'ignore' });
  return (netnsCache = undefined);
}

/** Skips the test (with the reason shown by the runner) when `reason` is set; returns true if skipped. */
export function skipUnless(t: TestContext, reason: string | undefined): boolean {
  if (reason) {
    t.skip(reason);
    return true;
  }
  return false;
}

/** A fresh temporary directory removed when the test ends. */
export async function tempDir(t: TestContext, prefix = 'imgcast-test-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * Sets a kernel setting (`net.core.rmem_max` style name, written under /proc/sys) for the
 * rest of the test, and puts the previous value back when the test ends, failed or not (and
 * at process exit, should the test runner never get there) — unless something else changed
 * it meanwhile, whose value is then left alone. Needs root. Returns the previous value. Such
 * settings are global (namespaces read net.core.rmem_max from the host): tests that set one
 * must not run beside each other, and `sysctlNow` tells whether it still holds.
 */
export function setSysctl(t: TestContext, name: string, value: string | number): string {
  const previous = sysctlNow(name);
  const mine = String(value);
  let restored = false;
  const restore = (): void => {
    if (restored) return;
    restored = true;
    process.off('exit', restore);
    if (sysctlNow(name) === mine) writeFileSync(sysctlPath(name), `${previous}\n`);
  };
  process.on('exit', restore);
  writeFileSync(sysctlPath(name), `${mine}\n`);
  t.after(restore);
  return previous;
}

/** The current value of a kernel setting such as `net.core.rmem_max`. */
export function sysctlNow(name: string): string {
  return readFileSync(sysctlPath(name), 'utf8').trim();
}

function sysctlPath(name: string): string {
  return `/proc/sys/${name.replaceAll('.', '/')}`;
}
