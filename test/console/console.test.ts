/**
 * The web console in a real browser: Debian's headless Chromium driven by playwright-core,
 * against an imaging server started here on 127.0.0.1 with its real multicast sender. The
 * tests click, type and read what a person would (labels, buttons, the text shown), and check
 * what the server then holds through its API.
 *
 * The imaging run is real: `img session NAME` processes on loopback write folders. As root,
 * each runs in a UTS and mount namespace of its own with a host name of its own and no network
 * device to read a MAC from, so the server sees several workstations (their MACs are made
 * from the host name); otherwise one workstation takes part.
 *
 * Screenshots of the main pages go to test-artifacts/console/ (git-ignored).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test, type TestContext } from 'node:test';
import type { Page } from 'playwright-core';

import type { Session } from '../../src/api/schemas.ts';
import { call, ok, register } from '../helpers/api-calls.ts';
import {
  ADMIN,
  IMG,
  consoleLab,
  describedBy,
  makeImage,
  shot,
  signIn as signInAs,
  tab as newTab,
  type ConsoleLab,
} from '../helpers/console-browser.ts';
import { hasCommand, isRoot } from '../helpers/env.ts';

/**
 * The DOM as the functions given to page.evaluate see it: they run in the browser, while this
 * program is typed with Node's library only.
 */
interface DomElement {
  innerText: string;
  textContent: string | null;
  tagName: string;
  checked?: boolean;
  classList: { contains(name: string): boolean };
  getAttribute(name: string): string | null;
  querySelector(selector: string): DomElement | null;
  querySelectorAll(selector: string): Iterable<DomElement>;
}
declare const document: DomElement & {
  body: DomElement;
  activeElement: DomElement | null;
  getElementById(id: string): DomElement | null;
};
declare const window: { stayed?: boolean; seen?: Set<string> };
declare class MutationObserver {
  constructor(callback: () => void);
  observe(
    target: DomElement,
    options: { subtree: boolean; childList: boolean; characterData: boolean },
  ): void;
}

let skip: string | undefined;
let lab: ConsoleLab | undefined;
let dir = '';
const f = {
  get server() {
    return lab!.server;
  },
};

before(async () => {
  const got = await consoleLab({
    name: 'console-e2e',
    images: async (images, root) => {
      const src = join(root, 'src');
      await mkdir(join(src, 'etc'), { recursive: true });
      await writeFile(join(src, 'etc/hostname'), 'reference\n');
      // Random: incompressible, so the send takes long enough to be watched.
      await writeFile(join(src, 'data.bin'), randomBytes(40 * 1024 * 1024));
      makeImage(src, join(images, 'lab.imgc'), '--level', 'speed');
      // A second, small image for the explorer: no session uses it.
      const tools = join(root, 'tools');
      await mkdir(join(tools, 'etc', 'ssh'), { recursive: true });
      await writeFile(join(tools, 'etc', 'hostname'), 'tools\n');
      await writeFile(join(tools, 'etc', 'ssh', 'sshd_config'), 'Port 22\n');
      await writeFile(join(tools, 'readme.txt'), 'tools\n');
      makeImage(tools, join(images, 'tools.imgc'));
    },
    // A sign-in that ends is noticed within a second.
    server: { live: { heartbeatMs: 1000 } },
  });
  if (typeof got === 'string') skip = got;
  else {
    lab = got;
    dir = got.dir;
  }
});

after(() => lab?.close());

const tab = (t: TestContext): Promise<Page> => newTab(t, lab!);
const signIn = (page: Page, password?: string) => signInAs(page, lab!, password);

const sessionOf = (name: string) => ok<Session>(f, 'GET', `/api/sessions/${name}`);

