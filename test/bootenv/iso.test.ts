/**
 * `imgcast bootenv iso`: the menu it writes, and a real ISO made by grub-mkrescue from the
 * cached environment, read back with xorriso: BIOS and UEFI boot images, the kernel, the
 * initramfs, and the menu with the server baked in; hybrid (an MBR, so it boots from USB).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { open, readdir, readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { test } from 'node:test';

import { ISO_FILE, checkServerUrl, grubConfig } from '../../src/bootenv/iso.ts';
import { hasCommand, skipUnless, tempDir } from '../helpers/env.ts';
import { bootenvUnavailable, cachedBootenv } from './cached.ts';

const IMGCAST = join(resolve(import.meta.dirname, '../..'), 'bin/imgcast.js');

test('grubConfig: the automatic entry first (default), the maintenance shell second, the server in both', () => {
  const cfg = grubConfig({ server: 'http://198.18.1.1:7740' });
  const entries = [...cfg.matchAll(/menuentry '([^']+)' \{\n\s+linux \/imgcast\/vmlinuz ([^\n]+)/g)];
  assert.deepEqual(
    entries.map((m) => m[1]),
    ['image this workstation (automatic)', 'maintenance shell'],
  );
  assert.match(cfg, /set default=0/);
  for (const m of entries) assert.match(m[2]!, /imgcast\.server=http:\/\/198\.18\.1\.1:7740/);
  assert.doesNotMatch(entries[0]![2]!, /imgcast\.mode/);
  assert.match(entries[1]![2]!, /imgcast\.mode=shell/);
  assert.doesNotMatch(grubConfig({}), /imgcast\.server/);
  assert.equal(checkServerUrl('http://10.0.0.1:7740/'), 'http://10.0.0.1:7740');
  assert.throws(() => checkServerUrl('10.0.0.1:7740 quiet'), /E_BOOTENV|not a URL|http/);
  assert.throws(() => checkServerUrl("http://a' b"), /without spaces or quotes|not a URL/);
});

test('imgcast bootenv iso: a hybrid BIOS + UEFI ISO of the built environment with its menu', async (t) => {
  if (skipUnless(t, bootenvUnavailable())) return;
  for (const c of ['grub-mkrescue', 'xorriso', 'mformat'])
    if (!hasCommand(c)) return void t.skip(`needs ${c} (grub-common, xorriso, mtools)`);
  if (!existsSync('/usr/lib/grub/i386-pc') || !existsSync('/usr/lib/grub/x86_64-efi'))
    return void t.skip('needs grub-pc-bin and grub-efi-amd64-bin');
  const env = await cachedBootenv((line) => t.diagnostic(`bootenv build: ${line}`));
  const dir = await tempDir(t, 'imgcast-iso-');
  // The ISO goes beside the environment: a copy of it here, not into the cache.
  for (const f of await readdir(env.dir)) {
    const r = spawnSync('cp', [join(env.dir, f), dir]);
    assert.equal(r.status, 0);
  }
  const missing = await run([IMGCAST, 'bootenv', 'iso', '--out', join(dir, 'none')]);
  assert.equal(missing.code, 1);
  assert.match(
    missing.err,
    /no built environment in .*none.*imgcast bootenv build first \[E_BOOTENV_MISSING\]/,
  );

  const r = await run([
    IMGCAST,
    'bootenv',
    'iso',
    '--out',
    dir,
    '--server',
    'http://198.18.1.1:7740',
    '--json',
  ]);
  assert.equal(r.code, 0, r.err);
  const res = JSON.parse(r.out) as { file: string; bytes: number };
  assert.equal(res.file, join(dir, ISO_FILE));
  t.diagnostic(`${ISO_FILE}: ${(res.bytes / 1024 / 1024).toFixed(1)} MiB`);
  assert.deepEqual(
    (await readdir(dir)).filter((f) => f.includes('partial')),
    [],
  );

  const report = spawnSync('xorriso', ['-indev', res.file, '-report_el_torito', 'plain'], {
    encoding: 'utf8',
  });
  assert.equal(report.status, 0, report.stderr);
  assert.match(report.stdout, /El Torito boot img :\s+1\s+BIOS/);
  assert.match(report.stdout, /El Torito boot img :\s+2\s+UEFI/);
  const files = spawnSync('xorriso', ['-indev', res.file, '-find', '/imgcast', '--'], {
    encoding: 'utf8',
  });
  assert.match(files.stdout, /'\/imgcast\/vmlinuz'/);
  assert.match(files.stdout, /'\/imgcast\/initrd\.img'/);
  const cfg = spawnSync(
    'xorriso',
    ['-indev', res.file, '-osirrox', 'on', '-extract', '/boot/grub/grub.cfg', join(dir, 'grub.cfg')],
    {
      encoding: 'utf8',
    },
  );
  assert.equal(cfg.status, 0, cfg.stderr);
  assert.equal(
    await readFile(join(dir, 'grub.cfg'), 'utf8'),
    grubConfig({ server: 'http://198.18.1.1:7740' }),
  );
  // Hybrid: an MBR boot signature, so the same file boots from a USB stick.
  const fh = await open(res.file, 'r');
  const mbr = Buffer.alloc(512);
  await fh.read(mbr, 0, 512, 0);
  await fh.close();
  assert.equal(mbr.readUInt16LE(510), 0xaa55);
});

function run(args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((done) => {
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('close', (code) => done({ code, out, err }));
  });
}
