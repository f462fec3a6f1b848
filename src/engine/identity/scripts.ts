/**
 * Post-imaging scripts: what an administrator wants done on each restored system that the
 * image cannot carry (join a domain, write a per-machine config, register a licence). They run
 * on the imaging machine, as root, one after another, after the identity was applied and
 * while the restored volumes are mounted read-write, with the facts in the environment:
 *
 *   IMGCAST_NAME       the workstation's name (empty when none was given)
 *   IMGCAST_MAC        its MAC address;  IMGCAST_ADDRESS  its IPv4 address
 *   IMGCAST_SESSION    the session it was imaged in;  IMGCAST_IMAGE  the image
 *   IMGCAST_ROOT       the mount point of the restored Linux root (empty without one)
 *   IMGCAST_MOUNTS     one line per mounted volume: "p2=/run/imgcast-mounts/mnt-…"
 *   IMGCAST_MOUNT_P2   the same, one variable per volume
 *
 * A script is a file or text; text starting with "#!" runs with its interpreter, other text
 * with /bin/sh. Its working folder is IMGCAST_ROOT when there is one. Its output (stdout and
 * stderr together) is kept, its first and last parts when there is much of it. A script that
 * exits non-zero, is killed, or runs past its time fails the run (the scripts after it do not
 * run), carrying its output. Each runs in a process group of its own, which is killed when
 * the script ends, so nothing it left running keeps the volumes from being unmounted.
 */
import { spawn } from 'node:child_process';
import { chmod, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';

import { ownedTempDir } from '../../disk/owner.ts';
import { systemReason } from '../../wording.ts';
import { IdentityError } from './errors.ts';

/** A script as text (a session's, sent by the server) or as a file on this machine. */
export type PostImagingScript = { name: string; content: string } | { path: string };

export interface ScriptEnvironment {
  name?: string;
  mac?: string;
  address?: string;
  session?: string;
  image?: string;
  /** The restored Linux root's mount point, if there is one. */
  root?: string;
  /** Each mounted volume of the restored target. */
  mounts: Array<{ volume: string; dir: string }>;
}

export interface ScriptRun {
  name: string;
  status: number;
  durationMs: number;
  /** stdout and stderr as they came, bounded (see `truncated`). */
  output: string;
  /** Bytes the script wrote in all. */
  outputBytes: number;
  truncated: boolean;
}

export interface ScriptOptions {
  /** Each script's time limit (default 10 minutes). */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Each chunk of output as it comes (for a verbose log). */
  onOutput?: (script: string, text: string) => void;
}

export const DEFAULT_SCRIPT_TIMEOUT_MS = 10 * 60_000;
/** Output kept: the start (what the script set out to do) and the end (why it stopped). */
const HEAD_BYTES = 16 * 1024;
const TAIL_BYTES = 48 * 1024;
/** After SIGTERM, how long a script's processes get before SIGKILL. */
const KILL_GRACE_MS = 5000;

/** Output kept within HEAD_BYTES + TAIL_BYTES, whatever a script writes. */
class BoundedOutput {
  head: Buffer[] = [];
  headBytes = 0;
  tail: Buffer[] = [];
  tailBytes = 0;
  total = 0;

  add(b: Buffer): void {
    this.total += b.length;
    if (this.headBytes < HEAD_BYTES) {
      const take = b.subarray(0, HEAD_BYTES - this.headBytes);
      this.head.push(take);
      this.headBytes += take.length;
      b = b.subarray(take.length);
    }
    if (b.length === 0) return;
    this.tail.push(b);
    this.tailBytes += b.length;
    while (this.tailBytes - this.tail[0]!.length >= TAIL_BYTES) this.tailBytes -= this.tail.shift()!.length;
  }

  text(): { output: string; truncated: boolean } {
    const head = Buffer.concat(this.head).toString('utf8');
    const tailAll = Buffer.concat(this.tail);
    const tail = tailAll.subarray(Math.max(0, tailAll.length - TAIL_BYTES));
    const left = this.total - this.headBytes - tail.length;
    if (left <= 0) return { output: head + tail.toString('utf8'), truncated: false };
    return {
      output: `${head}\n[… ${left} bytes of output left out …]\n${tail.toString('utf8')}`,
      truncated: true,
    };
  }
}

/** The environment variables a script sees (besides the imaging machine's own). */
export function scriptVariables(env: ScriptEnvironment): Record<string, string> {
  const vars: Record<string, string> = {
    IMGCAST_NAME: env.name ?? '',
    IMGCAST_MAC: env.mac ?? '',
    IMGCAST_ADDRESS: env.address ?? '',
    IMGCAST_SESSION: env.session ?? '',
    IMGCAST_IMAGE: env.image ?? '',
    IMGCAST_ROOT: env.root ?? '',
    IMGCAST_MOUNTS: env.mounts.map((m) => `${m.volume}=${m.dir}`).join('\n'),
  };
  for (const m of env.mounts) vars[`IMGCAST_MOUNT_${m.volume.toUpperCase()}`] = m.dir;
  return vars;
}

function scriptName(s: PostImagingScript): string {
  return 'path' in s ? basename(s.path) : s.name;
}

/** A file script's text, read now: a missing or unreadable one is refused before anything runs. */
export async function readScript(path: string): Promise<{ name: string; content: string }> {
  try {
    const st = await stat(path);
    if (!st.isFile()) throw new Error('it is not a file');
    return { name: basename(path), content: await readFile(path, 'utf8') };
  } catch (err) {
    throw new IdentityError(
      'E_SCRIPT_UNREADABLE',
      `cannot read the post-imaging script ${path}: ${systemReason(err)}`,
      { script: path },
    );
  }
}

/**
 * Runs `scripts` in order (see the module comment). Resolves with each run; rejects with
 * E_SCRIPT_FAILED or E_SCRIPT_TIMEOUT (details: script, output, status or signal, the runs
 * before it, the scripts not run), or the signal's reason when stopped.
 */
export async function runPostImagingScripts(
  scripts: readonly PostImagingScript[],
  env: ScriptEnvironment,
  opts: ScriptOptions = {},
): Promise<ScriptRun[]> {
  const loaded = [];
  for (const s of scripts) loaded.push('path' in s ? await readScript(s.path) : s);
  const runs: ScriptRun[] = [];
  if (loaded.length === 0) return runs;
  const dir = await ownedTempDir(tmpdir(), 'imgcast-script-');
  try {
    for (const [i, s] of loaded.entries()) {
      opts.signal?.throwIfAborted();
      const file = join(dir, `${i + 1}-${s.name.replace(/[^A-Za-z0-9._-]/g, '_')}`);
      await writeFile(file, s.content, { mode: 0o700 });
      await chmod(file, 0o700);
      const shebang = s.content.startsWith('#!');
      const r = await runOne(shebang ? file : '/bin/sh', shebang ? [] : [file], scriptName(s), env, opts);
      if (r.failure) {
        throw new IdentityError(r.failure.code, r.failure.message, {
          script: s.name,
          ...(r.failure.status !== undefined ? { status: r.failure.status } : {}),
          ...(r.failure.signal ? { signal: r.failure.signal } : {}),
          output: r.run.output,
          ran: runs,
          notRun: loaded.slice(i + 1).map((x) => x.name),
        });
      }
      runs.push(r.run);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  return runs;
}

/** The last lines of a script's output, for a one-line message. */
function lastLines(output: string): string {
  const lines = output.trimEnd().split('\n').slice(-3).join(' | ');
  return lines.length > 300 ? `…${lines.slice(-300)}` : lines;
}

function killGroup(pid: number | undefined, sig: NodeJS.Signals): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, sig);
  } catch {
    // The group is gone already.
  }
}

