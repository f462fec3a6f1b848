/**
 * discoverServer over real UDP multicast: on loopback against a stand-in server that this
 * test controls (what it answers, and when), and between network namespaces against the real
 * responder, the way a lab runs it. Groups are 239.77.x.y with a random port, never the
 * defaults, so a real server on this machine is not disturbed.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import { fileURLToPath } from 'node:url';
import { test, type TestContext } from 'node:test';
import { encodeDiscoveryReply, parseDiscoveryRequest } from '../../src/api/discovery.ts';
import { discoverServer } from '../../src/client/discover.ts';
import { ClientError } from '../../src/client/errors.ts';
import { InterruptedError } from '../../src/errors.ts';
import { netnsUnavailable, skipUnless } from '../helpers/env.ts';
import { NetLab } from '../helpers/netlab.ts';

const PEER = fileURLToPath(new URL('../helpers/discovery-peer.ts', import.meta.url));

function endpoint(): { group: string; port: number } {
  return {
    group: `239.77.${1 + Math.floor(Math.random() * 250)}.${1 + Math.floor(Math.random() * 250)}`,
    port: 20000 + Math.floor(Math.random() * 12000),
  };
}

type Reply = (id: string, n: number) => Array<Buffer | string>;

/** A stand-in server on loopback: `reply` says what to send back to the n-th request (0-based). */
async function fakeServer(t: TestContext, ep: { group: string; port: number }, reply: Reply) {
  const sock = dgram.createSocket({ type: 'udp4', reuseAddr: true });
  await new Promise<void>((r) => sock.bind(ep.port, ep.group, () => r()));
  sock.addMembership(ep.group, '127.0.0.1');
  t.after(() => sock.close());
  const requests: string[] = [];
  sock.on('message', (data, rinfo) => {
    const id = parseDiscoveryRequest(data);
    if (!id) return;
    const n = requests.push(id) - 1;
    for (const d of reply(id, n)) sock.send(d, rinfo.port, rinfo.address);
  });
  return { requests };
}

const OTHER_ID = 'ffffffffffffffff';
const answer = (name: string) => ({ api: 'http://127.0.0.1:7740', name });

test('the first well-formed answer to our own id is the server', async (t) => {
  const ep = endpoint();
  const server = await fakeServer(t, ep, (id) => [encodeDiscoveryReply(id, answer('lab-server'))]);
  const found = await discoverServer({ ...ep, interface: '127.0.0.1' });
  assert.deepEqual(found, { api: 'http://127.0.0.1:7740', name: 'lab-server', from: '127.0.0.1' });
  assert.equal(server.requests.length, 1);
  assert.match(server.requests[0]!, /^[0-9a-f]{16}$/);
});

test('with no server, E_NO_SERVER comes in bounded time and says what to do', async () => {
  const ep = endpoint();
  const started = Date.now();
  await assert.rejects(discoverServer({ ...ep, interface: '127.0.0.1', timeoutMs: 600 }), (e: unknown) => {
    const elapsed = Date.now() - started;
    assert.ok(e instanceof ClientError, String(e));
    assert.equal(e.code, 'E_NO_SERVER');
    assert.equal(
      e.message,
      `no imgcast server answered on ${ep.group}:${ep.port} within 0.6 s (asked from 127.0.0.1); ` +
        'give the server with --server HOST[:PORT]',
    );
    assert.deepEqual(e.toJSON(), {
      error: 'E_NO_SERVER',
      message: e.message,
      group: ep.group,
      port: ep.port,
      timeoutMs: 600,
      asked: ['127.0.0.1'],
    });
    assert.ok(elapsed >= 590 && elapsed < 1500, `took ${elapsed} ms`);
    return true;
  });
});

test('an answer to another id, or a malformed one, is ignored', async (t) => {
  const ep = endpoint();
  const server = await fakeServer(t, ep, () => [
    encodeDiscoveryReply(OTHER_ID, answer('someone else')),
    JSON.stringify({ imgcast: 'server', v: 1, api: 'http://127.0.0.1:7740', name: 'no id' }),
    'garbage',
  ]);
  await assert.rejects(
    discoverServer({ ...ep, interface: '127.0.0.1', timeoutMs: 600, attempts: 2 }),
    (e: unknown) => e instanceof ClientError && e.code === 'E_NO_SERVER',
  );
  assert.equal(server.requests.length, 2, 'asked once per attempt');
});

test('a wrong answer first does not hide the right one after it', async (t) => {
  const ep = endpoint();
  await fakeServer(t, ep, (id) => [
    encodeDiscoveryReply(OTHER_ID, answer('someone else')),
    JSON.stringify({ imgcast: 'server', v: 1, id, api: 'not a url', name: 'broken' }),
    encodeDiscoveryReply(id, answer('ours')),
    encodeDiscoveryReply(id, answer('a second server, later')),
  ]);
  const found = await discoverServer({ ...ep, interface: '127.0.0.1', timeoutMs: 1000 });
  assert.equal(found.name, 'ours');
});

