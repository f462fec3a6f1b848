/**
 * `imgcast bootenv build`: the imaging environment a workstation network-boots (or boots from
 * the ISO) to image itself: Debian's kernel, and an initramfs holding busybox, Node, imgcast's
 * production files, the tools img runs with their libraries, and the kernel modules of common
 * disks and network cards. Its /init is src/bootenv/init.sh.
 *
 * Everything comes from Debian packages (apt-get download, from this machine's apt sources) and
 * from this machine (the tools, their libraries, Node): the server the build runs on is a Debian
 * or Ubuntu of the same architecture as the workstations.
 *
 * Written into the bootenv directory (see netboot-contract): vmlinuz, initrd.img, bootenv.json.
 * Each is written beside its final name as `.NAME.partial-PID` and renamed into place once
 * complete, bootenv.json last; the scratch folder goes on every way out, and partial files of
 * a killed build are removed by the next one.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import {
  chmod,
  copyFile,
  lstat,
  mkdir,
  mkdtemp,
  readFile,
  readdir,
  readlink,
  rename,
  rm,
  stat,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, posix, resolve } from 'node:path';
import type { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { constants as zlib, createZstdCompress } from 'node:zlib';

import {
  DOWNLOADED_PACKAGES,
  MODULES,
  TOOLS,
  kernelPackage,
  importSpecifiers,
  moduleClosure,
  packageClosure,
  packageOf,
  parseBuiltin,
  parseLdd,
  parseModulesDep,
  productionPackages,
  rootPath,
} from './contents.ts';
import { CpioWriter } from './cpio.ts';
import { LOCALBOOT_FILE, buildLocalBoot, localBootUnavailable } from './localboot.ts';
import { BootenvError } from './errors.ts';

/** The project's root: bin/, src/, package.json, node_modules. */
export const PROJECT_ROOT = fileURLToPath(new URL('../..', import.meta.url));
const VERSION = (createRequire(import.meta.url)('../../package.json') as { version: string }).version;

export const BOOTENV_FILES = { kernel: 'vmlinuz', initrd: 'initrd.img', info: 'bootenv.json' } as const;

/** bootenv.json (format 1, see the netboot contract). */
export interface BootenvInfo {
  format: 1;
  /** uname -r of the kernel. */
  kernel: string;
  /** imgcast's version whose files the initramfs holds. */
  imgcast: string;
  builtAt: number;
  files: Record<'vmlinuz' | 'initrd.img', { bytes: number; sha256: string }> &
    Partial<Record<typeof LOCALBOOT_FILE, { bytes: number; sha256: string }>>;
}

export interface BuildResult {
  dir: string;
  info: BootenvInfo;
  /** The initramfs before compression. */
  uncompressedBytes: number;
  /** Tools that are optional and not installed here, so not in the environment. */
  leftOut: string[];
  seconds: number;
}

export interface BuildOptions {
  /** The bootenv directory (created if needed). */
  dir: string;
  /** Progress lines. */
  log?: (line: string) => void;
  signal?: AbortSignal;
}

/** zstd level: 19 makes the initramfs ~15% smaller than the default 3, for ~1 min more of build. */
const ZSTD_LEVEL = 19;

/** Where the tools are looked for, in this order (the downloaded packages' tree first). */
const BIN_DIRS = ['/usr/sbin', '/usr/bin', '/sbin', '/bin'];

