/**
 * Kernel settings (sysctls under /proc/sys) that receivers raise while they run, shared by
 * every receiver on the machine and put back even when a receiver is killed.
 *
 * A state file per (setting, network namespace) in the state directory records the value the
 * setting had before any receiver touched it and who holds the change: pid plus the process's
 * start time (a recycled pid is not mistaken for a live holder) and a token per Tuning (one
 * process may hold several). The file is written before /proc/sys is, so a receiver killed at
 * any point leaves enough behind for the next one to undo it: tuneKernel and
 * recoverKernelSettings drop holders that are gone and restore the original once none is left.
 *
 * Namespaces: the ipfrag_* settings exist once per network namespace, so their files are keyed
 * by the namespace's inode (readlink /proc/self/ns/net) and only processes inside that
 * namespace touch them; host-wide settings such as net.core.rmem_max are keyed 'global'
 * (inside a namespace they are read-only, so a write there is refused and left to a receiver
 * in the host namespace). Files of namespaces that no longer exist stay until the state
 * directory goes (/run is emptied at boot); nothing else can tell a dead namespace's inode.
 *
 * The original is restored only while the setting still holds a value a receiver wrote: if
 * someone else changed it in between (an administrator, or a new namespace that reused a dead
 * one's inode) their value is left alone. A state file from an earlier boot is dropped without
 * writing anything, as the kernel started again from its defaults.
 *
 * Holders are pids as /proc shows them here, so processes sharing a state directory must share a
 * pid namespace (`ip netns exec` keeps it; a container with its own /run does not share the dir).
 *
 * Read-modify-write of the directory happens under a lock directory (see lockState), because
 * several receivers on one machine start at the same moment. Everything is synchronous so that
 * release() can run from an 'exit' or signal handler.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import {
  accessSync,
  closeSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
  constants as fsConstants,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { TransportError } from './errors.ts';

/** One setting a receiver needs. Give exactly one of `atLeast` and `value`. */
export interface SysctlWant {
  /** Dotted sysctl name, as `sysctl` spells it: 'net.core.rmem_max' is /proc/sys/net/core/rmem_max. */
  name: string;
  /** Raise the setting to this unless it is already at least this much. */
  atLeast?: number;
  /** Set exactly this value. */
  value?: number;
  /**
   * True when each network namespace has its own copy (net.ipv4.ipfrag_*), false when the setting is
   * host-wide (net.core.rmem_max).
   */
  perNamespace: boolean;
}

export interface TuningOptions {
  /** Where the state files live: default env IMGCAST_STATE_DIR, else /run/imgcast/kernel. */
  stateDir?: string;
  /** Receives one line per change, refusal or restore, and the reason a release could not finish. */
  log?: (line: string) => void;
  /**
   * How long to wait for another process's lock on the state directory (default 30 s). An exit
   * handler may want less: a release that gives up is finished by the next receiver's recovery.
   */
  lockWaitMs?: number;
}

/** A setting held at `to` on our behalf; `shared` when another live receiver had already changed it. */
export interface AppliedSetting {
  name: string;
  from: number;
  to: number;
  shared: boolean;
}

/** Every want lands in exactly one of applied, satisfied and refused. */
export interface Tuning {
  readonly applied: readonly AppliedSetting[];
  /** Already as wanted without any change: nothing is held or restored for these. */
  readonly satisfied: ReadonlyArray<{ name: string; value: number }>;
  /** Could not be changed here; `reason` is a sentence for the operator. Nothing is held for these. */
  readonly refused: ReadonlyArray<{ name: string; reason: string }>;
  /**
   * Gives up our hold; the last holder to go writes the originals back. Idempotent, never throws
   * (problems go to the log), safe to call from an exit or signal handler.
   */
  release(): void;
}

