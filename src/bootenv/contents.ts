/**
 * What the imaging environment holds, decided from text the build reads (apt-cache, ldd,
 * modules.dep, package-lock.json): pure functions, so each rule has its unit test.
 */
import { posix } from 'node:path';

/**
 * The tools img runs (src/disk, src/volume, src/engine, src/client: execFile/spawn), by Debian
 * package. Busybox covers the rest (sh, dd, sync, mkfifo, xargs, ip, udhcpc, modprobe, ...).
 * `optional`: img works without it for most images (it says what is missing when one needs it).
 */
export interface ToolSpec {
  name: string;
  package: string;
  optional?: boolean;
}

const group = (pkg: string, names: string[], optional = false): ToolSpec[] =>
  names.map((name) => ({ name, package: pkg, ...(optional ? { optional } : {}) }));

export const TOOLS: readonly ToolSpec[] = [
  ...group('util-linux', [
    'sfdisk',
    'partx',
    'blockdev',
    'wipefs',
    'findmnt',
    'lsblk',
    'blkdiscard',
    'fallocate',
  ]),
  ...group('mount', ['mount', 'umount', 'losetup']),
  ...group('util-linux', ['blkid']),
  ...group('e2fsprogs', [
    'mke2fs',
    'mkfs.ext2',
    'mkfs.ext3',
    'mkfs.ext4',
    'e2fsck',
    'fsck.ext4',
    'dumpe2fs',
    'resize2fs',
    'tune2fs',
    'debugfs',
    'lsattr',
    'chattr',
  ]),
  ...group('dosfstools', ['mkfs.vfat', 'mkfs.fat', 'fsck.fat', 'fsck.vfat']),
  ...group('mtools', ['mtools', 'mcopy', 'mmd', 'mdir', 'mattrib', 'mlabel', 'minfo', 'mdel', 'mrd']),
  ...group('attr', ['getfattr', 'setfattr']),
  ...group('openssh-client', ['ssh-keygen']),
  // Nanosecond file times through utimensat (src/volume/files/times.ts); busybox touch cannot.
  ...group('perl-base', ['perl']),
  // iflag=nocache (verify-target.ts): busybox dd does not know it.
  ...group('coreutils', ['dd']),
  ...group('ntfs-3g', ['ntfs-3g', 'mkntfs', 'ntfsfix', 'ntfslabel'], true),
  ...group(
    'partclone',
    [
      'partclone.ntfs',
      'partclone.exfat',
      'partclone.xfs',
      'partclone.btrfs',
      'partclone.hfsp',
      'partclone.f2fs',
    ],
    true,
  ),
];

/**
 * Packages the build downloads itself (apt-get download) rather than take from this machine: the
 * kernel, busybox, and efibootmgr (--reboot under UEFI), which an imaging server rarely has.
 */
export const DOWNLOADED_PACKAGES = ['busybox-static', 'efibootmgr'] as const;

/**
 * Kernel modules loaded at start, in this order: crc32c_generic before ext4 (ext4 asks the crypto
 * API for crc32c when it mounts, and nothing loads it on demand that early), disk and network
 * drivers of QEMU and of common lab hardware, the filesystems img writes.
 */
export const MODULES = [
  'crc32c_generic',
  'virtio_pci',
  'virtio_blk',
  'virtio_scsi',
  'virtio_net',
  'e1000',
  'e1000e',
  'igb',
  'r8169',
  'ahci',
  'sd_mod',
  'nvme',
  'ext4',
  'vfat',
  // FAT's code page and its I/O character set: Debian's kernel mounts vfat with iocharset=ascii
  // unless told otherwise, and without nls_ascii the mount fails ("IO charset ascii not found").
  'nls_cp437',
  'nls_ascii',
  'nls_iso8859_1',
  'nls_utf8',
  'efivarfs',
  'af_packet',
  'loop',
  'fuse',
] as const;

/** A module's name from its file: `kernel/drivers/scsi/sd_mod.ko.xz` → sd_mod (dashes as underscores). */
export function moduleName(path: string): string {
  return posix
    .basename(path)
    .replace(/\.ko(\.(xz|zst|gz))?$/, '')
    .replace(/-/g, '_');
}

/** The versioned kernel package that linux-image-amd64 depends on (from `apt-cache depends`). */
export function kernelPackage(aptCacheDepends: string): string | undefined {
  return /^\s*Depends:\s*(linux-image-\S+-amd64)\s*$/m.exec(aptCacheDepends)?.[1];
}

/**
 * Libraries ldd names, and the loader: absolute paths. Throws on "not found", naming the
 * library. `statically linked` / `not a dynamic executable` give an empty list.
 */
export function parseLdd(text: string): { libraries: string[]; missing: string[] } {
  const libraries: string[] = [];
  const missing: string[] = [];
  for (const line of text.split('\n')) {
    const l = line.trim();
    let m = /^(\S+)\s+=>\s+not found/.exec(l);
    if (m) {
      missing.push(m[1]!);
      continue;
    }
    m = /^\S+\s+=>\s+(\/\S+)\s+\(0x[0-9a-f]+\)$/.exec(l);
    if (m) {
      libraries.push(m[1]!);
      continue;
    }
    // The loader, named by its path: /lib64/ld-linux-x86-64.so.2 (0x...)
    m = /^(\/\S+)\s+\(0x[0-9a-f]+\)$/.exec(l);
    if (m) libraries.push(m[1]!);
  }
  return { libraries, missing };
}

