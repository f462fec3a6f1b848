/**
 * When a receiving workstation sends its progress to the server. A session wakes all its
 * workstations with one answer, so reports paced from that moment would reach the server in
 * bursts of the whole lab every interval; each workstation instead makes its first report at its
 * own random point of the first interval, and then one per interval, so a lab's reports arrive
 * spread evenly (bench:server's load part measures that difference).
 */

/** How often a receiving workstation reports its progress. */
export const PROGRESS_REPORT_MS = 2000;

export interface ReportPace {
  /** Whether a report is due at `now`; when it is, the next one is due an interval later. */
  due(now: number): boolean;
  /** When the next report is due. */
  readonly nextAt: number;
}

/**
 * `start` is when receiving began, `random` in [0, 1) picks this workstation's phase. A report
 * that finds the previous one long overdue (a stalled progress callback) goes out at once, and
 * the interval counts from there, so a slow stretch never sends a catch-up burst.
 */
export function reportPace(
  start: number,
  everyMs: number = PROGRESS_REPORT_MS,
  random: () => number = Math.random,
): ReportPace {
  if (!(everyMs > 0)) throw new RangeError(`a report interval must be positive, not ${everyMs}`);
  const phase = Math.min(Math.max(random(), 0), 1);
  let next = start + Math.floor(phase * everyMs);
  return {
    due(now) {
      if (now < next) return false;
      // Slightly late keeps this workstation's phase (the lab stays spread); a whole interval late
      // starts the count again from now.
      next = now < next + everyMs ? next + everyMs : now + everyMs;
      return true;
    },
    get nextAt() {
      return next;
    },
  };
}
