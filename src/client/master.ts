/**
 * `img session NAME master`: this workstation is the session's master. Its disk is captured and
 * multicast as it is read (the engine's live provider), never written to an image file first.
 * The imaging server brokers: it gathers the clients that join by the same name, fires the
 * trigger (clients joined, minutes since the last join, or `img session start NAME`), hands out
 * the group, port and key, and tells the clients where the master listens. The master reports
 * how its sender goes; each client reports its own result, and the master shows every client's
 * end with its reason.
 */
import { ApiClient, ApiError } from '../api/client.ts';
import type { MasterReport, MasterView } from '../api/schemas.ts';
import { ImgcastError } from '../errors.ts';
import type { CompressionLevel } from '../image/types.ts';
import { runSender } from '../transport/sender.ts';
import type { ChunkProvider, SenderProgress, SenderResult } from '../transport/types.ts';
import { ClientError } from './errors.ts';
import { registration } from './registration.ts';
import { chooseDisk, findServer, followReferrals, register } from './server-link.ts';

/** Captures `source` as the session goes: a chunk provider whose table grows while it is read. */
export type LiveCapture = (
  source: string,
  o: { level: CompressionLevel; signal: AbortSignal; log?: (line: string) => void },
) => Promise<ChunkProvider>;

export interface MasterOptions {
  session: string;
  server?: string;
  /** The disk (or partition, disk-image file, folder) to send; picked as img session picks when absent. */
  disk?: string;
  interface?: string;
  /** Start once this many clients joined. */
  clients?: number;
  /** Start this long after the last client joined. */
  waitMinutes?: number;
  /** Compression on the master; default: the server's (balanced). */
  level?: CompressionLevel;
  capture: LiveCapture;
  /**
   * Once the server made this workstation the master: how to start the session now (the
   * operator's start command), and the credentials another process on this workstation may use
   * to do it (img session start NAME).
   */
  onMaster?: (m: { start: () => Promise<void>; server: string; token: string }) => void;
  /** Each change the server tells: who joined, the countdown, each client's state and result. */
  onView?: (v: MasterView) => void;
  onNote?: (line: string) => void;
  onProgress?: (p: SenderProgress) => void;
  log?: (line: string) => void;
  warn?: (line: string) => void;
  signal?: AbortSignal;
}

export interface MasterResult {
  session: string;
  run: number;
  server: string;
  disk: string;
  /** The session as it ended: every client's state and reason. */
  view: MasterView;
  send: SenderResult;
}

const ENDED = new Set(['done', 'failed', 'stopped', 'interrupted']);
const REPORT_EVERY_MS = 1000;

export async function runMaster(o: MasterOptions): Promise<MasterResult> {
  const server = o.server ?? (await findServer(o));
  const inventory = await registration({ interface: o.interface });
  const disk = o.disk ?? (await chooseDisk(inventory.disks));
  const first = await register(server, inventory, o.signal);
  return followReferrals(first, inventory, o, ({ api, reg }) => {
    o.onNote?.(`server ${api.baseUrl}, this workstation is ${reg.name} (${inventory.mac}), sending ${disk}`);
    return master(api, o.session, disk, o);
  });
}

