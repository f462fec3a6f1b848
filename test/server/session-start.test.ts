/**
 * The session scheduler on its own (no network): SessionManager with a fake send, so that what
 * is checked is when and how often a session is started, and on which group and port.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { Counters } from '../../src/server/counters.ts';
import { openDatabase } from '../../src/server/db.ts';
import type { ImageStore } from '../../src/server/images.ts';
import { SessionManager, type SendSession } from '../../src/server/sessions.ts';
import { MAX_WARM } from '../../src/server/warm-sender.ts';
import { tempDir } from '../helpers/env.ts';

type Plan = Parameters<SendSession>[0];

/**
 * A manager whose image lookups take `lookupMs` (a slow disk, a network share) and whose sends
 * wait until stopped. With `warm`, its send honours a gate as the real one does (warm-sender.ts):
 * `opened` lists the gates opened, with the count each was given; `failWarm` makes a held send
 * fail before its gate opens.
 */
async function manager(
  t: TestContext,
  lookupMs: number,
  o: { warm?: boolean; slots?: number; failWarm?: boolean } = {},
): Promise<{ sessions: SessionManager; sends: Plan[]; opened: Array<{ plan: Plan; clients: number }> }> {
  const dir = await tempDir(t);
  const db = await openDatabase(join(dir, 'imgcast.db'));
  const counters = await Counters.load(db, 'test');
  const images = {
    resolve: async (given: string) => {
      await sleep(lookupMs);
      return { name: given, path: join(dir, given) };
    },
    describe: async () => ({ problem: null }),
  } as unknown as ImageStore;
  const sends: Plan[] = [];
  const opened: Array<{ plan: Plan; clients: number }> = [];
  const send: SendSession = (plan) => {
    sends.push(plan);
    if (plan.gate && o.failWarm) return Promise.reject(new Error('cannot listen on the control port'));
    void plan.gate?.then(({ clients }) => opened.push({ plan, clients }));
    return new Promise((_resolve, reject) =>
      plan.signal.addEventListener('abort', () => reject(plan.signal.reason as Error), { once: true }),
    );
  };
  const sessions = new SessionManager({
    db,
    images,
    counters,
    range: { firstGroup: '239.77.9.1', firstPort: 30000, slots: o.slots ?? 4 },
    send,
    warm: o.warm,
    log: { info: () => {}, warn: () => {} },
  });
  await sessions.start();
  t.after(async () => {
    await sessions.close();
    await counters.close();
    await db.destroy();
  });
  return { sessions, sends, opened };
}

const ws = (n: number) => ({
  id: `w${n}`,
  name: `w${n}`,
  mac: `02:00:00:00:00:0${n}`,
  address: `198.18.0.${n + 1}`,
});

test('a session whose image takes longer to look up than a trigger check is started once', async (t) => {
  const { sessions, sends } = await manager(t, 500);
  await sessions.create({ name: 's', image: 'a.imgc', clientCount: 1 });
  await sessions.join('s', ws(1), '198.18.0.1');
  // The trigger is checked every 200 ms: several checks fall within the lookup.
  await sleep(1200);
  assert.equal(
    sends.length,
    1,
    `sent ${sends.length} times: ${sends.map((p) => `${p.group}:${p.port}`).join(', ')}`,
  );
  const s = sessions.get('s');
  assert.equal(s.state, 'sending');
  assert.equal(s.group, sends[0]!.group);
  assert.equal(s.port, sends[0]!.port);
});

test('two sessions starting at the same moment get different groups and ports', async (t) => {
  const { sessions, sends } = await manager(t, 300);
  await sessions.create({ name: 'a', image: 'a.imgc', clientCount: 1 });
  await sessions.create({ name: 'b', image: 'b.imgc', clientCount: 1 });
  await Promise.all([sessions.join('a', ws(1), '198.18.0.1'), sessions.join('b', ws(2), '198.18.0.1')]);
  await sleep(1000);
  assert.equal(sends.length, 2, `sent ${sends.length} times`);
  const [a, b] = [sessions.get('a'), sessions.get('b')];
  assert.equal(a.state, 'sending');
  assert.equal(b.state, 'sending');
  assert.notEqual(a.group, b.group);
  assert.notEqual(a.port, b.port);
  assert.deepEqual(
    sends.map((p) => `${p.group}:${p.port}`).sort(),
    [`${a.group}:${a.port}`, `${b.group}:${b.port}`].sort(),
  );
});

test('start now while the trigger is already starting the session sends once and answers sending', async (t) => {
  const { sessions, sends } = await manager(t, 400);
  await sessions.create({ name: 's', image: 'a.imgc', clientCount: 2, waitSeconds: 600 });
  await sessions.join('s', ws(1), '198.18.0.1');
  const [viaJoin, viaAdmin] = await Promise.all([
    sessions.join('s', ws(2), '198.18.0.1'),
    sleep(50).then(() => sessions.startNow('s')),
  ]);
  assert.equal(viaJoin.joined, 2);
  assert.equal(viaAdmin.state, 'sending');
  await sleep(600);
  assert.equal(sends.length, 1);
});

test('a session stopped while its image is looked up stays stopped and is never sent', async (t) => {
  const { sessions, sends } = await manager(t, 400);
  await sessions.create({ name: 's', image: 'a.imgc', clientCount: 1 });
  await sessions.join('s', ws(1), '198.18.0.1');
  await sleep(100);
  await sessions.stop('s', false);
  await sleep(700);
  assert.equal(sends.length, 0);
  assert.equal(sessions.get('s').state, 'stopped');
});

