/**
 * A lab imaged hands-off by network boot, end to end, as an administrator runs it: the reference
 * Debian workstation disk (reference-disk.ts) captured with `img make`, the imaging environment
 * of `imgcast bootenv build` (test/bootenv/cached.ts), `imgcast server --pxe --pxe-mode dhcp` in
 * a LAN namespace (lan.ts; the server is the lab network's DHCP server, the isolated-lab mode),
 * an automatic session `lab1` with the image, clients 3, names `lab1-{nn}` and a rule that
 * matches three MACs.
 *
 * Four QEMU workstations (TCG, 768 MiB) with blank disks and network-first boot order power on
 * together: ws1 and ws2 under SeaBIOS, ws3 under OVMF with a fresh variable store, ws4 (SeaBIOS)
 * with a MAC no rule matches. Each of the three must network-boot, join, be imaged, get its
 * name, reboot, network-boot again, be told to boot its disk, and reach `lab1-0N login:` on its
 * serial console. The server's history must show one run of three successes, each workstation's
 * boot phases must have gone through to `up`, and ws4 must only ever have been told to boot its
 * local disk (it has none, so the firmware finds nothing) and never be imaged.
 *
 * Time (TCG, two cores, four guests and the server at once): see the diagnostics of a run; the
 * figures of a reference run are in the closing note of issue #18.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, open, truncate } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import type { BootDecision, HistoryEntry, Workstation } from '../../src/api/schemas.ts';
import { hasCommand, skipUnless, tempDir } from '../helpers/env.ts';
import { bootenvUnavailable, cachedBootenv } from '../bootenv/cached.ts';
import { Lan, lanUnavailable, type Vm } from './lan.ts';
import { referenceDisk, referenceDiskUnavailable } from './reference-disk.ts';
import type { Firmware } from './qemu.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const IMG = join(ROOT, 'bin/img.js');
const IMGCAST = join(ROOT, 'bin/imgcast.js');
const MiB = 1024 * 1024;
/** The whole lab, from power-on to the last login prompt: TCG guests on two shared cores. */
const LAB_TIMEOUT_MS = 14 * 60_000;

interface Done {
  code: number | null;
  out: string;
  err: string;
}

function collect(child: ChildProcess): Promise<Done> {
  let out = '';
  let err = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (err += d));
  return new Promise((res) => child.on('close', (code) => res({ code, out, err })));
}

async function blankDisk(path: string, bytes: number): Promise<string> {
  await (await open(path, 'w')).close();
  await truncate(path, bytes);
  return path;
}

function unavailable(): string | undefined {
  if (!hasCommand('dnsmasq')) return 'needs dnsmasq (apt-get install dnsmasq-base)';
  return lanUnavailable() ?? bootenvUnavailable();
}