/** The master's part once registered (img auto comes here too, for a session it is the master of). */
export async function master(
  api: ApiClient,
  session: string,
  disk: string,
  o: Omit<MasterOptions, 'session' | 'server' | 'disk'>,
): Promise<MasterResult> {
  const path = `/api/sessions/${encodeURIComponent(session)}/master`;
  let view = await api.request<MasterView>('POST', path, {
    body: {
      ...(o.clients !== undefined ? { clients: o.clients } : {}),
      ...(o.waitMinutes !== undefined ? { waitMinutes: o.waitMinutes } : {}),
      ...(o.level !== undefined ? { level: o.level } : {}),
      ...(o.interface !== undefined ? { address: o.interface } : {}),
    },
    signal: o.signal,
  });
  o.onMaster?.({
    start: async () => {
      await api.request('POST', `/api/sessions/${encodeURIComponent(session)}/start`, { timeoutMs: 10_000 });
    },
    server: api.baseUrl,
    token: api.token ?? '',
  });
  const wait = (since: number, signal?: AbortSignal) =>
    api.request<MasterView>('GET', `${path}/wait?since=${since}&timeoutMs=20000`, {
      signal,
      timeoutMs: 30_000,
    });
  for (;;) {
    o.onView?.(view);
    if (view.state === 'sending' && view.send) break;
    if (ENDED.has(view.state)) throw ended(view);
    view = await wait(view.version, o.signal);
  }
  const run = view.run;
  const send = view.send!;
  const report = (body: Omit<MasterReport, 'run'>) =>
    api.request('POST', `${path}/report`, { body: { run, ...body }, timeoutMs: 10_000 });

  // The server may stop the session (the administrator) while it sends: keep listening to it.
  const stop = new AbortController();
  const onAbort = () => stop.abort(o.signal!.reason);
  o.signal?.addEventListener('abort', onAbort, { once: true });
  const watching = (async () => {
    let v = view;
    while (!stop.signal.aborted) {
      try {
        v = await wait(v.version, stop.signal);
      } catch (err) {
        if (stop.signal.aborted) return v;
        o.warn?.(`the imaging server did not answer (${(err as Error).message}); asking again`);
        await new Promise((r) => setTimeout(r, 2000));
        continue;
      }
      o.onView?.(v);
      if (v.run !== run || v.state !== 'sending') {
        if (v.state === 'stopped') {
          stop.abort(new ClientError('E_STOPPED', `session ${session} was stopped by the administrator`));
        }
        return v;
      }
    }
    return v;
  })();

  let result: SenderResult;
  try {
    let provider: ChunkProvider;
    try {
      provider = await o.capture(disk, { level: view.level, signal: stop.signal, log: o.log });
    } catch (err) {
      await report({ phase: 'failed', ...codeOf(err, 'E_CAPTURE') }).catch(() => {});
      throw err;
    }
    let listening = false;
    let lastReport = 0;
    let reporting = false;
    result = await runSender(provider, {
      group: send.group,
      port: send.port,
      key: send.key,
      clients: send.clients,
      // The server already gathered the clients; those that joined connect within seconds.
      waitSeconds: 30,
      ...(o.interface !== undefined ? { interface: o.interface } : {}),
      log: o.log,
      signal: stop.signal,
      onProgress: (p) => {
        o.onProgress?.(p);
        if (!listening) {
          // Progress comes once the control port listens: the clients may be told where it is.
          listening = true;
          void report({ phase: 'listening' }).catch((err: unknown) =>
            o.warn?.(`could not tell the server the sender listens: ${(err as Error).message}`),
          );
        }
        const now = Date.now();
        if (reporting || now - lastReport < REPORT_EVERY_MS) return;
        lastReport = now;
        reporting = true;
        void report({ phase: p.phase, bytesSent: p.bytesSent, receivers: p.receivers })
          .catch(() => {})
          .finally(() => (reporting = false));
      },
    });
  } catch (err) {
    stop.abort(err);
    o.signal?.removeEventListener('abort', onAbort);
    await watching;
    if (!(err instanceof ClientError && err.code === 'E_STOPPED')) {
      await report({ phase: 'failed', ...codeOf(err, 'E_SEND') }).catch(() => {});
    }
    throw stop.signal.reason instanceof ClientError ? stop.signal.reason : err;
  }
  const receivers = result.receivers.map((r) => ({
    name: r.name,
    state: r.state,
    bytes: r.bytes,
    totalBytes: r.totalBytes,
    rateMbit: r.rateMbit,
    code: r.code,
    reason: r.reason,
  }));
  await report({ phase: 'done', bytesSent: result.bytes, receivers }).catch((err: unknown) => {
    o.warn?.(`the server did not take the sender's result: ${(err as Error).message}`);
  });
  // The clients write and verify after the last data; their results decide the session's.
  let last = await watching;
  o.signal?.removeEventListener('abort', onAbort);
  while (last.run === run && !ENDED.has(last.state)) {
    try {
      last = await wait(last.version, o.signal);
      o.onView?.(last);
    } catch (err) {
      if (o.signal?.aborted || !(err instanceof ApiError) || err.code !== 'E_SERVER_UNREACHABLE') throw err;
      o.warn?.(`${err.message}; asking again`);
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
  if (last.state === 'stopped') {
    throw new ClientError('E_STOPPED', `session ${session} was stopped by the administrator`, { session });
  }
  return { session, run, server: api.baseUrl, disk, view: last, send: result };
}

function ended(v: MasterView): ClientError {
  return new ClientError(
    v.state === 'stopped' ? 'E_STOPPED' : 'E_SESSION_ENDED',
    v.state === 'stopped'
      ? `session ${v.session} was stopped by the administrator`
      : `session ${v.session} is ${v.state}${v.message ? `: ${v.message}` : ''}`,
    { session: v.session, state: v.state },
  );
}

function codeOf(err: unknown, fallback: string): { code: string; message: string } {
  const e = err as { code?: unknown; message?: unknown };
  return {
    code:
      err instanceof ImgcastError ? err.code : typeof e.code === 'string' ? e.code.slice(0, 64) : fallback,
    message: String(e.message ?? err).slice(0, 4096),
  };
}
