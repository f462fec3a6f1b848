/**
 * The database layer, the same tests against each database it opens (SQLite file, PostgreSQL
 * URL): migrations, auto-numbered ids, numbers coming back as numbers, the refusal of a newer
 * schema; then what only one of them has (WAL; PostgreSQL's connection errors, servers starting
 * together, its pool). PostgreSQL runs as a throwaway cluster (test/helpers/postgres.ts).
 */
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { DatabaseSync } from 'node:sqlite';
import { describe, test, type TestContext } from 'node:test';
import { dirname, join } from 'node:path';
import { Client, types as pgTypes } from 'pg';

import {
  MIGRATIONS,
  openDatabase,
  postgresStatement,
  redactLocation,
  SCHEMA_VERSION,
} from '../../src/server/db.ts';
import { tempDir } from '../helpers/env.ts';
import { postgresPerFile } from '../helpers/postgres.ts';

const pg = postgresPerFile();

interface DatabaseMaker {
  name: string;
  /** Where a new, empty database is; undefined when the test was skipped. */
  location(t: TestContext): Promise<string | undefined>;
  /** Runs statements on the database directly (not through openDatabase), in order. */
  raw(location: string, statements: readonly string[]): Promise<void>;
}

const makers: DatabaseMaker[] = [
  {
    name: 'SQLite',
    location: async (t) => join(await tempDir(t), 'state', 'imgcast.db'),
    async raw(file, statements) {
      mkdirSync(dirname(file), { recursive: true });
      const db = new DatabaseSync(file);
      try {
        for (const s of statements) db.exec(s);
      } finally {
        db.close();
      }
    },
  },
  {
    name: 'PostgreSQL',
    location: (t) => pg.database(t),
    async raw(url, statements) {
      const c = new Client({ connectionString: url });
      await c.connect();
      try {
        for (const s of statements) await c.query(s);
      } finally {
        await c.end();
      }
    },
  },
];

const versions = () => Array.from({ length: SCHEMA_VERSION }, (_, i) => i + 1);