export async function buildBootenv(o: BuildOptions): Promise<BuildResult> {
  const log = o.log ?? (() => {});
  // Stopping the build (Ctrl-C) stops the command it is running too.
  const run = (cmd: string, args: string[], opts: Parameters<typeof sh>[2] = {}) =>
    sh(cmd, args, { ...opts, signal: o.signal });
  const started = Date.now();
  const dir = resolve(o.dir);
  await checkHostTools();
  await mkdir(dir, { recursive: true });
  await removeStalePartials(dir);
  await removeStaleScratch();
  const scratch = await mkdtemp(join(tmpdir(), `${SCRATCH_PREFIX}${process.pid}-`));
  const partials: string[] = [];
  try {
    const step = () => o.signal?.throwIfAborted();
    const debs = join(scratch, 'debs');
    const kernelTree = join(scratch, 'kernel');
    const pkgTree = join(scratch, 'pkgs');
    const root = join(scratch, 'root');
    await mkdir(debs);

    // 1. Debian packages: the kernel, busybox, efibootmgr.
    const depends = await run('apt-cache', ['depends', 'linux-image-amd64'], {
      what: 'apt-cache depends',
    }).catch((err: Error) => {
      throw aptError('linux-image-amd64', err);
    });
    const kpkg = kernelPackage(depends);
    if (!kpkg)
      throw new BootenvError(
        'E_BOOTENV_APT',
        'apt knows no linux-image-amd64 (no Debian mirror in the apt sources?): add one to /etc/apt/sources.list(.d) and run apt-get update',
      );
    const wanted = [kpkg, ...DOWNLOADED_PACKAGES];
    log(`downloading ${wanted.join(', ')} (apt-get download)`);
    await run('apt-get', ['download', '-q', ...wanted], { cwd: debs, what: 'apt-get download' }).catch(
      (err: Error) => {
        throw aptError(wanted.join(' '), err);
      },
    );
    step();
    const files = await readdir(debs);
    const deb = (pkg: string) => {
      const f = files.find((n) => n.startsWith(`${pkg}_`) && n.endsWith('.deb'));
      if (!f) throw new BootenvError('E_BOOTENV_APT', `apt-get download left no ${pkg}_*.deb`);
      return join(debs, f);
    };
    log(`unpacking ${kpkg}`);
    await run('dpkg-deb', ['-x', deb(kpkg), kernelTree]);
    for (const p of DOWNLOADED_PACKAGES) await run('dpkg-deb', ['-x', deb(p), pkgTree]);
    const kernel = (await readdir(join(kernelTree, 'lib/modules')))[0];
    if (!kernel) throw new BootenvError('E_BOOTENV_STEP', `${kpkg} holds no /lib/modules/VERSION`);
    const busybox = join(pkgTree, 'bin/busybox');
    step();

    // 2. The root: merged /usr like Debian's, so the tools' paths hold as they are.
    for (const d of ['usr/bin', 'usr/sbin', 'usr/lib', 'usr/lib64', 'etc', 'opt/imgcast', 'root']) {
      await mkdir(join(root, d), { recursive: true });
    }
    for (const d of ['dev', 'proc', 'sys', 'run', 'tmp', 'mnt']) await mkdir(join(root, d));
    for (const l of ['bin', 'sbin', 'lib', 'lib64']) await symlink(`usr/${l}`, join(root, l));
    const carried = new Set<string>();
    const carry = async (hostPath: string, from = ''): Promise<void> => {
      const rel = rootPath(hostPath);
      if (carried.has(rel)) return;
      carried.add(rel);
      const src = from + hostPath;
      const st = await lstat(src);
      await mkdir(dirname(join(root, rel)), { recursive: true });
      if (st.isSymbolicLink()) {
        const link = await readlink(src);
        await symlink(link, join(root, rel));
        const next = posix.resolve(posix.dirname(hostPath), link);
        // A link into the downloaded tree stays there; one out of it (absolute) is the host's.
        return carry(next, from && existsSync(from + next) ? from : '');
      }
      await copyFile(src, join(root, rel));
      await chmod(join(root, rel), st.mode & 0o7777);
    };
    const libraries = async (binary: string): Promise<string[]> => {
      const out = await run('ldd', [binary], { okCodes: [0, 1] });
      const { libraries: libs, missing } = parseLdd(out);
      if (missing.length)
        throw new BootenvError(
          'E_BOOTENV_LIBRARY',
          `${binary} needs ${missing.join(', ')}, which ldd does not find on this machine`,
          { binary, missing },
        );
      return libs;
    };

    log(
      `busybox ${await run(busybox, ['--help']).then((t) => /BusyBox v(\S+)/.exec(t)?.[1] ?? '?')}, tools, libraries`,
    );
    const leftOut: string[] = [];
    const missingTools: (typeof TOOLS)[number][] = [];
    /** A tool with its libraries; an optional one whose libraries are not here is left out. */
    const carryTool = async (name: string, [path, from]: [string, string], optional: boolean) => {
      let libs: string[];
      try {
        libs = await libraries(from + path);
      } catch (err) {
        if (!optional || (err as BootenvError).code !== 'E_BOOTENV_LIBRARY') throw err;
        leftOut.push(`${name} (${(err as Error).message})`);
        return;
      }
      await carry(path, from);
      for (const lib of libs) await carry(lib);
    };
    for (const t of TOOLS) {
      const inPkgs = BIN_DIRS.map((d) => join(d, t.name)).find((p) => existsSync(pkgTree + p));
      const onHost = BIN_DIRS.map((d) => join(d, t.name)).find((p) => existsSync(p));
      if (!inPkgs && !onHost) {
        if (t.optional) leftOut.push(`${t.name} (${t.package})`);
        else missingTools.push(t);
        continue;
      }
      await carryTool(t.name, inPkgs ? [inPkgs, pkgTree] : [onHost!, ''], t.optional ?? false);
    }
    // img runs efibootmgr for --reboot under UEFI only, and says so when it is missing.
    const efibootmgr = ['/usr/bin/efibootmgr', '/bin/efibootmgr', '/usr/sbin/efibootmgr'].find((p) =>
      existsSync(pkgTree + p),
    );
    if (efibootmgr) await carryTool('efibootmgr', [efibootmgr, pkgTree], true);
    if (missingTools.length) {
      const pkgs = [...new Set(missingTools.map((t) => t.package))];
      throw new BootenvError(
        'E_BOOTENV_TOOL',
        `the environment carries the tools img runs, and ${missingTools.map((t) => t.name).join(', ')} ${missingTools.length > 1 ? 'are' : 'is'} not installed here: apt-get install ${pkgs.join(' ')}`,
        { tools: missingTools.map((t) => t.name), packages: pkgs },
      );
    }
    await copyFile(busybox, join(root, 'usr/bin/busybox'));
    await chmod(join(root, 'usr/bin/busybox'), 0o755);
    const taken = new Set([...carried].map((p) => posix.basename(p)));
    for (const applet of (await run(busybox, ['--list-full'])).split('\n').filter(Boolean)) {
      const rel = rootPath(`/${applet}`);
      if (taken.has(posix.basename(rel)) || existsSync(join(root, rel))) continue;
      taken.add(posix.basename(rel));
      await mkdir(dirname(join(root, rel)), { recursive: true });
      await symlink('/usr/bin/busybox', join(root, rel));
    }
    step();

    // 3. Node and imgcast.
    const node = nodeBinary();
    const strippedNode = join(scratch, 'node');
    if (hasCommand('strip')) {
      await run('strip', ['--strip-all', '-o', strippedNode, node]);
    } else {
      log('strip is not installed (binutils): Node goes in unstripped, ~20 MiB more before compression');
      await copyFile(node, strippedNode);
    }
    await copyFile(strippedNode, join(root, 'usr/bin/node'));
    await chmod(join(root, 'usr/bin/node'), 0o755);
    for (const lib of await libraries(node)) await carry(lib);
    log(
      `node ${await run(node, ['--version']).then((v) => v.trim())} (${mib((await stat(strippedNode)).size)} stripped)`,
    );
    await copyProductionFiles(join(root, 'opt/imgcast'));
    // bin/img.js starts with `#!/usr/bin/env -S node …`, and busybox env has no -S.
    await writeFile(
      join(root, 'usr/bin/img'),
      '#!/bin/sh\nexec /usr/bin/node --max-semi-space-size=8 /opt/imgcast/bin/img.js "$@"\n',
      { mode: 0o755 },
    );
    step();

    // 4. Kernel modules and their dependencies, with a modules.dep for the kept set.
    log(`kernel ${kernel}: modules`);
    const modDir = join(kernelTree, 'lib/modules', kernel);
    await run(busybox, ['depmod', '-b', kernelTree, kernel]);
    const builtin = parseBuiltin(await readFile(join(modDir, 'modules.builtin'), 'utf8').catch(() => ''));
    const { files: modFiles, missing: missingModules } = moduleClosure(
      parseModulesDep(await readFile(join(modDir, 'modules.dep'), 'utf8')),
      MODULES,
      builtin,
    );
    const optionalModules = new Set(['af_packet']);
    const reallyMissing = missingModules.filter((m) => !optionalModules.has(m));
    if (reallyMissing.length)
      throw new BootenvError('E_BOOTENV_MODULE', `${kpkg} has no module ${reallyMissing.join(', ')}`, {
        modules: reallyMissing,
      });
    const rootModDir = join(root, 'usr/lib/modules', kernel);
    for (const f of modFiles) {
      await mkdir(dirname(join(rootModDir, f)), { recursive: true });
      await copyFile(join(modDir, f), join(rootModDir, f));
    }
    for (const f of ['modules.builtin', 'modules.builtin.modinfo', 'modules.order']) {
      if (existsSync(join(modDir, f))) await copyFile(join(modDir, f), join(rootModDir, f));
    }
    await run(busybox, ['depmod', '-b', root, kernel]);
    step();

    // 5. The init, its helpers, the little /etc a shell and the tools want.
    const here = dirname(fileURLToPath(import.meta.url));
    await copyFile(join(here, 'init.sh'), join(root, 'init'));
    await chmod(join(root, 'init'), 0o755);
    await copyFile(join(here, 'udhcpc.sh'), join(root, 'etc/udhcpc.script'));
    await chmod(join(root, 'etc/udhcpc.script'), 0o755);
    await writeFile(join(root, 'etc/imgcast-modules'), `${MODULES.join('\n')}\n`);
    await writeFile(join(root, 'etc/imgcast-bootenv'), `imgcast ${VERSION}\n`);
    await writeFile(join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
    await writeFile(join(root, 'etc/group'), 'root:x:0:\n');
    await writeFile(join(root, 'etc/hostname'), 'imgcast-bootenv\n');
    await writeFile(join(root, 'etc/profile'), "export PS1='imgcast-bootenv:\\w# '\n");
    await symlink('/proc/self/mounts', join(root, 'etc/mtab'));

    // 6. The archive, compressed, and the kernel beside it.
    const initrdPartial = partial(dir, BOOTENV_FILES.initrd);
    partials.push(initrdPartial);
    log(`initramfs: cpio, zstd -${ZSTD_LEVEL}`);
    const uncompressedBytes = await writeInitramfs(root, initrdPartial, o.signal);
    const kernelPartial = partial(dir, BOOTENV_FILES.kernel);
    partials.push(kernelPartial);
    await copyFile(join(kernelTree, 'boot', `vmlinuz-${kernel}`), kernelPartial);
    // UEFI's way to the local disk (localboot.ts): optional, the server falls back to iPXE's exit.
    const localBootPartial = partial(dir, LOCALBOOT_FILE);
    const noLocalBoot = localBootUnavailable();
    if (noLocalBoot) leftOut.push(`${LOCALBOOT_FILE} (${noLocalBoot})`);
    else {
      partials.push(localBootPartial);
      log(`${LOCALBOOT_FILE}: GRUB that starts a local disk's loader under UEFI`);
      await buildLocalBoot(localBootPartial, scratch);
    }
    const info: BootenvInfo = {
      format: 1,
      kernel,
      imgcast: VERSION,
      builtAt: Date.now(),
      files: {
        vmlinuz: await fileFacts(kernelPartial),
        'initrd.img': await fileFacts(initrdPartial),
        ...(noLocalBoot ? {} : { [LOCALBOOT_FILE]: await fileFacts(localBootPartial) }),
      },
    };
    const infoPartial = partial(dir, BOOTENV_FILES.info);
    partials.push(infoPartial);
    await writeFile(infoPartial, `${JSON.stringify(info, null, 2)}\n`);
    step();
    await rename(kernelPartial, join(dir, BOOTENV_FILES.kernel));
    await rename(initrdPartial, join(dir, BOOTENV_FILES.initrd));
    if (noLocalBoot) await rm(join(dir, LOCALBOOT_FILE), { force: true });
    else await rename(localBootPartial, join(dir, LOCALBOOT_FILE));
    await rename(infoPartial, join(dir, BOOTENV_FILES.info));
    partials.length = 0;
    const seconds = Math.round((Date.now() - started) / 100) / 10;
    log(
      `written to ${dir}: vmlinuz ${mib(info.files.vmlinuz.bytes)}, initrd.img ${mib(info.files['initrd.img'].bytes)} (${mib(uncompressedBytes)} unpacked), in ${seconds} s`,
    );
    return { dir, info, uncompressedBytes, leftOut, seconds };
  } catch (err) {
    // A stop shows as whatever it broke (a killed zstd's EPIPE): say it was stopped.
    if (o.signal?.aborted) throw o.signal.reason;
    throw err;
  } finally {
    for (const p of partials) await rm(p, { force: true });
    await rm(scratch, { recursive: true, force: true });
  }
}

/** The Node that runs this (Node 24), else the one npm installed into node_modules. */
function nodeBinary(): string {
  if (Number(process.versions.node.split('.')[0]) >= 24) return process.execPath;
  return join(PROJECT_ROOT, 'node_modules/node/bin/node');
}

/** bin/, src/ (the web console is the server's), package.json and production node_modules. */
async function copyProductionFiles(to: string): Promise<void> {
  const skip = (rel: string) => rel === 'src/console';
  const copyTree = async (rel: string, filter: (name: string, isDir: boolean) => boolean) => {
    const from = join(PROJECT_ROOT, rel);
    await mkdir(join(to, rel), { recursive: true });
    for (const e of await readdir(from, { withFileTypes: true })) {
      const child = posix.join(rel, e.name);
      if (skip(child) || !filter(e.name, e.isDirectory())) continue;
      if (e.isDirectory()) await copyTree(child, filter);
      else if (e.isFile()) await copyFile(join(from, e.name), join(to, child));
      else if (e.isSymbolicLink()) await symlink(await readlink(join(from, e.name)), join(to, child));
    }
  };
  await copyFile(join(PROJECT_ROOT, 'package.json'), join(to, 'package.json'));
  await copyTree('bin', () => true);
  await copyTree('src', (name) => !name.endsWith('.sh'));
  let lock: unknown;
  try {
    lock = JSON.parse(await readFile(join(PROJECT_ROOT, 'package-lock.json'), 'utf8'));
  } catch (err) {
    throw new BootenvError(
      'E_BOOTENV_FILES',
      `cannot read ${PROJECT_ROOT}package-lock.json: ${(err as Error).message}`,
    );
  }
  // Only the packages img loads (the server's fastify, pg, ... stay out): ~9 MiB less.
  const graph = await importGraph(join(PROJECT_ROOT, 'bin/img.js'));
  let packages: string[];
  try {
    const production = new Set(productionPackages(lock));
    const closure = packageClosure(lock, graph.packages);
    if (closure.missing.length)
      throw new Error(`img needs ${closure.missing.join(', ')}, not in package-lock.json`);
    packages = closure.packages.filter((p) => production.has(p));
  } catch (err) {
    throw new BootenvError('E_BOOTENV_FILES', (err as Error).message);
  }
  for (const p of packages) {
    if (!existsSync(join(PROJECT_ROOT, p)))
      throw new BootenvError('E_BOOTENV_FILES', `${p} is in package-lock.json but not installed: run npm ci`);
    // Nested node_modules are packages of their own in the lock: copied when they are production ones.
    // Type declarations, source maps and documentation are nothing Node loads.
    await copyTree(p, (name, isDir) =>
      isDir ? name !== 'node_modules' : !/\.(d\.[cm]?ts|map|md)$/.test(name),
    );
  }
}

/** The source files reachable from `entry` by imports, and the packages they import. */
async function importGraph(entry: string): Promise<{ files: string[]; packages: string[] }> {
  const files = new Set<string>();
  const packages = new Set<string>();
  const visit = async (file: string): Promise<void> => {
    if (files.has(file)) return;
    files.add(file);
    for (const spec of importSpecifiers(await readFile(file, 'utf8'))) {
      if (spec.startsWith('.')) {
        // Modules and worker files; a URL of a folder (the project root) is no import.
        const next = resolve(dirname(file), spec);
        if (/\.[cm]?[jt]s$/.test(next) && existsSync(next)) await visit(next);
        continue;
      }
      const pkg = packageOf(spec);
      if (pkg) packages.add(pkg);
    }
  };
  await visit(entry);
  return { files: [...files], packages: [...packages].sort() };
}

/** Streams the tree under `root` as a newc cpio through zstd into `file`; the cpio's size. */
async function writeInitramfs(root: string, file: string, signal?: AbortSignal): Promise<number> {
  const sink = createWriteStream(file, { mode: 0o644 });
  let input: Writable;
  let done: Promise<void>;
  if (hasCommand('zstd')) {
    // The zstd tool uses both cores; Node's zstd one.
    const child = spawn('zstd', ['-q', `-${ZSTD_LEVEL}`, '-T0', '-c'], {
      stdio: ['pipe', 'pipe', 'pipe'],
      signal,
    });
    let err = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    input = child.stdin;
    const exited = new Promise<void>((res, rej) => {
      child.on('error', rej);
      child.on('close', (code) =>
        code === 0
          ? res()
          : rej(new BootenvError('E_BOOTENV_STEP', `zstd failed: ${err.trim() || `exit ${code}`}`)),
      );
    });
    done = Promise.all([pipeline(child.stdout, sink), exited]).then(() => {});
  } else {
    const z = createZstdCompress({ params: { [zlib.ZSTD_c_compressionLevel]: ZSTD_LEVEL } });
    input = z;
    done = pipeline(z, sink, { signal });
  }
  done.catch(() => {});
  const w = new CpioWriter(input);
  const walk = async (rel: string): Promise<void> => {
    const names = (await readdir(join(root, rel))).sort();
    for (const name of names) {
      signal?.throwIfAborted();
      const r = rel ? `${rel}/${name}` : name;
      const st = await lstat(join(root, r));
      if (st.isSymbolicLink())
        await w.add({ kind: 'symlink', name: r, target: await readlink(join(root, r)) });
      else if (st.isDirectory()) {
        await w.add({ kind: 'dir', name: r, mode: st.mode & 0o7777 });
        await walk(r);
      } else if (st.isFile())
        await w.add({ kind: 'file', name: r, mode: st.mode & 0o7777, size: st.size, source: join(root, r) });
    }
  };
  await w.add({ kind: 'dir', name: '.', mode: 0o755 });
  await walk('');
  // The kernel opens /dev/console before /init runs and mounts devtmpfs: without this node, init
  // starts with no standard output and the console stays silent.
  await w.add({ kind: 'char', name: 'dev/console', mode: 0o600, major: 5, minor: 1 });
  await w.finish();
  input.end();
  await done;
  return w.bytes;
}

async function fileFacts(file: string): Promise<{ bytes: number; sha256: string }> {
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const chunk of createReadStream(file)) {
    hash.update(chunk as Buffer);
    bytes += (chunk as Buffer).length;
  }
  return { bytes, sha256: hash.digest('hex') };
}

