/**
 * The discovery responder over real UDP multicast on loopback (a 239.77.x.y group and a random
 * port of its own, never the defaults, so a real server on this machine is not disturbed).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { test, type TestContext } from 'node:test';
import { encodeDiscoveryRequest } from '../../src/api/discovery.ts';
import { startDiscoveryResponder, type DiscoveryResponderOptions } from '../../src/server/discovery.ts';

function endpoint(): { group: string; port: number } {
  return {
    group: `239.77.${1 + Math.floor(Math.random() * 250)}.${1 + Math.floor(Math.random() * 250)}`,
    port: 20000 + Math.floor(Math.random() * 12000),
  };
}

/** A workstation's socket, sending to the group on loopback and collecting what comes back. */
async function asker(t: TestContext) {
  const sock = dgram.createSocket('udp4');
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
  sock.setMulticastInterface('127.0.0.1');
  sock.setMulticastTTL(1);
  t.after(() => sock.close());
  const got: Array<{ data: Buffer; from: string }> = [];
  sock.on('message', (data, rinfo) => got.push({ data, from: `${rinfo.address}:${rinfo.port}` }));
  const send = (data: Buffer | string, ep: { group: string; port: number }) =>
    new Promise<void>((ok, fail) => sock.send(data, ep.port, ep.group, (e) => (e ? fail(e) : ok())));
  return { sock, got, send };
}

async function responder(t: TestContext, opts: DiscoveryResponderOptions) {
  const r = await startDiscoveryResponder(opts);
  t.after(() => r.close());
  return r;
}

const until = async (cond: () => boolean, ms: number): Promise<void> => {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
};
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('a request is answered by unicast with the same id, the server name and its address on the subnet of the requester', async (t) => {
  const ep = endpoint();
  const calls: Array<{ from: { address: string; port: number }; local: string | undefined }> = [];
  const lines: string[] = [];
  await responder(t, {
    ...ep,
    interface: '127.0.0.1',
    log: (l) => lines.push(l),
    answer: (from, local) => {
      calls.push({ from, local });
      return { api: `http://${local}:7740`, name: 'lab-server' };
    },
  });
  const a = await asker(t);
  const id = randomBytes(8).toString('hex');
  await a.send(encodeDiscoveryRequest(id), ep);
  await until(() => a.got.length > 0, 2000);
  assert.equal(a.got.length, 1);
  assert.deepEqual(JSON.parse(a.got[0]!.data.toString()), {
    imgcast: 'server',
    v: 1,
    id,
    api: 'http://127.0.0.1:7740',
    name: 'lab-server',
  });
  assert.equal(calls.length, 1);
  assert.deepEqual(calls[0], {
    from: { address: '127.0.0.1', port: a.sock.address().port },
    local: '127.0.0.1',
  });
  assert.ok(
    lines.some((l) => l.includes(`listening on ${ep.group}:${ep.port} on 127.0.0.1`)),
    lines.join('\n'),
  );
  assert.ok(
    lines.some((l) => l.includes('http://127.0.0.1:7740')),
    lines.join('\n'),
  );
});

test('garbage is ignored without a reply or a log line, and the responder keeps answering', async (t) => {
  const ep = endpoint();
  let calls = 0;
  const lines: string[] = [];
  await responder(t, {
    ...ep,
    interface: '127.0.0.1',
    log: (l) => lines.push(l),
    answer: () => {
      calls++;
      return { api: 'http://127.0.0.1:7740', name: 'x' };
    },
  });
  const logged = lines.length;
  const a = await asker(t);
  const id = randomBytes(8).toString('hex');
  const junk: Array<Buffer | string> = [
    Buffer.alloc(0),
    randomBytes(1),
    randomBytes(300),
    randomBytes(1400),
    Buffer.alloc(9000, 0x7b),
    'not json',
    '{"imgcast":"discover"',
    'null',
    '[1,2,3]',
    '"discover"',
    JSON.stringify({ imgcast: 'discover', v: 2, id }),
    JSON.stringify({ imgcast: 'discover', v: 1, id: 'not hex at all!' }),
    JSON.stringify({ imgcast: 'discover', v: 1, id, pad: 'x'.repeat(600) }),
    JSON.stringify({
      imgcast: 'server',
      v: 1,
      id,
      api: 'http://127.0.0.1:1',
      name: 'a reply, not a request',
    }),
    `{"__proto__":{"imgcast":"discover","v":1,"id":"${id}"},"constructor":{"prototype":{"x":1}}}`,
  ];
  for (let round = 0; round < 3; round++) for (const j of junk) await a.send(j, ep);
  await pause(300);
  assert.equal(a.got.length, 0, 'junk was answered');
  assert.equal(calls, 0);
  assert.equal(lines.length, logged, `junk was logged: ${lines.slice(logged).join('\n')}`);

  await a.send(encodeDiscoveryRequest(id), ep);
  await until(() => a.got.length > 0, 2000);
  assert.equal(a.got.length, 1);
  assert.equal(JSON.parse(a.got[0]!.data.toString()).id, id);
});

