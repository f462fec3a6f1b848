/** `imgcast server`: runs the imaging server in the foreground until SIGINT or SIGTERM. */
import { Command, InvalidArgumentError, Option } from 'commander';

import { discoveryEndpoint } from '../api/discovery.ts';
import { localIPv4 } from './options.ts';
import { VERSION, runCommand } from './output.ts';
import { defaultDataDir } from './server-client.ts';

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
        'port range for sessions: each sending session takes two (control, data)',
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
    .option('--name <name>', 'how this server names itself to workstations (default: host name)')
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
      }) =>
        runCommand(
          'imgcast',
          false,
          async (signal) => {
            const { startServer } = await import('../server/server.ts');
            const dataDir = o.data ?? defaultDataDir();
            const server = await startServer({
              dataDir,
              imagesDir: o.images,
              host: o.listen.host,
              port: o.listen.port,
              interface: o.interface,
              range: { firstGroup: o.groups, firstPort: o.ports.firstPort, slots: o.ports.slots },
              name: o.name,
              version: VERSION,
              discovery:
                o.discovery === 'off'
                  ? undefined
                  : discoveryEndpoint({ IMGCAST_DISCOVERY: o.discovery ?? process.env.IMGCAST_DISCOVERY }),
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
                `  admin token: ${server.adminTokenFile}${server.adminTokenCreated ? ' (created now)' : ''}; the imgcast CLI on this machine reads it,`,
                `    elsewhere: IMGCAST_TOKEN=$(cat ${server.adminTokenFile}) imgcast status -i THIS-SERVER`,
                `  web console: ${server.url}/ (accounts: imgcast admin add NAME, password on stdin)`,
                `  workstations: img session NAME [--server THIS-SERVER]`,
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
