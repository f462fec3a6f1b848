/**
 * npm run bench:pxe [-- --counts 1,3]
 *
 * Network boot of a lab, from power-on: how long until `img` runs in the imaging environment,
 * and until each workstation is imaged, rebooted, sent to its own disk by the server and shows
 * its `NAME login:` prompt, for 1 and for 3 workstations (one lab for each count, the counts in
 * turn); and the imaging server's CPU seconds per workstation over the whole of it. The lab is
 * test/boot/pxe-lab.ts (the end-to-end test's): `imgcast server --pxe --pxe-mode dhcp` in a LAN
 * namespace, an automatic session with the reference Debian image (test/boot/reference-disk.ts,
 * captured with `img make`), clients N, names lab1-{nn}; QEMU workstations (TCG, 768 MiB,
 * blank disks, network first) alternate SeaBIOS and OVMF (ws1 SeaBIOS, ws2 OVMF, ws3 SeaBIOS).
 *
 * Under TCG on two cores the guests are CPU-bound and slow each other down, so their times grow
 * with their number; the figure to hold is the server's: its CPU per workstation must not grow.
 */
import { rmSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { cachedBootenv } from '../test/bootenv/cached.ts';
import type { Vm } from '../test/boot/lan.ts';
import { makeImage, PxeLab, pxeLabUnavailable, type Workstation } from '../test/boot/pxe-lab.ts';
import { referenceDisk, referenceDiskUnavailable } from '../test/boot/reference-disk.ts';
import { machineLine, median, writeSection } from './report.ts';

const ROOT = resolve(import.meta.dirname, '..');
const TIMEOUT_MS = 20 * 60_000;

const { values } = parseArgs({ options: { counts: { type: 'string', default: '1,3' } } });
const counts = values.counts.split(',').map(Number);
if (counts.some((n) => !Number.isInteger(n) || n < 1 || n > 9)) {
  console.error('--counts: workstation counts from 1 to 9, separated by commas');
  process.exit(2);
}
const why = pxeLabUnavailable() ?? (await referenceDiskUnavailable());
if (why) {
  console.error(`bench:pxe cannot run here: ${why}`);
  process.exit(1);
}

const say = (line: string) => process.stderr.write(`${line}\n`);
const env = await cachedBootenv((l) => say(`bootenv: ${l}`));
const ref = await referenceDisk((l) => say(`reference disk: ${l}`));
const dir = await mkdtemp(join(tmpdir(), 'imgcast-bench-pxe-'));
const cleanups: Array<() => void> = [() => rmSync(dir, { recursive: true, force: true })];
const cleanup = () => {
  for (const c of cleanups.splice(0).reverse()) c();
};
process.on('exit', cleanup);
for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const)
  process.on(s, () => {
    cleanup();
    process.exit(130);
  });

const images = join(dir, 'images');
say('img make of the reference disk');
await makeImage(ref.path, images, 'debian.imgc');

interface Row {
  count: number;
  /** Why the lab did not all come up as itself, when it did not. */
  failed?: string;
  imgRunning: number[];
  loggedIn: number[];
  labSeconds: number;
  serverCpu: number;
  load: number;
  /** The server ran radvd, so iPXE had its IPv6 answer at once. */
  advertised: boolean;
}
const rows: Row[] = [];

