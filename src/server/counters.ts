/**
 * Server-wide counters (requests received, images sent and received, client referrals, errors).
 * Counted in memory and written to the database every second and at shutdown, so they survive
 * restarts without a write per request.
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
  #values: CounterView = {
    requestsReceived: 0,
    imagesSent: 0,
    imagesReceived: 0,
    clientReferrals: 0,
    errors: 0,
  };
  #dirty = false;
  #timer: NodeJS.Timeout | undefined;

  private constructor(db: Db) {
    this.#db = db;
  }

  static async load(db: Db): Promise<Counters> {
    const c = new Counters(db);
    for (const row of await db.selectFrom('counters').selectAll().execute()) {
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
    const values = NAMES.map((name) => ({ name, value: this.#values[name] }));
    await this.#db
      .insertInto('counters')
      .values(values)
      .onConflict((oc) => oc.column('name').doUpdateSet((eb) => ({ value: eb.ref('excluded.value') })))
      .execute();
  }

  async close(): Promise<void> {
    clearInterval(this.#timer);
    this.#dirty = true;
    await this.flush();
  }
}