test('sign-in: a wrong password shows the reason by the field; the first page is small; sign-out ends the sign-in on the server too', async (t) => {
  if (skip) return t.skip(skip);
  const page = await tab(t);
  let wire = 0;
  page.on('requestfinished', (r) => {
    void r.sizes().then((s) => (wire += s.responseBodySize + s.responseHeadersSize));
  });
  await page.goto(`${f.server.url}/`);
  await page.getByRole('heading', { name: 'imgcast console' }).waitFor();
  await page.waitForLoadState('networkidle');
  t.diagnostic(`first page: ${wire} bytes transferred`);
  assert.ok(wire > 10_000 && wire < 200 * 1024, `the first page took ${wire} bytes`);
  await shot(page, 'sign-in');

  await signIn(page, 'not-the-password');
  await page.getByText('wrong name or password').waitFor();
  assert.match(await describedBy(page, 'Password'), /wrong name or password \[E_UNAUTHORIZED\]/);
  assert.equal(await page.getByLabel('Password').getAttribute('aria-invalid'), 'true');

  await page.getByLabel('Password').fill(ADMIN.password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Sessions', level: 1 }).waitFor();
  await page.getByText('● live').waitFor();
  const token = await page.evaluate(
    () => JSON.parse(sessionStorage.getItem('imgcast.signin') ?? '{}').token as string,
  );
  assert.equal((await call(f, 'GET', '/api/status', { token })).status, 200);

  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByText('You have signed out.').waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem('imgcast.signin')), null);
  assert.equal((await call(f, 'GET', '/api/status', { token })).status, 401, 'the server forgot the token');
});

test("an expired sign-in, and a token that is no admin's, go back to the sign-in page with the reason", async (t) => {
  if (skip) return t.skip(skip);
  const page = await tab(t);
  await signIn(page);
  await page.getByRole('heading', { name: 'Sessions', level: 1 }).waitFor();
  await page.getByText('● live').waitFor();
  await f.server.db
    .updateTable('logins')
    .set({ expires_at: Date.now() - 1 })
    .execute();
  // Nothing clicked: the live status notices within a heartbeat.
  await page
    .getByText(/Your sign-in has ended \(the sign-in has expired or was ended; sign in again\)/)
    .waitFor({ timeout: 10_000 });
  await page.getByRole('button', { name: 'Sign in' }).waitFor();

  // A workstation's token put where the console keeps its sign-in gets nothing either.
  const ws = await register(f, 'intruder');
  await page.evaluate((token) => {
    sessionStorage.setItem(
      'imgcast.signin',
      JSON.stringify({ name: 'x', token, expiresAt: Date.now() + 3600_000 }),
    );
  }, ws.token);
  await page.reload();
  await page
    .getByText(/This sign-in cannot administer the server: workstations may only/)
    .waitFor({ timeout: 10_000 });
  assert.equal(await page.evaluate(() => sessionStorage.getItem('imgcast.signin')), null);
});

