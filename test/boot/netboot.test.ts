/**
 * A real firmware network-boots from a real `imgcast server --pxe`: a diskless QEMU VM (TCG,
 * SeaBIOS, a virtio-net NIC whose option ROM is Debian's iPXE from ipxe-qemu) on a tap of a
 * bridge in a network namespace (198.18.7.0/24). The site's DHCP server is a plain dnsmasq
 * that hands out addresses with no boot options, in a second namespace on the same bridge (two
 * DHCP servers cannot share port 67 in one namespace); the imaging server answers in proxy mode
 * beside it. The VM's MAC matches no rule: the server must record that it fetched boot.ipxe and
 * was told to boot its local disk, and QEMU must end by itself (no disk: SeaBIOS finds nothing
 * to boot and resets, which -no-reboot turns into an exit).
 *
 * Also, with no VM: a second `imgcast server --pxe` on the same namespace fails at startup with
 * E_PXE_PORT_IN_USE, and a task queued for a workstation makes /boot/decide answer with the
 * kernel and initramfs script.
 *
 * Both namespaces, every process and the temporary directory go on every way out.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import type { BootDecision } from '../../src/api/schemas.ts';
import { hasCommand, netnsUnavailable, skipUnless, tempDir } from '../helpers/env.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const IMG = join(ROOT, 'bin/img.js');
const IMGCAST = join(ROOT, 'bin/imgcast.js');
const NODE = process.execPath;
const ENV = { ...process.env, PATH: `${join(ROOT, 'node_modules/.bin')}:${process.env.PATH ?? ''}` };
const NS = `imgcast-nb-${process.pid}`;
const SITE = `imgcast-nbs-${process.pid}`;
const SERVER_IP = '198.18.7.1';
const PORT = 7740;
const VM_MAC = '52:54:00:77:00:01';
/** TCG on two shared cores: iPXE's DHCP, its IPv6 wait and SeaBIOS's last tries take a minute or two. */
const VM_TIMEOUT_MS = 5 * 60_000;

function unavailable(): string | undefined {
  const ns = netnsUnavailable();
  if (ns) return ns;
  if (!existsSync('/dev/net/tun')) return 'needs /dev/net/tun for the VM tap';
  if (!hasCommand('qemu-system-x86_64')) return 'needs qemu-system-x86_64 (apt-get install qemu-system-x86)';
  if (!existsSync('/usr/sbin/dnsmasq')) return 'needs dnsmasq (apt-get install dnsmasq-base)';
  if (!existsSync('/usr/lib/ipxe/undionly.kpxe')) return 'needs iPXE (apt-get install ipxe)';
  if (!existsSync('/usr/lib/ipxe/qemu/efi-virtio.rom'))
    return 'needs the iPXE ROMs of QEMU (apt-get install ipxe-qemu)';
  return undefined;
}

function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: 'pipe' });
}

/** The LAN: bridge br0 with the server's address and the VM's tap in NS, the site's DHCP server in SITE. */
function makeLan(t: TestContext): void {
  const undo = () => {
    for (const ns of [NS, SITE]) spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
  };
  t.after(undo);
  process.once('exit', undo);
  ip('netns', 'add', NS);
  ip('netns', 'add', SITE);
  ip('-n', NS, 'link', 'set', 'lo', 'up');
  ip('-n', SITE, 'link', 'set', 'lo', 'up');
  ip('-n', NS, 'link', 'add', 'br0', 'type', 'bridge', 'forward_delay', '0');
  ip('-n', NS, 'addr', 'add', `${SERVER_IP}/24`, 'dev', 'br0');
  ip('-n', NS, 'tuntap', 'add', 'dev', 'tap0', 'mode', 'tap');
  ip('-n', NS, 'link', 'set', 'tap0', 'master', 'br0');
  ip('-n', NS, 'link', 'add', 'v0', 'type', 'veth', 'peer', 'name', 'v1', 'netns', SITE);
  ip('-n', NS, 'link', 'set', 'v0', 'master', 'br0');
  ip('-n', SITE, 'addr', 'add', '198.18.7.2/24', 'dev', 'v1');
  for (const [ns, dev] of [
    [NS, 'br0'],
    [NS, 'tap0'],
    [NS, 'v0'],
    [SITE, 'v1'],
  ] as const)
    ip('-n', ns, 'link', 'set', dev, 'up');
}