const DEFAULT_STATE_DIR = '/run/imgcast/kernel';
const DEFAULT_LOCK_WAIT_MS = 30_000;
/** A lock is held for milliseconds: one this old whose owner is gone was left by a process that died. */
const STALE_LOCK_MS = 10_000;
const LOCK = '.lock';
/** Only the holder of this may remove a stale LOCK, so two breakers cannot remove a fresh lock by turns. */
const BREAKER = '.lock-break';
const NAME_RE = /^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+$/;
/** Temporary files and directories carry their creator as `.<pid>-<start>.<hex>.(tmp|trash)`. */
const LITTER_RE = /\.(\d+)-(\d+)\.[0-9a-f]+\.(tmp|trash)$/;
const STATE_RE = /^(.+)@(\d+|global)\.json$/;
/** The write was refused by the kernel or the file system, rather than something going wrong. */
const REFUSAL_CODES = new Set(['EACCES', 'EPERM', 'EROFS', 'EINVAL']);

interface Holder {
  pid: number;
  start: number;
  token: string;
}

interface State {
  v: 1;
  name: string;
  /** Namespace inode, or 'global'. */
  ns: string;
  /** /proc/sys/kernel/random/boot_id when the file was made. */
  boot: string;
  original: number;
  /**
   * Every value a holder wrote or was about to write: restoring is only right while the setting
   * holds one of them.
   */
  tuned: number[];
  holders: Holder[];
}

const sleepCell = new Int32Array(new SharedArrayBuffer(4));
function sleepMs(ms: number): void {
  Atomics.wait(sleepCell, 0, 0, ms);
}

function errCode(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | null)?.code;
}

function describe(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Field 22 of /proc/PID/stat (clock ticks after boot), or null when there is no such process. */
function startTime(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: count fields after its last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const start = Number(fields[19]);
    return Number.isFinite(start) ? start : null;
  } catch {
    return null;
  }
}

function alive(h: { pid: number; start: number }): boolean {
  return startTime(h.pid) === h.start;
}

let selfCache: { pid: number; start: number; tag: string } | null = null;
function self(): { pid: number; start: number; tag: string } {
  if (selfCache?.pid !== process.pid) {
    const start = startTime(process.pid);
    if (start === null) throw new TransportError('E_TUNING', 'cannot read this process from /proc/self/stat');
    selfCache = { pid: process.pid, start, tag: `${process.pid}-${start}` };
  }
  return selfCache;
}

function bootId(): string {
  return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
}

function netNamespace(): string {
  const link = readlinkSync('/proc/self/ns/net');
  const m = /^net:\[(\d+)\]$/.exec(link);
  if (!m?.[1]) throw new TransportError('E_TUNING', `cannot tell this network namespace from "${link}"`);
  return m[1];
}

function sysctlPath(name: string): string {
  return `/proc/sys/${name.replaceAll('.', '/')}`;
}

function readSysctl(name: string): number {
  const text = readFileSync(sysctlPath(name), 'utf8').trim();
  const n = Number(text);
  if (!/^-?\d+$/.test(text) || !Number.isSafeInteger(n)) {
    throw new TransportError('E_TUNING', `${name} holds "${text}", not a single integer`, { name });
  }
  return n;
}

function writeSysctl(name: string, value: number): void {
  writeFileSync(sysctlPath(name), `${value}\n`);
}

function stateDirOf(opts: TuningOptions): string {
  return opts.stateDir ?? process.env.IMGCAST_STATE_DIR ?? DEFAULT_STATE_DIR;
}

function scratchName(path: string, kind: 'tmp' | 'trash'): string {
  return `${path}.${self().tag}.${randomBytes(4).toString('hex')}.${kind}`;
}

/** Writes `text` so that `path` holds either its old or its new content after a crash, never a mix. */
function writeDurably(path: string, text: string): void {
  const tmp = scratchName(path, 'tmp');
  const fd = openSync(tmp, 'w', 0o644);
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
  syncDir(dirname(path));
}

function syncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function removeFile(path: string): void {
  rmSync(path, { force: true });
}

