/**
 * Server-initiated multicast sessions: created by an administrator, joined by workstations,
 * started by their trigger (start-trigger.ts), sent by one multicast sender each, on a group
 * and port of their own (address-pool.ts). Workstations learn where to receive from their
 * join (JoinView); each result comes from the workstation itself, after it wrote and verified
 * its disk, while progress comes from the sender.
 *
 * The database is the record: every state change is written through, progress every second.
 * A session found 'sending' at start-up was cut off by a server stop: it becomes 'interrupted',
 * and restarting it opens a new run that workstations join again, each getting only what its
 * disk still lacks (its receive journal).
 *
 * An automatic session is one of these with a definition besides (auto-sessions.ts checks and
 * changes it): its place in the ordered list, enabled or not, a master workstation instead of an
 * image, who takes part (workstations listed, rules), and whether it is deleted once done. When
 * a run of one ends (done or failed, after sending), it is deleted with delete-when-done and
 * reopened for a new run otherwise, so that workstations booting later are imaged too; a stopped
 * or interrupted run stays so for the administrator, as any session's does. Workstations of the
 * run that just ended still see its end (and may still report to it), from the session or, once
 * deleted, from a short list of deleted ones.
 */
import { randomBytes } from 'node:crypto';

import type {
  MasterClaim,
  MasterReport,
  PostImagingScript,
  MasterView,
  SessionMaster,
  AppliedIdentity,
  AutoDefinition,
  ClientReport,
  ClientState,
  CreateSession,
  EditSession,
  HistoryEntry,
  IdentityOrder,
  JoinView,
  Session,
  SessionClient,
  SessionState,
  WorkstationBrief,
} from '../api/schemas.ts';
import { ImgcastError } from '../errors.ts';
import type { CompressionLevel } from '../image/types.ts';
import type { ReceiverReport, SenderProgress } from '../transport/types.ts';
import { allocate, type AddressRange } from './address-pool.ts';
import type { Counters } from './counters.ts';
import type { Db, SessionClientTable, SessionTable } from './db.ts';
import { ServerError } from './errors.ts';
import type { ImageStore } from './images.ts';
import type { AutoSessionView } from './participation.ts';
import { describeRule, parseRule, type Rule } from './rules.ts';
import { parseNameTemplate, type TemplateError } from './naming.ts';
import { startTrigger, type StartBy } from './start-trigger.ts';
import { warmAction } from './warm-sender.ts';
import type { Elsewhere } from './site.ts';

/** What the session needs of its sender's progress (the transport's SenderProgress, or the master's report of it). */
export interface SendProgress {
  phase: SenderProgress['phase'];
  bytesSent: number;
  receivers: Array<Pick<ReceiverReport, 'name' | 'state' | 'bytes' | 'totalBytes'>>;
}

/** What the session needs of its sender's result. */
export interface SendOutcome {
  receivers: Array<
    Pick<ReceiverReport, 'name' | 'state' | 'bytes' | 'totalBytes' | 'rateMbit' | 'code' | 'reason'>
  >;
}

/** One session's multicast send, as the session manager asks for it. */
export interface SendPlan {
  imagePath: string;
  fileset: number;
  group: string;
  port: number;
  key: string;
  clients: number;
  onProgress: (p: SendProgress) => void;
  signal: AbortSignal;
  log: (line: string) => void;
  /**
   * Given to a send readied ahead of the trigger (warm-sender.ts): it gets ready to send and
   * holds until this resolves, then waits for `clients` receivers instead of plan.clients.
   */
  gate?: Promise<{ clients: number }>;
}

/** What runs one session's multicast send (the real one: engine + transport; tests may fake it). */
export type SendSession = (plan: SendPlan) => Promise<SendOutcome>;

export interface SessionManagerOptions {
  db: Db;
  /**
   * This server's name: it runs the sessions the database gives to it (and takes those made
   * before servers had names); the others belong to the other servers of its site. Default 'local'.
   */
  server?: string;
  /** Where a name that is not this server's runs (site.ts); without it, this server is alone. */
  elsewhere?: (session: string) => Promise<Elsewhere | undefined>;
  /**
   * Other names this server ran under (site.ts's formerNames: renamed, same machine and data
   * folder); '*' when the database is its alone (the embedded file), so every session is its own.
   */
  formerNames?: readonly string[] | '*';
  images: ImageStore;
  counters: Counters;
  range: AddressRange;
  send: SendSession;
  /**
   * `send` honours plan.gate (the real one does): each waiting session's sender is readied
   * while the session waits, and its trigger only opens the gate (warm-sender.ts). Default off.
   */
  warm?: boolean;
  /** Sender address workstations connect to; undefined: the address they reached the API on. */
  senderHost?: string;
  now?: () => number;
  log: { info: (o: object, m: string) => void; warn: (o: object, m: string) => void };
  /** How long a started session waits for its joined workstations to connect to the sender. */
  connectTimeoutMs?: number;
  /** How long after the send ends results from workstations are awaited. */
  reportTimeoutMs?: number;
  /** How a definition shows a workstation id (the registry's name); default: its MAC. */
  describeWorkstation?: (id: string) => WorkstationBrief;
  /** How long a master may be silent and still count as there (default 60 s; it asks every 20 s while waiting). */
  masterPresentMs?: number;
  /** How long a sending master may be silent before its run fails (default 30 s; it reports every second). */
  masterLostMs?: number;
  /** What a workstation makes of its restored system (JoinView.identity); none without it. */
  identityOrder?: (workstation: string) => IdentityOrder;
  /** Names a workstation the administrator has not named by a session's template (naming.ts); its name. */
  assignName?: (workstation: string, template: string) => Promise<string>;
  /**
   * The administrator's defaults (settings.ts), read at each use: the naming template of a new
   * session that gives none ('' for none), and the compression of a live master that gives none.
   */
  defaults?: () => { names: string; level: CompressionLevel };
  /** Keeps what a workstation reports it applied to its restored system. */
  onIdentity?: (
    workstation: string,
    applied: AppliedIdentity,
    session: string,
    image: string,
  ) => Promise<void>;
}

/** What an automatic session is made with; workstations are ids, rules the administrator's text. */
export interface AutoFields {
  enabled: boolean;
  master: string | null;
  deleteWhenDone: boolean;
  members: string[];
  rules: string[];
}

/** An automatic session's definition as auto-sessions.ts checks it. */
export interface Definition extends AutoFields {
  name: string;
  state: SessionState;
  position: number;
  /** The rules that parse (one that no longer does, after an upgrade, matches nothing). */
  parsed: Rule[];
}

/** What the definition routes change; members and rules whole, already checked. */
export interface DefinitionPatch {
  enabled?: boolean;
  members?: string[];
  rules?: string[];
  deleteWhenDone?: boolean;
}

/** Edits of what a run sends; `master` is a workstation id here (auto-sessions.ts resolves it). */
export type SessionEdit = EditSession;

interface ParsedRule {
  text: string;
  rule: Rule | null;
  description: string;
}

/** How many deleted sessions' last runs are kept for their workstations to read. */
const GONE_KEPT = 64;

const FINAL_CLIENT: ReadonlySet<ClientState> = new Set(['ok', 'failed', 'dropped']);
const LIVE_STATES: ReadonlySet<SessionState> = new Set(['waiting', 'sending']);
const ENDED_STATES: ReadonlySet<SessionState> = new Set(['done', 'failed', 'stopped', 'interrupted']);
const DEFAULT_LEVEL: CompressionLevel = 'balanced';
export const STOPPED_BY_ADMIN = 'stopped by the administrator';

/** A session's sender readied ahead of its trigger, held by its gate (warm-sender.ts). */
interface Warm {
  slot: number;
  group: string;
  port: number;
  key: string;
  image: string;
  fileset: number;
  abort: AbortController;
  /** Opens the gate: the sender starts once this many receivers joined. */
  open: (clients: number) => void;
  /** Where the sender's progress goes; nowhere until the trigger. */
  onProgress: (p: SendProgress) => void;
  result: Promise<SendOutcome>;
}

interface Live {
  row: SessionTable;
  clients: Map<string, SessionClientTable & { rateAt?: number; rateBytes?: number }>;
  version: number;
  waiters: Set<() => void>;
  abort?: AbortController;
  slot?: number;
  key?: string;
  sendEnded?: boolean;
  reportTimer?: NodeJS.Timeout;
  /** The start under way (see #startSending). */
  starting?: Promise<void>;
  /** Its sender, readied for the trigger (warm-sender.ts). */
  warm?: Warm;
  /** The run whose sender was readied: once per run. */
  warmRun?: number;
  wakeTimer?: NodeJS.Timeout;
  dirty: boolean;
  /** The parsed rules of an automatic session, in the order of `row.rules`. */
  rules: ParsedRule[];
  /** The master workstation's connection to this server process (sessions whose master is a workstation). */
  master?: { address: string; seenAt: number; ready: boolean };
  /** The run's send when the master's sender does it: settled by the master's last report. */
  remote?: {
    resolve: (o: SendOutcome) => void;
    reject: (err: unknown) => void;
    onProgress: (p: SendProgress) => void;
  };
  /** The run before the current one (an automatic session reopened by itself): its workstations still read its end. */
  last?: {
    run: number;
    state: SessionState;
    message: string | null;
    clients: Map<string, SessionClientTable>;
  };
}