test('a lost request is asked again, with the same id, until an answer comes', async (t) => {
  const ep = endpoint();
  const server = await fakeServer(t, ep, (id, n) =>
    n < 2 ? [] : [encodeDiscoveryReply(id, answer('third time'))],
  );
  const started = Date.now();
  const found = await discoverServer({ ...ep, interface: '127.0.0.1', timeoutMs: 900, attempts: 3 });
  assert.equal(found.name, 'third time');
  assert.equal(server.requests.length, 3);
  assert.equal(new Set(server.requests).size, 1);
  const elapsed = Date.now() - started;
  assert.ok(
    elapsed >= 550 && elapsed < 900,
    `answered after ${elapsed} ms, expected at the third attempt (600 ms)`,
  );
});

test('an abort stops discovery at once with the caller reason, or E_ABORTED', async () => {
  const ep = endpoint();
  const ac = new AbortController();
  const started = Date.now();
  setTimeout(() => ac.abort(new InterruptedError('SIGINT')), 100);
  await assert.rejects(
    discoverServer({ ...ep, interface: '127.0.0.1', timeoutMs: 5000, signal: ac.signal }),
    (e: unknown) => e instanceof InterruptedError,
  );
  assert.ok(Date.now() - started < 1000);
  await assert.rejects(
    discoverServer({ ...ep, interface: '127.0.0.1', signal: AbortSignal.abort() }),
    (e: unknown) => e instanceof ClientError && e.code === 'E_ABORTED',
  );
});

test('a source address this host does not have is E_DISCOVERY_SOCKET, not E_NO_SERVER', async () => {
  const ep = endpoint();
  await assert.rejects(
    discoverServer({ ...ep, interface: '203.0.113.77', timeoutMs: 300 }),
    (e: unknown) =>
      (e as { code?: string }).code === 'E_DISCOVERY_SOCKET' &&
      (e as Error).message ===
        `cannot send a discovery request to ${ep.group}:${ep.port}: ` +
          'from 203.0.113.77: it is not an IPv4 address of this host (EADDRNOTAVAIL)',
  );
});

/** Output of a peer process once it printed a line (or ended). */
function firstLine(child: ChildProcess): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (err += d));
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (out.includes('\n')) resolve(out.split('\n')[0]!);
    });
    child.on('error', reject);
    child.on('close', (code) => reject(new Error(`peer ended (${code}) before a line: ${out}${err}`)));
  });
}

test('lab: a workstation finds the server in another host on its subnet, with no interface given', async (t) => {
  if (skipUnless(t, netnsUnavailable())) return;
  const lab = NetLab.create(1);
  t.after(() => lab.destroy());
  const ep = endpoint();
  const server = lab.exec(0, process.execPath, [PEER, 'respond', ep.group, String(ep.port), 'lab-server']);
  assert.equal(await firstLine(server), 'ready');

  const ws = lab.exec(1, process.execPath, [PEER, 'discover', ep.group, String(ep.port), '2100']);
  assert.deepEqual(JSON.parse(await firstLine(ws)), {
    api: `http://${lab.addr(0)}:7740`,
    name: 'lab-server',
    from: lab.addr(0),
  });

  lab.kill9(server);
  const alone = lab.exec(1, process.execPath, [PEER, 'discover', ep.group, String(ep.port), '700']);
  const failed = JSON.parse(await firstLine(alone));
  assert.equal(failed.error, 'E_NO_SERVER');
  assert.deepEqual(failed.asked, [lab.addr(1)]);
});

test('lab: a server with two NICs answers on each with its address on that subnet', async (t) => {
  if (skipUnless(t, netnsUnavailable())) return;
  const lab = NetLab.create(1);
  t.after(() => lab.destroy());
  // A second link straight between the two hosts, on a subnet of its own; it goes with the namespaces.
  lab.runSync(0, 'ip', ['link', 'add', 'eth1', 'type', 'veth', 'peer', 'name', 'eth1', 'netns', lab.ns(1)]);
  for (const [h, addr] of [
    [0, '10.77.0.1'],
    [1, '10.77.0.2'],
  ] as const) {
    lab.runSync(h, 'ip', ['addr', 'add', `${addr}/24`, 'dev', 'eth1']);
    lab.runSync(h, 'ip', ['link', 'set', 'eth1', 'up']);
  }
  const ep = endpoint();
  const server = lab.exec(0, process.execPath, [PEER, 'respond', ep.group, String(ep.port), 'two-nics']);
  assert.equal(await firstLine(server), 'ready');

  const cases: Array<[string, string]> = [
    ['10.77.0.2', '10.77.0.1'],
    [lab.addr(1), lab.addr(0)],
  ];
  for (const [from, expect] of cases) {
    const ws = lab.exec(1, process.execPath, [PEER, 'discover', ep.group, String(ep.port), '2100', from]);
    const found = JSON.parse(await firstLine(ws));
    assert.deepEqual(
      found,
      { api: `http://${expect}:7740`, name: 'two-nics', from: expect },
      `asked from ${from}`,
    );
  }
});
