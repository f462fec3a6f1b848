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
import { tempDir } from '../helpers/env.ts';

type Plan = Parameters<SendSession>[0];

/** A manager whose image lookups take `lookupMs` (a slow disk, a network share) and whose sends wait until stopped. */
async function manager(
  t: TestContext,
  lookupMs: number,
): Promise<{ sessions: SessionManager; sends: Plan[] }> {
  const dir = await tempDir(t);
  const db = await openDatabase(join(dir, 'imgcast.db'));
  const counters = await Counters.load(db);
  const images = {
    resolve: async (given: string) => {
      await sleep(lookupMs);
      return { name: given, path: join(dir, given) };
    },
    describe: async () => ({ problem: null }),
  } as unknown as ImageStore;
  const sends: Plan[] = [];
  const send: SendSession = (plan) => {
    sends.push(plan);
    return new Promise((_resolve, reject) =>
      plan.signal.addEventListener('abort', () => reject(plan.signal.reason as Error), { once: true }),
    );
  };
  const sessions = new SessionManager({
    db,
    images,
    counters,
    range: { firstGroup: '239.77.9.1', firstPort: 30000, slots: 4 },
    send,
    log: { info: () => {}, warn: () => {} },
  });
  await sessions.start();
  t.after(async () => {
    await sessions.close();
    await counters.close();
    await db.destroy();
  });
  return { sessions, sends };
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
