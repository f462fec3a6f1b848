/**
 * The admin CLI: `imgcast mcast | status | list | stop | session … | image … | workstation … |
 * history | admin …` (`settings …` is settings.ts), each a client of the server's HTTP API
 * (server-client.ts says how the server and the token are found).
 */
import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';

import { Command, Option } from 'commander';

import type { ApiClient } from '../api/client.ts';
import type {
  AutoChoice,
  BootDecision,
  Task,
  HistoryEntry,
  Image,
  Imported,
  Session,
  SessionClient,
  Status,
  Workstation,
  WorkstationBrief,
  WorkstationDetail,
} from '../api/schemas.ts';
import { UsageError } from '../errors.ts';
import { parseFileset } from './img.ts';
import { positiveInteger } from './options.ts';
import { emit, formatBytes, formatDuration, runCommand } from './output.ts';
import { adminClient } from './server-client.ts';

export interface Common {
  server?: string;
  data?: string;
  json?: boolean;
}

const serverOption = () =>
  new Option('-i, --server <host[:port]>', 'the imaging server (default: this machine, port 7740)');
const dataOption = () => new Option('--data <dir>', "the local server's data directory, for its admin token");
const jsonOption = () => new Option('--json', 'print the result as JSON');

export function withClient(cmd: Command): Command {
  return cmd.addOption(serverOption()).addOption(dataOption()).addOption(jsonOption());
}

function minutes(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < 0)
    throw new UsageError(`minutes must be 0 or more, not "${value}"`);
  return n;
}

export function run(o: Common, body: (api: ApiClient) => Promise<void>): Promise<void> {
  return runCommand('imgcast', !!o.json, async () => body(adminClient(o)));
}

const enc = encodeURIComponent;

