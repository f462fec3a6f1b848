/**
 * The identity section of a workstation's page (src/console/workstations.js) in real headless
 * Chromium. The identity is the one a workstation reports through the real API after it is
 * imaged: registered, named by the administrator, joined to a session of the server (its real
 * multicast sender, on loopback), and its report with what it applied (host name, machine id,
 * SSH host key fingerprints, the Windows computer name, notes). The page must show exactly
 * that; a workstation that reported none says so.
 */
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import type { JoinView, Workstation } from '../../src/api/schemas.ts';
import { call, ok, register } from '../helpers/api-calls.ts';
import {
  consoleLab,
  fitsTheScreen,
  makeImage,
  shot,
  signIn,
  tab,
  type ConsoleLab,
} from '../helpers/console-browser.ts';

let lab: ConsoleLab | undefined;
let skip: string | undefined;

before(async () => {
  const got = await consoleLab({
    name: 'console-workstations',
    images: async (images, dir) => {
      await mkdir(join(dir, 'src', 'etc'), { recursive: true });
      await writeFile(join(dir, 'src', 'etc', 'hostname'), 'lab\n');
      makeImage(join(dir, 'src'), join(images, 'lab.imgc'));
    },
  });
  if (typeof got === 'string') skip = got;
  else lab = got;
});
after(() => lab?.close());

const APPLIED = {
  name: 'lab7-01',
  machineId: '5f0c3b2a9d8e4f7a8b6c5d4e3f2a1b0c',
  sshHostKeys: [
    {
      type: 'ed25519',
      bits: 256,
      fingerprint: 'SHA256:rx45PXDZ8GbE9T3Q5VcnKagGG95Q13qRAQd32iFCzhg',
      publicKey:
        'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAmlhwxyRu5zvlVz6O42b4+WDBhxKyyIdCjWAJ0JUPjd root@lab7-01',
    },
    {
      type: 'rsa',
      bits: 3072,
      fingerprint: 'SHA256:Vb3Ck2m7T0oWq9yJ4dQe1xZp8LrS6nHfGtUaIcEoK5M',
      publicKey: 'ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQC7 root@lab7-01',
    },
  ],
  windowsName: 'LAB7-01',
  notes: ['p3: no sysprep answer file; the Windows name is set in the registry only'],
};

test("a workstation's page shows the identity it reported after its imaging: name, machine id, SSH fingerprints", async (t) => {
  if (skip) return t.skip(skip);
  const l = lab!;
  // Imaged through the API as img session does it: register, join, report what it applied.
  const ws = await register(l, 'pc-ident', { mac: '02:00:00:00:0d:01' });
  await ok(l, 'PATCH', `/api/workstations/${ws.id}`, { body: { name: 'lab7-01' } });
  const fresh = await register(l, 'pc-fresh', { mac: '02:00:00:00:0d:02' });
  await ok(l, 'POST', '/api/sessions', { body: { name: 'ident', image: 'lab.imgc', clientCount: 1 } });
  t.after(() => call(l, 'DELETE', '/api/sessions/ident'));
  let view = await ok<JoinView>(l, 'POST', '/api/sessions/ident/join', { token: ws.token });
  // One client was all it waited for: it starts sending at once.
  for (let i = 0; view.state !== 'sending' && i < 50; i++) {
    view = await ok<JoinView>(l, 'GET', `/api/sessions/ident/wait?since=${view.version}&timeoutMs=200`, {
      token: ws.token,
    });
  }
  assert.equal(view.state, 'sending');
  assert.deepEqual(view.identity, { name: 'lab7-01' }, 'told the name the administrator gave');
  await ok(l, 'POST', '/api/sessions/ident/report', {
    token: ws.token,
    body: { run: view.run, state: 'ok', bytes: 100, totalBytes: 100, identity: APPLIED },
  });
  const stored = await ok<Workstation>(l, 'GET', `/api/workstations/${ws.id}`);
  assert.equal(stored.identity?.machineId, APPLIED.machineId);

  const page = await tab(t, l);
  await signIn(page, l);
  await page.getByRole('link', { name: 'Workstations' }).click();
  await page.locator('tr[data-workstation="lab7-01"]').getByRole('link', { name: 'lab7-01' }).click();
  await page.getByRole('heading', { name: 'Workstation lab7-01' }).waitFor();
  const section = page.locator('section[aria-labelledby="id-title"]');
  const facts = await section
    .locator('[data-identity]')
    .evaluate((dl) =>
      [
        ...(
          dl as unknown as { querySelectorAll(s: string): Iterable<{ innerText: string }> }
        ).querySelectorAll('dt,dd'),
      ].map((x) => x.innerText.trim()),
    );
  assert.deepEqual(facts.slice(0, 6), [
    'Host name',
    'lab7-01',
    'Machine id',
    APPLIED.machineId,
    'Windows name',
    'LAB7-01',
  ]);
  assert.equal(facts[6], 'Imaged');
  assert.match(facts[7]!, /in session ident \(lab\.imgc\)$/);
  const keys = await section
    .locator('table.host-keys tbody tr')
    .evaluateAll((rows) =>
      rows.map((r) =>
        [
          ...(
            r as unknown as { querySelectorAll(s: string): Iterable<{ innerText: string }> }
          ).querySelectorAll('th,td'),
        ].map((c) => c.innerText.trim()),
      ),
    );
  assert.deepEqual(
    keys,
    APPLIED.sshHostKeys.map((k) => [k.type, String(k.bits), k.fingerprint]),
  );
  await section.getByText(APPLIED.notes[0]!).waitFor();
  await fitsTheScreen(page);
  await shot(page, 'workstation-identity');

  // One never imaged: no identity, said plainly.
  await page.goto(`${l.server.url}/#/workstations/${encodeURIComponent(fresh.mac)}`);
  await page.getByRole('heading', { name: /^Workstation pc-fresh/ }).waitFor();
  await page
    .locator('section[aria-labelledby="id-title"]')
    .getByText('No identity reported yet: it is set when the workstation is imaged.')
    .waitFor();
});