for (const maker of makers) {
  describe(maker.name, () => {
    test('a new database gets every migration once, and keeps rows across reopening', async (t) => {
      const where = await maker.location(t);
      if (where === undefined) return;
      const db = await openDatabase(where);
      await db.insertInto('counters').values({ name: 'imagesSent', value: 7 }).execute();
      await db.destroy();
      const again = await openDatabase(where);
      t.after(() => again.destroy());
      const rows = await again.selectFrom('schema_migrations').selectAll().orderBy('version').execute();
      assert.deepEqual(
        rows.map((r) => r.version),
        versions(),
      );
      const counters = await again.selectFrom('counters').selectAll().execute();
      assert.deepEqual(
        counters.map((r) => ({ ...r })),
        [{ name: 'imagesSent', value: 7 }],
      );
    });

    test('a database from a newer imgcast is refused, not altered', async (t) => {
      const where = await maker.location(t);
      if (where === undefined) return;
      const db = await openDatabase(where);
      await db
        .insertInto('schema_migrations')
        .values({ version: SCHEMA_VERSION + 1, applied_at: 0 })
        .execute();
      await db.destroy();
      await assert.rejects(openDatabase(where), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'E_DATABASE');
        assert.match(err.message, /newer than this imgcast knows/);
        return true;
      });
      await maker.raw(where, [`DELETE FROM schema_migrations WHERE version = ${SCHEMA_VERSION + 1}`]);
      const after = await openDatabase(where);
      t.after(() => after.destroy());
      assert.equal(
        (await after.selectFrom('schema_migrations').selectAll().execute()).length,
        SCHEMA_VERSION,
      );
    });

    test('history and boot decisions number their rows: an insert without an id gets the next one', async (t) => {
      const where = await maker.location(t);
      if (where === undefined) return;
      let db = await openDatabase(where);
      const historyRow = (run: number) => ({
        session: 'lab',
        run,
        image: 'lab.imgc',
        fileset: 1,
        state: 'done',
        started_at: 1,
        finished_at: 2,
        message: null,
        clients: '[]',
      });
      const decision = (mac: string) => ({
        at: Date.now(),
        mac,
        workstation: null,
        platform: 'efi',
        decision: 'local',
        session: null,
        why: 'test',
      });
      await db.insertInto('history').values(historyRow(1)).execute();
      await db.insertInto('history').values(historyRow(2)).execute();
      await db.insertInto('boot_decisions').values(decision('02:00:00:00:00:01')).execute();
      await db.insertInto('boot_decisions').values(decision('02:00:00:00:00:02')).execute();
      await db.destroy();
      db = await openDatabase(where);
      t.after(() => db.destroy());
      await db.insertInto('history').values(historyRow(3)).execute();
      await db.insertInto('boot_decisions').values(decision('02:00:00:00:00:03')).execute();
      const history = await db.selectFrom('history').select(['id', 'run']).orderBy('id').execute();
      assert.deepEqual(
        history.map((r) => r.run),
        [1, 2, 3],
      );
      const decisions = await db
        .selectFrom('boot_decisions')
        .select(['id', 'mac'])
        .orderBy('id', 'desc')
        .execute();
      assert.deepEqual(
        decisions.map((r) => r.mac),
        ['02:00:00:00:00:03', '02:00:00:00:00:02', '02:00:00:00:00:01'],
      );
      for (const ids of [history.map((r) => r.id), decisions.map((r) => r.id).reverse()]) {
        assert.ok(ids.every((id) => typeof id === 'number' && Number.isInteger(id)));
        assert.ok(
          ids.every((id, i) => i === 0 || id > ids[i - 1]!),
          `ids increase: ${ids.join(', ')}`,
        );
      }
    });

    test('BIGINT, INTEGER, DOUBLE PRECISION and counts come back as JavaScript numbers', async (t) => {
      const where = await maker.location(t);
      if (where === undefined) return;
      const db = await openDatabase(where);
      t.after(() => db.destroy());
      const now = Date.now();
      await db.insertInto('admins').values({ name: 'root', password_hash: 'x', created_at: now }).execute();
      await db
        .insertInto('session_clients')
        .values({
          session: 'lab',
          run: 3,
          workstation: 'w1',
          name: 'pc1',
          mac: '02:00:00:00:00:01',
          address: '198.18.0.2',
          joined_at: now,
          state: 'ok',
          bytes: 5_000_000_000_123,
          total_bytes: 2 ** 53 - 1,
          rate_mbit: 812.5,
          code: null,
          reason: null,
          finished_at: null,
        })
        .execute();
      const admin = await db.selectFrom('admins').selectAll().executeTakeFirstOrThrow();
      assert.strictEqual(admin.created_at, now);
      const c = await db.selectFrom('session_clients').selectAll().executeTakeFirstOrThrow();
      assert.strictEqual(c.joined_at, now);
      assert.strictEqual(c.run, 3);
      assert.strictEqual(c.bytes, 5_000_000_000_123);
      assert.strictEqual(c.total_bytes, 2 ** 53 - 1);
      assert.strictEqual(c.rate_mbit, 812.5);
      assert.strictEqual(c.finished_at, null);
      // The arithmetic the server does on them stays arithmetic, not string concatenation.
      assert.strictEqual(c.joined_at + 1000, now + 1000);
      const agg = await db
        .selectFrom('session_clients')
        .select((eb) => [eb.fn.countAll().as('n'), eb.fn.max('joined_at').as('newest')])
        .executeTakeFirstOrThrow();
      assert.deepEqual({ ...agg }, { n: 1, newest: now });
      // pg's own parsers, which other code may use, are left as they were: int8 stays text there.
      assert.equal(pgTypes.getTypeParser(20)('5'), '5');
    });

    test('migration 3 rebuilds the workstations table of an older database, keeping its rows', async (t) => {
      const where = await maker.location(t);
      if (where === undefined) return;
      const pgsql = maker.name === 'PostgreSQL';
      await maker.raw(where, [
        `CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)`,
        ...[...MIGRATIONS[0]!, ...MIGRATIONS[1]!].map((s) => (pgsql ? postgresStatement(s) : s)),
        `INSERT INTO schema_migrations (version, applied_at) VALUES (1, 0), (2, 0)`,
        `INSERT INTO workstations (id, name, mac, hostname, addresses, last_address, inventory, token_hash,
           registered_at, last_seen_at)
         VALUES ('020000000001', 'pc1', '02:00:00:00:00:01', 'pc1', '[]', '198.18.0.2', '{}', 'h', 1700000000000,
           1700000000500)`,
      ]);
      const db = await openDatabase(where);
      t.after(() => db.destroy());
      const row = await db.selectFrom('workstations').selectAll().executeTakeFirstOrThrow();
      assert.deepEqual(
        { named: row.named, ip: row.ip, created_at: row.created_at, last_seen_at: row.last_seen_at },
        { named: 0, ip: null, created_at: 1700000000000, last_seen_at: 1700000000500 },
      );
      // The unique MAC index came back with the new table.
      await assert.rejects(
        db
          .insertInto('workstations')
          .values({ ...row, id: '020000000099' })
          .execute(),
      );
    });
  });
}

