/**
 * The receiving thread and its ring (datagram-in.ts) over real loopback multicast: datagrams
 * arrive whole and in order across many wraps of a small ring, a datagram after a quiet spell
 * still wakes the main thread, a main thread that stops reading
 * loses datagrams to a full ring (counted) but never gets a damaged one, a group that
 * cannot be joined is a clear error, and as root the reading thread alone runs at a raised
 * priority.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { test } from 'node:test';
import { readdirSync } from 'node:fs';
import { DatagramIn, openDataInput, READER_NICE, THREAD_BELOW } from '../../src/transport/datagram-in.ts';
import { TransportError } from '../../src/transport/errors.ts';
import { HEADER_SIZE, MAGIC } from '../../src/transport/packet.ts';
import { threadNice } from '../helpers/thread-nice.ts';

function endpoint(): { port: number; group: string } {
  return {
    port: 20000 + 2 * Math.floor(Math.random() * 6000),
    group: `239.253.${1 + Math.floor(Math.random() * 250)}.${1 + Math.floor(Math.random() * 250)}`,
  };
}

/** A datagram numbered `i` that carries its own digest, so any damage shows. */
function datagram(i: number): Buffer {
  const body = randomBytes(1 + ((i * 7919) % 9000));
  const head = Buffer.alloc(4);
  head.writeUInt32BE(i);
  const digest = createHash('sha256').update(head).update(body).digest().subarray(0, 8);
  return Buffer.concat([head, digest, body]);
}

function check(d: Buffer): number {
  const digest = createHash('sha256').update(d.subarray(0, 4)).update(d.subarray(12)).digest().subarray(0, 8);
  assert.ok(digest.equals(d.subarray(4, 12)), 'a datagram came out of the ring damaged');
  return d.readUInt32BE(0);
}

async function sender(): Promise<dgram.Socket> {
  const s = dgram.createSocket('udp4');
  await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
  s.setMulticastInterface('127.0.0.1');
  s.setMulticastLoopback(true);
  return s;
}

const until = async (cond: () => boolean, ms: number): Promise<void> => {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
};

test('datagrams arrive whole and in order through many wraps of a small ring', async () => {
  const ep = endpoint();
  const got: number[] = [];
  const input = await DatagramIn.open(
    { ...ep, interface: '127.0.0.1', rcvbuf: 1 << 20, ringBytes: 128 * 1024 },
    (b) => got.push(check(b)),
    (e) => assert.fail(e),
  );
  const s = await sender();
  try {
    for (let i = 0; i < 3000; i++) {
      s.send(datagram(i), ep.port, ep.group);
      // Paced so neither the kernel nor the ring overflows: this test is about order and content.
      if (i % 8 === 7) await until(() => got.length >= i - 7, 2000);
    }
    await until(() => got.length >= 3000, 5000);
    assert.deepEqual(
      got,
      Array.from({ length: 3000 }, (_, i) => i),
    );
    assert.equal(input.droppedDelta(), 0);
  } finally {
    s.close();
    await input.close();
  }
});

test('a datagram after a quiet spell is handed over: the main thread waits for the thread, then reads unasked while they flow', async () => {
  const ep = endpoint();
  const got: number[] = [];
  // The default ring: it holds bursts the main thread only reads at its next poll.
  const input = await DatagramIn.open(
    { ...ep, interface: '127.0.0.1', rcvbuf: 1 << 20 },
    (b) => got.push(check(b)),
    (e) => assert.fail(e),
  );
  const s = await sender();
  try {
    let next = 0;
    for (let round = 0; round < 12; round++) {
      // Quiet long enough for the main thread to find the ring empty and wait for a notice.
      await new Promise((r) => setTimeout(r, 30));
      // Odd rounds: one datagram; even ones: a short burst that keeps the ring busy across polls.
      const n = round % 2 === 1 ? 1 : 40;
      for (let i = 0; i < n; i++) s.send(datagram(next++), ep.port, ep.group);
      await until(() => got.length >= next, 2000);
      assert.equal(got.length, next, `round ${round}: ${next - got.length} datagram(s) not handed over`);
    }
    assert.equal(input.droppedDelta(), 0);
    assert.deepEqual(
      got,
      Array.from({ length: next }, (_, i) => i),
    );
  } finally {
    s.close();
    await input.close();
  }
});

test('a main thread that stops reading loses datagrams to the full ring, counted, never damaged ones', async () => {
  const ep = endpoint();
  const got: number[] = [];
  const input = await DatagramIn.open(
    { ...ep, interface: '127.0.0.1', rcvbuf: 1 << 20, ringBytes: 64 * 1024 },
    (b) => got.push(check(b)),
    (e) => assert.fail(e),
  );
  const s = await sender();
  try {
    const blocked = Date.now() + 300;
    // The sends queue in this thread's socket; they leave while the main thread is held below.
    for (let i = 0; i < 200; i++) s.send(datagram(i), ep.port, ep.group);
    await new Promise((r) => setImmediate(r));
    while (Date.now() < blocked) {
      /* the main thread is busy: only the receiving thread runs */
    }
    await until(() => false, 300);
    const dropped = input.droppedDelta();
    assert.ok(dropped > 0, 'a 64 KiB ring took 200 datagrams of up to 9 KB without dropping any');
    assert.ok(got.length > 0 && got.length + dropped <= 200, `${got.length} got, ${dropped} dropped`);
    for (let i = 1; i < got.length; i++) assert.ok((got[i] as number) > (got[i - 1] as number));
  } finally {
    s.close();
    await input.close();
  }
});

