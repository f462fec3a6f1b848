/**
 * The receiver's data sockets, read on a thread of its own into a ring of shared memory.
 *
 * A session's datagrams come in on several ports (DATA_PORTS in sender.ts), a socket each: the
 * kernel's cap on a socket's buffer (net.core.rmem_max) then holds for each of them, and where
 * the receiver cannot raise it (no root, a container, a network namespace, whose view of it is
 * read-only) the sockets together hold that many times more.
 *
 * At the stock net.core.rmem_max (212992 bytes on most distributions) the kernel holds about
 * 4 ms of a 500 Mbit/s stream for a socket; a main thread that hashes a 4 MiB chunk, writes one
 * or collects garbage for longer than that loses datagrams, and the session slows to what the
 * receiver's worst pauses allow. The thread here does nothing but copy datagrams into the
 * ring (DEFAULT_RING_BYTES, over 100 ms of such a stream), so the kernel's buffer only has to
 * cover that thread's latency, and the ring covers the main thread's. A full ring drops
 * datagrams like a full socket buffer does, counted for the sender as overflow. With a big
 * kernel buffer (root raised rmem_max) the socket is read on the caller's thread instead:
 * openDataInput chooses.
 */
import dgram from 'node:dgram';
import { Worker } from 'node:worker_threads';
import {
  CTRL,
  RING_OFFSET,
  recordSize,
  type InWorkerData,
  type InWorkerReady,
} from './datagram-in-layout.ts';
import { TransportError } from './errors.ts';
import { SerialOrder } from './serial-order.ts';
import type { PriorityOutcome } from './thread-priority.ts';
import { workerExecArgv } from '../worker-argv.ts';

const DEFAULT_RING_BYTES = 8 * 1024 * 1024;
/**
 * The receiving thread's nice value (thread-priority.ts). In bench:multicast's stock-rmem_max
 * row (512 MiB to 3 receivers that cannot raise it, 2 cores shared with the sender) the
 * kernel dropped 650-1,900 datagrams per receiver with the thread at 0, and 54-400 at -10:
 * 4-14 MiB of repairs instead of 31-40 MiB. No ring overflowed in either.
 */
export const READER_NICE = -10;
/** Datagrams handled per turn of the main thread before it lets timers and sockets run. */
const BATCH = 4096;
/** How soon the main thread looks at the ring again after it found datagrams there. */
const POLL_MS = 2;

export interface DatagramInOptions {
  group: string;
  /** The first data port; `ports` consecutive ones from it (default 1), a socket each. */
  port: number;
  ports?: number;
  interface?: string;
  /** Receive buffer asked of the kernel over all the sockets (each asks its share, capped by net.core.rmem_max). */
  rcvbuf: number;
  ringBytes?: number;
}

function portsText(o: DatagramInOptions): string {
  const n = o.ports ?? 1;
  return n > 1 ? `${o.group}:${o.port}-${o.port + n - 1}` : `${o.group}:${o.port}`;
}

/** Each socket's share of the receive buffer asked for. */
function shareOf(o: DatagramInOptions): number {
  return Math.ceil(o.rcvbuf / (o.ports ?? 1));
}

/** The data sockets as the receiver sees them, read on their own thread or on the caller's. */
export interface DataInput {
  /** The receive buffer the kernel granted, over all the sockets. */
  readonly rcvbuf: number;
  /** Datagrams dropped for a full ring since the last call (0 without a ring). */
  droppedDelta(): number;
  /** The receiving thread's priority (null: read on the caller's thread, priority untouched). */
  readonly priority: PriorityOutcome | null;
  close(): Promise<void>;
}

/**
 * Opens the data sockets: on a thread with a ring when the kernel's buffers are small (under
 * THREAD_BELOW, as at the stock rmem_max), where the main thread's pauses would overflow it; on
 * the caller's thread otherwise, where the extra thread only costs CPU (measured in the lab,
 * where receivers share two cores: 3.5-3.7 s against 2.8-2.9 s for 256 MiB to 3 receivers).
 */
export async function openDataInput(
  o: DatagramInOptions,
  onDatagram: (b: Buffer) => void,
  onError: (e: Error) => void,
): Promise<DataInput> {
  const direct = await DirectIn.open(o, onDatagram, onError);
  if (direct.rcvbuf >= THREAD_BELOW) return direct;
  await direct.close();
  return DatagramIn.open(o, onDatagram, onError);
}

/** A granted receive buffer at least this big is read on the caller's thread. */
export const THREAD_BELOW = 4 * 1024 * 1024;

