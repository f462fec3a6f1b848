/**
 * The console's Server page settings (src/console/server.js) in real headless Chromium: how
 * the server was started, shown as it is; the defaults changed from the page, each refusal
 * shown by its field with the server's reason; the keyboard alone enough to change one; and
 * a changed default taking effect where the console makes something (a new automatic session
 * given no count). What the server then holds is read through its API.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import type { Session, SettingsView } from '../../src/api/schemas.ts';
import { call, ok } from '../helpers/api-calls.ts';
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
import { mkdir, writeFile } from 'node:fs/promises';

let lab: ConsoleLab | undefined;
let skip: string | undefined;

before(async () => {
  const got = await consoleLab({
    name: 'console-server',
    images: async (images, dir) => {
      await mkdir(join(dir, 'src', 'etc'), { recursive: true });
      await writeFile(join(dir, 'src', 'etc', 'hostname'), 'lab\n');
      makeImage(join(dir, 'src'), join(images, 'lab.imgc'));
    },
    server: { kernelArgs: 'imgcast.done=poweroff' },
  });
  if (typeof got === 'string') skip = got;
  else lab = got;
});
after(() => lab?.close());

const settings = () => ok<SettingsView>(lab!, 'GET', '/api/settings');

test('server settings: what is fixed at start is shown; defaults changed from the page, refusals by their field, the keyboard alone enough', async (t) => {
  if (skip) return t.skip(skip);
  const l = lab!;
  const page = await tab(t, l);
  await signIn(page, l);
  await page.getByRole('heading', { name: 'Sessions', level: 1 }).waitFor();
  await page.getByRole('link', { name: 'Server' }).click();
  await page.getByRole('heading', { name: 'Settings', level: 2 }).waitFor();

  const v = await settings();
  const m = v.server.multicast;
  const fixed = async (what: string) => (await page.locator(`[data-fixed="${what}"]`).innerText()).trim();
  assert.equal(await fixed('listen'), `127.0.0.1:${new URL(l.server.url).port}`);
  assert.equal(await fixed('data'), l.server.dataDir);
  assert.equal(await fixed('images'), l.server.imagesDir);
  assert.equal(await fixed('database'), join(l.server.dataDir, 'imgcast.db'));
  assert.equal(
    await fixed('multicast'),
    `groups ${m.firstGroup} – ${m.lastGroup}, ports ${m.firstPort} – ${m.firstPort + 7} (4 sessions sending at once), sent from 127.0.0.1`,
  );
  assert.match(await fixed('pxe'), /^no PXE answers \(imgcast server --pxe\)/);
  assert.equal(
    await fixed('bootenv'),
    `${l.server.bootenvDir}, not built (imgcast bootenv build); kernel arguments imgcast.done=poweroff`,
  );
  assert.equal(await fixed('version'), 'imgcast test');

  // Refused: the server's reason under the field it is about, nothing stored.
  const clients = page.getByLabel('Automatic sessions start once this many joined');
  assert.equal(await clients.inputValue(), '5');
  await clients.fill('0');
  await page.getByRole('button', { name: 'Save settings' }).click();
  await page.getByText(/body\/autoClients must be >= 1/).waitFor();
  assert.match(
    await describedBy(page, 'Automatic sessions start once this many joined'),
    /must be >= 1 \[E_BAD_REQUEST\]/,
  );
  assert.equal(await clients.getAttribute('aria-invalid'), 'true');
  await clients.fill('7');
  await page.getByLabel('Naming template of new sessions').fill('hall-{x}');
  await page.getByRole('button', { name: 'Save settings' }).click();
  await page.getByText(/naming template hall-\{x\}: unknown field \{x\}/).waitFor();
  assert.match(
    await describedBy(page, 'Naming template of new sessions'),
    /unknown field \{x\}.*\[E_BAD_REQUEST\]/s,
  );
  assert.equal(await clients.getAttribute('aria-invalid'), null, 'the count is not the one refused');
  assert.deepEqual((await settings()).settings, v.settings, 'nothing stored');

  await page.getByLabel('Naming template of new sessions').fill('hall-{nn}');
  await page.getByLabel('Compression of uploads and live masters').selectOption('size');
  await page.getByLabel('Days the history keeps a run').fill('30');
  await page.getByRole('button', { name: 'Save settings' }).click();
  await page.getByText('Saved.').waitFor();
  assert.deepEqual((await settings()).settings, {
    autoClients: 7,
    autoWaitMinutes: 15,
    names: 'hall-{nn}',
    level: 'size',
    historyDays: 30,
  });
  await fitsTheScreen(page);
  await shot(page, 'server-settings');

  // The keyboard alone: from the page's heading to the wait field, a new value, Enter saves.
  await page.getByRole('link', { name: 'Sessions', exact: true }).click();
  await page.getByRole('link', { name: 'Server' }).click();
  await page.getByRole('heading', { name: 'Settings', level: 2 }).waitFor();
  await page.getByLabel('Or minutes after the last new client').waitFor();
  await tabTo(page, 'input[name="autoWaitMinutes"]');
  await page.keyboard.press('Control+A');
  await page.keyboard.type('2.5');
  await page.keyboard.press('Enter');
  await page.getByText('Saved.').waitFor();
  assert.equal((await settings()).settings.autoWaitMinutes, 2.5);

  // Where the console makes something with a default: a new automatic session given no count.
  await page.getByRole('link', { name: 'Sessions', exact: true }).click();
  await page.getByRole('link', { name: 'Add automatic session' }).click();
  await page.getByRole('heading', { name: 'New automatic session' }).waitFor();
  const count = page.getByLabel('Start once this many joined');
  await page.getByText("empty: the server's default, 7").waitFor();
  assert.equal(await count.getAttribute('placeholder'), '7');
  assert.equal(await count.inputValue(), '');
  await page.getByLabel('Name').fill('hall');
  await page.getByRole('button', { name: 'Create automatic session' }).click();
  await page.getByRole('heading', { name: 'Automatic session hall' }).waitFor();
  t.after(() => call(l, 'DELETE', '/api/sessions/hall'));
  const s = await ok<Session>(l, 'GET', '/api/sessions/hall');
  assert.deepEqual([s.clientCount, s.waitMs, s.names], [7, 150_000, 'hall-{nn}']);
});