export class SessionManager {
  #o: SessionManagerOptions;
  #now: () => number;
  #live = new Map<string, Live>();
  /** Automatic sessions deleted once done, newest last, for their workstations to read the end. */
  #gone = new Map<string, Live>();
  #ticker: NodeJS.Timeout | undefined;
  #flusher: NodeJS.Timeout | undefined;
  #running = new Set<Promise<void>>();
  /** Every warm sender until it ended, taken by its session's trigger or not: each holds its slot. */
  #warms = new Set<Warm>();
  #closing = false;
  /** Who watches the sessions change (the console's live status); see onChange. */
  #listeners = new Set<() => void>();
  /** When each session last imaged each workstation successfully: "session\nworkstation" → time. */
  #successes = new Map<string, number>();
  #server: string;

  constructor(o: SessionManagerOptions) {
    this.#o = o;
    this.#now = o.now ?? Date.now;
    this.#server = o.server ?? 'local';
  }

  /**
   * Loads this server's sessions (taking those no server has yet); marks those that were
   * sending when it stopped as interrupted. Other servers' sessions are theirs to load and report.
   */
  async start(): Promise<void> {
    for (const r of await this.#o.db.selectFrom('successes').selectAll().execute())
      this.#successes.set(`${r.session}\n${r.workstation}`, Number(r.at));
    const former = this.#o.formerNames ?? [];
    await this.#o.db
      .updateTable('sessions')
      .set({ server: this.#server })
      .where((eb) =>
        former === '*'
          ? eb.or([eb('server', 'is', null), eb('server', '!=', this.#server)])
          : former.length > 0
            ? eb.or([eb('server', 'is', null), eb('server', 'in', former)])
            : eb('server', 'is', null),
      )
      .execute();
    const rows = await this.#o.db
      .selectFrom('sessions')
      .selectAll()
      .where('server', '=', this.#server)
      .execute();
    for (const row of rows) {
      const clients = await this.#o.db
        .selectFrom('session_clients')
        .selectAll()
        .where('session', '=', row.name)
        .where('run', '=', row.run)
        .execute();
      const live: Live = {
        row: { ...row },
        clients: new Map(clients.map((c) => [c.workstation, { ...c }])),
        version: 1,
        waiters: new Set(),
        dirty: false,
        rules: parseRules(row.rules),
      };
      for (const r of live.rules) {
        if (!r.rule)
          this.#o.log.warn(
            { session: row.name, rule: r.text },
            `a stored rule no longer parses: ${r.description}`,
          );
      }
      this.#live.set(row.name, live);
      if (row.state === 'sending') {
        for (const c of live.clients.values()) {
          if (!FINAL_CLIENT.has(c.state as ClientState)) {
            this.#finishClient(
              c,
              'failed',
              'E_INTERRUPTED',
              'the server stopped while sending; rerun after the session is restarted',
            );
          }
        }
        await this.#end(
          live,
          'interrupted',
          `the server stopped while sending (${new Date(this.#now()).toISOString()})`,
        );
      }
    }
    this.#ticker = setInterval(() => this.#tick(), 200);
    this.#flusher = setInterval(() => void this.#flushProgress(), 1000);
  }

  async close(): Promise<void> {
    this.#closing = true;
    clearInterval(this.#ticker);
    clearInterval(this.#flusher);
    // A server stopping mid-send leaves the sessions as interrupted for the next start to report.
    for (const live of this.#live.values()) {
      clearTimeout(live.reportTimer);
      clearTimeout(live.wakeTimer);
      live.abort?.abort(new ImgcastError('E_SERVER_STOPPING', 'the imaging server is shutting down'));
    }
    for (const w of this.#warms)
      w.abort.abort(new ImgcastError('E_SERVER_STOPPING', 'the imaging server is shutting down'));
    await Promise.allSettled([...this.#running, ...[...this.#warms].map((w) => w.result)]);
    await this.#flushProgress();
    for (const live of this.#live.values()) for (const w of live.waiters) w();
  }

  /**
   * Calls `listener` after anything a status shows changed: a state, a join, progress, the
   * list's order, a session created or deleted. Calls come as often as changes do (progress:
   * several a second per session); the listener coalesces. Returns the way to stop listening.
   */
  onChange(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #notify(): void {
    for (const l of [...this.#listeners]) {
      try {
        l();
      } catch (err) {
        this.#o.log.warn({ err }, 'a status listener failed');
      }
    }
  }

  // --- administration ---------------------------------------------------------------------

  /**
   * A session of an image; with `auto`, an automatic session (whose image may be '' when a
   * master workstation sends), placed last in the list.
   */
  async create(req: CreateSession, auto?: AutoFields): Promise<Session> {
    const gathering = this.#live.get(req.name);
    if (!auto && gathering && isGathering(gathering)) return this.#adopt(gathering, req);
    if (this.#live.has(req.name)) {
      throw new ServerError('E_SESSION_EXISTS', `a session named ${req.name} already exists`, {
        session: req.name,
      });
    }
    const image = auto?.master ? '' : await this.#checkImage(req.image);
    const other = await this.#o.elsewhere?.(req.name);
    if (other) {
      throw new ServerError(
        'E_SESSION_EXISTS',
        `a session named ${req.name} already exists on imaging server ${other.server} (${other.url})`,
        { session: req.name, server: other.server, url: other.url },
      );
    }
    const now = this.#now();
    const row = newRow(req.name, now, {
      server: this.#server,
      image,
      fileset: req.fileset ?? 1,
      client_count: req.clientCount ?? 1,
      wait_ms: waitMs(req) ?? 5 * 60_000,
      auto: auto ? 1 : 0,
      enabled: auto?.enabled === false ? 0 : 1,
      position: auto ? 1 + Math.max(0, ...[...this.#live.values()].map((l) => l.row.position ?? 0)) : null,
      master: auto?.master ?? null,
      delete_when_done: auto?.deleteWhenDone ? 1 : 0,
      members: JSON.stringify(auto?.members ?? []),
      rules: JSON.stringify(auto?.rules ?? []),
      origin: 'server',
      start_by: 'count-or-time',
      names: this.#names(req.names),
      scripts: JSON.stringify(req.scripts ?? []),
    });
    // Checked again here: two creates of one name may race through the await above.
    if (this.#live.has(req.name)) {
      throw new ServerError('E_SESSION_EXISTS', `a session named ${req.name} already exists`, {
        session: req.name,
      });
    }
    const live = await this.#insert(row);
    this.#o.log.info({ session: row.name, image: row.image, auto: row.auto === 1 }, 'session created');
    this.#notify();
    return this.#view(live);
  }

  /** Takes a new session's row into the live set and the database, or neither. */
  async #insert(row: SessionTable): Promise<Live> {
    const live: Live = {
      row,
      clients: new Map(),
      version: 1,
      waiters: new Set(),
      dirty: false,
      rules: parseRules(row.rules),
    };
    this.#live.set(row.name, live);
    try {
      await this.#o.db.insertInto('sessions').values(row).execute();
    } catch (err) {
      this.#live.delete(row.name);
      // Another server of the site took the name between the check and the insert.
      const other = await this.#o.elsewhere?.(row.name).catch(() => undefined);
      if (other) throw referral(other, err);
      throw err;
    }
    return live;
  }

  /**
   * `imgcast mcast NAME` for a session workstations opened and wait in for a master: the server
   * becomes its master with the image, and the workstations waiting keep their place.
   */
  async #adopt(live: Live, req: CreateSession): Promise<Session> {
    const image = await this.#checkImage(req.image);
    if (this.#live.get(req.name) !== live || !isGathering(live)) return this.create(req);
    Object.assign(live.row, {
      image,
      fileset: req.fileset ?? 1,
      client_count: req.clientCount ?? 1,
      wait_ms: waitMs(req) ?? 5 * 60_000,
      origin: 'server',
      start_by: 'count-or-time',
      names: this.#names(req.names),
      scripts: JSON.stringify(req.scripts ?? []),
      // Each join restarts the wait; the workstations that waited for a master count from now.
      last_join_at: live.clients.size > 0 ? this.#now() : null,
    });
    await this.#save(live);
    this.#o.log.info(
      { session: req.name, image, joined: live.clients.size },
      'session taken over by the server',
    );
    this.#changed(live);
    this.#tick();
    return this.#view(live);
  }

  /** A session opened by a workstation that joined a name nobody used yet: it waits for its master. */
  async #open(name: string): Promise<Live> {
    const other = await this.#o.elsewhere?.(name);
    if (other) throw referral(other);
    const now = this.#now();
    const live = await this.#insert(
      newRow(name, now, {
        server: this.#server,
        wait_ms: 5 * 60_000,
        origin: 'workstation',
        start_by: 'command',
        names: this.#names(undefined),
      }),
    );
    this.#o.log.info({ session: name }, 'session opened by a workstation');
    this.#notify();
    return live;
  }

  /** A new session's naming template: its own, or the administrator's default (null: none). */
  #names(given: string | undefined): string | null {
    if (given !== undefined) return checkTemplate(given);
    const fallback = this.#o.defaults?.().names ?? '';
    // A default stored by an older version that no longer parses names nobody rather than failing the session.
    if (fallback === '') return null;
    try {
      return checkTemplate(fallback);
    } catch (err) {
      this.#o.log.warn({ template: fallback, err }, 'the default naming template does not parse; not used');
      return null;
    }
  }

  /** A live master's compression: its own, or the administrator's default. */
  #level(row: SessionTable): CompressionLevel {
    return (row.level as CompressionLevel | null) ?? this.#o.defaults?.().level ?? DEFAULT_LEVEL;
  }

  /** The image's name inside the image directory; refused now rather than when the lab waits on it. */
  async #checkImage(path: string): Promise<string> {
    const image = await this.#o.images.resolve(path);
    const { problem } = await this.#o.images.describe(image.path);
    if (problem !== null) {
      throw new ServerError('E_IMAGE_UNREADABLE', `${path} is not a readable image: ${problem}`, {
        path,
      });
    }
    return image.name;
  }

  // --- one-off tasks ------------------------------------------------------------------------

  /**
   * A one-off task: a session of its own that images one workstation with an image, starting
   * as soon as that workstation joins. img auto gives it precedence (participation.chooseWork);
   * it is deleted once its run succeeds (its history stays) and reopened when the run fails.
   */
  async createTask(req: {
    workstation: string;
    image: string;
    fileset?: number;
    scripts?: PostImagingScript[];
  }): Promise<Session> {
    const name = taskSession(req.workstation);
    if (this.#live.has(name)) {
      throw new ServerError(
        'E_SESSION_EXISTS',
        this.#live.get(name)!.row.origin === 'task'
          ? `${this.#brief(req.workstation).name} has a task queued already (imgcast task rm removes it)`
          : `a session named ${name}, not a task, is in the way (imgcast stop ${name} --delete)`,
        { session: name, workstation: this.#brief(req.workstation).name },
      );
    }
    const image = await this.#checkImage(req.image);
    if (this.#live.has(name)) {
      throw new ServerError('E_SESSION_EXISTS', `a session named ${name} already exists`, { session: name });
    }
    const now = this.#now();
    const live = await this.#insert(
      newRow(name, now, {
        server: this.#server,
        image,
        fileset: req.fileset ?? 1,
        wait_ms: 0,
        delete_when_done: 1,
        members: JSON.stringify([req.workstation]),
        origin: 'task',
        start_by: 'count',
        names: this.#names(undefined),
        scripts: JSON.stringify(req.scripts ?? []),
      }),
    );
    this.#o.log.info({ session: name, image, workstation: req.workstation }, 'task queued');
    this.#notify();
    return this.#view(live);
  }

  /** The tasks queued (waiting, sending, or failed and queued again), oldest first. */
  tasks(): Array<{ session: Session; workstation: string }> {
    return [...this.#live.values()]
      .filter((l) => l.row.origin === 'task')
      .sort((a, b) => a.row.created_at - b.row.created_at)
      .map((l) => ({ session: this.#view(l), workstation: (JSON.parse(l.row.members) as string[])[0]! }));
  }

  /** The task queued for a workstation, if any. */
  taskOf(workstation: string): Session | undefined {
    const live = this.#live.get(taskSession(workstation));
    return live?.row.origin === 'task' ? this.#view(live) : undefined;
  }

  /** When `session` last imaged `workstation` successfully; null: never. */
  imagedAt(session: string, workstation: string): number | null {
    return this.#successes.get(`${session}\n${workstation}`) ?? null;
  }

  /**
   * How many workstations have joined `session`'s run and still wait for it: it has not started,
   * or it started and its master's sender is not listening yet (a master that left after its last
   * run is still counted present for a while, so a late join may start a run without it).
   */
  joinedWaiting(session: string): number {
    const live = this.#live.get(session);
    if (!live) return 0;
    const waits =
      live.row.state === 'waiting' ||
      (live.row.state === 'sending' && live.row.master !== null && live.master?.ready !== true);
    return waits ? live.clients.size : 0;
  }

  /** When the definition of `session` last changed (see SessionTable.defined_at). */
  definedAt(session: string): number | null {
    const row = this.#live.get(session)?.row;
    if (!row) return null;
    return Number(row.defined_at ?? row.created_at);
  }

  async #succeeded(session: string, workstation: string): Promise<void> {
    const at = this.#now();
    await this.#o.db
      .insertInto('successes')
      .values({ session, workstation, at })
      .onConflict((oc) => oc.columns(['session', 'workstation']).doUpdateSet({ at }))
      .execute();
    this.#successes.set(`${session}\n${workstation}`, at);
  }

  /** The automatic sessions in list order. */
  autoSessions(): Session[] {
    return this.#autoLives().map((l) => this.#view(l));
  }

  /** The automatic sessions in list order, as participation.ts weighs them. */
  autoViews(): AutoSessionView[] {
    return this.#autoLives().map((l) => {
      const d = definitionOf(l);
      return {
        name: d.name,
        enabled: d.enabled,
        ...(d.master !== null ? { master: d.master } : {}),
        explicit: d.members,
        rules: d.parsed,
      };
    });
  }

  /** The definition of an automatic session; E_BAD_REQUEST for a session made otherwise. */
  definition(name: string): Definition {
    const live = this.#need(name);
    if (live.row.auto !== 1) {
      throw new ServerError(
        'E_BAD_REQUEST',
        `${name} is not an automatic session (imgcast session add makes those)`,
        { session: name },
      );
    }
    return definitionOf(live);
  }

  exists(name: string): boolean {
    return this.#live.has(name);
  }

  /** Whether this server runs the session, or ran it (an automatic session deleted after its run). */
  isHere(name: string): boolean {
    return this.#live.has(name) || this.#gone.has(name);
  }

  /** Whether `name` is an automatic session. */
  isAuto(name: string): boolean {
    return this.#need(name).row.auto === 1;
  }

  /** Changes an automatic session's participants or flags; allowed in any state, from its next join on. */
  async define(name: string, patch: DefinitionPatch): Promise<Session> {
    this.definition(name);
    const live = this.#need(name);
    const row = { ...live.row };
    if (patch.enabled !== undefined) row.enabled = patch.enabled ? 1 : 0;
    if (patch.deleteWhenDone !== undefined) row.delete_when_done = patch.deleteWhenDone ? 1 : 0;
    if (patch.members !== undefined) row.members = JSON.stringify(patch.members);
    if (patch.rules !== undefined) row.rules = JSON.stringify(patch.rules);
    // Who takes part changed: a workstation it imaged before may be one it is now meant for anew.
    if (patch.members !== undefined || patch.rules !== undefined) row.defined_at = this.#now();
    const { name: _n, ...rest } = row;
    await this.#o.db.updateTable('sessions').set(rest).where('name', '=', name).execute();
    live.row = row;
    if (patch.rules !== undefined) live.rules = parseRules(row.rules);
    this.#changed(live);
    return this.#view(live);
  }

  /** Puts the automatic sessions in this order (every one of them, by name). */
  async reorder(names: readonly string[]): Promise<void> {
    const lives = names.map((n) => this.#need(n));
    await this.#o.db.transaction().execute(async (tx) => {
      for (const [i, l] of lives.entries()) {
        if (l.row.position !== i + 1)
          await tx
            .updateTable('sessions')
            .set({ position: i + 1 })
            .where('name', '=', l.row.name)
            .execute();
      }
    });
    for (const [i, l] of lives.entries()) l.row.position = i + 1;
    this.#notify();
  }

  /** The sessions whose current run this workstation is in (it must not be removed meanwhile). */
  runsOf(workstation: string): string[] {
    return [...this.#live.values()]
      .filter((l) => LIVE_STATES.has(l.row.state as SessionState) && l.clients.has(workstation))
      .map((l) => l.row.name);
  }

  #autoLives(): Live[] {
    return [...this.#live.values()]
      .filter((l) => l.row.auto === 1)
      .sort((a, b) => (a.row.position ?? 0) - (b.row.position ?? 0) || a.row.name.localeCompare(b.row.name));
  }

  list(): Session[] {
    return [...this.#live.values()]
      .sort((a, b) => a.row.created_at - b.row.created_at)
      .map((l) => this.#view(l));
  }

  get(name: string): Session {
    return this.#view(this.#need(name));
  }

  /**
   * Changes a waiting session's trigger or what it sends (image and file set, or the master
   * of an automatic session, an id here); delete-when-done changes in any state.
   */
  async edit(name: string, req: SessionEdit): Promise<Session> {
    const live = this.#need(name);
    const auto = live.row.auto === 1;
    if (!auto && (req.master !== undefined || req.deleteWhenDone !== undefined)) {
      throw new ServerError(
        'E_BAD_REQUEST',
        `${name} is not an automatic session: only those have a master or delete-when-done`,
        { session: name },
      );
    }
    if (req.image !== undefined && req.master !== undefined)
      throw new ServerError('E_BAD_REQUEST', 'give an image or a master, not both');
    const run =
      req.clientCount !== undefined ||
      waitMs(req) !== undefined ||
      req.image !== undefined ||
      req.fileset !== undefined ||
      req.master !== undefined ||
      req.names !== undefined ||
      req.scripts !== undefined;
    const waiting = () => {
      if (run && live.row.state !== 'waiting') {
        throw new ServerError(
          'E_SESSION_STATE',
          `session ${name} is ${live.row.state}; only a waiting session can be changed`,
          {
            session: name,
            state: live.row.state,
          },
        );
      }
    };
    waiting();
    const image = req.image === undefined ? undefined : await this.#checkImage(req.image);
    // The image lookup awaited: the session may have started or gone meanwhile.
    if (this.#live.get(name) !== live) return this.get(name);
    waiting();
    const row = { ...live.row };
    if (req.clientCount !== undefined) row.client_count = req.clientCount;
    const wait = waitMs(req);
    if (wait !== undefined) row.wait_ms = wait;
    if (image !== undefined) Object.assign(row, { image, master: null });
    if (req.master !== undefined) Object.assign(row, { image: '', master: req.master });
    if (req.fileset !== undefined) row.fileset = req.fileset;
    if (req.deleteWhenDone !== undefined) row.delete_when_done = req.deleteWhenDone ? 1 : 0;
    if (req.names !== undefined) row.names = req.names === '' ? null : checkTemplate(req.names);
    if (req.scripts !== undefined) row.scripts = JSON.stringify(req.scripts);
    // What a run puts on a disk changed: the workstations it imaged are due again.
    if (
      image !== undefined ||
      req.master !== undefined ||
      req.fileset !== undefined ||
      req.names !== undefined ||
      req.scripts !== undefined
    )
      row.defined_at = this.#now();
    live.row = row;
    await this.#save(live);
    this.#changed(live);
    this.#tick();
    return this.#view(live);
  }

  /** Starts a waiting session now with whoever has joined. */
  async startNow(name: string, by?: { workstation: string }): Promise<Session> {
    const live = this.#need(name);
    if (by && live.row.master !== by.workstation) {
      throw new ServerError(
        'E_FORBIDDEN',
        `only the master of session ${name} starts it from a workstation${live.row.master === null ? '' : ` (its master is ${this.#brief(live.row.master).name})`}`,
        { session: name },
      );
    }
    const blocked = live.row.state === 'waiting' ? this.#cannotStart(live) : null;
    if (blocked !== null)
      throw new ServerError('E_SESSION_STATE', `session ${name} cannot start: ${blocked}`, { session: name });
    if (live.row.state !== 'waiting') {
      throw new ServerError('E_SESSION_STATE', `session ${name} is ${live.row.state}, not waiting`, {
        session: name,
      });
    }
    if (live.clients.size === 0) {
      throw new ServerError('E_SESSION_STATE', `no workstation has joined session ${name} yet`, {
        session: name,
      });
    }
    await this.#startSending(live, 'started by the administrator');
    return this.#view(live);
  }

  /** Opens a finished, failed, stopped or interrupted session for a new run with the same settings. */
  async restart(name: string): Promise<Session> {
    const live = this.#need(name);
    if (LIVE_STATES.has(live.row.state as SessionState)) {
      throw new ServerError(
        'E_SESSION_STATE',
        `session ${name} is ${live.row.state}; stop it before restarting it`,
        {
          session: name,
        },
      );
    }
    await this.#reopen(live);
    return this.#view(live);
  }

  /** A new run with the same settings; the workstations of the last one still read its end. */
  async #reopen(live: Live): Promise<void> {
    live.last = {
      run: live.row.run,
      state: live.row.state as SessionState,
      message: live.row.message,
      clients: new Map(live.clients),
    };
    live.row = {
      ...live.row,
      state: 'waiting',
      run: live.row.run + 1,
      group_addr: null,
      port: null,
      started_at: null,
      finished_at: null,
      last_join_at: null,
      message: null,
      first_data_at: null,
    };
    live.clients = new Map();
    live.sendEnded = false;
    if (live.master) live.master.ready = false;
    await this.#save(live);
    this.#changed(live);
    this.#o.log.info({ session: live.row.name, run: live.row.run }, 'session reopened');
  }

  /** Stops a session in any state (a sending one mid-stream); `remove` also deletes it (its history stays). */
  async stop(name: string, remove: boolean): Promise<Session> {
    const live = this.#need(name);
    const state = live.row.state as SessionState;
    if (state === 'sending') {
      live.abort?.abort(new ImgcastError('E_STOPPED', STOPPED_BY_ADMIN));
      for (const c of live.clients.values()) {
        if (!FINAL_CLIENT.has(c.state as ClientState))
          this.#finishClient(c, 'failed', 'E_STOPPED', STOPPED_BY_ADMIN);
      }
      await this.#end(live, 'stopped', STOPPED_BY_ADMIN);
    } else if (state === 'waiting') {
      for (const c of live.clients.values()) this.#finishClient(c, 'failed', 'E_STOPPED', STOPPED_BY_ADMIN);
      await this.#end(live, 'stopped', STOPPED_BY_ADMIN);
    }
    const view = this.#view(live);
    if (remove) await this.#remove(live);
    return view;
  }

  /** Deletes a session (its history stays); its last run stays readable by its workstations. */
  async #remove(live: Live): Promise<void> {
    const name = live.row.name;
    if (this.#live.get(name) !== live) return;
    this.#live.delete(name);
    this.#gone.delete(name);
    this.#gone.set(name, live);
    for (const old of this.#gone.keys()) {
      if (this.#gone.size <= GONE_KEPT) break;
      this.#gone.delete(old);
    }
    await this.#o.db.deleteFrom('session_clients').where('session', '=', name).execute();
    await this.#o.db.deleteFrom('sessions').where('name', '=', name).execute();
    this.#o.log.info({ session: name }, 'session deleted');
    this.#notify();
  }

  async history(limit = 200): Promise<HistoryEntry[]> {
    const rows = await this.#o.db
      .selectFrom('history')
      .selectAll()
      .orderBy('id', 'desc')
      .limit(limit)
      .execute();
    return rows.map((r) => ({
      session: r.session,
      run: r.run,
      image: r.image,
      fileset: r.fileset,
      state: r.state as SessionState,
      startedAt: r.started_at === null ? null : Number(r.started_at),
      finishedAt: Number(r.finished_at),
      message: r.message,
      clients: JSON.parse(r.clients) as SessionClient[],
    }));
  }

  /** Removes the runs that finished before `before` from the history; how many went. */
  async forgetHistory(before: number): Promise<number> {
    const r = await this.#o.db.deleteFrom('history').where('finished_at', '<', before).executeTakeFirst();
    return Number(r.numDeletedRows);
  }

  /** Whether a waiting or sending session uses this image (it must not be removed meanwhile). */
  imageInUse(name: string): string | undefined {
    for (const l of this.#live.values()) {
      if (l.row.image === name && LIVE_STATES.has(l.row.state as SessionState)) return l.row.name;
    }
    return undefined;
  }

  // --- workstations -----------------------------------------------------------------------

  async join(
    name: string,
    ws: { id: string; name: string; mac: string; address: string },
    localAddress: string,
    open = false,
  ): Promise<JoinView> {
    const found = this.#live.get(name);
    const live = found ?? (open ? await this.#open(name) : this.#need(name));
    if (live.row.master === ws.id) {
      throw new ServerError(
        'E_SESSION_ROLE',
        `this workstation is the master of session ${name}: it sends its disk (img session ${name} master), it does not receive`,
        { session: name },
      );
    }
    const taskFor = live.row.origin === 'task' ? (JSON.parse(live.row.members) as string[])[0] : undefined;
    if (taskFor !== undefined && taskFor !== ws.id) {
      throw new ServerError(
        'E_NOT_QUALIFIED',
        `session ${name} is a one-off task for ${this.#brief(taskFor).name}; no other workstation joins it`,
        { session: name, workstation: ws.name },
      );
    }
    // A session workstations opened among themselves takes a new run when they come back to it.
    if (
      live.row.origin === 'workstation' &&
      ENDED_STATES.has(live.row.state as SessionState) &&
      (open || live.clients.has(ws.id))
    ) {
      await this.#reopen(live);
    }
    const state = live.row.state as SessionState;
    const had = live.clients.get(ws.id);
    if (state !== 'waiting') {
      // A workstation already in this run may ask again (a rerun after its own crash).
      if (had && state === 'sending') return this.joinView(name, ws.id, localAddress);
      throw new ServerError(
        'E_SESSION_STATE',
        state === 'sending'
          ? live.row.auto === 1
            ? `session ${name} is already sending and takes no new workstations; it reopens for a new run once this one ends`
            : `session ${name} is already sending and takes no new workstations; ask the administrator to restart it afterwards`
          : `session ${name} is ${state}${live.row.message ? ` (${live.row.message})` : ''}; ask the administrator to restart it`,
        { session: name, state, auto: live.row.auto === 1 },
      );
    }
    if (!had) {
      const now = this.#now();
      // A workstation the administrator has not named takes the session's next name, for good.
      const given =
        live.row.names && this.#o.assignName ? await this.#o.assignName(ws.id, live.row.names) : ws.name;
      const c: SessionClientTable = {
        session: name,
        run: live.row.run,
        workstation: ws.id,
        name: given,
        mac: ws.mac,
        address: ws.address,
        joined_at: now,
        state: 'joined',
        bytes: 0,
        total_bytes: 0,
        rate_mbit: 0,
        code: null,
        reason: null,
        finished_at: null,
      };
      live.clients.set(ws.id, c);
      live.row.last_join_at = now;
      await this.#o.db.insertInto('session_clients').values(c).execute();
      await this.#save(live);
      this.#o.log.info({ session: name, workstation: ws.name }, 'workstation joined');
      this.#changed(live, false);
      this.#tick();
    }
    return this.joinView(name, ws.id, localAddress);
  }

  /** What one workstation of the session sees; waits while nothing changed since `since` (long poll). */
  async wait(
    name: string,
    workstation: string,
    since: number,
    timeoutMs: number,
    localAddress: string,
  ): Promise<JoinView> {
    const live = this.#forWorkstation(name, workstation);
    if (live.version === since && !this.#closing && live.clients.has(workstation)) {
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          live.waiters.delete(done);
          resolve();
        };
        const timer = setTimeout(done, timeoutMs);
        live.waiters.add(done);
      });
    }
    return this.joinView(name, workstation, localAddress);
  }

  joinView(name: string, workstation: string, localAddress: string): JoinView {
    const live = this.#forWorkstation(name, workstation);
    const c = live.clients.get(workstation);
    const past = live.last?.clients.get(workstation);
    if (!c && past && live.last) {
      // The run it was in has ended (and the session reopened, or was deleted).
      return {
        session: name,
        run: live.last.run,
        state: live.last.state,
        joined: live.last.clients.size,
        needed: 0,
        startsInMs: null,
        message: past.reason ?? live.last.message,
        version: live.version,
        receiver: null,
      };
    }
    if (!c) {
      throw new ServerError(
        'E_NOT_JOINED',
        `this workstation has not joined session ${name} (run ${live.row.run})`,
        {
          session: name,
        },
      );
    }
    const trigger = this.#trigger(live);
    const master = live.row.master;
    // A master's sender listens only once its capture is under way: until it says so, wait.
    const sending =
      live.row.state === 'sending' &&
      live.key &&
      live.row.port !== null &&
      (master === null || live.master?.ready === true);
    const host = master !== null ? (live.master?.address ?? '') : (this.#o.senderHost ?? localAddress);
    return {
      session: name,
      run: live.row.run,
      state: live.row.state as SessionState,
      joined: live.clients.size,
      needed: live.row.state === 'waiting' ? trigger.needed : 0,
      startsInMs: live.row.state === 'waiting' ? trigger.startsInMs : null,
      message: c.reason ?? live.row.message ?? this.#waitingFor(live),
      version: live.version,
      receiver: sending
        ? {
            from: `${host.includes(':') ? `[${host}]` : host}:${live.row.port}`,
            key: live.key!,
            name: receiverName(c),
            image: master !== null ? `the disk of ${this.#brief(master).name}` : live.row.image,
            fileset: live.row.fileset,
          }
        : null,
      ...(sending && this.#o.identityOrder
        ? { identity: { ...this.#o.identityOrder(workstation), ...scriptsOf(live.row) } }
        : {}),
    };
  }

  async report(name: string, workstation: string, r: ClientReport): Promise<void> {
    const live = this.#forWorkstation(name, workstation);
    const c = live.clients.get(workstation);
    if (!c || r.run !== live.row.run) {
      throw new ServerError('E_NOT_JOINED', `this workstation is not in run ${r.run} of session ${name}`, {
        session: name,
        run: live.row.run,
      });
    }
    const final = FINAL_CLIENT.has(c.state as ClientState);
    if (!final && live.row.state === 'waiting') {
      throw new ServerError(
        'E_SESSION_STATE',
        `session ${name} has not started; there is nothing to report yet`,
        {
          session: name,
        },
      );
    }
    // What is on its disk now, whatever became of its result (a late report after a drop too).
    if (r.identity) await this.#o.onIdentity?.(workstation, r.identity, name, live.row.image);
    if (final) return;
    if (r.bytes !== undefined) c.bytes = r.bytes;
    if (r.totalBytes !== undefined) c.total_bytes = r.totalBytes;
    if (r.state === 'ok' || r.state === 'failed') {
      this.#finishClient(c, r.state, r.code ?? null, r.message ?? null);
      await this.#saveClient(c);
      if (r.state === 'ok') await this.#succeeded(name, workstation);
      this.#changed(live);
      await this.#maybeEnd(live);
    } else {
      c.state = r.state;
      live.dirty = true;
      this.#notify();
    }
  }

  // --- live masters -------------------------------------------------------------------------

  /**
   * `img session NAME master`: this workstation sends its disk to the session, read as it is
   * sent. It opens the session, or becomes the master of one that workstations opened while
   * waiting for it, or takes up its place as the master of an automatic session; a session that
   * ran before takes a new run. Its trigger: `clients` joined, or `waitMinutes` since the last
   * join, or, with neither, its start command alone.
   */
  async claimMaster(
    name: string,
    ws: { id: string; name: string; mac: string; address: string },
    req: MasterClaim,
    address: string,
  ): Promise<MasterView> {
    this.#masterConflict(name, ws.id);
    let live = this.#live.get(name);
    if (live && live.row.master === null && live.row.image !== '') {
      throw new ServerError(
        'E_SESSION_ROLE',
        `session ${name} sends the image ${live.row.image} from the server; join it as a client (img session ${name})`,
        { session: name },
      );
    }
    if (live && live.row.master !== null && live.row.master !== ws.id) {
      throw new ServerError(
        'E_SESSION_ROLE',
        `session ${name} already has a master: ${this.#brief(live.row.master).name}`,
        { session: name, master: this.#brief(live.row.master).name },
      );
    }
    if (live?.clients.has(ws.id) && LIVE_STATES.has(live.row.state as SessionState)) {
      throw new ServerError(
        'E_SESSION_ROLE',
        `this workstation joined session ${name} as a client; it cannot also be its master`,
        { session: name },
      );
    }
    live ??= await this.#open(name);
    if (live.row.state === 'sending') {
      // Its master came back mid-send (killed, rebooted): the sender it had is gone with it.
      live.remote?.reject(
        new ImgcastError('E_MASTER_LOST', `the master ${ws.name} started over while sending`),
      );
      await live.starting;
      if (live.row.state === 'sending')
        await this.#end(live, 'failed', `the master ${ws.name} started over while sending`);
    }
    if (ENDED_STATES.has(live.row.state as SessionState)) await this.#reopen(live);
    const row = live.row;
    row.master = ws.id;
    row.level = req.level ?? row.level;
    // An automatic session keeps the trigger its administrator gave it.
    if (row.auto !== 1) {
      row.origin = 'workstation';
      row.image = '';
      row.start_by =
        req.clients !== undefined && req.waitMinutes !== undefined
          ? 'count-or-time'
          : req.clients !== undefined
            ? 'count'
            : req.waitMinutes !== undefined
              ? 'time'
              : 'command';
      row.client_count = req.clients ?? 1;
      row.wait_ms = req.waitMinutes !== undefined ? Math.round(req.waitMinutes * 60_000) : 5 * 60_000;
    }
    live.master = { address: req.address ?? address, seenAt: this.#now(), ready: false };
    await this.#save(live);
    this.#o.log.info(
      { session: name, master: ws.name, address: live.master.address, startBy: row.start_by },
      'master connected',
    );
    this.#changed(live);
    this.#tick();
    return this.#masterView(live);
  }

  /** The master's long poll: returns once something changed since `since` (or after `timeoutMs`). */
  async masterWait(name: string, workstation: string, since: number, timeoutMs: number): Promise<MasterView> {
    const live = this.#asMaster(name, workstation);
    if (live.version === since && !this.#closing) {
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          live.waiters.delete(done);
          resolve();
        };
        const timer = setTimeout(done, timeoutMs);
        live.waiters.add(done);
      });
    }
    if (live.master) live.master.seenAt = this.#now();
    return this.#masterView(live);
  }

  /** What the master's sender says: it listens, how it goes, how it ended. */
  async masterReport(name: string, workstation: string, r: MasterReport): Promise<void> {
    const live = this.#asMaster(name, workstation);
    if (r.run !== live.row.run || live.row.state !== 'sending') {
      throw new ServerError(
        'E_SESSION_STATE',
        `session ${name} is ${live.row.state} in run ${live.row.run}; the master's report of run ${r.run} does not apply`,
        { session: name, run: live.row.run, state: live.row.state },
      );
    }
    const remote = live.remote;
    if (r.phase === 'listening') {
      if (!live.master!.ready) {
        live.master!.ready = true;
        this.#changed(live);
      }
      return;
    }
    const receivers = (r.receivers ?? []).map((x) => ({
      name: x.name,
      state: x.state,
      bytes: x.bytes,
      totalBytes: x.totalBytes,
      rateMbit: x.rateMbit ?? 0,
      code: x.code ?? null,
      reason: x.reason ?? null,
    }));
    if (r.phase === 'failed') {
      remote?.reject(
        new ImgcastError(r.code ?? 'E_MASTER_FAILED', r.message ?? 'the master failed', { receivers }),
      );
    } else if (r.phase === 'done') {
      remote?.onProgress({ phase: 'done', bytesSent: r.bytesSent ?? 0, receivers });
      remote?.resolve({ receivers });
    } else {
      remote?.onProgress({ phase: r.phase, bytesSent: r.bytesSent ?? 0, receivers });
    }
  }

  #asMaster(name: string, workstation: string): Live {
    const live = this.#need(name);
    if (live.row.master !== workstation || !live.master) {
      throw new ServerError(
        'E_SESSION_ROLE',
        `this workstation is not the master of session ${name}${live.row.master === null ? '' : ` (${this.#brief(live.row.master).name} is)`}; run img session ${name} master first`,
        { session: name },
      );
    }
    live.master.seenAt = this.#now();
    return live;
  }

  /** A workstation masters one session at a time, and never one while it takes part in another. */
  #masterConflict(name: string, workstation: string): void {
    for (const l of this.#live.values()) {
      if (l.row.name === name || !LIVE_STATES.has(l.row.state as SessionState)) continue;
      const why =
        l.row.master === workstation && l.master
          ? 'is the master of'
          : l.clients.has(workstation)
            ? 'takes part in'
            : null;
      if (why) {
        throw new ServerError(
          'E_MASTER_CONFLICT',
          `this workstation ${why} session ${l.row.name} (${l.row.state}); it cannot be the master of ${name} too`,
          { session: name, conflict: l.row.name },
        );
      }
    }
  }

  /** The run's send, done by the master's sender: its reports drive it; its silence ends it. */
  #remoteSend(live: Live, plan: SendPlan): Promise<SendOutcome> {
    return new Promise<SendOutcome>((resolve, reject) => {
      const lostMs = this.#o.masterLostMs ?? 30_000;
      const watchdog = setInterval(
        () => {
          if (live.master && this.#now() - live.master.seenAt > lostMs) {
            settle(
              new ImgcastError(
                'E_MASTER_LOST',
                `the master ${this.#brief(live.row.master ?? '').name} stopped answering the server for ${Math.round(lostMs / 1000)} s`,
              ),
            );
          }
        },
        Math.min(1000, lostMs),
      );
      const onAbort = () => settle(plan.signal.reason);
      const settle = (err: unknown, outcome?: SendOutcome) => {
        clearInterval(watchdog);
        plan.signal.removeEventListener('abort', onAbort);
        if (live.remote === remote) live.remote = undefined;
        if (outcome) resolve(outcome);
        else reject(err);
      };
      const remote = {
        resolve: (o: SendOutcome) => settle(null, o),
        reject: (err: unknown) => settle(err),
        onProgress: plan.onProgress,
      };
      live.remote = remote;
      if (plan.signal.aborted) return onAbort();
      plan.signal.addEventListener('abort', onAbort);
    });
  }

  #masterView(live: Live): MasterView {
    const r = live.row;
    const t = this.#trigger(live);
    const waiting = r.state === 'waiting';
    return {
      session: r.name,
      run: r.run,
      state: r.state as SessionState,
      startBy: r.start_by as StartBy,
      clientCount: r.client_count,
      waitMs: Number(r.wait_ms),
      joined: live.clients.size,
      needed: waiting ? t.needed : 0,
      startsInMs: waiting ? t.startsInMs : null,
      level: this.#level(r),
      message: r.message ?? this.#waitingFor(live),
      version: live.version,
      clients: [...live.clients.values()].sort((a, b) => a.joined_at - b.joined_at).map((c) => clientView(c)),
      send:
        r.state === 'sending' && live.key && r.group_addr !== null && r.port !== null && live.remote
          ? { group: r.group_addr, port: r.port, key: live.key, clients: live.clients.size }
          : null,
    };
  }

  /** Why a waiting session cannot start yet, whatever its trigger says; null when it can. */
  #cannotStart(live: Live): string | null {
    const master = live.row.master;
    if (master === null) {
      return live.row.image === ''
        ? `it has no master yet: run img session ${live.row.name} master on the workstation to copy, or imgcast mcast ${live.row.name} -p IMAGE on the server`
        : null;
    }
    if (!live.master || this.#now() - live.master.seenAt > (this.#o.masterPresentMs ?? 60_000)) {
      return `its master ${this.#brief(master).name} is not connected (img session ${live.row.name} master, or img auto, on it)`;
    }
    return null;
  }

  /** What a waiting session waits for, said to its workstations when nothing else is to be said. */
  #waitingFor(live: Live): string | null {
    if (live.row.state !== 'waiting') return null;
    const blocked = this.#cannotStart(live);
    if (blocked !== null) return `waiting: ${blocked}`;
    if (live.row.start_by === 'command') {
      return `waiting for the master to start the session (img session start ${live.row.name})`;
    }
    return null;
  }

  #brief(id: string): WorkstationBrief {
    return (this.#o.describeWorkstation ?? macBrief)(id);
  }

  #masterInfo(live: Live): SessionMaster | null {
    const id = live.row.master;
    if (id === null) return null;
    const b = this.#brief(id);
    const present = !!live.master && this.#now() - live.master.seenAt <= (this.#o.masterPresentMs ?? 60_000);
    return {
      workstation: id,
      name: b.name,
      mac: b.mac,
      present,
      address: live.master?.address ?? null,
      level: this.#level(live.row),
    };
  }

  // --- internals ----------------------------------------------------------------------------

  #need(name: string): Live {
    const live = this.#live.get(name);
    if (!live) throw new ServerError('E_SESSION_UNKNOWN', `no session named ${name}`, { session: name });
    return live;
  }

  /** The session a workstation's wait or report is about: the live one, or one deleted after its run. */
  #forWorkstation(name: string, workstation: string): Live {
    const live = this.#live.get(name);
    const inRun = (l: Live | undefined) =>
      !!l && (l.clients.has(workstation) || !!l.last?.clients.has(workstation));
    if (live && inRun(live)) return live;
    const gone = this.#gone.get(name);
    if (gone && inRun(gone)) return gone;
    return this.#need(name);
  }

  #trigger(live: Live) {
    return startTrigger({
      clientCount: live.row.client_count,
      waitMs: live.row.wait_ms,
      by: live.row.start_by as StartBy,
      joined: live.clients.size,
      lastJoinAt: live.row.last_join_at === null ? null : Number(live.row.last_join_at),
      now: this.#now(),
    });
  }

  #tick(): void {
    if (this.#closing) return;
    let slotFree = this.#freeSlot() !== null;
    for (const live of this.#live.values()) {
      const w = live.warm;
      const action = warmAction({
        capable: this.#o.warm === true,
        state: live.row.state,
        master: live.row.master,
        image: live.row.image,
        fileset: live.row.fileset,
        joined: live.clients.size,
        warm: w ? { image: w.image, fileset: w.fileset } : null,
        readiedThisRun: live.warmRun === live.row.run,
        slotFree,
        othersWarm: this.#warms.size - (w ? 1 : 0),
      });
      if (action === 'drop') this.#dropWarm(live, 'the session no longer sends what it read');
      if (action === 'ready') {
        this.#readyWarm(live);
        slotFree = this.#freeSlot() !== null;
      }
      if (live.row.state !== 'waiting' || this.#cannotStart(live) !== null) continue;
      const t = this.#trigger(live);
      if (t.start) {
        void this.#startSending(
          live,
          t.why === 'count' ? `${live.clients.size} joined` : 'wait elapsed',
        ).catch((err: unknown) =>
          this.#o.log.warn({ session: live.row.name, err }, 'session failed to start'),
        );
      }
    }
  }

  /**
   * Joins, the trigger's ticks and `startNow` call this without waiting for one another; the
   * image lookup awaits, so one start is in flight per session at a time (later callers share
   * it), and the slot is taken in the same synchronous stretch as the state change, so two
   * sessions starting at once never get one group and port.
   */
  #startSending(live: Live, why: string): Promise<void> {
    if (live.row.state !== 'waiting') return Promise.resolve();
    live.starting ??= this.#start(live, why).finally(() => (live.starting = undefined));
    return live.starting;
  }

  #freeSlot(): ReturnType<typeof allocate> {
    const taken = new Set<number>();
    for (const l of this.#live.values())
      if (l.slot !== undefined && l.row.state === 'sending') taken.add(l.slot);
    for (const w of this.#warms) taken.add(w.slot);
    return allocate(this.#o.range, taken);
  }

  /**
   * Readies the session's sender on a slot of its own, held by a gate until the trigger: the
   * image opened, its table read, the sockets and sending thread up, listening. It ends by
   * itself only if readying fails (its session then starts at the trigger as without it).
   */
  #readyWarm(live: Live): void {
    const address = this.#freeSlot();
    if (!address) return;
    const name = live.row.name;
    let open: (clients: number) => void = () => {};
    const gate = new Promise<{ clients: number }>((resolve) => (open = (clients) => resolve({ clients })));
    const warm: Warm = {
      slot: address.slot,
      group: address.group,
      port: address.port,
      key: randomBytes(16).toString('hex'),
      image: live.row.image,
      fileset: live.row.fileset,
      abort: new AbortController(),
      open: (clients) => open(clients),
      onProgress: () => {},
      result: Promise.resolve({ receivers: [] }),
    };
    warm.result = (async () => {
      const image = await this.#o.images.resolve(warm.image);
      return this.#o.send({
        imagePath: image.path,
        fileset: warm.fileset,
        group: warm.group,
        port: warm.port,
        key: warm.key,
        clients: 1,
        gate,
        signal: warm.abort.signal,
        log: (line) => this.#o.log.info({ session: name }, line),
        onProgress: (p) => warm.onProgress(p),
      });
    })();
    this.#warms.add(warm);
    live.warm = warm;
    live.warmRun = live.row.run;
    const ended = (err: unknown) => {
      this.#warms.delete(warm);
      if (live.warm !== warm) return;
      // Ended before its trigger: readying failed.
      live.warm = undefined;
      this.#o.log.warn(
        { session: name, err },
        'the sender readied for the trigger ended; the session starts its sender at the trigger',
      );
    };
    warm.result.then(
      () => ended(null),
      (err: unknown) => ended(err),
    );
    this.#o.log.info({ session: name, group: warm.group, port: warm.port }, 'sender readied for the trigger');
  }

