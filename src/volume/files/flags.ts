/**
 * Inode flags (lsattr/chattr: immutable, append-only, nodump, noatime, sync, dirsync,
 * nocow…) through e2fsprogs' lsattr and chattr: Node has no ioctl and imgcast takes no
 * native addons. Both run in bulk under xargs, the names NUL-separated bytes on its
 * stdin, so any name (not UTF-8, holding a newline) passes exactly and one process
 * serves thousands of entries. Only regular files and directories have them.
 */
import { spawn, spawnSync } from 'node:child_process';
import { FileVolumeError } from './errors.ts';
import { nameBytes } from './names.ts';
import { run } from './times.ts';
import { systemReason } from '../../wording.ts';

/**
 * The flags kept, as lsattr and chattr letter them: what a user or program sets with
 * chattr. Left out are the ones the filesystem keeps for itself (e extents, E encrypted,
 * I indexed directory, N inline data, V verity), which no one restores, and F (casefold),
 * which can only be set on an empty directory.
 */
export const KEPT_FLAGS = 'suSDiadAcjtTCxPm';

/** Set last of all (after contents, times, xattrs and every other flag): nothing can change such an inode after. */
const LOCKING = /[ia]/;

/** Where lsattr and chattr are not supported by the filesystem: no flags, not a failure. */
const UNSUPPORTED = /Operation not supported|Inappropriate ioctl for device/;

const NUL = Buffer.of(0);

export interface FlagScan {
  /** Queues an entry (its path relative to the root, '.' for the root) for lsattr. */
  add(rel: string): void;
  /** Flags by relative path, only for entries that have some. */
  finish(): Promise<Map<string, string>>;
  kill(): void;
}

const NO_FLAGS: FlagScan = { add() {}, finish: async () => new Map(), kill() {} };

/**
 * Starts lsattr over the entries the walk queues, beside it, so it runs on another core
 * while the walk reads data. A root on a filesystem without flags (tmpfs of old kernels,
 * vfat) costs one short lsattr run and no scan.
 */
