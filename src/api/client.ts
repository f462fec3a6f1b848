/**
 * A client of the imaging server's HTTP API, for the admin CLI and for workstations. Every
 * failure becomes an ApiError carrying the server's stable code (or E_SERVER_UNREACHABLE when
 * no answer came), so callers branch on codes, never on prose.
 */
import { ImgcastError } from '../errors.ts';

/** The default API port of `imgcast server`. */
export const DEFAULT_API_PORT = 7740;

export class ApiError extends ImgcastError {
  readonly status: number;
  constructor(code: string, message: string, status: number, details: Record<string, unknown> = {}) {
    super(code, message, details);
    this.status = status;
  }
}

/** "host", "host:port" or a full URL, to the API's base URL (http, default port). */
export function serverUrl(server: string): string {
  if (/^https?:\/\//.test(server)) return server.replace(/\/+$/, '');
  const m = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(server);
  if (!m) throw new ApiError('E_USAGE', `not a server address: ${server} (give HOST or HOST:PORT)`, 0);
  const port = m[2] === undefined ? DEFAULT_API_PORT : Number(m[2]);
  if (!(port >= 1 && port <= 65535)) throw new ApiError('E_USAGE', `bad port in ${server}`, 0);
  return `http://${m[1]}:${port}`;
}

export interface RequestOptions {
  body?: unknown;
  /** Raw bytes (application/octet-stream) instead of a JSON body. */
  bytes?: Uint8Array;
  headers?: Record<string, string>;
  signal?: AbortSignal;
  /** Give up after this long (default 30 s; long polls pass their own). */
  timeoutMs?: number;
}

export class ApiClient {
  readonly baseUrl: string;
  token: string | undefined;

  constructor(server: string, token?: string) {
    this.baseUrl = serverUrl(server);
    this.token = token;
  }

  async request<T>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    const headers: Record<string, string> = { ...opts.headers };
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    let body: string | Uint8Array<ArrayBuffer> | undefined;
    if (opts.bytes) {
      headers['content-type'] = 'application/octet-stream';
      body = opts.bytes as Uint8Array<ArrayBuffer>;
    } else if (opts.body !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(opts.body);
    }
    const timeout = AbortSignal.timeout(opts.timeoutMs ?? 30_000);
    const signal = opts.signal ? AbortSignal.any([opts.signal, timeout]) : timeout;
    let res: Response;
    try {
      res = await fetch(`${this.baseUrl}${path}`, { method, headers, body, signal });
    } catch (err) {
      if (opts.signal?.aborted) throw opts.signal.reason;
      const cause =
        err instanceof Error ? ((err.cause as Error | undefined)?.message ?? err.message) : String(err);
      throw new ApiError(
        'E_SERVER_UNREACHABLE',
        timeout.aborted
          ? `the imaging server at ${this.baseUrl} did not answer ${method} ${path} within ${Math.round((opts.timeoutMs ?? 30_000) / 1000)} s`
          : `cannot reach the imaging server at ${this.baseUrl}: ${cause}`,
        0,
        { server: this.baseUrl },
      );
    }
    const text = await res.text();
    let parsed: unknown;
    try {
      parsed = text === '' ? undefined : JSON.parse(text);
    } catch {
      parsed = undefined;
    }
    if (!res.ok) {
      const e = (parsed ?? {}) as { error?: unknown; message?: unknown };
      const code = typeof e.error === 'string' ? e.error : `E_HTTP_${res.status}`;
      const message = typeof e.message === 'string' ? e.message : `${method} ${path}: HTTP ${res.status}`;
      const { error: _e, message: _m, ...details } = (parsed ?? {}) as Record<string, unknown>;
      throw new ApiError(code, message, res.status, details);
    }
    return parsed as T;
  }
}