/** modules.dep as depmod writes it: `kernel/a.ko: kernel/b.ko kernel/c.ko`. */
export function parseModulesDep(text: string): Map<string, string[]> {
  const dep = new Map<string, string[]>();
  for (const line of text.split('\n')) {
    const i = line.indexOf(':');
    if (i <= 0) continue;
    dep.set(
      line.slice(0, i).trim(),
      line
        .slice(i + 1)
        .trim()
        .split(/\s+/)
        .filter(Boolean),
    );
  }
  return dep;
}

/**
 * The module files (paths as in modules.dep) that `names` and their dependencies need.
 * `missing`: names with no module and not built in (`builtin`: names from modules.builtin).
 */
export function moduleClosure(
  dep: Map<string, string[]>,
  names: readonly string[],
  builtin: ReadonlySet<string>,
): { files: string[]; missing: string[] } {
  const byName = new Map<string, string>();
  for (const path of dep.keys()) byName.set(moduleName(path), path);
  const files = new Set<string>();
  const missing: string[] = [];
  const visit = (path: string) => {
    if (files.has(path)) return;
    files.add(path);
    for (const d of dep.get(path) ?? []) visit(d);
  };
  for (const raw of names) {
    const name = raw.replace(/-/g, '_');
    const path = byName.get(name);
    if (path) visit(path);
    else if (!builtin.has(name)) missing.push(raw);
  }
  return { files: [...files].sort(), missing };
}

/** Module names in modules.builtin (one path a line). */
export function parseBuiltin(text: string): Set<string> {
  return new Set(
    text
      .split('\n')
      .filter(Boolean)
      .map((p) => moduleName(p)),
  );
}

/**
 * node_modules folders of production packages (package-lock.json v2/v3: dev-only packages carry
 * `"dev": true`), relative to the project root, shortest first.
 */
export function productionPackages(lock: unknown): string[] {
  const packages = (lock as { packages?: Record<string, { dev?: boolean; link?: boolean }> })?.packages;
  if (!packages || typeof packages !== 'object')
    throw new Error('package-lock.json has no "packages" (lockfile v2 or later)');
  return Object.entries(packages)
    .filter(([path, p]) => path.startsWith('node_modules/') && !p.dev)
    .map(([path]) => path)
    .sort((a, b) => a.length - b.length || a.localeCompare(b));
}

/**
 * Where a host path goes in the environment, which has Debian's merged /usr: /bin, /sbin, /lib
 * and /lib64 are links into /usr, so everything is stored under usr/. Relative, no leading slash.
 */
export function rootPath(hostPath: string): string {
  const p = posix.normalize(hostPath).replace(/^\/+/, '');
  const m = /^(bin|sbin|lib|lib64|lib32|libx32)(\/.*)?$/.exec(p);
  return m ? `usr/${p}` : p;
}

/**
 * What a module's source imports: static and literal dynamic imports, re-exports, and worker
 * files (`new URL('./x.ts', import.meta.url)`). Specifiers as written.
 */
export function importSpecifiers(source: string): string[] {
  const out = new Set<string>();
  const patterns = [
    /\b(?:import|export)\s[^;'"]*?\sfrom\s*['"]([^'"]+)['"]/g,
    /\bimport\s*['"]([^'"]+)['"]/g,
    /\bimport\(\s*['"]([^'"]+)['"]\s*\)/g,
    /\bnew URL\(\s*['"](\.{1,2}\/[^'"]+)['"]\s*,\s*import\.meta\.url\s*\)/g,
  ];
  for (const re of patterns) for (const m of source.matchAll(re)) out.add(m[1]!);
  return [...out];
}

/** The package a bare specifier names: `a/b` → `a`, `@s/a/b` → `@s/a`; node: builtins → undefined. */
export function packageOf(specifier: string): string | undefined {
  if (specifier.startsWith('.') || specifier.startsWith('/') || specifier.startsWith('node:'))
    return undefined;
  const parts = specifier.split('/');
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
}

type LockPackages = Record<
  string,
  {
    dev?: boolean;
    dependencies?: Record<string, string>;
    optionalDependencies?: Record<string, string>;
    peerDependencies?: Record<string, string>;
  }
>;

/**
 * The production packages (node_modules paths, as productionPackages gives them) that `roots`
 * need, with what they depend on, resolved as Node does: the nearest node_modules up the tree.
 * Names a root or a dependency that is not in the lock (a missing optional one is left out).
 */
export function packageClosure(
  lock: unknown,
  roots: readonly string[],
): { packages: string[]; missing: string[] } {
  const packages = (lock as { packages?: LockPackages })?.packages ?? {};
  const found = new Set<string>();
  const missing: string[] = [];
  const resolveFrom = (from: string, name: string): string | undefined => {
    let base = from;
    while (true) {
      const candidate = base ? `${base}/node_modules/${name}` : `node_modules/${name}`;
      if (packages[candidate] && !packages[candidate]!.dev) return candidate;
      if (!base) return undefined;
      const i = base.lastIndexOf('/node_modules/');
      base = i < 0 ? '' : base.slice(0, i);
    }
  };
  const visit = (path: string) => {
    if (found.has(path)) return;
    found.add(path);
    const p = packages[path]!;
    const optional = new Set([
      ...Object.keys(p.optionalDependencies ?? {}),
      ...Object.keys(p.peerDependencies ?? {}),
    ]);
    for (const name of [...Object.keys(p.dependencies ?? {}), ...optional]) {
      const at = resolveFrom(path, name);
      if (at) visit(at);
      else if (!optional.has(name)) missing.push(`${name} (for ${path})`);
    }
  };
  for (const name of roots) {
    const at = resolveFrom('', name);
    if (at) visit(at);
    else missing.push(name);
  }
  return { packages: [...found].sort((a, b) => a.length - b.length || a.localeCompare(b)), missing };
}
