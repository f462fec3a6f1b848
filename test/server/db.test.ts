import assert from 'node:assert/strict';
import { DatabaseSync } from 'node:sqlite';
import { test } from 'node:test';
import { join } from 'node:path';

import { openDatabase, SCHEMA_VERSION } from '../../src/server/db.ts';
import { tempDir } from '../helpers/env.ts';

test('a new database gets every migration once, in WAL mode, and keeps rows across reopening', async (t) => {
  const file = join(await tempDir(t), 'state', 'imgcast.db');
  const db = await openDatabase(file);
  await db.insertInto('counters').values({ name: 'imagesSent', value: 7 }).execute();
  await db.destroy();
  const again = await openDatabase(file);
  const rows = await again.selectFrom('schema_migrations').selectAll().execute();
  assert.deepEqual(
    rows.map((r) => Number(r.version)),
    Array.from({ length: SCHEMA_VERSION }, (_, i) => i + 1),
  );
  assert.equal(Number((await again.selectFrom('counters').selectAll().executeTakeFirstOrThrow()).value), 7);
  await again.destroy();
  const raw = new DatabaseSync(file);
  assert.equal((raw.prepare('PRAGMA journal_mode').get() as { journal_mode: string }).journal_mode, 'wal');
  raw.close();
});

test('a database from a newer imgcast is refused, not altered', async (t) => {
  const file = join(await tempDir(t), 'imgcast.db');
  await (await openDatabase(file)).destroy();
  const raw = new DatabaseSync(file);
  raw.prepare('INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)').run(SCHEMA_VERSION + 1, 0);
  raw.close();
  await assert.rejects(openDatabase(file), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'E_DATABASE');
    assert.match(err.message, /newer than this imgcast knows/);
    return true;
  });
});