export function addAdminCommands(program: Command): void {
  withClient(
    identityOptions(
      program
        .command('mcast')
        .description('create a multicast session of an image on the server; it starts when its trigger fires')
        .argument('<name>', 'session name, unique on the server (workstations join it with img session NAME)')
        .requiredOption(
          '-p, --path <image>',
          'the image, a path inside the server image directory (or its full path)',
        )
        .addOption(
          new Option('-f, --fileset <n>', 'file set 1-10 to send').argParser(parseFileset).default(1),
        )
        .addOption(
          new Option('-t, --time <minutes>', 'start this long after the last new client joined')
            .argParser(minutes)
            .default(5),
        )
        .addOption(
          new Option('-c, --count <clients>', 'start once this many clients joined')
            .argParser(positiveInteger)
            .default(1),
        ),
    ),
  ).action(
    (
      name: string,
      o: Common & IdentityFlags & { path: string; fileset: number; time: number; count: number },
    ) =>
      run(o, async (api) => {
        const s = await api.request<Session>('POST', '/api/sessions', {
          body: {
            name,
            image: o.path,
            fileset: o.fileset,
            clientCount: o.count,
            waitMinutes: o.time,
            ...(await identityBody(o)),
          },
        });
        emit(!!o.json, s, () =>
          [
            `session ${s.name}: ${s.image} (file set ${s.fileset}) waits for ${s.clientCount} client(s), or starts ${formatDuration(s.waitMs / 1000)} after the last one joined`,
            `on each workstation: img session ${s.name}`,
          ].join('\n'),
        );
      }),
  );

  withClient(
    program
      .command('status')
      .description('sessions (state, joined/still needed, countdown, each client) and server counters')
      .option('-w, --watch', 'refresh every second until Ctrl-C'),
  ).action((o: Common & { watch?: boolean }) =>
    run(o, async (api) => {
      // The last network boots, with the server's decision for each; JSON has them at /api/boot/decisions.
      const boots = () =>
        o.json ? Promise.resolve([]) : api.request<BootDecision[]>('GET', '/api/boot/decisions?limit=5');
      if (!o.watch) {
        const s = await api.request<Status>('GET', '/api/status');
        const b = await boots();
        emit(!!o.json, s, () => describeStatus(s, b));
        return;
      }
      for (;;) {
        const s = await api.request<Status>('GET', '/api/status');
        if (o.json) process.stdout.write(`${JSON.stringify(s)}\n`);
        else process.stdout.write(`\x1b[H\x1b[2J${describeStatus(s, await boots())}\n`);
        await new Promise((r) => setTimeout(r, 1000));
      }
    }),
  );

  withClient(program.command('list').description('the sessions on the server, one line each')).action(
    (o: Common) =>
      run(o, async (api) => {
        const list = await api.request<Session[]>('GET', '/api/sessions');
        emit(!!o.json, list, () => (list.length ? list.map(sessionLine).join('\n') : 'no sessions'));
      }),
  );

  withClient(
    program
      .command('stop')
      .description(
        'stop a session, also while it is sending (its clients fail with "stopped by the administrator")',
      )
      .argument('<name>', 'session name')
      .option('--delete', 'also delete the session (its history stays)'),
  ).action((name: string, o: Common & { delete?: boolean }) =>
    run(o, async (api) => {
      const s = await api.request<Session>('POST', `/api/sessions/${enc(name)}/stop`, {
        body: { delete: !!o.delete },
      });
      emit(!!o.json, s, () => `session ${s.name}: ${s.state}${o.delete ? ', deleted' : ''}`);
    }),
  );

  const session = program
    .command('session')
    .description('define automatic sessions; change, start, reopen or delete any session');
  addAutoSessionCommands(session);
  withClient(
    identityOptions(
      session
        .command('edit')
        .description(
          "change a waiting session's trigger or what it sends; an automatic session's master and delete-when-done",
        )
        .argument('<name>', 'session name')
        .addOption(
          new Option('-c, --clients <n>', 'start once this many clients joined').argParser(positiveInteger),
        )
        .addOption(
          new Option('-t, --minutes <m>', 'start this long after the last new client joined').argParser(
            minutes,
          ),
        )
        // The names these options had before automatic sessions, kept for scripts.
        .addOption(new Option('--count <clients>').argParser(positiveInteger).hideHelp())
        .addOption(new Option('--time <minutes>').argParser(minutes).hideHelp())
        .option('--image <path>', 'send this image (inside the server image directory) instead')
        .addOption(new Option('-f, --fileset <n>', 'file set 1-10 to send').argParser(parseFileset))
        .option('--master <workstation>', 'an automatic session: send the disk of this workstation instead')
        .option('--delete-when-done', 'an automatic session: delete it once a run has finished')
        .option('--keep-when-done', 'an automatic session: reopen it for a new run once a run has finished'),
      true,
    ),
  ).action(
    (
      name: string,
      o: Common &
        IdentityFlags & {
          clients?: number;
          minutes?: number;
          count?: number;
          time?: number;
          image?: string;
          fileset?: number;
          master?: string;
          deleteWhenDone?: boolean;
          keepWhenDone?: boolean;
        },
    ) =>
      run(o, async (api) => {
        if (o.deleteWhenDone && o.keepWhenDone)
          throw new UsageError('give --delete-when-done or --keep-when-done, not both');
        if (o.image !== undefined && o.master !== undefined)
          throw new UsageError('give --image or --master, not both');
        const body = {
          clientCount: o.clients ?? o.count,
          waitMinutes: o.minutes ?? o.time,
          image: o.image,
          fileset: o.fileset,
          master: o.master,
          deleteWhenDone: o.deleteWhenDone ? true : o.keepWhenDone ? false : undefined,
          ...(await identityBody(o)),
        };
        if (Object.values(body).every((v) => v === undefined))
          throw new UsageError(
            'nothing to change: give -c, -t, --image, --fileset, --master, --delete-when-done, --names or --script',
          );
        const s = await api.request<Session>('PATCH', `/api/sessions/${enc(name)}`, { body });
        emit(!!o.json, s, () => describeSession(s));
      }),
  );
  withClient(
    session
      .command('start')
      .description('start a waiting session now, with whoever has joined')
      .argument('<name>', 'session name'),
  ).action((name: string, o: Common) =>
    run(o, async (api) => {
      const s = await api.request<Session>('POST', `/api/sessions/${enc(name)}/start`);
      emit(!!o.json, s, () => sessionLine(s));
    }),
  );
  withClient(
    session
      .command('restart')
      .description(
        'reopen a finished, failed, stopped or interrupted session with the same settings: workstations join again and each gets only what its disk still lacks',
      )
      .argument('<name>', 'session name'),
  ).action((name: string, o: Common) =>
    run(o, async (api) => {
      const s = await api.request<Session>('POST', `/api/sessions/${enc(name)}/restart`);
      emit(!!o.json, s, () => `${sessionLine(s)}\non each workstation: img session ${s.name}`);
    }),
  );
  withClient(
    session.command('show').description('one session in detail').argument('<name>', 'session name'),
  ).action((name: string, o: Common) =>
    run(o, async (api) => {
      const s = await api.request<Session>('GET', `/api/sessions/${enc(name)}`);
      emit(!!o.json, s, () => describeSession(s));
    }),
  );

  withClient(
    program
      .command('history')
      .description('finished sessions with each client result, newest first')
      .addOption(new Option('-n, --limit <n>', 'how many').argParser(positiveInteger).default(50)),
  ).action((o: Common & { limit: number }) =>
    run(o, async (api) => {
      const h = await api.request<HistoryEntry[]>('GET', `/api/history?limit=${o.limit}`);
      emit(!!o.json, h, () => (h.length ? h.map(describeHistory).join('\n') : 'no finished sessions yet'));
    }),
  );

  const image = program.command('image').description('the images on the server');
  withClient(image.command('list').description('images in the server image directory')).action((o: Common) =>
    run(o, async (api) => {
      const list = await api.request<Image[]>('GET', '/api/images');
      emit(!!o.json, list, () =>
        list.length
          ? list
              .map(
                (i) =>
                  `${i.name.padEnd(32)} ${formatBytes(i.sizeBytes).padStart(10)}  ${i.problem ? `UNREADABLE: ${i.problem}` : (i.source ?? '')}`,
              )
              .join('\n')
          : 'no images',
      );
    }),
  );
  withClient(
    image
      .command('info')
      .description('one image')
      .argument('<path>', 'image path inside the image directory'),
  ).action((path: string, o: Common) =>
    run(o, async (api) => {
      const i = await api.request<Image>('GET', `/api/images/info?path=${enc(path)}`);
      emit(!!o.json, i, () =>
        [
          `${i.name}: ${formatBytes(i.sizeBytes)}, modified ${new Date(i.modifiedAt).toISOString()}`,
          i.problem
            ? `  unreadable: ${i.problem}`
            : `  ${i.source}; ${i.volumes} volume(s)${i.rawBytes ? `; disk of ${formatBytes(i.rawBytes)}` : ''}; id ${i.imageId}`,
        ].join('\n'),
      );
    }),
  );
  withClient(
    image
      .command('rm')
      .description('delete an image (not while a session uses it)')
      .argument('<path>', 'image path'),
  ).action((path: string, o: Common) =>
    run(o, async (api) => {
      const r = await api.request<{ removed: string }>('DELETE', `/api/images?path=${enc(path)}`);
      emit(!!o.json, r, () => `removed ${r.removed}`);
    }),
  );

  addWorkstationCommands(program);
  addTaskCommands(program);

  const admins = program.command('admin').description('admin accounts for the web console');
  withClient(
    admins
      .command('add')
      .description('add an admin account (or set its password); the password is read from stdin')
      .argument('<name>', 'account name'),
  ).action((name: string, o: Common) =>
    run(o, async (api) => {
      const password = await readPassword();
      await api.request('POST', '/api/admins', { body: { name, password } });
      emit(!!o.json, { name }, () => `admin ${name} saved`);
    }),
  );
  withClient(admins.command('list').description('admin accounts')).action((o: Common) =>
    run(o, async (api) => {
      const list = await api.request<Array<{ name: string; createdAt: number }>>('GET', '/api/admins');
      emit(!!o.json, list, () => (list.length ? list.map((a) => a.name).join('\n') : 'no admin accounts'));
    }),
  );
  withClient(
    admins.command('rm').description('remove an admin account').argument('<name>', 'account name'),
  ).action((name: string, o: Common) =>
    run(o, async (api) => {
      await api.request('DELETE', `/api/admins/${enc(name)}`);
      emit(!!o.json, { removed: name }, () => `removed admin ${name}`);
    }),
  );
}