test('automatic sessions: a rule checked as it is typed shows the workstations it matches; reorder and disable from the list', async (t) => {
  if (skip) return t.skip(skip);
  await register(f, 'lab1-01', { disk: 256e9, mac: '02:00:00:00:0a:01' });
  await register(f, 'lab1-02', { disk: 512e9, mac: '02:00:00:00:0a:02' });
  await register(f, 'lab1-03', { disk: 128e9, mac: '02:00:00:00:0a:03' });
  await register(f, 'lab2-01', { disk: 512e9, mac: '02:00:00:00:0b:01' });
  // These sessions take no part in the next tests.
  t.after(async () => {
    for (const name of ['lab1', 'everyone']) await call(f, 'DELETE', `/api/sessions/${name}`);
  });
  const page = await tab(t);
  await signIn(page);
  await page.getByRole('link', { name: 'Add automatic session' }).click();
  await page.getByRole('heading', { name: 'New automatic session' }).waitFor();
  await page.getByLabel('Name').fill('lab1');
  await page.getByLabel('Start once this many joined').fill('2');
  await page.getByRole('button', { name: 'Create automatic session' }).click();
  await page.getByRole('heading', { name: 'Automatic session lab1' }).waitFor();

  // Typed with the unit apart: the server's reason, with the place, under the field; no adding.
  const rule = page.getByLabel('New rule');
  await rule.fill('name = lab1-* and disk >= 200 GB');
  await page.getByText(/found "GB" \(write the unit next to the number: 200GB\)/).waitFor();
  assert.match(await page.locator('#new-rule-check').innerText(), /at column 31[\s\S]*\^ \[E_RULE_INVALID\]/);
  assert.equal(await rule.getAttribute('aria-invalid'), 'true');
  assert.equal(await page.getByRole('button', { name: 'Add rule' }).isDisabled(), true);
  await rule.fill('name = lab1-* and disk >= 200GB');
  await page.getByText('Reads as').waitFor();
  assert.match(
    await page.locator('#new-rule-check').innerText(),
    /Reads as name = "lab1-\*" and disk >= 200GB; matches 2: lab1-01, lab1-02/,
  );
  await page.getByRole('button', { name: 'Add rule' }).click();
  await page.locator('li[data-rule="1"]').getByText('matches 2').waitFor();
  assert.equal(await rule.inputValue(), '', 'the field is empty for the next rule');

  // An explicit member from the inventory.
  await page.getByLabel('Include a workstation').selectOption({ label: 'lab2-01 (02:00:00:00:0b:01)' });
  await page.getByRole('button', { name: 'Include', exact: true }).click();
  const who = page.locator('table.participants tbody tr');
  await page.locator('table.participants tr[data-workstation="lab2-01"]').waitFor();
  await page.locator('table.participants').getByText('this session').nth(2).waitFor();
  assert.deepEqual(
    await who.evaluateAll((rows) =>
      rows.map((r) =>
        [...(r as unknown as DomElement).querySelectorAll('th,td')].map((c) =>
          (c as unknown as DomElement).innerText.trim(),
        ),
      ),
    ),
    [
      ['lab1-01 02:00:00:00:0a:01', 'rule 1', 'this session'],
      ['lab1-02 02:00:00:00:0a:02', 'rule 1', 'this session'],
      ['lab2-01 02:00:00:00:0b:01', 'listed', 'this session'],
    ],
  );
  await shot(page, 'automatic-session');
  const s = await sessionOf('lab1');
  assert.deepEqual(
    s.auto?.rules.map((r) => r.text),
    ['name = lab1-* and disk >= 200GB'],
  );
  assert.deepEqual(
    s.auto?.members.map((m) => m.name),
    ['lab2-01'],
  );
  assert.equal(s.clientCount, 2);

  // A second one, later in the list, that takes every lab machine; then moved up, it wins them.
  await ok(f, 'POST', '/api/auto-sessions', {
    body: { name: 'everyone', image: 'lab.imgc', rules: ['name = lab*'] },
  });
  await page.getByRole('link', { name: 'Sessions', exact: true }).click();
  const order = () =>
    page.locator('ol.auto-list > li').evaluateAll((li) => li.map((x) => x.getAttribute('data-session')));
  await page.locator('ol.auto-list > li[data-session="everyone"]').waitFor();
  assert.deepEqual(await order(), ['lab1', 'everyone']);
  assert.equal(
    await page.getByRole('button', { name: 'move lab1 up' }).getAttribute('aria-disabled'),
    'true',
    'the first cannot go up',
  );
  await page.getByRole('button', { name: 'move everyone up' }).click();
  await page.waitForFunction(
    () => document.querySelector('ol.auto-list > li')?.getAttribute('data-session') === 'everyone',
  );
  assert.deepEqual(await order(), ['everyone', 'lab1']);
  assert.equal((await sessionOf('everyone')).auto?.position, 1);
  // Focus stays on the button that moved, so the keyboard can move it again.
  assert.equal(
    await page.evaluate(() => document.activeElement?.getAttribute('aria-label')),
    'move everyone up',
  );

  await page.getByRole('link', { name: 'edit lab1' }).click();
  await page
    .locator('table.participants tr[data-workstation="lab1-01"]')
    .getByText('everyone (earlier in the list)')
    .waitFor();

  // Disabled from the list: it takes nobody, and lab1 has its workstations again.
  await page.getByRole('link', { name: 'Sessions', exact: true }).click();
  const box = page.getByLabel('everyone enabled');
  assert.equal(await box.isChecked(), true);
  await box.click();
  await page.waitForFunction(() => !document.getElementById('en-everyone')?.checked);
  assert.equal((await sessionOf('everyone')).auto?.enabled, false);
  await shot(page, 'sessions-automatic');
  await page.getByRole('link', { name: 'edit lab1' }).click();
  await page.locator('table.participants tr[data-workstation="lab1-01"]').getByText('this session').waitFor();
});

