/**
 * The LAN helper itself, without VMs: its namespace, bridge and taps exist while it lives and
 * are gone after destroy(), and a LAN left by a killed run is removed by the next create().
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';

import { hasCommand, isRoot, skipUnless } from '../helpers/env.ts';
import { Lan } from './lan.ts';

const namespaces = () =>
  (spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout ?? '')
    .split('\n')
    .map((l) => l.split(' ')[0]);

test('Lan: a namespace with a bridge at 198.18.N.1 and taps on it, commands run inside; destroy removes all of it; a dead run’s LAN goes at the next create', async (t) => {
  if (skipUnless(t, !isRoot() ? 'needs root' : !hasCommand('ip') ? 'needs iproute2' : undefined)) return;
  // A LAN whose creator is dead (a marker with a pid that cannot exist): the next create removes it.
  const stale = 'iclanfff0';
  spawnSync('ip', ['netns', 'add', stale]);
  mkdirSync('/run/imgcast-lan', { recursive: true });
  writeFileSync(`/run/imgcast-lan/${stale}`, '999999999\n');

  const lan = Lan.create({ subnet: 7 });
  t.after(() => lan.destroy());
  assert.ok(!namespaces().includes(stale), 'the stale LAN is gone');
  assert.ok(namespaces().includes(lan.ns));
  const tap = lan.addTap();
  const r = await new Promise<string>((res) => {
    let out = '';
    const c = lan.exec('ip', ['-br', 'addr']);
    c.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    c.on('close', () => res(out));
  });
  assert.match(r, /^br0\s+\S+\s+198\.18\.7\.1\/24/m);
  assert.match(r, new RegExp(`^${tap}@?\\S*\\s`, 'm'));
  const link = spawnSync('ip', ['-n', lan.ns, '-d', 'link', 'show', tap], { encoding: 'utf8' }).stdout;
  assert.match(link, /master br0/);
  assert.equal(lan.address(50), '198.18.7.50');
  lan.destroy();
  assert.ok(!namespaces().includes(lan.ns), 'destroy removed the namespace');
});
