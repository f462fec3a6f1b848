/**
 * Network boot and one-off tasks through the HTTP API: `startServer` on 127.0.0.1 (port 0)
 * with a small image made by `img make`, called with fetch as iPXE, the CLI and workstations
 * call it. The multicast send is a stand-in that reports every joined workstation as received
 * (the transport is not what is checked here): what is checked is the iPXE each boot gets, the
 * strict query, the decisions recorded, the boot phases, and a task's life (precedence, done,
 * failed and queued again). The real firmware is in test/boot/netboot.test.ts.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';

import type {
  AutoChoice,
  BootDecision,
  HistoryEntry,
  JoinView,
  Session,
  Task,
  Workstation,
} from '../../src/api/schemas.ts';
import { startServer, type RunningServer } from '../../src/server/server.ts';
import type { SendSession } from '../../src/server/sessions.ts';
import type { SenderResult } from '../../src/transport/types.ts';
import { tempDir } from '../helpers/env.ts';
import { call, ok, refused, register as registerWorkstation, type Refusal } from '../helpers/api-calls.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const IMG = join(ROOT, 'bin/img.js');
const ENV = { ...process.env, PATH: `${join(ROOT, 'node_modules/.bin')}:${process.env.PATH ?? ''}` };

const receivers: string[] = [];
const fakeSend: SendSession = async () => {
  await sleep(10);
  return {
    ok: true,
    receivers: receivers.map((name) => ({ name, state: 'ok', bytes: 1000, totalBytes: 1000, rateMbit: 1 })),
  } as unknown as SenderResult;
};

interface Fixture {
  t: TestContext;
  server: RunningServer;
  base: string;
}

async function fixture(t: TestContext, o: { kernelArgs?: string } = {}): Promise<Fixture> {
  const dir = await tempDir(t, 'imgcast-netboot-');
  const images = join(dir, 'images');
  mkdirSync(images);
  const folder = join(dir, 'folder');
  mkdirSync(join(folder, 'etc'), { recursive: true });
  writeFileSync(join(folder, 'etc/hostname'), 'lab\n');
  execFileSync(IMG, ['make', folder, join(images, 'lab.imgc')], { env: ENV, stdio: 'pipe' });
  const server = await startServer({
    dataDir: join(dir, 'data'),
    imagesDir: images,
    host: '127.0.0.1',
    port: 0,
    range: { firstGroup: '239.77.10.1', firstPort: 31200, slots: 4 },
    version: 'test',
    name: 'netboot-test',
    logger: pino({ level: 'silent' }),
    send: fakeSend,
    ...(o.kernelArgs ? { kernelArgs: o.kernelArgs } : {}),
  });
  t.after(() => server.close());
  return { t, server, base: server.url };
}

async function register(f: Fixture, hostname: string, mac: string) {
  const r = await registerWorkstation(f, hostname, { mac });
  receivers.push(`${r.name}/${r.mac}`);
  return r;
}

/** The imaging environment, as `imgcast bootenv build` leaves it (contents do not matter here). */
function buildBootenv(f: Fixture): { kernel: Buffer } {
  mkdirSync(f.server.bootenvDir, { recursive: true });
  const kernel = Buffer.alloc(300_000);
  for (let i = 0; i < kernel.length; i++) kernel[i] = (i * 7919) % 251;
  writeFileSync(join(f.server.bootenvDir, 'vmlinuz'), kernel);
  writeFileSync(join(f.server.bootenvDir, 'initrd.img'), Buffer.alloc(1000, 1));
  return { kernel };
}

/** A boot request as iPXE makes it: no token. */
async function boot(f: Fixture, query: string): Promise<{ status: number; text: string }> {
  const res = await fetch(`${f.base}/boot/decide?${query}`);
  return { status: res.status, text: await res.text() };
}

const decide = async (f: Fixture, mac: string, platform = 'pcbios') => {
  const r = await boot(f, `mac=${encodeURIComponent(mac)}&platform=${platform}&buildarch=x86_64`);
  assert.equal(r.status, 200, r.text);
  return r.text;
};