/** One `img session NAME` on loopback, as workstation `host` (its own host name when root). */
function workstation(name: string, host: string, target: string) {
  const args = [
    IMG,
    'session',
    name,
    '--server',
    f.server.url.replace('http://', ''),
    '--disk',
    target,
    '--interface',
    '127.0.0.1',
    '--no-tune-reassembly',
    '--json',
  ];
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('IMGCAST_')) env[k] = v;
  env.XDG_CONFIG_HOME = join(dir, 'config', host);
  const child = separateHosts()
    ? spawn(
        'unshare',
        [
          '--uts',
          '--mount',
          '--',
          'sh',
          '-c',
          // No network device to read a MAC from: the workstation names itself by its host name.
          'hostname "$0" && mount -t tmpfs imgcast-test /sys/class/net && exec "$@"',
          host,
          process.execPath,
          ...args,
        ],
        { env, stdio: ['ignore', 'pipe', 'pipe'] },
      )
    : spawn(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const done = new Promise<{ code: number | null; out: string; err: string }>((r) =>
    child.on('close', (code) => r({ code, out, err })),
  );
  return { child, done };
}

let separate: boolean | undefined;
function separateHosts(): boolean {
  separate ??=
    isRoot() && hasCommand('unshare') && spawnSync('unshare', ['--uts', '--mount', 'true']).status === 0;
  return separate;
}

