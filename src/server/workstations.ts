/**
 * Workstations known to the server: registered by the workstation itself (its inventory), one
 * per MAC address. Registering again (a reimaged machine lost its token) replaces the token.
 */
import type { Inventory, Registered, Workstation } from '../api/schemas.ts';
import { newToken, tokenHash } from './auth.ts';
import type { Db, WorkstationTable } from './db.ts';
import { ServerError } from './errors.ts';

export interface WorkstationIdentity {
  id: string;
  name: string;
  mac: string;
  address: string;
}

export class Workstations {
  #db: Db;
  #byToken = new Map<string, WorkstationTable>();
  #now: () => number;

  constructor(db: Db, now: () => number = Date.now) {
    this.#db = db;
    this.#now = now;
  }

  async load(): Promise<void> {
    for (const row of await this.#db.selectFrom('workstations').selectAll().execute())
      this.#byToken.set(row.token_hash, row);
  }

  async register(inv: Inventory, address: string): Promise<Registered> {
    const mac = inv.mac.toLowerCase();
    const id = mac.replaceAll(':', '');
    const token = newToken();
    const now = this.#now();
    const row: WorkstationTable = {
      id,
      name: inv.hostname,
      mac,
      hostname: inv.hostname,
      addresses: JSON.stringify(inv.addresses),
      last_address: address,
      inventory: JSON.stringify(inv),
      token_hash: tokenHash(token),
      registered_at: now,
      last_seen_at: now,
    };
    const old = await this.#db.selectFrom('workstations').selectAll().where('id', '=', id).executeTakeFirst();
    if (old) {
      this.#byToken.delete(old.token_hash);
      const { id: _id, registered_at: _r, ...rest } = row;
      await this.#db.updateTable('workstations').set(rest).where('id', '=', id).execute();
      row.registered_at = Number(old.registered_at);
    } else {
      await this.#db.insertInto('workstations').values(row).execute();
    }
    this.#byToken.set(row.token_hash, row);
    return { id, name: row.name, token };
  }

  /** The workstation holding this token, or undefined. Marks it seen (kept in memory). */
  byToken(token: string, address: string): WorkstationIdentity | undefined {
    const row = this.#byToken.get(tokenHash(token));
    if (!row) return undefined;
    row.last_seen_at = this.#now();
    row.last_address = address;
    return { id: row.id, name: row.name, mac: row.mac, address };
  }

  list(): Workstation[] {
    return [...this.#byToken.values()].sort((a, b) => a.name.localeCompare(b.name)).map(view);
  }

  get(id: string): Workstation {
    const row = [...this.#byToken.values()].find((r) => r.id === id || r.mac === id || r.name === id);
    if (!row) throw new ServerError('E_WORKSTATION_UNKNOWN', `no workstation ${id}`, { workstation: id });
    return view(row);
  }

  /** Saves last-seen times and addresses (kept in memory between saves). */
  async flush(): Promise<void> {
    for (const row of this.#byToken.values()) {
      await this.#db
        .updateTable('workstations')
        .set({ last_seen_at: row.last_seen_at, last_address: row.last_address })
        .where('id', '=', row.id)
        .execute();
    }
  }
}

function view(r: WorkstationTable): Workstation {
  return {
    id: r.id,
    name: r.name,
    mac: r.mac,
    hostname: r.hostname,
    addresses: JSON.parse(r.addresses) as string[],
    lastAddress: r.last_address,
    registeredAt: Number(r.registered_at),
    lastSeenAt: Number(r.last_seen_at),
    inventory: JSON.parse(r.inventory) as Inventory,
  };
}