interface IdentityFlags {
  names?: string;
  script?: string[];
  scripts?: boolean;
}

/** --names and --script: how the session names its workstations, and what they run after the restore. */
function identityOptions(cmd: Command, edit = false): Command {
  cmd
    .option(
      '--names <template>',
      `name the workstations the administrator has not named: lab1-{nn} (in join order), pc-{mac}${edit ? "; '' for none" : ''}`,
    )
    .option(
      '--script <file>',
      'a post-imaging script every workstation runs after its restore (repeatable)',
      (v: string, all: string[] = []) => [...all, v],
    );
  return edit ? cmd.option('--no-scripts', 'carry no post-imaging script any more') : cmd;
}

/** The body fields of --names and --script; scripts are read here, on the administrator's machine. */
async function identityBody(
  o: IdentityFlags,
): Promise<{ names?: string; scripts?: Array<{ name: string; content: string }> }> {
  const body: { names?: string; scripts?: Array<{ name: string; content: string }> } = {};
  if (o.names !== undefined) body.names = o.names;
  if (o.scripts === false) body.scripts = [];
  if (o.script?.length) {
    body.scripts = await Promise.all(
      o.script.map(async (file) => {
        try {
          return { name: basename(file), content: await readFile(file, 'utf8') };
        } catch (err) {
          throw new UsageError(`cannot read the script ${file}: ${(err as Error).message}`);
        }
      }),
    );
  }
  return body;
}

async function readPassword(): Promise<string> {
  if (process.stdin.isTTY) process.stderr.write('password (end with Enter, then Ctrl-D): ');
  const parts: Buffer[] = [];
  for await (const chunk of process.stdin) parts.push(chunk as Buffer);
  const pw = Buffer.concat(parts)
    .toString('utf8')
    .replace(/\r?\n$/, '');
  if (pw.length < 8) throw new UsageError('the password must have at least 8 characters');
  return pw;
}

function joinedNeeded(s: Session): string {
  return `${s.joined}/${s.needed}`;
}

