/**
 * Automatic sessions: the definitions the administrator writes (who takes part, in which order,
 * with which master) checked against the workstation registry, and the answer a workstation
 * gets when it asks what to do (`img auto`). The sessions themselves, their runs and their
 * state are the SessionManager's; the choice and the master constraints are participation.ts's.
 *
 * Every change of a definition is checked and then written, one change at a time: a check that
 * awaited (an image lookup) must not let another change slip in between and bring back the
 * conflict it refused. A refused change changes nothing.
 */
import type {
  AutoChoice,
  CreateAutoSession,
  EditSession,
  JoinView,
  RuleCheckResult,
  Session,
} from '../api/schemas.ts';
import { ServerError } from './errors.ts';
import {
  chooseSession,
  chooseWork,
  masterConflict,
  moveDown,
  moveUp,
  type AutoSessionView,
  type Candidate,
  type Choice,
  type SessionParticipants,
  type TaskView,
} from './participation.ts';
import { describeRule, matches, parseRule, type Rule } from './rules.ts';
import type { SessionManager } from './sessions.ts';
import type { WorkstationIdentity, Workstations } from './workstations.ts';

const MAX_RULES = 1000;

/** The trigger a new automatic session takes when it gives none (the administrator's settings). */
export interface AutoDefaults {
  clients: number;
  waitMinutes: number;
}

export class AutoSessions {
  #sessions: SessionManager;
  #workstations: Workstations;
  #queue: Promise<unknown> = Promise.resolve();
  #defaults: () => AutoDefaults;

  /** `defaults` is read at each create; without it, the specification's 5 clients or 15 minutes. */
  constructor(sessions: SessionManager, workstations: Workstations, defaults?: () => AutoDefaults) {
    this.#sessions = sessions;
    this.#workstations = workstations;
    this.#defaults = defaults ?? (() => ({ clients: 5, waitMinutes: 15 }));
  }

  /** The automatic sessions in list order. */
  list(): Session[] {
    return this.#sessions.autoSessions();
  }