async function waitFor(f: Fixture, name: string, check: (s: Session) => boolean): Promise<Session> {
  const end = Date.now() + 5000;
  for (;;) {
    const s = await ok<Session>(f, 'GET', `/api/sessions/${name}`);
    if (check(s)) return s;
    assert.ok(Date.now() < end, `session ${name} stayed ${s.state}: ${JSON.stringify(s)}`);
    await sleep(20);
  }
}

const phaseOf = async (f: Fixture, ref: string) =>
  (await ok<Workstation>(f, 'GET', `/api/workstations/${ref}`)).phase;

test('boot.ipxe chains to the decision with the MAC, platform and architecture, at the address the request came to', async (t) => {
  const f = await fixture(t);
  const res = await fetch(`${f.base}/boot/boot.ipxe`);
  assert.equal(res.status, 200);
  const text = await res.text();
  const lines = text.split('\n');
  assert.equal(lines[0], '#!ipxe');
  assert.ok(
    lines.includes(
      `chain ${f.base}/boot/decide?mac=\${net0/mac}&platform=\${platform}&buildarch=\${buildarch} || goto failed`,
    ),
    text,
  );
  // Nothing in it is an iPXE operator but the one "||" meant as such.
  assert.equal(text.match(/&&|\|\|/g)?.length, 1);
});

test('the decision query is checked strictly; a bad one gets a 400 and is not recorded', async (t) => {
  const f = await fixture(t);
  for (const q of [
    '',
    'platform=pcbios',
    'mac=52:54:00:12:34:56',
    'mac=52:54:00:12:34&platform=pcbios',
    'mac=zz:54:00:12:34:56&platform=pcbios',
    'mac=52:54:00:12:34:56&platform=arm64',
    'mac=52:54:00:12:34:56&platform=pcbios&buildarch=x86%2064',
    'mac=52:54:00:12:34:56&platform=pcbios&extra=1',
    'mac=52:54:00:12:34:56%0Aecho&platform=pcbios',
    `mac=${'5'.repeat(5000)}&platform=pcbios`,
  ]) {
    const r = await boot(f, q);
    assert.equal(r.status, 400, `${q}: ${r.text}`);
    assert.equal((JSON.parse(r.text) as Refusal).error, 'E_BAD_REQUEST', q);
  }
  assert.deepEqual(await ok<BootDecision[]>(f, 'GET', '/api/boot/decisions'), []);
  // The list of decisions is the administrator's.
  assert.equal((await call<Refusal>(f, 'GET', '/api/boot/decisions', { token: null })).status, 401);
});

test('nothing for a MAC: the local disk, by sanboot under BIOS and under UEFI by localboot.efi when built, else back to the firmware, saying why', async (t) => {
  const f = await fixture(t);
  const bios = await decide(f, '52:54:00:aa:00:01', 'pcbios');
  assert.equal(
    bios,
    [
      '#!ipxe',
      'echo imgcast: booting the local disk: unknown workstation 52:54:00:aa:00:01 matching no rule: there are no automatic sessions',
      'sanboot --no-describe --drive 0x80 || echo imgcast: no local disk to boot',
      'exit',
      '',
    ].join('\n'),
  );
  const efi = await decide(f, '52-54-00-AA-00-02', 'efi');
  assert.ok(!efi.includes('sanboot'));
  assert.deepEqual(efi.split('\n').slice(2), ['exit', '']);
  // With localboot.efi in the environment, UEFI chains it first (and exits when it comes back).
  buildBootenv(f);
  const loader = Buffer.from('MZ not really GRUB');
  writeFileSync(join(f.server.bootenvDir, 'localboot.efi'), loader);
  const efi2 = await decide(f, '52:54:00:aa:00:02', 'efi');
  assert.deepEqual(efi2.split('\n').slice(2), [
    `chain ${f.base}/boot/localboot.efi || echo imgcast: no loader found on a local disk`,
    'exit',
    '',
  ]);
  const served = await fetch(`${f.base}/boot/localboot.efi`);
  assert.equal(served.status, 200);
  assert.deepEqual(Buffer.from(await served.arrayBuffer()), loader);
  const d = await ok<BootDecision[]>(f, 'GET', '/api/boot/decisions');
  assert.deepEqual(
    d.map((x) => [x.mac, x.platform, x.decision, x.session, x.workstation]),
    [
      ['52:54:00:aa:00:02', 'efi', 'local', null, null],
      ['52:54:00:aa:00:02', 'efi', 'local', null, null],
      ['52:54:00:aa:00:01', 'pcbios', 'local', null, null],
    ],
  );
});

