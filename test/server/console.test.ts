/**
 * The web console as the server serves it (src/server/console.ts) and the API calls made for
 * it: the page and every module it imports, from this origin only, small on the wire,
 * revalidated by ETag; POST /api/rules/check, the rule editor's check as it is typed.
 * The console in a real browser is test/console/console.test.ts.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { test, type TestContext } from 'node:test';
import { gunzipSync } from 'node:zlib';
import { pino } from 'pino';

import type { RuleCheckResult } from '../../src/api/schemas.ts';
import { startServer, type RunningServer } from '../../src/server/server.ts';
import type { SendSession } from '../../src/server/sessions.ts';
import { call, ok, register } from '../helpers/api-calls.ts';
import { tempDir } from '../helpers/env.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const IMG = join(ROOT, 'bin/img.js');
const ENV = { ...process.env, PATH: `${join(ROOT, 'node_modules/.bin')}:${process.env.PATH ?? ''}` };

const idle: SendSession = (plan) =>
  new Promise((_r, reject) =>
    plan.signal.addEventListener('abort', () => reject(plan.signal.reason as Error)),
  );

async function server(t: TestContext): Promise<{ server: RunningServer }> {
  const dir = await tempDir(t, 'imgcast-console-');
  const folder = join(dir, 'folder');
  mkdirSync(folder);
  writeFileSync(join(folder, 'a.txt'), 'a\n');
  mkdirSync(join(dir, 'images'));
  execFileSync(IMG, ['make', folder, join(dir, 'images', 'lab.imgc')], { env: ENV, stdio: 'pipe' });
  const s = await startServer({
    dataDir: join(dir, 'data'),
    imagesDir: join(dir, 'images'),
    host: '127.0.0.1',
    port: 0,
    range: { firstGroup: '239.77.13.1', firstPort: 31500, slots: 2 },
    version: 'test',
    name: 'console-test',
    logger: pino({ level: 'silent' }),
    send: idle,
  });
  t.after(() => s.close());
  return { server: s };
}

/** What the browser fetches for the first page: the page, and what it links and imports, recursively. */
async function firstPage(
  url: string,
): Promise<Map<string, { status: number; wire: number; body: string; headers: Headers }>> {
  const got = new Map<string, { status: number; wire: number; body: string; headers: Headers }>();
  const queue = ['/'];
  while (queue.length) {
    const path = queue.shift()!;
    if (got.has(path)) continue;
    const res = await fetch(`${url}${path}`, { headers: { 'accept-encoding': 'gzip' } });
    // fetch unzips; the wire size is the gzipped body, so ask again for the raw bytes.
    const raw = await rawGet(`${url}${path}`);
    const body = await res.text();
    got.set(path, { status: res.status, wire: raw.length, body, headers: res.headers });
    const refs = [
      ...body.matchAll(/(?:href|src)="(\/[^"]+)"/g),
      ...body.matchAll(/from\s*['"](\.\/[^'"]+|\/[^'"]+)['"]/g),
      ...body.matchAll(/"(\/console\/vendor\/[^"]+)"/g),
    ].map((m) => m[1]!);
    for (const r of refs) queue.push(r.startsWith('./') ? `/console/${r.slice(2)}` : r);
  }
  return got;
}

async function rawGet(url: string): Promise<Buffer> {
  const { request } = await import('node:http');
  return new Promise((done, fail) => {
    request(url, { headers: { 'accept-encoding': 'gzip' } }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('end', () => done(Buffer.concat(parts)));
    })
      .on('error', fail)
      .end();
  });
}