function readState(path: string, log: (l: string) => void): State | null {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    if (errCode(e) === 'ENOENT') return null;
    throw e;
  }
  try {
    const s = JSON.parse(text) as State;
    const ok =
      s.v === 1 &&
      typeof s.name === 'string' &&
      typeof s.ns === 'string' &&
      typeof s.boot === 'string' &&
      Number.isSafeInteger(s.original) &&
      Array.isArray(s.tuned) &&
      s.tuned.every((t) => Number.isSafeInteger(t)) &&
      Array.isArray(s.holders) &&
      s.holders.every(
        (h) => Number.isInteger(h.pid) && Number.isFinite(h.start) && typeof h.token === 'string',
      );
    if (ok) return s;
  } catch {
    /* reported below */
  }
  // Files are replaced by rename, so this is not a torn write: someone edited it. Without a
  // trustworthy original there is nothing to restore; keeping it would block the setting forever.
  log(
    `kernel tuning: removed unreadable state file ${path} (it held: ${JSON.stringify(text.slice(0, 200))})`,
  );
  removeFile(path);
  return null;
}

function writeState(path: string, s: State): void {
  writeDurably(path, `${JSON.stringify(s)}\n`);
}

/** Makes the lock directory `path` with its owner inside in one rename: no lock exists without an owner. */
function tryMakeLock(path: string): boolean {
  const me = self();
  const tmp = scratchName(path, 'tmp');
  mkdirSync(tmp);
  try {
    writeFileSync(join(tmp, 'owner'), JSON.stringify({ pid: me.pid, start: me.start }));
    renameSync(tmp, path);
    return true;
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    // rename onto an existing directory that is not empty: someone else holds the lock.
    if (errCode(e) === 'ENOTEMPTY' || errCode(e) === 'EEXIST') return false;
    throw e;
  }
}

/** Renamed away first so that `path` is never seen half-removed (empty, hence replaceable by rename). */
function dropDir(path: string): void {
  const trash = scratchName(path, 'trash');
  try {
    renameSync(path, trash);
  } catch (e) {
    if (errCode(e) === 'ENOENT') return;
    throw e;
  }
  rmSync(trash, { recursive: true, force: true });
}

/** The owner record of the lock at `path` when that lock is stale (old and its owner gone), else null. */
function staleOwner(path: string): string | null {
  let mtime: number;
  try {
    mtime = statSync(path).mtimeMs;
  } catch {
    return null; // gone meanwhile: free, not stale
  }
  if (Date.now() - mtime < STALE_LOCK_MS) return null;
  let owner = '';
  try {
    owner = readFileSync(join(path, 'owner'), 'utf8');
  } catch (e) {
    // No owner file: made by hand, or renamed away just now (the check under the breaker sees that).
    if (errCode(e) !== 'ENOENT') return null;
  }
  try {
    const holder = JSON.parse(owner) as { pid: number; start: number };
    if (alive(holder)) return null;
  } catch {
    /* an owner record we cannot read is no owner */
  }
  return owner;
}

function lockOwnerText(dir: string): string {
  try {
    const o = JSON.parse(readFileSync(join(dir, LOCK, 'owner'), 'utf8')) as { pid: number };
    return `pid ${o.pid}`;
  } catch {
    return 'an unknown process';
  }
}

/**
 * Takes the state directory's lock, waiting up to `waitMs`; returns its release, or null on timeout.
 * A lock whose owner died is broken once it is STALE_LOCK_MS old.
 */
function lockState(dir: string, waitMs: number): (() => void) | null {
  const lock = join(dir, LOCK);
  const breaker = join(dir, BREAKER);
  const until = Date.now() + waitMs;
  let pause = 1;
  for (;;) {
    if (tryMakeLock(lock)) return () => dropDir(lock);
    const stale = staleOwner(lock);
    if (stale !== null) {
      if (tryMakeLock(breaker)) {
        try {
          // Checked again under the breaker: another breaker may have replaced it since.
          if (staleOwner(lock) === stale) dropDir(lock);
        } finally {
          dropDir(breaker);
        }
        continue;
      }
      // A breaker holds its lock for microseconds; one this old died holding it.
      if (staleOwner(breaker) !== null) dropDir(breaker);
    }
    if (Date.now() >= until) return null;
    sleepMs(pause + Math.random() * pause);
    pause = Math.min(pause * 2, 20);
  }
}