test('a server session made in the console images loopback workstations; their progress reaches 100 % on the page without a reload', async (t) => {
  if (skip) return t.skip(skip);
  const hosts = separateHosts() ? ['ws-1', 'ws-2'] : ['this-machine'];
  if (hosts.length === 1) t.diagnostic('not root (or no unshare): one workstation takes part');
  const page = await tab(t);
  await signIn(page);
  await page.getByRole('button', { name: 'New server session' }).click();
  await page.getByLabel('Name', { exact: true }).fill('room7');
  await page.getByLabel('Image').selectOption('lab.imgc');
  await page.getByLabel('Start once this many joined').fill(String(hosts.length));
  await page.getByRole('button', { name: 'Create session' }).click();
  const card = page.locator('article[data-session="room7"]');
  await card.getByText(`0/${hosts.length}`).waitFor();
  await page.evaluate(() => (window.stayed = true));

  const targets = hosts.map((h) => join(dir, 'targets', h));
  for (const target of targets) await mkdir(target, { recursive: true });
  const runs = hosts.map((h, i) => workstation('room7', h, targets[i]!));
  t.after(() => {
    for (const r of runs) r.child.kill();
  });
  // Watched as it goes: every percentage the page shows, as the server pushes it.
  await page.evaluate(() => {
    const seen = new Set<string>();
    window.seen = seen;
    new MutationObserver(() => {
      for (const p of document.querySelectorAll('article[data-session="room7"] .pct'))
        seen.add(p.textContent ?? '');
    }).observe(document.body, { subtree: true, childList: true, characterData: true });
  });
  await card.locator('.badge.state-sending').waitFor({ timeout: 60_000 });
  await shot(page, 'session-sending');
  await page.waitForFunction(
    (n) => {
      const rows = [...document.querySelectorAll('article[data-session="room7"] tr.client')];
      return (
        rows.length === n &&
        rows.every(
          (r) => r.querySelector('.pct')?.textContent === '100 %' && r.classList.contains('state-ok'),
        )
      );
    },
    hosts.length,
    { timeout: 120_000 },
  );
  const results = await Promise.all(runs.map((r) => r.done));
  for (const r of results) assert.equal(r.code, 0, `img session: ${r.err}\n${r.out}`);
  await card.locator('.badge.state-done').waitFor({ timeout: 30_000 });
  assert.equal(await page.evaluate(() => window.stayed), true, 'no reload');
  const seen = await page.evaluate(() => [...(window.seen ?? [])]);
  t.diagnostic(`progress seen on the page: ${seen.join(', ')}`);
  assert.ok(
    seen.some((p) => p !== '0 %' && p !== '100 %'),
    `the page showed progress as it went, not only the start and the end: ${seen.join(', ')}`,
  );
  for (const row of await card.locator('tr.client').all()) {
    assert.match(await row.innerText(), /written and verified/);
  }
  await shot(page, 'session-done');
  for (const target of targets) {
    for (const file of ['etc/hostname', 'data.bin']) {
      assert.deepEqual(
        await readFile(join(target, file)),
        await readFile(join(dir, 'src', file)),
        `${target}/${file}`,
      );
    }
  }
  const s = await sessionOf('room7');
  assert.equal(s.state, 'done');
  assert.deepEqual(
    s.clients.map((c) => c.state),
    hosts.map(() => 'ok'),
  );
});

test('a waiting session: a refused name and count show the reason by their field; change it, stop it, restart it, start it by hand, stop it while it sends, delete it', async (t) => {
  if (skip) return t.skip(skip);
  const page = await tab(t);
  await signIn(page);
  await page.getByRole('button', { name: 'New server session' }).click();
  // A name the server refuses: its reason by the name field.
  await page.getByLabel('Name', { exact: true }).fill('room 8');
  await page.getByRole('button', { name: 'Create session' }).click();
  await page.getByText(/body\/name must match pattern/).waitFor();
  assert.match(await describedBy(page, 'Name'), /must match pattern/);
  await page.getByLabel('Name', { exact: true }).fill('room8');
  await page.getByLabel('Start once this many joined').fill('5');
  await page.getByRole('button', { name: 'Create session' }).click();
  const card = page.locator('article[data-session="room8"]');
  await card.getByText('0/5').waitFor();

  await card.getByRole('button', { name: 'Change count or wait' }).click();
  await card.getByLabel('Clients to start').fill('0');
  await card.getByRole('button', { name: 'Save' }).click();
  await card.getByText(/clientCount must be >= 1/).waitFor();
  assert.match(await describedBy(card, 'Clients to start'), /must be >= 1 \[E_BAD_REQUEST\]/);
  await card.getByLabel('Clients to start').fill('3');
  await card.getByLabel('Minutes after the last join').fill('2');
  await card.getByRole('button', { name: 'Save' }).click();
  await card.getByText('0/3').waitFor();
  let s = await sessionOf('room8');
  assert.deepEqual([s.clientCount, s.waitMs], [3, 120_000]);
  assert.match(
    await card.locator('.summary').innerText(),
    /0\/3 · starts when 3 joined, or 2:00 after the last join/,
  );
  await shot(page, 'sessions');

  await card.getByRole('button', { name: 'Stop' }).click();
  await card.locator('.badge.state-stopped').waitFor();
  s = await sessionOf('room8');
  assert.equal(s.state, 'stopped');

  // Restarted, joined by a workstation (through the API: it never connects to the sender),
  // started by hand, and stopped while it sends.
  await card.getByRole('button', { name: 'Restart' }).click();
  await card.getByText('0/3').waitFor();
  const ws = await register(f, 'late-pc');
  await ok(f, 'POST', '/api/sessions/room8/join', { token: ws.token });
  await card.getByText('1/2').waitFor();
  // The countdown to the time trigger, from the last join: 2 minutes.
  assert.match(await card.locator('.summary').innerText(), /1\/2 · starts in (2:00|1:5\d) or once 3 joined/);
  await card.locator('tr[data-workstation="late-pc"]').getByText('joined').waitFor();
  await card.getByRole('button', { name: 'Start now' }).click();
  await card.locator('.badge.state-sending').first().waitFor();
  await card.getByRole('button', { name: 'Stop' }).click();
  await card.locator('h3 .badge.state-stopped').waitFor();
  await card
    .locator('tr[data-workstation="late-pc"]')
    .getByText('stopped by the administrator [E_STOPPED]')
    .waitFor();
  s = await sessionOf('room8');
  assert.deepEqual([s.state, s.run, s.clients.map((c) => c.state)], ['stopped', 2, ['failed']]);

  await card.getByRole('button', { name: 'Delete' }).click();
  await card.waitFor({ state: 'detached' });
  assert.equal((await call(f, 'GET', '/api/sessions/room8')).status, 404);
});