interface Running {
  child: ChildProcess;
  out: () => string;
  exit: Promise<number | null>;
}

/** Runs a command inside a namespace; killed (the whole group) when the test ends. */
function inNs(t: TestContext, ns: string, argv: string[], env = ENV): Running {
  const child = spawn('ip', ['netns', 'exec', ns, ...argv], {
    env,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let text = '';
  const add = (d: Buffer) => (text = (text + d.toString('utf8')).slice(-400_000));
  child.stdout!.on('data', add);
  child.stderr!.on('data', add);
  const exit = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
  const kill = () => {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(-child.pid!, 'SIGTERM');
      } catch {
        // gone already
      }
    }
  };
  t.after(async () => {
    kill();
    await within(exit, 8000, null);
    if (child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // gone already
      }
    }
  });
  return { child, out: () => text, exit };
}

/** `p`, or `late` once `ms` have passed (the timer does not outlive the race). */
async function within<T, L>(p: Promise<T>, ms: number, late: L): Promise<T | L> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<L>((r) => (timer = setTimeout(() => r(late), ms)));
  try {
    return await Promise.race([p, t]);
  } finally {
    clearTimeout(timer);
  }
}

/** `imgcast server --pxe` on br0 of the LAN namespace, once it answers network boots and its API. */
async function startPxeServer(t: TestContext, data: string, extra: string[] = []): Promise<Running> {
  const s = inNs(t, NS, [
    NODE,
    IMGCAST,
    'server',
    '--data',
    data,
    '--listen',
    `0.0.0.0:${PORT}`,
    '--discovery',
    'off',
    '--pxe',
    '--pxe-interface',
    'br0',
    ...extra,
  ]);
  await until(
    'the server answers network boots',
    () => /answering network boots on br0/.test(s.out()) && /imgcast server .*API on/.test(s.out()),
    30_000,
    s.out,
  );
  return s;
}

async function until(what: string, check: () => boolean | Promise<boolean>, ms: number, log: () => string) {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) assert.fail(`${what} within ${ms / 1000} s; log:\n${log().slice(-4000)}`);
    await sleep(250);
  }
}

/** An HTTP GET from inside the namespace, as a workstation on the LAN makes it. */
function getInNs(url: string, token?: string): { status: number; body: string } {
  const script = `const r = await fetch(${JSON.stringify(url)}, { headers: ${JSON.stringify(token ? { authorization: `Bearer ${token}` } : {})} }); process.stdout.write(JSON.stringify({ status: r.status, body: await r.text() }));`;
  const out = execFileSync('ip', ['netns', 'exec', NS, NODE, '--input-type=module', '-e', script], {
    encoding: 'utf8',
  });
  return JSON.parse(out) as { status: number; body: string };
}

function imgcast(data: string, ...args: string[]): string {
  return execFileSync(
    'ip',
    ['netns', 'exec', NS, NODE, IMGCAST, ...args, '-i', `${SERVER_IP}:${PORT}`, '--data', data],
    { env: ENV, encoding: 'utf8' },
  );
}