  /** Stops the session's warm sender; its slot is free once it has closed. */
  #dropWarm(live: Live, why: string): void {
    const warm = live.warm;
    if (!warm) return;
    live.warm = undefined;
    warm.abort.abort(new ImgcastError('E_ABORTED', why));
  }

  /** A session that must start and finds no free slot takes one from another session's warm sender. */
  #giveWay(to: Live): void {
    for (const l of this.#live.values()) {
      if (l !== to && l.warm) {
        this.#dropWarm(l, `its group and port went to session ${to.row.name}, which started`);
        return;
      }
    }
  }

  #noSlot(live: Live): void {
    // Stays waiting: it starts when another session frees its group and port.
    if (live.row.message === null) {
      live.row.message = 'waiting for a free multicast group and port: every slot of the range is sending';
      this.#changed(live);
    }
  }

  async #start(live: Live, why: string): Promise<void> {
    const warm = live.warm;
    if (warm && warm.image === live.row.image && warm.fileset === live.row.fileset) {
      live.warm = undefined;
      const { slot, group, port, key, abort } = warm;
      return this.#begin(live, { slot, group, port, key, abort, why, imagePath: '', warm });
    }
    this.#dropWarm(live, 'the session no longer sends what it read');
    // Checked first so that a session waiting for a slot does not look its image up on every tick.
    if (!this.#freeSlot()) {
      this.#giveWay(live);
      return this.#noSlot(live);
    }
    let imagePath = '';
    try {
      if (live.row.master === null) imagePath = (await this.#o.images.resolve(live.row.image)).path;
    } catch (err) {
      if (live.row.state !== 'waiting') return;
      for (const c of live.clients.values())
        this.#finishClient(c, 'failed', 'E_IMAGE_UNKNOWN', 'the image is gone');
      await this.#end(live, 'failed', `cannot start: ${(err as Error).message}`);
      return;
    }
    // Stopped or deleted while the image was looked up.
    if (live.row.state !== 'waiting' || this.#closing) return;
    const address = this.#freeSlot();
    if (!address) {
      this.#giveWay(live);
      return this.#noSlot(live);
    }
    await this.#begin(live, {
      ...address,
      key: randomBytes(16).toString('hex'),
      abort: new AbortController(),
      why,
      imagePath,
    });
  }

  /** The session sends from now on: on the sender readied for it, or on one started now. */
  async #begin(
    live: Live,
    s: {
      slot: number;
      group: string;
      port: number;
      key: string;
      abort: AbortController;
      why: string;
      imagePath: string;
      warm?: Warm;
    },
  ): Promise<void> {
    live.slot = s.slot;
    live.key = s.key;
    live.abort = s.abort;
    live.sendEnded = false;
    Object.assign(live.row, {
      state: 'sending',
      group_addr: s.group,
      port: s.port,
      started_at: this.#now(),
      first_data_at: null,
      message: null,
    });
    await this.#save(live);
    this.#o.log.info(
      {
        session: live.row.name,
        run: live.row.run,
        group: s.group,
        port: s.port,
        clients: live.clients.size,
        why: s.why,
        warm: s.warm !== undefined,
      },
      'session sending',
    );
    const run = this.#runSend(live, s.imagePath, s.group, s.port, s.warm).finally(() =>
      this.#running.delete(run),
    );
    this.#running.add(run);
    this.#changed(live);
  }

  async #runSend(live: Live, imagePath: string, group: string, port: number, warm?: Warm): Promise<void> {
    const abort = live.abort!;
    const byName = new Map([...live.clients.values()].map((c) => [receiverName(c), c]));
    // Workstations that joined but never reach the sender must not hold the others forever.
    const noShow = setTimeout(() => {
      if (!started)
        abort.abort(new ImgcastError('E_NO_RECEIVERS', 'no joined workstation connected to the sender'));
    }, this.#o.connectTimeoutMs ?? 60_000);
    let started = false;
    let result: SendOutcome | undefined;
    let failure: unknown;
    const send: SendSession = warm
      ? (plan) => {
          warm.onProgress = plan.onProgress;
          warm.open(plan.clients);
          return warm.result;
        }
      : live.row.master !== null
        ? (plan) => this.#remoteSend(live, plan)
        : this.#o.send;
    try {
      result = await send({
        imagePath,
        fileset: live.row.fileset,
        group,
        port,
        key: live.key!,
        clients: live.clients.size,
        signal: abort.signal,
        log: (line) => this.#o.log.info({ session: live.row.name }, line),
        onProgress: (p) => {
          if (p.phase !== 'waiting') started = true;
          this.#progress(live, byName, p);
        },
      });
    } catch (err) {
      failure = err;
    } finally {
      clearTimeout(noShow);
    }
    live.sendEnded = true;
    if (live.row.state !== 'sending') return; // stopped by the administrator: already recorded
    if (this.#closing) return; // left 'sending' for the next start to mark interrupted
    for (const r of result?.receivers ?? []) {
      const c = byName.get(r.name);
      if (!c || FINAL_CLIENT.has(c.state as ClientState)) continue;
      c.bytes = r.bytes;
      c.total_bytes = r.totalBytes;
      c.rate_mbit = r.rateMbit;
      if (r.state === 'dropped' || r.state === 'failed') this.#finishClient(c, 'dropped', r.code, r.reason);
      else if (r.state === 'ok') c.state = 'writing';
    }
    const why =
      failure instanceof Error
        ? failure.message
        : abort.signal.aborted
          ? (abort.signal.reason as Error).message
          : null;
    for (const c of live.clients.values()) {
      if (c.state === 'joined' || (c.state === 'receiving' && !result)) {
        this.#finishClient(c, 'failed', 'E_NOT_CONNECTED', why ?? 'never connected to the sender');
      }
    }
    for (const c of live.clients.values()) await this.#saveClient(c);
    this.#changed(live);
    if (failure && ![...live.clients.values()].some((c) => !FINAL_CLIENT.has(c.state as ClientState))) {
      await this.#end(live, 'failed', `the sender failed: ${why}`);
      return;
    }
    // Workstations still writing or verifying report their result themselves; wait a while for it.
    live.reportTimer = setTimeout(
      () => {
        void (async () => {
          for (const c of live.clients.values()) {
            if (!FINAL_CLIENT.has(c.state as ClientState)) {
              this.#finishClient(
                c,
                'failed',
                'E_NO_REPORT',
                'received everything but never reported its result',
              );
            }
          }
          await this.#maybeEnd(live);
        })();
      },
      this.#o.reportTimeoutMs ?? 10 * 60_000,
    );
    live.reportTimer.unref();
    await this.#maybeEnd(live);
  }

  #progress(
    live: Live,
    byName: Map<string, SessionClientTable & { rateAt?: number; rateBytes?: number }>,
    p: SendProgress,
  ) {
    const now = this.#now();
    if (live.row.first_data_at === null && p.phase !== 'waiting' && p.bytesSent > 0)
      live.row.first_data_at = now;
    for (const r of p.receivers) {
      const c = byName.get(r.name);
      if (!c || FINAL_CLIENT.has(c.state as ClientState)) continue;
      if (c.state === 'joined' && (r.state === 'receiving' || r.state === 'waiting')) c.state = 'receiving';
      if (c.rateAt === undefined) {
        c.rateAt = now;
        c.rateBytes = r.bytes;
      } else if (now - c.rateAt >= 1000) {
        const mbit = ((r.bytes - (c.rateBytes ?? 0)) * 8) / 1e6 / ((now - c.rateAt) / 1000);
        c.rate_mbit = Math.round((c.rate_mbit ? 0.5 * c.rate_mbit + 0.5 * mbit : mbit) * 10) / 10;
        c.rateAt = now;
        c.rateBytes = r.bytes;
      }
      c.bytes = r.bytes;
      c.total_bytes = r.totalBytes;
    }
    live.dirty = true;
    this.#notify();
  }

  #finishClient(c: SessionClientTable, state: ClientState, code: string | null, reason: string | null): void {
    c.state = state;
    c.code = code;
    c.reason = reason;
    c.finished_at = this.#now();
    if (state === 'ok') {
      c.bytes = c.total_bytes;
      this.#o.counters.add('imagesSent');
    } else {
      this.#o.counters.add('errors');
    }
  }

  async #maybeEnd(live: Live): Promise<void> {
    if (live.row.state !== 'sending' || !live.sendEnded) return;
    const clients = [...live.clients.values()];
    if (clients.some((c) => !FINAL_CLIENT.has(c.state as ClientState))) return;
    clearTimeout(live.reportTimer);
    const bad = clients.filter((c) => c.state !== 'ok');
    await this.#end(
      live,
      bad.length === 0 ? 'done' : 'failed',
      bad.length === 0 ? null : `${bad.length} of ${clients.length} workstation(s) failed`,
    );
  }

  async #end(live: Live, state: SessionState, message: string | null): Promise<void> {
    // A run stopped while its workstations wrote must not have their results timed out in the next run.
    clearTimeout(live.reportTimer);
    if (live.master) live.master.ready = false;
    this.#dropWarm(live, `session ${state}`);
    live.row.state = state;
    live.row.message = message;
    live.row.finished_at = this.#now();
    live.slot = undefined;
    live.key = undefined;
    await this.#save(live);
    for (const c of live.clients.values()) await this.#saveClient(c);
    const view = this.#view(live);
    await this.#o.db
      .insertInto('history')
      .values({
        session: live.row.name,
        run: live.row.run,
        image: live.row.image,
        fileset: live.row.fileset,
        state,
        started_at: live.row.started_at,
        finished_at: live.row.finished_at,
        message,
        clients: JSON.stringify(view.clients),
      })
      .execute();
    this.#o.log.info({ session: live.row.name, run: live.row.run, state, message }, 'session ended');
    // The master of a run every workstation took is done too: its next network boot goes to its
    // disk (boot-decision.ts), like its clients'. A run that failed somewhere leaves it due.
    if (state === 'done' && live.row.master !== null && live.row.started_at !== null)
      await this.#succeeded(live.row.name, live.row.master);
    this.#changed(live);
    // A run of an automatic session that sent has finished: it goes, or takes the next workstations.
    // A task is done once its run succeeds; a failed one stays queued, saying why.
    const task = live.row.origin === 'task';
    if (
      (live.row.auto === 1 || task) &&
      (state === 'done' || state === 'failed') &&
      live.row.started_at !== null
    ) {
      if (this.#closing) return;
      if (task && state === 'failed') {
        const why = [...live.clients.values()].find((c) => c.state !== 'ok')?.reason ?? message;
        await this.#reopen(live);
        live.row.message = `queued again: the last run failed${why ? `: ${why}` : ''}`;
        await this.#save(live);
        this.#changed(live);
      } else if (live.row.delete_when_done === 1) {
        live.last = { run: live.row.run, state, message, clients: live.clients };
        live.clients = new Map();
        await this.#remove(live);
        this.#changed(live);
      } else {
        await this.#reopen(live);
      }
    }
  }

  /**
   * Wakes the workstations waiting on the session. A change of state wakes them at once; a new
   * join only changes their "N joined" line, so joins wake them at most once a second: a lab of
   * hundreds booting together must not cost hundreds of answers per join.
   */
  #changed(live: Live, urgent = true): void {
    live.version++;
    this.#notify();
    if (!urgent) {
      live.wakeTimer ??= setTimeout(() => this.#wake(live), 1000);
      return;
    }
    this.#wake(live);
  }

  #wake(live: Live): void {
    clearTimeout(live.wakeTimer);
    live.wakeTimer = undefined;
    for (const w of [...live.waiters]) w();
  }

  async #save(live: Live): Promise<void> {
    const { name, ...rest } = live.row;
    await this.#o.db.updateTable('sessions').set(rest).where('name', '=', name).execute();
  }

  async #saveClient(c: SessionClientTable & { rateAt?: number; rateBytes?: number }): Promise<void> {
    const { session, run, workstation, rateAt: _a, rateBytes: _b, ...rest } = c;
    await this.#o.db
      .updateTable('session_clients')
      .set(rest)
      .where('session', '=', session)
      .where('run', '=', run)
      .where('workstation', '=', workstation)
      .execute();
  }

  async #flushProgress(): Promise<void> {
    for (const live of this.#live.values()) {
      if (!live.dirty || !this.#live.has(live.row.name)) continue;
      live.dirty = false;
      try {
        // One transaction: one commit for a whole lab's progress instead of one per workstation.
        await this.#o.db.transaction().execute(async (tx) => {
          for (const c of live.clients.values()) {
            await tx
              .updateTable('session_clients')
              .set({ state: c.state, bytes: c.bytes, total_bytes: c.total_bytes, rate_mbit: c.rate_mbit })
              .where('session', '=', c.session)
              .where('run', '=', c.run)
              .where('workstation', '=', c.workstation)
              .execute();
          }
        });
      } catch (err) {
        this.#o.log.warn({ session: live.row.name, err }, 'could not save progress');
      }
    }
  }

  #view(live: Live): Session {
    const r = live.row;
    const t = this.#trigger(live);
    const waiting = r.state === 'waiting';
    const clients = [...live.clients.values()]
      .sort((a, b) => a.joined_at - b.joined_at)
      .map((c) => clientView(c));
    return {
      name: r.name,
      origin: r.origin === 'workstation' || r.origin === 'task' ? r.origin : 'server',
      startBy: r.start_by as StartBy,
      master: this.#masterInfo(live),
      names: r.names,
      scripts: (JSON.parse(r.scripts) as PostImagingScript[]).map((x) => x.name),
      image: r.image,
      fileset: r.fileset,
      clientCount: r.client_count,
      waitMs: Number(r.wait_ms),
      state: r.state as SessionState,
      run: r.run,
      joined: live.clients.size,
      needed: waiting ? t.needed : 0,
      startsInMs: waiting ? t.startsInMs : null,
      group: r.group_addr,
      port: r.port,
      createdAt: Number(r.created_at),
      startedAt: r.started_at === null ? null : Number(r.started_at),
      firstDataAt: r.first_data_at === null ? null : Number(r.first_data_at),
      finishedAt: r.finished_at === null ? null : Number(r.finished_at),
      message: r.message ?? this.#waitingFor(live),
      rateMbit: Math.round(
        clients.filter((c) => c.state === 'receiving').reduce((m, c) => Math.max(m, c.rateMbit), 0),
      ),
      clients,
      auto: r.auto === 1 ? this.#autoView(live) : null,
    };
  }

  #autoView(live: Live): AutoDefinition {
    const d = definitionOf(live);
    const brief = this.#o.describeWorkstation ?? macBrief;
    return {
      enabled: d.enabled,
      position: this.#autoLives().indexOf(live) + 1,
      master: d.master === null ? null : brief(d.master),
      deleteWhenDone: d.deleteWhenDone,
      members: d.members.map(brief),
      rules: live.rules.map((r) => ({ text: r.text, description: r.description, valid: r.rule !== null })),
    };
  }
}

