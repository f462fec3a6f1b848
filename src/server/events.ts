/**
 * Live status for the console: GET /api/events, a stream of server-sent events
 * (text/event-stream) carrying the whole status (the body of GET /api/status) each time it
 * changes, coalesced to at most a few a second.
 *
 * Authentication is the API's own: `Authorization: Bearer TOKEN`, admin only, checked by the
 * same hook as every call. Browsers' EventSource cannot send that header, so the console reads
 * the stream with fetch instead; the token never goes into a URL, where proxies, access logs
 * and the browser's history would keep it, and no second kind of secret (a ticket) exists. The
 * stream re-checks its token at every heartbeat: a sign-in that expires, or an account removed
 * or given a new password, ends it with a `signed-out` event within one heartbeat.
 *
 * Events:
 *   event: status      data: Status (JSON, one line) — at once, then on every change
 *   event: signed-out  data: { error, message } — the token no longer holds; the stream ends
 *   : keepalive        a comment every heartbeat, so idle proxies and dead peers are noticed
 */
import type { ServerResponse } from 'node:http';

import type { Status } from '../api/schemas.ts';
import type { ApiApp, AppContext } from './app.ts';
import { authenticate, statusOf } from './app.ts';

export interface LiveOptions {
  /** Fewest milliseconds between two status events (default 250: at most four a second). */
  minIntervalMs?: number;
  /** Milliseconds between keep-alive comments and token checks (default 15 s). */
  heartbeatMs?: number;
}

/** A client that reads too slowly to keep up is dropped once this much is waiting for it. */
const MAX_BUFFERED = 4 * 1024 * 1024;

export interface Timers {
  setTimeout: (fn: () => void, ms: number) => unknown;
  clearTimeout: (handle: unknown) => void;
  now: () => number;
}
const realTimers: Timers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
  now: () => Date.now(),
};

/**
 * Runs `run` soon after `trigger()`, at most once per `minIntervalMs`: the first trigger after
 * a quiet spell runs at once, triggers within the interval fold into one run at its end. A
 * burst of progress reports thus costs one status, and a lone change is not delayed.
 */
export function coalesce(
  run: () => void,
  minIntervalMs: number,
  timers: Timers = realTimers,
): { trigger: () => void; cancel: () => void } {
  let last = -Infinity;
  let pending: unknown;
  const fire = () => {
    pending = undefined;
    last = timers.now();
    run();
  };
  return {
    trigger() {
      if (pending !== undefined) return;
      const wait = last + minIntervalMs - timers.now();
      if (wait <= 0) fire();
      else pending = timers.setTimeout(fire, wait);
    },
    cancel() {
      if (pending !== undefined) timers.clearTimeout(pending);
      pending = undefined;
    },
  };
}

/** One reader of the feed; the HTTP response in the server, anything that takes text in tests. */
export interface FeedStream {
  write(text: string): void;
  end(): void;
  /** Bytes written but not yet taken by the peer. */
  buffered(): number;
}

/** Why the reader may no longer read (its token went), or null while it may. */
export type StillAllowed = () => Promise<{ error: string; message: string } | null>;

export class StatusFeed {
  #snapshot: () => Status;
  #streams = new Map<FeedStream, StillAllowed>();
  #push: ReturnType<typeof coalesce>;
  #heartbeatMs: number;
  #timers: Timers;
  #beat: unknown;
  #lastCounters = '';
  #closed = false;

  constructor(o: { snapshot: () => Status; minIntervalMs?: number; heartbeatMs?: number; timers?: Timers }) {
    this.#snapshot = o.snapshot;
    this.#timers = o.timers ?? realTimers;
    this.#heartbeatMs = o.heartbeatMs ?? 15_000;
    this.#push = coalesce(() => this.#broadcast(), o.minIntervalMs ?? 250, this.#timers);
  }

  get size(): number {
    return this.#streams.size;
  }