test('a rule that takes an unknown MAC images it; without the imaging environment it boots its disk and says to build it', async (t) => {
  const f = await fixture(t, { kernelArgs: 'imgcast.done=poweroff' });
  await ok(f, 'POST', '/api/auto-sessions', {
    body: { name: 'lab1', image: 'lab.imgc', rules: ['mac = 52:54:00:bb'] },
  });
  const missing = await decide(f, '52:54:00:bb:00:01');
  assert.match(
    missing,
    /echo imgcast: booting the local disk: the imaging environment is not built: run imgcast bootenv build/,
  );
  assert.match(missing, /sanboot/);
  const { kernel } = buildBootenv(f);
  const script = await decide(f, '52:54:00:bb:00:01', 'efi');
  assert.equal(
    script,
    [
      '#!ipxe',
      'echo imgcast: imaging: lab1 (1st): matches mac = 52:54:00:bb; not registered yet: it registers when img auto runs',
      `kernel ${f.base}/boot/vmlinuz initrd=initrd.img console=ttyS0 console=tty0 imgcast.server=${f.base} imgcast.boot=network imgcast.done=poweroff`,
      `initrd ${f.base}/boot/initrd.img`,
      'boot',
      '',
    ].join('\n'),
  );
  // The kernel and initramfs come over the same port, whole.
  const res = await fetch(`${f.base}/boot/vmlinuz`);
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('content-length'), String(kernel.length));
  assert.ok(Buffer.from(await res.arrayBuffer()).equals(kernel));
  assert.equal((await fetch(`${f.base}/boot/initrd.img`)).status, 200);
  // Another MAC matches no rule.
  assert.match(
    await decide(f, '52:54:00:cc:00:01'),
    /matching no rule: 52:54:00:cc:00:01 qualifies for none/,
  );
});

test('the boot files of an environment not built: 404 with a code that says what to run', async (t) => {
  const f = await fixture(t);
  for (const file of ['vmlinuz', 'initrd.img']) {
    const res = await fetch(`${f.base}/boot/${file}`);
    assert.equal(res.status, 404);
    const body = (await res.json()) as Refusal;
    assert.equal(body.error, 'E_BOOTENV_MISSING');
    assert.match(body.message, /imgcast bootenv build/);
  }
});

