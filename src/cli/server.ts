/** `imgcast server`: runs the imaging server in the foreground until SIGINT or SIGTERM. */
import { Command, InvalidArgumentError, Option } from 'commander';

import { discoveryEndpoint } from '../api/discovery.ts';
import { localIPv4 } from './options.ts';
import { VERSION, runCommand } from './output.ts';
import { defaultDataDir } from './server-client.ts';
import { UsageError } from '../errors.ts';
import { KERNEL_ARGS } from '../server/pxe.ts';

function listenAddress(value: string): { host: string; port: number } {
  const m = /^(?:(\d+\.\d+\.\d+\.\d+|\[[0-9a-fA-F:]+\]|localhost):)?(\d+)$/.exec(value);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !(port >= 0 && port <= 65535))
    throw new InvalidArgumentError('ADDR:PORT or PORT, e.g. 0.0.0.0:7740');
  return { host: (m[1] ?? '0.0.0.0').replace(/^\[|\]$/g, ''), port };
}

function portRange(value: string): { firstPort: number; slots: number } {
  const m = /^(\d+)-(\d+)$/.exec(value);
  const a = Number(m?.[1]);
  const b = Number(m?.[2]);
  if (!m || a < 1024 || b > 65535 || b - a < 1)
    throw new InvalidArgumentError('FIRST-LAST within 1024-65535, e.g. 7750-7949');
  return { firstPort: a, slots: Math.floor((b - a + 1) / 2) };
}

function pxeRange(value: string): { start: string; end: string } {
  const m = /^(\d+\.\d+\.\d+\.\d+),(\d+\.\d+\.\d+\.\d+)$/.exec(value.trim());
  const ok = (ip: string) => ip.split('.').every((b) => Number(b) <= 255);
  if (!m || !ok(m[1]!) || !ok(m[2]!))
    throw new InvalidArgumentError('START,END: two IPv4 addresses, e.g. 10.0.9.100,10.0.9.199');
  return { start: m[1]!, end: m[2]! };
}

function kernelArgs(value: string): string {
  if (!KERNEL_ARGS.test(value.trim()))
    throw new InvalidArgumentError('plain words (letters, digits, . _ , : = / + -) separated by spaces');
  return value.trim();
}

function databaseUrl(text: string): string {
  if (!/^postgres(ql)?:\/\/./.test(text))
    throw new InvalidArgumentError('give a postgresql://USER@HOST[:PORT]/DATABASE URL');
  return text;
}

/** --database, else IMGCAST_DATABASE (checked as --database is), else the embedded file. */
function databaseOf(given: string | undefined): string | undefined {
  const env = process.env.IMGCAST_DATABASE;
  if (given !== undefined) return given;
  if (env === undefined || env === '') return undefined;
  if (!/^postgres(ql)?:\/\/./.test(env))
    throw new UsageError(`IMGCAST_DATABASE: give a postgresql://USER@HOST[:PORT]/DATABASE URL`);
  return env;
}

function publicUrl(text: string): string {
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    throw new InvalidArgumentError('give an http://HOST:PORT URL');
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:')
    throw new InvalidArgumentError('give an http://HOST:PORT URL');
  return text.replace(/\/+$/, '');
}

