/**
 * Workstations known to the server, one per MAC address (its hex digits are the id). A
 * workstation registers itself (its inventory; registering again, as a reimaged machine that
 * lost its token does, replaces the token), or the administrator creates it first by name and
 * MAC, alone or from a lab's CSV list, before it ever boots: such a workstation has no token and
 * no inventory until it registers, and keeps the name the administrator gave.
 *
 * The whole registry is held in memory (a lab is hundreds of rows) and written through.
 */
import type {
  AppliedIdentity,
  BootPhase,
  CreateWorkstation,
  EditWorkstation,
  Imported,
  Inventory,
  IdentityOrder,
  Registered,
  ReportedIdentity,
  Workstation,
  WorkstationBrief,
} from '../api/schemas.ts';
import { hostnameProblem } from '../engine/identity/names.ts';
import { newToken, tokenHash } from './auth.ts';
import type { Db, WorkstationTable } from './db.ts';
import { ServerError } from './errors.ts';
import { nextName, parseNameTemplate } from './naming.ts';
import type { Candidate } from './participation.ts';
import { formatAddress, macDigits, parseAddress, subjectOf } from './rules.ts';

export interface WorkstationIdentity {
  id: string;
  name: string;
  mac: string;
  address: string;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const NAME_MAX = 64;
/** 12 hex digits, in pairs separated by ":" or "-", in Cisco's groups of four, or together. */
const MAC =
  /^(?:[0-9a-f]{2}(?::[0-9a-f]{2}){5}|[0-9a-f]{2}(?:-[0-9a-f]{2}){5}|[0-9a-f]{4}(?:\.[0-9a-f]{4}){2}|[0-9a-f]{12})$/i;
/** Rows of an import whose faults are spelled out; the rest are counted. */
const IMPORT_ERRORS_SHOWN = 10;

/** The MAC in its stored form (aa:bb:cc:dd:ee:ff), or undefined when `text` is not one. */
export function normalMac(text: string): string | undefined {
  const t = text.trim();
  if (!MAC.test(t)) return undefined;
  return macDigits(t.replaceAll('.', '')).replace(/(..)(?!$)/g, '$1:');
}

function checkName(name: string): string | undefined {
  if (name.length === 0) return 'the name is empty';
  if (name.length > NAME_MAX) return `the name is longer than ${NAME_MAX} characters`;
  if (!NAME.test(name))
    return `the name ${JSON.stringify(name)} may hold only letters, digits, ".", "_" and "-", and starts with a letter or digit`;
  // A name that reads as a MAC would make `include` ambiguous.
  if (normalMac(name) !== undefined) return `the name ${name} looks like a MAC address`;
  return undefined;
}

function checkIp(ip: string): { ip: string } | { error: string } {
  const bytes = parseAddress(ip.trim());
  if (!bytes) return { error: `${JSON.stringify(ip)} is not an IPv4 or IPv6 address` };
  return { ip: formatAddress(bytes) };
}

const sameName = (a: string, b: string) =>
  a.normalize('NFC').toLowerCase() === b.normalize('NFC').toLowerCase();

export class Workstations {
  #db: Db;
  #byId = new Map<string, WorkstationTable>();
  #byToken = new Map<string, WorkstationTable>();
  #now: () => number;

  constructor(db: Db, now: () => number = Date.now) {
    this.#db = db;
    this.#now = now;
  }

  async load(): Promise<void> {
    for (const row of await this.#db.selectFrom('workstations').selectAll().execute()) {
      this.#byId.set(row.id, row);
      if (row.token_hash) this.#byToken.set(row.token_hash, row);
    }
  }

  async register(inv: Inventory, address: string): Promise<Registered> {
    const mac = inv.mac.toLowerCase();
    const id = macDigits(mac);
    const token = newToken();
    const now = this.#now();
    // Read again: another server of the site may have registered, named or removed it since this one loaded.
    const stored = await this.#db
      .selectFrom('workstations')
      .selectAll()
      .where('id', '=', id)
      .executeTakeFirst();
    if (stored) this.#take(stored);
    const old = stored;
    const row: WorkstationTable = {
      id,
      // A name the administrator gave outlives what the machine calls itself.
      name: old?.named ? old.name : inv.hostname,
      named: old?.named ?? 0,
      mac,
      ip: old?.ip ?? null,
      hostname: inv.hostname,
      addresses: JSON.stringify(inv.addresses),
      last_address: address,
      inventory: JSON.stringify(inv),
      token_hash: tokenHash(token),
      created_at: old ? Number(old.created_at) : now,
      registered_at: old?.registered_at ?? now,
      last_seen_at: now,
      identity: old?.identity ?? null,
      phase: old?.phase ?? null,
      phase_at: old?.phase_at ?? null,
    };
    if (old) {
      const { id: _id, ...rest } = row;
      await this.#db.updateTable('workstations').set(rest).where('id', '=', id).execute();
    } else {
      await this.#db.insertInto('workstations').values(row).execute();
    }
    // The registry changes only once the database has taken the row.
    const current = this.#byId.get(id);
    if (current?.token_hash) this.#byToken.delete(current.token_hash);
    this.#byId.set(id, row);
    this.#byToken.set(row.token_hash!, row);
    return { id, name: row.name, token };
  }

