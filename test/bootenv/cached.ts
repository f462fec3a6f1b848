/**
 * The imaging environment the tests boot, built once and cached between runs (a build takes
 * about two minutes: apt downloads, zstd -19) under CACHE_ROOT/bootenv-<hash>, where the hash
 * covers everything that decides its content: imgcast's bin/ and src/ (the environment carries
 * them), package-lock.json, and the kernel package apt would download today. Built in a
 * `.partial-PID` folder renamed into place when complete, so a killed build leaves no entry;
 * builds of other hashes are removed by the next build (each holds ~50 MB).
 *
 * Run this file to build (or find) it and print where it is: node test/bootenv/cached.ts
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

import { BOOTENV_FILES, PROJECT_ROOT, buildBootenv, type BootenvInfo } from '../../src/bootenv/build.ts';
import { hasCommand, isRoot } from '../helpers/env.ts';
import { CACHE_ROOT } from '../boot/reference-disk.ts';

export interface CachedBootenv {
  dir: string;
  kernel: string;
  initrd: string;
  info: BootenvInfo;
  /** True when found in the cache, false when this run built it. */
  cached: boolean;
  buildSeconds?: number;
}

/** Why the environment can be neither found nor built here, or undefined. */
export function bootenvUnavailable(): string | undefined {
  if (!isRoot()) return 'needs root';
  for (const [c, pkg] of [
    ['apt-get', 'apt'],
    ['dpkg-deb', 'dpkg'],
    ['ldd', 'libc-bin'],
  ]) {
    if (!hasCommand(c!)) return `needs ${c} (${pkg}) to build the imaging environment`;
  }
  const depends = spawnSync('apt-cache', ['depends', 'linux-image-amd64'], { encoding: 'utf8' });
  if (depends.status !== 0 || !/linux-image-\S+-amd64/.test(depends.stdout))
    return 'apt knows no linux-image-amd64 (no Debian mirror in the apt sources): cannot build the imaging environment';
  return undefined;
}

async function cacheKey(): Promise<string> {
  const hash = createHash('sha256');
  const add = async (dir: string): Promise<void> => {
    for (const e of (await readdir(dir, { withFileTypes: true })).sort((a, b) =>
      a.name.localeCompare(b.name),
    )) {
      const p = join(dir, e.name);
      if (e.isDirectory()) await add(p);
      else if (e.isFile()) hash.update(relative(PROJECT_ROOT, p)).update(await readFile(p));
    }
  };
  await add(join(PROJECT_ROOT, 'bin'));
  await add(join(PROJECT_ROOT, 'src'));
  hash.update(await readFile(join(PROJECT_ROOT, 'package-lock.json')));
  hash.update(spawnSync('apt-cache', ['depends', 'linux-image-amd64'], { encoding: 'utf8' }).stdout ?? '');
  return hash.digest('hex').slice(0, 16);
}

async function found(dir: string): Promise<CachedBootenv | undefined> {
  try {
    const info = JSON.parse(await readFile(join(dir, BOOTENV_FILES.info), 'utf8')) as BootenvInfo;
    for (const [name, f] of Object.entries(info.files))
      if ((await stat(join(dir, name))).size !== f.bytes) return undefined;
    return {
      dir,
      kernel: join(dir, BOOTENV_FILES.kernel),
      initrd: join(dir, BOOTENV_FILES.initrd),
      info,
      cached: true,
    };
  } catch {
    return undefined;
  }
}

/** The cached environment, or one built now. Call bootenvUnavailable first to skip instead. */
export async function cachedBootenv(log: (line: string) => void = () => {}): Promise<CachedBootenv> {
  const key = await cacheKey();
  const final = join(CACHE_ROOT, `bootenv-${key}`);
  const hit = await found(final);
  if (hit) return hit;
  await mkdir(CACHE_ROOT, { recursive: true });
  for (const name of await readdir(CACHE_ROOT)) {
    const m = /^bootenv-([0-9a-f]+)(?:\.partial-(\d+))?$/.exec(name);
    if (!m || (m[1] === key && !m[2])) continue;
    if (m[2] && Number(m[2]) !== process.pid && alive(Number(m[2]))) continue;
    await rm(join(CACHE_ROOT, name), { recursive: true, force: true });
  }
  const partial = `${final}.partial-${process.pid}`;
  await rm(partial, { recursive: true, force: true });
  try {
    const r = await buildBootenv({ dir: partial, log });
    if (existsSync(final)) await rm(final, { recursive: true, force: true });
    await rename(partial, final);
    return { ...(await found(final))!, cached: false, buildSeconds: r.seconds };
  } finally {
    await rm(partial, { recursive: true, force: true });
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const why = bootenvUnavailable();
  if (why) {
    console.error(`cannot build the imaging environment: ${why}`);
    process.exit(1);
  }
  console.log(JSON.stringify(await cachedBootenv((l) => console.error(l)), null, 2));
}
