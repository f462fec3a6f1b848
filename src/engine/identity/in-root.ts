/**
 * File operations inside a restored system's root, mounted on the imaging machine. The
 * image's symlinks are the restored system's, not ours: an absolute /etc/hostname -> /etc/x
 * means ROOT/etc/x, and `..` stops at ROOT, as they would once it boots. Folders on the way
 * are resolved that way (chroot's reading, as systemd's --root tools do); the last name is
 * never followed when written or removed: a symlink there is replaced or removed itself, so
 * nothing the image holds can make imgcast write outside ROOT.
 *
 * The mount is this process's own and nothing else writes to it meanwhile, so checking a
 * path and then using it cannot be raced.
 */
import { constants, type Stats } from 'node:fs';
import { lstat, open, readdir, readFile, readlink, unlink } from 'node:fs/promises';
import { join } from 'node:path';

/** Symlinks followed in one path before it counts as a loop (Linux's own limit). */
const MAX_LINKS = 40;

export class RootPath {
  readonly root: string;
  constructor(root: string) {
    this.root = root;
  }

  /**
   * The real path below the root that `rel` (an absolute-looking path such as "etc/hostname")
   * names, symlinks resolved within the root; the last name is followed only with
   * `followLast`. Undefined when a folder on the way is missing or not a folder.
   */
  async resolve(rel: string, followLast: boolean): Promise<string | undefined> {
    const parts = rel.split('/').filter((p) => p !== '' && p !== '.');
    const at: string[] = [];
    let links = 0;
    while (parts.length > 0) {
      const name = parts.shift()!;
      if (name === '..') {
        at.pop();
        continue;
      }
      const here = join(this.root, ...at, name);
      const st = await lstat(here).catch(() => undefined);
      const last = parts.length === 0;
      if (!st) return last ? here : undefined;
      if (st.isSymbolicLink() && (!last || followLast)) {
        if (++links > MAX_LINKS) return undefined;
        const target = await readlink(here);
        if (target.startsWith('/')) at.length = 0;
        parts.unshift(...target.split('/').filter((p) => p !== '' && p !== '.'));
        continue;
      }
      if (!last && !st.isDirectory()) return undefined;
      at.push(name);
    }
    return join(this.root, ...at);
  }

  /** lstat of what `rel` names (the last name not followed), or undefined. */
  async stat(rel: string): Promise<Stats | undefined> {
    const p = await this.resolve(rel, false);
    return p ? lstat(p).catch(() => undefined) : undefined;
  }

  /** Whether `rel` names anything, following symlinks within the root. */
  async exists(rel: string): Promise<boolean> {
    const p = await this.resolve(rel, true);
    return p
      ? lstat(p).then(
          () => true,
          () => false,
        )
      : false;
  }

  /** The content of a regular file (symlinks followed within the root), or undefined. */
  async read(rel: string): Promise<Buffer | undefined> {
    const p = await this.resolve(rel, true);
    if (!p) return undefined;
    const st = await lstat(p).catch(() => undefined);
    if (!st?.isFile()) return undefined;
    return readFile(p);
  }

  /**
   * Writes a file's content. A regular file of one link is rewritten in place, keeping its
   * owner, mode and extended attributes (an SELinux label, for one); anything else (a
   * symlink, a file hard-linked elsewhere, nothing) is replaced by a new file with `meta`
   * (default root-owned, 0644). A folder or a device is left alone: the reason is returned.
   */
  async write(
    rel: string,
    content: string | Buffer,
    meta: { mode?: number; uid?: number; gid?: number } = {},
  ): Promise<{ replaced?: string } | { refused: string }> {
    const p = await this.resolve(rel, false);
    if (!p) return { refused: `the folder it belongs in is missing or not a folder` };
    const st = await lstat(p).catch(() => undefined);
    if (st?.isFile() && st.nlink === 1) {
      // O_NOFOLLOW: what was checked a moment ago is what is opened.
      const fh = await open(p, constants.O_WRONLY | constants.O_TRUNC | constants.O_NOFOLLOW);
      try {
        await fh.writeFile(content);
      } finally {
        await fh.close();
      }
      return {};
    }
    if (st && !st.isFile() && !st.isSymbolicLink())
      return { refused: `it is ${describeType(st)}, not a file` };
    let replaced: string | undefined;
    if (st) {
      replaced = st.isSymbolicLink()
        ? `was a symlink to ${await readlink(p)}`
        : `was hard-linked to ${st.nlink - 1} other name(s)`;
      await unlink(p);
    }
    const fh = await open(
      p,
      constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
      meta.mode ?? 0o644,
    );
    try {
      await fh.writeFile(content);
      await fh.chown(meta.uid ?? 0, meta.gid ?? 0);
      // After chown, which clears setuid bits, and beyond the umask.
      await fh.chmod(meta.mode ?? 0o644);
    } finally {
      await fh.close();
    }
    return replaced ? { replaced } : {};
  }

  /** Removes a file or symlink (never what a symlink points to); true when something was removed. */
  async remove(rel: string): Promise<boolean> {
    const p = await this.resolve(rel, false);
    if (!p) return false;
    const st = await lstat(p).catch(() => undefined);
    if (!st || st.isDirectory()) return false;
    await unlink(p);
    return true;
  }

  /** Names in a folder (followed within the root) that `match`, with their lstat; [] when there is no such folder. */
  async list(
    dirRel: string,
    match: (name: string) => boolean,
  ): Promise<Array<{ name: string; stat: Stats }>> {
    const dir = await this.resolve(dirRel, true);
    if (!dir) return [];
    const names = await readdir(dir).catch(() => [] as string[]);
    const out: Array<{ name: string; stat: Stats }> = [];
    for (const name of names.sort()) {
      if (!match(name)) continue;
      const st = await lstat(join(dir, name)).catch(() => undefined);
      if (st) out.push({ name, stat: st });
    }
    return out;
  }
}

function describeType(st: Stats): string {
  if (st.isDirectory()) return 'a folder';
  if (st.isFIFO()) return 'a named pipe';
  if (st.isSocket()) return 'a socket';
  if (st.isBlockDevice() || st.isCharacterDevice()) return 'a device node';
  return 'not a regular file';
}