export function sessionLine(s: Session): string {
  const when =
    s.state === 'waiting'
      ? s.message !== null && (s.master === null ? s.image === '' : !s.master.present)
        ? s.message
        : s.startBy === 'command'
          ? "starts on its master's start command"
          : s.startsInMs === null
            ? s.startBy === 'time'
              ? 'waits for a first client'
              : `waits for ${s.clientCount} client(s)`
            : s.startBy === 'time' || s.needed === 0
              ? `starts in ${formatDuration(s.startsInMs / 1000)}`
              : `starts in ${formatDuration(s.startsInMs / 1000)} or when ${s.needed} more join`
      : s.state === 'sending'
        ? `${s.rateMbit} Mbit/s`
        : (s.message ?? '');
  return `${s.name.padEnd(16)} ${s.state.padEnd(11)} ${joinedNeeded(s).padEnd(6)} ${source(s)}  ${when}`;
}

function clientLine(c: SessionClient): string {
  const pct = c.totalBytes > 0 ? `${Math.floor((100 * c.bytes) / c.totalBytes)}%` : '';
  const progress =
    c.totalBytes > 0 ? `${pct.padStart(4)} ${formatBytes(c.bytes)}/${formatBytes(c.totalBytes)}` : '';
  const rate = c.state === 'receiving' && c.rateMbit > 0 ? `${c.rateMbit.toFixed(0)} Mbit/s` : '';
  const eta = c.etaMs !== null ? formatDuration(c.etaMs / 1000) : '';
  const result = c.state === 'ok' ? 'written and verified' : (c.reason ?? '');
  return `    ${c.name.padEnd(16)} ${c.mac}  ${c.address.padEnd(15)} ${c.state.padEnd(9)} ${progress.padEnd(24)} ${rate.padEnd(12)} ${eta.padEnd(6)} ${result}`;
}

function describeSession(s: Session): string {
  const lines = [sessionLine(s)];
  const a = s.auto;
  if (a) {
    lines.push(
      `    automatic, ${place(a.position)} in the list, ${a.enabled ? 'enabled' : 'disabled'}; ${a.deleteWhenDone ? 'deleted once a run has finished' : 'reopens once a run has finished'}`,
    );
    lines.push(`    listed: ${a.members.length ? a.members.map(who).join(', ') : 'none'}`);
    lines.push(
      a.rules.length
        ? `    rules:\n${a.rules.map((r, i) => ruleLine(r, i, '    ')).join('\n')}`
        : '    rules: none',
    );
  }
  if (s.master) {
    const m = s.master;
    lines.push(
      `    master ${who({ id: m.workstation, name: m.name, mac: m.mac })}: ${m.present ? `connected${m.address ? ` from ${m.address}` : ''}` : 'not connected'}, compression ${m.level}${s.origin === 'workstation' ? ', opened from the workstations (img session)' : ''}`,
    );
  } else if (s.origin === 'workstation' && s.image === '') {
    lines.push(`    opened by its workstations; no master yet`);
  }
  if (s.names) lines.push(`    names the workstations nobody named: ${s.names}`);
  if (s.scripts.length) lines.push(`    post-imaging scripts: ${s.scripts.join(', ')}`);
  if (s.group) lines.push(`    group ${s.group}, port ${s.port}`);
  if (s.message && s.state !== 'waiting') lines.push(`    ${s.message}`);
  for (const c of s.clients) lines.push(clientLine(c));
  return lines.join('\n');
}

/** The other servers sharing the database, when there are any: where their sessions are watched. */
function siteLines(servers: Status['servers']): string[] {
  const others = servers.filter((x) => !x.self);
  if (others.length === 0) return [];
  return [
    `site: ${servers.length} servers share this database; this one shows its own sessions`,
    ...others.map(
      (x) =>
        `  ${x.name} at ${x.url}: ${x.state}${x.state === 'up' ? '' : ` (last seen ${new Date(x.seenAt).toISOString()})`}`,
    ),
  ];
}

function describeStatus(s: Status, boots: BootDecision[] = []): string {
  const c = s.counters;
  const lines = [
    `imgcast server ${s.server.name} (version ${s.server.version}, up ${formatDuration((Date.now() - s.server.startedAt) / 1000)})`,
    ...s.server.warnings.map((w) => `WARNING: ${w}`),
    `requests received ${c.requestsReceived} · images sent ${c.imagesSent} · images received ${c.imagesReceived} · client referrals ${c.clientReferrals} · errors ${c.errors}`,
    ...siteLines(s.servers ?? []),
    '',
  ];
  if (s.sessions.length === 0) lines.push('no sessions');
  for (const session of s.sessions) lines.push(describeSession(session));
  for (const j of s.jobs ?? []) {
    const of =
      j.unit === 'bytes'
        ? `${formatBytes(j.done)}/${formatBytes(j.total)}`
        : `${j.done}/${j.total} ${j.unit}`;
    lines.push(`image ${j.image}: ${j.kind} under way, ${of}`);
  }
  if (boots.length > 0) {
    lines.push('', 'last network boots:');
    for (const b of boots) {
      const who = b.workstation ? `${b.workstation} (${b.mac})` : b.mac;
      lines.push(`  ${new Date(b.at).toISOString()} ${who} ${b.platform}: ${b.decision}: ${b.why}`);
    }
  }
  return lines.join('\n');
}

