/**
 * `--reboot` under UEFI on a real firmware (OVMF, fresh variable store), the way a machine is
 * imaged from a boot CD or USB stick: the ISO of `imgcast bootenv iso --server URL` boots first
 * (no network boot, so no imgcast.boot=network), and its default entry runs `img auto --reboot`
 * with a one-off task for the workstation on `imgcast server`. After the verified restore, img makes a boot entry
 * for the restored EFI partition with efibootmgr, outside the boot order and then added at its
 * end, and boots it once through BootNext: the firmware must start that entry on the restart and
 * the copy come up to its own login prompt. The network-booted path (no BootNext, the server sends
 * it to its disk) is pxe.test.ts's; the plan itself is test/client/boot-entry.test.ts's.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFile, mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { test } from 'node:test';

import { hasCommand, skipUnless, tempDir } from '../helpers/env.ts';
import { cachedBootenv } from '../bootenv/cached.ts';
import { makeImage, PxeLab, pxeLabUnavailable } from './pxe-lab.ts';
import { ovmf } from './qemu.ts';
import { smallDisk, smallDiskUnavailable } from './small-disk.ts';

const IMGCAST = resolve(import.meta.dirname, '../../bin/imgcast.js');

test(
  'UEFI, imaging environment booted from its ISO: img auto --reboot makes a boot entry for the restored disk, adds it at the end of the boot order and boots it once through BootNext; the copy comes up under its name',
  { timeout: 15 * 60_000 },
  async (t) => {
    if (
      skipUnless(
        t,
        pxeLabUnavailable() ??
          (ovmf() ? undefined : 'needs OVMF (apt-get install ovmf)') ??
          (['grub-mkrescue', 'xorriso', 'mformat'].every(hasCommand)
            ? undefined
            : 'needs grub-mkrescue, xorriso and mformat for the ISO (apt-get install grub-common xorriso mtools)') ??
          (await smallDiskUnavailable()),
      )
    )
      return;
    const env = await cachedBootenv((line) => t.diagnostic(`bootenv: ${line}`));
    const ref = await smallDisk((line) => t.diagnostic(`disk: ${line}`));
    const dir = await tempDir(t, 'imgcast-reboot-');
    const images = join(dir, 'images');
    await makeImage(ref.path, images, 'lab.imgc');
    const L = await PxeLab.start({ dir, images, bootenv: env.dir });
    t.after(() => L.close());

    // The ISO, made as an administrator makes it, from a copy of the environment (it is written
    // beside the environment, and the cached one is shared).
    const bootenv = join(dir, 'bootenv');
    await mkdir(bootenv);
    for (const f of ['vmlinuz', 'initrd.img', 'bootenv.json'])
      await copyFile(join(env.dir, f), join(bootenv, f));
    const iso = spawnSync(
      process.execPath,
      [IMGCAST, 'bootenv', 'iso', '--out', bootenv, '--server', `http://${L.address}:${L.port}`, '--json'],
      { encoding: 'utf8' },
    );
    assert.equal(iso.status, 0, iso.stderr);
    const cdrom = (JSON.parse(iso.stdout) as { file: string }).file;

    const mac = `${L.macPrefix}:03:01`;
    await L.imgcast('workstation', 'add', 'usb-01', mac);
    await L.imgcast('task', 'add', 'usb-01', 'lab.imgc');
    const vm = await L.powerOn({ name: 'usb1', firmware: 'uefi', mac, diskBytes: ref.diskBytes }, { cdrom });
    t.after(() => vm.kill());
    const fail = (err: unknown): never => {
      throw new Error(
        `${(err as Error).message}\n--- console:\n${vm.console().slice(-5000)}\n--- server:\n${L.serverLog().slice(-3000)}`,
      );
    };
    const said = await Promise.race([
      vm.waitFor(/img: rebooting into the restored disk: ([^\r\n]*)\r?\n/, 10 * 60_000),
      L.serverEnded,
    ]).catch(fail);
    assert.match(
      said.match[1]!,
      /^a boot entry "imgcast [^"]+" for \\EFI\\BOOT\\BOOTX64\.EFI on \/dev\/vda partition 2 is made, put at the end of the boot order, and booted next \(BootNext\)/,
    );
    const started = await vm
      .waitFor(/BdsDxe: starting (Boot[0-9A-F]{4}) "imgcast [^"]+" from HD\(2,GPT,/, 5 * 60_000)
      .catch(fail);
    const login = await vm.waitFor(/\b(usb-01) login:/, 5 * 60_000).catch(fail);
    t.diagnostic(`the firmware started ${started.match[1]}; usb-01 login: ${login.seconds} s after power-on`);
    assert.match(vm.console(), /written to \/dev\/vda and verified/);
    // It never network-booted: the firmware went straight to the entry img made.
    assert.deepEqual(
      (await L.decisions()).filter((d) => d.mac === mac),
      [],
    );
  },
);
