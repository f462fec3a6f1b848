/**
 * The web console's files: the page at `/` and its scripts and styles under `/console/`, read
 * from src/console when the server starts, with Preact, its hooks and htm taken from the
 * installed packages (`/console/vendor/`). No build step: the browser runs these ES modules
 * as they are, and an import map in the page names the libraries.
 *
 * Every file is public (the console asks for a sign-in and calls the API, which checks every
 * call); nothing comes from another host: the Content-Security-Policy allows this origin only,
 * plus the page's one inline script, the import map, by its hash. Files are sent gzipped to
 * browsers that take it (the first page, libraries included, is some 40 KB on the wire) and
 * revalidated by ETag.
 */
import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { extname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

import type { ApiApp } from './app.ts';

const CONSOLE_DIR = fileURLToPath(new URL('../console/', import.meta.url));

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
};

/** The libraries, by the URL the page's import map gives them. */
const VENDOR: Record<string, string> = {
  'preact.mjs': 'preact',
  'hooks.mjs': 'preact/hooks',
  'htm.mjs': 'htm',
};

interface ConsoleFile {
  type: string;
  body: Buffer;
  gzip: Buffer;
  etag: string;
}

function prepare(path: string, body: Buffer): ConsoleFile {
  return {
    type: TYPES[extname(path)] ?? 'application/octet-stream',
    body,
    gzip: gzipSync(body, { level: 9 }),
    etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"`,
  };
}

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await filesUnder(path)));
    else if (e.isFile() && TYPES[extname(e.name)]) out.push(path);
  }
  return out;
}

/** The console's files by URL path, and the page's Content-Security-Policy. */
export async function loadConsole(): Promise<{ files: Map<string, ConsoleFile>; csp: string }> {
  const files = new Map<string, ConsoleFile>();
  for (const path of await filesUnder(CONSOLE_DIR)) {
    const url = `/console/${relative(CONSOLE_DIR, path).split('\\').join('/')}`;
    files.set(url, prepare(path, await readFile(path)));
  }
  for (const [name, specifier] of Object.entries(VENDOR)) {
    const path = fileURLToPath(import.meta.resolve(specifier));
    files.set(`/console/vendor/${name}`, prepare(path, await readFile(path)));
  }
  const page = files.get('/console/index.html');
  if (!page) throw new Error(`the console's page is missing: ${join(CONSOLE_DIR, 'index.html')}`);
  const inline = [
    ...page.body.toString('utf8').matchAll(/<script type="importmap">([\s\S]*?)<\/script>/g),
  ].map((m) => `'sha256-${createHash('sha256').update(m[1]!).digest('base64')}'`);
  const csp = [
    "default-src 'self'",
    `script-src 'self' ${inline.join(' ')}`,
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
  ].join('; ');
  return { files, csp };
}

/** `/` and `/console/*`; a plugin of the API (see AppContext.plugins). */
export async function consoleRoutes(app: ApiApp): Promise<void> {
  const { files, csp } = await loadConsole();
  const route = (url: string, f: ConsoleFile) =>
    app.get(url, { config: { access: 'public' }, schema: { hide: true } }, async (req, reply) => {
      void reply
        .header('content-type', f.type)
        .header('cache-control', 'no-cache')
        .header('etag', f.etag)
        .header('vary', 'accept-encoding')
        .header('x-content-type-options', 'nosniff')
        .header('referrer-policy', 'no-referrer');
      if (f.type.startsWith('text/html')) void reply.header('content-security-policy', csp);
      if (req.headers['if-none-match'] === f.etag) return reply.status(304).send();
      if (/\bgzip\b/.test(req.headers['accept-encoding'] ?? '')) {
        return reply.header('content-encoding', 'gzip').send(f.gzip);
      }
      return reply.send(f.body);
    });
  for (const [url, f] of files) route(url === '/console/index.html' ? '/' : url, f);
}
