/**
 * The boot helper itself: how it reads a console, and that a boot that cannot succeed fails
 * fast with the firmware's own words and leaves no QEMU behind (a blank disk, a few seconds).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { open, readFile, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { skipUnless, tempDir } from '../helpers/env.ts';
import { BootError, bootToLogin, failedUnitLines, plainConsole, qemuUnavailable } from './qemu.ts';

test('plainConsole removes colours, cursor moves and carriage returns; failedUnitLines finds failed units', () => {
  const raw =
    '\x1b[2J\x1b[01;01H\x1b[=3hBdsDxe: starting Boot0002\r\n' +
    '[\x1b[0;32m  OK  \x1b[0m] Started \x1b[0;1;39mssh.service\x1b[0m - OpenBSD Secure Shell server.\r\n' +
    '[\x1b[0;1;31mFAILED\x1b[0m] Failed to start \x1b[0;1;39malways-fails.service\x1b[0m - Always fails.\r\n' +
    "See 'systemctl status always-fails.service' for details.\r\n" +
    '\r\nDebian GNU/Linux 12 lab1-01 ttyS0\r\n\r\nlab1-01 login: ';
  const plain = plainConsole(raw);
  assert.equal(
    plain,
    'BdsDxe: starting Boot0002\n' +
      '[  OK  ] Started ssh.service - OpenBSD Secure Shell server.\n' +
      '[FAILED] Failed to start always-fails.service - Always fails.\n' +
      "See 'systemctl status always-fails.service' for details.\n" +
      '\nDebian GNU/Linux 12 lab1-01 ttyS0\n\nlab1-01 login: ',
  );
  assert.deepEqual(failedUnitLines(plain), ['[FAILED] Failed to start always-fails.service - Always fails.']);
  assert.deepEqual(failedUnitLines('[  OK  ] Reached target multi-user.target - Multi-User System.\n'), []);
});

for (const [firmware, words] of [
  ['bios', /SeaBIOS found no bootable device/],
  ['uefi', /UEFI shell|nothing to boot/],
] as const) {
  test(`a blank disk under ${firmware}: the boot fails within a minute with the firmware's words, the console kept, no QEMU left`, async (t) => {
    if (skipUnless(t, qemuUnavailable())) return;
    const dir = await tempDir(t, 'imgcast-boot-blank-');
    const disk = join(dir, 'blank.img');
    await (await open(disk, 'w')).close();
    await truncate(disk, 64 * 1024 * 1024);
    const logFile = join(dir, 'console.log');
    const started = Date.now();
    const err = await bootToLogin({ disk, firmware, timeoutMs: 120_000, logFile, signal: t.signal }).then(
      () => assert.fail('a blank disk booted to a login prompt'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof BootError, String(err));
    assert.match(err.message, words);
    assert.ok(Date.now() - started < 60_000, `took ${Date.now() - started} ms: ${err.message}`);
    // SeaBIOS says it on its debug port (in the message); OVMF on the console.
    if (firmware === 'uefi') {
      assert.ok(err.log.length > 0, 'the console output is kept on the error');
      assert.equal(await readFile(logFile, 'utf8').then((l) => l.length > 0), true, 'and in the log file');
    }
    // Looked up, never killed, by the disk path only this test uses.
    const left = spawnSync('pgrep', ['-f', disk], { encoding: 'utf8' }).stdout.trim();
    assert.equal(left, '', `QEMU still runs: ${left}`);
  });
}