test(
  'a lab imaged hands-off: three workstations (SeaBIOS, SeaBIOS, OVMF) network-boot from imgcast server --pxe, are imaged by an automatic session with the reference Debian image, reboot, are sent to their own disks and come up as lab1-01..03; a fourth, matching no rule, is never imaged',
  { timeout: 30 * 60_000 },
  async (t) => {
    if (skipUnless(t, unavailable() ?? (await referenceDiskUnavailable()))) return;
    const env = await cachedBootenv((line) => t.diagnostic(`bootenv: ${line}`));
    const ref = await referenceDisk((line) => t.diagnostic(`reference disk: ${line}`));
    const dir = await tempDir(t, 'imgcast-pxe-');
    const images = join(dir, 'images');
    await mkdir(images);
    const made = await collect(
      spawn(process.execPath, [IMG, 'make', ref.path, join(images, 'debian.imgc'), '--json'], { cwd: ROOT }),
    );
    assert.equal(made.code, 0, `img make failed:\n${made.err}`);

    const lan = Lan.create({ subnet: 30 + Math.floor(Math.random() * 200) });
    t.after(() => lan.close());
    const serverAddr = lan.address(1);
    const port = 20_000 + Math.floor(Math.random() * 20_000);
    const data = join(dir, 'data');
    const server = lan.exec(process.execPath, [
      IMGCAST,
      'server',
      '--data',
      data,
      '--images',
      images,
      '--listen',
      `${serverAddr}:${port}`,
      '--interface',
      serverAddr,
      '--ports',
      `${port + 10}-${port + 29}`,
      '--groups',
      `239.77.${lan.subnet}.1`,
      '--discovery',
      'off',
      '--pxe',
      '--pxe-mode',
      'dhcp',
      '--pxe-range',
      `${lan.address(100)},${lan.address(150)}`,
      '--pxe-interface',
      lan.bridge,
      '--bootenv',
      env.dir,
    ]);
    let serverLog = '';
    const keep = (d: Buffer) => (serverLog = (serverLog + d.toString()).slice(-40_000));
    server.stdout!.on('data', keep);
    server.stderr!.on('data', keep);
    const serverCpu = () => cpuSeconds(server.pid!);
    const imgcast = async <T>(...args: string[]): Promise<T> => {
      const r = await collect(
        lan.exec(process.execPath, [
          IMGCAST,
          ...args,
          '-i',
          `${serverAddr}:${port}`,
          '--data',
          data,
          '--json',
        ]),
      );
      assert.equal(r.code, 0, `imgcast ${args.join(' ')} failed (exit ${r.code}):\n${r.err}${r.out}`);
      return JSON.parse(r.out) as T;
    };
    for (let i = 0; ; i++) {
      const r = await collect(
        lan.exec(process.execPath, [
          IMGCAST,
          'session',
          'list',
          '-i',
          `${serverAddr}:${port}`,
          '--data',
          data,
        ]),
      );
      if (r.code === 0) break;
      if (i > 150 || server.exitCode !== null) assert.fail(`the server did not come up:\n${serverLog}`);
      await sleep(200);
    }

    const prefix = `52:54:00:${(0x10 + (lan.subnet % 0xe0)).toString(16)}:01`;
    const lab: Array<{ name: string; firmware: Firmware; mac: string }> = [
      { name: 'ws1', firmware: 'bios', mac: `${prefix}:01` },
      { name: 'ws2', firmware: 'bios', mac: `${prefix}:02` },
      { name: 'ws3', firmware: 'uefi', mac: `${prefix}:03` },
    ];
    const stranger = { name: 'ws4', firmware: 'bios' as Firmware, mac: `${prefix.slice(0, -2)}02:04` };
    await imgcast('session', 'add', 'lab1', '--image', 'debian.imgc', '-c', '3', '--names', 'lab1-{nn}');
    await imgcast('session', 'rule', 'add', 'lab1', `mac = ${prefix}`);

    const cpuBefore = serverCpu();
    const poweredOn = Date.now();
    const vms: Vm[] = [];
    for (const w of [...lab, stranger]) {
      const vm = await lan.startVm({
        name: w.name,
        firmware: w.firmware,
        mac: w.mac,
        disk: await blankDisk(join(dir, `${w.name}.img`), w === stranger ? 64 * MiB : ref.diskBytes),
        boot: 'network',
        noReboot: false,
        memoryMiB: 768,
        logFile: join(dir, `${w.name}-console.log`),
      });
      t.after(() => vm.kill());
      vms.push(vm);
    }
    const [ws1, ws2, ws3, ws4] = vms as [Vm, Vm, Vm, Vm];

    // Each of the three comes up under a name of the template; which one is the order they joined in.
    const names = new Map<Vm, string>();
    const timings: string[] = [];
    await Promise.all(
      [ws1, ws2, ws3].map(async (vm) => {
        const running = await vm.waitFor(/imgcast: running: img auto/, LAB_TIMEOUT_MS);
        timings.push(`${vm.name}: img running ${running.seconds} s after power-on`);
        const login = await vm.waitFor(/\b(lab1-0[1-3]) login:/, LAB_TIMEOUT_MS);
        names.set(vm, login.match[1]!);
        timings.push(`${vm.name}: ${login.match[1]} login: ${login.seconds} s after power-on`);
      }),
    ).catch((err: unknown) => {
      throw new Error(`${(err as Error).message}\n--- server (last lines):\n${serverLog.slice(-6000)}`);
    });
    const labSeconds = (Date.now() - poweredOn) / 1000;
    const cpuUsed = serverCpu() - cpuBefore;
    for (const line of timings.sort()) t.diagnostic(line);
    t.diagnostic(
      `whole lab imaged and up in ${labSeconds.toFixed(0)} s; server CPU ${cpuUsed.toFixed(1)} s (${(cpuUsed / 3).toFixed(1)} s per workstation)`,
    );
    assert.deepEqual([...names.values()].sort(), ['lab1-01', 'lab1-02', 'lab1-03'], 'three distinct names');

    // Every imaged machine went through the environment once and was then sent to its disk.
    for (const vm of [ws1, ws2, ws3]) {
      const c = vm.console();
      assert.equal(
        c.match(/imgcast: running: img auto/g)?.length,
        1,
        `${vm.name} ran the environment once:\n${c.slice(-3000)}`,
      );
      assert.match(c, /written to \/dev\/vda and verified/, `${vm.name} verified its disk`);
    }

    const history = await imgcast<HistoryEntry[]>('history');
    const runs = history.filter((h) => h.session === 'lab1');
    assert.equal(runs.length, 1, `one run of lab1: ${JSON.stringify(runs)}`);
    assert.deepEqual(
      runs[0]!.clients.map((c) => c.state),
      ['ok', 'ok', 'ok'],
      JSON.stringify(runs[0]),
    );

    const workstations = await imgcast<Workstation[]>('workstation', 'list');
    for (const w of lab) {
      const ws = workstations.find((x) => x.mac === w.mac);
      assert.ok(ws, `${w.name} (${w.mac}) is registered`);
      assert.equal(ws.name, names.get(vms[lab.indexOf(w)]!), `${w.name}'s name on the server`);
      assert.equal(ws.phase, 'up', `${w.name} is up after its second network boot`);
    }

    const decisions = await api<BootDecision[]>(lan, serverAddr, port, data, '/api/boot/decisions?limit=100');
    for (const w of lab) {
      const mine = decisions
        .filter((d) => d.mac === w.mac)
        .sort((a, b) => a.at - b.at)
        .map((d) => d.decision);
      assert.deepEqual(
        mine.slice(0, 2),
        ['image', 'local'],
        `${w.name}: imaged, then its disk: ${mine.join(', ')}`,
      );
    }
    const strangerBoots = decisions.filter((d) => d.mac === stranger.mac);
    assert.ok(strangerBoots.length >= 1, `ws4 network-booted:\n${ws4.console().slice(-2000)}`);
    assert.deepEqual(
      [...new Set(strangerBoots.map((d) => d.decision))],
      ['local'],
      `ws4 was only ever sent to its disk: ${JSON.stringify(strangerBoots)}`,
    );
    assert.doesNotMatch(ws4.console(), /imgcast: running/, 'ws4 never ran the imaging environment');
    assert.equal(
      workstations.find((x) => x.mac === stranger.mac)?.registeredAt ?? null,
      null,
      'ws4 never registered',
    );
  },
);

