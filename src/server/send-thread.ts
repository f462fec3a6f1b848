/**
 * Sessions' multicast sends, each run on a thread of its own (send-worker.ts), as `imgcast
 * send` runs in a process of its own. On the server's main thread the sender shared the
 * server's V8 heap: its buffers of chunk data set off a major garbage collection every few
 * chunks (about 30 for a 256 MiB image), each of which marked the whole server heap (~35 MiB:
 * Fastify and its schemas, the database, the console) instead of the sender's own (~10 MiB),
 * and its event loop served every API request of the lab besides. On a 2-core lab, whose
 * transfer is CPU-bound, that was ~0.25-0.7 s more CPU per 256 MiB than `imgcast send`.
 *
 * A thread takes ~0.1-0.2 s to load the sender and the image reader (0.5 s while a lab's
 * workstations start on the same cores), so one is kept loaded and idle for the next session;
 * its replacement is loaded half a second after the send that took it ended: not while it runs,
 * nor in the moments its workstations take to finish and report, but in time for a session that
 * follows (bench:server runs them 2 s apart; loaded 3 s after, a session found no thread loaded
 * and its first data came 0.6-0.9 s after its trigger instead of 0.2-0.4 s).
 *
 * Messages in: {t: 'start', data}, {t: 'open', clients} (the session's gate opened), {t:
 * 'abort', reason}. Out: progress, log lines, and the result or the error, once the thread
 * has closed its sockets and image; it is ended then.
 */
import { Worker } from 'node:worker_threads';

import { reviveError, serializeError, type SerializedError } from '../engine/live.ts';
import type { SenderResult } from '../transport/types.ts';
import { workerExecArgv } from '../worker-argv.ts';
import type { SendPlan, SendProgress, SendSession } from './sessions.ts';

/** How long after a send ended the thread for the next session is loaded. */
const REFILL_AFTER_MS = 500;

/** The plan as it crosses to the thread (what structured clone carries), and where to send from. */
export type SendThreadData = Pick<
  SendPlan,
  'imagePath' | 'fileset' | 'group' | 'port' | 'key' | 'clients'
> & {
  interface: string | undefined;
  /** Hold the start until an 'open' message (the plan's gate). */
  gated: boolean;
};

export type ToSendThread =
  | { t: 'start'; data: SendThreadData }
  | { t: 'open'; clients: number }
  | { t: 'abort'; reason: SerializedError };

export type FromSendThread =
  | { t: 'progress'; p: SendProgress }
  | { t: 'log'; line: string }
  | { t: 'done'; result: SenderResult }
  | { t: 'failed'; error: SerializedError };

export class SendThreads {
  readonly #iface: string | undefined;
  #spare: Worker | undefined;
  #closed = false;

  /** Sends from `iface`; a thread is loaded at once for the first session. */
  constructor(iface: string | undefined) {
    this.#iface = iface;
    this.#refill();
  }

  /** The server's SendSession. */
  readonly send: SendSession = (plan) =>
    new Promise((resolve, reject) => {
      const worker = this.#take();
      let settled = false;
      const settle = (fn: () => void) => {
        if (settled) return;
        settled = true;
        plan.signal.removeEventListener('abort', onAbort);
        fn();
        // It closed its sockets and image before it answered: nothing of it is left to wait for.
        void worker.terminate();
        setTimeout(() => this.#refill(), REFILL_AFTER_MS).unref();
      };
      const tell = (m: ToSendThread) => worker.postMessage(m);
      const onAbort = () => tell({ t: 'abort', reason: serializeError(plan.signal.reason) });
      worker.on('message', (m: FromSendThread) => {
        if (m.t === 'progress') plan.onProgress(m.p);
        else if (m.t === 'log') plan.log(m.line);
        else if (m.t === 'done') settle(() => resolve(m.result));
        else settle(() => reject(reviveError(m.error)));
      });
      worker.on('error', (err) => settle(() => reject(err)));
      worker.on('exit', (code) =>
        settle(() => reject(new Error(`the sending thread ended (exit code ${code}) before the send did`))),
      );
      tell({
        t: 'start',
        data: {
          interface: this.#iface,
          imagePath: plan.imagePath,
          fileset: plan.fileset,
          group: plan.group,
          port: plan.port,
          key: plan.key,
          clients: plan.clients,
          gated: plan.gate !== undefined,
        },
      });
      if (plan.signal.aborted) onAbort();
      else plan.signal.addEventListener('abort', onAbort, { once: true });
      plan.gate?.then(
        ({ clients }) => {
          if (!settled) tell({ t: 'open', clients });
        },
        () => {},
      );
    });

  /** Ends the idle thread; sends under way end with their sessions. */
  async close(): Promise<void> {
    this.#closed = true;
    const spare = this.#spare;
    this.#spare = undefined;
    await spare?.terminate();
  }

  #take(): Worker {
    const worker = this.#spare ?? this.#spawn();
    this.#spare = undefined;
    worker.removeAllListeners();
    worker.ref();
    return worker;
  }

  #refill(): void {
    if (this.#closed || this.#spare) return;
    const worker = this.#spawn();
    // Idle, it holds nothing up: the server's exit, or a test's.
    worker.unref();
    // One that failed to load is loaded again by the next send, which then reports the failure.
    const gone = () => {
      if (this.#spare === worker) this.#spare = undefined;
    };
    worker.once('error', gone);
    worker.once('exit', gone);
    this.#spare = worker;
  }

  #spawn(): Worker {
    return new Worker(new URL('./send-worker.ts', import.meta.url), { execArgv: workerExecArgv() });
  }
}
