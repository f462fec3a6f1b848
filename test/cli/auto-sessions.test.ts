/**
 * Automatic sessions as an administrator and a workstation use them: `imgcast session …`,
 * `imgcast workstation …` and `img auto` run as processes (bin/imgcast.js, bin/img.js) against
 * an imaging server started here on 127.0.0.1, their output and exit codes checked. The last
 * test images a folder with `img auto` over real multicast on loopback (no root, no namespace),
 * from the server's real sender.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { test, type TestContext } from 'node:test';
import { pino } from 'pino';

import type { HistoryEntry, Session, Workstation } from '../../src/api/schemas.ts';
import type { PostImagingResult } from '../../src/engine/identity/apply.ts';
import { registration } from '../../src/client/registration.ts';
import { startServer, type RunningServer } from '../../src/server/server.ts';
import type { SendSession } from '../../src/server/sessions.ts';
import { tempDir } from '../helpers/env.ts';
import { HOST_KEY_TYPES, debianTree, identityToolsMissing } from '../engine/identity/fixtures.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const IMG = join(ROOT, 'bin/img.js');
const IMGCAST = join(ROOT, 'bin/imgcast.js');

interface Run {
  code: number | null;
  out: string;
  err: string;
}

/** Runs a command as a process; the server answers meanwhile (nothing here blocks the event loop). */
function run(env: NodeJS.ProcessEnv, script: string, args: string[]): Promise<Run> {
  return new Promise((done) => {
    const child = spawn(process.execPath, [script, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('close', (code) => done({ code, out, err }));
  });
}

interface Lab {
  dir: string;
  server: RunningServer;
  env: NodeJS.ProcessEnv;
  imgcast: (...args: string[]) => Promise<Run>;
  img: (...args: string[]) => Promise<Run>;
}

async function lab(
  t: TestContext,
  o: { send?: SendSession; group?: string; port?: number } = {},
): Promise<Lab> {
  const dir = await tempDir(t, 'imgcast-auto-cli-');
  const src = join(dir, 'src');
  await mkdir(join(src, 'etc'), { recursive: true });
  await writeFile(join(src, 'etc/hostname'), 'reference\n');
  await writeFile(join(src, 'data.bin'), randomBytes(3 * 1024 * 1024));
  await mkdir(join(dir, 'images'));
  const made = await run(process.env, IMG, [
    'make',
    src,
    join(dir, 'images', 'lab.imgc'),
    '--level',
    'speed',
  ]);
  assert.equal(made.code, 0, made.err);
  const server = await startServer({
    dataDir: join(dir, 'data'),
    imagesDir: join(dir, 'images'),
    host: '127.0.0.1',
    port: 0,
    interface: '127.0.0.1',
    range: { firstGroup: o.group ?? '239.77.10.1', firstPort: o.port ?? 31200, slots: 2 },
    version: 'test',
    name: 'auto-cli',
    logger: pino({ level: 'silent' }),
    ...(o.send ? { send: o.send } : {}),
  });
  t.after(() => server.close());
  const env = {
    ...process.env,
    IMGCAST_SERVER: server.url.replace('http://', ''),
    IMGCAST_TOKEN: server.adminToken,
    // No client.json of the machine's user may change where the commands go.
    XDG_CONFIG_HOME: join(dir, 'config'),
  };
  return {
    dir,
    server,
    env,
    imgcast: (...args) => run(env, IMGCAST, args),
    img: (...args) => run(env, IMG, args),
  };
}

/** A send that never starts: these tests look at definitions, not runs. */
const idle: SendSession = (plan) =>
  new Promise((_r, reject) =>
    plan.signal.addEventListener('abort', () => reject(plan.signal.reason as Error)),
  );

test('imgcast session add, rule add, include, list, show and workstation import, show: output and exit codes', async (t) => {
  const l = await lab(t, { send: idle });
  let r = await l.imgcast('session', 'add', 'lab1', '--image', 'lab.imgc');
  assert.equal(r.code, 0, r.err);
  assert.equal(
    r.out,
    [
      'automatic session lab1 (1st in the list, enabled): lab.imgc (set 1)',
      '  starts once 5 client(s) joined, or 15:00 after the last one joined; reopens for the next workstations once a run has finished',
      "no workstation takes part yet: imgcast session include lab1 WORKSTATION…, or imgcast session rule add lab1 'EXPR'",
      '',
    ].join('\n'),
  );
  r = await l.imgcast(
    'session',
    'add',
    'lab2',
    '--image',
    'lab.imgc',
    '-f',
    '2',
    '-c',
    '12',
    '-t',
    '3',
    '--delete-when-done',
    '--disabled',
  );
  assert.equal(r.code, 0, r.err);
  assert.match(
    r.out,
    /^automatic session lab2 \(2nd in the list, disabled\): lab\.imgc \(set 2\)\n {2}starts once 12 client\(s\) joined, or 03:00 after the last one joined; deleted once a run has finished\n/,
  );

  // Usage errors: exit 2, nothing sent.
  r = await l.imgcast('session', 'add', 'lab3');
  assert.equal(r.code, 2);
  assert.match(r.err, /give --image PATH or --master WORKSTATION/);
  r = await l.imgcast('session', 'add', 'lab3', '--image', 'lab.imgc', '-c', '0');
  assert.equal(r.code, 2);
  r = await l.imgcast('session', 'add', 'lab3', '--image', 'lab.imgc', '-t', '-1');
  assert.equal(r.code, 2, r.err);

  // A malformed rule: exit 1, the place shown with a caret, nothing added.
  r = await l.imgcast('session', 'rule', 'add', 'lab1', 'name = "lab1-*" and disk >= 256 GB');
  assert.equal(r.code, 1);
  assert.equal(
    r.err,
    'imgcast: expected "and", "or" or the end of the rule at column 33, found "GB" (write the unit next to the number: 256GB)\n' +
      '  name = "lab1-*" and disk >= 256 GB\n' +
      '                                  ^ [E_RULE_INVALID]\n',
  );
  r = await l.imgcast('session', 'rule', 'add', 'lab1', 'name = lab1-*');
  assert.equal(r.code, 0, r.err);
  assert.equal(r.out, 'lab1 rule 1: name = "lab1-*"\n');
  r = await l.imgcast('session', 'rule', 'add', 'lab1', 'disk>=200gb');
  assert.equal(r.out, 'lab1 rule 2: disk >= 200GB\n');
  r = await l.imgcast('session', 'rule', 'list', 'lab1');
  assert.equal(
    r.out,
    '   1. name = lab1-*\n      reads as: name = "lab1-*"\n   2. disk>=200gb\n      reads as: disk >= 200GB\n',
  );

  // Workstations from a lab list: one bad row imports nothing.
  const bad = join(l.dir, 'bad.csv');
  await writeFile(
    bad,
    'name,mac,ip\nlab1-01,52:54:00:00:00:01,198.18.0.1\nlab1-02,52:54:00:00:00\nlab1-03,52:54:00:00:00:03,198.18.0.999\n',
  );
  r = await l.imgcast('workstation', 'import', bad);
  assert.equal(r.code, 1);
  assert.equal(
    r.err,
    'imgcast: nothing imported: 2 bad row(s)\nline 3: "52:54:00:00:00" is not a MAC address\nline 4: "198.18.0.999" is not an IPv4 or IPv6 address [E_BAD_REQUEST]\n',
  );
  assert.equal((await l.imgcast('workstation', 'list')).out, 'no workstations\n');
  const good = join(l.dir, 'good.csv');
  await writeFile(good, 'name,mac,ip\nlab1-01,52:54:00:00:00:01,198.18.0.1\nref-pc,52:54:00:00:00:09\n');
  r = await l.imgcast('workstation', 'import', good);
  assert.equal(r.code, 0, r.err);
  assert.equal(r.out, 'imported 2 row(s): 2 added, 0 updated, 0 unchanged\n');
  r = await l.imgcast('workstation', 'list');
  assert.match(
    r.out,
    /^lab1-01 +52:54:00:00:00:01 {2}198\.18\.0\.1 +not registered yet\nref-pc +52:54:00:00:00:09 +not registered yet\n$/,
  );

  // Which session it would join, and why, as the administrator sees it.
  r = await l.imgcast('workstation', 'show', 'lab1-01');
  assert.equal(r.code, 0, r.err);
  assert.equal(
    r.out,
    [
      'lab1-01 (52:54:00:00:00:01), named by the administrator, ip 198.18.0.1',
      '  not registered yet: rules on its hardware do not match it until it does',
      '  img auto: joins lab1: lab1 (1st): matches rule 1 of 2, name = "lab1-*"',
      '  identity: none reported yet (it reports one after it is imaged in a session)',
      '',
    ].join('\n'),
  );
  r = await l.imgcast('workstation', 'show', 'ref-pc', '--json');
  assert.deepEqual(JSON.parse(r.out).auto, {
    session: null,
    why: 'ref-pc qualifies for none of the enabled automatic sessions (lab1 (1st))',
  });

  // Listing, masters and their conflicts.
  r = await l.imgcast('session', 'include', 'lab2', 'ref-pc', '52-54-00-00-00-01');
  assert.equal(
    r.out,
    'lab2 lists 2 workstation(s): ref-pc (52:54:00:00:00:09), lab1-01 (52:54:00:00:00:01)\n',
  );
  r = await l.imgcast('session', 'include', 'lab2', 'nobody');
  assert.equal(r.code, 1);
  assert.match(r.err, /no workstation nobody on this server .* \[E_WORKSTATION_UNKNOWN\]\n$/);
  r = await l.imgcast('session', 'add', 'live', '--master', 'ref-pc');
  assert.equal(r.code, 1);
  assert.equal(
    r.err,
    'imgcast: ref-pc is listed as a participant of lab2, so it cannot be the master of live [E_MASTER_CONFLICT]\n',
  );
  r = await l.imgcast('session', 'exclude', 'lab2', 'ref-pc');
  assert.equal(r.out, 'lab2 lists 1 workstation(s): lab1-01 (52:54:00:00:00:01)\n');
  r = await l.imgcast('session', 'add', 'live', '--master', 'ref-pc');
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /: the disk of ref-pc \(52:54:00:00:00:09\)\n/);
  r = await l.imgcast('session', 'start', 'live');
  assert.equal(r.code, 1);
  assert.match(r.err, /cannot start: its master ref-pc is not connected .*\[E_SESSION_STATE\]\n$/);

  r = await l.imgcast('session', 'up', 'live');
  assert.equal(r.code, 0, r.err);
  r = await l.imgcast('session', 'list');
  assert.match(
    r.out,
    /^ 1\. lab1 +enabled +waiting +0\/5 +lab\.imgc \(set 1\) {2}0 listed, 2 rule\(s\)\n 2\. live +enabled +waiting +0\/5 +the disk of ref-pc \(52:54:00:00:00:09\) {2}0 listed, 0 rule\(s\)\n 3\. lab2 +disabled +waiting +0\/12 +lab\.imgc \(set 2\) {2}1 listed, 0 rule\(s\), deleted when done\n$/,
  );
  r = await l.imgcast('session', 'show', 'lab1');
  assert.match(
    r.out,
    /\n {4}automatic, 1st in the list, enabled; reopens once a run has finished\n {4}listed: none\n {4}rules:\n {7}1\. name = lab1-\*\n/,
  );
  r = await l.imgcast('session', 'edit', 'lab1', '-c', '2', '--minutes', '1');
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /^lab1 +waiting +0\/2 /);
  r = await l.imgcast('session', 'rule', 'rm', 'lab1', '1');
  assert.equal(r.out, 'removed rule 1 of lab1; 1 left:\n   1. disk>=200gb\n      reads as: disk >= 200GB\n');
  r = await l.imgcast('session', 'rule', 'rm', 'lab1', '5');
  assert.equal(r.code, 1);
  r = await l.imgcast('session', 'rm', 'live');
  assert.equal(r.out, 'session live deleted (stopped first); its history stays\n');
  r = await l.imgcast('workstation', 'rm', 'ref-pc');
  assert.equal(r.out, 'removed workstation ref-pc (52:54:00:00:00:09)\n');
  r = await l.imgcast('workstation', 'rm', 'lab1-01');
  assert.equal(r.code, 1);
  assert.match(
    r.err,
    /lab1-01 is listed in lab2; take it out of that session first \[E_WORKSTATION_IN_USE\]/,
  );
});