  /** Something the status shows changed. */
  changed(): void {
    if (this.#streams.size > 0 && !this.#closed) this.#push.trigger();
  }

  /** A new reader: it gets the status at once, then every change. */
  add(stream: FeedStream, stillAllowed: StillAllowed): void {
    if (this.#closed) {
      stream.end();
      return;
    }
    this.#streams.set(stream, stillAllowed);
    this.#send(stream, statusEvent(this.#snapshot()));
    if (this.#beat === undefined) this.#scheduleBeat();
  }

  remove(stream: FeedStream): void {
    this.#streams.delete(stream);
  }

  /** Ends every stream (the server is stopping). */
  close(): void {
    this.#closed = true;
    this.#push.cancel();
    if (this.#beat !== undefined) this.#timers.clearTimeout(this.#beat);
    this.#beat = undefined;
    for (const s of [...this.#streams.keys()]) this.#drop(s);
  }

  #broadcast(): void {
    if (this.#streams.size === 0) return;
    const status = this.#snapshot();
    this.#lastCounters = JSON.stringify(status.counters);
    const text = statusEvent(status);
    for (const s of [...this.#streams.keys()]) this.#send(s, text);
  }

  #send(stream: FeedStream, text: string): void {
    if (stream.buffered() > MAX_BUFFERED) {
      this.#drop(stream);
      return;
    }
    try {
      stream.write(text);
    } catch {
      this.#drop(stream);
    }
  }

  #drop(stream: FeedStream): void {
    this.#streams.delete(stream);
    try {
      stream.end();
    } catch {
      // Gone already.
    }
  }

  #scheduleBeat(): void {
    this.#beat = this.#timers.setTimeout(() => void this.#heartbeat(), this.#heartbeatMs);
  }

  /** Keep-alives, token checks, and the counters (workstations' requests change them without a session changing). */
  async #heartbeat(): Promise<void> {
    await Promise.all(
      [...this.#streams].map(async ([s, stillAllowed]) => {
        const gone = await stillAllowed().catch(() => null);
        if (!this.#streams.has(s)) return;
        if (gone) {
          this.#send(s, `event: signed-out\ndata: ${JSON.stringify(gone)}\n\n`);
          this.#drop(s);
        } else this.#send(s, ': keepalive\n\n');
      }),
    );
    if (this.#closed) return;
    if (this.#streams.size > 0 && JSON.stringify(this.#snapshot().counters) !== this.#lastCounters)
      this.#push.trigger();
    if (this.#streams.size > 0) this.#scheduleBeat();
    else this.#beat = undefined;
  }
}

function statusEvent(status: Status): string {
  return `event: status\ndata: ${JSON.stringify(status)}\n\n`;
}

/** GET /api/events (see the module comment). */
export function liveRoutesWith(opts: LiveOptions = {}) {
  return (app: ApiApp, ctx: AppContext): void => {
    const feed = new StatusFeed({
      snapshot: () => statusOf(ctx),
      minIntervalMs: opts.minIntervalMs,
      heartbeatMs: opts.heartbeatMs,
    });
    const unsubscribe = ctx.sessions.onChange(() => feed.changed());
    const unsubscribeJobs = ctx.jobs.onChange(() => feed.changed());
    const unsubscribeSite = ctx.site.onChange(() => feed.changed());
    // Open streams would hold the HTTP server's close forever.
    app.addHook('preClose', async () => {
      unsubscribe();
      unsubscribeJobs();
      unsubscribeSite();
      feed.close();
    });

    app.get(
      '/api/events',
      {
        config: { access: 'admin' },
        schema: {
          summary: 'live status as server-sent events (text/event-stream): status, signed-out',
        },
      },
      async (req, reply) => {
        const res: ServerResponse = reply.raw;
        reply.hijack();
        res.writeHead(200, {
          'content-type': 'text/event-stream; charset=utf-8',
          'cache-control': 'no-store',
          'x-content-type-options': 'nosniff',
          // Reverse proxies (nginx) would otherwise hold the events back in their buffers.
          'x-accel-buffering': 'no',
        });
        res.flushHeaders();
        const stream: FeedStream = {
          write: (text) => void res.write(text),
          end: () => res.end(),
          buffered: () => res.writableLength,
        };
        const stillAllowed: StillAllowed = async () =>
          (await authenticate(ctx, req))?.kind === 'admin'
            ? null
            : { error: 'E_UNAUTHORIZED', message: 'the sign-in has expired or was ended; sign in again' };
        res.on('close', () => feed.remove(stream));
        feed.add(stream, stillAllowed);
      },
    );
  };
}

export const liveRoutes = liveRoutesWith();