test('the console: / and every file it imports are served, gzipped, from this origin only, well under 200 KB on the wire', async (t) => {
  const f = await server(t);
  const files = await firstPage(f.server.url);
  const page = files.get('/')!;
  assert.equal(page.status, 200);
  assert.match(page.headers.get('content-type') ?? '', /^text\/html/);
  for (const [path, file] of files) {
    assert.equal(file.status, 200, `${path} is served`);
    assert.equal(file.headers.get('content-encoding'), 'gzip', `${path} is gzipped`);
    // No request to any other host: no absolute URL in what the browser runs (XML namespace
    // names such as SVG's are names, never fetched).
    const named = file.body.replaceAll(
      /http:\/\/www\.w3\.org\/(?:2000\/svg|1999\/xlink|1998\/Math\/MathML|1999\/xhtml)/g,
      '',
    );
    assert.doesNotMatch(named, /(?:https?:)?\/\/[a-z0-9.-]+\.[a-z]{2,}\//i, `${path} names no other host`);
  }
  for (const need of [
    '/console/app.js',
    '/console/vendor/preact.mjs',
    '/console/vendor/hooks.mjs',
    '/console/vendor/htm.mjs',
    '/console/console.css',
  ]) {
    assert.ok(files.has(need), `the page loads ${need}`);
  }
  const wire = [...files.values()].reduce((n, x) => n + x.wire, 0);
  t.diagnostic(`first page: ${files.size} files, ${wire} bytes on the wire`);
  assert.ok(wire < 200 * 1024, `the first page is ${wire} bytes on the wire`);
  assert.ok(
    gunzipSync(await rawGet(`${f.server.url}/console/app.js`))
      .toString()
      .includes('render('),
  );

  // The policy allows this origin and the page's one inline script, the import map, by its hash.
  const csp = page.headers.get('content-security-policy') ?? '';
  assert.match(csp, /default-src 'self'/);
  assert.match(csp, /connect-src 'self'/);
  const map = /<script type="importmap">([\s\S]*?)<\/script>/.exec(page.body)![1]!;
  assert.ok(
    csp.includes(`'sha256-${createHash('sha256').update(map).digest('base64')}'`),
    'the import map hash',
  );
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|\*/);

  // Revalidation: an unchanged file is a 304.
  const etag = files.get('/console/app.js')!.headers.get('etag')!;
  const again = await fetch(`${f.server.url}/console/app.js`, { headers: { 'if-none-match': etag } });
  assert.equal(again.status, 304);
  // The API stays the API: an unknown console file is a 404 like any unknown call.
  const missing = await fetch(`${f.server.url}/console/nope.js`);
  assert.equal(missing.status, 404);
});

test('POST /api/rules/check: how the server reads a rule and which workstations it matches, each with the session it joins; a bad rule says where', async (t) => {
  const f = await server(t);
  await register(f, 'lab1-01', { disk: 256e9 });
  await register(f, 'lab1-02', { disk: 128e9 });
  await register(f, 'lab2-01', { disk: 512e9 });
  await ok(f, 'POST', '/api/auto-sessions', {
    body: { name: 'big', image: 'lab.imgc', rules: ['disk >= 500GB'] },
  });

  const good = await ok<RuleCheckResult>(f, 'POST', '/api/rules/check', { body: { rule: 'disk>=200gb' } });
  assert.equal(good.ok, true);
  if (!good.ok) return;
  assert.equal(good.rule, 'disk >= 200GB');
  assert.deepEqual(
    good.matches.map((m) => [m.name, m.joins]),
    [
      ['lab1-01', null],
      ['lab2-01', 'big'],
    ],
  );

  const bad = await ok<RuleCheckResult>(f, 'POST', '/api/rules/check', {
    body: { rule: 'name = "lab1-*" and disk >= 256 GB' },
  });
  assert.equal(bad.ok, false);
  if (bad.ok) return;
  assert.equal(bad.error, 'E_RULE_INVALID');
  assert.equal(bad.column, 33);
  assert.equal(bad.position, 32);
  assert.match(bad.message, /write the unit next to the number: 256GB/);

  // The check is an admin call like the rest, and a body that is no rule is refused as any.
  const ws = await register(f, 'pc9');
  assert.equal(
    (await call(f, 'POST', '/api/rules/check', { token: ws.token, body: { rule: 'cores > 1' } })).status,
    403,
  );
  assert.equal((await call(f, 'POST', '/api/rules/check', { body: { rule: '' } })).status, 400);
});
