/**
 * Times to the nanosecond. Node's utimes family takes seconds as a double, and libuv
 * hands utimensat its whole seconds and the rest times 1e9, both truncated. At today's
 * dates doubles lie 2^-22 s (238 ns) apart, so most nanosecond values cannot be reached
 * that way: .123456789 arrives as .123456716. exactDouble() says whether a time can;
 * setExactTimes() sets the others with a helper process that passes utimensat the
 * nanoseconds themselves.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { constants } from 'node:os';
import { FileVolumeError } from './errors.ts';
import { displayName, nameFromBytes } from './names.ts';
import { systemReason } from '../../wording.ts';

/** Seconds and nanoseconds (0..999999999) of a time in nanoseconds, as utimensat takes them. */
export function splitNs(ns: string): { sec: bigint; nsec: number } {
  const n = BigInt(ns);
  let sec = n / 1_000_000_000n;
  let rest = n - sec * 1_000_000_000n;
  if (rest < 0n) {
    rest += 1_000_000_000n;
    sec -= 1n;
  }
  return { sec, nsec: Number(rest) };
}

/**
 * Whether Node's utimes, given `seconds` (restore.ts: nsToSeconds of `ns`), sets exactly
 * `ns`: the timespec libuv makes of the double (uv__fs_to_timespec: truncate, then move
 * a negative remainder into the seconds) is worked out here the same way.
 */
export function exactDouble(ns: string, seconds: number): boolean {
  let sec = Math.trunc(seconds);
  let nsec = Math.trunc((seconds - sec) * 1e9);
  if (nsec < 0) {
    nsec += 1e9;
    sec -= 1;
  }
  // Plain digits (every time after 1970) compare as text, without BigInts: two times for
  // each of 55k entries in a restore.
  if (ns.length > 9 && ns.length <= 24 && DIGITS.test(ns)) {
    return nsec === Number(ns.slice(-9)) && sec === Number(ns.slice(0, -9));
  }
  const want = splitNs(ns);
  return nsec === want.nsec && BigInt(sec) === want.sec;
}

const DIGITS = /^[0-9]+$/;

export interface ExactTime {
  /** Absolute path: a string, or the exact bytes of a name that is not UTF-8. */
  path: string | Buffer;
  atimeNs: string;
  mtimeNs: string;
}

/**
 * utimensat's number where perl's syscall() can call it with a packed 64-bit timespec:
 * x86-64 and the architectures on the generic system call table.
 */
const UTIMENSAT: Partial<Record<string, number>> = { x64: 280, arm64: 88, riscv64: 88, loong64: 88 };

/**
 * Reads NUL-separated records (path, atime s, atime ns, mtime s, mtime ns) and calls
 * utimensat(AT_FDCWD, path, times, AT_SYMLINK_NOFOLLOW) for each; a failure is written
 * as "errno NUL path NUL" to stderr. perl-base is part of every Debian and Ubuntu
 * system; its syscall() passes a string as a pointer to its bytes.
 */
const PERL_UTIMENSAT = `
$/ = "\\0";
my ($nr, $bad) = ($ARGV[0], 0);
while (defined(my $path = <STDIN>)) {
  chop $path;
  my @t = map { my $v = <STDIN>; chop $v; $v } 1 .. 4;
  if (syscall($nr, -100, $path, pack('q4', @t), 0x100) != 0) {
    print STDERR ($! + 0), "\\0", $path, "\\0";
    $bad = 1;
  }
}
exit $bad;
`;

export type ExactTimesTool = 'auto' | 'perl' | 'touch';

/**
 * Sets atime and mtime of each entry to the nanosecond, without following a symlink at
 * the end of its path. Through perl's syscall() where it can (~3 µs an entry); otherwise
 * through touch, one run per distinct time (~1 ms a run, so much slower on trees whose
 * times all differ). `tool` chooses one, for tests.
 */
