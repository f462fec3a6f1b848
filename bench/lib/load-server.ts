/**
 * The server under load (bench/server.ts): the real `startServer` on loopback, whose sessions'
 * multicast send is a stand-in that runs until stopped, so the load measures the API and the
 * scheduler rather than the network. Prints { url, token, pid } on stdout, then runs until SIGTERM.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { pino } from 'pino';

import { startServer } from '../../src/server/server.ts';

const [dataDir] = process.argv.slice(2);
const serverSide: Record<string, number[]> = {};
const loopDelay = monitorEventLoopDelay({ resolution: 5 });
loopDelay.enable();
if (!dataDir) throw new Error('usage: load-server.ts DATA_DIR');
const server = await startServer({
  dataDir,
  host: '127.0.0.1',
  port: 0,
  version: 'bench',
  range: { firstGroup: '239.77.200.1', firstPort: 41000, slots: 4 },
  logger: pino({ level: 'warn' }),
  // Time in the server from the request's arrival to the reply's end, without the client's own delays.
  plugins: [
    (app) => {
      app.addHook('onResponse', async (req, reply) => {
        if (req.routeOptions.url?.endsWith('/wait')) return;
        (serverSide[req.routeOptions.url ?? 'unknown'] ??= []).push(reply.elapsedTime);
      });
    },
  ],
  send: (plan) =>
    new Promise((resolve) => plan.signal.addEventListener('abort', () => resolve({ receivers: [] }))),
});
process.stdout.write(`${JSON.stringify({ url: server.url, token: server.adminToken, pid: process.pid })}\n`);
process.on('SIGTERM', () => {
  const all = Object.values(serverSide)
    .flat()
    .sort((a, b) => a - b);
  const at = (q: number) => all[Math.min(all.length - 1, Math.floor(q * all.length))] ?? NaN;
  process.stdout.write(
    `${JSON.stringify({
      serverSide: { count: all.length, p50: at(0.5), p99: at(0.99) },
      loopDelayMs: { p99: loopDelay.percentile(99) / 1e6, max: loopDelay.max / 1e6 },
    })}\n`,
  );
  void server.close().then(() => process.exit(0));
});
