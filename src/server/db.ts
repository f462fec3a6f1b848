/**
 * The server's state, queried through Kysely: an embedded SQLite database (node:sqlite, WAL) for
 * one server, or a PostgreSQL database (pg, pure JavaScript) that several servers of a site
 * share (one per subnet or building), chosen by the location openDatabase is given. The DDL
 * keeps to types both accept (TEXT, BIGINT, INTEGER, DOUBLE PRECISION), JSON is stored as TEXT,
 * and booleans as 0/1; the one SQLite idiom the migrations use, the auto-numbered `id INTEGER
 * PRIMARY KEY`, is translated for PostgreSQL (postgresStatement). Migrations are numbered and
 * applied once each, in one transaction apiece.
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { Kysely, PostgresDialect, SqliteDialect, sql, type Generated } from 'kysely';
import { Client, Pool, types as pgTypes, type ClientConfig } from 'pg';

import { ServerError } from './errors.ts';

export interface WorkstationTable {
  id: string;
  name: string;
  /** 1 when the administrator gave the name (pre-created, imported, renamed): registering keeps it. */
  named: number;
  mac: string;
  /** The address the administrator gave, if any. */
  ip: string | null;
  /** The rest is null until the workstation registers (a pre-created one has none of it). */
  hostname: string | null;
  addresses: string;
  last_address: string | null;
  inventory: string | null;
  token_hash: string | null;
  created_at: number;
  registered_at: number | null;
  last_seen_at: number | null;
  /** JSON ReportedIdentity: what it applied to its restored system after its last imaging; null until then. */
  identity: string | null;
  /** The last boot phase (netboot, environment, joined, … up) and when it was reached; null until one is. */
  phase: string | null;
  phase_at: number | null;
}

export interface SessionTable {
  name: string;
  image: string;
  fileset: number;
  client_count: number;
  wait_ms: number;
  state: string;
  run: number;
  group_addr: string | null;
  port: number | null;
  created_at: number;
  started_at: number | null;
  finished_at: number | null;
  last_join_at: number | null;
  message: string | null;
  first_data_at: number | null;
  /** 1 for an automatic session; the columns below are its definition. */
  auto: number;
  enabled: number;
  /** Its place in the ordered list of automatic sessions (ascending; gaps allowed). */
  position: number | null;
  /** Workstation id of a live master (then `image` is ''). */
  master: string | null;
  delete_when_done: number;
  /** JSON: workstation ids listed explicitly. */
  members: string;
  /** JSON: rule texts as the administrator wrote them (parsed on load). */
  rules: string;
  /** 'server' (imgcast mcast, automatic sessions) or 'workstation' (opened by img session NAME). */
  origin: string;
  /** Which triggers start it: 'count-or-time', 'count', 'time', or 'command' (img session start). */
  start_by: string;
  /** Compression level of a live master's capture; null: the default. */
  level: string | null;
  /** Naming template (naming.ts) for the workstations the administrator has not named. */
  names: string | null;
  /** JSON: post-imaging scripts, [{name, content}], run by every workstation after its restore. */
  scripts: string;
  /**
   * When what a run puts on a disk was last defined (image, file set, master, who takes part,
   * names, scripts); null: since created_at. A workstation imaged by the session after this
   * is not imaged again when it network-boots.
   */
  defined_at: number | null;
  /** The server that runs it (sends, triggers, takes its joins); null until one takes it. */
  server: string | null;
}

export interface SessionClientTable {
  session: string;
  run: number;
  workstation: string;
  name: string;
  mac: string;
  address: string;
  joined_at: number;
  state: string;
  bytes: number;
  total_bytes: number;
  rate_mbit: number;
  code: string | null;
  reason: string | null;
  finished_at: number | null;
}

export interface HistoryTable {
  id: Generated<number>;
  session: string;
  run: number;
  image: string;
  fileset: number;
  state: string;
  started_at: number | null;
  finished_at: number;
  message: string | null;
  clients: string;
}

/** The last time each workstation was imaged successfully by each session (the network boot's memory). */
export interface SuccessTable {
  session: string;
  workstation: string;
  at: number;
}

/** Every answer to a network boot request: what the server told which MAC, and why. */
export interface BootDecisionTable {
  id: Generated<number>;
  at: number;
  mac: string;
  /** The workstation's id when it is known to the server. */
  workstation: string | null;
  platform: string;
  decision: string;
  session: string | null;
  why: string;
}

export interface CounterTable {
  name: string;
  value: number;
}

