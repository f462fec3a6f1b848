/**
 * The console's live status (src/server/events.ts): the coalescing and the feed on a clock and
 * readers made here, then GET /api/events of a real server read with fetch as the console
 * reads it — who may open it, a status at once and after every change, the end of a sign-in
 * ending the stream, and a server that closes with streams open.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { test, type TestContext } from 'node:test';
import { pino } from 'pino';

import type { Session, Status } from '../../src/api/schemas.ts';
import { coalesce, StatusFeed, type FeedStream, type Timers } from '../../src/server/events.ts';
import { startServer, type RunningServer } from '../../src/server/server.ts';
import type { SendSession } from '../../src/server/sessions.ts';
import { call, ok, register } from '../helpers/api-calls.ts';
import { tempDir } from '../helpers/env.ts';
import { openEvents } from '../helpers/events.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const IMG = join(ROOT, 'bin/img.js');
const ENV = { ...process.env, PATH: `${join(ROOT, 'node_modules/.bin')}:${process.env.PATH ?? ''}` };

// ---------------------------------------------------------------- a clock and readers made here

class Clock implements Timers {
  t = 1_000_000;
  #due: Array<{ at: number; fn: () => void; id: number }> = [];
  #ids = 0;
  now = () => this.t;
  setTimeout = (fn: () => void, ms: number) => {
    const id = ++this.#ids;
    this.#due.push({ at: this.t + ms, fn, id });
    return id;
  };
  clearTimeout = (id: unknown) => {
    this.#due = this.#due.filter((d) => d.id !== id);
  };
  /** Moves time on, running what falls due in order. */
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      this.#due.sort((a, b) => a.at - b.at);
      const next = this.#due[0];
      if (!next || next.at > end) break;
      this.#due.shift();
      this.t = next.at;
      next.fn();
    }
    this.t = end;
  }
  get pending(): number {
    return this.#due.length;
  }
}

class Reader implements FeedStream {
  text = '';
  ended = false;
  backlog = 0;
  write(text: string): void {
    if (this.ended) throw new Error('write after end');
    this.text += text;
  }
  end(): void {
    this.ended = true;
  }
  buffered(): number {
    return this.backlog;
  }
  events(): Array<{ event: string; data: string }> {
    return this.text
      .split('\n\n')
      .filter((b) => b.startsWith('event:'))
      .map((b) => {
        const [e, d] = b.split('\n');
        return { event: e!.slice('event: '.length), data: d!.slice('data: '.length) };
      });
  }
}

const flush = () => new Promise((r) => setImmediate(r));

test('coalesce: a lone trigger runs at once, a burst folds into one run at the end of the interval', () => {
  const clock = new Clock();
  let runs = 0;
  const c = coalesce(() => runs++, 250, clock);
  c.trigger();
  assert.equal(runs, 1, 'the first trigger after a quiet spell is not delayed');
  for (let i = 0; i < 50; i++) {
    clock.advance(2);
    c.trigger();
  }
  assert.equal(runs, 1, 'triggers within the interval wait');
  clock.advance(150);
  assert.equal(runs, 2, 'one run for the whole burst, 250 ms after the first');
  clock.advance(1000);
  assert.equal(runs, 2, 'nothing more without a trigger');
  c.trigger();
  assert.equal(runs, 3, 'quiet again: at once');
  c.trigger();
  c.cancel();
  clock.advance(1000);
  assert.equal(runs, 3, 'cancel drops the pending run');
  assert.equal(clock.pending, 0);
});

function status(n: number): Status {
  return {
    server: { name: 's', version: 'test', startedAt: 0, warnings: [] },
    counters: { requestsReceived: n, imagesSent: 0, imagesReceived: 0, clientReferrals: 0, errors: 0 },
    sessions: [],
    jobs: [],
    servers: [],
  };
}

