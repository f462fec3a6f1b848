/**
 * A sending thread of datagram-out.ts (Lane): drains its ring of shared memory into its own
 * socket. See datagram-out-layout.ts for the ring and the messages.
 */
import { parentPort, workerData } from 'node:worker_threads';

import {
  CLOSING,
  CTRL_BYTES,
  SENT,
  WRITTEN,
  type OutWorkerData,
  type OutWorkerMessage,
} from './datagram-out-layout.ts';
import { DataSockets } from './datagram-out-socket.ts';

const maybePort = parentPort;
if (!maybePort) throw new Error('datagram-out-worker runs as a worker thread only');
const port = maybePort;
const post = (m: OutWorkerMessage): void => port.postMessage(m);

const { sab, slots, slotBytes, options } = workerData as OutWorkerData;
const ctrl = new Int32Array(sab, 0, 4);
const views: Buffer[] = [];
for (let i = 0; i < slots; i++) views.push(Buffer.from(sab, CTRL_BYTES + i * slotBytes, slotBytes));
const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

async function run(): Promise<void> {
  let udp;
  try {
    udp = await DataSockets.open(options, (e) => post({ t: 'error', message: e.message }));
  } catch (e) {
    post({ t: 'failed', message: String((e && (e as Error).message) || e) });
    return;
  }
  post({ t: 'ready' });
  let done = 0;
  for (;;) {
    const written = Atomics.load(ctrl, WRITTEN);
    if (written === done) {
      if (Atomics.load(ctrl, CLOSING) === 1) break;
      const w = Atomics.waitAsync(ctrl, WRITTEN, written, 1000);
      if (w.async) await w.value;
      continue;
    }
    while (done !== written) {
      const v = views[done % slots] as Buffer;
      udp.send(v.subarray(4, 4 + v.readUInt32LE(0)));
      done = (done + 1) | 0;
    }
    // A slot is free once libuv holds no datagram from it (sends that hit a full socket buffer wait in its queue).
    while (udp.queued() > 0) await tick();
    Atomics.store(ctrl, SENT, done);
  }
  udp.close(() => post({ t: 'closed' }));
}

void run();