/** Each server's own counters; server '' holds what a single server counted before migration 9. */
export interface ServerCounterTable {
  server: string;
  name: string;
  value: number;
}

/** The servers that share this database, as each last announced itself. */
export interface ServerTable {
  name: string;
  /** Where workstations reach its API (what a referral sends them to). */
  url: string;
  /** Machine and data folder: the same server restarting is not another one taking its name. */
  place: string;
  version: string;
  started_at: number;
  /** Its last heartbeat; a server not seen for a while is taken as down. */
  seen_at: number;
  /** When it stopped cleanly; null while it runs (or after a crash). */
  stopped_at: number | null;
}

export interface AdminTable {
  name: string;
  password_hash: string;
  created_at: number;
}

export interface LoginTable {
  token_hash: string;
  admin: string;
  created_at: number;
  expires_at: number;
}

/** The administrator's server settings (settings.ts): one JSON value per name; a name not here has its default. */
export interface SettingTable {
  name: string;
  value: string;
}

export interface MigrationTable {
  version: number;
  applied_at: number;
}

export interface Schema {
  workstations: WorkstationTable;
  sessions: SessionTable;
  session_clients: SessionClientTable;
  history: HistoryTable;
  successes: SuccessTable;
  boot_decisions: BootDecisionTable;
  counters: CounterTable;
  server_counters: ServerCounterTable;
  servers: ServerTable;
  admins: AdminTable;
  logins: LoginTable;
  settings: SettingTable;
  schema_migrations: MigrationTable;
}

export type Db = Kysely<Schema>;

