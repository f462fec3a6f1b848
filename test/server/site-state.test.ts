/**
 * site.ts with an injected clock: when another server of the site counts as up, down (no
 * heartbeat for DOWN_AFTER_MS) or stopped, and who may take a name. On an SQLite file, which the
 * Site code treats as shared when told so (the queries are the same on PostgreSQL: site.test.ts).
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';

import { openDatabase } from '../../src/server/db.ts';
import { newRow } from '../../src/server/sessions.ts';
import { DOWN_AFTER_MS, Site } from '../../src/server/site.ts';
import { tempDir } from '../helpers/env.ts';

test('another server is up while its heartbeat is fresh, down once it is DOWN_AFTER_MS old, stopped once it says so; its name is free again once it is not up', async (t) => {
  const db = await openDatabase(join(await tempDir(t), 'site.db'));
  t.after(() => db.destroy());
  let now = 1_000_000;
  const clock = () => now;
  const join_ = (name: string, place: string) =>
    Site.join({
      db,
      shared: true,
      name,
      url: `http://${name}:7740`,
      version: 'test',
      place,
      now: clock,
      heartbeatMs: 3_600_000,
    });
  const a = await join_('a', 'host-a:/data');
  const b = await join_('b', 'host-b:/data');
  t.after(async () => {
    await a.close().catch(() => {});
    await b.close().catch(() => {});
  });
  const stateOfB = async () => (await a.servers()).find((x) => x.name === 'b')?.state;
  assert.equal(await stateOfB(), 'up');
  now += DOWN_AFTER_MS;
  assert.equal(await stateOfB(), 'up', 'exactly DOWN_AFTER_MS old is still up');
  now += 1;
  assert.equal(await stateOfB(), 'down');
  assert.equal((await a.servers()).find((x) => x.self)?.state, 'up', 'a server is always up to itself');

  // While b is up, its name is refused from another place; down, it is not.
  now -= 1;
  await assert.rejects(join_('b', 'host-c:/data'), { code: 'E_SERVER_NAME_TAKEN' });
  now += 1;
  const c = await join_('b', 'host-c:/data');
  assert.equal((await a.servers()).find((x) => x.name === 'b')?.url, 'http://b:7740');
  await c.close();
  assert.equal(await stateOfB(), 'stopped');
  // A session of a stopped server: the referral says so.
  await db
    .insertInto('sessions')
    .values(newRow('s', now, { origin: 'server', start_by: 'count-or-time', server: 'b' }))
    .execute();
  assert.deepEqual(await a.elsewhere('s'), {
    session: 's',
    server: 'b',
    url: 'http://b:7740',
    state: 'stopped',
  });
  assert.equal(await b.elsewhere('s'), undefined, "a server's own session is not elsewhere");
  assert.equal(await a.elsewhere('nobody'), undefined);
});
