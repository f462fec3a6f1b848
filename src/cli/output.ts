/**
 * What every command shares: progress bars with rate and ETA on a terminal (silent
 * when piped, so logs and scripts stay clean), --json output, and one way of turning
 * errors into messages and exit codes:
 *   0 success · 1 the operation failed (message names the cause) · 2 bad usage · 70 internal error
 */
import type cliProgressModule from 'cli-progress';
import { createRequire } from 'node:module';
import { CommanderError } from 'commander';
import { ImgcastError, InterruptedError } from '../errors.ts';
import { systemReason } from '../wording.ts';

/** The package's version, for --version. */
export const VERSION = (createRequire(import.meta.url)('../../package.json') as { version: string }).version;

export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;
export const EXIT_INTERNAL = 70;

export interface Progress {
  update(done: number, total?: number): void;
  stop(): void;
}

const KIB = 1024;
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= KIB && u < units.length - 1) {
    v /= KIB;
    u++;
  }
  return `${u === 0 ? v : v.toFixed(1)} ${units[u]}`;
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '--:--';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const pad = (x: number) => String(x).padStart(2, '0');
  return h > 0 ? `${h}:${pad(m)}:${pad(s % 60)}` : `${pad(m)}:${pad(s % 60)}`;
}

/** A progress bar on stderr when it is a terminal and output is not JSON; otherwise a no-op. */
/**
 * Runs `work` with a progress bar (startProgress) that is stopped however `work` ends,
 * so whatever is printed next starts on a clean line.
 */
export async function withProgress<T>(
  label: string,
  opts: { json: boolean; bytes?: boolean },
  work: (update: Progress['update']) => Promise<T>,
): Promise<T> {
  const bar = startProgress(label, opts);
  try {
    return await work((done, total) => bar.update(done, total));
  } finally {
    bar.stop();
  }
}

function startProgress(label: string, opts: { json: boolean; bytes?: boolean }): Progress {
  if (opts.json || !process.stderr.isTTY) return { update() {}, stop() {} };
  // Loaded only for a terminal: scripts and pipes never draw a bar, so they skip its start-up.
  const cliProgress = createRequire(import.meta.url)('cli-progress') as typeof cliProgressModule;
  const started = Date.now();
  const bytes = opts.bytes ?? true;
  // A folder's size is not measured before its capture: until a total arrives the bar
  // shows what is done and how fast, without a percentage or ETA it cannot know.
  let totalKnown = false;
  const amount = (n: number) => (bytes ? formatBytes(n) : String(n));
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      hideCursor: true,
      clearOnComplete: false,
      format: (options, params) => {
        const width = options.barsize ?? 30;
        const elapsed = (Date.now() - started) / 1000;
        const rate = elapsed > 0 ? params.value / elapsed : 0;
        const perSecond = bytes ? `${formatBytes(rate)}/s` : `${rate.toFixed(0)}/s`;
        if (!totalKnown) {
          return `${label} ${amount(params.value)} ${perSecond} elapsed ${formatDuration(elapsed)}`;
        }
        const ratio = params.total > 0 ? Math.min(1, params.value / params.total) : 0;
        const filled = Math.round(ratio * width);
        const eta = rate > 0 ? (params.total - params.value) / rate : Number.NaN;
        return `${label} [${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${(ratio * 100).toFixed(0).padStart(3)}% ${amount(params.value)}/${amount(params.total)} ${perSecond} ETA ${formatDuration(eta)}`;
      },
    },
    cliProgress.Presets.shades_classic,
  );
  bar.start(1, 0);
  return {
    update(done, total) {
      if (total !== undefined) {
        totalKnown = true;
        bar.setTotal(Math.max(total, 1));
      }
      bar.update(done);
    },
    stop() {
      bar.stop();
    },
  };
}

/** Prints a result: JSON for scripts, or the human text. */
export function emit(json: boolean, value: unknown, human: () => string): void {
  if (json) process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
  else {
    const text = human();
    if (text) process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
  }
}

/**
 * Runs a command's body and maps what it throws to a message and exit code. Usage
 * errors and operation failures are expected and get no stack trace.
 */
export async function runCommand(
  program: string,
  json: boolean,
  body: (signal: AbortSignal) => Promise<number | void>,
  opts: { interruptible?: boolean } = {},
) {
  // An interruptible command gets Ctrl-C / SIGTERM as an abort: it stops and undoes what it
  // began (a half-made image file, a half-restored disk marked incomplete) before exiting.
  // A second signal quits at once. Other commands keep Node's default: exit right away.
  const stop = new AbortController();
  let stopping = false;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (stopping) {
      process.stderr.write(`${program}: ${sig} again: quitting without cleaning up\n`);
      process.exit(SIGNAL_EXIT[sig] ?? EXIT_FAILED);
    }
    stopping = true;
    process.stderr.write(`${program}: ${sig}: stopping and cleaning up (${sig} again to quit at once)\n`);
    stop.abort(new InterruptedError(sig));
  };
  if (opts.interruptible) {
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  }
  try {
    const code = await body(stop.signal);
    process.exitCode = code ?? 0;
  } catch (err) {
    process.exitCode = reportError(program, json, err);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/** The shell's convention for a command a signal stopped: 128 + the signal's number. */
const SIGNAL_EXIT: Partial<Record<NodeJS.Signals, number>> = { SIGINT: 130, SIGTERM: 143 };

export function reportError(program: string, json: boolean, err: unknown): number {
  if (err instanceof ImgcastError) {
    if (json) process.stdout.write(`${JSON.stringify(err.toJSON(), null, 2)}\n`);
    process.stderr.write(`${program}: ${err.message} [${err.code}]\n`);
    if (err instanceof InterruptedError)
      return SIGNAL_EXIT[err.details.signal as NodeJS.Signals] ?? EXIT_FAILED;
    return err.code === 'E_USAGE' ? EXIT_USAGE : EXIT_FAILED;
  }
  if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : EXIT_USAGE;
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e.code === 'string' && typeof e.syscall === 'string') {
    // An operating-system error that escaped a more specific message: still say which file and why.
    const message = `${typeof e.path === 'string' ? `${e.path}: ` : ''}${systemReason(e)}`;
    process.stderr.write(`${program}: ${message} [${e.code}]\n`);
    if (json) process.stdout.write(`${JSON.stringify({ error: e.code, message }, null, 2)}\n`);
    return EXIT_FAILED;
  }
  process.stderr.write(`${program}: internal error: ${e?.stack ?? String(err)}\n`);
  return EXIT_INTERNAL;
}