function describeHistory(h: HistoryEntry): string {
  const ok = h.clients.filter((c) => c.state === 'ok').length;
  const lines = [
    `${new Date(h.finishedAt).toISOString()}  ${h.session} run ${h.run}: ${h.state}, ${ok}/${h.clients.length} ok  ${h.image} (set ${h.fileset})${h.message ? `  ${h.message}` : ''}`,
  ];
  for (const c of h.clients) lines.push(clientLine(c));
  return lines.join('\n');
}

// ------------------------------------------------------------------ automatic sessions

const place = (n: number) => {
  const tens = n % 100;
  return `${n}${tens >= 11 && tens <= 13 ? 'th' : (['th', 'st', 'nd', 'rd'][n % 10] ?? 'th')}`;
};

const who = (w: WorkstationBrief) => (w.name === w.mac ? w.mac : `${w.name} (${w.mac})`);

/** What a session sends: its image, or the disk of its master. */
function source(s: Session): string {
  if (s.master)
    return `the disk of ${who({ id: s.master.workstation, name: s.master.name, mac: s.master.mac })}`;
  return s.image === '' ? 'no master yet' : `${s.image} (set ${s.fileset})`;
}

function addAutoSessionCommands(session: Command): void {
  withClient(
    identityOptions(
      session
        .command('add')
        .description(
          'define an automatic session: the workstations it lists or its rules match join it by themselves (img auto)',
        )
        .argument('<name>', 'session name, unique on the server')
        .option(
          '--image <path>',
          'the image to send, a path inside the server image directory (or its full path)',
        )
        .addOption(new Option('-f, --fileset <n>', 'file set 1-10 to send').argParser(parseFileset))
        .option(
          '--master <workstation>',
          'send the disk of this workstation as it is read (it runs img auto, or img session NAME master)',
        )
        .addOption(
          new Option(
            '-c, --clients <n>',
            "start once this many clients joined (default: the server's autoClients setting, 5 unless changed)",
          ).argParser(positiveInteger),
        )
        .addOption(
          new Option(
            '-t, --minutes <m>',
            "start this long after the last new client joined (default: the server's autoWaitMinutes setting, 15 unless changed)",
          ).argParser(minutes),
        )
        .option(
          '--delete-when-done',
          'delete the session once a run has finished (default: reopen it for the next workstations)',
        )
        .option('--disabled', 'define it disabled: it takes no workstation until `imgcast session enable`'),
    ),
  ).action(
    (
      name: string,
      o: Common &
        IdentityFlags & {
          image?: string;
          fileset?: number;
          master?: string;
          clients?: number;
          minutes?: number;
          deleteWhenDone?: boolean;
          disabled?: boolean;
        },
    ) =>
      run(o, async (api) => {
        if ((o.image === undefined) === (o.master === undefined))
          throw new UsageError('give --image PATH or --master WORKSTATION (one of them)');
        if (o.master !== undefined && o.fileset !== undefined)
          throw new UsageError('--fileset goes with --image: a master sends its whole disk');
        const s = await api.request<Session>('POST', '/api/auto-sessions', {
          body: {
            name,
            image: o.image,
            fileset: o.fileset,
            master: o.master,
            clientCount: o.clients,
            waitMinutes: o.minutes,
            deleteWhenDone: !!o.deleteWhenDone,
            enabled: !o.disabled,
            ...(await identityBody(o)),
          },
        });
        emit(!!o.json, s, () =>
          [
            describeAuto(s),
            `no workstation takes part yet: imgcast session include ${s.name} WORKSTATION…, or imgcast session rule add ${s.name} 'EXPR'`,
          ].join('\n'),
        );
      }),
  );

  withClient(
    session
      .command('list')
      .description('the automatic sessions, in list order (the first that fits a workstation wins)'),
  ).action((o: Common) =>
    run(o, async (api) => {
      const list = await api.request<Session[]>('GET', '/api/auto-sessions');
      emit(!!o.json, list, () => (list.length ? list.map(autoLine).join('\n') : 'no automatic sessions'));
    }),
  );

  for (const [command, path, what] of [
    ['enable', 'enable', 'let an automatic session take workstations again'],
    ['disable', 'disable', 'keep an automatic session from taking workstations (a run under way goes on)'],
    ['up', 'up', 'move an automatic session one place earlier in the list'],
    ['down', 'down', 'move an automatic session one place later in the list'],
  ] as const) {
    withClient(session.command(command).description(what).argument('<name>', 'session name')).action(
      (name: string, o: Common) =>
        run(o, async (api) => {
          const s = await api.request<Session>('POST', `/api/sessions/${enc(name)}/${path}`);
          if (command === 'up' || command === 'down') {
            const list = await api.request<Session[]>('GET', '/api/auto-sessions');
            emit(!!o.json, s, () => list.map(autoLine).join('\n'));
          } else emit(!!o.json, s, () => autoLine(s));
        }),
    );
  }

  withClient(
    session
      .command('rm')
      .description('delete a session of any kind, stopping it first if it runs (its history stays)')
      .argument('<name>', 'session name'),
  ).action((name: string, o: Common) =>
    run(o, async (api) => {
      const s = await api.request<Session>('DELETE', `/api/sessions/${enc(name)}`);
      emit(
        !!o.json,
        s,
        () =>
          `session ${s.name} deleted${s.state === 'stopped' ? ' (stopped first)' : ''}; its history stays`,
      );
    }),
  );

  for (const [command, what] of [
    ['include', 'list workstations explicitly in an automatic session (names or MACs of known workstations)'],
    ['exclude', 'take workstations off the explicit list of an automatic session'],
  ] as const) {
    withClient(
      session
        .command(command)
        .description(what)
        .argument('<name>', 'session name')
        .argument('<workstation...>', 'workstation names or MACs'),
    ).action((name: string, workstations: string[], o: Common) =>
      run(o, async (api) => {
        const s = await api.request<Session>('POST', `/api/sessions/${enc(name)}/${command}`, {
          body: { workstations },
        });
        const members = s.auto?.members ?? [];
        emit(!!o.json, s, () =>
          members.length
            ? `${s.name} lists ${members.length} workstation(s): ${members.map(who).join(', ')}`
            : `${s.name} lists no workstation`,
        );
      }),
    );
  }

  const rule = session.command('rule').description("an automatic session's participation rules");
  withClient(
    rule
      .command('add')
      .description(
        'add a rule: any rule that matches a workstation includes it (the grammar is in the README)',
      )
      .argument('<name>', 'session name')
      .argument('<expr>', `the rule, quoted for the shell, e.g. 'name = "lab1-*" and disk >= 256GB'`),
  ).action((name: string, expr: string, o: Common) =>
    run(o, async (api) => {
      const s = await api.request<Session>('POST', `/api/sessions/${enc(name)}/rules`, {
        body: { rule: expr },
      });
      const rules = s.auto?.rules ?? [];
      emit(!!o.json, s, () => `${s.name} rule ${rules.length}: ${rules.at(-1)?.description ?? expr}`);
    }),
  );
  withClient(
    rule
      .command('list')
      .description("an automatic session's rules, numbered")
      .argument('<name>', 'session name'),
  ).action((name: string, o: Common) =>
    run(o, async (api) => {
      const s = await api.request<Session>('GET', `/api/sessions/${enc(name)}`);
      if (!s.auto) throw new UsageError(`${name} is not an automatic session: it has no rules`);
      const rules = s.auto.rules;
      emit(!!o.json, rules, () =>
        rules.length ? rules.map((x, i) => ruleLine(x, i)).join('\n') : `${s.name} has no rules`,
      );
    }),
  );
  withClient(
    rule
      .command('rm')
      .description('remove a rule by its number (as rule list shows it)')
      .argument('<name>', 'session name')
      .argument('<number>', 'the rule number', positiveInteger),
  ).action((name: string, n: number, o: Common) =>
    run(o, async (api) => {
      const s = await api.request<Session>('DELETE', `/api/sessions/${enc(name)}/rules/${n}`);
      const left = s.auto?.rules.length ?? 0;
      emit(
        !!o.json,
        s,
        () =>
          `removed rule ${n} of ${s.name}; ${left} left${left ? `:\n${s.auto!.rules.map((x, i) => ruleLine(x, i)).join('\n')}` : ''}`,
      );
    }),
  );
}

