/**
 * The receiving thread of datagram-in.ts: reads the data sockets (one per data port) and copies
 * each datagram into the shared ring, nothing else, so the sockets are drained within
 * microseconds whatever the receiver's main thread is doing (hashing a chunk, writing one,
 * collecting garbage). See datagram-in.ts for the ring's layout.
 */
import dgram from 'node:dgram';
import { parentPort, workerData } from 'node:worker_threads';
import {
  CTRL,
  RING_OFFSET,
  recordSize,
  type InWorkerData,
  type InWorkerReady,
} from './datagram-in-layout.ts';
import { SerialOrder } from './serial-order.ts';
import { raiseThreadPriority } from './thread-priority.ts';

const data = workerData as InWorkerData;
const ctrl = new Int32Array(data.sab, 0, CTRL.INTS);
const ring = Buffer.from(data.sab, RING_OFFSET, data.ringBytes);
const maybePort = parentPort;
if (!maybePort) throw new Error('datagram-in-worker runs as a worker thread only');
const port = maybePort;

function toRing(msg: Buffer): void {
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
  // Wake the main thread if it found the ring empty (it cleared the flag then); while datagrams
  // flow it looks on its own.
  if (Atomics.compareExchange(ctrl, CTRL.NOTIFIED, 0, 1) === 0) port.postMessage({ t: 'data' });
}

function dropped(): void {
  Atomics.add(ctrl, CTRL.DROPPED, 1);
}

// Several sockets: the ring gets each turn's datagrams in the order they were sent (serial-order.ts).
const order = data.ports > 1 ? new SerialOrder(toRing) : null;
const onMessage = order ? (msg: Buffer) => order.push(msg) : toRing;

async function openOne(p: number): Promise<dgram.Socket> {
  const sock = dgram.createSocket({ type: 'udp4', reuseAddr: true });
  try {
    await new Promise<void>((resolve, reject) => {
      sock.once('error', reject);
      sock.bind(p, data.bindAddress, () => {
        sock.off('error', reject);
        resolve();
      });
    });
  } catch (e) {
    sock.close();
    throw Object.assign(e as Error, { stage: 'bind' });
  }
  try {
    sock.addMembership(data.group, data.interface);
  } catch (e) {
    sock.close();
    throw Object.assign(e as Error, { stage: 'membership' });
  }
  try {
    sock.setRecvBufferSize(data.rcvbuf);
  } catch {
    /* capped by net.core.rmem_max: the ring makes up for a small buffer */
  }
  sock.on('error', (e) => port.postMessage({ t: 'error', message: e.message }));
  sock.on('message', onMessage);
  return sock;
}

const socks: dgram.Socket[] = [];
port.on('message', (m: { t: string }) => {
  if (m.t !== 'close') return;
  let open = socks.length;
  if (open === 0) port.postMessage({ t: 'closed' });
  for (const s of socks) s.close(() => --open === 0 && port.postMessage({ t: 'closed' }));
});

// Before the sockets open, so no datagram waits on a thread still at the default priority.
const priority = raiseThreadPriority(data.nice);
try {
  for (let i = 0; i < data.ports; i++) socks.push(await openOne(data.port + i));
  const ready: InWorkerReady = {
    t: 'ready',
    rcvbuf: socks.reduce((a, s) => a + s.getRecvBufferSize(), 0),
    priority,
  };
  port.postMessage(ready);
} catch (e) {
  for (const s of socks) s.close();
  const err = e as Error & { stage?: string };
  port.postMessage({ t: 'failed', stage: err.stage ?? 'bind', message: err.message });
}
