/**
 * A lab imaged hands-off by network boot, end to end, as an administrator runs it: a bootable
 * workstation disk captured with `img make`, the imaging environment of `imgcast bootenv build`
 * (test/bootenv/cached.ts), `imgcast server --pxe --pxe-mode dhcp` in a LAN namespace (lan.ts;
 * the server is the lab network's DHCP server, the isolated-lab mode), an automatic session
 * `lab1` with the image, clients 3, names `lab1-{nn}` and a rule that matches three MACs.
 *
 * Three QEMU workstations (TCG, 768 MiB) with blank disks and network-first boot order power on
 * together: ws1 and ws2 under SeaBIOS, ws3 under OVMF with a fresh variable store; once they are
 * up, a fourth, ws4 (SeaBIOS), with a MAC no rule matches. Each of the three must network-boot,
 * join, be imaged, get its name, reboot, network-boot again, be told to boot its disk, and reach
 * `lab1-0N login:` on its serial console. The server's history must show one run of three
 * successes, each workstation's boot phases must have gone through to `up`, and ws4 must only
 * ever have been told to boot its local disk (it has none, so the firmware finds nothing) and
 * never be imaged.
 *
 * The disk: on a machine of 4 cores or more (or with IMGCAST_PXE_DISK=debian) the reference
 * Debian workstation (reference-disk.ts); on fewer, the small one (small-disk.ts: the same
 * layout, GRUB, Debian kernel and initramfs, a busybox root). Three TCG guests each putting down
 * the 0.7 GB Debian image and the server on two cores starved the transport in every run tried
 * (guests dropped as too slow every few seconds, catching up each time, and one run in three a
 * guest that heard nothing from the sender for 25 s), and one guest alone took 213 s to its
 * login prompt; `npm run bench:pxe` measures the Debian image with one and with three.
 */
import assert from 'node:assert/strict';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import type { HistoryEntry, Workstation as Registered } from '../../src/api/schemas.ts';
import { skipUnless, tempDir } from '../helpers/env.ts';
import { cachedBootenv } from '../bootenv/cached.ts';
import type { Vm } from './lan.ts';
import { makeImage, PxeLab, pxeLabUnavailable, type Workstation } from './pxe-lab.ts';
import { sh, withLoop } from './boot-disk.ts';
import { referenceDisk, referenceDiskUnavailable } from './reference-disk.ts';
import { smallDisk, smallDiskUnavailable } from './small-disk.ts';

const MiB = 1024 * 1024;
/** From power-on to a login prompt: TCG guests, three of them and the server on shared cores. */
const LAB_TIMEOUT_MS = 14 * 60_000;
/** The Debian image with 4 cores or more; on fewer, the small disk (see above). */
const DEBIAN = availableParallelism() >= 4 || process.env.IMGCAST_PXE_DISK === 'debian';