/** The session that carries out a workstation's one-off task. */
export function taskSession(workstation: string): string {
  return `task-${workstation}`;
}

/** The template as stored, or E_BAD_REQUEST saying where it is wrong. */
function checkTemplate(text: string | undefined): string | null {
  if (text === undefined) return null;
  try {
    parseNameTemplate(text);
    return text;
  } catch (err) {
    const e = err as TemplateError;
    throw new ServerError('E_BAD_REQUEST', `naming template ${text}: ${e.message}`, {
      template: text,
      position: e.position,
    });
  }
}

/** A session's scripts, for the identity order; none: nothing to add. */
function scriptsOf(row: SessionTable): { scripts?: PostImagingScript[] } {
  const scripts = JSON.parse(row.scripts) as PostImagingScript[];
  return scripts.length > 0 ? { scripts } : {};
}

/** A session workstations opened and wait in, which no master has taken yet. */
function isGathering(live: Live): boolean {
  return (
    live.row.origin === 'workstation' &&
    live.row.master === null &&
    live.row.image === '' &&
    live.row.state === 'waiting'
  );
}

function macBrief(id: string): WorkstationBrief {
  const mac = id.replace(/(..)(?!$)/g, '$1:');
  return { id, name: mac, mac };
}

function parseRules(json: string): ParsedRule[] {
  return (JSON.parse(json) as string[]).map((text) => {
    try {
      const rule = parseRule(text);
      return { text, rule, description: describeRule(rule) };
    } catch (err) {
      return { text, rule: null, description: `does not parse: ${(err as Error).message.split('\n')[0]}` };
    }
  });
}

