import assert from 'node:assert/strict';
import { test } from 'node:test';

import dgram from 'node:dgram';

import { DataSockets, SEND_BUFFER_TOTAL, sendBufferShare } from '../../src/transport/datagram-out-socket.ts';

test('the sockets of one sender share SEND_BUFFER_TOTAL, each keeping a floor', () => {
  for (let sockets = 1; sockets <= 40; sockets++) {
    const share = sendBufferShare(sockets);
    assert.ok(share >= 16 << 10, `${sockets} sockets: ${share}`);
    assert.ok(
      share * sockets <= Math.max(SEND_BUFFER_TOTAL, sockets * (16 << 10)),
      `${sockets} sockets: ${share}`,
    );
  }
  assert.equal(sendBufferShare(1), SEND_BUFFER_TOTAL);
  assert.equal(sendBufferShare(2), SEND_BUFFER_TOTAL / 2);
  assert.equal(sendBufferShare(0), SEND_BUFFER_TOTAL);
});

function endpoint(): { port: number; group: string } {
  return {
    port: 20000 + 2 * Math.floor(Math.random() * 6000),
    group: `239.254.${1 + Math.floor(Math.random() * 250)}.${1 + Math.floor(Math.random() * 250)}`,
  };
}

/** DataSockets over 3 ports, with the sockets it made (watched through dgram.createSocket). */
async function openWatched(ep: {
  port: number;
  group: string;
}): Promise<{ out: DataSockets; created: dgram.Socket[] }> {
  const created: dgram.Socket[] = [];
  const realCreate = dgram.createSocket;
  (dgram as { createSocket: typeof dgram.createSocket }).createSocket = ((
    ...a: Parameters<typeof dgram.createSocket>
  ) => {
    const s = realCreate(...a);
    created.push(s);
    return s;
  }) as typeof dgram.createSocket;
  try {
    const out = await DataSockets.open(
      { interface: '127.0.0.1', ttl: 1, ...ep, ports: 3, maxDatagram: 8192, sendBuffer: 64 << 10 },
      () => {},
    );
    return { out, created };
  } finally {
    (dgram as { createSocket: typeof dgram.createSocket }).createSocket = realCreate;
  }
}

/** Sends datagrams numbered 0..n-1 and returns, in number order, the port index each came in on. */
async function portsOfEach(
  out: DataSockets,
  ep: { port: number; group: string },
  n: number,
): Promise<number[]> {
  const got: Array<[number, number]> = [];
  const rx: dgram.Socket[] = [];
  try {
    for (let i = 0; i < 3; i++) {
      const s = dgram.createSocket({ type: 'udp4', reuseAddr: true });
      rx.push(s);
      await new Promise<void>((r) => s.bind(ep.port + i, ep.group, () => r()));
      s.addMembership(ep.group, '127.0.0.1');
      s.on('message', (m) => got.push([i, m.readUInt32BE(0)]));
    }
    for (let k = 0; k < n; k++) {
      const b = Buffer.alloc(4);
      b.writeUInt32BE(k);
      out.send([b]);
    }
    const end = Date.now() + 2000;
    while (got.length < n && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    return got.sort((a, b) => a[1] - b[1]).map(([i]) => i);
  } finally {
    for (const s of rx) s.close();
  }
}

test('each data socket gets the send buffer it is given, not the largest the kernel allows', async () => {
  const ep = endpoint();
  const { out, created } = await openWatched(ep);
  try {
    assert.equal(created.length, 3);
    // Linux doubles SO_SNDBUF for its bookkeeping; net.core.wmem_max (212992 on a stock kernel) is above it.
    for (const s of created) assert.equal(s.getSendBufferSize(), 128 << 10);
    assert.deepEqual(
      created.map((s) => s.remoteAddress().port),
      [ep.port, ep.port + 1, ep.port + 2],
      'one socket per data port, each connected to its own',
    );
  } finally {
    out.close();
  }
});

test('datagrams are dealt over the data ports in turn', async () => {
  const ep = endpoint();
  const { out } = await openWatched(ep);
  try {
    assert.deepEqual(await portsOfEach(out, ep, 9), [0, 1, 2, 0, 1, 2, 0, 1, 2]);
  } finally {
    out.close();
  }
});

test('while a socket queues for a full kernel buffer, the datagrams after it go to that socket, in order', async () => {
  const ep = endpoint();
  const { out, created } = await openWatched(ep);
  // The first socket's kernel buffer is full for a while (a link slower than the sender): libuv
  // would queue what it gets, and a datagram sent on another socket would overtake those.
  let full = 3;
  created[0]!.getSendQueueCount = () => (full-- > 0 ? 1 : 0);
  try {
    assert.deepEqual(
      await portsOfEach(out, ep, 6),
      [0, 0, 0, 1, 2, 0],
      'held to the queueing socket until it drained, then dealt in turn again',
    );
  } finally {
    out.close();
  }
});
