/**
 * Calls to a test server's HTTP API as the CLI and workstations make them (fetch, JSON), with the
 * checks the API tests share: a call that must succeed, and a refusal that must change nothing.
 */
import assert from 'node:assert/strict';

import type { HistoryEntry, Session, Workstation } from '../../src/api/schemas.ts';
import type { RunningServer } from '../../src/server/server.ts';

/** What the calls need of a test: its server. */
export interface Fixture {
  server: RunningServer;
}

export interface Reply<T> {
  status: number;
  body: T;
}

export async function call<T = unknown>(
  f: Fixture,
  method: string,
  path: string,
  o: { token?: string | null; body?: unknown } = {},
): Promise<Reply<T>> {
  const token = o.token === undefined ? f.server.adminToken : o.token;
  const headers: Record<string, string> = {};
  if (token !== null) headers.authorization = `Bearer ${token}`;
  if (o.body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`${f.server.url}${path}`, {
    method,
    headers,
    body: o.body === undefined ? undefined : JSON.stringify(o.body),
  });
  const text = await res.text();
  return { status: res.status, body: (text ? JSON.parse(text) : undefined) as T };
}

export async function ok<T>(f: Fixture, method: string, path: string, o: Parameters<typeof call>[3] = {}) {
  const r = await call<T>(f, method, path, o);
  assert.ok(r.status >= 200 && r.status < 300, `${method} ${path}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

export async function snapshot(f: Fixture): Promise<unknown> {
  return {
    sessions: await ok<Session[]>(f, 'GET', '/api/sessions'),
    auto: (await ok<Session[]>(f, 'GET', '/api/auto-sessions')).map((s) => s.name),
    history: await ok<HistoryEntry[]>(f, 'GET', '/api/history'),
    // A workstation's own call marks it seen: that is no change of the registry.
    workstations: (await ok<Workstation[]>(f, 'GET', '/api/workstations')).map(
      ({ lastSeenAt: _s, lastAddress: _a, ...w }) => w,
    ),
  };
}

export type Refusal = { error: string; message: string } & Record<string, unknown>;

/** The call is refused with `code` and `status`, says why, and changes nothing. */
export async function refused(
  f: Fixture,
  code: string,
  status: number,
  method: string,
  path: string,
  o: Parameters<typeof call>[3] = {},
): Promise<Refusal> {
  const before = await snapshot(f);
  const r = await call<Refusal>(f, method, path, o);
  const what = `${method} ${path} ${JSON.stringify(o.body ?? '')}`;
  assert.equal(r.body?.error, code, `${what}: ${r.status} ${JSON.stringify(r.body)}`);
  assert.equal(r.status, status, `${what}: the status of ${code}`);
  assert.ok(r.body.message.length > 10, `${what}: a message`);
  assert.deepEqual(await snapshot(f), before, `${what} must change nothing`);
  return r.body;
}

let macs = 0;
/** Registers a workstation as `img session` / `img auto` do; its id and token. */
export async function register(
  f: Fixture,
  hostname: string,
  o: { mac?: string; cores?: number; disk?: number; address?: string } = {},
): Promise<{ id: string; name: string; token: string; mac: string }> {
  const mac = o.mac ?? `02:00:00:00:01:${(++macs).toString(16).padStart(2, '0')}`;
  const r = await ok<{ id: string; name: string; token: string }>(f, 'POST', '/api/workstations/register', {
    token: null,
    body: {
      hostname,
      mac,
      addresses: [o.address ?? '198.18.0.10'],
      disks: [{ path: '/dev/sda', sizeBytes: o.disk ?? 256e9 }],
      memoryBytes: 8 * 1024 ** 3,
      cpu: { model: 'test', cores: o.cores ?? 4 },
      dmi: { vendor: 'Dell Inc.' },
    },
  });
  return { ...r, mac };
}