/** Each entry is one schema version; never edit a released one, add the next. */
export const MIGRATIONS: readonly (readonly string[])[] = [
  [
    `CREATE TABLE workstations (
       id TEXT PRIMARY KEY, name TEXT NOT NULL, mac TEXT NOT NULL, hostname TEXT NOT NULL,
       addresses TEXT NOT NULL, last_address TEXT NOT NULL, inventory TEXT NOT NULL,
       token_hash TEXT NOT NULL, registered_at BIGINT NOT NULL, last_seen_at BIGINT NOT NULL)`,
    `CREATE UNIQUE INDEX workstations_mac ON workstations (mac)`,
    `CREATE TABLE sessions (
       name TEXT PRIMARY KEY, image TEXT NOT NULL, fileset INTEGER NOT NULL,
       client_count INTEGER NOT NULL, wait_ms BIGINT NOT NULL, state TEXT NOT NULL, run INTEGER NOT NULL,
       group_addr TEXT, port INTEGER, created_at BIGINT NOT NULL, started_at BIGINT, finished_at BIGINT,
       last_join_at BIGINT, message TEXT)`,
    `CREATE TABLE session_clients (
       session TEXT NOT NULL, run INTEGER NOT NULL, workstation TEXT NOT NULL, name TEXT NOT NULL,
       mac TEXT NOT NULL, address TEXT NOT NULL, joined_at BIGINT NOT NULL, state TEXT NOT NULL,
       bytes BIGINT NOT NULL, total_bytes BIGINT NOT NULL, rate_mbit DOUBLE PRECISION NOT NULL,
       code TEXT, reason TEXT, finished_at BIGINT,
       PRIMARY KEY (session, run, workstation))`,
    `CREATE TABLE history (
       id INTEGER PRIMARY KEY, session TEXT NOT NULL, run INTEGER NOT NULL, image TEXT NOT NULL,
       fileset INTEGER NOT NULL, state TEXT NOT NULL, started_at BIGINT, finished_at BIGINT NOT NULL,
       message TEXT, clients TEXT NOT NULL)`,
    `CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL)`,
    `CREATE TABLE admins (name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, created_at BIGINT NOT NULL)`,
    `CREATE TABLE logins (
       token_hash TEXT PRIMARY KEY, admin TEXT NOT NULL, created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL)`,
  ],
  // When the first data left for a run: the delay from the trigger is the session's own overhead.
  [`ALTER TABLE sessions ADD COLUMN first_data_at BIGINT`],
  // Automatic sessions, and workstations the administrator creates before they ever register
  // (no token, no inventory yet): the workstations table is rebuilt, since SQLite cannot drop a
  // NOT NULL constraint in place.
  [
    `ALTER TABLE sessions ADD COLUMN auto INTEGER NOT NULL DEFAULT 0`,
    `ALTER TABLE sessions ADD COLUMN enabled INTEGER NOT NULL DEFAULT 1`,
    `ALTER TABLE sessions ADD COLUMN position INTEGER`,
    `ALTER TABLE sessions ADD COLUMN master TEXT`,
    `ALTER TABLE sessions ADD COLUMN delete_when_done INTEGER NOT NULL DEFAULT 0`,
    `ALTER TABLE sessions ADD COLUMN members TEXT NOT NULL DEFAULT '[]'`,
    `ALTER TABLE sessions ADD COLUMN rules TEXT NOT NULL DEFAULT '[]'`,
    `CREATE TABLE workstations_v3 (
       id TEXT PRIMARY KEY, name TEXT NOT NULL, named INTEGER NOT NULL, mac TEXT NOT NULL, ip TEXT,
       hostname TEXT, addresses TEXT NOT NULL, last_address TEXT, inventory TEXT, token_hash TEXT,
       created_at BIGINT NOT NULL, registered_at BIGINT, last_seen_at BIGINT)`,
    `INSERT INTO workstations_v3 (id, name, named, mac, ip, hostname, addresses, last_address, inventory,
       token_hash, created_at, registered_at, last_seen_at)
     SELECT id, name, 0, mac, NULL, hostname, addresses, last_address, inventory, token_hash, registered_at,
       registered_at, last_seen_at FROM workstations`,
    `DROP TABLE workstations`,
    `ALTER TABLE workstations_v3 RENAME TO workstations`,
    `CREATE UNIQUE INDEX workstations_mac ON workstations (mac)`,
  ],
  // 4: sessions that workstations open among themselves (img session NAME [master]): who opened
  // it, what starts it (a command only, when the master gave no trigger), and the compression
  // level its live master captures at.
  [
    `ALTER TABLE sessions ADD COLUMN origin TEXT NOT NULL DEFAULT 'server'`,
    `ALTER TABLE sessions ADD COLUMN start_by TEXT NOT NULL DEFAULT 'count-or-time'`,
    `ALTER TABLE sessions ADD COLUMN level TEXT`,
  ],
  // 5: what each workstation applied to its restored system (host name, machine id, SSH host key fingerprints).
  [`ALTER TABLE workstations ADD COLUMN identity TEXT`],
  // 6: a session's naming template and post-imaging scripts (JSON: [{name, content}]).
  [
    `ALTER TABLE sessions ADD COLUMN names TEXT`,
    `ALTER TABLE sessions ADD COLUMN scripts TEXT NOT NULL DEFAULT '[]'`,
  ],
  // 7: network boot: each workstation's boot phase, when a session's definition last changed,
  // who each session imaged successfully, and every boot decision.
  [
    `ALTER TABLE workstations ADD COLUMN phase TEXT`,
    `ALTER TABLE workstations ADD COLUMN phase_at BIGINT`,
    `ALTER TABLE sessions ADD COLUMN defined_at BIGINT`,
    `CREATE TABLE successes (
       session TEXT NOT NULL, workstation TEXT NOT NULL, at BIGINT NOT NULL,
       PRIMARY KEY (session, workstation))`,
    `CREATE TABLE boot_decisions (
       id INTEGER PRIMARY KEY, at BIGINT NOT NULL, mac TEXT NOT NULL, workstation TEXT,
       platform TEXT NOT NULL, decision TEXT NOT NULL, session TEXT, why TEXT NOT NULL)`,
    `CREATE INDEX boot_decisions_mac ON boot_decisions (mac, id)`,
  ],
  // 8: the settings an administrator changes while the server runs, and the history's age index
  // (runs older than the kept days are removed).
  [
    `CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)`,
    `CREATE INDEX history_finished ON history (finished_at)`,
  ],
  // 9: several servers on one (PostgreSQL) database: who they are and where workstations reach
  // them, which server runs each session (null: made before there was a choice; the first server
  // to start takes it), and counters per server ('' holds the single server's older ones).
  [
    `CREATE TABLE servers (
       name TEXT PRIMARY KEY, url TEXT NOT NULL, place TEXT NOT NULL, version TEXT NOT NULL, started_at BIGINT NOT NULL,
       seen_at BIGINT NOT NULL, stopped_at BIGINT)`,
    `ALTER TABLE sessions ADD COLUMN server TEXT`,
    `CREATE TABLE server_counters (
       server TEXT NOT NULL, name TEXT NOT NULL, value BIGINT NOT NULL, PRIMARY KEY (server, name))`,
    `INSERT INTO server_counters (server, name, value) SELECT '', name, value FROM counters`,
  ],
];

export const SCHEMA_VERSION = MIGRATIONS.length;