function ruleLine(r: { text: string; description: string; valid: boolean }, i: number, indent = ''): string {
  const reads = r.valid ? (r.description === r.text ? [] : [`reads as: ${r.description}`]) : [r.description];
  return [`  ${String(i + 1).padStart(2)}. ${r.text}`, ...reads.map((x) => `      ${x}`)]
    .map((line) => indent + line)
    .join('\n');
}

function autoLine(s: Session): string {
  const a = s.auto;
  if (!a) return sessionLine(s);
  const who = `${a.members.length} listed, ${a.rules.length} rule(s)`;
  return `${String(a.position).padStart(2)}. ${s.name.padEnd(16)} ${(a.enabled ? 'enabled' : 'disabled').padEnd(9)} ${s.state.padEnd(11)} ${joinedNeeded(s).padEnd(6)} ${source(s)}  ${who}${a.deleteWhenDone ? ', deleted when done' : ''}`;
}

function describeAuto(s: Session): string {
  const a = s.auto!;
  return [
    `automatic session ${s.name} (${place(a.position)} in the list, ${a.enabled ? 'enabled' : 'disabled'}): ${source(s)}`,
    `  starts once ${s.clientCount} client(s) joined, or ${formatDuration(s.waitMs / 1000)} after the last one joined; ${a.deleteWhenDone ? 'deleted once a run has finished' : 'reopens for the next workstations once a run has finished'}`,
  ].join('\n');
}

// ------------------------------------------------------------------ one-off tasks

