/**
 * The server's state: an embedded SQLite database (node:sqlite, WAL) queried through Kysely, so
 * the same queries run on PostgreSQL when several servers share one database (a later step).
 * The DDL keeps to types both accept (TEXT, BIGINT, INTEGER), JSON is stored as TEXT, and
 * booleans as 0/1. Migrations are numbered and applied once each, in one transaction apiece.
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { Kysely, SqliteDialect, sql, type Generated } from 'kysely';

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

/** Opens (creating if needed) the database file and brings its schema up to date. */
export async function openDatabase(file: string): Promise<Db> {
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
  await migrate(db, file);
  return db;
}

async function migrate(db: Db, file: string): Promise<void> {
  await sql`CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)`.execute(
    db,
  );
  const rows = await db.selectFrom('schema_migrations').select('version').execute();
  const have = new Set(rows.map((r) => Number(r.version)));
  const newest = Math.max(0, ...have);
  if (newest > MIGRATIONS.length) {
    throw new ServerError(
      'E_DATABASE',
      `${file} has schema version ${newest}, newer than this imgcast knows (${MIGRATIONS.length}): upgrade imgcast`,
      { file, version: newest },
    );
  }
  for (let v = 1; v <= MIGRATIONS.length; v++) {
    if (have.has(v)) continue;
    await db.transaction().execute(async (tx) => {
      for (const stmt of MIGRATIONS[v - 1]!) await sql.raw(stmt).execute(tx);
      await tx.insertInto('schema_migrations').values({ version: v, applied_at: Date.now() }).execute();
    });
  }
}
