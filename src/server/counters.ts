/**
 * Server-wide counters (requests received, images sent and received, client referrals, errors).
 * Counted in memory and written to the database every second and at shutdown, so they survive
 * restarts without a write per request. Each server of a site counts its own (one row set per
 * server name), so servers sharing a database never overwrite each other's.
 */
import type { Counters as CounterView } from '../api/schemas.ts';
import type { Db } from './db.ts';

export type CounterName = keyof CounterView;
const NAMES: CounterName[] = [
  'requestsReceived',
  'imagesSent',
  'imagesReceived',
  'clientReferrals',
  'errors',
];

export class Counters {
  #db: Db;
  #server: string;
  #values: CounterView = {
    requestsReceived: 0,
    imagesSent: 0,
    imagesReceived: 0,
    clientReferrals: 0,
    errors: 0,
  };
  #dirty = false;
  #timer: NodeJS.Timeout | undefined;

  private constructor(db: Db, server: string) {
    this.#db = db;
    this.#server = server;
  }

  /**
   * `server`: this server's name. A server with no counters yet takes over those of a name it ran
   * under before (`formerNames`, site.ts; '*': any other), else those a single server counted
   * before servers had names ('' rows).
   */
  static async load(db: Db, server: string, formerNames: readonly string[] | '*' = []): Promise<Counters> {
    const c = new Counters(db, server);
    const mine = () => db.selectFrom('server_counters').selectAll().where('server', '=', server).execute();
    let rows = await mine();
    if (rows.length === 0) {
      const held = new Set(
        (await db.selectFrom('server_counters').select('server').execute()).map((r) => r.server),
      );
      const from = (formerNames === '*' ? [...held].filter((n) => n !== '') : formerNames)
        .concat([''])
        .find((n) => held.has(n));
      if (from !== undefined) {
        await db.updateTable('server_counters').set({ server }).where('server', '=', from).execute();
        rows = await mine();
      }
    }
    for (const row of rows) {
      if ((NAMES as string[]).includes(row.name)) c.#values[row.name as CounterName] = Number(row.value);
    }
    c.#timer = setInterval(() => void c.flush(), 1000);
    c.#timer.unref();
    return c;
  }

  add(name: CounterName, n = 1): void {
    this.#values[name] += n;
    this.#dirty = true;
  }

  view(): CounterView {
    return { ...this.#values };
  }

  async flush(): Promise<void> {
    if (!this.#dirty) return;
    this.#dirty = false;
    const values = NAMES.map((name) => ({ server: this.#server, name, value: this.#values[name] }));
    await this.#db
      .insertInto('server_counters')
      .values(values)
      .onConflict((oc) =>
        oc.columns(['server', 'name']).doUpdateSet((eb) => ({ value: eb.ref('excluded.value') })),
      )
      .execute();
  }

  async close(): Promise<void> {
    clearInterval(this.#timer);
    this.#dirty = true;
    await this.flush();
  }
}
