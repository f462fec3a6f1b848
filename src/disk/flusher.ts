import { spawn, type ChildProcess } from 'node:child_process';
import { DiskError } from './errors.ts';
import type { RunResult } from './exec.ts';

/*
 * Each request line makes the shell run `sync ARGS` and answer one line: the exit status,
 * then what sync printed, its newlines turned to spaces. It ends when its stdin closes,
 * which happens with this process however it ends, so it never outlives its owner.
 */
const LOOP = `while read -r _; do
  out=$(sync "$@" 2>&1); rc=$?
  printf '%s %s\\n' "$rc" "$(printf '%s' "$out" | tr '\\n' ' ')"
done`;

interface Waiting {
  resolve: (r: RunResult) => void;
  reject: (err: unknown) => void;
}

/**
 * `sync ARGS` (`-f DIR`: that filesystem; none: every one) run on request by one
 * long-lived shell, instead of a process spawned for each flush.
 *
 * Why: spawning forks this whole process on the calling thread, and a restore flushes
 * from the thread that reads the multicast socket. With 150 MiB resident on the bench's
 * 2-core machine a spawn took 56 ms, 508 ms of a 512 MiB receive's main thread over its
 * nine flushes, and at the stock net.core.rmem_max (212992 bytes) 56 ms of not reading is
 * an overflowing socket. The shell is small, so the fork it makes per flush costs little.
 * A shell that died (killed from outside) is started again on the next flush.
 */
export class Flusher {
  readonly args: readonly string[];
  #child: ChildProcess | undefined;
  #waiting: Waiting[] = [];
  #out = '';
  #closed = false;

  /** The shell's process id while it runs (tests look at it). */
  get pid(): number | undefined {
    return this.#child?.pid;
  }

  constructor(args: readonly string[]) {
    this.args = [...args];
  }

  /** Starts the shell now (a flush would otherwise start it): the one spawn it costs then falls where it is cheap. */
  start(): this {
    if (!this.#closed) this.#shell();
    return this;
  }

  /** Runs sync once; resolves with its status and output (stderr in `stderr`), as runTool does. */
  run(): Promise<RunResult> {
    if (this.#closed) {
      return Promise.reject(
        new DiskError('E_DISK_COMMAND', 'the flusher was closed', { args: [...this.args] }),
      );
    }
    const child = this.#shell();
    this.#hold(child, true);
    return new Promise<RunResult>((resolve, reject) => {
      this.#waiting.push({ resolve, reject });
      // A dead shell's EPIPE surfaces through its 'exit', which rejects every waiter.
      child.stdin!.write('\n');
    });
  }

  /** Ends the shell (after the flushes asked for so far). Idempotent. */
  close(): void {
    this.#closed = true;
    this.#child?.stdin?.end();
    this.#child = undefined;
  }

  /**
   * An idle shell does not keep this process alive (an owner that never closes it must not
   * make a command hang at its end); one with a flush under way does, or an await of that
   * flush could be all that is left and the process would exit under it.
   */
  #hold(child: ChildProcess, busy: boolean): void {
    for (const h of [child, child.stdin, child.stdout] as Array<{ ref(): void; unref(): void } | null>) {
      if (busy) h?.ref();
      else h?.unref();
    }
  }

  #shell(): ChildProcess {
    if (this.#child) return this.#child;
    const child = spawn('sh', ['-c', LOOP, 'sh', ...this.args], { stdio: ['pipe', 'pipe', 'ignore'] });
    this.#child = child;
    this.#out = '';
    child.stdin!.on('error', () => {});
    this.#hold(child, false);
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      this.#out += d;
      for (let nl = this.#out.indexOf('\n'); nl >= 0; nl = this.#out.indexOf('\n')) {
        const line = this.#out.slice(0, nl);
        this.#out = this.#out.slice(nl + 1);
        const space = line.indexOf(' ');
        const status = Number(line.slice(0, space));
        this.#waiting.shift()?.resolve({ status, stdout: '', stderr: line.slice(space + 1).trim() });
      }
      if (this.#waiting.length === 0) this.#hold(child, false);
    });
    const gone = (why: string) => {
      if (this.#child === child) this.#child = undefined;
      const waiting = this.#waiting.splice(0);
      for (const w of waiting) {
        w.reject(
          new DiskError('E_DISK_COMMAND', `cannot run sync ${this.args.join(' ')}: ${why}`, {
            args: [...this.args],
          }),
        );
      }
    };
    child.on('error', (err) => gone(err.message));
    child.on('exit', (code, signal) => gone(`its shell ended (${signal ?? `exit ${code}`})`));
    return child;
  }
}