test('StatusFeed: a reader gets the status at once and then at most one per interval; a heartbeat keeps it alive and re-checks its token', async () => {
  const clock = new Clock();
  let n = 0;
  const feed = new StatusFeed({
    snapshot: () => status(n),
    minIntervalMs: 250,
    heartbeatMs: 15_000,
    timers: clock,
  });
  const a = new Reader();
  let allowed = true;
  feed.add(a, async () => (allowed ? null : { error: 'E_UNAUTHORIZED', message: 'gone' }));
  assert.deepEqual(
    a.events().map((e) => JSON.parse(e.data).counters.requestsReceived),
    [0],
    'the status at once',
  );
  for (let i = 1; i <= 100; i++) {
    n = i;
    feed.changed();
    clock.advance(5);
  }
  clock.advance(250);
  const seen = a.events().map((e) => JSON.parse(e.data).counters.requestsReceived as number);
  assert.ok(seen.length <= 4, `100 changes in 0.5 s make at most a few events, got ${seen.length}`);
  assert.equal(seen.at(-1), 100, 'the last event holds the last state');

  // The heartbeat: a keep-alive comment; the counters changed without a session change go out too.
  const before = a.events().length;
  n = 101;
  clock.advance(15_000);
  await flush();
  assert.match(a.text, /: keepalive\n\n/);
  clock.advance(300);
  assert.equal(a.events().length, before + 1, 'counters changed: one more status');

  // The token goes: the next heartbeat ends the stream with the reason.
  allowed = false;
  clock.advance(15_000);
  await flush();
  const last = a.events().at(-1)!;
  assert.equal(last.event, 'signed-out');
  assert.deepEqual(JSON.parse(last.data), { error: 'E_UNAUTHORIZED', message: 'gone' });
  assert.equal(a.ended, true);
  assert.equal(feed.size, 0);
  await flush();
  assert.equal(clock.pending, 0, 'no reader: no heartbeat left running');
});

test('StatusFeed: a reader too slow to take what it is sent is dropped; close ends every reader', () => {
  const clock = new Clock();
  const feed = new StatusFeed({ snapshot: () => status(1), timers: clock });
  const slow = new Reader();
  const fine = new Reader();
  feed.add(slow, async () => null);
  feed.add(fine, async () => null);
  slow.backlog = 64 * 1024 * 1024;
  feed.changed();
  assert.equal(slow.ended, true, 'the slow reader is dropped');
  assert.equal(fine.events().length, 2);
  assert.equal(feed.size, 1);
  feed.close();
  assert.equal(fine.ended, true);
  assert.equal(clock.pending, 0);
  const late = new Reader();
  feed.add(late, async () => null);
  assert.equal(late.ended, true, 'a closed feed takes no reader');
});

// ---------------------------------------------------------------- GET /api/events on a real server

/** Never sends: the sessions here only wait. */
const idle: SendSession = (plan) =>
  new Promise((_r, reject) =>
    plan.signal.addEventListener('abort', () => reject(plan.signal.reason as Error)),
  );

async function server(t: TestContext): Promise<{ server: RunningServer }> {
  const dir = await tempDir(t, 'imgcast-events-');
  const folder = join(dir, 'folder');
  mkdirSync(folder);
  writeFileSync(join(folder, 'a.txt'), 'a\n');
  mkdirSync(join(dir, 'images'));
  execFileSync(IMG, ['make', folder, join(dir, 'images', 'lab.imgc')], { env: ENV, stdio: 'pipe' });
  const s = await startServer({
    dataDir: join(dir, 'data'),
    imagesDir: join(dir, 'images'),
    host: '127.0.0.1',
    port: 0,
    range: { firstGroup: '239.77.12.1', firstPort: 31400, slots: 2 },
    version: 'test',
    name: 'events-test',
    logger: pino({ level: 'silent' }),
    send: idle,
    live: { minIntervalMs: 100, heartbeatMs: 300 },
  });
  t.after(() => s.close());
  return { server: s };
}

const open = openEvents;

