/**
 * An imaging server with the upload routes in a process of its own, for tests that kill it:
 * `node upload-server-main.ts DATA_DIR [IDLE_MS]` prints one JSON line { url, token } once it listens.
 */
import { randomInt } from 'node:crypto';
import { pino } from 'pino';

import { startServer } from '../../src/server/server.ts';

const [dataDir, idleMs] = process.argv.slice(2);
const s = await startServer({
  dataDir: dataDir!,
  port: 0,
  host: '127.0.0.1',
  version: 'test',
  range: { firstGroup: '239.77.9.1', firstPort: randomInt(40000, 60000), slots: 2 },
  logger: pino({ level: 'silent' }),
  uploads: idleMs ? { idleMs: Number(idleMs) } : {},
});
process.stdout.write(`${JSON.stringify({ url: s.url, token: s.adminToken })}\n`);
process.on('SIGTERM', () => void s.close().then(() => process.exit(0)));