/** The build's scratch folder in the temporary directory: `imgcast-bootenv-PID-XXXXXX`. */
const SCRATCH_PREFIX = 'imgcast-bootenv-';

/** Scratch folders (~400 MB) of builds killed outright (SIGKILL), which could not remove them. */
async function removeStaleScratch(): Promise<void> {
  for (const name of await readdir(tmpdir()).catch(() => [] as string[])) {
    const m = new RegExp(`^${SCRATCH_PREFIX}(\\d+)-\\w+$`).exec(name);
    if (!m || Number(m[1]) === process.pid || alive(Number(m[1]))) continue;
    await rm(join(tmpdir(), name), { recursive: true, force: true });
  }
}

const partial = (dir: string, name: string) => join(dir, `.${name}.partial-${process.pid}`);

/** Partial files of builds whose process is gone (killed): nothing else removes them. */
async function removeStalePartials(dir: string): Promise<void> {
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    const m = /^\..+\.partial-(\d+)$/.exec(name);
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid !== process.pid && alive(pid)) continue;
    await rm(join(dir, name), { force: true });
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

/** Tools the build itself runs, with the package that has each. */
const HOST_TOOLS: Array<[string, string]> = [
  ['apt-get', 'apt'],
  ['apt-cache', 'apt'],
  ['dpkg-deb', 'dpkg'],
  ['ldd', 'libc-bin'],
];

