/**
 * dnsmasq's generated configuration (src/server/pxe.ts), read line by line and checked by
 * dnsmasq itself (`dnsmasq --test`), and the refusals of `startPxe` before anything runs. The
 * real answers to a real firmware are in test/boot/netboot.test.ts.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { tmpdir } from 'node:os';

import {
  CHAIN_FILE,
  chainScript,
  networkOf,
  pickInterface,
  pxeConfig,
  radvdConfig,
  startPxe,
  type PxeConfigInput,
} from '../../src/server/pxe.ts';
import { tempDir } from '../helpers/env.ts';

const base: PxeConfigInput = {
  mode: 'proxy',
  interface: 'br-lab',
  address: '198.18.4.1',
  netmask: '255.255.255.0',
  httpPort: 7740,
  tftpRoot: '/tmp/x/tftp',
  pidFile: '/tmp/x/dnsmasq.pid',
  leaseFile: '/tmp/x/dnsmasq.leases',
  efiFile: 'snponly.efi',
};

const lines = (text: string) => text.split('\n').filter((l) => l && !l.startsWith('#'));
const log = { info: () => {}, warn: () => {} };

test('networkOf: the network address under the netmask', () => {
  assert.equal(networkOf('198.18.4.1', '255.255.255.0'), '198.18.4.0');
  assert.equal(networkOf('10.200.37.250', '255.255.240.0'), '10.200.32.0');
  assert.equal(networkOf('192.168.1.77', '255.255.255.255'), '192.168.1.77');
  assert.equal(networkOf('255.255.255.1', '255.0.0.0'), '255.0.0.0');
});

test('proxy mode: no DNS, no address handed out, iPXE to PXE firmware by TFTP, the chain script to iPXE', () => {
  const l = lines(pxeConfig(base));
  for (const want of [
    'port=0',
    'interface=br-lab',
    'bind-interfaces',
    'pid-file=/tmp/x/dnsmasq.pid',
    'dhcp-leasefile=/tmp/x/dnsmasq.leases',
    'enable-tftp',
    'tftp-root=/tmp/x/tftp',
    'dhcp-userclass=set:ipxe,iPXE',
    'dhcp-range=198.18.4.0,proxy,255.255.255.0',
    'pxe-service=tag:!ipxe,x86PC,"imgcast: loading iPXE",undionly.kpxe',
    'pxe-service=tag:!ipxe,x86-64_EFI,"imgcast: loading iPXE",snponly.efi',
    'pxe-service=tag:!ipxe,BC_EFI,"imgcast: loading iPXE",snponly.efi',
    `pxe-service=tag:ipxe,x86PC,"imgcast",${CHAIN_FILE}`,
    `pxe-service=tag:ipxe,x86-64_EFI,"imgcast",${CHAIN_FILE}`,
  ])
    assert.ok(l.includes(want), `missing ${want} in\n${l.join('\n')}`);
  assert.ok(!l.some((x) => x.startsWith('dhcp-boot=')), 'proxy mode boots through pxe-service only');
  assert.equal(l.filter((x) => x.startsWith('dhcp-range=')).length, 1);
  assert.equal(chainScript('198.18.4.1', 7740), '#!ipxe\nchain http://198.18.4.1:7740/boot/boot.ipxe\n');
});

test('dhcp mode: the range handed out, and one boot file per client kind (mutually exclusive tags)', () => {
  const l = lines(
    pxeConfig({ ...base, mode: 'dhcp', range: { start: '198.18.4.100', end: '198.18.4.199' } }),
  );
  assert.ok(l.includes('dhcp-range=198.18.4.100,198.18.4.199,255.255.255.0,1h'));
  const boots = l.filter((x) => x.startsWith('dhcp-boot='));
  assert.deepEqual(boots, [
    'dhcp-boot=tag:ipxe,http://198.18.4.1:7740/boot/boot.ipxe',
    'dhcp-boot=tag:!ipxe,tag:efi64,snponly.efi',
    'dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe',
  ]);
  assert.ok(l.includes('dhcp-match=set:efi64,option:client-arch,7'));
  assert.ok(l.includes('dhcp-match=set:efi64,option:client-arch,9'));
  assert.ok(!l.some((x) => x.includes(',proxy')));
  assert.ok(l.includes('no-ping'), 'the leases persist, so no ping before each offer');
  assert.throws(() => pxeConfig({ ...base, mode: 'dhcp' }), { code: 'E_PXE_RANGE' });
});

test('dnsmasq itself accepts both configurations (dnsmasq --test)', (t) => {
  const dnsmasq = ['/usr/sbin/dnsmasq', '/usr/bin/dnsmasq'].find((p) => existsSync(p));
  if (!dnsmasq) return t.skip('dnsmasq is not installed (apt-get install dnsmasq-base)');
  const dir = join(tmpdir(), `imgcast-pxe-conf-${process.pid}`);
  t.after(() => execFileSync('rm', ['-rf', dir]));
  execFileSync('mkdir', ['-p', dir]);
  for (const c of [
    base,
    { ...base, mode: 'dhcp' as const, range: { start: '198.18.4.100', end: '198.18.4.199' } },
  ]) {
    const file = join(dir, `${c.mode}.conf`);
    writeFileSync(file, pxeConfig({ ...c, tftpRoot: dir }));
    const r: { status: number | null; stderr: string } = spawnSync(
      dnsmasq,
      ['--test', `--conf-file=${file}`],
      {
        encoding: 'utf8',
      },
    );
    assert.equal(r.status, 0, `${c.mode}: ${r.stderr}`);
    assert.match(r.stderr, /syntax check OK/, `${c.mode}: ${r.stderr}`);
  }
});

test('radvdConfig: an advertisement that configures nothing (no prefix, not a default router, no M/O flags), and radvd reads it', (t) => {
  const text = radvdConfig('br-lab');
  assert.match(text, /^interface br-lab \{$/m);
  assert.match(text, /^\s*AdvSendAdvert on;$/m);
  assert.match(text, /^\s*AdvDefaultLifetime 0;$/m);
  assert.match(text, /^\s*AdvManagedFlag off;$/m);
  assert.match(text, /^\s*AdvOtherConfigFlag off;$/m);
  assert.doesNotMatch(text, /prefix|route |RDNSS|DNSSL/i, 'no prefix, route or DNS option');
  const radvd = ['/usr/sbin/radvd', '/sbin/radvd'].find((p) => existsSync(p));
  if (!radvd) return t.skip('radvd is not installed (apt-get install radvd)');
  const dir = join(tmpdir(), `imgcast-radvd-conf-${process.pid}`);
  t.after(() => execFileSync('rm', ['-rf', dir]));
  execFileSync('mkdir', ['-p', dir]);
  writeFileSync(join(dir, 'radvd.conf'), text);
  const r = spawnSync(radvd, ['--configtest', '-C', join(dir, 'radvd.conf')], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /syntax ok/);
});

test('pickInterface: a name that is no interface, or one without IPv4, is refused with a code', () => {
  assert.throws(
    () => pickInterface('imgcast-none0'),
    (err: Error & { code?: string }) => {
      assert.equal(err.code, 'E_PXE_INTERFACE');
      assert.match(err.message, /no interface imgcast-none0 on this machine \(.*lo.*\)/);
      return true;
    },
  );
  assert.throws(() => pickInterface('lo'), { code: 'E_PXE_INTERFACE', message: /lo has no IPv4 address/ });
});

test('startPxe refuses before it runs anything: no dnsmasq, or no iPXE images; it leaves no directory behind', async (t) => {
  const before = readdirSync(tmpdir()).filter((n) => n.startsWith('imgcast-pxe-')).length;
  await assert.rejects(
    startPxe({ mode: 'proxy', interface: 'lo', httpPort: 1, log, dnsmasq: '/nonexistent/dnsmasq' }),
    { code: 'E_PXE_NO_DNSMASQ', message: /apt-get install dnsmasq-base/ },
  );
  const empty = await tempDir(t, 'imgcast-noipxe-');
  const dnsmasq = ['/usr/sbin/dnsmasq', '/usr/bin/dnsmasq'].find((p) => existsSync(p));
  if (dnsmasq) {
    await assert.rejects(startPxe({ mode: 'proxy', httpPort: 1, log, dnsmasq, ipxeDir: empty }), {
      code: 'E_PXE_NO_IPXE',
      message: /apt-get install ipxe/,
    });
  }
  assert.equal(readdirSync(tmpdir()).filter((n) => n.startsWith('imgcast-pxe-')).length, before);
});
