/**
 * The admin CLI: `imgcast mcast | status | list | stop | session … | image … | workstation list |
 * history | admin add`, each a client of the server's HTTP API (server-client.ts says how the
 * server and the token are found).
 */
import { Command, Option } from 'commander';

import type { ApiClient } from '../api/client.ts';
import type { HistoryEntry, Image, Session, SessionClient, Status, Workstation } from '../api/schemas.ts';
import { UsageError } from '../errors.ts';
import { parseFileset } from './img.ts';
import { positiveInteger } from './options.ts';
import { emit, formatBytes, formatDuration, runCommand } from './output.ts';
import { adminClient } from './server-client.ts';

interface Common {
  server?: string;
  data?: string;
  json?: boolean;
}

const serverOption = () =>
  new Option('-i, --server <host[:port]>', 'the imaging server (default: this machine, port 7740)');
const dataOption = () => new Option('--data <dir>', "the local server's data directory, for its admin token");
const jsonOption = () => new Option('--json', 'print the result as JSON');

function withClient(cmd: Command): Command {
  return cmd.addOption(serverOption()).addOption(dataOption()).addOption(jsonOption());
}

function minutes(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < 0)
    throw new UsageError(`minutes must be 0 or more, not "${value}"`);
  return n;
}

function run(o: Common, body: (api: ApiClient) => Promise<void>): Promise<void> {
  return runCommand('imgcast', !!o.json, async () => body(adminClient(o)));
}

const enc = encodeURIComponent;

export function addAdminCommands(program: Command): void {
  withClient(
    program
      .command('mcast')
      .description('create a multicast session of an image on the server; it starts when its trigger fires')
      .argument('<name>', 'session name, unique on the server (workstations join it with img session NAME)')
      .requiredOption(
        '-p, --path <image>',
        'the image, a path inside the server image directory (or its full path)',
      )
      .addOption(new Option('-f, --fileset <n>', 'file set 1-10 to send').argParser(parseFileset).default(1))
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
  ).action((name: string, o: Common & { path: string; fileset: number; time: number; count: number }) =>
    run(o, async (api) => {
      const s = await api.request<Session>('POST', '/api/sessions', {
        body: { name, image: o.path, fileset: o.fileset, clientCount: o.count, waitMinutes: o.time },
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
      if (!o.watch) {
        const s = await api.request<Status>('GET', '/api/status');
        emit(!!o.json, s, () => describeStatus(s));
        return;
      }
      for (;;) {
        const s = await api.request<Status>('GET', '/api/status');
        if (o.json) process.stdout.write(`${JSON.stringify(s)}\n`);
        else process.stdout.write(`\x1b[H\x1b[2J${describeStatus(s)}\n`);
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

  const session = program.command('session').description('change, start or reopen a session');
  withClient(
    session
      .command('edit')
      .description('change the start trigger of a waiting session')
      .argument('<name>', 'session name')
      .addOption(
        new Option('-c, --count <clients>', 'start once this many clients joined').argParser(positiveInteger),
      )
      .addOption(
        new Option('-t, --time <minutes>', 'start this long after the last new client joined').argParser(
          minutes,
        ),
      ),
  ).action((name: string, o: Common & { count?: number; time?: number }) =>
    run(o, async (api) => {
      if (o.count === undefined && o.time === undefined)
        throw new UsageError('give -c COUNT and/or -t MINUTES');
      const s = await api.request<Session>('PATCH', `/api/sessions/${enc(name)}`, {
        body: { clientCount: o.count, waitMinutes: o.time },
      });
      emit(!!o.json, s, () => sessionLine(s));
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

  const ws = program.command('workstation').description('workstations that registered with the server');
  withClient(ws.command('list').description('registered workstations')).action((o: Common) =>
    run(o, async (api) => {
      const list = await api.request<Workstation[]>('GET', '/api/workstations');
      emit(!!o.json, list, () =>
        list.length
          ? list
              .map(
                (w) =>
                  `${w.name.padEnd(20)} ${w.mac}  ${w.lastAddress.padEnd(15)}  ${[w.inventory.dmi.vendor, w.inventory.dmi.product].filter(Boolean).join(' ')}  ${formatBytes(w.inventory.memoryBytes)} RAM  seen ${new Date(w.lastSeenAt).toISOString()}`,
              )
              .join('\n')
          : 'no workstations registered',
      );
    }),
  );

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
      ? s.startsInMs === null
        ? `waits for ${s.clientCount} client(s)`
        : `starts in ${formatDuration(s.startsInMs / 1000)} or when ${s.needed} more join`
      : s.state === 'sending'
        ? `${s.rateMbit} Mbit/s`
        : (s.message ?? '');
  return `${s.name.padEnd(16)} ${s.state.padEnd(11)} ${joinedNeeded(s).padEnd(6)} ${s.image} (set ${s.fileset})  ${when}`;
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
  if (s.group) lines.push(`    group ${s.group}, port ${s.port}`);
  if (s.message && s.state !== 'waiting') lines.push(`    ${s.message}`);
  for (const c of s.clients) lines.push(clientLine(c));
  return lines.join('\n');
}

function describeStatus(s: Status): string {
  const c = s.counters;
  const lines = [
    `imgcast server ${s.server.name} (version ${s.server.version}, up ${formatDuration((Date.now() - s.server.startedAt) / 1000)})`,
    `requests received ${c.requestsReceived} · images sent ${c.imagesSent} · images received ${c.imagesReceived} · client referrals ${c.clientReferrals} · errors ${c.errors}`,
    '',
  ];
  if (s.sessions.length === 0) lines.push('no sessions');
  for (const session of s.sessions) lines.push(describeSession(session));
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