test('images: explore an image, leave a folder out of file set 2, add a file, verify it', async (t) => {
  if (skip) return t.skip(skip);
  const page = await tab(t);
  await signIn(page);
  await page.getByRole('link', { name: 'Images' }).click();
  await page.getByRole('link', { name: 'tools.imgc' }).click();
  await page.getByRole('heading', { name: 'Image tools.imgc' }).waitFor();
  await page
    .getByRole('cell', { name: 'A folder capture' })
    .or(page.getByText('A folder capture'))
    .first()
    .waitFor();
  // Into etc and back.
  await page.getByRole('button', { name: 'etc/' }).click();
  await page.locator('tr[data-path="etc/hostname"]').waitFor();
  await page.getByRole('button', { name: 'tools.imgc' }).click();
  await page.locator('tr[data-path="readme.txt"]').waitFor();

  assert.equal(await page.getByLabel('File set to edit').inputValue(), '2');
  const box = page.getByLabel('leave etc out of file set 2');
  assert.equal(await box.isChecked(), false);
  await box.check();
  await page.locator('tr[data-path="etc"]').getByRole('cell', { name: 'set 2', exact: true }).waitFor();
  await page.locator('tr[data-fileset="2"]').getByText('4 entries').waitFor();
  const d = await ok<{ filesets: Array<{ number: number; excludedEntries: number }> }>(
    f,
    'GET',
    '/api/images/details?path=tools.imgc',
  );
  assert.deepEqual(
    d.filesets.filter((x) => x.excludedEntries > 0).map((x) => [x.number, x.excludedEntries]),
    [[2, 4]],
  );
  // A driver added from this computer into etc: it lands there, in every file set.
  await page.getByRole('button', { name: 'etc/' }).click();
  await page.getByLabel('Add a file to etc').setInputFiles({
    name: 'nic.inf',
    mimeType: 'text/plain',
    buffer: Buffer.from('[driver]\n'),
  });
  await page.getByRole('button', { name: 'Add file' }).click();
  await page.getByText('Added etc/nic.inf (9 B).').waitFor();
  await page.locator('tr[data-path="etc/nic.inf"]').waitFor();
  const etc = await ok<{ entries: Array<{ path: string; excludedFrom: number[] }> }>(
    f,
    'GET',
    '/api/images/tree?path=tools.imgc&dir=etc',
  );
  assert.deepEqual(
    etc.entries.map((e) => [e.path, e.excludedFrom]),
    [
      ['etc/hostname', [2]],
      ['etc/nic.inf', []],
      ['etc/ssh', [2]],
    ],
  );
  await page.getByRole('button', { name: 'Verify every chunk' }).click();
  await page.getByText(/^Verified: \d+ chunks/).waitFor();
  await shot(page, 'image');
});

