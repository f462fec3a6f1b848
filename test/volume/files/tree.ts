/**
 * Test trees holding every kind of entry a file volume keeps, and a snapshot of a
 * tree's content and metadata to compare a restore against its source.
 */
import { isUtf8 } from 'node:buffer';
import { execFileSync, spawnSync } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  lchownSync,
  linkSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  symlinkSync,
  writeFileSync,
  writeSync,
  lutimesSync,
  chownSync,
} from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { CHUNK_SIZE } from '../../../src/image/types.ts';

/**
 * Like tempDir from test/helpers, but also removable when the tree holds read-only
 * directories and the tests run as an ordinary user.
 */
export async function scratchDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'imgcast-files-'));
  t.after(async () => {
    spawnSync('chmod', ['-R', 'u+rwx', dir]);
    await rm(dir, { recursive: true, force: true });
  });
  return dir;
}

/** Deterministic incompressible-ish bytes, so packs and pieces hold real data. */
export function bytes(seed: number, length: number): Buffer {
  const key = createHash('sha256').update(String(seed)).digest();
  return createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(length));
}

export const SMALL_FILES = 400;
export const NS_MTIME = '1600000000987654321';
export const ODD_NAMES = ['with space', 'new\nline', 'ünïcödé ☃', '-leading-dash', 'back\\slash', 'eq=uals'];
/** 'café.txt' in Latin-1: not valid UTF-8. */
export const LATIN1_NAME = Buffer.from('caf\xe9.txt', 'latin1');
/** 'dir-Çü' as CP437 bytes, plus a byte no encoding would produce on its own. */
export const CP437_DIR = Buffer.from([0x64, 0x69, 0x72, 0x2d, 0x80, 0x81, 0xff]);

/** A path of byte names, for names that are not UTF-8. */
export function bpath(root: string, ...names: Array<string | Buffer>): Buffer {
  const parts: Buffer[] = [Buffer.from(root)];
  for (const n of names) parts.push(Buffer.from('/'), typeof n === 'string' ? Buffer.from(n) : n);
  return Buffer.concat(parts);
}

/** A snapshot key for a name: the name itself, or <hex> when it is not UTF-8. */
function keyOf(name: Buffer): string {
  return isUtf8(name) ? name.toString('utf8') : `<${name.toString('hex')}>`;
}