/** The data sockets read on the caller's thread. */
class DirectIn implements DataInput {
  readonly #socks: dgram.Socket[];
  readonly rcvbuf: number;
  readonly priority = null;

  private constructor(socks: dgram.Socket[]) {
    this.#socks = socks;
    this.rcvbuf = socks.reduce((a, s) => a + s.getRecvBufferSize(), 0);
  }

  static async open(
    o: DatagramInOptions,
    onDatagram: (b: Buffer) => void,
    onError: (e: Error) => void,
  ): Promise<DirectIn> {
    const n = o.ports ?? 1;
    // Several sockets: each turn's datagrams in the order they were sent (serial-order.ts).
    const order = n > 1 ? new SerialOrder(onDatagram) : null;
    const deliver = order ? (b: Buffer) => order.push(b) : onDatagram;
    const socks: dgram.Socket[] = [];
    try {
      for (let i = 0; i < n; i++) {
        const s = await openOne(o, o.port + i);
        socks.push(s);
        s.on('message', deliver);
        s.on('error', onError);
      }
    } catch (e) {
      for (const s of socks) s.close();
      throw e;
    }
    return new DirectIn(socks);
  }

  droppedDelta(): number {
    return 0;
  }

  async close(): Promise<void> {
    await Promise.all(
      this.#socks.map(
        (s) =>
          new Promise<void>((r) => {
            try {
              s.close(() => r());
            } catch {
              r();
            }
          }),
      ),
    );
  }
}

async function openOne(o: DatagramInOptions, port: number): Promise<dgram.Socket> {
  const s = dgram.createSocket({ type: 'udp4', reuseAddr: true });
  await new Promise<void>((resolve, reject) => {
    s.once('error', reject);
    s.bind(port, process.platform === 'linux' ? o.group : undefined, () => {
      s.off('error', reject);
      resolve();
    });
  }).catch((e: Error) => {
    s.close();
    throw new TransportError('E_CONNECT', `cannot listen for data on ${portsText(o)}: ${e.message}`);
  });
  try {
    s.addMembership(o.group, o.interface);
  } catch (e) {
    s.close();
    throw new TransportError(
      'E_CONNECT',
      `cannot join multicast group ${o.group} on ${o.interface ?? 'the default interface'}: ${(e as Error).message}`,
    );
  }
  try {
    s.setRecvBufferSize(shareOf(o));
  } catch {
    /* capped by net.core.rmem_max: read back what was granted */
  }
  return s;
}

export class DatagramIn implements DataInput {
  readonly #ctrl: Int32Array;
  readonly #ring: Buffer;
  readonly #worker: Worker;
  readonly #onDatagram: (b: Buffer) => void;
  #closed = false;
  #draining = false;
  /** Whether a drain is scheduled (a poll, or the rest of a long backlog). */
  #scheduled = false;
  #droppedSeen = 0;
  /** The receive buffer the kernel granted the thread's sockets, together. */
  readonly rcvbuf: number;
  readonly priority: PriorityOutcome;

  private constructor(
    sab: SharedArrayBuffer,
    ringBytes: number,
    worker: Worker,
    ready: InWorkerReady,
    onDatagram: (b: Buffer) => void,
  ) {
    this.#ctrl = new Int32Array(sab, 0, CTRL.INTS);
    this.#ring = Buffer.from(sab, RING_OFFSET, ringBytes);
    this.#worker = worker;
    this.rcvbuf = ready.rcvbuf;
    this.priority = ready.priority;
    this.#onDatagram = onDatagram;
  }

