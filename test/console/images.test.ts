/**
 * The console's Images page (src/console/images.js) in real headless Chromium: progress bars
 * for an upload (the browser's count, on a link slowed to 4 MiB/s by the browser's own network
 * emulation), and for verify and compact (the server's jobs, pushed by the live status); a
 * whole folder picked with the keyboard alone and added with its subfolders; a refusal shown by
 * its field. Every percentage the page shows is recorded as it changes (a MutationObserver), so
 * a bar that only ever showed its start and end fails. What the image then holds is read
 * through the API.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { Page } from 'playwright-core';

import type { ImageTree, ImageVerifyReport } from '../../src/api/schemas.ts';
import { ok } from '../helpers/api-calls.ts';
import {
  consoleLab,
  describedBy,
  fitsTheScreen,
  makeImage,
  shot,
  signIn,
  tab,
  tabTo,
  type ConsoleLab,
} from '../helpers/console-browser.ts';

/** The DOM as the functions given to page.evaluate see it (this program has Node's types only). */
interface DomElement {
  textContent: string | null;
  querySelectorAll(selector: string): Iterable<DomElement>;
}
declare const document: { body: DomElement; querySelectorAll(selector: string): Iterable<DomElement> };
declare const window: { seen?: Record<string, string[]> };
declare class MutationObserver {
  constructor(callback: () => void);
  observe(
    target: DomElement,
    options: { subtree: boolean; childList: boolean; characterData: boolean },
  ): void;
}

let lab: ConsoleLab | undefined;
let skip: string | undefined;

before(async () => {
  const got = await consoleLab({
    name: 'console-images',
    images: async (images, dir) => {
      const src = join(dir, 'src');
      await mkdir(join(src, 'etc'), { recursive: true });
      await writeFile(join(src, 'etc', 'hostname'), 'tools\n');
      // 20 chunks of 4 MiB that do not compress: verify and compact take long enough to watch.
      await writeFile(join(src, 'data.bin'), randomBytes(80 * 1024 * 1024));
      makeImage(src, join(images, 'big.imgc'), '--level', 'none');
    },
    // Every change of a job is an event of its own, so the page can show each step.
    server: { live: { minIntervalMs: 0 } },
  });
  if (typeof got === 'string') skip = got;
  else lab = got;
});
after(() => lab?.close());

/** Records every text the progress bars of `kinds` show, from now on. */
async function watchProgress(page: Page, kinds: string[]): Promise<void> {
  await page.evaluate((ks) => {
    const seen: Record<string, string[]> = Object.fromEntries(ks.map((k) => [k, []]));
    window.seen = seen;
    new MutationObserver(() => {
      for (const k of ks) {
        for (const p of document.querySelectorAll(`[data-progress="${k}"] .pct`)) {
          const text = p.textContent ?? '';
          if (seen[k]!.at(-1) !== text) seen[k]!.push(text);
        }
      }
    }).observe(document.body, { subtree: true, childList: true, characterData: true });
  }, kinds);
}

const seen = (page: Page, kind: string) => page.evaluate((k) => window.seen?.[k] ?? [], kind);

function between(values: string[], what: string): void {
  assert.ok(
    values.some((p) => p !== '0 %' && p !== '100 %'),
    `${what}: the page showed progress as it went, not only the start and the end: ${values.join(', ')}`,
  );
}

