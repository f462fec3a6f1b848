/**
 * The server under load (bench/server.ts): the real `startServer` on loopback, whose sessions'
 * multicast send is a stand-in that runs until stopped, so the load measures the API and the
 * scheduler rather than the network. Prints { url, token, pid } on stdout, then runs until SIGTERM.
 */
import { pino } from 'pino';

import { startServer } from '../../src/server/server.ts';

const [dataDir] = process.argv.slice(2);
if (!dataDir) throw new Error('usage: load-server.ts DATA_DIR');
const server = await startServer({
  dataDir,
  host: '127.0.0.1',
  port: 0,
  version: 'bench',
  range: { firstGroup: '239.77.200.1', firstPort: 41000, slots: 4 },
  logger: pino({ level: 'warn' }),
  send: (plan) =>
    new Promise((resolve) =>
      plan.signal.addEventListener('abort', () =>
        resolve({
          ok: false,
          nonce: '0',
          chunks: 0,
          bytes: 0,
          durationMs: 0,
          receivers: [],
          counters: {} as never,
        }),
      ),
    ),
});
process.stdout.write(`${JSON.stringify({ url: server.url, token: server.adminToken, pid: process.pid })}\n`);
process.on('SIGTERM', () => void server.close().then(() => process.exit(0)));