  /**
   * Binds, joins the group and starts the thread. `onDatagram` gets each datagram as a view of
   * the ring, valid only during the call (copy what must be kept). `onError` gets socket errors
   * after the start.
   */
  static async open(
    o: DatagramInOptions,
    onDatagram: (b: Buffer) => void,
    onError: (e: Error) => void,
  ): Promise<DatagramIn> {
    const ringBytes = o.ringBytes ?? DEFAULT_RING_BYTES;
    const sab = new SharedArrayBuffer(RING_OFFSET + ringBytes);
    const data: InWorkerData = {
      sab,
      ringBytes,
      group: o.group,
      port: o.port,
      ports: o.ports ?? 1,
      bindAddress: process.platform === 'linux' ? o.group : undefined,
      interface: o.interface,
      rcvbuf: shareOf(o),
      nice: READER_NICE,
    };
    const worker = new Worker(new URL('./datagram-in-worker.ts', import.meta.url), {
      workerData: data,
      execArgv: workerExecArgv(),
      // The thread only copies datagrams: a small heap keeps its isolate from adding tens of MiB.
      // Not too small an old generation: V8 caps the memory outside the heap (each datagram
      // Node reads is a buffer of its own there) at half of it, and past that cap runs a full
      // collection. At 16 MiB that was every ~85 ms at 800 Mbit/s, 10-20 % of this thread's
      // time (traced with --trace-gc); at 32 MiB a few a second, for ~15 MiB more RSS.
      resourceLimits: { maxYoungGenerationSizeMb: 1, maxOldGenerationSizeMb: 32 },
    });
    let self: DatagramIn | null = null;
    const ready = await new Promise<InWorkerReady>((resolve, reject) => {
      worker.on('message', (m: { t: string; stage?: string; message?: string }) => {
        if (m.t === 'ready') resolve(m as InWorkerReady);
        else if (m.t === 'failed') {
          const what =
            m.stage === 'membership'
              ? `cannot join multicast group ${o.group} on ${o.interface ?? 'the default interface'}`
              : `cannot listen for data on ${portsText(o)}`;
          reject(new TransportError('E_CONNECT', `${what}: ${m.message}`));
        } else if (m.t === 'data') self?.drain();
        else if (m.t === 'error' && self) onError(new Error(m.message));
      });
      worker.once('error', (e) =>
        reject(new TransportError('E_CONNECT', `the receiving thread failed: ${e.message}`)),
      );
    }).catch(async (e: unknown) => {
      await worker.terminate();
      throw e;
    });
    self = new DatagramIn(sab, ringBytes, worker, ready, onDatagram);
    worker.on('error', (e) => onError(e));
    self.drain();
    return self;
  }

  /** Datagrams the thread dropped for a full ring since the last call. */
  droppedDelta(): number {
    const now = Atomics.load(this.#ctrl, CTRL.DROPPED);
    const d = (now - this.#droppedSeen) | 0;
    this.#droppedSeen = now;
    return Math.max(0, d);
  }

  /** Hands every datagram in the ring to onDatagram, in batches. */
  drain(): void {
    if (this.#closed || this.#draining) return;
    this.#draining = true;
    const ring = this.#ring;
    const size = ring.length;
    let r = Atomics.load(this.#ctrl, CTRL.READ);
    let handled = 0;
    try {
      while (!this.#closed && handled < BATCH) {
        const w = Atomics.load(this.#ctrl, CTRL.WRITE);
        if (r === w) break;
        if (r + 4 > size || ring.readUInt32LE(r) === 0xffffffff) {
          r = 0;
          continue;
        }
        const len = ring.readUInt32LE(r);
        this.#onDatagram(ring.subarray(r + 4, r + 4 + len));
        r += recordSize(len);
        if (r === size) r = 0;
        Atomics.store(this.#ctrl, CTRL.READ, r);
        handled++;
      }
    } finally {
      this.#draining = false;
    }
    if (this.#closed) return;
    // A long backlog: let timers (STATUS) and the control socket run, then go on.
    if (handled >= BATCH) this.#drainLater(0);
    // Datagrams are flowing: look again shortly, unasked. Woken by the thread each time the ring
    // went from empty to not, both threads spent more on the wake-ups than on the datagrams
    // (profiled: about one per datagram at 800 Mbit/s); the ring holds far more than POLL_MS of a stream.
    else if (handled > 0) this.#drainLater(POLL_MS);
    else {
      // Empty: the thread's next write sends a notice. One written before this store sent none,
      // so the ring is looked at once more after it.
      Atomics.store(this.#ctrl, CTRL.NOTIFIED, 0);
      if (Atomics.load(this.#ctrl, CTRL.READ) !== Atomics.load(this.#ctrl, CTRL.WRITE)) this.#drainLater(0);
    }
  }

  /** One drain scheduled at a time, however many notices and polls asked for one. */
  #drainLater(ms: number): void {
    if (this.#scheduled) return;
    this.#scheduled = true;
    const run = (): void => {
      this.#scheduled = false;
      this.drain();
    };
    if (ms === 0) setImmediate(run);
    else setTimeout(run, ms);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const closed = new Promise<void>((resolve) => {
      this.#worker.on('message', (m: { t: string }) => {
        if (m.t === 'closed') resolve();
      });
      setTimeout(resolve, 500).unref();
    });
    this.#worker.postMessage({ t: 'close' });
    await closed;
    await this.#worker.terminate();
  }
}