  /**
   * The workstation holding this token per the database, when this server's registry does not
   * know the token: the workstation registered on another server of the site since this one loaded.
   */
  async byStoredToken(token: string, address: string): Promise<WorkstationIdentity | undefined> {
    const row = await this.#db
      .selectFrom('workstations')
      .selectAll()
      .where('token_hash', '=', tokenHash(token))
      .executeTakeFirst();
    if (!row) return undefined;
    this.#take(row);
    return this.byToken(token, address);
  }

  /**
   * Reads the registry again (another server of the site may have added, named, edited or removed
   * workstations), keeping the last-seen times this server holds that are newer than the stored ones.
   */
  async reload(): Promise<void> {
    const rows = await this.#db.selectFrom('workstations').selectAll().execute();
    const stored = new Set(rows.map((r) => r.id));
    for (const row of rows) {
      const mine = this.#byId.get(row.id);
      if (mine && Number(mine.last_seen_at ?? 0) > Number(row.last_seen_at ?? 0)) {
        row.last_seen_at = mine.last_seen_at;
        row.last_address = mine.last_address;
      }
      this.#take(row);
    }
    for (const [id, row] of this.#byId) {
      if (stored.has(id)) continue;
      this.#byId.delete(id);
      if (row.token_hash) this.#byToken.delete(row.token_hash);
    }
  }

  /** Puts a row read from the database in the registry, in place of what it held for that workstation. */
  #take(row: WorkstationTable): void {
    const current = this.#byId.get(row.id);
    if (current?.token_hash) this.#byToken.delete(current.token_hash);
    this.#byId.set(row.id, row);
    if (row.token_hash) this.#byToken.set(row.token_hash, row);
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
    return [...this.#byId.values()]
      .sort((a, b) => a.name.localeCompare(b.name) || a.mac.localeCompare(b.mac))
      .map(view);
  }