function taskLine(t: Task): string {
  const who = `${t.workstation.name} (${t.workstation.mac})`;
  return `${who.padEnd(36)} ${t.image}${t.fileset !== 1 ? ` (file set ${t.fileset})` : ''}  ${t.state}${t.message ? `: ${t.message}` : ''}`;
}

function addTaskCommands(program: Command): void {
  const task = program
    .command('task')
    .description(
      'one-off tasks: image one workstation with an image the next time it runs img auto (or network-boots), before any automatic session',
    );
  withClient(
    task
      .command('add')
      .description(
        'queue a task: the workstation is imaged with the image, once; it stays queued while its runs fail',
      )
      .argument('<workstation>', 'name or MAC of a known workstation')
      .argument('<image>', 'the image, a path inside the server image directory (or its full path)')
      .addOption(new Option('-f, --fileset <n>', 'file set 1-10 to send').argParser(parseFileset))
      .option(
        '--script <file>',
        'a post-imaging script the workstation runs after its restore (repeatable)',
        (v: string, all: string[] = []) => [...all, v],
      ),
  ).action((ref: string, image: string, o: Common & { fileset?: number; script?: string[] }) =>
    run(o, async (api) => {
      const { scripts } = await identityBody({ script: o.script });
      const t = await api.request<Task>('POST', '/api/tasks', {
        body: {
          workstation: ref,
          image,
          ...(o.fileset !== undefined ? { fileset: o.fileset } : {}),
          ...(scripts ? { scripts } : {}),
        },
      });
      emit(
        !!o.json,
        t,
        () =>
          `task queued: ${t.workstation.name} (${t.workstation.mac}) is imaged with ${t.image} the next time it runs img auto or network-boots (session ${t.session})`,
      );
    }),
  );
  withClient(task.command('list').description('the tasks queued, oldest first')).action((o: Common) =>
    run(o, async (api) => {
      const list = await api.request<Task[]>('GET', '/api/tasks');
      emit(!!o.json, list, () => (list.length ? list.map(taskLine).join('\n') : 'no tasks queued'));
    }),
  );
  withClient(
    task
      .command('rm')
      .description("remove a workstation's task (a run under way is stopped); its history stays")
      .argument('<workstation>', 'name or MAC'),
  ).action((ref: string, o: Common) =>
    run(o, async (api) => {
      const t = await api.request<Task>('DELETE', `/api/tasks/${enc(ref)}`);
      emit(!!o.json, t, () => `removed the task of ${t.workstation.name} (${t.image})`);
    }),
  );
}

// ------------------------------------------------------------------ workstations

function addWorkstationCommands(program: Command): void {
  const ws = program
    .command('workstation')
    .description('workstations: those that registered, and those the administrator created before they boot');
  withClient(ws.command('list').description('known workstations, registered or not yet')).action(
    (o: Common) =>
      run(o, async (api) => {
        const list = await api.request<Workstation[]>('GET', '/api/workstations');
        emit(!!o.json, list, () => (list.length ? list.map(workstationLine).join('\n') : 'no workstations'));
      }),
  );
  withClient(
    ws
      .command('show')
      .description('one workstation: its inventory, and which automatic session it would join and why')
      .argument('<workstation>', 'name or MAC'),
  ).action((ref: string, o: Common) =>
    run(o, async (api) => {
      const w = await api.request<WorkstationDetail>('GET', `/api/workstations/${enc(ref)}`);
      const boots = await api.request<BootDecision[]>(
        'GET',
        `/api/boot/decisions?limit=5&workstation=${enc(w.mac)}`,
      );
      emit(!!o.json, { ...w, boots }, () => describeWorkstation(w, boots));
    }),
  );
  withClient(
    ws
      .command('add')
      .description('create a workstation before it ever boots; registering keeps the name given here')
      .argument('<name>', 'its name (letters, digits, ".", "_", "-")')
      .argument('<mac>', 'its MAC address')
      .option('--ip <address>', 'its IP address, as rules on ip see it until it registers'),
  ).action((name: string, mac: string, o: Common & { ip?: string }) =>
    run(o, async (api) => {
      const w = await api.request<Workstation>('POST', '/api/workstations', {
        body: { name, mac, ip: o.ip },
      });
      emit(
        !!o.json,
        w,
        () =>
          `workstation ${w.name} (${w.mac}${w.ip ? `, ${w.ip}` : ''}) created; it gets its inventory and token when it registers`,
      );
    }),
  );
  withClient(
    ws
      .command('edit')
      .description('rename a workstation (registering keeps the name) or set its IP address')
      .argument('<workstation>', 'name or MAC')
      .option('--name <name>', 'its new name')
      .option('--ip <address>', 'its IP address')
      .option('--no-ip', 'forget the IP address given'),
  ).action((ref: string, o: Common & { name?: string; ip?: string | false }) =>
    run(o, async (api) => {
      const body = { name: o.name, ip: o.ip === false ? null : o.ip };
      if (body.name === undefined && body.ip === undefined)
        throw new UsageError('nothing to change: give --name, --ip or --no-ip');
      const w = await api.request<Workstation>('PATCH', `/api/workstations/${enc(ref)}`, { body });
      emit(!!o.json, w, () => workstationLine(w));
    }),
  );
  withClient(
    ws
      .command('rm')
      .description(
        'forget a workstation (not while a session lists it or runs with it); its token stops working',
      )
      .argument('<workstation>', 'name or MAC'),
  ).action((ref: string, o: Common) =>
    run(o, async (api) => {
      const w = await api.request<Workstation>('DELETE', `/api/workstations/${enc(ref)}`);
      emit(!!o.json, w, () => `removed workstation ${w.name} (${w.mac})`);
    }),
  );
  withClient(
    ws
      .command('import')
      .description(
        'create or rename workstations from a lab list: name,mac[,ip] rows, a header row allowed; one bad row imports nothing',
      )
      .argument('<file>', 'the CSV file (- for stdin)'),
  ).action((file: string, o: Common) =>
    run(o, async (api) => {
      const csv = file === '-' ? await readStdin() : await readFile(file, 'utf8');
      const r = await api.request<Imported>('POST', '/api/workstations/import', { body: { csv } });
      emit(
        !!o.json,
        r,
        () =>
          `imported ${r.workstations.length} row(s): ${r.added} added, ${r.updated} updated, ${r.unchanged} unchanged`,
      );
    }),
  );
}

