/**
 * The receiving thread of datagram-in.ts: reads the data socket and copies each datagram into
 * the shared ring, nothing else, so the socket is drained within microseconds whatever the
 * receiver's main thread is doing (hashing a chunk, writing one, collecting garbage). See
 * datagram-in.ts for the ring's layout.
 */
import dgram from 'node:dgram';
import { parentPort, workerData } from 'node:worker_threads';
import { CTRL, RING_OFFSET, recordSize, type InWorkerData } from './datagram-in-layout.ts';

const data = workerData as InWorkerData;
const ctrl = new Int32Array(data.sab, 0, CTRL.INTS);
const ring = Buffer.from(data.sab, RING_OFFSET, data.ringBytes);
const port = parentPort;
if (!port) throw new Error('datagram-in-worker runs as a worker thread only');

const sock = dgram.createSocket({ type: 'udp4', reuseAddr: true });
sock.on('error', (e) => port.postMessage({ t: 'error', message: e.message }));
sock.on('message', (msg) => {
  const size = recordSize(msg.length);
  const w = Atomics.load(ctrl, CTRL.WRITE);
  const r = Atomics.load(ctrl, CTRL.READ);
  let at = w;
  if (w >= r) {
    // Ending exactly at the ring's end would wrap the write position onto a reader at 0: full
    // would look empty, so that case wraps (and finds no room) too.
    if (w + size > data.ringBytes || (w + size === data.ringBytes && r === 0)) {
      // No room at the end: wrap, leaving a marker, if the start has room short of the reader.
      if (size >= r) return dropped();
      if (w + 4 <= data.ringBytes) ring.writeUInt32LE(0xffffffff, w);
      at = 0;
    }
  } else if (w + size >= r) {
    return dropped();
  }
  ring.writeUInt32LE(msg.length, at);
  msg.copy(ring, at + 4);
  Atomics.store(ctrl, CTRL.WRITE, at + size === data.ringBytes ? 0 : at + size);
  // Wake the main thread once per batch: it clears the flag before it drains.
  if (Atomics.compareExchange(ctrl, CTRL.NOTIFIED, 0, 1) === 0) port.postMessage({ t: 'data' });
});

function dropped(): void {
  Atomics.add(ctrl, CTRL.DROPPED, 1);
}

port.on('message', (m: { t: string }) => {
  if (m.t === 'close') sock.close(() => port.postMessage({ t: 'closed' }));
});

sock.bind(data.port, data.bindAddress, () => {
  try {
    sock.addMembership(data.group, data.interface);
  } catch (e) {
    port.postMessage({ t: 'failed', stage: 'membership', message: (e as Error).message });
    return;
  }
  try {
    sock.setRecvBufferSize(data.rcvbuf);
  } catch {
    /* capped by net.core.rmem_max: the ring makes up for a small buffer */
  }
  port.postMessage({ t: 'ready', rcvbuf: sock.getRecvBufferSize() });
});
sock.once('error', (e) => port.postMessage({ t: 'failed', stage: 'bind', message: e.message }));
