import assert from 'node:assert/strict';
import { test } from 'node:test';

import { openSocket, SEND_BUFFER_TOTAL, sendBufferShare } from '../../src/transport/datagram-out-socket.ts';

test('the sockets of one sender share SEND_BUFFER_TOTAL, each keeping a floor', () => {
  for (let sockets = 1; sockets <= 9; sockets++) {
    const share = sendBufferShare(sockets);
    assert.ok(share >= 32 << 10, `${sockets} sockets: ${share}`);
    assert.ok(
      share * sockets <= Math.max(SEND_BUFFER_TOTAL, sockets * (32 << 10)),
      `${sockets} sockets: ${share}`,
    );
  }
  assert.equal(sendBufferShare(1), SEND_BUFFER_TOTAL);
  assert.equal(sendBufferShare(2), SEND_BUFFER_TOTAL / 2);
  assert.equal(sendBufferShare(0), SEND_BUFFER_TOTAL);
});

test('the socket gets the send buffer it is given, not the largest the kernel allows', async () => {
  const port = 20000 + 2 * Math.floor(Math.random() * 6000);
  const group = `239.254.${1 + Math.floor(Math.random() * 250)}.${1 + Math.floor(Math.random() * 250)}`;
  const udp = await openSocket(
    { interface: '127.0.0.1', ttl: 1, group, port, maxDatagram: 8192, sendBuffer: 64 << 10 },
    () => {},
  );
  try {
    // Linux doubles SO_SNDBUF for its bookkeeping; net.core.wmem_max (212992 on a stock kernel) is above it.
    assert.equal(udp.getSendBufferSize(), 128 << 10);
  } finally {
    udp.close();
  }
});