/** Builds the tree; returns what it could not create (e.g. xattr namespaces the kernel refuses). */
export function buildTree(root: string, opts: { rootOnly: boolean }): string[] {
  const notes: string[] = [];
  const w = (rel: string, data: Buffer | string) => writeFileSync(join(root, rel), data);
  w('plain.txt', 'hello imgcast\n');
  w('empty', '');
  w('big.bin', bytes(1, 2 * CHUNK_SIZE + 12345));
  mkdirSync(join(root, 'small'));
  for (let i = 0; i < SMALL_FILES; i++) {
    w(`small/f${String(i).padStart(4, '0')}`, bytes(1000 + i, 3000 + ((i * 7919) % 30000)));
  }
  mkdirSync(join(root, 'dup'));
  for (const n of ['a', 'b', 'c']) w(`dup/${n}`, bytes(7, 50000));
  w('zeros', Buffer.alloc(20000)); // non-sparse zeros are data, kept as such

  // Sparse: 64 MiB with data at two places.
  const fd = openSync(join(root, 'sparse.img'), 'w');
  writeSync(fd, Buffer.from('first'), 0, 5, 1024 * 1024);
  writeSync(fd, bytes(3, 10000), 0, 10000, 40 * 1024 * 1024 + 100);
  closeSync(fd);
  execFileSync('truncate', ['-s', String(64 * 1024 * 1024), join(root, 'sparse.img')]);

  mkdirSync(join(root, 'links'));
  symlinkSync('/etc/passwd', join(root, 'links/abs'));
  symlinkSync('../plain.txt', join(root, 'links/rel'));
  symlinkSync('nowhere/x', join(root, 'links/dangling'));

  mkdirSync(join(root, 'hard/sub'), { recursive: true });
  w('hard/one', bytes(9, 70000));
  linkSync(join(root, 'hard/one'), join(root, 'hard/two'));
  linkSync(join(root, 'hard/one'), join(root, 'hard/sub/three'));

  execFileSync('mkfifo', [join(root, 'fifo')]);
  // A socket file left behind by a program; bound, never listened on.
  execFileSync('python3', [
    '-c',
    'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])',
    join(root, 'sock'),
  ]);

  w('suid', '#!/bin/sh\n');
  chmodSync(join(root, 'suid'), 0o4755);
  w('sgid', 'x');
  chmodSync(join(root, 'sgid'), 0o2711);
  mkdirSync(join(root, 'sticky'));
  chmodSync(join(root, 'sticky'), 0o1777);
  w('readonly', 'ro');
  chmodSync(join(root, 'readonly'), 0o400);

  // Read-only directory: its children must still be restored and get their metadata.
  mkdirSync(join(root, 'locked'));
  w('locked/inside', 'in a read-only directory');
  chmodSync(join(root, 'locked'), 0o500);

  mkdirSync(join(root, 'odd'));
  for (const n of ODD_NAMES) w(`odd/${n}`, n);
  // Names that are not UTF-8: a Latin-1 file name, a directory as a CP437 zip leaves it,
  // a fifo, and a symlink whose target is such a name.
  writeFileSync(bpath(root, 'odd', LATIN1_NAME), 'a Latin-1 name');
  mkdirSync(bpath(root, 'odd', CP437_DIR));
  writeFileSync(bpath(root, 'odd', CP437_DIR, 'inside'), 'in a CP437 directory');
  execFileSync('mkfifo', [join(root, 'odd/fifo-tmp')]);
  renameSync(join(root, 'odd/fifo-tmp'), bpath(root, 'odd', Buffer.from('fifo-\xe9', 'latin1')));
  symlinkSync(Buffer.concat([Buffer.from('../odd/'), LATIN1_NAME]), bpath(root, 'links', 'latin1'));

  setXattr(root, 'plain.txt', 'user.test', 'value one', notes);
  setXattr(root, 'plain.txt', 'user.empty', '', notes);
  setXattr(root, 'odd/new\nline', 'user.bin', '0x00ff10', notes);
  setXattr(root, 'small', 'user.dir', 'on a directory', notes);
  // setfattr takes its path as text; python's os.setxattr takes the name's bytes.
  const r = spawnSync('python3', [
    '-c',
    'import os,sys; os.setxattr(bytes.fromhex(sys.argv[1]), "user.latin", b"on a Latin-1 name")',
    bpath(root, 'odd', LATIN1_NAME).toString('hex'),
  ]);
  if (r.status !== 0) notes.push(`cannot set user.latin on the Latin-1 name: ${r.stderr.toString().trim()}`);

  if (opts.rootOnly) {
    execFileSync('mknod', [join(root, 'null'), 'c', '1', '3']);
    execFileSync('mknod', [join(root, 'blk'), 'b', '7', '200']);
    chmodSync(join(root, 'null'), 0o666);
    w('owned', 'by someone');
    chownSync(join(root, 'owned'), 1234, 5678);
    w('suid-owned', 'x');
    chownSync(join(root, 'suid-owned'), 1001, 1002);
    chmodSync(join(root, 'suid-owned'), 0o6755);
    lchownSync(join(root, 'links/rel'), 4321, 8765);
    mkdirSync(join(root, 'home'));
    chownSync(join(root, 'home'), 2000, 2000);
    chmodSync(join(root, 'home'), 0o700);
    setXattr(root, 'owned', 'trusted.imgcast', 'trusted value', notes);
    setXattr(root, 'owned', 'security.imgcast', 'security value', notes);
    // A symlink's own xattr (only trusted/security are allowed on symlinks).
    setXattr(root, 'links/abs', 'trusted.onlink', 'link value', notes, true);
  }

  setTimes(root);
  execFileSync('touch', ['-h', '-m', '-d', '@1600000000.987654321', join(root, 'plain.txt')]);
  return notes;
}

function setXattr(
  root: string,
  rel: string,
  name: string,
  value: string,
  notes: string[],
  noDeref = false,
): void {
  const args = [...(noDeref ? ['-h'] : []), '-n', name, '-v', value, '--', join(root, rel)];
  const r = spawnSync('setfattr', args, { encoding: 'utf8' });
  if (r.status !== 0) notes.push(`cannot set ${name} on ${rel}: ${r.stderr.trim()}`);
}

/**
 * Gives every entry times the test can compare: mtime in the past (before 1970 for every
 * fifth entry), atime a day in the future. relatime bumps atime on a read when atime <=
 * mtime or ctime (and utimes just set ctime to now), so only a future atime survives the
 * tests' own reads. Times before 1970 go to Node as strings: it reads a negative number
 * as "now". Every third entry gets nanoseconds a double cannot carry (Node's utimes
 * would set .123456716 for .123456789), through touch, which parses them exactly.
 */