test('SQLite: the database file is in WAL mode', async (t) => {
  const file = join(await tempDir(t), 'imgcast.db');
  await (await openDatabase(file)).destroy();
  const raw = new DatabaseSync(file);
  assert.equal((raw.prepare('PRAGMA journal_mode').get() as { journal_mode: string }).journal_mode, 'wal');
  raw.close();
});

test('PostgreSQL: servers opening one new database together apply each migration once', async (t) => {
  const url = await pg.database(t);
  if (url === undefined) return;
  const opened = await Promise.allSettled(Array.from({ length: 4 }, () => openDatabase(url)));
  const dbs = opened.flatMap((o) => (o.status === 'fulfilled' ? [o.value] : []));
  t.after(() => Promise.all(dbs.map((d) => d.destroy())));
  // Without the lock, one applies a migration another is applying: "already exists", or a duplicate version.
  assert.deepEqual(
    opened.flatMap((o) => (o.status === 'rejected' ? [String(o.reason)] : [])),
    [],
  );
  const rows = await dbs[0]!.selectFrom('schema_migrations').select('version').orderBy('version').execute();
  assert.deepEqual(
    rows.map((r) => r.version),
    versions(),
  );
  // Each of them works on the tables the others may have made.
  for (const [i, db] of dbs.entries()) {
    await db
      .insertInto('settings')
      .values({ name: `s${i}`, value: '1' })
      .execute();
  }
  assert.equal((await dbs[3]!.selectFrom('settings').selectAll().execute()).length, 4);
});

