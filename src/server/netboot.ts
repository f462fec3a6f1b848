/**
 * The server's side of a network boot: the decision for a MAC (boot-decision.ts decides, from
 * what the sessions, tasks and registry say), the record of every decision, and each
 * workstation's boot phase (netboot and up set here, the others reported by the environment).
 */
import type { BootDecision as BootDecisionView, BootPhase, ReportedPhase } from '../api/schemas.ts';
import type { AutoSessions } from './auto-sessions.ts';
import { decideBoot, type BootDecision } from './boot-decision.ts';
import type { Db } from './db.ts';
import type { SessionManager } from './sessions.ts';
import type { Workstations } from './workstations.ts';

/** Decisions kept in the database; older ones are dropped as new ones come. */
const KEPT = 10_000;

export interface NetBootOptions {
  db: Db;
  sessions: SessionManager;
  auto: AutoSessions;
  workstations: Workstations;
  log: { info: (o: object, m: string) => void };
  now?: () => number;
}

export class NetBoot {
  #o: NetBootOptions;
  #now: () => number;
  #added = 0;

  constructor(o: NetBootOptions) {
    this.#o = o;
    this.#now = o.now ?? Date.now;
  }

  /**
   * What a booting MAC is told, recorded. `ready` says whether the imaging environment is
   * there to boot: without it an "image" is recorded and answered as "local", saying why.
   */
  async decide(
    mac: string,
    platform: string,
    address: string | null,
    ready: boolean,
  ): Promise<BootDecision & { name: string | null }> {
    const { candidate, known } = this.#o.workstations.bootCandidate(mac, address);
    const choice = this.#o.auto.chooseFor(candidate);
    const s = choice.session;
    let d = decideBoot({
      mac,
      known,
      choice,
      imagedAt: s === null ? null : this.#o.sessions.imagedAt(s, candidate.id),
      definedAt: s === null ? null : this.#o.sessions.definedAt(s),
      joinedWaiting: s === null ? 0 : this.#o.sessions.joinedWaiting(s),
    });
    if (d.action === 'image' && !ready) {
      d = {
        action: 'local',
        session: null,
        why: `the imaging environment is not built: run imgcast bootenv build (it would image: ${d.why})`,
      };
    }
    if (known) {
      if (d.action === 'image') await this.#o.workstations.setPhase(candidate.id, 'netboot');
      else if (this.#o.workstations.phaseOf(candidate.id) === 'rebooting')
        await this.#o.workstations.setPhase(candidate.id, 'up');
    }
    const at = this.#now();
    await this.#o.db
      .insertInto('boot_decisions')
      .values({
        at,
        mac: candidate.mac,
        workstation: known ? candidate.id : null,
        platform,
        decision: d.action,
        session: d.session,
        why: d.why,
      })
      .execute();
    if (++this.#added % 500 === 0) await this.#trim();
    this.#o.log.info(
      { mac: candidate.mac, platform, decision: d.action, session: d.session, why: d.why },
      'boot decision',
    );
    return { ...d, name: known ? candidate.name : null };
  }

  /** The newest decisions first; for one MAC when given. */
  async recent(limit: number, mac?: string): Promise<BootDecisionView[]> {
    let q = this.#o.db.selectFrom('boot_decisions').selectAll().orderBy('id', 'desc').limit(limit);
    if (mac !== undefined) q = q.where('mac', '=', mac);
    const rows = await q.execute();
    return rows.map((r) => ({
      at: Number(r.at),
      mac: r.mac,
      workstation: r.workstation === null ? null : this.#o.workstations.brief(r.workstation).name,
      platform: r.platform,
      decision: r.decision === 'image' ? 'image' : 'local',
      session: r.session,
      why: r.why,
    }));
  }

  /** A phase the workstation reports from the imaging environment. */
  async report(workstation: string, phase: ReportedPhase): Promise<void> {
    await this.#o.workstations.setPhase(workstation, phase satisfies BootPhase);
  }

  async #trim(): Promise<void> {
    const newest = await this.#o.db
      .selectFrom('boot_decisions')
      .select((eb) => eb.fn.max('id').as('id'))
      .executeTakeFirst();
    const top = Number(newest?.id ?? 0);
    if (top > KEPT)
      await this.#o.db
        .deleteFrom('boot_decisions')
        .where('id', '<=', top - KEPT)
        .execute();
  }
}