function setTimes(root: string): void {
  const all = walk(root).reverse(); // children before parents: setting a child's times touches no parent
  const now = Date.now() / 1000;
  const exact: string[] = [];
  all.forEach(({ abs }, i) => {
    const mtime = i % 5 === 0 ? String(-157766400 - i - 0.654321) : 1577836800 + i + 0.654321;
    lutimesSync(abs, now + 2 * 86400 + i / 1000 + 0.000123, mtime);
    if (i % 3 === 1 && isUtf8(abs)) {
      const ns = String((123456789 + i * 7919) % 1e9).padStart(9, '0');
      const sec = i % 5 === 0 ? -157766400 - i : 1577836800 + i;
      exact.push(abs.toString(), `@${Math.trunc(now) + 2 * 86400 + i}.${ns}`, `@${sec}.${ns}`);
    }
  });
  const loop =
    'while [ $# -gt 0 ]; do touch -h -a -d "$2" -- "$1" && touch -h -m -d "$3" -- "$1" || exit 1; shift 3; done';
  execFileSync('sh', ['-c', loop, 'sh', ...exact]);
}

/** Every entry under root, by bytes: `rel` is its snapshot key, `abs` its exact path. */
function walk(root: string, rel = '.', abs: Buffer = Buffer.from(root)): Array<{ rel: string; abs: Buffer }> {
  const out = [{ rel, abs }];
  if (!lstatSync(abs).isDirectory()) return out;
  const names = readdirSync(abs, { encoding: 'buffer' }).sort(Buffer.compare);
  for (const n of names) {
    out.push(
      ...walk(root, rel === '.' ? keyOf(n) : `${rel}/${keyOf(n)}`, Buffer.concat([abs, Buffer.from('/'), n])),
    );
  }
  return out;
}

export interface Snap {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size?: number;
  sha?: string;
  blocks?: number;
  mtimeNs: bigint;
  atimeNs: bigint;
  link?: string;
  rdev?: number;
  /** Other names of the same inode, so hard links compare by structure not inode number. */
  linkedWith?: string;
}

/** Content and metadata of every entry, keyed by relative path; times in nanoseconds. */
export function snapshot(root: string): Map<string, Snap> {
  const out = new Map<string, Snap>();
  const byIno = new Map<bigint, string[]>();
  for (const { rel, abs } of walk(root)) {
    if (rel === 'lost+found') continue;
    const st = lstatSync(abs, { bigint: true });
    const s: Snap = {
      type: st.isFile()
        ? 'file'
        : st.isDirectory()
          ? 'dir'
          : st.isSymbolicLink()
            ? 'symlink'
            : st.isFIFO()
              ? 'fifo'
              : st.isSocket()
                ? 'socket'
                : st.isCharacterDevice()
                  ? 'chardev'
                  : st.isBlockDevice()
                    ? 'blockdev'
                    : 'other',
      mode: Number(st.mode & 0o7777n),
      uid: Number(st.uid),
      gid: Number(st.gid),
      mtimeNs: st.mtimeNs,
      atimeNs: st.atimeNs,
    };
    if (s.type === 'file') {
      s.size = Number(st.size);
      s.blocks = Number(st.blocks);
      s.sha = createHash('sha256').update(readFileSync(abs)).digest('hex');
      if (st.nlink > 1n) {
        const list = byIno.get(st.ino) ?? [];
        list.push(rel);
        byIno.set(st.ino, list);
      }
    }
    if (s.type === 'symlink') s.link = keyOf(readlinkSync(abs, { encoding: 'buffer' }));
    if (s.type === 'chardev' || s.type === 'blockdev') s.rdev = Number(st.rdev);
    out.set(rel, s);
  }
  for (const names of byIno.values()) for (const n of names) out.get(n)!.linkedWith = names.join('|');
  return out;
}

/** The getfattr dump of a tree with relative names, for comparing xattrs independently of our parser. */
export function xattrDump(root: string): string {
  const r = spawnSync('getfattr', ['-R', '-P', '-h', '-d', '-m', '-', '-e', 'hex', '.'], {
    cwd: root,
    encoding: 'latin1',
  });
  return r.stdout
    .split('\n\n')
    .filter((s) => s.trim() !== '' && !s.includes('# file: ./lost+found'))
    .map((s) => s.trim())
    .sort()
    .join('\n\n');
}
