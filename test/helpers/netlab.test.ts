import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { test } from 'node:test';
import { netnsUnavailable, skipUnless } from './env.ts';
import { lossUnavailable, NetLab, removeStaleLabs, shapingUnavailable } from './netlab.ts';

const NODE = join(resolve(import.meta.dirname, '../..'), 'node_modules/.bin/node');

const namespaces = (): string[] =>
  execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter(Boolean);
const linkExists = (name: string): boolean =>
  spawnSync('ip', ['link', 'show', name], { stdio: 'ignore' }).status === 0;

/** Sends `count` datagrams of `size` bytes from host 0 to host 1 on `port` and returns how many arrived. */
async function delivered(lab: NetLab, port: number, count: number, size = 1): Promise<number> {
  const rx = lab.run(1, NODE, [
    '-e',
    `const s=require('dgram').createSocket('udp4');let n=0;s.on('message',()=>n++);` +
      `s.bind(${port},'${lab.addr(1)}',()=>console.log('up'));setTimeout(()=>{console.log('got',n);s.close()},2500)`,
  ]);
  await new Promise((r) => setTimeout(r, 400));
  const tx = await lab.run(0, NODE, [
    '-e',
    `const s=require('dgram').createSocket('udp4');let k=0;` +
      `const b=Buffer.alloc(${size},120);` +
      // Paced, so the receiver's socket buffer never overflows: every missing datagram is the loss rule's.
      `const go=()=>{if(k++>=${count})return s.close();s.send(b,${port},'${lab.addr(1)}',()=>setTimeout(go,1))};go()`,
  ]);
  assert.equal(tx.code, 0, tx.stderr);
  const r = await rx;
  return Number(/got (\d+)/.exec(r.stdout)?.[1] ?? -1);
}

