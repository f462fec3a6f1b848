/**
 * A site of several imaging servers (one per subnet or building) sharing one database: each
 * announces itself in the `servers` table with the URL workstations reach it at, and keeps a
 * heartbeat there, so another server can tell a workstation where a session it asks for runs
 * (a client referral) and the administrator can see which servers are up.
 */
import type { Db, ServerTable } from './db.ts';
import { ServerError } from './errors.ts';

/** How often a server says it is alive, and after how long without that it counts as down. */
export const HEARTBEAT_MS = 10_000;
export const DOWN_AFTER_MS = 3 * HEARTBEAT_MS;

export interface SiteServer {
  name: string;
  url: string;
  version: string;
  startedAt: number;
  seenAt: number;
  /** up: heartbeat seen lately; stopped: it said so when it closed; down: silent (crashed, cut off). */
  state: 'up' | 'stopped' | 'down';
  /** This server (the one answering). */
  self: boolean;
}

/** Where a session asked of one server runs: another server of the site. */
export interface Elsewhere {
  session: string;
  server: string;
  url: string;
  state: SiteServer['state'];
}

export interface SiteOptions {
  db: Db;
  /**
   * Whether other servers may share the database (PostgreSQL). An embedded file is one server's
   * alone: whatever names it ran under before are this one.
   */
  shared: boolean;
  name: string;
  url: string;
  version: string;
  /** This machine and data folder: the same server restarting (after a crash too) is not another one taking its name. */
  place: string;
  now?: () => number;
  heartbeatMs?: number;
}

export class Site {
  #o: SiteOptions;
  #now: () => number;
  #timer: NodeJS.Timeout | undefined;
  /** The servers as last read (at start and each heartbeat): status reads them without a query. */
  #known: SiteServer[] = [];
  #listeners = new Set<() => void>();
  #beatListeners = new Set<() => Promise<void>>();
  #former: string[] | '*' = [];

  private constructor(o: SiteOptions) {
    this.#o = o;
    this.#now = o.now ?? Date.now;
  }

  /** Names this server ran under before (see SiteOptions.shared); '*': every name but its own. */
  get formerNames(): readonly string[] | '*' {
    return this.#former;
  }

  /**
   * Announces this server. Refused when another server of the same name, from another machine
   * or data folder, is up: the two would run each other's sessions.
   */
  static async join(o: SiteOptions): Promise<Site> {
    const site = new Site(o);
    const now = site.#now();
    const held = await o.db.selectFrom('servers').selectAll().where('name', '=', o.name).executeTakeFirst();
    if (held && held.url !== '' && held.place !== o.place && site.#stateOf(held) === 'up') {
      throw new ServerError(
        'E_SERVER_NAME_TAKEN',
        `another imaging server named ${o.name} is running on this database (at ${held.url}, seen ${Math.round((now - Number(held.seen_at)) / 1000)} s ago): give this one another --name`,
        { server: o.name, url: held.url },
      );
    }
    // The same server under an earlier name (same machine and data folder, or the database is
    // its alone): its sessions and its place in the list are this one's now.
    const earlier = await o.db
      .selectFrom('servers')
      .select('name')
      .where('name', '!=', o.name)
      .where((eb) => (o.shared ? eb('place', '=', o.place) : eb.lit(true)))
      .execute();
    site.#former = o.shared ? earlier.map((r) => r.name) : '*';
    if (earlier.length > 0)
      await o.db
        .deleteFrom('servers')
        .where(
          'name',
          'in',
          earlier.map((r) => r.name),
        )
        .execute();
    const row: ServerTable = {
      name: o.name,
      url: o.url,
      place: o.place,
      version: o.version,
      started_at: now,
      seen_at: now,
      stopped_at: null,
    };
    await o.db
      .insertInto('servers')
      .values(row)
      .onConflict((oc) =>
        oc.column('name').doUpdateSet({
          url: row.url,
          place: row.place,
          version: row.version,
          started_at: row.started_at,
          seen_at: row.seen_at,
          stopped_at: null,
        }),
      )
      .execute();
    site.#known = await site.servers();
    site.#timer = setInterval(() => void site.#beat(), o.heartbeatMs ?? HEARTBEAT_MS);
    site.#timer.unref();
    return site;
  }