test('the other pages at 1280×800: workstations (with the session each joins), images, server (counters, history)', async (t) => {
  if (skip) return t.skip(skip);
  await register(f, 'hall-01', { disk: 256e9, mac: '02:00:00:00:0c:01' });
  await ok(f, 'POST', '/api/auto-sessions', {
    body: { name: 'hall', image: 'lab.imgc', rules: ['name = hall-*'] },
  });
  t.after(() => call(f, 'DELETE', '/api/sessions/hall'));
  const page = await tab(t);
  await signIn(page);
  await page.getByRole('heading', { name: 'Sessions', level: 1 }).waitFor();
  await page.getByRole('link', { name: 'Workstations' }).click();
  const row = page.locator('tr[data-workstation="hall-01"]');
  await row.getByText('hall (1st): matches name = "hall-*"').waitFor();
  assert.equal(
    await row.getByRole('link', { name: 'hall', exact: true }).getAttribute('href'),
    '#/auto/hall',
  );
  await shot(page, 'workstations');
  // A lab's list: a bad row imports nothing and says which; a good list imports.
  await page.getByRole('button', { name: 'Import CSV' }).click();
  const rows = page.getByLabel('Rows: name,mac[,ip] (a header row is allowed)');
  await rows.fill('name,mac,ip\nroom9-01,52:54:00:09:00:01,198.18.9.1\nroom9-02,52:54:00:09:00\n');
  await page.getByRole('button', { name: 'Import', exact: true }).click();
  await page.getByText(/line 3: "52:54:00:09:00" is not a MAC address/).waitFor();
  assert.match(await describedBy(page, 'Rows: name,mac[,ip] (a header row is allowed)'), /nothing imported/);
  assert.equal((await call(f, 'GET', '/api/workstations/room9-01')).status, 404, 'nothing imported');
  await rows.fill('name,mac,ip\nroom9-01,52:54:00:09:00:01,198.18.9.1\nroom9-02,52:54:00:09:00:02\n');
  await page.getByRole('button', { name: 'Import', exact: true }).click();
  await page.getByText('Imported 2 row(s): 2 added, 0 updated, 0 unchanged.').waitFor();
  await page.locator('tr[data-workstation="room9-02"]').waitFor();
  await row.getByRole('link', { name: 'hall-01' }).click();
  await page.getByRole('heading', { name: 'Workstation hall-01' }).waitFor();
  await page.getByText('joins hall as client: hall (1st): matches name = "hall-*"').waitFor();
  await page.getByRole('cell', { name: '238 GiB' }).waitFor();
  await page.getByRole('link', { name: 'Images' }).click();
  await page.locator('tr[data-image="lab.imgc"]').waitFor();
  await shot(page, 'images');
  await page.getByRole('link', { name: 'Server' }).click();
  await page.getByRole('heading', { name: 'Counters' }).waitFor();
  await shot(page, 'server');
  // Keyboard only: from the page's heading, back to the navigation, and Enter follows a link.
  for (let i = 0; i < 12; i++) {
    if ((await page.evaluate(() => document.activeElement?.textContent)) === 'Sessions') break;
    await page.keyboard.press('Shift+Tab');
  }
  assert.equal(await page.evaluate(() => document.activeElement?.textContent), 'Sessions');
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { name: 'Sessions', level: 1 }).waitFor();
  // The heading takes the focus in an effect after it is drawn: give it that moment.
  await page
    .waitForFunction(() => document.activeElement?.tagName === 'H1', null, { timeout: 5000 })
    .catch(() => {});
  assert.equal(
    await page.evaluate(() => document.activeElement?.tagName),
    'H1',
    "focus on the new page's heading",
  );
});