test(
  `a lab imaged hands-off: three workstations (SeaBIOS, SeaBIOS, OVMF) network-boot from imgcast server --pxe, are imaged by an automatic session with ${DEBIAN ? 'the reference Debian image' : 'a small Linux image'}, reboot, are sent to their own disks and come up under the session's names; another, matching no rule, is never imaged`,
  { timeout: 30 * 60_000 },
  async (t) => {
    if (
      skipUnless(
        t,
        pxeLabUnavailable() ?? (await (DEBIAN ? referenceDiskUnavailable() : smallDiskUnavailable())),
      )
    )
      return;
    const env = await cachedBootenv((line) => t.diagnostic(`bootenv: ${line}`));
    const say = (line: string) => t.diagnostic(`disk: ${line}`);
    const ref = await (DEBIAN ? referenceDisk(say) : smallDisk(say));
    t.diagnostic(
      `${availableParallelism()} cores: ${DEBIAN ? 'the reference Debian disk' : 'the small disk (the Debian image on 4 cores or more, or with IMGCAST_PXE_DISK=debian)'}, ${ref.diskBytes / MiB} MiB, boots to its login prompt in ${ref.provenBoots.map((b) => `${b.seconds} s (${b.firmware})`).join(', ')}`,
    );
    const dir = await tempDir(t, 'imgcast-pxe-');
    const images = join(dir, 'images');
    await makeImage(ref.path, images, 'lab.imgc');
    const L = await PxeLab.start({ dir, images, bootenv: env.dir });
    t.after(() => L.close());

    const p = `${L.macPrefix}:01`;
    const lab: Workstation[] = [
      { name: 'ws1', firmware: 'bios', mac: `${p}:01`, diskBytes: ref.diskBytes },
      { name: 'ws2', firmware: 'bios', mac: `${p}:02`, diskBytes: ref.diskBytes },
      { name: 'ws3', firmware: 'uefi', mac: `${p}:03`, diskBytes: ref.diskBytes },
    ];
    const expectedNames = lab.map((_, i) => `lab1-0${i + 1}`);
    const stranger: Workstation = {
      name: 'ws4',
      firmware: 'bios',
      mac: `${L.macPrefix}:02:04`,
      diskBytes: 64 * MiB,
    };
    await L.labSession('lab.imgc', lab.length, p);

    const cpuBefore = L.serverCpuSeconds();
    const poweredOn = Date.now();
    const vms: Vm[] = [];
    for (const w of lab) {
      const vm = await L.powerOn(w);
      t.after(() => vm.kill());
      vms.push(vm);
    }

    // Each comes up under a name of the template; which one is the order they joined in.
    const names = new Map<Vm, string>();
    const timings: string[] = [];
    const labUp = Promise.all(
      vms.map(async (vm) => {
        const running = await vm.waitFor(/imgcast: running: img auto/, LAB_TIMEOUT_MS);
        timings.push(`${vm.name}: img running ${running.seconds} s after power-on`);
        const login = await vm.waitFor(/\b(lab1-0\d) login:/, LAB_TIMEOUT_MS);
        names.set(vm, login.match[1]!);
        timings.push(`${vm.name}: ${login.match[1]} login: ${login.seconds} s after power-on`);
      }),
    );
    await Promise.race([labUp, L.serverEnded]).catch((err: unknown) => {
      throw new Error(`${(err as Error).message}\n--- server (last lines):\n${L.serverLog().slice(-6000)}`);
    });
    const labSeconds = (Date.now() - poweredOn) / 1000;
    const cpuUsed = L.serverCpuSeconds() - cpuBefore;
    for (const line of timings.sort()) t.diagnostic(line);
    t.diagnostic(
      `whole lab imaged and up in ${labSeconds.toFixed(0)} s; server CPU ${cpuUsed.toFixed(1)} s (${(cpuUsed / lab.length).toFixed(1)} s per workstation)`,
    );
    assert.deepEqual([...names.values()].sort(), expectedNames, 'a name of the template each');
    if (!DEBIAN) {
      // The small system's init prints its hostname and machine-id: each copy has its own.
      const refId = (
        await withLoop(
          ref.path,
          { offset: ref.partitions.root.start, size: ref.partitions.root.size, readOnly: true },
          (dev) => sh('debugfs', ['-R', 'cat /etc/machine-id', dev]),
        )
      ).match(/^[0-9a-f]{32}$/m)?.[0];
      assert.ok(refId, 'the small disk has a machine-id');
      const ids = vms.map((vm) => {
        const up = [...vm.console().matchAll(/small system up as (\S+), machine-id ([0-9a-f]{32})/g)].at(-1);
        assert.ok(up, `${vm.name} came up as the small system`);
        assert.equal(up[1], names.get(vm), `${vm.name}'s hostname is its login name`);
        return up[2]!;
      });
      assert.equal(
        new Set([...ids, refId]).size,
        4,
        `new machine-ids, one each: ${ids.join(', ')} (reference ${refId})`,
      );
    }

    // Every imaged machine went through the environment once and was then sent to its disk.
    for (const vm of vms) {
      const c = vm.console();
      assert.equal(
        c.match(/imgcast: running: img auto/g)?.length,
        1,
        `${vm.name} ran the environment once:\n${c.slice(-3000)}`,
      );
      assert.match(c, /written to \/dev\/vda and verified/, `${vm.name} verified its disk`);
    }

    const history = await L.imgcast<HistoryEntry[]>('history');
    const runs = history.filter((h) => h.session === 'lab1');
    assert.equal(runs.length, 1, `one run of lab1: ${JSON.stringify(runs)}`);
    assert.deepEqual(
      runs[0]!.clients.map((c) => c.state),
      lab.map(() => 'ok'),
      JSON.stringify(runs[0]),
    );

    const registered = await L.imgcast<Registered[]>('workstation', 'list');
    for (const [i, w] of lab.entries()) {
      const ws = registered.find((x) => x.mac === w.mac);
      assert.ok(ws, `${w.name} (${w.mac}) is registered`);
      assert.equal(ws.name, names.get(vms[i]!), `${w.name}'s name on the server`);
      assert.equal(ws.phase, 'up', `${w.name} is up after its second network boot`);
    }

    // The stranger comes once the lab is up: two cores run one more TCG guest no faster.
    for (const vm of vms) vm.kill();
    const ws4 = await L.powerOn(stranger);
    t.after(() => ws4.kill());
    for (let i = 0; !(await L.decisions()).some((d) => d.mac === stranger.mac); i++) {
      if (i > 150)
        assert.fail(
          `ws4 never network-booted:\n${ws4.console().slice(-2000)}\n${L.serverLog().slice(-3000)}`,
        );
      await new Promise((r) => setTimeout(r, 2000));
    }
    // A second boot request shows it came back to the network after its disk had nothing to boot.
    for (let i = 0; (await L.decisions()).filter((d) => d.mac === stranger.mac).length < 2; i++) {
      if (i > 150) assert.fail(`ws4 asked only once:\n${ws4.console().slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 2000));
    }
    const decisions = await L.decisions();
    for (const w of lab) {
      const mine = decisions.filter((d) => d.mac === w.mac).map((d) => d.decision);
      assert.deepEqual(
        mine.slice(0, 2),
        ['image', 'local'],
        `${w.name}: imaged, then its disk: ${mine.join(', ')}`,
      );
    }
    const strangerBoots = decisions.filter((d) => d.mac === stranger.mac);
    assert.deepEqual(
      [...new Set(strangerBoots.map((d) => d.decision))],
      ['local'],
      `ws4 was only ever sent to its disk: ${JSON.stringify(strangerBoots)}`,
    );
    assert.doesNotMatch(ws4.console(), /imgcast: running/, 'ws4 never ran the imaging environment');
    assert.equal(
      (await L.imgcast<Registered[]>('workstation', 'list')).find((x) => x.mac === stranger.mac)
        ?.registeredAt ?? null,
      null,
      'ws4 never registered',
    );
  },
);