export function addServerCommand(program: Command): void {
  program
    .command('server')
    .description(
      'run the imaging server: images, sessions, multicast senders, HTTP API (state in an embedded database)',
    )
    .addOption(
      new Option(
        '--data <dir>',
        'state: database, admin token (default /var/lib/imgcast/server as root, else ~/.local/share/imgcast; env IMGCAST_DATA)',
      ),
    )
    .addOption(new Option('--images <dir>', 'image directory (default DATA/images)'))
    .addOption(
      new Option('--listen <addr:port>', 'HTTP API address')
        .argParser(listenAddress)
        .default({ host: '0.0.0.0', port: 7740 }, '0.0.0.0:7740'),
    )
    .addOption(
      new Option(
        '--interface <addr>',
        'local IPv4 address to multicast from (default: the route to the group)',
      ).argParser(localIPv4),
    )
    .addOption(
      new Option(
        '--ports <first-last>',
        'port range for sessions: each sending session takes two (control TCP, first data UDP; its data also uses the 7 UDP ports after)',
      )
        .argParser(portRange)
        .default({ firstPort: 7750, slots: 100 }, '7750-7949'),
    )
    .addOption(
      new Option(
        '--groups <first>',
        'first multicast group for sessions (239.0.0.0/8); each sending session takes the next',
      ).default('239.255.43.1'),
    )
    .addOption(
      new Option(
        '--discovery <group:port>',
        'answer workstations looking for a server here (default 239.255.42.250:7741; env IMGCAST_DISCOVERY); "off" to stay silent',
      ),
    )
    .option(
      '--name <name>',
      'how this server names itself to workstations and to the other servers of its site (default: host name)',
    )
    .addOption(
      new Option(
        '--database <url>',
        'a postgresql://USER@HOST/DB that several servers of a site share (password: PGPASSWORD or ~/.pgpass; env IMGCAST_DATABASE); default: the embedded SQLite file DATA/imgcast.db',
      ).argParser(databaseUrl),
    )
    .addOption(
      new Option(
        '--url <url>',
        'where workstations reach this server, as the other servers of the site refer them here (default http://INTERFACE:PORT, else the host name)',
      ).argParser(publicUrl),
    )
    .option(
      '--pxe',
      'answer network boot requests (dnsmasq: proxy DHCP and TFTP) so workstations boot the imaging environment, or their own disk when there is nothing for them',
    )
    .addOption(
      new Option(
        '--pxe-mode <mode>',
        "proxy: beside the site's DHCP server, hands out no address; dhcp: hands out --pxe-range (an isolated lab network)",
      )
        .choices(['proxy', 'dhcp'])
        .default('proxy'),
    )
    .addOption(
      new Option('--pxe-range <start,end>', 'with --pxe-mode dhcp: the addresses to hand out').argParser(
        pxeRange,
      ),
    )
    .option(
      '--pxe-interface <iface>',
      'the interface to answer network boots on (default: the only one with an IPv4 address)',
    )
    .option('--bootenv <dir>', 'the imaging environment network boots load (default DATA/bootenv)')
    .addOption(
      new Option(
        '--boot-args <args>',
        'kernel arguments the network-booted environment gets besides the server address (e.g. imgcast.done=poweroff)',
      ).argParser(kernelArgs),
    )
    .action(
      (o: {
        data?: string;
        images?: string;
        listen: { host: string; port: number };
        interface?: string;
        ports: { firstPort: number; slots: number };
        groups: string;
        discovery?: string;
        name?: string;
        database?: string;
        url?: string;
        pxe?: boolean;
        pxeMode: 'proxy' | 'dhcp';
        pxeRange?: { start: string; end: string };
        pxeInterface?: string;
        bootenv?: string;
        bootArgs?: string;
      }) =>
        runCommand(
          'imgcast',
          false,
          async (signal) => {
            const { startServer } = await import('../server/server.ts');
            const dataDir = o.data ?? defaultDataDir();
            const database = databaseOf(o.database);
            if (!o.pxe && (o.pxeRange || o.pxeInterface || o.pxeMode !== 'proxy'))
              throw new UsageError('--pxe-mode, --pxe-range and --pxe-interface go with --pxe');
            if (o.pxe && o.pxeMode === 'dhcp' && !o.pxeRange)
              throw new UsageError(
                '--pxe-mode dhcp hands out addresses: give them with --pxe-range START,END',
              );
            if (o.pxeRange && o.pxeMode !== 'dhcp')
              throw new UsageError('--pxe-range is for --pxe-mode dhcp; proxy mode hands out no address');
            const server = await startServer({
              dataDir,
              imagesDir: o.images,
              host: o.listen.host,
              port: o.listen.port,
              interface: o.interface,
              range: { firstGroup: o.groups, firstPort: o.ports.firstPort, slots: o.ports.slots },
              name: o.name,
              ...(o.url !== undefined ? { publicUrl: o.url } : {}),
              ...(database !== undefined ? { database } : {}),
              version: VERSION,
              discovery:
                o.discovery === 'off'
                  ? undefined
                  : discoveryEndpoint({ IMGCAST_DISCOVERY: o.discovery ?? process.env.IMGCAST_DISCOVERY }),
              ...(o.bootenv !== undefined ? { bootenvDir: o.bootenv } : {}),
              ...(o.bootArgs !== undefined ? { kernelArgs: o.bootArgs } : {}),
              ...(o.pxe
                ? {
                    pxe: {
                      mode: o.pxeMode,
                      ...(o.pxeRange ? { range: o.pxeRange } : {}),
                      ...(o.pxeInterface !== undefined ? { interface: o.pxeInterface } : {}),
                    },
                  }
                : {}),
            });
            const where =
              o.listen.host === '0.0.0.0'
                ? `all addresses, port ${o.listen.port}`
                : `${o.listen.host}:${o.listen.port}`;
            process.stderr.write(
              [
                `imgcast server ${VERSION}: API on ${where} (${server.url}/api/health, OpenAPI at ${server.url}/api/openapi.json)`,
                `  data:   ${server.dataDir}`,
                `  images: ${server.imagesDir}`,
                `  database: ${server.database}${
                  server.servers().length > 1
                    ? `, shared with ${server
                        .servers()
                        .filter((x) => !x.self)
                        .map((x) => `${x.name} (${x.state})`)
                        .join(', ')}`
                    : ''
                }`,
                `  admin token: ${server.adminTokenFile}${server.adminTokenCreated ? ' (created now)' : ''}; the imgcast CLI on this machine reads it,`,
                `    elsewhere: IMGCAST_TOKEN=$(cat ${server.adminTokenFile}) imgcast status -i THIS-SERVER`,
                `  web console: ${server.url}/ (accounts: imgcast admin add NAME, password on stdin)`,
                `  workstations: img session NAME [--server THIS-SERVER]`,
                `  network boot: ${server.url}/boot/boot.ipxe (imaging environment in ${server.bootenvDir})${o.pxe ? `; answering PXE requests (${o.pxeMode === 'proxy' ? 'proxy DHCP' : 'DHCP'})` : ''}`,
                ...server.warnings().map((w) => `  WARNING: ${w}`),
                '',
              ].join('\n'),
            );
            await new Promise<void>((resolve) =>
              signal.addEventListener('abort', () => resolve(), { once: true }),
            );
            process.stderr.write('imgcast server: stopping\n');
            await server.close();
          },
          { interruptible: true },
        ),
    );
}