  /** Where workstations reach this server, once it is known (the API listens). */
  async setUrl(url: string): Promise<void> {
    this.#o.url = url;
    await this.#o.db.updateTable('servers').set({ url }).where('name', '=', this.#o.name).execute();
  }

  async #beat(): Promise<void> {
    try {
      await this.#o.db
        .updateTable('servers')
        .set({ seen_at: this.#now() })
        .where('name', '=', this.#o.name)
        .execute();
      await this.refresh();
    } catch {
      // A missed beat only makes this server look down to the others for a while.
    }
    for (const l of this.#beatListeners) await l().catch(() => {});
  }

  /** Calls `listener` when a server of the site comes, goes, moves or changes state; returns the unsubscribe. */
  onChange(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * Calls `listener` after each heartbeat (what the servers share and keep in memory is read
   * again there: the settings); its failure is its own. Returns the unsubscribe.
   */
  onBeat(listener: () => Promise<void>): () => void {
    this.#beatListeners.add(listener);
    return () => this.#beatListeners.delete(listener);
  }

  /** Reads the servers again now (status asked for): a server that started since shows at once. */
  async refresh(): Promise<void> {
    const before = signature(this.#known);
    this.#known = await this.servers();
    if (signature(this.#known) === before) return;
    for (const l of this.#listeners) {
      try {
        l();
      } catch {
        // A listener's failure is its own.
      }
    }
  }

  /** The servers of the site as of the last heartbeat (at most one heartbeat old). */
  known(): SiteServer[] {
    return this.#known.map((s) => (s.self ? { ...s, url: this.#o.url, seenAt: this.#now() } : s));
  }

  #stateOf(row: Pick<ServerTable, 'seen_at' | 'stopped_at'>): SiteServer['state'] {
    if (row.stopped_at !== null) return 'stopped';
    return this.#now() - Number(row.seen_at) <= DOWN_AFTER_MS ? 'up' : 'down';
  }

  /** Every server that ever joined this database, this one first, then by name. */
  async servers(): Promise<SiteServer[]> {
    const rows = await this.#o.db.selectFrom('servers').selectAll().execute();
    return rows
      .map((r) => ({
        name: r.name,
        url: r.url,
        version: r.version,
        startedAt: Number(r.started_at),
        seenAt: Number(r.seen_at),
        state: r.name === this.#o.name ? ('up' as const) : this.#stateOf(r),
        self: r.name === this.#o.name,
      }))
      .sort((a, b) => Number(b.self) - Number(a.self) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /** The other server that runs the session of this name, if another one does. */
  async elsewhere(session: string): Promise<Elsewhere | undefined> {
    const row = await this.#o.db
      .selectFrom('sessions')
      .innerJoin('servers', 'servers.name', 'sessions.server')
      .select([
        'sessions.name as session',
        'servers.name as server',
        'servers.url',
        'servers.seen_at',
        'servers.stopped_at',
      ])
      .where('sessions.name', '=', session)
      .where('sessions.server', '!=', this.#o.name)
      .executeTakeFirst();
    if (!row) return undefined;
    return { session: row.session, server: row.server, url: row.url, state: this.#stateOf(row) };
  }

  /** Says this server stopped, so the others show it as stopped rather than down. */
  async close(): Promise<void> {
    clearInterval(this.#timer);
    await this.#o.db
      .updateTable('servers')
      .set({ stopped_at: this.#now(), seen_at: this.#now() })
      .where('name', '=', this.#o.name)
      .execute();
  }
}

/** What a status shows of the servers, without the heartbeat times that change every beat. */
function signature(servers: readonly SiteServer[]): string {
  return JSON.stringify(servers.map((x) => [x.name, x.url, x.state, x.version]));
}