/**
 * Puts the original back when the setting still holds a value a receiver wrote, and removes the
 * state file: 'written' when it wrote, 'done' when there was nothing to write. 'kept' keeps the
 * file when the write fails (a host-wide setting seen from inside a namespace): a receiver in the
 * host namespace will do it.
 */
function restore(path: string, s: State, why: string, log: (l: string) => void): 'written' | 'done' | 'kept' {
  let current: number;
  try {
    current = readSysctl(s.name);
  } catch (e) {
    log(`kernel tuning: cannot read ${s.name} to restore it (${describe(e)}); state left in ${path}`);
    return 'kept';
  }
  if (current === s.original) {
    // The holder died between saving the original and writing the setting, or someone else put it back.
    removeFile(path);
    return 'done';
  }
  if (!s.tuned.includes(current)) {
    log(
      `kernel tuning: ${s.name} is ${current}, which imgcast did not set (it changed it from ${s.original}); leaving it`,
    );
    removeFile(path);
    return 'done';
  }
  try {
    writeSysctl(s.name, s.original);
  } catch (e) {
    log(
      `kernel tuning: cannot restore ${s.name} to ${s.original} here (${errCode(e) ?? describe(e)}); left for later`,
    );
    return 'kept';
  }
  removeFile(path);
  log(`kernel tuning: ${s.name} restored ${current} -> ${s.original} (${why})`);
  return 'written';
}

/** Recovery with the lock held: see recoverKernelSettings. */
function recoverLocked(dir: string, ns: string, boot: string, log: (l: string) => void): string[] {
  const restored: string[] = [];
  for (const entry of readdirSync(dir)) {
    const path = join(dir, entry);
    const litter = LITTER_RE.exec(entry);
    if (litter) {
      if (!alive({ pid: Number(litter[1]), start: Number(litter[2]) })) {
        rmSync(path, { recursive: true, force: true });
      }
      continue;
    }
    const m = STATE_RE.exec(entry);
    if (!m || (m[2] !== ns && m[2] !== 'global')) continue;
    const s = readState(path, log);
    if (!s) continue;
    if (s.boot !== boot) {
      log(
        `kernel tuning: dropped ${entry} from an earlier boot (the kernel started from its defaults since)`,
      );
      removeFile(path);
      continue;
    }
    const live = s.holders.filter(alive);
    if (live.length === s.holders.length && live.length > 0) continue;
    if (live.length > 0) {
      writeState(path, { ...s, holders: live });
      continue;
    }
    if (s.holders.length > 0) writeState(path, { ...s, holders: [] });
    if (restore(path, s, 'left changed by a receiver that is gone', log) === 'written') restored.push(s.name);
  }
  return restored;
}

function checkWants(wants: readonly SysctlWant[]): void {
  const seen = new Set<string>();
  for (const w of wants) {
    const bad = !NAME_RE.test(w.name)
      ? 'is not a sysctl name'
      : (w.atLeast === undefined) === (w.value === undefined)
        ? 'needs exactly one of atLeast and value'
        : !Number.isSafeInteger(w.atLeast ?? w.value)
          ? 'wants a value that is not an integer'
          : seen.has(w.name)
            ? 'is wanted twice'
            : null;
    if (bad) throw new TransportError('E_TUNING', `kernel tuning: ${w.name} ${bad}`, { name: w.name });
    seen.add(w.name);
  }
}

function refusalReason(name: string, value: number, e: unknown): string {
  const code = errCode(e);
  if (code === 'EINVAL') {
    return `the kernel refused ${name} = ${value} (EINVAL: read-only here, inside a network namespace, or out of range)`;
  }
  return `${name} is read-only here (inside a network namespace, or not root: ${code})`;
}

/**
 * Undoes what receivers that are gone left changed: for every state file of this network
 * namespace and of host-wide settings, drops dead holders and, when none is left, writes the
 * original back. Returns the names of the settings it restored. Other namespaces' files are not
 * touched. Throws TransportError E_TUNING only when the state directory is unusable or locked
 * for longer than `lockWaitMs`.
 */