test('a diskless VM matching no rule network-boots from imgcast server --pxe (proxy beside the site DHCP), is told to boot its local disk, and QEMU ends by itself', async (t) => {
  if (skipUnless(t, unavailable())) return;
  const dir = await tempDir(t, 'imgcast-netboot-vm-');
  const data = join(dir, 'data');
  makeLan(t);

  // The site's DHCP server: addresses, and nothing about booting.
  const site = inNs(t, SITE, [
    '/usr/sbin/dnsmasq',
    '--keep-in-foreground',
    '--conf-file=/dev/null',
    '--port=0',
    '--interface=v1',
    '--bind-interfaces',
    '--dhcp-range=198.18.7.100,198.18.7.150,255.255.255.0,1h',
    `--dhcp-leasefile=${join(dir, 'site.leases')}`,
    `--pid-file=${join(dir, 'site.pid')}`,
    '--log-facility=-',
    '--log-dhcp',
  ]);
  await until('the site DHCP server starts', () => /started, version/.test(site.out()), 10_000, site.out);

  // The imaging server, with an imaging environment in place (its content does not matter to a
  // workstation told to boot its disk).
  mkdirSync(join(data, 'bootenv'), { recursive: true });
  writeFileSync(join(data, 'bootenv/vmlinuz'), 'kernel');
  writeFileSync(join(data, 'bootenv/initrd.img'), 'initrd');
  const server = await startPxeServer(t, data);
  const token = readFileSync(join(data, 'admin-token'), 'utf8').trim();

  // A second one on the same LAN cannot have the ports: it says so and stops.
  const second = inNs(t, NS, [
    NODE,
    IMGCAST,
    'server',
    '--data',
    join(dir, 'data2'),
    '--listen',
    `0.0.0.0:${PORT + 1}`,
    '--discovery',
    'off',
    '--pxe',
    '--pxe-interface',
    'br0',
  ]);
  const code = await within(second.exit, 30_000, 'still running');
  assert.notEqual(code, 'still running', 'a server without its PXE ports must not go on half-working');
  assert.notEqual(code, 0);
  assert.match(second.out(), /\[E_PXE_PORT_IN_USE\]/, second.out());

  // The VM: no disk, network first, iPXE in the NIC's ROM.
  const started = Date.now();
  const vm = inNs(t, NS, [
    'qemu-system-x86_64',
    '-accel',
    'tcg',
    '-m',
    '512',
    '-display',
    'none',
    '-monitor',
    'none',
    '-serial',
    'stdio',
    '-no-reboot',
    '-boot',
    'order=n,reboot-timeout=1000',
    '-netdev',
    'tap,id=n0,ifname=tap0,script=no,downscript=no',
    '-device',
    `virtio-net-pci,netdev=n0,mac=${VM_MAC}`,
    '-chardev',
    `file,id=fwlog,path=${join(dir, 'firmware.log')}`,
    '-device',
    'isa-debugcon,iobase=0x402,chardev=fwlog',
  ]);
  const vmCode = await within(vm.exit, VM_TIMEOUT_MS, 'timeout');
  const took = Date.now() - started;
  const firmware = existsSync(join(dir, 'firmware.log'))
    ? readFileSync(join(dir, 'firmware.log'), 'utf8')
    : '';
  const context = `server log:\n${server.out().slice(-6000)}\nsite DHCP:\n${site.out().slice(-2000)}\nfirmware:\n${firmware.slice(-2000)}\nVM:\n${vm.out().slice(-2000)}`;
  assert.notEqual(
    vmCode,
    'timeout',
    `QEMU did not end by itself within ${VM_TIMEOUT_MS / 1000} s\n${context}`,
  );

  // The site server gave the address; the imaging server gave the boot (iPXE by its chain file).
  assert.match(site.out(), new RegExp(`DHCPACK\\(v1\\) 198\\.18\\.7\\.1\\d\\d ${VM_MAC}`), context);
  assert.match(
    server.out(),
    /sent \S*\/imgcast\.ipxe to 198\.18\.7\.1\d\d/,
    `dnsmasq sent the chain file over TFTP\n${context}`,
  );
  assert.match(server.out(), /network boot: boot\.ipxe/, context);
  const decisions = JSON.parse(
    getInNs(`http://${SERVER_IP}:${PORT}/api/boot/decisions`, token).body,
  ) as BootDecision[];
  assert.deepEqual(
    decisions.map((d) => [d.mac, d.platform, d.decision, d.session, d.workstation]),
    [[VM_MAC, 'pcbios', 'local', null, null]],
    context,
  );
  assert.match(
    decisions[0]!.why,
    /^unknown workstation 52:54:00:77:00:01 matching no rule: there are no automatic sessions$/,
  );
  // Most of it is iPXE's wait for IPv6 autoconfiguration before it asks for anything (see the
  // comment on pxeConfig in src/server/pxe.ts): power-on to boot.ipxe shows it.
  const asked = /^.*network boot: boot\.ipxe.*$/m.exec(server.out())?.[0];
  const askedAt = Number(/"time":(\d+)/.exec(asked ?? '')?.[1] ?? NaN);
  t.diagnostic(
    `power-on to the boot.ipxe request: ${((askedAt - started) / 1000).toFixed(1)} s; to QEMU's own exit: ${(took / 1000).toFixed(1)} s`,
  );

  // A task queued for a workstation: its boot request is answered with the environment.
  const folder = join(dir, 'folder');
  mkdirSync(join(folder, 'etc'), { recursive: true });
  writeFileSync(join(folder, 'etc/hostname'), 'lab\n');
  mkdirSync(join(data, 'images'), { recursive: true });
  execFileSync(NODE, [IMG, 'make', folder, join(data, 'images/lab.imgc')], { env: ENV, stdio: 'pipe' });
  imgcast(data, 'workstation', 'add', 'lab9-01', '52:54:00:77:00:02');
  assert.match(
    imgcast(data, 'task', 'add', 'lab9-01', 'lab.imgc'),
    /task queued: lab9-01 \(52:54:00:77:00:02\)/,
  );
  assert.match(imgcast(data, 'task', 'list'), /lab9-01 \(52:54:00:77:00:02\)\s+lab\.imgc\s+waiting/);
  const d = getInNs(
    `http://${SERVER_IP}:${PORT}/boot/decide?mac=52:54:00:77:00:02&platform=efi&buildarch=x86_64`,
  );
  assert.equal(d.status, 200, d.body);
  assert.equal(
    d.body.split('\n').slice(2).join('\n'),
    [
      `kernel http://${SERVER_IP}:${PORT}/boot/vmlinuz initrd=initrd.img console=ttyS0 console=tty0 imgcast.server=http://${SERVER_IP}:${PORT} imgcast.boot=network`,
      `initrd http://${SERVER_IP}:${PORT}/boot/initrd.img`,
      'boot',
      '',
    ].join('\n'),
  );
  assert.match(
    imgcast(data, 'status'),
    /last network boots:\n {2}20\S+ lab9-01 \(52:54:00:77:00:02\) efi: image: task task-525400770002: .*\n {2}20\S+ 52:54:00:77:00:01 pcbios: local: unknown workstation/,
  );
  assert.match(
    imgcast(data, 'workstation', 'list'),
    /^lab9-01 +52:54:00:77:00:02 .*not registered yet {2}boot: netboot 20\d\d-/m,
  );

  // The server stops cleanly and takes its dnsmasq and temporary directory with it.
  const pxeDirs = () =>
    (server.out().match(/imgcast-pxe-[A-Za-z0-9.-]+/g) ?? []).filter((p, i, a) => a.indexOf(p) === i);
  const tmp = pxeDirs();
  assert.ok(tmp.length > 0, 'the log names the generated configuration');
  process.kill(-server.child.pid!, 'SIGTERM');
  assert.notEqual(await within(server.exit, 20_000, 'still running'), 'still running');
  for (const p of tmp) assert.ok(!existsSync(join('/tmp', p)), `${p} removed`);
  assert.equal(
    spawnSync('ip', ['netns', 'pids', NS], { encoding: 'utf8' }).stdout.trim(),
    '',
    'nothing left running in the namespace',
  );
});