/** A GET of the server's API with the admin token of its data directory, from inside the LAN. */
async function api<T>(lan: Lan, addr: string, port: number, data: string, path: string): Promise<T> {
  const script =
    'const [u, f] = process.argv.slice(1);' +
    "const token = require('node:fs').readFileSync(f, 'utf8').trim();" +
    'fetch(u, { headers: { authorization: `Bearer ${token}` } }).then(async (r) => {' +
    '  const body = await r.text(); if (!r.ok) { console.error(r.status, body); process.exit(1); }' +
    '  process.stdout.write(body); });';
  const r = await collect(
    lan.exec(process.execPath, [
      '--input-type=commonjs',
      '-e',
      script,
      `http://${addr}:${port}${path}`,
      join(data, 'admin-token'),
    ]),
  );
  assert.equal(r.code, 0, `GET ${path}: ${r.err}`);
  return JSON.parse(r.out) as T;
}

/** User + system CPU seconds of a process and its waited-for children (the server and its dnsmasq). */
function cpuSeconds(pid: number): number {
  try {
    const { readFileSync } = process.getBuiltinModule('node:fs');
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    const ticks = [11, 12, 13, 14].reduce((s, i) => s + Number(f[i]), 0);
    return ticks / 100;
  } catch {
    return 0;
  }
}