export function startFlagScan(root: string): FlagScan {
  // argv and cwd are text: a root whose path is not UTF-8 goes without the probe.
  if (root.isWellFormed()) {
    const probe = spawnSync('lsattr', ['-d', '--', root], { encoding: 'utf8' });
    if (probe.error && (probe.error as NodeJS.ErrnoException).code === 'ENOENT') throw missing('lsattr');
    if (probe.status !== 0 && UNSUPPORTED.test(probe.stderr)) return NO_FLAGS;
  }
  const child = spawn('xargs', ['-0', '-r', 'lsattr', '-d', '--'], {
    cwd: root.isWellFormed() ? root : '/',
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const rels: string[] = [];
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  let queued: Buffer[] = [];
  let queuedBytes = 0;
  const prefix = root.isWellFormed() ? Buffer.from('./') : Buffer.concat([nameBytes(root), Buffer.from('/')]);
  child.stdout.on('data', (b: Buffer) => out.push(b));
  child.stderr.on('data', (b: Buffer) => err.push(b));
  child.stdin.on('error', () => {});
  const closed = new Promise<number | null>((resolvePromise, reject) => {
    child.on('error', (e: NodeJS.ErrnoException) =>
      reject(e.code === 'ENOENT' ? missing('xargs') : flagError(`cannot run lsattr: ${systemReason(e)}`)),
    );
    child.on('close', resolvePromise);
  });
  closed.catch(() => {});
  const flush = () => {
    if (queuedBytes === 0) return;
    child.stdin.write(Buffer.concat(queued, queuedBytes));
    queued = [];
    queuedBytes = 0;
  };
  return {
    add(rel) {
      rels.push(rel);
      const name = nameFor(rel, prefix);
      queued.push(name, NUL);
      queuedBytes += name.length + 1;
      if (queuedBytes >= 1 << 16) flush();
    },
    async finish() {
      flush();
      child.stdin.end();
      const code = await closed;
      const stderr = Buffer.concat(err).toString('utf8');
      // xargs: 123 when a run of lsattr failed (for some of its names), 127 when lsattr is missing.
      if (code === 127) throw missing('lsattr');
      const problems = stderr.split('\n').filter((l) => l.trim() !== '' && !UNSUPPORTED.test(l));
      if ((code !== 0 && code !== 123) || problems.length > 0) {
        throw flagError(
          `lsattr could not read the inode flags (exit ${code}): ${problems.slice(0, 5).join('; ')}`,
          { exitCode: code, stderr: problems.slice(0, 50) },
        );
      }
      return parseLsattr(Buffer.concat(out), rels, prefix);
    },
    kill() {
      child.kill();
    },
  };
}

/** The name lsattr is given for an entry (and prints back). */
function nameFor(rel: string, prefix: Buffer): Buffer {
  return rel === '.' && prefix.length === 2 ? Buffer.from('.') : Buffer.concat([prefix, nameBytes(rel)]);
}

/**
 * lsattr -d writes "FLAGS NAME\n" for each name in the order given, and nothing (only a
 * complaint on stderr) for one it cannot read; a name may hold spaces and newlines, so
 * each expected name is matched byte for byte rather than the output split into lines.
 * The output is read as latin1 (a character per byte), where a name of plain ASCII is
 * itself: 55k entries take a few ms instead of a Buffer per name. Exported for tests.
 */
export function parseLsattr(output: Buffer, rels: readonly string[], prefix: Buffer): Map<string, string> {
  const flags = new Map<string, string>();
  const text = output.toString('latin1');
  const before = prefix.toString('latin1');
  let pos = 0;
  for (const rel of rels) {
    if (pos >= text.length) break;
    const space = text.indexOf(' ', pos);
    if (space < 0) break;
    const name =
      rel === '.' && before === './'
        ? '.'
        : before + (ASCII.test(rel) ? rel : nameBytes(rel).toString('latin1'));
    const end = space + 1 + name.length;
    if (text.charCodeAt(end) !== 0x0a || !text.startsWith(name, space + 1)) continue;
    const field = text.slice(pos, space);
    if (!FIELD.test(field)) break;
    if (ANY_KEPT.test(field)) flags.set(rel, [...KEPT_FLAGS].filter((f) => field.includes(f)).join(''));
    pos = end + 1;
  }
  if (pos !== text.length) {
    throw flagError(`cannot read lsattr's output at byte ${pos} of ${text.length}`);
  }
  return flags;
}

// eslint-disable-next-line no-control-regex -- plain ASCII, control characters included
const ASCII = /^[\x00-\x7f]*$/;
const FIELD = /^[-A-Za-z]+$/;
const ANY_KEPT = new RegExp(`[${KEPT_FLAGS}]`);

export interface FlagsApplied {
  /** chattr's complaints where the target filesystem does not support a flag. */
  unsupported: string[];
  /** Entries whose flags a restore not running as root was not allowed to set (immutable, append-only, data journalling). */
  denied: number;
}

/**
 * Sets each entry's flags with chattr +FLAGS, one xargs run per set of flags, those with
 * immutable or append-only last. A restore calls this after everything else it does to
 * the tree: such an inode cannot be written, have its times or xattrs set, or be linked.
 */
export async function applyFlags(
  entries: ReadonlyArray<{ path: string | Buffer; flags: string }>,
  isRoot: boolean,
): Promise<FlagsApplied> {
  const groups = new Map<string, Buffer[]>();
  for (const e of entries) {
    let list = groups.get(e.flags);
    if (!list) groups.set(e.flags, (list = []));
    list.push(typeof e.path === 'string' ? Buffer.from(e.path, 'utf8') : e.path, NUL);
  }
  const order = [...groups.keys()].sort((a, b) => Number(LOCKING.test(a)) - Number(LOCKING.test(b)));
  const result: FlagsApplied = { unsupported: [], denied: 0 };
  for (const flags of order) {
    const r = await run(
      'xargs',
      ['-0', '-r', 'chattr', `+${flags}`, '--'],
      Buffer.concat(groups.get(flags)!),
    );
    if (r.missing) throw missing('xargs');
    if (r.code === 0) continue;
    if (r.code === 127) throw missing('chattr');
    const lines = r.stderr
      .toString('utf8')
      .split('\n')
      .filter((l) => l.trim() !== '');
    const other: string[] = [];
    for (const line of lines) {
      if (UNSUPPORTED.test(line)) result.unsupported.push(line);
      else if (!isRoot && /Operation not permitted/.test(line)) result.denied++;
      else other.push(line);
    }
    if (r.code !== 123 || other.length > 0) {
      throw flagError(
        `chattr could not set inode flags +${flags} (exit ${r.code}): ${other.slice(0, 5).join('; ')}`,
        { exitCode: r.code, stderr: other.slice(0, 50) },
      );
    }
  }
  return result;
}

function missing(tool: string): FileVolumeError {
  const pkg = tool === 'xargs' ? 'findutils' : 'e2fsprogs';
  return flagError(`cannot read or set inode flags: ${tool} is not installed (package "${pkg}")`);
}

function flagError(message: string, details: Record<string, unknown> = {}): FileVolumeError {
  return new FileVolumeError('E_INODE_FLAGS', message, details);
}
