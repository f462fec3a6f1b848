/**
 * The sender's datagram outputs (direct socket, one sending thread, two), run through the same
 * checks over real loopback multicast: every datagram arrives byte for byte, in order where the
 * form promises order and within its reorder window where it does not, buffers are free as soon
 * as the form says, and a socket that cannot be opened is a clear error.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { test } from 'node:test';

import { openDatagramOut, type DatagramOutOptions } from '../../src/transport/datagram-out.ts';
import { TransportError } from '../../src/transport/errors.ts';

function endpoint(): { port: number; group: string } {
  return {
    port: 20000 + 2 * Math.floor(Math.random() * 6000),
    group: `239.254.${1 + Math.floor(Math.random() * 250)}.${1 + Math.floor(Math.random() * 250)}`,
  };
}

/** A listener joined to the group on loopback, collecting datagrams in arrival order. */
async function listen(ep: { port: number; group: string }): Promise<{ got: Buffer[]; close(): void }> {
  const sock = dgram.createSocket({ type: 'udp4', reuseAddr: true });
  await new Promise<void>((r) => sock.bind(ep.port, ep.group, () => r()));
  sock.addMembership(ep.group, '127.0.0.1');
  sock.setRecvBufferSize(8 << 20);
  const got: Buffer[] = [];
  sock.on('message', (m) => got.push(m));
  return { got, close: () => sock.close() };
}

async function until(cond: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
}

for (const threads of [0, 1, 2]) {
  test(`datagram output with ${threads} sending thread(s): every datagram arrives intact, order within its promise`, async () => {
    const ep = endpoint();
    const rx = await listen(ep);
    const o: Omit<DatagramOutOptions, 'sendBuffer'> = {
      interface: '127.0.0.1',
      ttl: 1,
      group: ep.group,
      port: ep.port,
      ports: 1,
      maxDatagram: 8192,
    };
    const errors: Error[] = [];
    const out = await openDatagramOut(o, threads, (e) => errors.push(e));
    try {
      assert.equal(
        out.reorderWindow === 0,
        threads === 0,
        'the own socket alone keeps order; with threads it may not',
      );
      const sent: Buffer[] = [];
      const head = Buffer.alloc(4);
      for (let i = 0; i < 600; i++) {
        // Two parts, as the sender sends them: a numbered header and a payload of varying size.
        head.writeUInt32BE(i, 0);
        const body = randomBytes(1 + ((i * 997) % 8000));
        sent.push(Buffer.concat([head, body]));
        while (out.backlog() >= out.backlogLimit) await new Promise((r) => setImmediate(r));
        out.send([head, body]);
        // A form that copied may see its buffers reused at once: the datagram must not change.
        if (!out.holdsBuffers()) body.fill(0xee);
        if (i === 300) out.spread(false);
        // Let the listener keep up: at the stock net.core.rmem_max (212992) its buffer holds a few
        // dozen of these, and what this test checks is order and content, not speed.
        if (i % 16 === 15) await until(() => rx.got.length >= i - 31, 2000);
      }
      await until(() => rx.got.length >= sent.length, 5000);
      await until(() => out.backlog() === 0, 5000);
      assert.equal(out.backlog(), 0);
      assert.equal(rx.got.length, sent.length, 'loopback lost datagrams');
      assert.deepEqual(errors, [], 'socket errors while sending');
      const position = new Map<number, number>();
      rx.got.forEach((d, at) => position.set(d.readUInt32BE(0), at));
      // The bound is on what the sender holds back. Once handed to the kernel on different CPUs,
      // datagrams wait in per-CPU queues, so a busy CPU can still let a few fall further behind.
      const beyond: number[] = [];
      for (const [i, d] of sent.entries()) {
        const at = position.get(i);
        assert.ok(at !== undefined, `datagram ${i} missing`);
        assert.deepEqual(rx.got[at], d, `datagram ${i} changed`);
        if (Math.abs(at - i) > out.reorderWindow) beyond.push(i);
      }
      assert.ok(
        beyond.length <= sent.length / 20,
        `out of place beyond ${out.reorderWindow}: ${beyond.join(' ')}`,
      );
    } finally {
      await out.close();
      rx.close();
    }
  });
}

test('a sending socket that cannot be opened is a clear E_CONNECT error, threaded or not', async () => {
  // 198.18.0.250 is in the lab's range but on no interface here: bind fails with EADDRNOTAVAIL.
  for (const threads of [0, 2]) {
    await assert.rejects(
      openDatagramOut(
        { interface: '198.18.0.250', ttl: 1, group: '239.254.0.1', port: 21000, ports: 2, maxDatagram: 1472 },
        threads,
        () => {},
      ),
      (err: unknown) => {
        assert.ok(err instanceof TransportError, String(err));
        assert.equal(err.code, 'E_CONNECT');
        assert.match(err.message, /cannot open the multicast socket .*198\.18\.0\.250/);
        return true;
      },
    );
  }
});
