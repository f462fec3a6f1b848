/**
 * `img session NAME [master|client]`, `img session start NAME` and `img auto`: take part in a
 * session of the imaging server (client/session.ts), or be its master (client/master.ts).
 */
import { Option, type Command } from 'commander';

import type { JoinView, MasterView, SessionClient } from '../api/schemas.ts';
import type { BootPlan } from '../client/boot-entry.ts';
import type { LiveCapture, MasterResult } from '../client/master.ts';
import type { SessionResult } from '../client/session.ts';
import { ImgcastError, UsageError } from '../errors.ts';
import { COMPRESSION_LEVELS, type CompressionLevel } from '../image/types.ts';
import { localIPv4 } from './options.ts';
import { emit, formatBytes, formatDuration, runCommand, withProgress } from './output.ts';
import { describePostImaging } from './render.ts';

/** The engine's live capture, loaded only by the master. */
const liveCapture: LiveCapture = async (source, o) => {
  const { liveDiskProvider } = await import('../engine/live.ts');
  return liveDiskProvider(source, o);
};

export interface SessionWords {
  role: 'master' | 'client';
  clients?: number;
  waitMinutes?: number;
}

/** The words after the session name: a role, and the master's clients=N and t=MINUTES. */
export function parseSessionWords(words: readonly string[]): SessionWords {
  const out: SessionWords = { role: 'client' };
  let role: string | undefined;
  for (const w of words) {
    const m = /^(clients|t)=(.*)$/.exec(w);
    if (w === 'master' || w === 'client') {
      if (role !== undefined && role !== w) throw usage(`give one role, master or client, not both`);
      role = w;
      out.role = w;
    } else if (m?.[1] === 'clients') {
      if (!/^\d+$/.test(m[2]!) || Number(m[2]) < 1 || Number(m[2]) > 10000) {
        throw usage(
          `clients=${m[2]}: give how many clients start the session, a whole number from 1 to 10000`,
        );
      }
      out.clients = Number(m[2]);
    } else if (m?.[1] === 't') {
      const t = Number(m[2]);
      if (m[2] === '' || !Number.isFinite(t) || t < 0 || t > 10080) {
        throw usage(`t=${m[2]}: give the minutes to wait after the last client joined, from 0 to 10080`);
      }
      out.waitMinutes = t;
    } else {
      throw usage(
        `unexpected word ${JSON.stringify(w)}: after the session name come master or client, clients=N and t=MINUTES`,
      );
    }
  }
  if (out.role === 'client' && (out.clients !== undefined || out.waitMinutes !== undefined)) {
    throw usage(
      "clients= and t= are the master's: they say when the master starts the session (img session NAME master clients=N t=MINUTES)",
    );
  }
  return out;
}

function usage(message: string): UsageError {
  return new UsageError(message);
}

function clientLine(c: SessionClient): string {
  const what = c.reason ? `${c.state}: ${c.reason}${c.code ? ` [${c.code}]` : ''}` : c.state;
  return `${c.name} (${c.mac}, ${c.address}) ${what}`;
}

export function masterWaitingLine(v: MasterView): string {
  const who = v.clients.map((c) => c.name).join(', ');
  const joined = `${v.joined} joined${who ? ` (${who})` : ''}`;
  if (v.startBy === 'command')
    return `waiting: ${joined}; start with img session start ${v.session} (or Enter here)`;
  if (v.needed === 0 && v.startsInMs === 0) return `waiting: ${joined}, starting`;
  const parts = [joined];
  if (v.needed > 0) parts.push(`${v.needed} more needed`);
  if (v.startsInMs !== null)
    parts.push(`${v.needed > 0 ? 'or ' : ''}starts in ${formatDuration(v.startsInMs / 1000)}`);
  return `waiting: ${parts.join(', ')}`;
}

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
  reboot?: boolean;
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
    .option(
      '--reboot',
      "once the disk is written, verified and made this workstation's, boot it (under UEFI through a boot entry and BootNext)",
    )
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
      reboot: !!o.reboot,
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
      // A post-imaging script's output goes where a command's would, as it comes (kept in the result too).
      onScriptOutput: o.json ? undefined : (_script: string, text: string) => process.stderr.write(text),
    },
  };
}