async function checkHostTools(): Promise<void> {
  const missing = HOST_TOOLS.filter(([c]) => !hasCommand(c));
  if (missing.length)
    throw new BootenvError(
      'E_BOOTENV_TOOL',
      `building the environment needs ${missing.map(([c]) => c).join(', ')} (a Debian or Ubuntu machine: apt-get install ${[...new Set(missing.map(([, p]) => p))].join(' ')})`,
      { tools: missing.map(([c]) => c) },
    );
}

export function hasCommand(name: string): boolean {
  const dirs = [...(process.env.PATH ?? '').split(':'), ...BIN_DIRS].filter(Boolean);
  return dirs.some((d) => existsSync(join(d, name)));
}

function aptError(what: string, err: Error): BootenvError {
  return new BootenvError(
    'E_BOOTENV_APT',
    `cannot download ${what} with apt (the build takes the kernel and busybox from this machine's Debian mirror): ` +
      `check /etc/apt/sources.list(.d) and the network, then apt-get update.\n${err.message}`,
    { packages: what.split(' ') },
  );
}

/** Runs a command; its stdout, or a BootenvError with the end of its output. */
function sh(
  cmd: string,
  args: string[],
  o: { cwd?: string; what?: string; okCodes?: number[]; signal?: AbortSignal } = {},
): Promise<string> {
  return new Promise((res, rej) => {
    const child = spawn(cmd, args, { cwd: o.cwd, stdio: ['ignore', 'pipe', 'pipe'], signal: o.signal });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-20_000)));
    child.on('error', (e: NodeJS.ErrnoException) =>
      rej(
        e.name === 'AbortError'
          ? (o.signal?.reason ?? e)
          : new BootenvError(
              e.code === 'ENOENT' ? 'E_BOOTENV_TOOL' : 'E_BOOTENV_STEP',
              e.code === 'ENOENT' ? `${cmd} is not installed` : `cannot run ${cmd}: ${e.message}`,
              { command: cmd },
            ),
      ),
    );
    child.on('close', (code, signal) => {
      if (code !== null && (o.okCodes ?? [0]).includes(code)) return res(out);
      const tail = (err || out).trim().split('\n').slice(-15).join('\n');
      rej(
        new BootenvError(
          'E_BOOTENV_STEP',
          `${o.what ?? `${cmd} ${args.join(' ')}`} failed (${signal ?? `exit ${code}`}): ${tail}`,
          {
            command: cmd,
          },
        ),
      );
    });
  });
}

export const mib = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