export async function setExactTimes(
  entries: readonly ExactTime[],
  tool: ExactTimesTool = 'auto',
): Promise<void> {
  const times = new ExactTimes(tool);
  for (const e of entries) times.add(e);
  await times.finish();
}

/**
 * setExactTimes for entries that become final one by one: each goes to the helper as it is
 * added, so a restore has most of them set while it still writes (the helper uses a core
 * the restore leaves idle part of the time) and only the last ones wait for finish().
 */
export class ExactTimes {
  readonly #tool: ExactTimesTool;
  /** Every entry added: what touch is given if perl turns out not to be installed. */
  readonly #entries: ExactTime[] = [];
  readonly #nr: number | undefined;
  #perl: ChildProcessWithoutNullStreams | undefined;
  #perlExit: Promise<Ran> | undefined;
  /** Records not yet written to perl (text; a path that is not UTF-8 is written as its bytes at once). */
  #text = '';

  constructor(tool: ExactTimesTool = 'auto') {
    this.#tool = tool;
    const nr = UTIMENSAT[process.arch];
    if (tool === 'perl' && nr === undefined) throw new Error(`no utimensat number known for ${process.arch}`);
    this.#nr = tool === 'touch' ? undefined : nr;
  }

  add(e: ExactTime): void {
    this.#entries.push(e);
    if (this.#nr === undefined) return;
    if (!this.#perl) {
      const child = spawn('perl', ['-e', PERL_UTIMENSAT, String(this.#nr)], {
        stdio: ['pipe', 'pipe', 'pipe'],
        // A locale perl does not know must not put its warning before the report of a failure.
        env: { ...process.env, PERL_BADLANG: '0' },
      });
      this.#perl = child;
      this.#perlExit = collect(child);
      // Until finish() waits for it, the helper must not keep a process alive whose restore
      // was dropped without finish() or abort(): it ends at the end of its input.
      holdOpen(child, false);
    }
    const a = secNs(e.atimeNs);
    const m = secNs(e.mtimeNs);
    if (typeof e.path === 'string') this.#text += `${e.path}\0`;
    else {
      this.#flush();
      this.#perl.stdin.write(Buffer.concat([e.path, NUL]));
    }
    this.#text += `${a[0]}\0${a[1]}\0${m[0]}\0${m[1]}\0`;
    if (this.#text.length >= 1 << 16) this.#flush();
  }

  #flush(): void {
    if (this.#text === '') return;
    this.#perl!.stdin.write(Buffer.from(this.#text, 'utf8'));
    this.#text = '';
  }

  /** Resolves when every entry added has its times; rejects naming one that could not. */
  async finish(): Promise<void> {
    if (this.#entries.length === 0) return;
    if (this.#perl) {
      holdOpen(this.#perl, true);
      this.#flush();
      this.#perl.stdin.end();
      const r = await this.#perlExit!;
      if (!r.missing) return perlOutcome(r);
      if (this.#tool === 'perl') throw new Error('perl is not installed');
    }
    await withTouch(this.#entries);
  }

  kill(): void {
    this.#perl?.kill();
  }
}

function holdOpen(child: ChildProcessWithoutNullStreams, hold: boolean): void {
  // The pipes are sockets, which have ref and unref; their declared stream types do not say so.
  const handles = [child, child.stdin, child.stdout, child.stderr] as unknown as Array<{
    ref(): void;
    unref(): void;
  }>;
  for (const h of handles) {
    if (hold) h.ref();
    else h.unref();
  }
}

/** Seconds and nanoseconds as text for perl, without BigInts for the plain digits of every time after 1970. */
function secNs(ns: string): [string, string | number] {
  if (ns.length > 9 && DIGITS.test(ns)) return [ns.slice(0, -9), ns.slice(-9)];
  const { sec, nsec } = splitNs(ns);
  return [String(sec), nsec];
}

const NUL = Buffer.of(0);

function pathBytes(p: string | Buffer): Buffer {
  return typeof p === 'string' ? Buffer.from(p, 'utf8') : p;
}

function perlOutcome(r: Ran): void {
  if (r.code === 0) return;
  // errno NUL path NUL, for each entry that failed.
  const fields = r.stderr.toString('latin1').split('\0');
  const errno = Number(fields[0]);
  if (fields.length >= 3 && Number.isInteger(errno)) {
    const path = nameFromBytes(Buffer.from(fields[1]!, 'latin1'));
    const name = Object.entries(constants.errno).find(([, n]) => n === errno)?.[0];
    const more = (fields.length - 1) / 2 - 1;
    throw new FileVolumeError(
      'E_RESTORE_IO',
      `cannot set times ${displayName(path)}: ${systemReason({ code: name, message: `errno ${errno}` })}` +
        (more > 0 ? ` (and ${more} more)` : ''),
      { path, errno: name },
    );
  }
  throw new FileVolumeError(
    'E_RESTORE_IO',
    `cannot set times: perl exited with ${r.code}: ${r.stderr.toString('utf8').trim()}`,
    {},
  );
}

/** The time as touch -d takes it: @SECONDS.NANOSECONDS, exact in decimal. */
function touchTime(ns: string): string {
  const n = BigInt(ns);
  const abs = n < 0n ? -n : n;
  const frac = String(abs % 1_000_000_000n).padStart(9, '0');
  return `@${n < 0n ? '-' : ''}${abs / 1_000_000_000n}.${frac}`;
}

async function withTouch(entries: readonly ExactTime[]): Promise<void> {
  // touch sets one time on many files: one run per time, both at once when they are equal.
  const groups = new Map<string, Buffer[]>();
  const add = (key: string, path: string | Buffer) => {
    let list = groups.get(key);
    if (!list) groups.set(key, (list = []));
    list.push(pathBytes(path), NUL);
  };
  for (const e of entries) {
    if (e.atimeNs === e.mtimeNs) add(`both ${touchTime(e.atimeNs)}`, e.path);
    else {
      add(`-a ${touchTime(e.atimeNs)}`, e.path);
      add(`-m ${touchTime(e.mtimeNs)}`, e.path);
    }
  }
  for (const [key, paths] of groups) {
    const [which, time] = key.split(' ') as [string, string];
    const args = ['-0', '-r', 'touch', '-h', '-c', ...(which === 'both' ? [] : [which]), '-d', time, '--'];
    const r = await run('xargs', args, Buffer.concat(paths));
    if (r.missing) {
      throw new FileVolumeError(
        'E_RESTORE_IO',
        'cannot set times to the nanosecond: neither perl nor xargs is installed',
        {},
      );
    }
    if (r.code !== 0) {
      throw new FileVolumeError(
        'E_RESTORE_IO',
        `cannot set times: touch: ${r.stderr.toString('utf8').trim().split('\n').slice(0, 3).join('; ')}`,
        {},
      );
    }
  }
}

interface Ran {
  code: number | null;
  stdout: Buffer;
  stderr: Buffer;
  /** The tool is not installed. */
  missing: boolean;
}

/** Runs a tool with `input` on stdin. */
export function run(cmd: string, args: string[], input: Buffer, cwd?: string): Promise<Ran> {
  const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], ...(cwd ? { cwd } : {}) });
  const ran = collect(child);
  child.stdin.end(input);
  return ran;
}

/** What a child writes and how it ends. */
function collect(child: ChildProcessWithoutNullStreams): Promise<Ran> {
  return new Promise((resolvePromise, reject) => {
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    // A tool that exits early (or is missing) closes its stdin: the failure is in its exit.
    child.stdin.on('error', () => {});
    child.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT')
        resolvePromise({ code: null, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0), missing: true });
      else reject(e);
    });
    child.on('close', (code) =>
      resolvePromise({ code, stdout: Buffer.concat(out), stderr: Buffer.concat(err), missing: false }),
    );
  });
}