/** What the master says as the session goes: who joined, then each client's end with its reason. */
function masterCallbacks(say: (line: string) => void) {
  let last = '';
  const told = new Map<string, string>();
  return (v: MasterView) => {
    if (v.state === 'waiting') {
      const line =
        v.message && !v.message.startsWith('waiting for the master to start')
          ? `${masterWaitingLine(v)} (${v.message})`
          : masterWaitingLine(v);
      const gist = line.replace(/starts in [^,)]*/, '');
      if (gist !== last) say(line);
      last = gist;
      return;
    }
    for (const c of v.clients) {
      const line = clientLine(c);
      if (['ok', 'failed', 'dropped'].includes(c.state) && told.get(c.workstation) !== line) {
        told.set(c.workstation, line);
        say(line);
      }
    }
  };
}

function describeMaster(r: MasterResult): string {
  const v = r.view;
  const ok = v.clients.filter((c) => c.state === 'ok').length;
  return [
    `session ${r.session}: ${r.disk} sent live to ${v.clients.length} client(s), ${formatBytes(r.send.bytes)} in ${(r.send.durationMs / 1000).toFixed(1)} s; ${ok} of ${v.clients.length} written and verified (session ${v.state})`,
    ...v.clients.map((c) => `  ${clientLine(c)}`),
  ].join('\n');
}

/** The master's end: the result, or an error naming each client that did not end verified. */
function masterOutcome(json: boolean, r: MasterResult): void {
  if (r.view.state === 'done') {
    emit(json, r, () => describeMaster(r));
    return;
  }
  const bad = r.view.clients.filter((c) => c.state !== 'ok');
  throw new ImgcastError(
    'E_SESSION_FAILED',
    `session ${r.session} ${r.view.state}: ${bad.length} of ${r.view.clients.length} client(s) did not end verified${bad.length ? `: ${bad.map(clientLine).join('; ')}` : ''}`,
    { session: r.session, run: r.run, disk: r.disk, clients: r.view.clients, sentBytes: r.send.bytes },
  );
}

/** Enter on the master's terminal starts the session, as the start command does. */
function startOnEnter(say: (line: string) => void, start: () => Promise<void>): () => void {
  if (!process.stdin.isTTY) return () => {};
  const onData = () => {
    void start().then(
      () => say('starting the session now'),
      (err: unknown) => say(`cannot start: ${(err as Error).message}`),
    );
  };
  process.stdin.on('data', onData);
  return () => {
    process.stdin.off('data', onData);
    process.stdin.pause();
  };
}

/** --reboot: says how the restored disk boots next, and restarts the machine into it. */
async function bootInto(plan: BootPlan | undefined): Promise<void> {
  if (!plan) return;
  process.stderr.write(`img: rebooting into the restored disk: ${plan.note}\n`);
  const { rebootNow } = await import('../client/boot.ts');
  await rebootNow();
}

function describeResult(r: SessionResult): string {
  return (
    `session ${r.session}: ${r.image} (file set ${r.fileset}) written to ${r.disk} and verified: ` +
    `${formatBytes(r.receive.bytes)} in ${(r.receive.durationMs / 1000).toFixed(1)} s` +
    (r.receive.chunksHad ? `; ${r.receive.chunksHad} chunk(s) were already there (resumed)` : '') +
    `; reported to ${r.server}` +
    (r.postImaging ? `\n${describePostImaging(r.postImaging)}` : '')
  );
}