test('img auto on loopback: the workstation is told its session, receives, writes and verifies the image, and the session reopens; then nothing to do, and then nothing to do', async (t) => {
  const group = `239.77.${11 + Math.floor(Math.random() * 200)}.1`;
  const port = 32000 + 2 * Math.floor(Math.random() * 1000);
  const l = await lab(t, { group, port });
  // The MAC `img auto --interface 127.0.0.1` registers with on this machine.
  const me = await registration({ interface: '127.0.0.1' });
  let r = await l.imgcast('workstation', 'add', 'lab-ws', me.mac);
  assert.equal(r.code, 0, r.err);
  r = await l.imgcast('session', 'add', 'e2e', '--image', 'lab.imgc', '-c', '1');
  assert.equal(r.code, 0, r.err);
  r = await l.imgcast('session', 'include', 'e2e', 'lab-ws');
  assert.equal(r.code, 0, r.err);

  const target = join(l.dir, 'target');
  await mkdir(target);
  const server = l.server.url.replace('http://', '');
  const started = Date.now();
  r = await l.img('auto', '--server', server, '--disk', target, '--interface', '127.0.0.1', '--json');
  const seconds = (Date.now() - started) / 1000;
  assert.equal(r.code, 0, `${r.err}\n${r.out}`);
  const result = JSON.parse(r.out) as {
    session: string;
    run: number;
    why: string;
    workstation: string;
    receive: { bytes: number };
  };
  assert.deepEqual([result.session, result.run, result.workstation], ['e2e', 1, 'lab-ws']);
  assert.equal(result.why, `e2e (1st): listed explicitly as ${me.mac}`);
  t.diagnostic(`img auto took ${seconds.toFixed(1)} s for ${result.receive.bytes} bytes`);
  for (const file of ['etc/hostname', 'data.bin'])
    assert.deepEqual(await readFile(join(target, file)), await readFile(join(l.dir, 'src', file)), file);

  const api = async <T>(path: string) =>
    (await (
      await fetch(`${l.server.url}${path}`, { headers: { authorization: `Bearer ${l.server.adminToken}` } })
    ).json()) as T;
  const s = await api<Session>('/api/sessions/e2e');
  assert.deepEqual([s.state, s.run, s.joined], ['waiting', 2, 0], 'reopened for the next workstations');
  const [h] = await api<HistoryEntry[]>('/api/history');
  assert.deepEqual(
    [h?.session, h?.run, h?.state, h?.clients.map((c) => [c.name, c.state])],
    ['e2e', 1, 'done', [['lab-ws', 'ok']]],
  );

  // Disabled: nothing to do, exit 0, with the reason.
  r = await l.imgcast('session', 'disable', 'e2e');
  assert.equal(r.code, 0, r.err);
  r = await l.img('auto', '--server', server, '--disk', target, '--interface', '127.0.0.1');
  assert.equal(r.code, 0, r.err);
  assert.equal(
    r.out,
    'nothing to do for lab-ws: no automatic session is enabled; e2e (1st) would take it but is disabled\n',
  );
});

