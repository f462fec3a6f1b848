/**
 * Compares two directory trees the way an administrator would check a restore:
 * same entries, types, permissions, owners, modification times, content, symlink
 * targets, extended attributes and hard-link structure.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { lstat, readdir, readFile, readlink } from 'node:fs/promises';
import { join } from 'node:path';

export interface CompareOptions {
  /** vfat keeps neither owners nor modes nor nanoseconds nor directory times. */
  contentAndMtimeOnly?: boolean;
  /** Skip the root directory's own metadata (a mount point's times are the mount's). */
  ignoreRoot?: boolean;
}

async function walk(root: string, rel = ''): Promise<string[]> {
  const out = [rel || '.'];
  const st = await lstat(join(root, rel));
  if (!st.isDirectory()) return out;
  const names = (await readdir(join(root, rel))).filter((n) => !(rel === '' && n === 'lost+found')).sort();
  for (const n of names) {
    const child = rel ? `${rel}/${n}` : n;
    const cst = await lstat(join(root, child));
    if (cst.isDirectory()) out.push(...(await walk(root, child)));
    else out.push(child);
  }
  return out;
}

/** Extended attributes of every entry under root, from one recursive getfattr run, keyed by absolute path. */
function allXattrs(root: string): Map<string, string> {
  const r = spawnSync('getfattr', ['-R', '-d', '-m', '-', '-h', '--absolute-names', root], {
    encoding: 'utf8',
    maxBuffer: 256 * 1024 * 1024,
  });
  const out = new Map<string, string>();
  for (const block of r.stdout.split('\n\n')) {
    const lines = block.split('\n').filter(Boolean);
    const head = lines[0];
    if (!head?.startsWith('# file: ')) continue;
    // getfattr escapes unusual characters in names as octal.
    const path = head
      .slice(8)
      .replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    out.set(path.replace(/\/$/, ''), lines.slice(1).sort().join('\n'));
  }
  return out;
}

async function describe(
  root: string,
  rel: string,
  opts: CompareOptions,
  links: Map<bigint, string>,
  xattrs: Map<string, string>,
) {
  const p = join(root, rel);
  const st = await lstat(p, { bigint: true });
  const type = st.isFile()
    ? 'file'
    : st.isDirectory()
      ? 'dir'
      : st.isSymbolicLink()
        ? 'symlink'
        : st.isFIFO()
          ? 'fifo'
          : st.isCharacterDevice()
            ? 'chardev'
            : st.isBlockDevice()
              ? 'blockdev'
              : 'other';
  const d: Record<string, unknown> = { type };
  if (type === 'file') {
    d.size = st.size;
    d.sha = createHash('sha256')
      .update(await readFile(p))
      .digest('hex');
  }
  if (type === 'symlink') d.target = await readlink(p);
  if (type === 'chardev' || type === 'blockdev') d.rdev = st.rdev;
  if (opts.contentAndMtimeOnly) {
    // FAT stores modification times in 2-second steps.
    if (type === 'file') d.mtimeS = st.mtimeMs / 2000n;
    return d;
  }
  d.mode = st.mode & 0o7777n;
  d.uid = st.uid;
  d.gid = st.gid;
  if (!(rel === '.' && opts.ignoreRoot)) d.mtimeNs = st.mtimeNs;
  d.xattrs = xattrs.get(p) ?? '';
  if (type !== 'dir' && st.nlink > 1n) {
    // The first path seen for an inode stands for its hard-link group.
    if (!links.has(st.ino)) links.set(st.ino, rel);
    d.linkGroup = links.get(st.ino);
  }
  return d;
}

/** Differences between two trees, as readable lines; empty when they match. */
export async function compareTrees(a: string, b: string, opts: CompareOptions = {}): Promise<string[]> {
  const pa = await walk(a);
  const pb = await walk(b);
  const diffs: string[] = [];
  const onlyA = pa.filter((p) => !pb.includes(p));
  const onlyB = pb.filter((p) => !pa.includes(p));
  if (onlyA.length) diffs.push(`only in ${a}: ${onlyA.slice(0, 10).join(', ')}`);
  if (onlyB.length) diffs.push(`only in ${b}: ${onlyB.slice(0, 10).join(', ')}`);
  const la = new Map<bigint, string>();
  const lb = new Map<bigint, string>();
  const xa = opts.contentAndMtimeOnly ? new Map<string, string>() : allXattrs(a);
  const xb = opts.contentAndMtimeOnly ? new Map<string, string>() : allXattrs(b);
  for (const rel of pa.filter((p) => pb.includes(p))) {
    const da = await describe(a, rel, opts, la, xa);
    const db = await describe(b, rel, opts, lb, xb);
    for (const k of new Set([...Object.keys(da), ...Object.keys(db)])) {
      if (String(da[k]) === String(db[k])) continue;
      // Node sets times through a double of seconds (about 0.24 µs steps today): allow under 1 µs.
      if (k === 'mtimeNs' && typeof da[k] === 'bigint' && typeof db[k] === 'bigint') {
        const diff = da[k] - db[k];
        if (diff < 1000n && diff > -1000n) continue;
      }
      diffs.push(`${rel}: ${k} ${String(da[k])} != ${String(db[k])}`);
    }
  }
  return diffs;
}

/** How many entries of each type a tree holds, to prove a test tree is as rich as intended. */
export async function countTypes(root: string): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (const rel of await walk(root)) {
    const d = await describe(root, rel, { contentAndMtimeOnly: true }, new Map(), new Map());
    const t = String(d.type);
    counts[t] = (counts[t] ?? 0) + 1;
  }
  return counts;
}