export function addSessionCommand(program: Command): void {
  takePartOptions(
    program
      .command('session')
      .description(
        'take part in a session: as a client (the default), receive, write and verify what it sends and report the result; as its master, send this disk, captured as it is read; img session start NAME starts a session this workstation is the master of',
      )
      .argument(
        '<name>',
        "session name: the same on every workstation of the session (or the administrator's, imgcast mcast NAME)",
      )
      .argument(
        '[words...]',
        'master or client (default); for the master: clients=N (start once N joined) and t=MINUTES (start that long after the last join); with neither, it starts on img session start NAME',
      )
      .addOption(
        new Option('--level <level>', 'master: compression on the master (default balanced)').choices(
          COMPRESSION_LEVELS,
        ),
      ),
  ).action((name: string, words: string[], o: TakePartFlags & { level?: CompressionLevel }) =>
    runCommand(
      'img',
      !!o.json,
      async (signal) => {
        if (
          name === 'start' &&
          words.length === 1 &&
          !['master', 'client'].includes(words[0]!) &&
          !words[0]!.includes('=')
        ) {
          const { readMasterHandle } = await import('../client/master-handle.ts');
          const { ApiClient } = await import('../api/client.ts');
          const h = await readMasterHandle(words[0]!);
          await new ApiClient(h.server, h.token).request(
            'POST',
            `/api/sessions/${encodeURIComponent(words[0]!)}/start`,
          );
          emit(!!o.json, { session: words[0], started: true }, () => `session ${words[0]} starts now`);
          return;
        }
        const w = parseSessionWords(words);
        if (w.role === 'client' && o.level !== undefined) {
          throw usage(
            "--level is the master's: it compresses what the master sends (img session NAME master --level LEVEL)",
          );
        }
        if (w.role === 'master' && (o.reboot || o.keepSizes || o.restart)) {
          throw usage(
            `${o.reboot ? '--reboot' : o.keepSizes ? '--keep-sizes' : '--restart'} is a client's: the master sends its disk and writes nothing`,
          );
        }
        if (w.role === 'master') {
          const { runMaster } = await import('../client/master.ts');
          const { saveMasterHandle } = await import('../client/master-handle.ts');
          const { options } = sessionCallbacks(o, signal, () => {});
          // The master is where the session's problems are shown: on stderr even with --json.
          const say = (line: string) => process.stderr.write(`img: ${line}\n`);
          let forget: (() => Promise<void>) | undefined;
          let stopKeys = () => {};
          try {
            const r = await withProgress('send', { json: !!o.json }, (update) =>
              runMaster({
                session: name,
                server: o.server,
                disk: o.disk,
                interface: o.interface,
                ...(w.clients !== undefined ? { clients: w.clients } : {}),
                ...(w.waitMinutes !== undefined ? { waitMinutes: w.waitMinutes } : {}),
                ...(o.level !== undefined ? { level: o.level } : {}),
                capture: liveCapture,
                signal,
                onNote: say,
                warn: say,
                log: options.log,
                onView: masterCallbacks(say),
                onProgress: (p) => update(p.bytesSent, 0),
                onMaster: (m) => {
                  void saveMasterHandle({ session: name, server: m.server, token: m.token }).then(
                    (f) => (forget = f),
                    (err: unknown) =>
                      say(
                        `img session start ${name} will not work from another shell: ${(err as Error).message}`,
                      ),
                  );
                  stopKeys = startOnEnter(say, m.start);
                },
              }),
            );
            masterOutcome(!!o.json, r);
          } finally {
            stopKeys();
            await forget?.();
          }
          return;
        }
        const { runSession } = await import('../client/session.ts');
        const r = await withProgress('receive', { json: !!o.json }, (update) =>
          runSession({ session: name, ...sessionCallbacks(o, signal, update).options }),
        );
        emit(!!o.json, r, () => describeResult(r));
        await bootInto(r.boot);
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
            capture: liveCapture,
            onMasterView: masterCallbacks(say),
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
        if (r.role === 'master') masterOutcome(!!o.json, r);
        else {
          emit(!!o.json, r, () => describeResult(r));
          await bootInto(r.boot);
        }
      },
      { interruptible: true },
    ),
  );
}