/** node:sqlite's statements, in the shape Kysely's SQLite dialect drives (better-sqlite3's). */
function kyselyDatabase(db: DatabaseSync) {
  return {
    close: () => db.close(),
    prepare(text: string) {
      const stmt = db.prepare(text);
      type Param = null | number | bigint | string | Uint8Array;
      const args = (p: ReadonlyArray<unknown>) =>
        p.map((v) => (typeof v === 'boolean' ? Number(v) : v)) as Param[];
      return {
        reader: stmt.columns().length > 0,
        all: (p: ReadonlyArray<unknown>) => stmt.all(...args(p)),
        run: (p: ReadonlyArray<unknown>) => {
          const r = stmt.run(...args(p));
          return { changes: r.changes, lastInsertRowid: r.lastInsertRowid };
        },
        iterate: (p: ReadonlyArray<unknown>) => stmt.iterate(...args(p)) as IterableIterator<unknown>,
      };
    },
  };
}

const POSTGRES_URL = /^postgres(?:ql)?:\/\//i;

/** Whether openDatabase takes `location` as a PostgreSQL URL rather than a SQLite file. */
export function isPostgresLocation(location: string): boolean {
  return POSTGRES_URL.test(location);
}

/**
 * The location as messages and logs may show it: a PostgreSQL URL with its password replaced
 * (`user:***@`, and a `password=` query parameter); a file path as it is. The user information
 * ends at the last "@" before the query, so a password holding an unencoded "/" or "@" (which
 * the URL does not allow, but people write) is hidden all the same.
 */
