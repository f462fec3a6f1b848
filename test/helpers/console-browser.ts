/**
 * What the web console's browser tests share: Debian's headless Chromium driven by
 * playwright-core (or the reason they skip), an imaging server on 127.0.0.1 with an admin
 * account and images made by `img make`, a fresh tab at the classroom PC's 1280×800 that fails
 * its test on any script error or request to another host, the sign-in, the message a field's
 * aria-describedby points at, and the screenshots kept in test-artifacts/console/ (git-ignored).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { TestContext } from 'node:test';
import { pino } from 'pino';
import type { Browser, BrowserContext, Locator, Page } from 'playwright-core';

import { startServer, type RunningServer, type ServerOptions } from '../../src/server/server.ts';
import { ok } from './api-calls.ts';

export const ROOT = resolve(import.meta.dirname, '../..');
export const IMG = join(ROOT, 'bin/img.js');
export const CHROMIUM = '/usr/bin/chromium';
export const SHOTS = join(ROOT, 'test-artifacts', 'console');
export const ADMIN = { name: 'ann', password: 'console-pass-1' };

export interface ConsoleLab {
  dir: string;
  server: RunningServer;
  browser: Browser;
  close(): Promise<void>;
}

/**
 * A server and a browser for a console test file, or the reason they cannot run here.
 * `images` fills DIR/images (its argument) before the server starts.
 */
export async function consoleLab(o: {
  name: string;
  images?: (imagesDir: string, dir: string) => Promise<void>;
  server?: Partial<ServerOptions>;
}): Promise<ConsoleLab | string> {
  if (!existsSync(CHROMIUM)) return `needs Chromium at ${CHROMIUM} (apt-get install chromium)`;
  let chromium: typeof import('playwright-core').chromium;
  try {
    ({ chromium } = await import('playwright-core'));
  } catch {
    return 'needs playwright-core (npm install)';
  }
  const dir = await mkdtemp(join(tmpdir(), `imgcast-${o.name}-`));
  let server: RunningServer | undefined;
  try {
    await mkdir(join(dir, 'images'));
    await o.images?.(join(dir, 'images'), dir);
    server = await startServer({
      dataDir: join(dir, 'data'),
      imagesDir: join(dir, 'images'),
      host: '127.0.0.1',
      port: 0,
      interface: '127.0.0.1',
      range: {
        firstGroup: `239.78.${14 + Math.floor(Math.random() * 200)}.1`,
        firstPort: 34000 + 2 * Math.floor(Math.random() * 500),
        slots: 4,
      },
      version: 'test',
      name: o.name,
      logger: pino({ level: 'silent' }),
      ...o.server,
    });
    await ok({ server }, 'POST', '/api/admins', { body: ADMIN });
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
    await mkdir(SHOTS, { recursive: true });
    const s = server;
    return {
      dir,
      server: s,
      browser,
      close: async () => {
        await browser.close();
        await s.close();
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await server?.close();
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

/** `img make SOURCE IMAGE [args…]`, which must succeed. */
export function makeImage(source: string, image: string, ...args: string[]): void {
  const made = spawnSync(process.execPath, [IMG, 'make', source, image, ...args], { encoding: 'utf8' });
  assert.equal(made.status, 0, made.stderr);
}

/** A fresh browser tab (its own sessionStorage) at 1280×800, the classroom PC's screen. */
export async function tab(t: TestContext, lab: ConsoleLab): Promise<Page> {
  const context: BrowserContext = await lab.browser.newContext({ viewport: { width: 1280, height: 800 } });
  t.after(() => context.close());
  const page = await context.newPage();
  const problems: string[] = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('dialog', (d) => void d.accept());
  page.on('request', (r) => {
    if (!r.url().startsWith(lab.server.url)) problems.push(`request to another host: ${r.url()}`);
  });
  t.after(() => assert.deepEqual(problems, [], 'no script errors, no request elsewhere'));
  return page;
}

export async function signIn(page: Page, lab: ConsoleLab, password = ADMIN.password): Promise<void> {
  await page.goto(`${lab.server.url}/`);
  await page.getByLabel('Account').fill(ADMIN.name);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

/** The text of the message a field's aria-describedby points at (its error, its hint). */
export async function describedBy(page: Page | Locator, label: string): Promise<string> {
  const ids = (await page.getByLabel(label, { exact: true }).getAttribute('aria-describedby')) ?? '';
  const texts = await Promise.all(
    ids
      .split(' ')
      .filter(Boolean)
      .map((id) => page.locator(`[id="${id}"]`).innerText()),
  );
  return texts.join('\n');
}

export const shot = (page: Page, name: string) =>
  page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });

/** Nothing is wider than the 1280 px screen: no sideways scrolling to read a page. */
export async function fitsTheScreen(page: Page): Promise<void> {
  const widths = await page.evaluate(() => {
    const d = (globalThis as unknown as { document: { documentElement: { scrollWidth: number } } }).document;
    return { scroll: d.documentElement.scrollWidth };
  });
  assert.ok(widths.scroll <= 1280, `the page is ${widths.scroll} px wide at 1280×800`);
}

/**
 * Presses Tab (or Shift+Tab) until the focused element matches the CSS `selector`, at most `max`
 * times: what a keyboard user does to reach a control.
 */
export async function tabTo(
  page: Page,
  selector: string,
  o: { back?: boolean; max?: number } = {},
): Promise<void> {
  const max = o.max ?? 40;
  for (let i = 0; i < max; i++) {
    const here = await page.evaluate(
      (sel) =>
        (
          globalThis as unknown as { document: { activeElement: { matches(s: string): boolean } | null } }
        ).document.activeElement?.matches(sel) ?? false,
      selector,
    );
    if (here) return;
    await page.keyboard.press(o.back ? 'Shift+Tab' : 'Tab');
  }
  assert.fail(`the keyboard did not reach ${selector} within ${max} presses of Tab`);
}