test('a task: refused when it cannot be, then it comes first, images its workstation only, and is gone once its run succeeds', async (t) => {
  const f = await fixture(t);
  buildBootenv(f);
  const pc = await register(f, 'lab2-01', '52:54:00:dd:00:01');
  const other = await register(f, 'lab2-02', '52:54:00:dd:00:02');
  await ok(f, 'POST', '/api/auto-sessions', {
    body: { name: 'lab2', image: 'lab.imgc', rules: ['mac = 52:54:00:dd'], clientCount: 1 },
  });

  await refused(f, 'E_WORKSTATION_UNKNOWN', 404, 'POST', '/api/tasks', {
    body: { workstation: 'nobody', image: 'lab.imgc' },
  });
  await refused(f, 'E_IMAGE_UNKNOWN', 404, 'POST', '/api/tasks', {
    body: { workstation: 'lab2-01', image: 'none.imgc' },
  });
  await refused(f, 'E_BAD_REQUEST', 400, 'POST', '/api/tasks', {
    body: { workstation: 'lab2-01', image: 'lab.imgc', fileset: 11 },
  });
  await refused(f, 'E_UNAUTHORIZED', 401, 'POST', '/api/tasks', {
    token: null,
    body: { workstation: 'lab2-01', image: 'lab.imgc' },
  });

  const task = await ok<Task>(f, 'POST', '/api/tasks', {
    body: {
      workstation: '52:54:00:dd:00:01',
      image: 'lab.imgc',
      scripts: [{ name: 'a.sh', content: 'true' }],
    },
  });
  assert.deepEqual(
    [task.workstation.name, task.session, task.image, task.fileset, task.scripts, task.state],
    ['lab2-01', 'task-525400dd0001', 'lab.imgc', 1, ['a.sh'], 'waiting'],
  );
  await refused(f, 'E_SESSION_EXISTS', 409, 'POST', '/api/tasks', {
    body: { workstation: 'lab2-01', image: 'lab.imgc' },
  });
  assert.deepEqual(
    (await ok<Task[]>(f, 'GET', '/api/tasks')).map((x) => x.session),
    ['task-525400dd0001'],
  );

  // It comes before the automatic session both workstations match, for its workstation only.
  const mine = await ok<AutoChoice>(f, 'GET', '/api/auto', { token: pc.token });
  assert.equal(mine.session, 'task-525400dd0001');
  assert.match(mine.why, /one-off task queued for it: image lab\.imgc; it comes before lab2/);
  assert.equal((await ok<AutoChoice>(f, 'GET', '/api/auto', { token: other.token })).session, 'lab2');
  await refused(f, 'E_NOT_QUALIFIED', 409, 'POST', '/api/sessions/task-525400dd0001/join', {
    token: other.token,
  });
  const script = await decide(f, pc.mac);
  assert.match(script, /^echo imgcast: imaging: task task-525400dd0001: a one-off task queued for it/m);
  assert.match(script, /^kernel .*\/boot\/vmlinuz /m);
  assert.equal(await phaseOf(f, 'lab2-01'), 'netboot');

  // Its workstation reports the phases of the environment; the server keeps the last.
  for (const phase of ['environment', 'joined', 'imaging', 'verifying', 'identity'])
    await ok(f, 'POST', '/api/workstations/me/phase', { token: pc.token, body: { phase } });
  assert.equal(await phaseOf(f, 'lab2-01'), 'identity');

  const j = await ok<JoinView>(f, 'POST', '/api/sessions/task-525400dd0001/join', { token: pc.token });
  await waitFor(f, 'task-525400dd0001', (s) => s.clients[0]?.state === 'writing');
  await ok(f, 'POST', '/api/sessions/task-525400dd0001/report', {
    token: pc.token,
    body: { run: j.run, state: 'ok' },
  });
  assert.deepEqual(await ok<Task[]>(f, 'GET', '/api/tasks'), [], 'done: the task is gone');
  const [h] = await ok<HistoryEntry[]>(f, 'GET', '/api/history');
  assert.deepEqual([h?.session, h?.state, h?.clients[0]?.name], ['task-525400dd0001', 'done', 'lab2-01']);
  await ok(f, 'POST', '/api/workstations/me/phase', { token: pc.token, body: { phase: 'rebooting' } });

  // Next boot: the automatic session still takes it (the task was not that session).
  assert.match(await decide(f, pc.mac), /^echo imgcast: imaging: lab2 \(1st\)/m);
});

