/**
 * When a sender starts sending: once `wanted` receivers have joined, or `waitMs` after the last
 * join with at least one receiver. A sender held by a gate (SenderOptions.gate: readied ahead
 * of its session's trigger, so that the trigger costs no image opening, sockets or thread) does
 * not start before the gate opens, and its wait counts from the later of the last join and the
 * opening: receivers told of the sender by the trigger need the moments after it to connect.
 * Pure: the caller gives the clock.
 */
export interface StartView {
  /** Receivers joined (their JOIN came) and waiting. */
  joined: number;
  wanted: number;
  /** When the last receiver joined (0: none yet). */
  lastJoinAt: number;
  waitMs: number;
  /** When the gate opened; null while it holds. A sender without a gate passes its own start. */
  openedAt: number | null;
  now: number;
}

export function startDue(v: StartView): boolean {
  if (v.openedAt === null || v.joined === 0) return false;
  if (v.joined >= v.wanted) return true;
  return v.now - Math.max(v.lastJoinAt, v.openedAt) >= v.waitMs;
}
