/**
 * The session scheduler against a real database and image folder, with the multicast send
 * replaced by a script (the real send is covered by the lab tests): triggers, results that come
 * from workstations, stop mid-send, interruption by a server stop, and a restarted run.
 */
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';

import { makeImage } from '../../src/engine/make.ts';
import { Counters } from '../../src/server/counters.ts';
import { openDatabase, type Db } from '../../src/server/db.ts';
import { ImageStore } from '../../src/server/images.ts';
import { SessionManager, type SendSession } from '../../src/server/sessions.ts';
import type { SenderResult } from '../../src/transport/types.ts';
import { tempDir } from '../helpers/env.ts';

const quiet = { info: () => {}, warn: () => {} };
const ws = (n: number) => ({
  id: `w${n}`,
  name: `pc${n}`,
  mac: `02:00:00:00:00:0${n}`,
  address: `198.18.0.${n + 1}`,
});

function result(names: string[], state: 'ok' | 'dropped' = 'ok'): SenderResult {
  return {
    ok: state === 'ok',
    nonce: '0',
    chunks: 1,
    bytes: 100,
    durationMs: 1,
    receivers: names.map((name) => ({
      name,
      address: '198.18.0.9:1',
      state,
      reason: state === 'ok' ? null : 'unresponsive for 10 s',
      code: state === 'ok' ? null : 'E_DROPPED',
      bytes: 100,
      totalBytes: 100,
      chunksHad: 0,
      rateMbit: 1,
      repairsRequested: 0,
      counters: null,
    })),
    counters: {} as SenderResult['counters'],
  };
}

async function setup(t: TestContext, send: SendSession, dir?: string) {
  dir ??= await tempDir(t);
  const db: Db = await openDatabase(join(dir, 'imgcast.db'));
  const images = await ImageStore.open(join(dir, 'images'));
  // A real (tiny) image: a session of a file that is no image is refused at creation.
  await mkdir(join(dir, 'folder'), { recursive: true });
  await writeFile(join(dir, 'folder', 'hostname'), 'lab\n');
  await makeImage(join(dir, 'folder'), join(dir, 'images', 'lab.imgc'), { level: 'speed', overwrite: true });
  const counters = await Counters.load(db, 'test');
  const m = new SessionManager({
    db,
    images,
    counters,
    send,
    range: { firstGroup: '239.77.5.1', firstPort: 30000, slots: 2 },
    log: quiet,
  });
  await m.start();
  let closed: Promise<void> | undefined;
  const close = () =>
    (closed ??= (async () => {
      await m.close();
      await counters.close();
      await db.destroy();
    })());
  t.after(close);
  return { m, dir, counters, close };
}