test('a workstation an automatic session imaged boots its disk until the session changes; after rebooting it is up', async (t) => {
  const f = await fixture(t);
  buildBootenv(f);
  const pc = await register(f, 'lab3-01', '52:54:00:ee:00:01');
  await ok(f, 'POST', '/api/auto-sessions', {
    body: { name: 'lab3', image: 'lab.imgc', rules: ['mac = 52:54:00:ee'], clientCount: 1 },
  });
  assert.match(await decide(f, pc.mac), /^kernel /m);
  const j = await ok<JoinView>(f, 'POST', '/api/sessions/lab3/join', { token: pc.token });
  await waitFor(f, 'lab3', (s) => s.clients[0]?.state === 'writing');
  await ok(f, 'POST', '/api/sessions/lab3/report', { token: pc.token, body: { run: j.run, state: 'ok' } });
  await ok(f, 'POST', '/api/workstations/me/phase', { token: pc.token, body: { phase: 'rebooting' } });

  const local = await decide(f, pc.mac);
  assert.match(
    local,
    /^echo imgcast: booting the local disk: already imaged by lab3 \(.*\) and the session has not changed since$/m,
  );
  assert.equal(await phaseOf(f, 'lab3-01'), 'up');
  // Again and again: the lab stays network-first and is not imaged again.
  assert.match(await decide(f, pc.mac, 'efi'), /already imaged by lab3/);
  assert.equal(await phaseOf(f, 'lab3-01'), 'up');

  // A rule added (who takes part changed): imaged again.
  await sleep(5);
  await ok(f, 'POST', '/api/sessions/lab3/rules', { body: { rule: 'name = lab3-*' } });
  assert.match(await decide(f, pc.mac), /^kernel /m);
  assert.equal(await phaseOf(f, 'lab3-01'), 'netboot');

  const d = await ok<BootDecision[]>(f, 'GET', '/api/boot/decisions?workstation=lab3-01&limit=10');
  assert.deepEqual(
    d.map((x) => [x.decision, x.session, x.workstation]),
    [
      ['image', 'lab3', 'lab3-01'],
      ['local', null, 'lab3-01'],
      ['local', null, 'lab3-01'],
      ['image', 'lab3', 'lab3-01'],
    ],
  );
});

test('the master of an automatic session boots the environment until a run it sent succeeds, then its disk, unless workstations wait for it', async (t) => {
  const f = await fixture(t);
  buildBootenv(f);
  const ref = await register(f, 'ref-pc', '52:54:00:ac:00:01');
  const pc = await register(f, 'lab6-01', '52:54:00:ac:00:02');
  await ok(f, 'POST', '/api/auto-sessions', {
    body: { name: 'lab6', master: 'ref-pc', rules: ['name = lab6-*'], clientCount: 1 },
  });
  assert.match(await decide(f, ref.mac), /^echo imgcast: imaging: master of lab6 \(1st\)/m);

  // One run as img auto does it on the master and on its client, the master's sender played here.
  await ok(f, 'POST', '/api/sessions/lab6/master', { token: ref.token, body: {} });
  const j = await ok<JoinView>(f, 'POST', '/api/sessions/lab6/join', { token: pc.token });
  const s = await waitFor(f, 'lab6', (x) => x.state === 'sending');
  const run = s.run;
  const done = { run, phase: 'done', bytesSent: 1000 };
  const receivers = [{ name: `lab6-01/${pc.mac}`, state: 'ok', bytes: 1000, totalBytes: 1000 }];
  await ok(f, 'POST', '/api/sessions/lab6/master/report', {
    token: ref.token,
    body: { run, phase: 'listening' },
  });
  await ok(f, 'POST', '/api/sessions/lab6/master/report', { token: ref.token, body: { ...done, receivers } });
  await ok(f, 'POST', '/api/sessions/lab6/report', { token: pc.token, body: { run: j.run, state: 'ok' } });
  await waitFor(f, 'lab6', (x) => x.state === 'waiting' && x.run === run + 1);
  const [h] = await ok<HistoryEntry[]>(f, 'GET', '/api/history');
  assert.deepEqual([h?.session, h?.state], ['lab6', 'done']);

  // Rebooted, network-first: both go to their disks, the master saying why.
  assert.match(
    await decide(f, ref.mac),
    /^echo imgcast: booting the local disk: master of lab6, whose run it sent succeeded \(.*\); the session has not changed since and no workstation waits for it$/m,
  );
  assert.match(await decide(f, pc.mac), /already imaged by lab6/);

  // A new workstation joins the next run: it needs its master, which is sent again.
  const late = await register(f, 'lab6-02', '52:54:00:ac:00:03');
  await ok<JoinView>(f, 'POST', '/api/sessions/lab6/join', { token: late.token });
  assert.match(
    await decide(f, ref.mac),
    /^echo imgcast: imaging: master of lab6 .*; 1 workstation\(s\) joined lab6 and wait for their master$/m,
  );
});