test('PostgreSQL: a database that cannot be reached is E_DATABASE, naming it without its password', async (t) => {
  const cluster = await pg.cluster(t);
  if (cluster === undefined) return;
  const at = `?host=${cluster.dir}&port=${cluster.port}`;
  const cases: Array<[string, RegExp]> = [
    [`postgresql://postgres:s3cret@/nosuchdb${at}`, /database "nosuchdb" does not exist/],
    [`postgres://nobody:s3cret@/postgres${at}`, /role "nobody" does not exist/],
    // No server behind this port: the socket file is not there.
    [`postgresql://postgres:s3cret@/postgres?host=${cluster.dir}&port=1`, /ENOENT|ECONNREFUSED/],
    [`postgresql://postgres@/nosuchdb${at}&password=s3cret`, /does not exist/],
  ];
  for (const [url, why] of cases) {
    await assert.rejects(
      openDatabase(url),
      (err: Error & { code?: string; details?: Record<string, unknown> }) => {
        assert.equal(err.code, 'E_DATABASE');
        assert.match(err.message, /^cannot connect to the database postgres(ql)?:\/\//);
        assert.match(err.message, why);
        assert.ok(err.message.includes(redactLocation(url)), err.message);
        assert.ok(!JSON.stringify({ m: err.message, d: err.details }).includes('s3cret'), err.message);
        return true;
      },
    );
  }
});

test('PostgreSQL: destroy ends the pool, leaving no connection behind', async (t) => {
  const cluster = await pg.cluster(t);
  if (cluster === undefined) return;
  const url = await cluster.createDatabase();
  // pg's socket URL (no host) is not one WHATWG's URL takes.
  const name = /@\/(\w+)\?/.exec(url)![1]!;
  const db = await openDatabase(url);
  await db.selectFrom('settings').selectAll().execute();
  await db.destroy();
  const admin = new Client({ connectionString: cluster.url('postgres') });
  await admin.connect();
  t.after(() => admin.end());
  const connections = async () =>
    Number(
      (
        await admin.query<{ n: string }>('SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1', [
          name,
        ])
      ).rows[0]!.n,
    );
  // A closed connection's backend leaves pg_stat_activity a moment after the client has gone.
  const end = Date.now() + 5000;
  while ((await connections()) > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
  assert.equal(await connections(), 0);
});

test('postgresStatement makes SQLite auto-numbered ids identity columns, and leaves the rest alone', () => {
  assert.equal(
    postgresStatement(`CREATE TABLE t (\n  id INTEGER PRIMARY KEY, at BIGINT NOT NULL)`),
    `CREATE TABLE t (\n  id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, at BIGINT NOT NULL)`,
  );
  assert.equal(
    postgresStatement(`create table t (n integer  primary key autoincrement, v TEXT)`),
    `create table t (n BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v TEXT)`,
  );
  for (const same of [
    `CREATE TABLE t (name TEXT PRIMARY KEY, value BIGINT NOT NULL)`,
    `CREATE TABLE t (a INTEGER NOT NULL, b INTEGER NOT NULL, PRIMARY KEY (a, b))`,
    `ALTER TABLE sessions ADD COLUMN position INTEGER`,
    `CREATE INDEX boot_decisions_mac ON boot_decisions (mac, id)`,
  ])
    assert.equal(postgresStatement(same), same);
  // Exactly the two auto-numbered tables of the released migrations change.
  const changed = MIGRATIONS.flat().filter((s) => postgresStatement(s) !== s);
  assert.deepEqual(
    changed.map((s) => /CREATE TABLE (\w+)/.exec(s)?.[1]),
    ['history', 'boot_decisions'],
  );
});

test('redactLocation hides a PostgreSQL password and leaves file paths alone', () => {
  const cases: Array<[string, string]> = [
    ['postgres://imgcast:s3cret@db.example/imgcast', 'postgres://imgcast:***@db.example/imgcast'],
    [
      'postgresql://imgcast:s3cret@db:5433/imgcast?sslmode=require',
      'postgresql://imgcast:***@db:5433/imgcast?sslmode=require',
    ],
    [
      'postgresql://imgcast@/imgcast?host=/run/postgresql',
      'postgresql://imgcast@/imgcast?host=/run/postgresql',
    ],
    ['postgresql://db.example:5432/imgcast', 'postgresql://db.example:5432/imgcast'],
    ['postgresql://u:p/w@d@db/imgcast', 'postgresql://u:***@db/imgcast'],
    [
      'postgresql://u@db/x?password=s3cret&sslmode=require',
      'postgresql://u@db/x?password=***&sslmode=require',
    ],
    ['/var/lib/imgcast/imgcast.db', '/var/lib/imgcast/imgcast.db'],
  ];
  for (const [given, shown] of cases) assert.equal(redactLocation(given), shown);
});