test('images: an upload, verify and compact show their progress as they go; a folder is added with the keyboard alone', async (t) => {
  if (skip) return t.skip(skip);
  const l = lab!;
  const page = await tab(t, l);
  await signIn(page, l);
  await page.getByRole('link', { name: 'Images' }).click();
  await page.getByRole('link', { name: 'big.imgc' }).click();
  await page.getByRole('heading', { name: 'Image big.imgc' }).waitFor();
  await page.getByRole('button', { name: 'etc/' }).click();
  await page.locator('tr[data-path="etc/hostname"]').waitFor();
  await watchProgress(page, ['upload', 'add', 'verify', 'compact']);

  // A file sent over a link slowed by the browser's network emulation: the bar moves as it goes.
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Network.enable');
  await cdp.send('Network.emulateNetworkConditions', {
    offline: false,
    latency: 0,
    downloadThroughput: -1,
    uploadThroughput: 4 * 1024 * 1024,
  });
  const driver = randomBytes(12 * 1024 * 1024);
  await page.getByLabel('Add a file to etc').setInputFiles({
    name: 'driver.bin',
    mimeType: 'application/octet-stream',
    buffer: driver,
  });
  await page.getByRole('button', { name: 'Add file' }).click();
  await page.locator('[data-progress="upload"]').waitFor();
  await shot(page, 'image-upload');
  await page.getByText('Added etc/driver.bin (12.0 MiB).').waitFor({ timeout: 60_000 });
  await cdp.send('Network.emulateNetworkConditions', {
    offline: false,
    latency: 0,
    downloadThroughput: -1,
    uploadThroughput: -1,
  });
  const upload = await seen(page, 'upload');
  t.diagnostic(`upload progress seen: ${upload.join(', ')}`);
  between(upload, 'the upload');
  const etc = await ok<ImageTree>(l, 'GET', '/api/images/tree?path=big.imgc&dir=etc');
  assert.deepEqual(
    etc.entries.map((e) => [e.path, e.size]),
    [
      ['etc/driver.bin', driver.length],
      ['etc/hostname', 6],
    ],
  );

  // A folder, picked and added with the keyboard: Tab to the picker, Space opens it, Tab, Enter.
  const folder = join(l.dir, 'pick', 'drivers');
  await mkdir(join(folder, 'nic', 'intel'), { recursive: true });
  await writeFile(join(folder, 'readme.txt'), 'read me\n');
  await writeFile(join(folder, 'nic', 'e1000.inf'), '[e1000]\n');
  await writeFile(join(folder, 'nic', 'intel', 'i40e.inf'), '[i40e]\n');
  await page.getByRole('heading', { name: 'Image big.imgc' }).focus();
  await tabTo(page, 'input[name="folder"]');
  const choosing = page.waitForEvent('filechooser');
  // The browser catches the file dialog once told to: a round trip makes sure it was told.
  await page.evaluate(() => true);
  await page.keyboard.press('Space');
  const chooser = await choosing;
  assert.equal(chooser.isMultiple(), true);
  await chooser.setFiles(folder);
  await page.getByText('drivers: 3 file(s), 23 B').waitFor();
  await tabTo(page, 'form[aria-label="add a folder to this folder"] button[type="submit"]');
  await page.keyboard.press('Enter');
  await page.getByText('Added etc/drivers: 3 file(s), 23 B.').waitFor();
  await page.locator('tr[data-path="etc/drivers"]').waitFor();
  const nic = await ok<ImageTree>(l, 'GET', '/api/images/tree?path=big.imgc&dir=etc/drivers/nic');
  assert.deepEqual(
    nic.entries.map((e) => [e.path, e.type, e.size]),
    [
      ['etc/drivers/nic/e1000.inf', 'file', 8],
      ['etc/drivers/nic/intel', 'dir', 0],
    ],
  );
  // Again: the server's refusal by the folder field, with its code.
  await page.getByLabel('Add a folder to etc').setInputFiles(folder);
  await page.getByRole('button', { name: 'Add folder' }).click();
  await page.getByText(/"etc\/drivers" already exists in the image/).waitFor();
  assert.match(
    await describedBy(page, 'Add a folder to etc'),
    /already exists in the image.*\[E_PATH_EXISTS\]/s,
  );
  await fitsTheScreen(page);
  await shot(page, 'image-folder');

  // Verify and compact: the server's own progress, pushed live.
  await page.getByRole('button', { name: 'Verify every chunk' }).click();
  await page.getByText(/^Verified: \d+ chunks/).waitFor({ timeout: 60_000 });
  const verify = await seen(page, 'verify');
  t.diagnostic(`verify progress seen: ${verify.join(', ')}`);
  between(verify, 'verify');
  const report = await ok<ImageVerifyReport>(l, 'POST', '/api/images/verify', { body: { path: 'big.imgc' } });
  assert.ok(report.ok && report.chunksTotal >= 20);

  await page.getByRole('button', { name: 'Compact (reclaim removed data)' }).click();
  await page.getByText(/^Compacted: /).waitFor({ timeout: 60_000 });
  const compact = await seen(page, 'compact');
  t.diagnostic(`compact progress seen: ${compact.join(', ')}`);
  between(compact, 'compact');
  await shot(page, 'image-maintenance');
});