/** Why a `--pxe` server cannot run here (no VM needed), or undefined when it can. */
function pxeUnavailable(): string | undefined {
  return (
    netnsUnavailable() ??
    (existsSync('/usr/sbin/dnsmasq') ? undefined : 'needs dnsmasq (apt-get install dnsmasq-base)') ??
    (existsSync('/usr/lib/ipxe/undionly.kpxe') ? undefined : 'needs iPXE (apt-get install ipxe)')
  );
}

/** Whether the process `pid.start` (a record's tag) is still that process. */
function aliveTag(tag: string): boolean {
  const [pid, start] = tag.split('.');
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] === start;
  } catch {
    return false;
  }
}

const PXE_STATE = '/run/imgcast/pxe';

/** The record a running `--pxe --pxe-mode dhcp` server keeps of its dnsmasq and radvd (src/server/pxe.ts). */
function recordOf(pid: number): { file: string; dnsmasq: string; radvd: string; dir: string } {
  const name = readdirSync(PXE_STATE).find((n) => n.startsWith(`dnsmasq@${pid}.`) && n.endsWith('.json'));
  assert.ok(name, `a record for the server ${pid} in ${PXE_STATE}: ${readdirSync(PXE_STATE).join(' ')}`);
  const r = JSON.parse(readFileSync(join(PXE_STATE, name), 'utf8')) as {
    dnsmasq: string;
    radvd: string;
    dir: string;
  };
  assert.ok(aliveTag(r.dnsmasq), `its dnsmasq ${r.dnsmasq} runs`);
  assert.ok(r.radvd && aliveTag(r.radvd), `its radvd ${r.radvd} runs`);
  assert.ok(existsSync(r.dir));
  return { file: join(PXE_STATE, name), ...r };
}