export function recoverKernelSettings(opts: TuningOptions = {}): string[] {
  const dir = stateDirOf(opts);
  const log = opts.log ?? (() => {});
  const denied = usableDir(dir, false);
  if (denied === 'ENOENT') return [];
  if (denied) {
    // Not root: it could not write a sysctl either.
    log(`kernel tuning: cannot recover, the state in ${dir} is not ours to change (${denied})`);
    return [];
  }
  const unlock = lockOrThrow(dir, opts);
  try {
    return recoverLocked(dir, netNamespace(), bootId(), log);
  } catch (e) {
    throw unexpected(e);
  } finally {
    unlock();
  }
}

function lockTimeout(dir: string): TransportError {
  const message = `kernel tuning state in ${dir} stayed locked by ${lockOwnerText(dir)}`;
  return new TransportError('E_TUNING', message, { dir });
}

function unexpected(e: unknown): TransportError {
  return e instanceof TransportError
    ? e
    : new TransportError('E_TUNING', `kernel tuning failed: ${describe(e)}`, {}, { cause: e });
}

function lockOrThrow(dir: string, opts: TuningOptions): () => void {
  let unlock: (() => void) | null;
  try {
    unlock = lockState(dir, opts.lockWaitMs ?? DEFAULT_LOCK_WAIT_MS);
  } catch (e) {
    throw unexpected(e);
  }
  if (!unlock) throw lockTimeout(dir);
  return unlock;
}

/**
 * Makes sure this process may change `dir` (making it when `create`): undefined when it may, else
 * the errno code saying why not (a permission code for a process that is not root, ENOENT for a
 * directory not made yet). Other failures are unexpected and thrown.
 */
function usableDir(dir: string, create: boolean): string | undefined {
  try {
    if (create) mkdirSync(dir, { recursive: true, mode: 0o755 });
    accessSync(dir, fsConstants.W_OK | fsConstants.X_OK);
    return undefined;
  } catch (e) {
    const code = errCode(e);
    if (code && (REFUSAL_CODES.has(code) || (code === 'ENOENT' && !create))) return code;
    const message = `cannot use kernel tuning state directory ${dir}: ${describe(e)}`;
    throw new TransportError('E_TUNING', message, { dir });
  }
}

/**
 * Recovers (see recoverKernelSettings), then brings each wanted setting to its value for as long
 * as the returned Tuning is held. A setting another live receiver already changed is shared: its
 * original stays the one saved by the first. A setting that cannot be written here (not root, or
 * host-wide and we are inside a network namespace) is reported in `refused`, not thrown.
 * Throws TransportError E_TUNING for malformed wants, a state directory that cannot be used for
 * other reasons than permissions, or a lock held past `lockWaitMs`; it undoes its own changes first.
 */
