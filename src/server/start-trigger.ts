/**
 * When a waiting session starts: once `clientCount` clients have joined, or `waitMs` after the
 * last new client joined as long as at least one has (each join restarts the wait, so a lab
 * whose machines are still booting one by one is not cut short). Pure: the caller gives the clock.
 */
export interface TriggerInput {
  clientCount: number;
  waitMs: number;
  joined: number;
  /** When the last new client joined; null before anyone joined. */
  lastJoinAt: number | null;
  now: number;
}

export interface TriggerState {
  start: boolean;
  /** Which trigger fired. */
  why: 'count' | 'time' | null;
  /** Clients still needed for the count trigger ("3/2": 3 joined, 2 needed). */
  needed: number;
  /** Time left before the time trigger; null while nobody joined. */
  startsInMs: number | null;
}

export function startTrigger(t: TriggerInput): TriggerState {
  const needed = Math.max(0, t.clientCount - t.joined);
  if (t.joined > 0 && needed === 0) return { start: true, why: 'count', needed, startsInMs: 0 };
  if (t.joined === 0 || t.lastJoinAt === null) return { start: false, why: null, needed, startsInMs: null };
  const left = Math.max(0, t.lastJoinAt + t.waitMs - t.now);
  return left === 0
    ? { start: true, why: 'time', needed, startsInMs: 0 }
    : { start: false, why: null, needed, startsInMs: left };
}