test('GET /api/events: admins only; a status at once, and another after each change of the sessions', async (t) => {
  const f = await server(t);
  const none = await open(f, null);
  assert.equal(none.res.status, 401);
  assert.equal(((await none.res.json()) as { error: string }).error, 'E_UNAUTHORIZED');
  const ws = await register(f, 'pc1');
  const asWorkstation = await open(f, ws.token);
  assert.equal(asWorkstation.res.status, 403, 'a workstation token must not read the status');

  const s = await open(f, f.server.adminToken);
  t.after(() => s.close());
  assert.equal(s.res.status, 200);
  assert.match(s.res.headers.get('content-type') ?? '', /^text\/event-stream/);
  await s.until(() => s.events.length >= 1, 'the first status');
  assert.equal(s.events[0]!.event, 'status');
  assert.deepEqual((s.events[0]!.data as Status).sessions, []);

  await ok(f, 'POST', '/api/sessions', { body: { name: 'room1', image: 'lab.imgc', clientCount: 3 } });
  const has = (pred: (x: Session[]) => boolean) => () =>
    s.events.some((e) => e.event === 'status' && pred((e.data as Status).sessions));
  await s.until(
    has((x) => x.some((y) => y.name === 'room1' && y.state === 'waiting')),
    'room1 in a status',
  );
  await ok(f, 'POST', '/api/sessions/room1/join', { token: ws.token });
  await s.until(
    has((x) => x.some((y) => y.name === 'room1' && y.joined === 1 && y.needed === 2)),
    'the join',
  );
  await ok(f, 'PATCH', '/api/sessions/room1', { body: { clientCount: 5 } });
  await s.until(
    has((x) => x.some((y) => y.name === 'room1' && y.needed === 4)),
    'the new count',
  );
  await ok(f, 'POST', '/api/auto-sessions', { body: { name: 'auto1', image: 'lab.imgc' } });
  await ok(f, 'POST', '/api/auto-sessions', { body: { name: 'auto2', image: 'lab.imgc' } });
  await ok(f, 'POST', '/api/sessions/auto2/up');
  const order = (x: Session[]) =>
    x
      .filter((y) => y.auto)
      .sort((a, b) => a.auto!.position - b.auto!.position)
      .map((y) => y.name)
      .join(',');
  await s.until(
    has((x) => order(x) === 'auto2,auto1'),
    'the new order',
  );
  await ok(f, 'DELETE', '/api/sessions/room1');
  await s.until(
    has((x) => !x.some((y) => y.name === 'room1')),
    'room1 gone',
  );
});

test('GET /api/events: a console sign-in that expires or signs out ends its stream with signed-out; closing the server ends open streams', async (t) => {
  const f = await server(t);
  await ok(f, 'POST', '/api/admins', { body: { name: 'ann', password: 'password-1' } });
  const signIn = async () =>
    (
      await ok<{ token: string }>(f, 'POST', '/api/login', {
        token: null,
        body: { name: 'ann', password: 'password-1' },
      })
    ).token;

  const token = await signIn();
  const s = await open(f, token);
  assert.equal(s.res.status, 200);
  await s.until(() => s.events.length >= 1, 'the first status');
  await f.server.db
    .updateTable('logins')
    .set({ expires_at: Date.now() - 1 })
    .execute();
  await s.until(() => s.ended(), 'the end of the stream');
  const last = s.events.at(-1)!;
  assert.equal(last.event, 'signed-out');
  assert.equal((last.data as { error: string }).error, 'E_UNAUTHORIZED');
  assert.equal((await call(f, 'GET', '/api/status', { token })).status, 401, 'the token is refused too');

  // Sign-out: the token stops working at once, and its stream ends at the next heartbeat.
  const second = await signIn();
  const s2 = await open(f, second);
  await s2.until(() => s2.events.length >= 1, 'the first status');
  assert.equal((await call(f, 'POST', '/api/logout', { token: second })).status, 204);
  assert.equal((await call(f, 'GET', '/api/status', { token: second })).status, 401);
  await s2.until(() => s2.ended(), 'the end of the signed-out stream');
  assert.equal(s2.events.at(-1)!.event, 'signed-out');

  // Streams open at shutdown must not hold the server's close.
  const s3 = await open(f, f.server.adminToken);
  await s3.until(() => s3.events.length >= 1, 'the first status');
  const started = Date.now();
  await f.server.close();
  await s3.until(() => s3.ended(), 'the end at shutdown');
  assert.ok(Date.now() - started < 5000, `closed in ${Date.now() - started} ms`);
});