/** The pids of the watchdog `sh`s watching the helpers of `record` (one per helper). */
function watchdogsOf(record: string): number[] {
  const found: number[] = [];
  for (const pid of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    let argv: string[];
    try {
      argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    } catch {
      continue;
    }
    if (argv.includes('imgcast-pxe-watchdog') && argv.includes(record)) found.push(Number(pid));
  }
  assert.equal(found.length, 2, `a watchdog for dnsmasq and one for radvd of ${record}`);
  return found;
}

test('imgcast server --pxe --pxe-mode dhcp killed with SIGKILL: its watchdogs stop its dnsmasq and radvd; with the watchdogs killed too, the next --pxe start does; either way the next server starts', async (t) => {
  if (
    skipUnless(
      t,
      pxeUnavailable() ?? (existsSync('/usr/sbin/radvd') ? undefined : 'needs radvd (apt-get install radvd)'),
    )
  )
    return;
  const dir = await tempDir(t, 'imgcast-pxe-kill-');
  const data = join(dir, 'data');
  makeLan(t);
  const startServer = () =>
    startPxeServer(t, data, ['--pxe-mode', 'dhcp', '--pxe-range', '198.18.7.100,198.18.7.150']);

  // 1. The server alone is killed: its watchdog sees the pipe close and cleans up at once.
  const first = await startServer();
  const r1 = recordOf(first.child.pid!);
  process.kill(first.child.pid!, 'SIGKILL');
  await first.exit;
  await until(
    'the watchdogs stop dnsmasq and radvd and remove the directory and record',
    () => !aliveTag(r1.dnsmasq) && !aliveTag(r1.radvd) && !existsSync(r1.dir) && !existsSync(r1.file),
    10_000,
    first.out,
  );

  // 2. The server and its watchdogs are killed together: dnsmasq and radvd stay, holding the ports…
  const second = await startServer();
  assert.doesNotMatch(second.out(), /is gone/, 'nothing was left for it to undo');
  const r2 = recordOf(second.child.pid!);
  for (const w of watchdogsOf(r2.file)) process.kill(w, 'SIGKILL');
  process.kill(second.child.pid!, 'SIGKILL');
  await second.exit;
  await sleep(1000);
  assert.ok(aliveTag(r2.dnsmasq), 'with no watchdog, the dnsmasq of the killed server is still running');
  assert.ok(aliveTag(r2.radvd), 'and its radvd');
  assert.ok(existsSync(r2.file) && existsSync(r2.dir));

  // …until the next --pxe start stops it, before it checks the ports, and starts fine.
  const third = await startServer();
  const [pid2] = r2.dnsmasq.split('.');
  const [radvd2] = r2.radvd.split('.');
  assert.match(
    third.out(),
    new RegExp(
      `the imgcast server --pxe ${second.child.pid} is gone; stopped its dnsmasq ${pid2}; stopped its radvd ${radvd2}; removed ${r2.dir}`,
    ),
  );
  assert.ok(!aliveTag(r2.dnsmasq) && !aliveTag(r2.radvd), 'the old dnsmasq and radvd are gone');
  assert.ok(!existsSync(r2.dir) && !existsSync(r2.file), 'its directory and record are gone');
  const r3 = recordOf(third.child.pid!);
  assert.notEqual(r3.dnsmasq, r2.dnsmasq);

  // A clean stop removes the record, the directory and every process.
  process.kill(third.child.pid!, 'SIGTERM');
  assert.notEqual(await within(third.exit, 20_000, 'still running'), 'still running');
  assert.ok(!existsSync(r3.file) && !existsSync(r3.dir) && !aliveTag(r3.dnsmasq) && !aliveTag(r3.radvd));
  assert.equal(spawnSync('ip', ['netns', 'pids', NS], { encoding: 'utf8' }).stdout.trim(), '');
});
