import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { test } from 'node:test';
import { netnsUnavailable, skipUnless } from './env.ts';
import { NetLab, removeStaleLabs } from './netlab.ts';

const NODE = join(resolve(import.meta.dirname, '../..'), 'node_modules/.bin/node');

const namespaces = (): string[] =>
  execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter(Boolean);
const linkExists = (name: string): boolean =>
  spawnSync('ip', ['link', 'show', name], { stdio: 'ignore' }).status === 0;

/** Sends `count` datagrams from host 0 to host 1 on `port` and returns how many arrived. */
async function delivered(lab: NetLab, port: number, count: number): Promise<number> {
  const rx = lab.run(1, NODE, [
    '-e',
    `const s=require('dgram').createSocket('udp4');let n=0;s.on('message',()=>n++);` +
      `s.bind(${port},'${lab.addr(1)}',()=>console.log('up'));setTimeout(()=>{console.log('got',n);s.close()},1500)`,
  ]);
  await new Promise((r) => setTimeout(r, 400));
  const tx = await lab.run(0, NODE, [
    '-e',
    `const s=require('dgram').createSocket('udp4');let k=0;` +
      `const go=()=>{if(k++>=${count})return s.close();s.send('x',${port},'${lab.addr(1)}',go)};go()`,
  ]);
  assert.equal(tx.code, 0, tx.stderr);
  const r = await rx;
  return Number(/got (\d+)/.exec(r.stdout)?.[1] ?? -1);
}

test('lab hosts reach each other; loss on one port drops only that port and is counted', async (t) => {
  if (skipUnless(t, netnsUnavailable())) return;
  const lab = NetLab.create(1, { mtu: 1400 });
  t.after(() => lab.destroy());
  assert.match(lab.id, /^ic[0-9a-f]{4}$/);
  assert.match(lab.runSync(1, 'ip', ['link', 'show', 'eth0']), /mtu 1400/);
  assert.match(lab.runSync(1, 'ip', ['route']), /224\.0\.0\.0\/4 dev eth0/);
  lab.loss(1, 100, { port: 41001 });
  assert.equal(await delivered(lab, 41001, 20), 0);
  assert.equal(lab.dropped(1).packets, 20);
  assert.equal(await delivered(lab, 41003, 20), 20);
  lab.loss(1, 0);
  assert.equal(lab.dropped(1).packets, 0);
});

test('destroy removes everything; a new lab sweeps labs of dead creators but not live ones', async (t) => {
  if (skipUnless(t, netnsUnavailable())) return;
  const live = NetLab.create(1);
  t.after(() => live.destroy());
  // A crashed run: namespace and bridge in our naming scheme, marker naming a dead pid.
  const dead = spawnSync('true').pid ?? 999_999;
  const stale = 'icxyzw';
  const staleId = 'ic0dea';
  mkdirSync('/run/imgcast-netlab', { recursive: true });
  writeFileSync(`/run/imgcast-netlab/${staleId}`, `${dead}\n`);
  execFileSync('ip', ['netns', 'add', `${staleId}n0`]);
  execFileSync('ip', ['link', 'add', `${staleId}br`, 'type', 'bridge']);
  // Outside the scheme (no 4-hex id): must never be touched.
  execFileSync('ip', ['netns', 'add', `${stale}n0`]);
  t.after(() => spawnSync('ip', ['netns', 'del', `${stale}n0`]));
  t.after(() => spawnSync('ip', ['netns', 'del', `${staleId}n0`]));
  t.after(() => spawnSync('ip', ['link', 'del', `${staleId}br`]));

  const removed = removeStaleLabs();
  assert.ok(removed.includes(staleId), `stale lab not removed: ${removed.join(',')}`);
  assert.ok(!removed.includes(live.id), 'a live lab was removed');
  assert.ok(!namespaces().includes(`${staleId}n0`));
  assert.ok(!linkExists(`${staleId}br`));
  assert.ok(namespaces().includes(`${stale}n0`), 'a namespace outside the scheme was removed');
  assert.ok(namespaces().includes(live.ns(1)));

  live.destroy();
  assert.ok(!namespaces().some((n) => n.startsWith(`${live.id}n`)));
  assert.ok(!linkExists(live.bridge));
});
