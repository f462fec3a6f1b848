/**
 * Which receivers the sender stops serving, and why. Every session ends in bounded time: a
 * receiver either completes chunks or is dropped within seconds, with a reason that names the
 * cause and its figures, and keeps what it wrote (its journal) to resume in a later session.
 *
 * - unresponsive: no message for `deadAfterMs` (a crashed, paused or cut-off workstation).
 * - too slow (held back): while others wait, it alone kept the sender's window closed (it has
 *   no room for new chunks: its disk writes slower than the session, or it misses too much to
 *   complete chunks) for more than `holdLimitMs` of the last `holdWindowMs`. A lone receiver is
 *   never dropped for this: the session simply follows it.
 * - too slow (loss): it lost more than half of what was sent over `lossWindowMs` while most
 *   other receivers lost less than half that (a slower link, a failing NIC). When all, or most,
 *   lose alike that is congestion, which the rate control handles, and nobody is dropped.
 * - stalled: it completed no chunk for `stallAfterMs` while the sender had something for it.
 * - lagging: every other receiver finished `lagLimitMs` ago and it still misses chunks.
 * - finishing: one that holds every chunk of a sealed table is completing its target (the
 *   last metadata, flushing a disk); none of the above applies to it, only silence, which
 *   it is allowed for `finishSilenceMs` (a big tree's last pass can keep it from answering).
 *
 * Pure: views of the receivers in, verdicts out; time comes in with each call.
 */
import { median } from './rate-control.ts';

export interface DropLimits {
  deadAfterMs: number;
  stallAfterMs: number;
  lagLimitMs: number;
  lossWindowMs: number;
  holdLimitMs: number;
  holdWindowMs: number;
  finishSilenceMs: number;
}

export const DEFAULT_DROP_LIMITS: DropLimits = {
  deadAfterMs: 10_000,
  stallAfterMs: 15_000,
  lagLimitMs: 60_000,
  lossWindowMs: 10_000,
  holdLimitMs: 8_000,
  holdWindowMs: 10_000,
  finishSilenceMs: 60_000,
};

/** Loss over the window above which an outlier is dropped. */
const LOSS_DROP = 0.5;
/** Units expected over the window before its loss is judged. */
const LOSS_MIN_UNITS = 1000;

export interface ReceiverView {
  name: string;
  /** When it joined, last sent anything, last completed a chunk (ms). */
  joinedAt: number;
  lastHeard: number;
  lastProgress: number;
  chunks: number;
  /** Units received and expected over the loss window. */
  rx: number;
  exp: number;
  /** How long it alone held the window closed within the hold window (ms). */
  heldMs: number;
}

export interface SessionView {
  startedAt: number;
  totalChunks: number;
  /** When every other receiver had finished, 0 while some still receive. */
  othersDoneAt: number;
  /** False while the table may still grow (a live session before its seal); default true. */
  sealed?: boolean;
}

export interface Verdict {
  name: string;
  reason: string;
}

export function judgeReceivers(
  now: number,
  receivers: readonly ReceiverView[],
  session: SessionView,
  limits: DropLimits = DEFAULT_DROP_LIMITS,
): Verdict[] {
  const out: Verdict[] = [];
  const secs = (ms: number): number => Math.round(ms / 1000);
  const loss = (r: ReceiverView): number => (r.exp >= LOSS_MIN_UNITS ? Math.max(0, 1 - r.rx / r.exp) : 0);
  for (const r of receivers) {
    if (r.chunks >= session.totalChunks && session.sealed !== false) {
      if (now - r.lastHeard > limits.finishSilenceMs) {
        out.push({
          name: r.name,
          reason: `unresponsive: no message for ${secs(now - r.lastHeard)} s while finishing (it had every chunk)`,
        });
      }
      continue;
    }
    if (now - r.lastHeard > limits.deadAfterMs) {
      out.push({ name: r.name, reason: `unresponsive: no message for ${secs(now - r.lastHeard)} s` });
      continue;
    }
    const others = receivers.filter((o) => o !== r);
    if (others.length > 0 && r.heldMs > limits.holdLimitMs) {
      out.push({
        name: r.name,
        reason:
          `too slow (held back): it had no room for new chunks, holding the other receivers back, for ` +
          `${secs(r.heldMs)} of the last ${secs(limits.holdWindowMs)} s (it has ${r.chunks} of ${session.totalChunks} chunks)`,
      });
      continue;
    }
    const mine = loss(r);
    // Compared only with receivers whose loss says something: one that is silent (paused, gone)
    // or was sent too little lately has no loss to speak of, and a 0 % from it made the one
    // receiver still at work look like an outlier.
    const peers = others.filter(
      (o) => o.exp >= LOSS_MIN_UNITS && now - o.lastHeard <= limits.lossWindowMs / 2,
    );
    const typical = peers.length ? median(peers.map(loss)) : 1;
    // An outlier is one against most of the others: when most lose alike (receivers starved of
    // CPU, a sender too fast for most of them) that is for the rate control, and dropping them
    // would leave the session to the one that keeps up.
    const fewerLost = peers.filter((o) => loss(o) < mine / 2).length;
    const judged = now - r.joinedAt > limits.lossWindowMs && now - session.startedAt > limits.lossWindowMs;
    if (judged && mine > LOSS_DROP && peers.length > 0 && fewerLost > peers.length / 2) {
      out.push({
        name: r.name,
        reason:
          `too slow (loss): lost ${Math.round(mine * 100)} % of the packets over the last ` +
          `${secs(limits.lossWindowMs)} s while the others lost ${Math.round(typical * 100)} % (a slower link or port?)`,
      });
      continue;
    }
    if (now - Math.max(r.lastProgress, session.startedAt) > limits.stallAfterMs) {
      out.push({
        name: r.name,
        reason: `stalled: no chunk completed for ${secs(now - Math.max(r.lastProgress, session.startedAt))} s (has ${r.chunks} of ${session.totalChunks})`,
      });
      continue;
    }
    if (session.othersDoneAt && now - session.othersDoneAt > limits.lagLimitMs) {
      out.push({
        name: r.name,
        reason:
          `too slow (lagging): still missing ${session.totalChunks - r.chunks} chunks ` +
          `${secs(limits.lagLimitMs)} s after every other receiver finished`,
      });
    }
  }
  return out;
}