test('lab hosts reach each other; loss on one port drops only that port and is counted', async (t) => {
  if (skipUnless(t, netnsUnavailable() ?? lossUnavailable())) return;
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

test('loss drops IP fragments one by one, before reassembly', async (t) => {
  if (skipUnless(t, netnsUnavailable() ?? lossUnavailable())) return;
  const lab = NetLab.create(1);
  t.after(() => lab.destroy());
  // 4000 bytes at MTU 1500 = 3 fragments. Dropping frames at 20 % loses 1 - 0.8^3 = 48.8 % of the
  // datagrams and counts ~20 % of the 3 x 600 frames; dropping whole datagrams would lose ~20 %.
  const count = 600;
  lab.loss(1, 20);
  const got = await delivered(lab, 41005, count, 4000);
  const d = lab.dropped(1);
  const lostShare = (count - got) / count;
  const frameShare = d.packets / (3 * count);
  t.diagnostic(
    `datagrams lost ${(lostShare * 100).toFixed(1)} %, frames dropped ${(frameShare * 100).toFixed(1)} %`,
  );
  // Bounds at > 4 standard deviations, and far from what the other model gives.
  assert.ok(lostShare > 0.4 && lostShare < 0.58, `lost ${count - got} of ${count} datagrams`);
  assert.ok(frameShare > 0.15 && frameShare < 0.25, `dropped ${d.packets} frames of ${3 * count}`);
  // Every dropped frame kills its datagram; several may hit the same one.
  assert.ok(d.packets >= count - got, `${d.packets} frames dropped but ${count - got} datagrams lost`);
  // The counter sees wire frames (at most the MTU each), not 4028-byte reassembled datagrams.
  assert.ok(d.bytes <= d.packets * 1500, `${d.bytes} bytes in ${d.packets} dropped frames`);
  lab.resetDropped(1);
  assert.equal(lab.dropped(1).packets, 0);
});

/** The ruleset of host i, as `nft list ruleset` prints it there. */
const ruleset = (lab: NetLab, host: number): string => lab.runSync(host, 'nft', ['list', 'ruleset']);

test('datagramLoss drops whole datagrams after reassembly, at the input hook, and counts datagrams', async (t) => {
  if (skipUnless(t, netnsUnavailable() ?? lossUnavailable())) return;
  const lab = NetLab.create(1);
  t.after(() => lab.destroy());
  // 4000 bytes = 3 fragments at MTU 1500, but after reassembly one packet of 4028 IP bytes:
  // 20 % of the datagrams are lost (not the 48.8 % that 20 % of the frames would cost).
  const count = 600;
  lab.datagramLoss(1, 20);
  assert.match(
    ruleset(lab, 1),
    /hook input priority filter;[^]*ip protocol udp numgen random mod 1000000 < 200000/,
  );
  const got = await delivered(lab, 41011, count, 4000);
  const d = lab.dropped(1, 'datagram');
  t.diagnostic(`datagrams lost ${count - got} of ${count}, counter ${d.packets} packets ${d.bytes} bytes`);
  assert.ok(got > count * 0.68 && got < count * 0.92, `lost ${count - got} of ${count} datagrams`);
  // Exactly one counted packet per lost datagram, each the reassembled datagram (20 + 8 + 4000 bytes).
  assert.equal(d.packets, count - got);
  assert.equal(d.bytes, d.packets * 4028);
  assert.deepEqual(lab.dropped(1, 'frame'), { packets: 0, bytes: 0 });
  // Replaced, not added: a second call leaves one rule, at the new rate.
  lab.datagramLoss(1, 100);
  assert.equal(ruleset(lab, 1).match(/ drop$/gm)?.length, 1, ruleset(lab, 1));
  assert.equal(await delivered(lab, 41013, 20), 0);
  assert.equal(lab.dropped(1, 'datagram').packets, 20, 'the new rule counts from zero');
  lab.datagramLoss(1, 0);
  assert.doesNotMatch(ruleset(lab, 1), /imgcastdgloss/);
  assert.equal(await delivered(lab, 41015, 20), 20);
});

test('burstLoss drops k consecutive datagrams of every n; loss kinds have their own rules and counters', async (t) => {
  if (skipUnless(t, netnsUnavailable() ?? lossUnavailable())) return;
  const lab = NetLab.create(1);
  t.after(() => lab.destroy());
  lab.burstLoss(1, 5, 100);
  assert.match(ruleset(lab, 1), /hook input priority filter;[^]*ip protocol udp numgen inc mod 100 < 5/);
  // Deterministic: datagrams 0-4 and 100-104 of 200.
  assert.equal(await delivered(lab, 41021, 200, 3000), 190);
  assert.equal(lab.dropped(1, 'burst').packets, 10);
  lab.burstLoss(1, 1, 10);
  assert.doesNotMatch(ruleset(lab, 1), /mod 100 < 5/, 'the earlier burst rule is still there');
  assert.equal(await delivered(lab, 41023, 50), 45);
  assert.equal(lab.dropped(1, 'burst').packets, 5);
  // A frame-loss rule beside it: both in force, dropped() without a kind adds them up.
  lab.frameLoss(1, 100, { port: 41025 });
  assert.match(ruleset(lab, 1), /hook prerouting priority -450;[^]*udp dport 41025/);
  assert.equal(await delivered(lab, 41025, 20), 0);
  assert.equal(lab.dropped(1, 'frame').packets, 20);
  assert.equal(lab.dropped(1).packets, 25);
  lab.resetDropped(1);
  assert.equal(lab.dropped(1).packets, 0);
  assert.throws(() => lab.burstLoss(1, 5, 4), RangeError);
  lab.burstLoss(1, 0, 100);
  lab.frameLoss(1, 0);
  assert.doesNotMatch(ruleset(lab, 1), /table/);
});

test('rate and portRate put a tbf where netlab.sh does, replace it, count through it and go with destroy', async (t) => {
  if (skipUnless(t, netnsUnavailable() ?? shapingUnavailable())) return;
  const lab = NetLab.create(1);
  t.after(() => lab.destroy());
  const hostQdisc = (): string => lab.runSync(0, 'tc', ['qdisc', 'show', 'dev', 'eth0']);
  const portQdisc = (): string =>
    execFileSync('tc', ['qdisc', 'show', 'dev', lab.port(1)], { encoding: 'utf8' });
  lab.rate(0, '400mbit');
  assert.match(hostQdisc(), /qdisc tbf \S+ root .*rate 400Mbit burst \S+ lat 20ms/);
  lab.rate(0, '100mbit');
  assert.equal(hostQdisc().match(/qdisc tbf/g)?.length, 1, hostQdisc());
  assert.match(hostQdisc(), /rate 100Mbit/);
  lab.portRate(1, '100mbit');
  assert.match(portQdisc(), /qdisc tbf \S+ root .*rate 100Mbit burst \S+ lat 20ms/);
  assert.throws(() => lab.rate(0, '100 mbit'), RangeError);
  // Traffic from host 0 to host 1 leaves through host 0's eth0 and the bridge's port to host 1.
  assert.equal(await delivered(lab, 41031, 100, 1000), 100);
  const out = lab.shaped(0);
  const port = lab.shaped(1, 'port');
  t.diagnostic(`host 0 tbf ${JSON.stringify(out)}, port 1 tbf ${JSON.stringify(port)}`);
  assert.ok(out.packets >= 100 && out.bytes >= 100 * 1000, JSON.stringify(out));
  assert.ok(port.packets >= 100 && port.bytes >= 100 * 1000, JSON.stringify(port));
  lab.rate(0, 0);
  lab.portRate(1, 0);
  assert.doesNotMatch(hostQdisc(), /tbf/);
  assert.doesNotMatch(portQdisc(), /tbf/);
  assert.deepEqual(lab.shaped(0), { bytes: 0, packets: 0, dropped: 0, overlimits: 0 });
  // Set again, then destroy: nothing of the lab is left to hold a qdisc.
  lab.rate(0, '400mbit');
  lab.portRate(1, '100mbit');
  lab.destroy();
  assert.ok(!namespaces().includes(lab.ns(0)));
  assert.ok(!linkExists(lab.port(1)));
  assert.doesNotMatch(execFileSync('tc', ['qdisc', 'show'], { encoding: 'utf8' }), new RegExp(lab.id));
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