async function readStdin(): Promise<string> {
  const parts: Buffer[] = [];
  for await (const chunk of process.stdin) parts.push(chunk as Buffer);
  return Buffer.concat(parts).toString('utf8');
}

function workstationLine(w: Workstation): string {
  const inv = w.inventory;
  const facts = inv
    ? `${(w.lastAddress ?? '').padEnd(15)}  ${[inv.dmi.vendor, inv.dmi.product].filter(Boolean).join(' ')}  ${formatBytes(inv.memoryBytes)} RAM  seen ${w.lastSeenAt === null ? 'never' : new Date(w.lastSeenAt).toISOString()}`
    : `${(w.ip ?? '').padEnd(15)}  not registered yet`;
  return `${w.name.padEnd(20)} ${w.mac}  ${facts}${w.phase ? `  boot: ${w.phase} ${when(w.phaseAt)}` : ''}`;
}

function when(ms: number | null): string {
  return ms === null ? 'never' : new Date(ms).toISOString();
}

function describeChoice(c: AutoChoice): string {
  if (c.session === null) return `img auto: nothing to do (${c.why})`;
  return c.role === 'master'
    ? `img auto: the master of ${c.session}: sends its disk as it is read: ${c.why}`
    : `img auto: joins ${c.session}: ${c.why}`;
}

function describeWorkstation(w: WorkstationDetail, boots: BootDecision[] = []): string {
  const inv = w.inventory;
  const lines = [
    `${w.name} (${w.mac})${w.named ? ', named by the administrator' : ''}${w.ip ? `, ip ${w.ip}` : ''}`,
  ];
  if (!inv) lines.push('  not registered yet: rules on its hardware do not match it until it does');
  else {
    const disks = inv.disks
      .filter((d) => !d.removable)
      .map((d) => `${d.path} ${formatBytes(d.sizeBytes)}${d.model ? ` ${d.model}` : ''}`);
    lines.push(
      `  host name ${inv.hostname}; addresses ${inv.addresses.join(', ') || 'none'}; last seen ${w.lastSeenAt === null ? 'never' : new Date(w.lastSeenAt).toISOString()} from ${w.lastAddress ?? '?'}`,
      `  ${[inv.dmi.vendor, inv.dmi.product].filter(Boolean).join(' ') || 'unknown model'}${inv.dmi.serial ? `, serial ${inv.dmi.serial}` : ''}; ${inv.cpu.model} (${inv.cpu.cores} cores); ${formatBytes(inv.memoryBytes)} RAM; disks: ${disks.join(', ') || 'none'}`,
    );
  }
  lines.push(`  ${describeChoice(w.auto)}`);
  if (w.phase) lines.push(`  boot phase: ${w.phase} since ${when(w.phaseAt)}`);
  for (const b of boots)
    lines.push(`    network boot ${new Date(b.at).toISOString()} (${b.platform}): ${b.decision}: ${b.why}`);
  const id = w.identity;
  if (!id) lines.push('  identity: none reported yet (it reports one after it is imaged in a session)');
  else {
    lines.push(
      `  identity applied ${new Date(id.reportedAt).toISOString()} (session ${id.session}, image ${id.image}): host name ${id.name ?? "the image's"}${id.machineId ? `, machine-id ${id.machineId}` : ''}${id.windowsName ? `, Windows computer name ${id.windowsName}` : ''}`,
      ...id.sshHostKeys.map((k) => `    SSH host key ${k.type.padEnd(7)} ${k.fingerprint} (${k.bits} bits)`),
      ...id.notes.map((n) => `    note: ${n}`),
    );
  }
  return lines.join('\n');
}
