/**
 * Boot phases a workstation reports from the network-booted imaging environment
 * (IMGCAST_BOOTENV=1): environment, joined, imaging, verifying, identity, rebooting. Reports go
 * out in order, one at a time, and a report that fails is dropped: status is worth less than
 * the imaging, which never waits on it for long nor fails because of it.
 */
import type { ApiClient } from '../api/client.ts';
import type { ReportedPhase } from '../api/schemas.ts';

export interface PhaseReporter {
  /** Reports a phase once (a phase already reported last is not sent again). */
  report(phase: ReportedPhase): void;
  /** Waits (a few seconds at most) for the reports sent so far: before a reboot. */
  flush(): Promise<void>;
}

const NONE: PhaseReporter = { report: () => {}, flush: async () => {} };

/** Whether this img runs in the network-booted environment (its init says so). */
export function inBootEnvironment(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.IMGCAST_BOOTENV === '1';
}

export function phaseReporter(
  api: ApiClient,
  enabled: boolean,
  warn?: (line: string) => void,
): PhaseReporter {
  if (!enabled) return NONE;
  let queue = Promise.resolve();
  let last: ReportedPhase | undefined;
  let warned = false;
  return {
    report(phase) {
      if (phase === last) return;
      last = phase;
      queue = queue.then(() =>
        api.request('POST', '/api/workstations/me/phase', { body: { phase }, timeoutMs: 5000 }).then(
          () => {},
          (err: unknown) => {
            if (!warned) warn?.(`the server did not take the boot phase ${phase}: ${(err as Error).message}`);
            warned = true;
          },
        ),
      );
    },
    async flush() {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([queue, new Promise<void>((r) => (timer = setTimeout(r, 6000)))]);
      clearTimeout(timer);
    },
  };
}