function definitionOf(live: Live): Definition {
  const r = live.row;
  return {
    name: r.name,
    state: r.state as SessionState,
    position: r.position ?? 0,
    enabled: r.enabled === 1,
    master: r.master,
    deleteWhenDone: r.delete_when_done === 1,
    members: JSON.parse(r.members) as string[],
    rules: live.rules.map((x) => x.text),
    parsed: live.rules.flatMap((x) => (x.rule ? [x.rule] : [])),
  };
}

/** The name a workstation gives the sender: unique even for machines cloned with one hostname. */
function receiverName(c: SessionClientTable): string {
  return `${c.name}/${c.mac}`;
}

function clientView(c: SessionClientTable): SessionClient {
  const left = Math.max(0, Number(c.total_bytes) - Number(c.bytes));
  return {
    workstation: c.workstation,
    name: c.name,
    mac: c.mac,
    address: c.address,
    joinedAt: Number(c.joined_at),
    state: c.state as ClientState,
    bytes: Number(c.bytes),
    totalBytes: Number(c.total_bytes),
    rateMbit: c.rate_mbit,
    etaMs:
      c.state === 'receiving' && c.rate_mbit > 0
        ? Math.round(((left * 8) / (c.rate_mbit * 1e6)) * 1000)
        : null,
    code: c.code,
    reason: c.reason,
    finishedAt: c.finished_at === null ? null : Number(c.finished_at),
  };
}

