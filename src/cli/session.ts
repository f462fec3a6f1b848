/** `img session NAME` and `img auto`: take part in a session of the imaging server (client/session.ts). */
import { Option, type Command } from 'commander';

import type { JoinView } from '../api/schemas.ts';
import type { SessionResult } from '../client/session.ts';
import { localIPv4 } from './options.ts';
import { emit, formatBytes, formatDuration, runCommand, withProgress } from './output.ts';

export function waitingLine(v: JoinView): string {
  const joined = `${v.joined} joined`;
  if (v.needed === 0) return `waiting: ${joined}, starting`;
  if (v.startsInMs === null) return `waiting: ${joined}, ${v.needed} more needed`;
  return `waiting: ${joined}, ${v.needed} more needed, or starts in ${formatDuration(v.startsInMs / 1000)}`;
}

interface TakePartFlags {
  server?: string;
  disk?: string;
  interface?: string;
  restart?: boolean;
  keepSizes?: boolean;
  tuneReassembly?: boolean;
  json?: boolean;
  verbose?: boolean;
}

/** The options `img session` and `img auto` share: where the server is, what to write, how. */
function takePartOptions(cmd: Command): Command {
  return cmd
    .option('--server <host[:port]>', 'the imaging server (default: found on this subnet by discovery)')
    .option(
      '--disk <target>',
      'disk to write (default: the one internal disk not holding the running system)',
    )
    .addOption(new Option('--interface <addr>', 'local IPv4 address to use').argParser(localIPv4))
    .option('--restart', "ignore this disk's resume journal and receive everything")
    .option('--keep-sizes', "keep the image's partition sizes (see img restore --help)")
    .option(
      '--no-tune-reassembly',
      "leave the kernel's IP reassembly settings alone (see img receive --help)",
    )
    .option('--json', 'print the result as JSON')
    .option('-v, --verbose', 'log session events to stderr');
}

/** What `img session` and `img auto` say while they wait and receive, and the options they pass on. */
function sessionCallbacks(
  o: TakePartFlags,
  signal: AbortSignal,
  update: (done: number, total: number) => void,
) {
  let last = '';
  const say = (line: string) => {
    if (!o.json) process.stderr.write(`img: ${line}\n`);
  };
  return {
    say,
    options: {
      server: o.server,
      disk: o.disk,
      interface: o.interface,
      restart: !!o.restart,
      keepSizes: !!o.keepSizes,
      tuneReassembly: o.tuneReassembly !== false,
      signal,
      onNote: say,
      onWaiting: (v: JoinView) => {
        const line = waitingLine(v);
        // The countdown alone changes every call: say it only when who joined changed.
        const gist = line.replace(/, or starts in .*$/, '');
        if (gist !== last) say(line);
        last = gist;
      },
      onProgress: (p: { bytes: number; totalBytes: number }) => update(p.bytes, p.totalBytes),
      log: o.verbose ? (line: string) => process.stderr.write(`${line}\n`) : undefined,
      warn: (line: string) => say(line),
    },
  };
}

function describeResult(r: SessionResult): string {
  return (
    `session ${r.session}: ${r.image} (file set ${r.fileset}) written to ${r.disk} and verified: ` +
    `${formatBytes(r.receive.bytes)} in ${(r.receive.durationMs / 1000).toFixed(1)} s` +
    (r.receive.chunksHad ? `; ${r.receive.chunksHad} chunk(s) were already there (resumed)` : '') +
    `; reported to ${r.server}`
  );
}

export function addSessionCommand(program: Command): void {
  takePartOptions(
    program
      .command('session')
      .description(
        'join a session of the imaging server, then receive, write and verify its image and report the result',
      )
      .argument('<name>', 'session name, as the administrator created it (imgcast mcast NAME)'),
  ).action((name: string, o: TakePartFlags) =>
    runCommand(
      'img',
      !!o.json,
      async (signal) => {
        const { runSession } = await import('../client/session.ts');
        const r = await withProgress('receive', { json: !!o.json }, (update) =>
          runSession({ session: name, ...sessionCallbacks(o, signal, update).options }),
        );
        emit(!!o.json, r, () => describeResult(r));
      },
      { interruptible: true },
    ),
  );

  takePartOptions(
    program
      .command('auto')
      .description(
        "ask the imaging server which of its automatic sessions this workstation takes part in, and take part in it as img session does (or exit 0 with the server's reason when there is none)",
      ),
  ).action((o: TakePartFlags) =>
    runCommand(
      'img',
      !!o.json,
      async (signal) => {
        const { runAuto } = await import('../client/session.ts');
        let said = '';
        const r = await withProgress('receive', { json: !!o.json }, (update) => {
          const { say, options } = sessionCallbacks(o, signal, update);
          return runAuto({
            ...options,
            onChoice: (c) => {
              const line = c.session === null ? '' : `joining ${c.session}: ${c.why}`;
              if (line && line !== said) say(line);
              said = line;
            },
          });
        });
        if (r.session === null) {
          emit(!!o.json, r, () => `nothing to do for ${r.workstation}: ${r.why}`);
          return;
        }
        emit(!!o.json, r, () => describeResult(r));
      },
      { interruptible: true },
    ),
  );
}