test('an answer callback that declines, throws or builds a reply clients would refuse sends nothing and breaks nothing', async (t) => {
  const ep = endpoint();
  const lines: string[] = [];
  let mode: 'none' | 'throw' | 'bad' | 'ok' = 'none';
  await responder(t, {
    ...ep,
    interface: '127.0.0.1',
    log: (l) => lines.push(l),
    answer: () => {
      if (mode === 'none') return undefined;
      if (mode === 'throw') throw new Error('database is down');
      if (mode === 'bad') return { api: 'ftp://127.0.0.1', name: 'x' };
      return { api: 'http://127.0.0.1:7740', name: 'x' };
    },
  });
  const a = await asker(t);
  for (const m of ['none', 'throw', 'bad'] as const) {
    mode = m;
    const before = lines.length;
    await a.send(encodeDiscoveryRequest(randomBytes(8).toString('hex')), ep);
    // Each request is judged with its own mode: the next one waits until this one was handled.
    if (m === 'none') await pause(150);
    else await until(() => lines.length > before, 2000);
  }
  await pause(150);
  assert.equal(a.got.length, 0);
  assert.ok(
    lines.some((l) => /no answer to 127\.0\.0\.1:\d+: database is down/.test(l)),
    lines.join('\n'),
  );
  assert.ok(
    lines.some((l) => /no answer to .*ftp:.*would be refused/.test(l)),
    lines.join('\n'),
  );
  mode = 'ok';
  await a.send(encodeDiscoveryRequest(randomBytes(8).toString('hex')), ep);
  await until(() => a.got.length > 0, 2000);
  assert.equal(a.got.length, 1);
});

test('two requests from two workstations get one answer each, to each', async (t) => {
  const ep = endpoint();
  await responder(t, {
    ...ep,
    interface: '127.0.0.1',
    answer: () => ({ api: 'http://127.0.0.1:7740', name: 's' }),
  });
  const a = await asker(t);
  const b = await asker(t);
  const ida = randomBytes(8).toString('hex');
  const idb = randomBytes(16).toString('hex');
  await Promise.all([a.send(encodeDiscoveryRequest(ida), ep), b.send(encodeDiscoveryRequest(idb), ep)]);
  await until(() => a.got.length > 0 && b.got.length > 0, 2000);
  await pause(100);
  assert.deepEqual(
    a.got.map((g) => JSON.parse(g.data.toString()).id),
    [ida],
  );
  assert.deepEqual(
    b.got.map((g) => JSON.parse(g.data.toString()).id),
    [idb],
  );
});

test('close releases the port at once, and twice is fine', async (t) => {
  const ep = endpoint();
  const answer = () => ({ api: 'http://127.0.0.1:7740', name: 'first' });
  const r = await startDiscoveryResponder({ ...ep, interface: '127.0.0.1', answer });
  await Promise.all([r.close(), r.close()]);
  await r.close();
  await responder(t, {
    ...ep,
    interface: '127.0.0.1',
    answer: () => ({ api: 'http://127.0.0.1:7740', name: 'second' }),
  });
  const a = await asker(t);
  await a.send(encodeDiscoveryRequest(randomBytes(8).toString('hex')), ep);
  await until(() => a.got.length > 0, 2000);
  await pause(100);
  assert.deepEqual(
    a.got.map((g) => JSON.parse(g.data.toString()).name),
    ['second'],
  );
});

test('an interface this host does not have is refused at start with E_DISCOVERY_SOCKET', async () => {
  const ep = endpoint();
  await assert.rejects(
    startDiscoveryResponder({ ...ep, interface: '203.0.113.77', answer: () => undefined }),
    (e: unknown) =>
      (e as { code?: string }).code === 'E_DISCOVERY_SOCKET' &&
      (e as Error).message ===
        `cannot join the discovery group ${ep.group} on 203.0.113.77: it is not an IPv4 address of this host (ENODEV)`,
  );
  // The failed start let the port go.
  const r = await startDiscoveryResponder({ ...ep, interface: '127.0.0.1', answer: () => undefined });
  await r.close();
});
