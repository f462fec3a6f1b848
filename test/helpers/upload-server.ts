/** A real imaging server with the upload routes, on a free port of 127.0.0.1, stopped when the test ends. */
import { randomInt } from 'node:crypto';
import type { TestContext } from 'node:test';
import { pino } from 'pino';

import { ApiClient } from '../../src/api/client.ts';
import { startServer } from '../../src/server/server.ts';
import type { UploadOptions } from '../../src/server/uploads.ts';
import { tempDir } from './env.ts';

export async function uploadServer(t: TestContext, opts: UploadOptions = {}, dataDir?: string) {
  const dir = dataDir ?? (await tempDir(t));
  const s = await startServer({
    dataDir: dir,
    port: 0,
    host: '127.0.0.1',
    version: 'test',
    // Sessions are not used here; a random group port keeps parallel test files apart all the same.
    range: { firstGroup: '239.77.9.1', firstPort: randomInt(40000, 60000), slots: 2 },
    logger: pino({ level: 'silent' }),
    uploads: opts,
  });
  t.after(() => s.close());
  return { s, admin: new ApiClient(s.url, s.adminToken), images: s.imagesDir, host: new URL(s.url).host };
}
