/**
 * Which automatic session a workstation joins, and the constraints on masters. Pure: the caller
 * gives the sessions in list order and the workstation's facts.
 *
 * The automatic sessions form an ordered list. A workstation qualifies for a session when the
 * session lists it explicitly (by id, name or MAC) or any of the session's rules matches it;
 * of the enabled sessions it qualifies for, the first in the list wins, and the reason given
 * says what matched and which later sessions were passed over.
 *
 * A workstation that is the master of an enabled session runs as that session's master,
 * whatever the order: a session cannot send without its master, and its master usually matches
 * rules written for its lab, its own session's among them. masterConflict keeps a workstation
 * from being the master of two sessions, or master of one while listed in another, so this
 * precedence never takes a workstation away from an explicit listing.
 */
import { ServerError } from './errors.ts';
import { describeRule, macDigits, matches, type Rule, type RuleSubject } from './rules.ts';

/** Who takes part in a session: enough to check masters. */
export interface SessionParticipants {
  name: string;
  /** The master workstation (id, name or MAC); absent when the master is an image file. */
  master?: string;
  /** Workstations listed explicitly (id, name or MAC). */
  explicit: readonly string[];
}

export interface AutoSessionView extends SessionParticipants {
  enabled: boolean;
  /** Any one matching includes a workstation. */
  rules: readonly Rule[];
}

/** A registered workstation: its id (the MAC's digits) and what rules look at. */
export interface Candidate extends RuleSubject {
  id: string;
}

export type Choice =
  | { session: string; role: 'master' | 'client'; why: string; task?: boolean }
  | { session: null; why: string };

/** A one-off task (imgcast task add): the session that carries it out, for one workstation. */
export interface TaskView {
  session: string;
  /** The workstation's id. */
  workstation: string;
  image: string;
}

const MAC_LIKE = /^[0-9a-f]{2}(?:[:-]?[0-9a-f]{2}){5}$/i;

/**
 * Whether two references name the same workstation, as far as the text tells: equal ignoring
 * case (and Unicode form), or the same MAC however written (an id is a MAC's digits). A name
 * and a MAC of one workstation cannot be told apart here; a caller that has the registry
 * passes its own comparison.
 */
export function sameWorkstation(a: string, b: string): boolean {
  const x = a.trim().normalize('NFC').toLowerCase();
  const y = b.trim().normalize('NFC').toLowerCase();
  if (x === y) return true;
  return MAC_LIKE.test(x) && MAC_LIKE.test(y) && macDigits(x) === macDigits(y);
}

function refersTo(ref: string, ws: Candidate): boolean {
  return (
    sameWorkstation(ref, ws.id) ||
    sameWorkstation(ref, ws.name) ||
    (ws.mac !== '' && sameWorkstation(ref, ws.mac))
  );
}

export function ordinal(n: number): string {
  const tens = n % 100;
  const suffix = tens >= 11 && tens <= 13 ? 'th' : (['th', 'st', 'nd', 'rd'][n % 10] ?? 'th');
  return `${n}${suffix}`;
}

/** How a workstation qualifies for a session ("listed explicitly as …", "matches …"), or undefined. */
function qualifies(s: AutoSessionView, ws: Candidate): string | undefined {
  const listed = s.explicit.find((ref) => refersTo(ref, ws));
  if (listed !== undefined) return `listed explicitly as ${listed}`;
  const i = s.rules.findIndex((r) => matches(r, ws));
  if (i < 0) return undefined;
  const rule = describeRule(s.rules[i]!);
  return s.rules.length === 1 ? `matches ${rule}` : `matches rule ${i + 1} of ${s.rules.length}, ${rule}`;
}

const NAMED = 3;

/** "a (2nd)", "a (2nd) and b (4th)", "a (2nd), b (4th), c (5th) and 2 more". */
function placed(items: ReadonlyArray<{ name: string; at: number }>): string {
  const words = items.slice(0, NAMED).map((x) => `${x.name} (${ordinal(x.at + 1)})`);
  if (items.length > NAMED) return `${words.join(', ')} and ${items.length - NAMED} more`;
  return words.length <= 1 ? (words[0] ?? '') : `${words.slice(0, -1).join(', ')} and ${words.at(-1)}`;
}