export function tuneKernel(wants: readonly SysctlWant[], opts: TuningOptions = {}): Tuning {
  checkWants(wants);
  const dir = stateDirOf(opts);
  const log = opts.log ?? (() => {});
  const applied: AppliedSetting[] = [];
  const satisfied: Array<{ name: string; value: number }> = [];
  const refused: Array<{ name: string; reason: string }> = [];
  const satisfies = (w: SysctlWant, v: number): boolean =>
    w.value !== undefined ? v === w.value : v >= (w.atLeast ?? v);

  const denied = usableDir(dir, true);
  if (denied) {
    // Not root: no state can be kept, and without it no change could be undone after a crash.
    for (const w of wants) {
      let v: number | null = null;
      try {
        v = readSysctl(w.name);
      } catch {
        /* refused below */
      }
      if (v !== null && satisfies(w, v)) satisfied.push({ name: w.name, value: v });
      else
        refused.push({
          name: w.name,
          reason: `cannot keep its original value in ${dir} (${denied}): not root?`,
        });
    }
    for (const r of refused) log(`kernel tuning: ${r.name} left as it is: ${r.reason}`);
    return { applied, satisfied, refused, release: () => {} };
  }

  const token = randomUUID();
  /** State files we hold, in the order taken. */
  const held: string[] = [];
  let released = false;

  const releaseHeld = (): void => {
    if (held.length === 0) return;
    const unlock = lockState(dir, opts.lockWaitMs ?? DEFAULT_LOCK_WAIT_MS);
    if (!unlock) {
      log(
        `kernel tuning: ${lockTimeout(dir).message}; not released now, the next receiver's recovery will undo it`,
      );
      return;
    }
    try {
      // Latest first, in case one setting was raised on the strength of another.
      for (const path of [...held].reverse()) {
        try {
          const s = readState(path, log);
          if (!s) continue;
          const holders = s.holders.filter((h) => h.token !== token);
          const live = holders.filter(alive);
          if (live.length > 0) writeState(path, { ...s, holders: live });
          else {
            if (holders.length !== s.holders.length) writeState(path, { ...s, holders: [] });
            restore(path, s, 'the last receiver holding it is done', log);
          }
        } catch (e) {
          log(`kernel tuning: cannot release ${path}: ${describe(e)}`);
        }
      }
    } finally {
      unlock();
    }
  };

  const tuning: Tuning = {
    applied,
    satisfied,
    refused,
    release(): void {
      if (released) return;
      released = true;
      try {
        releaseHeld();
      } catch (e) {
        log(`kernel tuning: release failed: ${describe(e)}`);
      }
    },
  };

  const unlock = lockOrThrow(dir, opts);
  try {
    const ns = netNamespace();
    const boot = bootId();
    recoverLocked(dir, ns, boot, log);
    const me = self();
    const holder: Holder = { pid: me.pid, start: me.start, token };
    for (const w of wants) {
      const path = join(dir, `${w.name}@${w.perNamespace ? ns : 'global'}.json`);
      let current: number;
      try {
        current = readSysctl(w.name);
      } catch (e) {
        if (e instanceof TransportError) throw e;
        refused.push({
          name: w.name,
          reason:
            errCode(e) === 'ENOENT'
              ? `${w.name} does not exist on this kernel`
              : `${w.name} cannot be read here (${errCode(e) ?? describe(e)})`,
        });
        continue;
      }
      const target = w.value ?? (w.atLeast as number);
      const prior = readState(path, log);
      if (prior) {
        // Already changed by a live receiver (recovery removed the dead ones' files, except ones it
        // could not restore from here): the current value is theirs, not the original.
        const raise = !satisfies(w, current);
        const next: State = {
          ...prior,
          tuned: raise && !prior.tuned.includes(target) ? [...prior.tuned, target] : prior.tuned,
          holders: [...prior.holders, holder],
        };
        writeState(path, next);
        if (raise) {
          try {
            writeSysctl(w.name, target);
            current = target;
          } catch (e) {
            writeState(path, prior);
            if (!REFUSAL_CODES.has(errCode(e) ?? '')) throw e;
            refused.push({ name: w.name, reason: refusalReason(w.name, target, e) });
            continue;
          }
        }
        held.push(path);
        applied.push({ name: w.name, from: prior.original, to: current, shared: true });
        continue;
      }
      if (satisfies(w, current)) {
        satisfied.push({ name: w.name, value: current });
        continue;
      }
      // Saved before the write: a crash between the two leaves a file whose original equals the
      // current value, which recovery simply removes.
      writeState(path, {
        v: 1,
        name: w.name,
        ns: w.perNamespace ? ns : 'global',
        boot,
        original: current,
        tuned: [target],
        holders: [holder],
      });
      try {
        writeSysctl(w.name, target);
      } catch (e) {
        removeFile(path);
        if (!REFUSAL_CODES.has(errCode(e) ?? '')) throw e;
        refused.push({ name: w.name, reason: refusalReason(w.name, target, e) });
        continue;
      }
      held.push(path);
      applied.push({ name: w.name, from: current, to: target, shared: false });
    }
  } catch (e) {
    unlock();
    tuning.release();
    throw unexpected(e);
  }
  unlock();

  for (const a of applied) {
    log(
      a.shared
        ? `kernel tuning: ${a.name} = ${a.to}, shared with another receiver (restored to ${a.from} after the last one)`
        : `kernel tuning: ${a.name} ${a.from} -> ${a.to} while receiving`,
    );
  }
  for (const r of refused) log(`kernel tuning: ${r.name} left as it is: ${r.reason}`);
  return tuning;
}