  /**
   * The workstation a reference names: its id, its MAC in any usual form, or its name
   * (case-insensitive). A name two workstations share (machines cloned with one host name)
   * names neither: the MAC is asked for.
   */
  find(ref: string): WorkstationTable | undefined {
    const t = ref.trim();
    const mac = normalMac(t);
    if (mac !== undefined) {
      const byMac = this.#byId.get(macDigits(mac));
      if (byMac) return byMac;
    }
    const named = [...this.#byId.values()].filter((r) => sameName(r.name, t));
    if (named.length > 1) {
      throw new ServerError(
        'E_BAD_REQUEST',
        `${t} names ${named.length} workstations (${named.map((r) => r.mac).join(', ')}); give the MAC of the one you mean`,
        { workstation: t, macs: named.map((r) => r.mac) },
      );
    }
    return named[0];
  }

  /** The id a reference names; E_WORKSTATION_UNKNOWN when it names none. */
  resolve(ref: string): string {
    const row = this.find(ref);
    if (!row) {
      throw new ServerError(
        'E_WORKSTATION_UNKNOWN',
        `no workstation ${ref} on this server (imgcast workstation list shows them; imgcast workstation add NAME MAC creates one)`,
        { workstation: ref },
      );
    }
    return row.id;
  }

  get(ref: string): Workstation {
    return view(this.#byId.get(this.resolve(ref))!);
  }

  /** How a session's definition shows a workstation; one removed meanwhile shows its MAC. */
  brief(id: string): WorkstationBrief {
    const row = this.#byId.get(id);
    if (row) return { id, name: row.name, mac: row.mac };
    const mac = id.replace(/(..)(?!$)/g, '$1:');
    return { id, name: mac, mac };
  }

  /** What participation rules see of a workstation; one that never registered has only what the administrator gave. */
  candidate(id: string): Candidate {
    const row = this.#byId.get(id);
    if (!row) throw new ServerError('E_WORKSTATION_UNKNOWN', `no workstation ${id}`, { workstation: id });
    if (row.inventory !== null) {
      return { id, ...subjectOf(JSON.parse(row.inventory) as Inventory, row.name), mac: row.mac };
    }
    return {
      id,
      name: row.name,
      mac: row.mac,
      addresses: row.ip === null ? [] : [row.ip],
      diskBytes: 0,
      memoryBytes: 0,
      cores: 0,
      cpu: '',
      vendor: '',
      model: '',
      serial: '',
    };
  }

  /**
   * What rules see of a MAC that network-boots: the registered or created workstation, or, for
   * a MAC the server has never seen, the MAC alone (rules on it match; rules on hardware wait
   * for img auto to register it).
   */
  bootCandidate(mac: string, address: string | null): { candidate: Candidate; known: boolean } {
    const id = macDigits(mac);
    if (this.#byId.has(id)) return { candidate: this.candidate(id), known: true };
    const m = normalMac(mac) ?? mac;
    return {
      known: false,
      candidate: {
        id,
        name: m,
        mac: m,
        addresses: address === null ? [] : [address],
        diskBytes: 0,
        memoryBytes: 0,
        cores: 0,
        cpu: '',
        vendor: '',
        model: '',
        serial: '',
      },
    };
  }

  /** The last boot phase of a workstation, or null (and undefined for one the server does not know). */
  phaseOf(id: string): BootPhase | null | undefined {
    const row = this.#byId.get(id);
    return row ? (row.phase as BootPhase | null) : undefined;
  }

  /** Records a boot phase; a workstation the server does not know is left alone. */
  async setPhase(id: string, phase: BootPhase): Promise<void> {
    const row = this.#byId.get(id);
    if (!row) return;
    const at = this.#now();
    await this.#db.updateTable('workstations').set({ phase, phase_at: at }).where('id', '=', id).execute();
    Object.assign(row, { phase, phase_at: at });
  }

  /** Creates a workstation before it registers (it gets its token then). */
  async add(req: CreateWorkstation): Promise<Workstation> {
    const mac = normalMac(req.mac);
    if (mac === undefined) {
      throw new ServerError('E_BAD_REQUEST', `${JSON.stringify(req.mac)} is not a MAC address`, {
        mac: req.mac,
      });
    }
    const badName = checkName(req.name);
    if (badName) throw new ServerError('E_BAD_REQUEST', badName, { name: req.name });
    const ip = req.ip === undefined ? null : this.#ip(req.ip);
    const had = this.#byId.get(macDigits(mac));
    if (had) {
      throw new ServerError(
        'E_WORKSTATION_EXISTS',
        `${mac} is already the workstation ${had.name}${had.token_hash ? '' : ' (not registered yet)'}; imgcast workstation edit changes it`,
        { mac, workstation: had.name },
      );
    }
    this.#nameFree(req.name, undefined);
    const row = preCreated(req.name, mac, ip, this.#now());
    await this.#db.insertInto('workstations').values(row).execute();
    this.#byId.set(row.id, row);
    return view(row);
  }

  /** Renames (the name then outlives registrations) or sets the address the administrator gives. */
  async edit(ref: string, req: EditWorkstation): Promise<Workstation> {
    const row = this.#byId.get(this.resolve(ref))!;
    if (req.name === undefined && req.ip === undefined)
      throw new ServerError('E_BAD_REQUEST', 'nothing to change: give a name or an ip');
    if (req.name !== undefined) {
      const bad = checkName(req.name);
      if (bad) throw new ServerError('E_BAD_REQUEST', bad, { name: req.name });
      this.#nameFree(req.name, row.id);
    }
    const ip = req.ip === undefined ? row.ip : req.ip === null ? null : this.#ip(req.ip);
    const next = {
      ...row,
      ...(req.name !== undefined ? { name: req.name, named: 1 } : {}),
      ip,
    };
    await this.#db
      .updateTable('workstations')
      .set({ name: next.name, named: next.named, ip: next.ip })
      .where('id', '=', row.id)
      .execute();
    Object.assign(row, next);
    return view(row);
  }

  /** Forgets a workstation; its token stops working. The caller checks no session needs it. */
  async remove(id: string): Promise<Workstation> {
    const row = this.#byId.get(id);
    if (!row) throw new ServerError('E_WORKSTATION_UNKNOWN', `no workstation ${id}`, { workstation: id });
    await this.#db.deleteFrom('workstations').where('id', '=', id).execute();
    this.#byId.delete(id);
    if (row.token_hash) this.#byToken.delete(row.token_hash);
    return view(row);
  }

  /**
   * A lab's list, `name,mac[,ip]` a row (a header row allowed; ";" or tabs separate as well as
   * ","; blank lines and lines starting with "#" are skipped). A MAC already known gets the
   * row's name and address; a new one is created. Every row is checked before anything is
   * written, and one bad row refuses the whole file, naming each bad line.
   */
  async import(csv: string): Promise<Imported> {
    const rows: Array<{ line: number; name: string; mac: string; ip: string | null }> = [];
    const errors: Array<{ line: number; message: string }> = [];
    const macLine = new Map<string, number>();
    const nameLine = new Map<string, number>();
    const lines = csv.replace(/^\uFEFF/, '').split(/\r\n|\r|\n/);
    let header = false;
    for (const [i, raw] of lines.entries()) {
      const line = i + 1;
      const text = raw.trim();
      if (text === '' || text.startsWith('#')) continue;
      const fields = text.split(/[,;\t]/).map((f) =>
        f
          .trim()
          .replace(/^"(.*)"$/, '$1')
          .trim(),
      );
      if (fields.length === 3 && fields[2] === '') fields.pop();
      if (!header && rows.length === 0 && errors.length === 0 && /^name$/i.test(fields[0] ?? '')) {
        header = true;
        if (!/^mac/i.test(fields[1] ?? '')) errors.push({ line, message: 'a header must be name,mac[,ip]' });
        continue;
      }
      const fail = (message: string) => errors.push({ line, message });
      if (fields.length < 2 || fields.length > 3) {
        fail(`expected name,mac[,ip], found ${fields.length} field(s)`);
        continue;
      }
      const [name, macText, ipText] = fields as [string, string, string | undefined];
      const badName = checkName(name);
      if (badName) {
        fail(badName);
        continue;
      }
      const mac = normalMac(macText);
      if (mac === undefined) {
        fail(`${JSON.stringify(macText)} is not a MAC address`);
        continue;
      }
      let ip: string | null = null;
      if (ipText !== undefined) {
        const r = checkIp(ipText);
        if ('error' in r) {
          fail(r.error);
          continue;
        }
        ip = r.ip;
      }
      const key = name.normalize('NFC').toLowerCase();
      if (macLine.has(mac)) {
        fail(`${mac} is on line ${macLine.get(mac)} already`);
        continue;
      }
      if (nameLine.has(key)) {
        fail(`${name} is on line ${nameLine.get(key)} already`);
        continue;
      }
      macLine.set(mac, line);
      nameLine.set(key, line);
      rows.push({ line, name, mac, ip });
    }
    // A name may move between rows of the file (a swap): it is taken only when the workstation
    // holding it now is not in the file, which would rename it.
    for (const r of rows) {
      const holder = [...this.#byId.values()].find((w) => sameName(w.name, r.name) && w.mac !== r.mac);
      if (holder && !macLine.has(holder.mac))
        errors.push({ line: r.line, message: `${r.name} is already the name of ${holder.mac}` });
    }
    errors.sort((a, b) => a.line - b.line);
    if (errors.length > 0) {
      const shown = errors.slice(0, IMPORT_ERRORS_SHOWN).map((e) => `line ${e.line}: ${e.message}`);
      const more = errors.length - shown.length;
      throw new ServerError(
        'E_BAD_REQUEST',
        `nothing imported: ${errors.length} bad row(s)\n${shown.join('\n')}${more > 0 ? `\n… and ${more} more` : ''}`,
        { rows: errors },
      );
    }
    if (rows.length === 0) throw new ServerError('E_BAD_REQUEST', 'nothing imported: the file has no rows');
    const now = this.#now();
    const plan = rows.map((r) => {
      const old = this.#byId.get(macDigits(r.mac));
      if (!old) return { kind: 'added' as const, row: preCreated(r.name, r.mac, r.ip, now) };
      const same = old.name === r.name && old.named === 1 && old.ip === r.ip;
      return {
        kind: same ? ('unchanged' as const) : ('updated' as const),
        row: { ...old, name: r.name, named: 1, ip: r.ip },
      };
    });
    await this.#db.transaction().execute(async (tx) => {
      for (const p of plan) {
        if (p.kind === 'added') await tx.insertInto('workstations').values(p.row).execute();
        else if (p.kind === 'updated') {
          await tx
            .updateTable('workstations')
            .set({ name: p.row.name, named: 1, ip: p.row.ip })
            .where('id', '=', p.row.id)
            .execute();
        }
      }
    });
    for (const p of plan) {
      const old = this.#byId.get(p.row.id);
      if (old) Object.assign(old, { name: p.row.name, named: p.row.named, ip: p.row.ip });
      else this.#byId.set(p.row.id, p.row);
    }
    const count = (k: string) => plan.filter((p) => p.kind === k).length;
    return {
      added: count('added'),
      updated: count('updated'),
      unchanged: count('unchanged'),
      workstations: plan.map((p) => view(this.#byId.get(p.row.id)!)),
    };
  }

  /**
   * What a workstation in session `session` is to make of its restored system: the name the
   * administrator gave it (workstation add, import or edit), when that is a host name. A name
   * the workstation registered with is the imaging environment's own host name, often the same
   * on every machine of a lab: it is not given, and the image's host name stays (the machine id,
   * SSH host keys and the rest are renewed all the same).
   */
  identityOrder(id: string): IdentityOrder {
    const row = this.#byId.get(id);
    if (!row) return { name: null, why: 'the server does not know this workstation' };
    if (row.named !== 1) {
      return {
        name: null,
        why: `the administrator has not named this workstation (it registered as ${row.name}); imgcast workstation edit ${row.mac} --name NAME names it`,
      };
    }
    const problem = hostnameProblem(row.name);
    if (problem) return { name: null, why: `its name cannot be a host name: ${problem}` };
    return { name: row.name };
  }

  /**
   * The name a session's template (naming.ts) gives a workstation the administrator has not
   * named: the lowest number no other workstation's name holds. Kept as its name from then on,
   * as if the administrator had given it, so the machine is the same name in the next run too.
   * A workstation already named keeps its name.
   */
  async assignName(id: string, template: string): Promise<string> {
    const row = this.#byId.get(id);
    if (!row) throw new ServerError('E_WORKSTATION_UNKNOWN', `no workstation ${id}`, { workstation: id });
    if (row.named === 1) return row.name;
    const taken = new Set([...this.#byId.values()].filter((r) => r.id !== id).map((r) => r.name));
    const name = nextName(parseNameTemplate(template), row.mac, taken);
    await this.#db.updateTable('workstations').set({ name, named: 1 }).where('id', '=', id).execute();
    Object.assign(row, { name, named: 1 });
    return name;
  }

  /** Keeps what a workstation reports it applied to its restored system (the last report wins). */
  async recordIdentity(id: string, applied: AppliedIdentity, session: string, image: string): Promise<void> {
    const row = this.#byId.get(id);
    if (!row) return;
    const kept: ReportedIdentity = { ...applied, session, image, reportedAt: this.#now() };
    const json = JSON.stringify(kept);
    await this.#db.updateTable('workstations').set({ identity: json }).where('id', '=', id).execute();
    row.identity = json;
  }

  /** Saves last-seen times and addresses (kept in memory between saves). */
  async flush(): Promise<void> {
    for (const row of this.#byId.values()) {
      if (row.token_hash === null) continue;
      await this.#db
        .updateTable('workstations')
        .set({ last_seen_at: row.last_seen_at, last_address: row.last_address })
        .where('id', '=', row.id)
        .execute();
    }
  }

  #ip(text: string): string {
    const r = checkIp(text);
    if ('error' in r) throw new ServerError('E_BAD_REQUEST', r.error, { ip: text });
    return r.ip;
  }

  /** Names the administrator gives are unique: `include NAME` must find one workstation. */
  #nameFree(name: string, self: string | undefined): void {
    const holder = [...this.#byId.values()].find((r) => r.id !== self && sameName(r.name, name));
    if (holder) {
      throw new ServerError('E_WORKSTATION_EXISTS', `${name} is already the name of ${holder.mac}`, {
        name,
        mac: holder.mac,
      });
    }
  }
}

function preCreated(name: string, mac: string, ip: string | null, now: number): WorkstationTable {
  return {
    id: macDigits(mac),
    name,
    named: 1,
    mac,
    ip,
    hostname: null,
    addresses: '[]',
    last_address: null,
    inventory: null,
    token_hash: null,
    created_at: now,
    registered_at: null,
    last_seen_at: null,
    identity: null,
    phase: null,
    phase_at: null,
  };
}

function view(r: WorkstationTable): Workstation {
  const num = (n: number | null) => (n === null ? null : Number(n));
  return {
    id: r.id,
    name: r.name,
    named: r.named === 1,
    mac: r.mac,
    ip: r.ip,
    hostname: r.hostname,
    addresses: JSON.parse(r.addresses) as string[],
    lastAddress: r.last_address,
    createdAt: Number(r.created_at),
    registeredAt: num(r.registered_at),
    lastSeenAt: num(r.last_seen_at),
    inventory: r.inventory === null ? null : (JSON.parse(r.inventory) as Inventory),
    identity: r.identity === null ? null : (JSON.parse(r.identity) as ReportedIdentity),
    phase: r.phase as BootPhase | null,
    phaseAt: num(r.phase_at),
  };
}
