/**
 * readInventory on this very machine: every fact is checked against the kernel's or the os
 * module's own account of it, so the test holds on any machine it runs on.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { hostname, networkInterfaces, totalmem } from 'node:os';
import { basename, join } from 'node:path';
import { test } from 'node:test';
import { readInventory } from '../../src/client/inventory.ts';
import { loopUnavailable, skipUnless, tempDir } from '../helpers/env.ts';
import { trackedLoops } from '../disk/loops.ts';

const ownIPv4 = () =>
  Object.values(networkInterfaces())
    .flatMap((l) => l ?? [])
    .filter((a) => a.family === 'IPv4' && !a.internal)
    .map((a) => a.address);

test('host facts match the os module and the kernel', async () => {
  const inv = await readInventory();
  assert.equal(inv.hostname, hostname());
  assert.equal(inv.memoryBytes, totalmem());
  assert.ok(inv.memoryBytes > 0);
  assert.ok(Number.isInteger(inv.cpu.cores) && inv.cpu.cores >= 1);
  assert.equal(typeof inv.cpu.model, 'string');
  assert.deepEqual(inv.addresses, ownIPv4());
  assert.ok(!inv.addresses.some((a) => a.startsWith('127.')));
  if (inv.mac !== undefined) {
    assert.match(inv.mac, /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
    const owner = readdirSync('/sys/class/net').find(
      (n) => readFileSync(`/sys/class/net/${n}/address`, 'utf8').trim() === inv.mac,
    );
    assert.ok(owner, `no interface has ${inv.mac}`);
    assert.equal(
      readFileSync(`/sys/class/net/${owner}/type`, 'utf8').trim(),
      '1',
      `${owner} is not Ethernet`,
    );
  }
  for (const [key, file] of [
    ['vendor', 'sys_vendor'],
    ['product', 'product_name'],
    ['serial', 'product_serial'],
    ['uuid', 'product_uuid'],
  ] as const) {
    const value = inv.dmi[key];
    let raw: string | undefined;
    try {
      raw = readFileSync(`/sys/class/dmi/id/${file}`, 'utf8').trim();
    } catch {
      raw = undefined;
    }
    if (raw === undefined || raw === '') assert.equal(value, undefined, `dmi.${key} without ${file}`);
    else if (value !== undefined) assert.equal(value, key === 'uuid' ? raw.toLowerCase() : raw);
  }
});

test('with an interface address, the MAC is that interface', async (t) => {
  const entry = Object.entries(networkInterfaces()).find(([, l]) =>
    (l ?? []).some((a) => a.family === 'IPv4' && !a.internal),
  );
  if (!entry) return t.skip('no IPv4 interface outside loopback');
  const [name, list] = entry;
  const address = list!.find((a) => a.family === 'IPv4')!.address;
  const inv = await readInventory({ interface: address });
  assert.equal(inv.mac, readFileSync(`/sys/class/net/${name}/address`, 'utf8').trim().toLowerCase());
});

test('disks are the whole disks of /sys/block with the sizes the kernel gives; no loop, ram, zram, dm, md, sr or empty device', async () => {
  const inv = await readInventory();
  const size = (name: string) => Number(readFileSync(`/sys/block/${name}/size`, 'utf8').trim()) * 512;
  for (const d of inv.disks) {
    const name = basename(d.path);
    assert.equal(d.path, `/dev/${name}`);
    assert.ok(existsSync(`/sys/block/${name}`), d.path);
    assert.ok(!/^(loop|ram|zram|dm-|md|sr)/.test(name), `${d.path} is not a disk`);
    assert.ok(d.sizeBytes > 0);
    assert.equal(d.sizeBytes, size(name));
    const removable = readFileSync(`/sys/block/${name}/removable`, 'utf8').trim() === '1';
    if (removable) assert.equal(d.removable, true);
    const rot = readFileSync(`/sys/block/${name}/queue/rotational`, 'utf8').trim();
    assert.equal(d.rotational, rot === '1');
    for (const v of [d.model, d.serial]) if (v !== undefined) assert.ok(v.trim() !== '' && v === v.trim());
  }
  for (const name of readdirSync('/sys/block')) {
    const listed = inv.disks.some((d) => d.path === `/dev/${name}`);
    if (size(name) === 0) assert.ok(!listed, `empty ${name} listed`);
    if (/^(loop|ram|zram|dm-|md|sr)\d/.test(name)) assert.ok(!listed, `${name} listed`);
  }
  // The disk this machine runs from (when it runs from one) is among them.
  const root = execFileSync('findmnt', ['-nvo', 'SOURCE', '/'], { encoding: 'utf8' }).trim();
  if (root.startsWith('/dev/')) {
    const disks = execFileSync('lsblk', ['-s', '-nro', 'NAME,TYPE', root], { encoding: 'utf8' })
      .split('\n')
      .filter((l) => l.endsWith(' disk'))
      .map((l) => `/dev/${l.split(' ')[0]}`);
    for (const d of disks)
      assert.ok(
        inv.disks.some((x) => x.path === d),
        `${d} (behind /) missing`,
      );
  }
});

test('a loop device attached for the test is not a disk of the workstation', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  const dir = await tempDir(t);
  const file = join(dir, 'disk.img');
  await writeFile(file, Buffer.alloc(8 * 1024 * 1024));
  const loop = await trackedLoops(t).attach(file);
  assert.ok(existsSync(`/sys/block/${basename(loop)}`), `${loop} is not in /sys/block`);
  assert.ok(Number(readFileSync(`/sys/block/${basename(loop)}/size`, 'utf8')) > 0);
  const inv = await readInventory();
  assert.ok(!inv.disks.some((d) => d.path === loop), `${loop} listed as a disk`);
});