test('a failed task run keeps the task queued and says why; task rm removes it', async (t) => {
  const f = await fixture(t);
  const pc = await register(f, 'lab4-01', '52:54:00:ff:00:01');
  await ok<Task>(f, 'POST', '/api/tasks', { body: { workstation: 'lab4-01', image: 'lab.imgc' } });
  const j = await ok<JoinView>(f, 'POST', '/api/sessions/task-525400ff0001/join', { token: pc.token });
  await waitFor(f, 'task-525400ff0001', (s) => s.clients[0]?.state === 'writing');
  await ok(f, 'POST', '/api/sessions/task-525400ff0001/report', {
    token: pc.token,
    body: { run: j.run, state: 'failed', code: 'E_DISK_TOO_SMALL', message: 'the disk is too small' },
  });
  const [kept] = await ok<Task[]>(f, 'GET', '/api/tasks');
  assert.equal(kept?.state, 'waiting');
  assert.equal(kept?.message, 'queued again: the last run failed: the disk is too small');
  assert.equal(
    (await ok<AutoChoice>(f, 'GET', '/api/auto', { token: pc.token })).session,
    'task-525400ff0001',
  );

  await refused(f, 'E_WORKSTATION_UNKNOWN', 404, 'DELETE', '/api/tasks/52:54:00:ff:00:09');
  // Its workstation is not forgotten while the task waits for it.
  const inUse = await refused(f, 'E_WORKSTATION_IN_USE', 409, 'DELETE', '/api/workstations/lab4-01');
  assert.match(inUse.message, /the workstation of task task-525400ff0001 \(imgcast task rm lab4-01\)/);
  const removed = await ok<Task>(f, 'DELETE', '/api/tasks/lab4-01');
  assert.equal(removed.session, 'task-525400ff0001');
  assert.deepEqual(await ok<Task[]>(f, 'GET', '/api/tasks'), []);
  assert.equal((await ok<AutoChoice>(f, 'GET', '/api/auto', { token: pc.token })).session, null);
  await refused(f, 'E_NOT_FOUND', 404, 'DELETE', '/api/tasks/lab4-01');
});

test('boot phases: only a workstation reports its own, only the phases of the environment', async (t) => {
  const f = await fixture(t);
  const pc = await register(f, 'lab5-01', '52:54:00:ab:00:01');
  await refused(f, 'E_UNAUTHORIZED', 401, 'POST', '/api/workstations/me/phase', {
    token: null,
    body: { phase: 'joined' },
  });
  await refused(f, 'E_FORBIDDEN', 403, 'POST', '/api/workstations/me/phase', { body: { phase: 'joined' } });
  for (const phase of ['netboot', 'up', 'done', ''])
    await refused(f, 'E_BAD_REQUEST', 400, 'POST', '/api/workstations/me/phase', {
      token: pc.token,
      body: { phase },
    });
  assert.equal(await phaseOf(f, 'lab5-01'), null);
  await ok(f, 'POST', '/api/workstations/me/phase', { token: pc.token, body: { phase: 'environment' } });
  const w = await ok<Workstation>(f, 'GET', '/api/workstations/lab5-01');
  assert.equal(w.phase, 'environment');
  assert.ok(w.phaseAt !== null && Math.abs(w.phaseAt - Date.now()) < 10_000);
});
