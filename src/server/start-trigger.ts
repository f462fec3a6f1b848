/**
 * When a waiting session starts: once `clientCount` clients have joined, or `waitMs` after the
 * last new client joined as long as at least one has (each join restarts the wait, so a lab
 * whose machines are still booting one by one is not cut short). A session a master workstation
 * opened may use only one of the two, or neither: then only a start command starts it. Pure:
 * the caller gives the clock.
 */
export type StartBy = 'count-or-time' | 'count' | 'time' | 'command';
export const START_BY: readonly StartBy[] = ['count-or-time', 'count', 'time', 'command'];

export interface TriggerInput {
  clientCount: number;
  waitMs: number;
  /** Which of the triggers apply (default both). */
  by?: StartBy;
  joined: number;
  /** When the last new client joined; null before anyone joined. */
  lastJoinAt: number | null;
  now: number;
}

export interface TriggerState {
  start: boolean;
  /** Which trigger fired. */
  why: 'count' | 'time' | null;
  /** Clients still needed for the count trigger ("3/2": 3 joined, 2 needed); 0 without one. */
  needed: number;
  /** Time left before the time trigger; null while nobody joined, or without one. */
  startsInMs: number | null;
}

export function startTrigger(t: TriggerInput): TriggerState {
  const by = t.by ?? 'count-or-time';
  const byCount = by === 'count-or-time' || by === 'count';
  const byTime = by === 'count-or-time' || by === 'time';
  const needed = byCount ? Math.max(0, t.clientCount - t.joined) : 0;
  if (byCount && t.joined > 0 && needed === 0) return { start: true, why: 'count', needed, startsInMs: 0 };
  if (!byTime || t.joined === 0 || t.lastJoinAt === null)
    return { start: false, why: null, needed, startsInMs: null };
  const left = Math.max(0, t.lastJoinAt + t.waitMs - t.now);
  return left === 0
    ? { start: true, why: 'time', needed, startsInMs: 0 }
    : { start: false, why: null, needed, startsInMs: left };
}