test('img auto of a Linux image: the workstation takes the name the administrator gave it, new machine id and host keys, and the server lists the fingerprints', async (t) => {
  const missing = identityToolsMissing();
  if (missing) return void t.skip(missing);
  const group = `239.77.${11 + Math.floor(Math.random() * 200)}.2`;
  const port = 34000 + 2 * Math.floor(Math.random() * 1000);
  const l = await lab(t, { group, port });
  const tree = join(l.dir, 'debian');
  await debianTree(tree);
  let r = await l.img('make', tree, join(l.dir, 'images', 'debian.imgc'), '--level', 'speed');
  assert.equal(r.code, 0, r.err);
  const me = await registration({ interface: '127.0.0.1' });
  r = await l.imgcast('workstation', 'add', 'lab1-07', me.mac);
  assert.equal(r.code, 0, r.err);
  r = await l.imgcast('session', 'add', 'debian', '--image', 'debian.imgc', '-c', '1');
  assert.equal(r.code, 0, r.err);
  r = await l.imgcast('session', 'include', 'debian', 'lab1-07');
  assert.equal(r.code, 0, r.err);

  const target = join(l.dir, 'target');
  await mkdir(target);
  const server = l.server.url.replace('http://', '');
  r = await l.img('auto', '--server', server, '--disk', target, '--interface', '127.0.0.1', '--json');
  assert.equal(r.code, 0, `${r.err}\n${r.out}`);
  const result = JSON.parse(r.out) as { postImaging: PostImagingResult };
  const id = result.postImaging.identity!;
  assert.equal(id.name, 'lab1-07');
  assert.equal(await readFile(join(target, 'etc/hostname'), 'utf8'), 'lab1-07\n');
  assert.equal(await readFile(join(target, 'etc/machine-id'), 'utf8'), `${id.machineId}\n`);
  assert.match(
    await readFile(join(target, 'etc/hosts'), 'utf8'),
    /^127\.0\.1\.1\tlab1-07\.lab\.example lab1-07$/m,
  );
  const onDisk = HOST_KEY_TYPES.map((type) => {
    const line = execFileSync(
      'ssh-keygen',
      ['-l', '-E', 'sha256', '-f', join(target, `etc/ssh/ssh_host_${type}_key.pub`)],
      {
        encoding: 'utf8',
      },
    );
    return [type, line.split(' ')[1]];
  });
  assert.deepEqual(
    id.sshHostKeys.map((k) => [k.type, k.fingerprint]).sort(),
    onDisk,
    'the fingerprints reported are those of the keys on the disk',
  );
  for (const [type, fp] of onDisk) {
    const before = execFileSync(
      'ssh-keygen',
      ['-l', '-E', 'sha256', '-f', join(tree, `etc/ssh/ssh_host_${type}_key.pub`)],
      {
        encoding: 'utf8',
      },
    );
    assert.notEqual(before.split(' ')[1], fp, `${type}: a new key, not the image's`);
  }

  // The server keeps what the workstation reported, for the administrator's known_hosts.
  const w = (await (
    await fetch(`${l.server.url}/api/workstations/lab1-07`, {
      headers: { authorization: `Bearer ${l.server.adminToken}` },
    })
  ).json()) as Workstation;
  assert.equal(w.identity?.name, 'lab1-07');
  assert.equal(w.identity?.machineId, id.machineId);
  assert.equal(w.identity?.session, 'debian');
  assert.equal(w.identity?.image, 'debian.imgc');
  assert.deepEqual(w.identity?.sshHostKeys, id.sshHostKeys);
  r = await l.imgcast('workstation', 'show', 'lab1-07');
  assert.equal(r.code, 0, r.err);
  assert.match(
    r.out,
    new RegExp(
      `^  identity applied \\S+ \\(session debian, image debian\\.imgc\\): host name lab1-07, machine-id ${id.machineId}$`,
      'm',
    ),
  );
  for (const k of id.sshHostKeys)
    assert.ok(r.out.includes(`SSH host key ${k.type.padEnd(7)} ${k.fingerprint} (${k.bits} bits)`), r.out);

  // A workstation the administrator did not name keeps the image's host name; the rest is renewed.
  r = await l.imgcast('session', 'rm', 'debian');
  assert.equal(r.code, 0, r.err);
  r = await l.imgcast('workstation', 'rm', 'lab1-07');
  assert.equal(r.code, 0, r.err);
  const again = join(l.dir, 'again');
  await mkdir(again);
  r = await l.imgcast('mcast', 'unnamed', '-p', 'debian.imgc', '-c', '1');
  assert.equal(r.code, 0, r.err);
  r = await l.img(
    'session',
    'unnamed',
    '--server',
    server,
    '--disk',
    again,
    '--interface',
    '127.0.0.1',
    '--json',
  );
  assert.equal(r.code, 0, `${r.err}\n${r.out}`);
  const unnamed = (JSON.parse(r.out) as { postImaging: PostImagingResult }).postImaging.identity!;
  assert.equal(unnamed.name, null);
  assert.match(
    unnamed.notes[0] ?? '',
    /^no name: the administrator has not named this workstation \(it registered as .*\); imgcast workstation edit .* --name NAME names it$/,
  );
  assert.equal(await readFile(join(again, 'etc/hostname'), 'utf8'), 'reference\n');
  assert.notEqual(unnamed.machineId, id.machineId);
  assert.match(unnamed.machineId ?? '', /^[0-9a-f]{32}$/);
});