export function redactLocation(location: string): string {
  if (!isPostgresLocation(location)) return location;
  const start = location.indexOf('//') + 2;
  const query = location.search(/[?#]/);
  const end = query < 0 ? location.length : query;
  let head = location.slice(0, end);
  const at = head.lastIndexOf('@');
  const colon = head.indexOf(':', start);
  if (at > start && colon >= 0 && colon < at) head = `${head.slice(0, colon)}:***${head.slice(at)}`;
  return head + location.slice(end).replace(/([?&]password=)[^&#]*/gi, '$1***');
}

/**
 * A migration statement as PostgreSQL takes it. The migrations are written for both databases
 * but for one SQLite idiom: a column declared `INTEGER PRIMARY KEY` (AUTOINCREMENT or not) in a
 * CREATE TABLE is SQLite's rowid, numbered when an insert leaves it out (history,
 * boot_decisions); on PostgreSQL that takes an identity column. BIGINT, since a rowid is 64-bit;
 * BY DEFAULT, since SQLite also takes an id that is given. Released migration texts are never
 * edited, so the translation is here, applied to every statement, old and new.
 */
export function postgresStatement(statement: string): string {
  if (!/^\s*CREATE\s+TABLE\b/i.test(statement)) return statement;
  return statement.replace(
    /\bINTEGER\s+PRIMARY\s+KEY(?:\s+AUTOINCREMENT)?\b/gi,
    'BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY',
  );
}

const INT8_OID = 20;

/**
 * BIGINT comes back as a number, as it does from SQLite: the server does arithmetic on its
 * timestamps and byte counts. pg leaves it a string (an int8 may exceed 2^53); beyond that
 * range the read fails, as node:sqlite's does, rather than return a wrong number. Set on
 * this database's connections only, not on pg's global parsers, which other code may use.
 */
const PG_TYPES: NonNullable<ClientConfig['types']> = {
  getTypeParser: (oid, format) =>
    oid === INT8_OID && format !== 'binary' ? parseInt8 : pgTypes.getTypeParser(oid, format),
};

function parseInt8(text: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n)) {
    throw new ServerError('E_DATABASE', `the database holds ${text}, too large for a JavaScript number`, {
      value: text,
    });
  }
  return n;
}

/** How long opening a PostgreSQL database waits for its first connection before it fails. */
const CONNECT_TIMEOUT_MS = 10_000;

/**
 * Opens (creating if needed) the database and brings its schema up to date: a PostgreSQL
 * database when `location` is a postgres:// or postgresql:// URL (the database must exist; its
 * tables are created), else the SQLite file at that path.
 */
export async function openDatabase(location: string): Promise<Db> {
  if (isPostgresLocation(location)) return openPostgres(location);
  const file = location;
  mkdirSync(dirname(file), { recursive: true });
  let raw: DatabaseSync;
  try {
    raw = new DatabaseSync(file);
    raw.exec('PRAGMA journal_mode = WAL');
    raw.exec('PRAGMA synchronous = NORMAL');
    raw.exec('PRAGMA busy_timeout = 5000');
    raw.exec('PRAGMA foreign_keys = ON');
  } catch (err) {
    throw new ServerError('E_DATABASE', `cannot open the database ${file}: ${(err as Error).message}`, {
      file,
    });
  }
  const db = new Kysely<Schema>({ dialect: new SqliteDialect({ database: kyselyDatabase(raw) }) });
  await migrateOrClose(db, false, file, { file });
  return db;
}

async function openPostgres(url: string): Promise<Db> {
  const shown = redactLocation(url);
  // A connection of its own, with a time limit, so that a wrong host, a refused or unanswered
  // connection, bad credentials or a missing database fail here, saying so; the pool's own
  // connections wait without a limit (pg's limit would also end queries queued behind a long
  // transaction).
  const probe = new Client({ connectionString: url, connectionTimeoutMillis: CONNECT_TIMEOUT_MS });
  try {
    await probe.connect();
  } catch (err) {
    throw new ServerError('E_DATABASE', `cannot connect to the database ${shown}: ${reason(err)}`, {
      database: shown,
      // Not the error itself: a malformed URL's error holds the whole URL, password and all.
      cause: (err as { code?: unknown }).code,
    });
  } finally {
    await probe.end().catch(() => {});
  }
  // One connection, as SQLite has: the server's write-through code was written for statements
  // that run in the order it issues them, and a transaction that holds the others back.
  const pool = new Pool({ connectionString: url, types: PG_TYPES, max: 1 });
  // An idle connection the database closes (a restart, an administrator) is dropped by the pool
  // and the next query opens another; should that fail, the query fails, saying why.
  pool.on('error', () => {});
  const db = new Kysely<Schema>({ dialect: new PostgresDialect({ pool }) });
  await migrateOrClose(db, true, shown, { database: shown });
  return db;
}

/** A connection error's words: net's AggregateError (every address refused) has none of its own. */
function reason(err: unknown): string {
  if (err instanceof AggregateError && err.message === '')
    return err.errors.map((e: unknown) => (e as Error).message).join('; ');
  if (err instanceof Error) return err.message || String((err as { code?: unknown }).code ?? err.name);
  return String(err);
}

async function migrateOrClose(
  db: Db,
  postgres: boolean,
  shown: string,
  details: Record<string, unknown>,
): Promise<void> {
  try {
    await migrate(db, postgres, shown, details);
  } catch (err) {
    await db.destroy().catch(() => {});
    throw err;
  }
}

/**
 * Servers of a site may start together on one PostgreSQL database: each migration transaction
 * first takes this transaction-scoped advisory lock, and then looks again at what is applied,
 * so each migration is applied once and the others wait for it. ("imgc" in ASCII.)
 */
const MIGRATION_LOCK = 0x696d6763;

async function migrate(
  db: Db,
  postgres: boolean,
  shown: string,
  details: Record<string, unknown>,
): Promise<void> {
  const lock = async (tx: Kysely<Schema>) => {
    if (postgres) await sql`SELECT pg_advisory_xact_lock(${MIGRATION_LOCK})`.execute(tx);
  };
  const applied = async (q: Kysely<Schema>) => {
    const rows = await q.selectFrom('schema_migrations').select('version').execute();
    const have = new Set(rows.map((r) => Number(r.version)));
    const newest = Math.max(0, ...have);
    if (newest > MIGRATIONS.length) {
      throw new ServerError(
        'E_DATABASE',
        `${shown} has schema version ${newest}, newer than this imgcast knows (${MIGRATIONS.length}): upgrade imgcast`,
        { ...details, version: newest },
      );
    }
    return have;
  };
  // Under the lock as well: two PostgreSQL sessions creating the same table at once can both
  // pass IF NOT EXISTS, and one then fails.
  await db.transaction().execute(async (tx) => {
    await lock(tx);
    await sql`CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)`.execute(
      tx,
    );
  });
  const have = await applied(db);
  for (let v = 1; v <= MIGRATIONS.length; v++) {
    if (have.has(v)) continue;
    await db.transaction().execute(async (tx) => {
      await lock(tx);
      // Another server may have applied it while this one waited for the lock.
      if (postgres && (await applied(tx)).has(v)) return;
      for (const stmt of MIGRATIONS[v - 1]!)
        await sql.raw(postgres ? postgresStatement(stmt) : stmt).execute(tx);
      await tx.insertInto('schema_migrations').values({ version: v, applied_at: Date.now() }).execute();
    });
  }
}
