/**
 * A receiver stand-in for kernel-tuning.test.ts: run inside a throwaway network namespace
 * (`ip netns exec NS node kernel-tuning-driver.ts STATE_DIR CALLER_NET_NS`), it takes one JSON command per
 * line on stdin and answers each with one JSON line on stdout, so the test can hold several
 * tunings in several processes at once and SIGKILL one while it holds.
 *
 * Commands: {op:'tune', id, wants, lockWaitMs?}, {op:'release', id}, {op:'recover'}, {op:'read', name},
 * {op:'write', name, value}, {op:'ns'}, {op:'cycle', wants, count} (tune, hold 3 ms and release, `count` times).
 */
import { readlinkSync, readFileSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import {
  recoverKernelSettings,
  type SysctlWant,
  type Tuning,
  tuneKernel,
} from '../../src/transport/kernel-tuning.ts';

interface Command {
  op: string;
  id?: string;
  wants?: SysctlWant[];
  name?: string;
  value?: number;
  count?: number;
  lockWaitMs?: number;
}

const [stateDir, callerNs] = process.argv.slice(2);
if (!stateDir || !callerNs) throw new Error('usage: kernel-tuning-driver.ts STATE_DIR CALLER_NET_NS');
// It writes /proc/sys: never in the namespace of the test that started it (the host's).
if (readlinkSync('/proc/self/ns/net') === callerNs) {
  throw new Error('kernel-tuning-driver.ts runs only inside a throwaway network namespace');
}
const tunings = new Map<string, Tuning>();
/** Lines logged during the current command (a Tuning logs its release through its tune's options). */
let lines: string[] = [];
const pause = new Int32Array(new SharedArrayBuffer(4));
const path = (name: string): string => `/proc/sys/${name.replaceAll('.', '/')}`;

function run(c: Command): Record<string, unknown> {
  const opts = { stateDir, lockWaitMs: c.lockWaitMs, log: (l: string) => lines.push(l) };
  switch (c.op) {
    case 'tune': {
      // A Tuning releases with the options it was made with: {op:'tune', lockWaitMs} sets its wait.
      const t = tuneKernel(c.wants ?? [], opts);
      tunings.set(c.id ?? '', t);
      return { applied: t.applied, satisfied: t.satisfied, refused: t.refused };
    }
    case 'release':
      tunings.get(c.id ?? '')?.release();
      return {};
    case 'recover':
      return { restored: recoverKernelSettings(opts) };
    case 'read':
      return { value: Number(readFileSync(path(c.name ?? ''), 'utf8').trim()) };
    case 'write':
      writeFileSync(path(c.name ?? ''), `${c.value}\n`);
      return {};
    case 'ns':
      return { ns: /\d+/.exec(readlinkSync('/proc/self/ns/net'))?.[0], pid: process.pid };
    case 'cycle': {
      let first = 0;
      for (let i = 0; i < (c.count ?? 1); i++) {
        const t = tuneKernel(c.wants ?? [], opts);
        first += t.applied.filter((a) => !a.shared).length;
        // Held a moment, as a receiver would: back-to-back rounds could take turns without ever overlapping.
        Atomics.wait(pause, 0, 0, 3);
        t.release();
      }
      return { first };
    }
    default:
      throw new Error(`unknown op ${c.op}`);
  }
}

const write = (o: Record<string, unknown>): void => void process.stdout.write(`${JSON.stringify(o)}\n`);
createInterface({ input: process.stdin }).on('line', (line) => {
  lines = [];
  try {
    write({ ...run(JSON.parse(line) as Command), log: lines });
  } catch (e) {
    const err = e as Error & { code?: string };
    write({ error: { code: err.code, message: err.message }, log: lines });
  }
});
write({ ready: true });