test('a group that cannot be joined on the interface is a clear E_CONNECT', async () => {
  const ep = endpoint();
  await assert.rejects(
    DatagramIn.open(
      { ...ep, interface: '198.18.255.254', rcvbuf: 1 << 20 },
      () => {},
      () => {},
    ),
    (e: unknown) =>
      e instanceof TransportError && e.code === 'E_CONNECT' && /cannot join multicast group/.test(e.message),
  );
});

test('openDataInput reads a socket whose buffer is small on a thread with a ring', async () => {
  const ep = endpoint();
  // 1 MiB asked: the kernel grants at most twice that, under THREAD_BELOW whatever rmem_max is.
  const input = await openDataInput(
    { ...ep, interface: '127.0.0.1', rcvbuf: 1 << 20 },
    () => {},
    () => {},
  );
  try {
    assert.ok(input.rcvbuf < THREAD_BELOW);
    assert.ok(input instanceof DatagramIn, 'a small buffer was read on the caller thread');
  } finally {
    await input.close();
  }
});

/** A data-plane datagram as far as its order matters: magic and serial (packet.ts), then a body. */
function numbered(serial: number): Buffer {
  const b = Buffer.alloc(HEADER_SIZE + 16);
  b.writeUInt16BE(MAGIC, 0);
  b.writeUInt32BE(serial, 24);
  return b;
}

for (const mode of ['on the caller thread', 'on a thread with a ring'] as const) {
  test(`data ports, read ${mode}: a socket per port, the buffer is their sum, every datagram comes through`, async () => {
    const ep = endpoint();
    const ports = 4;
    const got: number[] = [];
    const onDatagram = (b: Buffer) => got.push(b.readUInt32BE(24));
    // Each socket asks for a quarter, under the stock rmem_max (212992): the kernel doubles what it grants.
    const rcvbuf = ports * 100 * 1024;
    const input =
      mode === 'on a thread with a ring'
        ? await DatagramIn.open({ ...ep, ports, interface: '127.0.0.1', rcvbuf }, onDatagram, (e) =>
            assert.fail(e),
          )
        : await openDataInput(
            { ...ep, ports, interface: '127.0.0.1', rcvbuf: ports * (THREAD_BELOW + 4096) },
            onDatagram,
            (e) => assert.fail(e),
          );
    const s = await sender();
    try {
      if (mode === 'on a thread with a ring') assert.equal(input.rcvbuf, ports * 2 * 100 * 1024);
      else assert.ok(!(input instanceof DatagramIn), 'a big buffer is read on the caller thread');
      // Sent in one go from this thread: the caller-thread reader sees all four sockets full at
      // once and reads them one after the other (32 at a time), so without reordering they come
      // out by socket.
      const n = 400;
      for (let i = 0; i < n; i++) s.send(numbered(1000 + i), ep.port + (i % ports), ep.group);
      await until(() => got.length >= n, 3000);
      assert.equal(got.length, n, 'every datagram arrived, whatever port it came on');
      const sent = Array.from({ length: n }, (_, i) => 1000 + i);
      if (mode === 'on the caller thread') assert.deepEqual(got, sent, 'in the order sent');
      // The thread reads while this one still sends, so a socket it read early in a turn may
      // get datagrams older than the last ones another socket gave that turn: no exact order.
      else
        assert.deepEqual(
          [...got].sort((a, b) => a - b),
          sent,
        );
    } finally {
      s.close();
      await input.close();
    }
  });
}

/** This process's threads at nice `nice`. */
function threadsAt(nice: number): number[] {
  return readdirSync('/proc/self/task')
    .map(Number)
    .filter((tid) => threadNice(tid) === nice);
}

test('the receiving thread runs at READER_NICE as root, alone in its process, and says so', async (t) => {
  if (process.getuid?.() !== 0) {
    t.skip(
      'needs root: a negative nice value is refused otherwise (thread-priority.test.ts covers the refusal)',
    );
    return;
  }
  const before = threadsAt(READER_NICE);
  const ep = endpoint();
  const input = await DatagramIn.open(
    { ...ep, interface: '127.0.0.1', rcvbuf: 1 << 20 },
    () => {},
    (e) => assert.fail(e),
  );
  try {
    assert.deepEqual(input.priority, { raised: true, nice: READER_NICE });
    const raised = threadsAt(READER_NICE).filter((tid) => !before.includes(tid));
    assert.equal(raised.length, 1, 'exactly one new thread (the receiving one) runs at the raised priority');
    assert.notEqual(raised[0], process.pid, 'not the main thread');
  } finally {
    await input.close();
  }
});