async function runOne(
  cmd: string,
  args: string[],
  name: string,
  env: ScriptEnvironment,
  opts: ScriptOptions,
): Promise<{
  run: ScriptRun;
  failure?: {
    code: 'E_SCRIPT_FAILED' | 'E_SCRIPT_TIMEOUT';
    message: string;
    status?: number;
    signal?: string;
  };
}> {
  const started = Date.now();
  const out = new BoundedOutput();
  const timeoutMs = opts.timeoutMs ?? DEFAULT_SCRIPT_TIMEOUT_MS;
  const child = spawn(cmd, args, {
    cwd: env.root || tmpdir(),
    env: { ...process.env, ...scriptVariables(env) },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  const take = (b: Buffer) => {
    out.add(b);
    opts.onOutput?.(name, b.toString('utf8'));
  };
  child.stdout.on('data', take);
  child.stderr.on('data', take);
  const closed = Promise.all([
    new Promise((r) => child.stdout.once('close', r)),
    new Promise((r) => child.stderr.once('close', r)),
  ]);
  let timedOut = false;
  let stopped = false;
  let killTimer: NodeJS.Timeout | undefined;
  const stop = (why: 'timeout' | 'signal') => {
    if (why === 'timeout') timedOut = true;
    else stopped = true;
    killGroup(child.pid, 'SIGTERM');
    killTimer = setTimeout(() => killGroup(child.pid, 'SIGKILL'), KILL_GRACE_MS);
  };
  const timer = setTimeout(() => stop('timeout'), timeoutMs);
  const onAbort = () => stop('signal');
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  const ended = await new Promise<{ status: number | null; signal: NodeJS.Signals | null; error?: Error }>(
    (resolve) => {
      child.once('error', (error) => resolve({ status: null, signal: null, error }));
      child.once('exit', (status, signal) => resolve({ status, signal }));
    },
  );
  clearTimeout(timer);
  opts.signal?.removeEventListener('abort', onAbort);
  // What the script started and left running goes with it; then its pipes close.
  killGroup(child.pid, 'SIGKILL');
  clearTimeout(killTimer);
  let waited: NodeJS.Timeout | undefined;
  await Promise.race([closed, new Promise((r) => (waited = setTimeout(r, 2000)))]);
  clearTimeout(waited);
  const { output, truncated } = out.text();
  const run: ScriptRun = {
    name,
    status: ended.status ?? -1,
    durationMs: Date.now() - started,
    output,
    outputBytes: out.total,
    truncated,
  };
  if (stopped) throw opts.signal!.reason;
  if (ended.error) {
    return {
      run,
      failure: {
        code: 'E_SCRIPT_FAILED',
        message: `post-imaging script ${name} could not start: ${systemReason(ended.error)}`,
      },
    };
  }
  if (timedOut) {
    return {
      run,
      failure: {
        code: 'E_SCRIPT_TIMEOUT',
        message: `post-imaging script ${name} ran longer than ${Math.round(timeoutMs / 1000)} s and was killed${output.trim() ? `; its output ended: ${lastLines(output)}` : ''}`,
        ...(ended.signal ? { signal: ended.signal } : {}),
      },
    };
  }
  if (ended.status !== 0) {
    const how = ended.signal ? `was killed by ${ended.signal}` : `failed (exit status ${ended.status})`;
    return {
      run,
      failure: {
        code: 'E_SCRIPT_FAILED',
        message: `post-imaging script ${name} ${how}${output.trim() ? `: ${lastLines(output)}` : ', with no output'}`,
        ...(ended.status !== null ? { status: ended.status } : {}),
        ...(ended.signal ? { signal: ended.signal } : {}),
      },
    };
  }
  return { run };
}
