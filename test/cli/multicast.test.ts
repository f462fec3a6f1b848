/**
 * `imgcast send` and `img receive` as an administrator runs them: separate
 * processes, real UDP multicast on loopback (so no root is needed), an image made
 * by `img make`, and restored folders compared with the source.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { networkInterfaces } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { tempDir } from '../helpers/env.ts';

const IMG = new URL('../../src/cli/img.ts', import.meta.url).pathname;
const IMGCAST = new URL('../../src/cli/imgcast.ts', import.meta.url).pathname;

function run(script: string, args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('close', (code) => resolve({ code, out, err }));
  });
}

async function listTree(root: string, rel = ''): Promise<string[]> {
  const out: string[] = [];
  for (const d of await readdir(join(root, rel), { withFileTypes: true })) {
    const p = rel ? `${rel}/${d.name}` : d.name;
    out.push(p);
    if (d.isDirectory()) out.push(...(await listTree(root, p)));
  }
  return out.sort();
}

test('imgcast send multicasts an image to two img receive processes, file set 2 applied', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(join(src, 'etc'), { recursive: true });
  await mkdir(join(src, 'home/guest'), { recursive: true });
  await writeFile(join(src, 'etc/hostname'), 'reference\n');
  await writeFile(join(src, 'big.bin'), randomBytes(9 * 1024 * 1024));
  await writeFile(join(src, 'home/guest/private.bin'), randomBytes(1024 * 1024));
  const image = join(dir, 'lab.imgc');
  let r = spawnSync(process.execPath, [IMG, 'make', src, image, '--level', 'speed'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  r = spawnSync(process.execPath, [IMG, 'fileset', 'exclude', image, '2', 'home/guest'], {
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, r.stderr);

  const port = 20000 + 2 * Math.floor(Math.random() * 6000);
  const group = `239.255.${1 + Math.floor(Math.random() * 250)}.${1 + Math.floor(Math.random() * 250)}`;
  const sender = run(IMGCAST, [
    'send',
    image,
    '--fileset',
    '2',
    '--clients',
    '2',
    '--interface',
    '127.0.0.1',
    '--group',
    group,
    '--port',
    String(port),
    '--key',
    'lab-secret',
    '--json',
  ]);
  // The sender needs a moment to listen; receivers retry nothing, so wait for the port.
  await new Promise((res) => setTimeout(res, 1500));
  const receivers = ['ws1', 'ws2'].map((name) =>
    run(IMG, [
      'receive',
      '--from',
      `127.0.0.1:${port}`,
      '--interface',
      '127.0.0.1',
      '--to',
      join(dir, name),
      '--name',
      name,
      '--key',
      'lab-secret',
      '--json',
    ]),
  );
  const [s, ...rs] = await Promise.all([sender, ...receivers]);
  assert.equal(s.code, 0, `sender: ${s.err}`);
  const result = JSON.parse(s.out);
  assert.equal(result.ok, true);
  assert.deepEqual(result.receivers.map((x: { name: string; state: string }) => [x.name, x.state]).sort(), [
    ['ws1', 'ok'],
    ['ws2', 'ok'],
  ]);
  for (const [i, rr] of rs.entries()) {
    assert.equal(rr.code, 0, `receiver ${i + 1}: ${rr.err}`);
    const target = join(dir, `ws${i + 1}`);
    // home/guest is excluded from file set 2; its parent folder stays.
    assert.deepEqual(await listTree(target), ['big.bin', 'etc', 'etc/hostname', 'home']);
    assert.deepEqual(await readFile(join(target, 'big.bin')), await readFile(join(src, 'big.bin')));
    assert.equal(await readFile(join(target, 'etc/hostname'), 'utf8'), 'reference\n');
  }
});

test('send and receive say "1 chunk" and "1 receiver" of a one-chunk image sent to one workstation', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(src);
  await writeFile(join(src, 'a.txt'), 'x\n');
  const image = join(dir, 'one.imgc');
  const r = spawnSync(process.execPath, [IMG, 'make', src, image], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const port = 20000 + 2 * Math.floor(Math.random() * 6000);
  const group = `239.255.${1 + Math.floor(Math.random() * 250)}.${1 + Math.floor(Math.random() * 250)}`;
  const net = ['--interface', '127.0.0.1'];
  const sender = run(IMGCAST, ['send', image, ...net, '--group', group, '--port', String(port)]);
  await new Promise((res) => setTimeout(res, 1500));
  const receiver = run(IMG, ['receive', '--from', `127.0.0.1:${port}`, ...net, '--to', join(dir, 'ws')]);
  const [s, rr] = await Promise.all([sender, receiver]);
  assert.equal(s.code, 0, s.err);
  assert.equal(rr.code, 0, rr.err);
  assert.match(s.err, /^waiting: 0 of 1 receiver joined;/m);
  assert.match(s.out, /^done: 1 chunk, /);
  assert.match(rr.out, /^received 1\/1 chunks /);
});

test('imgcast send rejects bad arguments before it listens', async () => {
  for (const args of [
    ['send', 'x.imgc', '--clients', '0'],
    ['send', 'x.imgc', '--port', '70000'],
    ['send', 'x.imgc', '--fileset', '11'],
    ['send', 'x.imgc', '--datagram-size', '1400'],
    ['send', 'x.imgc', '--datagram-size', '65000'],
    ['send', 'x.imgc', '--send-threads', '-1'],
    ['send', 'x.imgc', '--send-threads', '1.5'],
    ['send', 'x.imgc', '--send-threads', '9'],
  ]) {
    const r = await run(IMGCAST, args);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.err}`);
  }
  const r = await run(IMGCAST, ['send', '/nonexistent/lab.imgc', '--clients', '1', '--wait', '1']);
  assert.equal(r.code, 1);
  assert.match(r.err, /nonexistent\/lab\.imgc/);
});

test('imgcast send --live refuses what it cannot capture before it listens, and options that need --live without it', async () => {
  for (const [args, why] of [
    [['send', 'x.imgc', '--level', 'size'], /--level applies to --live only/],
    [['send', 'x.imgc', '--live-memory', '512'], /--live-memory applies to --live only/],
    [['send', '/dev/null', '--live', '--raw'], /--live and --raw exclude each other/],
    [['send', '/tmp', '--live', '--level', 'fast'], /--level/],
    [['send', '/tmp', '--live', '--live-memory', '2'], /at least 4194304 bytes/],
  ] as const) {
    const r = await run(IMGCAST, [...args]);
    assert.equal(r.code, 2, `imgcast ${args.join(' ')}: exit ${r.code}: ${r.err}`);
    assert.match(r.err, why);
  }
  const r = await run(IMGCAST, ['send', '--live', '/nonexistent/disk', '--clients', '1', '--wait', '1']);
  assert.equal(r.code, 1);
  assert.match(r.err, /cannot capture \/nonexistent\/disk: .*\[E_DISK_SOURCE\]/);
});

test('send and receive refuse bad addresses, TTLs and waits as usage errors (exit 2) naming the option', async () => {
  // The image does not exist: a value that passed would fail later, with exit 1.
  const image = '/nonexistent/lab.imgc';
  const own = new Set(
    Object.values(networkInterfaces())
      .flatMap((l) => l ?? [])
      .map((a) => a.address),
  );
  const notOwn = ['203.0.113.77', '198.51.100.77', '192.0.2.77'].find((a) => !own.has(a))!;
  for (const [args, option] of [
    [['send', image, '--group', '10.0.0.1'], '--group'],
    [['send', image, '--group', '224.0.0.1'], '--group'],
    [['send', image, '--group', '224.0.0.251'], '--group'],
    [['send', image, '--group', '239.255.42'], '--group'],
    [['send', image, '--group', '239.256.0.1'], '--group'],
    [['send', image, '--ttl', '0'], '--ttl'],
    [['send', image, '--ttl', '256'], '--ttl'],
    [['send', image, '--ttl', '1.5'], '--ttl'],
    [['send', image, '--interface', 'eth0'], '--interface'],
    [['send', image, '--interface', notOwn], '--interface'],
    [['send', image, '--wait', '-1'], '--wait'],
    [['send', image, '--wait', 'soon'], '--wait'],
    [['send', image, '--clients', '2.5'], '--clients'],
  ] as const) {
    const r = await run(IMGCAST, [...args]);
    assert.equal(r.code, 2, `imgcast ${args.join(' ')}: exit ${r.code}: ${r.err}`);
    assert.ok(r.err.includes(option), `imgcast ${args.join(' ')} names ${option}: ${r.err}`);
  }
  for (const [args, option] of [
    [['receive', '--from', 'host:abc', '--to', '/nonexistent/out'], '--from'],
    [['receive', '--from', 'host:0', '--to', '/nonexistent/out'], '--from'],
    [['receive', '--from', 'host:70000', '--to', '/nonexistent/out'], '--from'],
    [['receive', '--from', ':7747', '--to', '/nonexistent/out'], '--from'],
    [['receive', '--from', '127.0.0.1', '--to', '/nonexistent/out', '--interface', 'eth0'], '--interface'],
  ] as const) {
    const r = await run(IMG, [...args]);
    assert.equal(r.code, 2, `img ${args.join(' ')}: exit ${r.code}: ${r.err}`);
    assert.ok(r.err.includes(option), `img ${args.join(' ')} names ${option}: ${r.err}`);
  }
  // Good values pass the CLI and meet the missing image instead.
  for (const args of [
    ['--group', '239.1.2.3'],
    ['--group', '224.0.1.1'],
    ['--ttl', '32'],
    ['--interface', '127.0.0.1'],
    ['--wait', '0'],
  ]) {
    const r = await run(IMGCAST, ['send', image, ...args]);
    assert.equal(r.code, 1, `imgcast send ${args.join(' ')}: ${r.err}`);
    assert.match(r.err, /nonexistent\/lab\.imgc/);
  }
});