function waitMs(r: { waitMinutes?: number; waitSeconds?: number }): number | undefined {
  if (r.waitSeconds !== undefined) return Math.round(r.waitSeconds * 1000);
  if (r.waitMinutes !== undefined) return Math.round(r.waitMinutes * 60_000);
  return undefined;
}

/** A new session's row: waiting for its first run, a plain one-client session unless `own` says otherwise. */
/** The answer to a workstation that asked this server for a session another server of the site runs. */
export function referral(other: Elsewhere, cause?: unknown): ServerError {
  const down = other.state === 'up' ? '' : ` (${other.state} now: start it, or ask the administrator)`;
  return new ServerError(
    'E_REFERRED',
    `session ${other.session} runs on imaging server ${other.server} at ${other.url}${down}`,
    { session: other.session, server: other.server, url: other.url, state: other.state },
    cause === undefined ? undefined : { cause },
  );
}

/** A new session's row: the defaults, then what this kind of session sets (`own`). */
export function newRow(
  name: string,
  now: number,
  own: Partial<SessionTable> & Pick<SessionTable, 'origin' | 'start_by' | 'server'>,
): SessionTable {
  return {
    name,
    image: '',
    fileset: 1,
    client_count: 1,
    wait_ms: 0,
    state: 'waiting',
    run: 1,
    group_addr: null,
    port: null,
    created_at: now,
    started_at: null,
    finished_at: null,
    last_join_at: null,
    message: null,
    first_data_at: null,
    auto: 0,
    enabled: 1,
    position: null,
    master: null,
    delete_when_done: 0,
    members: '[]',
    rules: '[]',
    level: null,
    names: null,
    scripts: '[]',
    defined_at: now,
    ...own,
  };
}
