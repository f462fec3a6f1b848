/**
 * localboot.efi (src/bootenv/localboot.ts): its configuration, and a real image made by
 * grub-mkimage. That it starts a restored disk's loader on a real firmware is shown by
 * test/boot/pxe.test.ts (the OVMF workstation sent to its disk after imaging).
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';

import {
  LOADERS,
  buildLocalBoot,
  localBootConfig,
  localBootUnavailable,
} from '../../src/bootenv/localboot.ts';
import { hasCommand, tempDir } from '../helpers/env.ts';

test('localBootConfig: each loader looked for on local disks in order, the first found started, and back to iPXE when none is', () => {
  const cfg = localBootConfig();
  const loop = /^for loader in (.+); do$/m.exec(cfg);
  assert.ok(loop, cfg);
  assert.deepEqual(loop[1]!.split(' '), [...LOADERS]);
  assert.equal(LOADERS[0], '/EFI/BOOT/BOOTX64.EFI', 'the removable-media path first');
  // chainloader takes its EFI device from root: the search sets it.
  assert.match(cfg, /search --no-floppy --file --set=root "\$loader"/);
  assert.match(cfg, /chainloader "\$loader"\n\s+boot/);
  assert.match(cfg, /done\necho "imgcast: no boot loader on a local disk"\nexit\n$/);
});

test('buildLocalBoot: grub-mkimage makes an x86-64 EFI application holding the configuration', async (t) => {
  const why =
    localBootUnavailable() ?? (hasCommand('grub-mkimage') ? undefined : 'needs grub-mkimage (grub-common)');
  if (why) return t.skip(why);
  const dir = await tempDir(t, 'imgcast-localboot-test-');
  const file = join(dir, 'localboot.efi');
  await buildLocalBoot(file);
  const image = await readFile(file);
  assert.equal(image.subarray(0, 2).toString('latin1'), 'MZ', 'a PE image');
  const pe = image.readUInt32LE(0x3c);
  assert.equal(image.subarray(pe, pe + 4).toString('latin1'), 'PE\0\0');
  assert.equal(image.readUInt16LE(pe + 4), 0x8664, 'for x86-64');
  assert.equal(image.readUInt16LE(pe + 24 + 68), 10, 'subsystem: EFI application');
  // The memdisk is a plain tar inside the image: the configuration is there as written.
  assert.ok(image.includes(Buffer.from(localBootConfig())), 'the configuration is embedded');
});