test('warm: the sender is readied when the session is made and held; the trigger opens its gate for those joined, on its group and port', async (t) => {
  const { sessions, sends, opened } = await manager(t, 0, { warm: true });
  await sessions.create({ name: 's', image: 'a.imgc', clientCount: 3, waitSeconds: 600 });
  await sleep(300);
  assert.equal(sends.length, 1, 'not readied before anyone joined');
  await sessions.join('s', ws(1), '198.18.0.1');
  await sessions.join('s', ws(2), '198.18.0.1');
  await sleep(300);
  assert.equal(sends.length, 1);
  assert.ok(sends[0]!.gate, 'the readied send has a gate');
  assert.match(sends[0]!.imagePath, /a\.imgc$/);
  assert.equal(opened.length, 0, 'the gate opened before the trigger');
  assert.equal(sessions.get('s').state, 'waiting');
  assert.equal(
    sessions.joinView('s', 'w1', '198.18.0.1').receiver,
    null,
    'told where to receive before the start',
  );
  await sessions.join('s', ws(3), '198.18.0.1');
  assert.equal(sessions.get('s').state, 'sending');
  await sleep(50);
  assert.deepEqual(
    opened.map((o) => o.clients),
    [3],
  );
  assert.equal(sends.length, 1, 'a second sender was started');
  const s = sessions.get('s');
  assert.deepEqual([s.group, s.port], [sends[0]!.group, sends[0]!.port]);
  const receiver = sessions.joinView('s', 'w3', '198.18.0.1').receiver;
  assert.equal(receiver?.from, `198.18.0.1:${sends[0]!.port}`);
  assert.equal(receiver?.key, sends[0]!.key);
});

test('warm: a session stopped while it waits ends its readied sender, whose gate never opens', async (t) => {
  const { sessions, sends, opened } = await manager(t, 0, { warm: true });
  await sessions.create({ name: 's', image: 'a.imgc', clientCount: 2 });
  await sessions.join('s', ws(1), '198.18.0.1');
  await sleep(100);
  assert.equal(sends.length, 1);
  await sessions.stop('s', true);
  assert.equal(sends[0]!.signal.aborted, true);
  await sleep(300);
  assert.equal(opened.length, 0);
  assert.equal(sends.length, 1);
});

test('warm: a changed image lets the readied sender go; the trigger starts one for the new image', async (t) => {
  const { sessions, sends, opened } = await manager(t, 0, { warm: true });
  await sessions.create({ name: 's', image: 'a.imgc', clientCount: 2 });
  await sessions.join('s', ws(1), '198.18.0.1');
  await sleep(100);
  await sessions.edit('s', { image: 'b.imgc' });
  assert.equal(sends[0]!.signal.aborted, true, 'the sender of the old image still runs');
  await sessions.join('s', ws(2), '198.18.0.1');
  await sleep(300);
  assert.equal(sessions.get('s').state, 'sending');
  assert.equal(sends.length, 2);
  assert.match(sends[1]!.imagePath, /b\.imgc$/);
  assert.equal(sends[1]!.gate, undefined);
  assert.equal(opened.length, 0);
});

test('warm: one that fails to get ready leaves the session to start its sender at the trigger', async (t) => {
  const { sessions, sends } = await manager(t, 0, { warm: true, failWarm: true });
  await sessions.create({ name: 's', image: 'a.imgc', clientCount: 2 });
  await sessions.join('s', ws(1), '198.18.0.1');
  await sleep(500);
  assert.equal(sends.length, 1, 'readied again after it failed');
  await sessions.join('s', ws(2), '198.18.0.1');
  await sleep(200);
  assert.equal(sessions.get('s').state, 'sending');
  assert.equal(sends.length, 2);
  assert.equal(sends[1]!.gate, undefined);
});

test('warm: a session that must start and finds every slot held by readied senders takes one', async (t) => {
  const { sessions, sends, opened } = await manager(t, 0, { warm: true, slots: 1 });
  await sessions.create({ name: 'a', image: 'a.imgc', clientCount: 2 });
  await sessions.join('a', ws(1), '198.18.0.1');
  await sleep(100);
  assert.equal(sends.length, 1, "a's sender readied");
  await sessions.create({ name: 'b', image: 'b.imgc', clientCount: 1 });
  await sessions.join('b', ws(2), '198.18.0.1');
  await sleep(600);
  assert.equal(sends[0]!.signal.aborted, true, "a's readied sender kept the only slot");
  assert.match((sends[0]!.signal.reason as Error).message, /went to session b/);
  assert.equal(sessions.get('b').state, 'sending');
  assert.equal(sessions.get('a').state, 'waiting');
  assert.equal(sends.length, 2);
  assert.equal(sends[1]!.port, sends[0]!.port);
  assert.deepEqual(
    opened.map((o) => [o.plan.imagePath.slice(-6), o.clients]),
    [['b.imgc', 1]],
  );
});

test('warm: at most MAX_WARM sessions hold a readied sender; the others start theirs at the trigger', async (t) => {
  const { sessions, sends } = await manager(t, 0, { warm: true, slots: 8 });
  for (let i = 1; i <= MAX_WARM + 1; i++) {
    await sessions.create({ name: `s${i}`, image: 'a.imgc', clientCount: 2 });
    await sessions.join(`s${i}`, ws(i), '198.18.0.1');
  }
  await sleep(300);
  assert.equal(sends.length, MAX_WARM);
  assert.ok(sends.every((p) => p.gate));
  await sessions.join(`s${MAX_WARM + 1}`, ws(9), '198.18.0.1');
  await sleep(200);
  assert.equal(sessions.get(`s${MAX_WARM + 1}`).state, 'sending');
  assert.equal(sends.length, MAX_WARM + 1);
  assert.equal(sends.at(-1)!.gate, undefined);
});