  create(req: CreateAutoSession): Promise<Session> {
    return this.#serial(async () => {
      if ((req.image === undefined) === (req.master === undefined)) {
        throw new ServerError(
          'E_BAD_REQUEST',
          'an automatic session sends an image or the disk of a master workstation: give one of image and master',
        );
      }
      if (req.waitMinutes !== undefined && req.waitSeconds !== undefined)
        throw new ServerError('E_BAD_REQUEST', 'give waitMinutes or waitSeconds, not both');
      const rules = req.rules ?? [];
      for (const [i, text] of rules.entries()) checkRule(text, rules.length > 1 ? i + 1 : undefined);
      const master = req.master === undefined ? null : this.#workstations.resolve(req.master);
      const members = this.#resolveAll(req.include ?? []);
      this.#noConflict({ name: req.name, ...(master !== null ? { master } : {}), explicit: members });
      const defaults = this.#defaults();
      const wait =
        req.waitSeconds !== undefined || req.waitMinutes !== undefined
          ? { waitSeconds: req.waitSeconds, waitMinutes: req.waitMinutes }
          : { waitMinutes: defaults.waitMinutes };
      return this.#sessions.create(
        {
          name: req.name,
          image: req.image ?? '',
          fileset: req.fileset,
          clientCount: req.clientCount ?? defaults.clients,
          ...wait,
          names: req.names,
          scripts: req.scripts,
        },
        {
          enabled: req.enabled ?? true,
          master,
          deleteWhenDone: req.deleteWhenDone ?? false,
          members,
          rules,
        },
      );
    });
  }

  /** Any session's trigger and image; an automatic one's master and delete-when-done too. */
  edit(name: string, req: EditSession): Promise<Session> {
    return this.#serial(async () => {
      if (req.waitMinutes !== undefined && req.waitSeconds !== undefined)
        throw new ServerError('E_BAD_REQUEST', 'give waitMinutes or waitSeconds, not both');
      if (
        Object.values(req).every((v) => v === undefined) // an empty edit is a mistake worth saying
      ) {
        throw new ServerError('E_BAD_REQUEST', 'nothing to change');
      }
      if (req.master === undefined) return this.#sessions.edit(name, req);
      const d = this.#sessions.definition(name);
      const master = this.#workstations.resolve(req.master);
      this.#noConflict({ name, master, explicit: d.members });
      return this.#sessions.edit(name, { ...req, master });
    });
  }

  setEnabled(name: string, enabled: boolean): Promise<Session> {
    return this.#serial(async () => {
      this.#sessions.definition(name);
      return this.#sessions.define(name, { enabled });
    });
  }

  /** One place earlier (`up`) or later in the list; the first stays first, the last last. */
  move(name: string, way: 'up' | 'down'): Promise<Session> {
    return this.#serial(async () => {
      this.#sessions.definition(name);
      const order = this.#sessions.autoViews().map((s) => s.name);
      await this.#sessions.reorder(way === 'up' ? moveUp(order, name) : moveDown(order, name));
      return this.#sessions.get(name);
    });
  }

  include(name: string, refs: readonly string[]): Promise<Session> {
    return this.#serial(async () => {
      const d = this.#sessions.definition(name);
      const members = [...new Set([...d.members, ...this.#resolveAll(refs)])];
      this.#noConflict({ name, ...(d.master !== null ? { master: d.master } : {}), explicit: members });
      return this.#sessions.define(name, { members });
    });
  }

  exclude(name: string, refs: readonly string[]): Promise<Session> {
    return this.#serial(async () => {
      const d = this.#sessions.definition(name);
      const ids = this.#resolveAll(refs);
      const absent = refs.filter((_, i) => !d.members.includes(ids[i]!));
      if (absent.length > 0) {
        throw new ServerError(
          'E_BAD_REQUEST',
          `${absent.join(', ')} ${absent.length === 1 ? 'is' : 'are'} not listed in ${name}${d.members.length === 0 ? ' (it lists no workstation)' : ''}; nothing was changed`,
          { session: name, workstations: absent },
        );
      }
      return this.#sessions.define(name, { members: d.members.filter((m) => !ids.includes(m)) });
    });
  }

  addRule(name: string, text: string): Promise<Session> {
    return this.#serial(async () => {
      const d = this.#sessions.definition(name);
      checkRule(text);
      if (d.rules.length >= MAX_RULES)
        throw new ServerError(
          'E_BAD_REQUEST',
          `${name} has ${MAX_RULES} rules already, the most a session takes`,
        );
      return this.#sessions.define(name, { rules: [...d.rules, text] });
    });
  }

  /** Removes rule `n` (from 1, as `rule list` numbers them). */
  removeRule(name: string, n: number): Promise<Session> {
    return this.#serial(async () => {
      const d = this.#sessions.definition(name);
      if (n < 1 || n > d.rules.length) {
        throw new ServerError(
          'E_BAD_REQUEST',
          d.rules.length === 0
            ? `${name} has no rules`
            : `${name} has ${d.rules.length} rule(s), numbered 1 to ${d.rules.length}; there is no rule ${n}`,
          { session: name, rules: d.rules.length },
        );
      }
      return this.#sessions.define(name, { rules: d.rules.filter((_, i) => i !== n - 1) });
    });
  }

  /**
   * A rule as the console's editor checks it while it is typed: how the server reads it and the
   * workstations it matches, each with the session it joins now; or where it goes wrong. A bad
   * rule is an answer here, not a refusal.
   */
  checkRule(text: string): RuleCheckResult {
    try {
      const rule: Rule = parseRule(text);
      const found = this.#workstations
        .list()
        .filter((w) => matches(rule, this.#workstations.candidate(w.id)))
        .map((w) => ({ id: w.id, name: w.name, mac: w.mac, joins: this.choose(w.id).session }));
      return { ok: true, rule: describeRule(rule), matches: found };
    } catch (err) {
      if (!(err instanceof ServerError) || err.code !== 'E_RULE_INVALID') throw err;
      const at = (k: string) => (typeof err.details[k] === 'number' ? (err.details[k] as number) : null);
      return {
        ok: false,
        error: err.code,
        message: err.message,
        position: at('position'),
        column: at('column'),
      };
    }
  }

  /**
   * The session this workstation joins and in which role, or none, with the reason: a task
   * queued for it first, then the automatic sessions.
   */
  choose(workstation: string): AutoChoice {
    return this.chooseFor(this.#workstations.candidate(workstation));
  }

  /** choose() for a candidate the registry may not hold (a MAC that network-boots). */
  chooseFor(ws: Candidate): Choice {
    return chooseWork(this.#taskViews(), this.#views(), ws);
  }

  /** Tasks a workstation can take part in now (a stopped or interrupted one waits for the administrator). */
  #taskViews(): TaskView[] {
    return this.#sessions
      .tasks()
      .filter((t) => t.session.state === 'waiting' || t.session.state === 'sending')
      .map((t) => ({ session: t.session.name, workstation: t.workstation, image: t.session.image }));
  }

  /**
   * The sessions as participation.ts weighs them, with workstations as MACs: its reasons quote
   * them ("listed explicitly as 52:54:00:12:34:56"), and a MAC reads better than an id. Names
   * would not do: two machines may register with one host name.
   */
  #views(): AutoSessionView[] {
    const mac = (id: string) => this.#workstations.brief(id).mac;
    return this.#sessions.autoViews().map((s) => ({
      ...s,
      ...(s.master !== undefined ? { master: mac(s.master) } : {}),
      explicit: s.explicit.map(mac),
    }));
  }

  /**
   * Joins a workstation to a session: any workstation to a session made with `imgcast mcast`,
   * only one that qualifies to an automatic session (enabled, and listing it or matching one of
   * its rules). Once in a run, it may join again (a rerun after its own crash) whatever changed.
   */
  async join(name: string, ws: WorkstationIdentity, localAddress: string, open = false): Promise<JoinView> {
    if (
      this.#sessions.exists(name) &&
      this.#sessions.isAuto(name) &&
      !this.#sessions.runsOf(ws.id).includes(name)
    )
      this.#admit(name, ws);
    return this.#sessions.join(name, ws, localAddress, open);
  }

  /** Forgets a workstation no session definition or run needs. */
  removeWorkstation(ref: string) {
    return this.#serial(async () => {
      const id = this.#workstations.resolve(ref);
      const name = this.#workstations.brief(id).name;
      const uses = this.#sessions
        .autoViews()
        .flatMap((s) =>
          s.master === id
            ? [`the master of ${s.name}`]
            : s.explicit.includes(id)
              ? [`listed in ${s.name}`]
              : [],
        );
      const runs = this.#sessions.runsOf(id).map((s) => `taking part in the run of ${s}`);
      const task = this.#sessions.taskOf(id);
      if (task && !runs.some((r) => r.endsWith(task.name)))
        uses.push(`the workstation of task ${task.name} (imgcast task rm ${name})`);
      if (uses.length + runs.length > 0) {
        throw new ServerError(
          'E_WORKSTATION_IN_USE',
          `${name} is ${[...uses, ...runs].join(', ')}; take it out of ${uses.length + runs.length === 1 ? 'that session' : 'those sessions'} first`,
          { workstation: name },
        );
      }
      return this.#workstations.remove(id);
    });
  }

  #admit(name: string, ws: WorkstationIdentity): void {
    const views = this.#views();
    const self = views.find((s) => s.name === name)!;
    const who = `${ws.name} (${ws.mac})`;
    if (!self.enabled) {
      throw new ServerError(
        'E_NOT_QUALIFIED',
        `session ${name} is disabled: it takes no workstation until the administrator enables it (imgcast session enable ${name})`,
        { session: name, workstation: ws.name },
      );
    }
    const mastered = views.find((s) => s.enabled && s.master === ws.mac);
    if (mastered) {
      throw new ServerError(
        'E_NOT_QUALIFIED',
        `${who} is the master of session ${mastered.name}, so it sends rather than joins another session`,
        { session: name, workstation: ws.name, master: mastered.name },
      );
    }
    const choice = chooseSession([{ ...self, master: undefined }], this.#workstations.candidate(ws.id));
    if (choice.session !== null) return;
    const n = self.rules.length;
    throw new ServerError(
      'E_NOT_QUALIFIED',
      self.explicit.length === 0 && n === 0
        ? `session ${name} takes no workstation yet: it lists none and has no rule (imgcast session include, imgcast session rule add)`
        : `${who} does not take part in session ${name}: it is not listed there${n === 0 ? ' and the session has no rule' : ` and matches none of its ${n === 1 ? 'rule' : `${n} rules`}`}`,
      { session: name, workstation: ws.name },
    );
  }

  #resolveAll(refs: readonly string[]): string[] {
    const ids: string[] = [];
    const unknown: string[] = [];
    for (const ref of refs) {
      const row = this.#workstations.find(ref);
      if (row) ids.push(row.id);
      else unknown.push(ref);
    }
    if (unknown.length > 0) {
      throw new ServerError(
        'E_WORKSTATION_UNKNOWN',
        `no workstation ${unknown.join(', ')} on this server (imgcast workstation list shows them; imgcast workstation add NAME MAC creates one)`,
        { workstations: unknown },
      );
    }
    return ids;
  }

  #noConflict(candidate: SessionParticipants): void {
    const others = this.#sessions.autoViews();
    const problem = masterConflict(others, candidate, (a, b) => a === b);
    if (problem === undefined) return;
    const brief = (id: string) => this.#workstations.brief(id).name;
    // Ids in the message become names; the session it conflicts with goes into the details.
    const named = [
      candidate.master,
      ...candidate.explicit,
      ...others.flatMap((s) => [s.master ?? '', ...s.explicit]),
    ]
      .filter((id): id is string => !!id)
      .reduce((text, id) => text.replaceAll(id, brief(id)), problem);
    const m = candidate.master;
    const conflicting = others.find(
      (s) =>
        s.name !== candidate.name &&
        ((m !== undefined && (s.master === m || s.explicit.includes(m))) ||
          (s.master !== undefined && candidate.explicit.includes(s.master))),
    );
    throw new ServerError('E_MASTER_CONFLICT', named, {
      session: candidate.name,
      conflictsWith: conflicting?.name ?? candidate.name,
    });
  }

  #serial<T>(change: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(change, change);
    this.#queue = run.catch(() => {});
    return run;
  }
}

/** Parses a rule to refuse a bad one with its place; rule `n` of several is said so. */
function checkRule(text: string, n?: number): void {
  try {
    parseRule(text);
  } catch (err) {
    if (n === undefined || !(err instanceof ServerError)) throw err;
    throw new ServerError('E_RULE_INVALID', `rule ${n}: ${err.message}`, { ...err.details, index: n });
  }
}