async function until(what: string, check: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test('count trigger: sends to the joined workstations on their own group, and the result comes from each workstation', async (t) => {
  const plans: Parameters<SendSession>[0][] = [];
  const { m, counters } = await setup(t, async (plan) => {
    plans.push(plan);
    return result(['pc1/02:00:00:00:00:01', 'pc2/02:00:00:00:00:02']);
  });
  await m.create({ name: 'lab1', image: 'lab.imgc', clientCount: 2 });
  const v1 = await m.join('lab1', ws(1), '198.18.0.1');
  assert.equal(v1.state, 'waiting');
  assert.equal(v1.needed, 1);
  await m.join('lab1', ws(2), '198.18.0.1');
  await until('the send', () => plans.length === 1);
  assert.equal(plans[0]!.clients, 2);
  assert.equal(plans[0]!.group, '239.77.5.1');
  const view = m.joinView('lab1', 'w1', '198.18.0.1');
  assert.deepEqual(
    { from: view.receiver?.from, name: view.receiver?.name },
    { from: '198.18.0.1:30000', name: 'pc1/02:00:00:00:00:01' },
  );
  // The sender is done, but the session is not until each workstation has written and verified.
  await until('writing', () => m.get('lab1').clients.every((c) => c.state === 'writing'));
  assert.equal(m.get('lab1').state, 'sending');
  await m.report('lab1', 'w1', { run: 1, state: 'ok' });
  await m.report('lab1', 'w2', { run: 1, state: 'failed', code: 'E_VERIFY', message: 'file differs' });
  const s = m.get('lab1');
  assert.equal(s.state, 'failed');
  assert.equal(s.message, '1 of 2 workstation(s) failed');
  assert.deepEqual(
    s.clients.map((c) => [c.name, c.state, c.reason]),
    [
      ['pc1', 'ok', null],
      ['pc2', 'failed', 'file differs'],
    ],
  );
  assert.equal(counters.view().imagesSent, 1);
  const [h] = await m.history();
  assert.equal(h!.state, 'failed');
  assert.equal(h!.clients.length, 2);
});

test('a workstation the sender dropped fails with the drop reason; one that joined late is refused', async (t) => {
  const { m } = await setup(t, async () => result(['pc1/02:00:00:00:00:01'], 'dropped'));
  await m.create({ name: 'lab', image: 'lab.imgc', clientCount: 1 });
  await m.join('lab', ws(1), '198.18.0.1');
  await until('the end', () => m.get('lab').state === 'failed');
  assert.equal(m.get('lab').clients[0]!.reason, 'unresponsive for 10 s');
  await assert.rejects(m.join('lab', ws(2), '198.18.0.1'), { code: 'E_SESSION_STATE' });
});

test('stop while sending aborts the send with the reason, and the clients fail "stopped by the administrator"', async (t) => {
  let reason: unknown;
  const { m } = await setup(
    t,
    (plan) =>
      new Promise((resolve) =>
        plan.signal.addEventListener('abort', () => {
          reason = plan.signal.reason;
          resolve(result([]));
        }),
      ),
  );
  await m.create({ name: 'lab', image: 'lab.imgc' });
  await m.join('lab', ws(1), '198.18.0.1');
  await until('sending', () => m.get('lab').state === 'sending');
  const s = await m.stop('lab', false);
  assert.equal(s.state, 'stopped');
  assert.equal(s.clients[0]!.reason, 'stopped by the administrator');
  await until('the abort', () => reason !== undefined);
  assert.match((reason as Error).message, /stopped by the administrator/);
  await m.stop('lab', true);
  assert.throws(() => m.get('lab'), { code: 'E_SESSION_UNKNOWN' });
  assert.equal((await m.history())[0]!.state, 'stopped');
});

test('a server stop mid-send leaves the session interrupted at the next start; restart opens run 2 for the same workstations', async (t) => {
  const first = await setup(
    t,
    (plan) => new Promise((resolve) => plan.signal.addEventListener('abort', () => resolve(result([])))),
  );
  await first.m.create({ name: 'lab', image: 'lab.imgc', clientCount: 1 });
  await first.m.join('lab', ws(1), '198.18.0.1');
  await until('sending', () => first.m.get('lab').state === 'sending');
  await first.close();
  const second = await setup(t, async () => result(['pc1/02:00:00:00:00:01']), first.dir);
  const s = second.m.get('lab');
  assert.equal(s.state, 'interrupted');
  assert.match(s.clients[0]!.reason ?? '', /server stopped while sending/);
  await assert.rejects(second.m.join('lab', ws(1), '198.18.0.1'), { code: 'E_SESSION_STATE' });
  const reopened = await second.m.restart('lab');
  assert.deepEqual([reopened.state, reopened.run, reopened.joined], ['waiting', 2, 0]);
  await second.m.join('lab', ws(1), '198.18.0.1');
  await until('writing', () => second.m.get('lab').clients[0]?.state === 'writing');
  await assert.rejects(second.m.report('lab', 'w1', { run: 1, state: 'ok' }), { code: 'E_NOT_JOINED' });
  await second.m.report('lab', 'w1', { run: 2, state: 'ok' });
  assert.equal(second.m.get('lab').state, 'done');
  assert.deepEqual(
    (await second.m.history()).map((h) => [h.run, h.state]),
    [
      [2, 'done'],
      [1, 'interrupted'],
    ],
  );
});

test('edit changes a waiting session only; start now needs someone joined', async (t) => {
  const { m } = await setup(
    t,
    (plan) => new Promise((resolve) => plan.signal.addEventListener('abort', () => resolve(result([])))),
  );
  await m.create({ name: 'lab', image: 'lab.imgc', clientCount: 5, waitSeconds: 600 });
  await assert.rejects(m.startNow('lab'), { code: 'E_SESSION_STATE' });
  assert.equal((await m.edit('lab', { clientCount: 3, waitMinutes: 2 })).waitMs, 120_000);
  await m.join('lab', ws(1), '198.18.0.1');
  assert.equal(m.get('lab').needed, 2);
  await m.startNow('lab');
  assert.equal(m.get('lab').state, 'sending');
  await assert.rejects(m.edit('lab', { clientCount: 1 }), { code: 'E_SESSION_STATE' });
});
