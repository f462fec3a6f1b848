import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MAX_SEND_THREADS } from '../../src/transport/datagram-out.ts';
import { TransportError } from '../../src/transport/errors.ts';
import { runSender } from '../../src/transport/sender.ts';
import type { ChunkProvider } from '../../src/transport/types.ts';

test('runSender refuses a sending-thread count outside 0..MAX_SEND_THREADS before opening anything', async () => {
  const provider = {
    chunks: [],
    readStored: () => Promise.reject(new Error('never read')),
  } as unknown as ChunkProvider;
  for (const sendThreads of [-1, 1.5, MAX_SEND_THREADS + 1]) {
    await assert.rejects(runSender(provider, { sendThreads, port: 20990 }), (err: unknown) => {
      assert.ok(err instanceof TransportError, String(err));
      assert.equal(err.code, 'E_CONTROL_INVALID');
      assert.match(err.message, /sending threads/);
      return true;
    });
  }
});