/** The session a workstation joins and in which role, with the reason in words. */
export function chooseSession(sessions: readonly AutoSessionView[], ws: Candidate): Choice {
  if (sessions.length === 0) return { session: null, why: 'there are no automatic sessions' };
  const positions = sessions.map((s, at) => ({ s, at }));
  const enabled = positions.filter((x) => x.s.enabled);
  const disabledMatches = positions.filter(
    (x) =>
      !x.s.enabled &&
      (qualifies(x.s, ws) !== undefined || (x.s.master !== undefined && refersTo(x.s.master, ws))),
  );
  const disabledNote = (before: number) => {
    const earlier = disabledMatches.filter((x) => x.at < before).map((x) => ({ name: x.s.name, at: x.at }));
    if (earlier.length === 0) return '';
    return `; ${placed(earlier)} ${earlier.length === 1 ? 'would take it but is' : 'would take it but are'} disabled`;
  };

  const mastered = enabled.find((x) => x.s.master !== undefined && refersTo(x.s.master, ws));
  if (mastered) {
    const also = enabled
      .filter((x) => x !== mastered && qualifies(x.s, ws) !== undefined)
      .map((x) => ({ name: x.s.name, at: x.at }));
    const passed =
      also.length === 0 ? '' : `; it also matches ${placed(also)}, which it does not join as a client`;
    return {
      session: mastered.s.name,
      role: 'master',
      why: `master of ${mastered.s.name} (${ordinal(mastered.at + 1)}): it sends its disk rather than receiving${passed}`,
    };
  }

  for (const [k, x] of enabled.entries()) {
    const how = qualifies(x.s, ws);
    if (how === undefined) continue;
    const later = enabled
      .slice(k + 1)
      .filter((y) => qualifies(y.s, ws) !== undefined)
      .map((y) => ({ name: y.s.name, at: y.at }));
    const passed =
      later.length === 0
        ? ''
        : `; also matches ${placed(later)}, which ${later.length === 1 ? 'comes' : 'come'} later`;
    return {
      session: x.s.name,
      role: 'client',
      why: `${x.s.name} (${ordinal(x.at + 1)}): ${how}${passed}${disabledNote(x.at)}`,
    };
  }

  const note = disabledNote(sessions.length);
  if (enabled.length === 0) return { session: null, why: `no automatic session is enabled${note}` };
  const names = enabled.map((x) => ({ name: x.s.name, at: x.at }));
  return {
    session: null,
    why: `${ws.name} qualifies for none of the enabled automatic sessions (${placed(names)})${note}`,
  };
}

/**
 * What a workstation does when it asks (img auto, a network boot): a task queued for it comes
 * before every automatic session, since the administrator named this very workstation for it;
 * otherwise chooseSession decides.
 */
export function chooseWork(
  tasks: readonly TaskView[],
  sessions: readonly AutoSessionView[],
  ws: Candidate,
): Choice {
  const task = tasks.find((t) => t.workstation === ws.id);
  if (!task) return chooseSession(sessions, ws);
  const auto = chooseSession(sessions, ws);
  const passed =
    auto.session === null ? '' : `; it comes before ${auto.session}, which it also qualifies for`;
  return {
    session: task.session,
    role: 'client',
    task: true,
    why: `a one-off task queued for it: image ${task.image}${passed}`,
  };
}

/**
 * Why `candidate` (a session being created or edited) cannot have its master, or undefined.
 * A master sends its own disk, so it can neither be the master of a second session nor be
 * listed to receive in another one (nor in its own). Disabled sessions count: enabling one
 * must not bring a conflict back. `same` tells whether two references name one workstation.
 */
export function masterConflict(
  sessions: readonly SessionParticipants[],
  candidate: SessionParticipants,
  same: (a: string, b: string) => boolean = sameWorkstation,
): string | undefined {
  const others = sessions.filter((s) => s.name !== candidate.name);
  const m = candidate.master;
  if (m !== undefined) {
    if (candidate.explicit.some((e) => same(e, m))) {
      return `${m} cannot be both the master of ${candidate.name} and listed as one of its participants`;
    }
    for (const s of others) {
      if (s.master !== undefined && same(s.master, m)) {
        return `${m} is already the master of ${s.name}; a workstation can be the master of one session only`;
      }
      if (s.explicit.some((e) => same(e, m))) {
        return `${m} is listed as a participant of ${s.name}, so it cannot be the master of ${candidate.name}`;
      }
    }
  }
  for (const e of candidate.explicit) {
    const s = others.find((o) => o.master !== undefined && same(o.master, e));
    if (s)
      return `${e} is the master of ${s.name}, so it cannot be listed as a participant of ${candidate.name}`;
  }
  return undefined;
}

function position(list: readonly string[], name: string): number {
  const i = list.indexOf(name);
  if (i < 0)
    throw new ServerError('E_SESSION_UNKNOWN', `no automatic session named ${name}`, { session: name });
  return i;
}

/** The order with `name` one place earlier; the first stays first. */
export function moveUp(list: readonly string[], name: string): string[] {
  const i = position(list, name);
  const out = [...list];
  if (i > 0) [out[i - 1], out[i]] = [out[i]!, out[i - 1]!];
  return out;
}

/** The order with `name` one place later; the last stays last. */
export function moveDown(list: readonly string[], name: string): string[] {
  const i = position(list, name);
  const out = [...list];
  if (i < out.length - 1) [out[i], out[i + 1]] = [out[i + 1]!, out[i]!];
  return out;
}