for (const count of counts) {
  const labDir = await mkdtemp(join(dir, `lab${count}-`));
  const L = await PxeLab.start({ dir: labDir, images, bootenv: env.dir });
  cleanups.push(() => L.close());
  try {
    await L.labSession('debian.imgc', count, L.macPrefix);
    const load = loadavg()[0]!;
    const cpu0 = L.serverCpuSeconds();
    const t0 = Date.now();
    const vms: Vm[] = [];
    for (let i = 1; i <= count; i++) {
      const w: Workstation = {
        name: `ws${i}`,
        firmware: i % 2 === 0 ? 'uefi' : 'bios',
        mac: `${L.macPrefix}:01:0${i}`,
        diskBytes: ref.diskBytes,
      };
      vms.push(await L.powerOn(w));
    }
    let failed: string | undefined;
    const measured = await Promise.all(
      vms.map(async (vm) => {
        const running = await vm.waitFor(/imgcast: running: img auto/, TIMEOUT_MS);
        // A failed imaging leaves the environment's shell: no login prompt comes then.
        const ended = await Promise.race([
          vm.waitFor(/\blab1-\d\d login:/, TIMEOUT_MS),
          vm.waitFor(/imgcast: img failed/, TIMEOUT_MS).then((m) => {
            const said = vm.console().split('imgcast: img failed')[0]!.split('\n');
            failed ??= `${vm.name}: ${said.filter((l) => l.startsWith('img: ')).at(-1) ?? 'img failed'}`;
            return m;
          }),
        ]);
        say(
          `${count} workstation(s): ${vm.name} img running at ${running.seconds} s, ended at ${ended.seconds} s`,
        );
        return { running: running.seconds, login: ended.seconds };
      }),
    );
    const labSeconds = (Date.now() - t0) / 1000;
    const serverCpu = L.serverCpuSeconds() - cpu0;
    for (const vm of vms) vm.kill();
    rows.push({
      count,
      ...(failed ? { failed } : {}),
      imgRunning: measured.map((m) => m.running),
      loggedIn: measured.map((m) => m.login),
      labSeconds,
      serverCpu,
      load,
      advertised: L.routerAdvertisements,
    });
  } finally {
    L.close();
  }
}

const range = (xs: number[]) =>
  xs.length === 1
    ? `${xs[0]!.toFixed(1)} s`
    : `${Math.min(...xs).toFixed(1)}–${Math.max(...xs).toFixed(1)} s (median ${median(xs).toFixed(1)})`;
const perWs = rows.map((r) => r.serverCpu / r.count);
const body = [
  '## Network boot of a lab (`bench/pxe.ts`)',
  '',
  `Command: \`npm run bench:pxe -- ${process.argv.slice(2).join(' ')}\`  `,
  `Date: ${new Date().toISOString()}  `,
  `Machine: ${machineLine()}  `,
  `Environment: \`imgcast bootenv build\`, kernel ${env.info.kernel}, initrd.img ${(env.info.files['initrd.img'].bytes / 2 ** 20).toFixed(1)} MiB.  `,
  `Lab: test/boot/pxe-lab.ts — \`imgcast server --pxe --pxe-mode dhcp\` in a LAN namespace, an automatic session with the reference Debian disk (${(ref.diskBytes / 2 ** 30).toFixed(0)} GiB GPT, captured with \`img make\`), clients N; QEMU workstations (TCG, 768 MiB, blank disks, network first) alternating SeaBIOS and OVMF with a fresh variable store, all powered on together. Guests and server share the same 2 cores, so guest times grow with their number.  `,
  'Times from QEMU start ("power-on"): to the environment’s `imgcast: running: img auto` line, and to the `lab1-NN login:` prompt after imaging, the reboot and the second network boot (sent to the local disk). Server CPU: user + system seconds of the `imgcast server` process (not its dnsmasq) from power-on to the last login prompt.',
  '',
  '| workstations | power-on → img running | power-on → imaged and booted as itself | whole lab | server CPU | server CPU per workstation | load at start | IPv6 answered (radvd) |',
  '|---|---|---|---|---|---|---|---|',
  ...rows.map(
    (r, i) =>
      `| ${r.count} | ${range(r.imgRunning)} | ${r.failed ? `**failed** (${r.failed})` : range(r.loggedIn)} | ${r.labSeconds.toFixed(0)} s | ${r.serverCpu.toFixed(1)} s | ${perWs[i]!.toFixed(2)} s | ${r.load.toFixed(2)} | ${r.advertised ? 'yes' : 'no (iPXE waits ~13 s)'} |`,
  ),
  '',
  rows.length > 1
    ? `Server CPU per workstation, ${rows.at(-1)!.count} workstations ÷ ${rows[0]!.count}: **${(perWs.at(-1)! / perWs[0]!).toFixed(2)}×** (must not grow: ≤ 1.0× ${perWs.at(-1)! / perWs[0]! <= 1 ? 'met' : 'not met'}).`
    : '',
].join('\n');
process.stdout.write(`${body}\n`);
writeSection(ROOT, 'pxe', body);
cleanup();
