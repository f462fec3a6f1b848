/**
 * Where the sender's datagrams leave: its own socket, or a socket on a thread of its own.
 *
 * Sending is the sender's largest cost, and most of it is the kernel's: fragmenting each
 * datagram and, on a host whose receivers are local (the lab's network namespaces, a VM
 * host), delivering every frame to them too, all on the thread that called send. One thread
 * doing all of it is the limit of a transfer of small datagrams. The threaded form adds
 * sending threads, each draining a ring of shared memory (datagrams copied in) into its own
 * socket, and deals datagrams over the caller's socket and the threads while spread is on, so
 * that work runs on several cores. Datagrams may then arrive out of order, within a bound
 * (reorderWindow) the sender and receivers allow for.
 */
import { Worker } from 'node:worker_threads';

import { workerExecArgv } from '../worker-argv.ts';
import {
  CLOSING,
  CTRL_BYTES,
  SENT,
  WRITTEN,
  type OutWorkerData,
  type OutWorkerMessage,
} from './datagram-out-layout.ts';
import { DataSockets, sendBufferShare, type DatagramOutOptions } from './datagram-out-socket.ts';
import { TransportError } from './errors.ts';
import { LOSS_HORIZON, MAX_UNITS } from './packet.ts';

export type { DatagramOutOptions } from './datagram-out-socket.ts';

export interface DatagramOut {
  /** Sends one datagram made of `parts`, in order after every earlier one. */
  send(parts: readonly Buffer[]): void;
  /** Datagrams accepted but not yet handed to the kernel. */
  backlog(): number;
  /** The backlog a sender should stop at until it shrinks. */
  readonly backlogLimit: number;
  /**
   * 0 when datagrams leave in the order sent; else how many later datagrams may be sent
   * before an earlier one has surely left the sender.
   */
  readonly reorderWindow: number;
  /** Whether `send` may still read buffers it was given after it returned (they must not be reused yet). */
  holdsBuffers(): boolean;
  /**
   * Whether to deal datagrams over the own socket and every sending thread, or keep to the own
   * socket. Measured in the lab (2 cores, 3 receivers, 512 MiB): dealing took 7-12 % off a
   * transfer of small datagrams (k = 6, as at 1 % loss), whose cost is mostly per datagram, and
   * gained nothing on full-size ones (k = 16). The order limit (reorderWindow) holds either way.
   */
  spread(on: boolean): void;
  /** Sends what is queued, then closes the socket. */
  close(): Promise<void>;
}

/** The most sending threads a sender may be given (each holds a ring and a socket). */
export const MAX_SEND_THREADS = 8;

/**
 * Sending threads beside the caller's own socket, by default: none on one core (it would only
 * add copies), else one. Each thread costs ~20 MiB (its own V8 isolate), and on the 2-core lab a
 * second one bought no more speed than the sender's memory target allowed.
 */
export function defaultSendThreads(cores: number): number {
  return cores >= 2 ? 1 : 0;
}

/**
 * `threads` 0: the caller's own socket only; else that plus that many sending threads (see
 * ThreadedOut). `onError` hears socket errors after the open (a send the kernel refused): they
 * are reported, not fatal, as one lost datagram is a repair away.
 */
export async function openDatagramOut(
  options: Omit<DatagramOutOptions, 'sendBuffer'>,
  threads: number,
  onError: (e: Error) => void,
): Promise<DatagramOut> {
  // Every socket sends: the caller's own and each thread's, one per data port each.
  const o = { ...options, sendBuffer: sendBufferShare((threads + 1) * options.ports) };
  return threads > 0 ? ThreadedOut.open(o, threads, onError) : DirectOut.open(o, onError);
}

function socketError(o: DatagramOutOptions, err: unknown): TransportError {
  return new TransportError(
    'E_CONNECT',
    `cannot open the multicast socket (${o.interface ?? 'default interface'} -> ${o.group}:${o.port}${o.ports > 1 ? `-${o.port + o.ports - 1}` : ''}): ${(err as Error).message ?? String(err)}`,
    { group: o.group, port: o.port },
  );
}

class DirectOut implements DatagramOut {
  readonly backlogLimit = DIRECT_BACKLOG;
  readonly reorderWindow = 0;
  readonly #udp: DataSockets;

  private constructor(udp: DataSockets) {
    this.#udp = udp;
  }

  static async open(o: DatagramOutOptions, onError: (e: Error) => void): Promise<DirectOut> {
    try {
      return new DirectOut(await DataSockets.open(o, onError));
    } catch (err) {
      throw socketError(o, err);
    }
  }

  send(parts: readonly Buffer[]): void {
    this.#udp.send(parts);
  }

  backlog(): number {
    return this.#udp.queued();
  }

  holdsBuffers(): boolean {
    return this.#udp.queued() > 0;
  }

  spread(): void {}

  async close(): Promise<void> {
    for (let i = 0; i < 100 && this.#udp.queued() > 0; i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    this.#udp.close();
  }
}

/** Datagrams libuv may hold for a full socket buffer before the sender waits (each keeps its buffers). */
const DIRECT_BACKLOG = 512;

/** About 2 MiB of datagrams in flight to the threads: enough to cover a pump turn, little enough to keep pacing close. */
const RING_BYTES = 2 << 20;

/** One sending thread and its ring. */
class Lane {
  readonly ctrl: Int32Array;
  readonly slots: Buffer[];
  readonly worker: Worker;
  readonly closed: Promise<void>;
  written = 0;
  failure: Error | null = null;

  private constructor(sab: SharedArrayBuffer, slots: Buffer[], worker: Worker, closed: Promise<void>) {
    this.ctrl = new Int32Array(sab, 0, 4);
    this.slots = slots;
    this.worker = worker;
    this.closed = closed;
  }

  static async open(
    o: DatagramOutOptions,
    ringBytes: number,
    maxSlots: number,
    onError: (e: Error) => void,
  ): Promise<Lane> {
    const slotBytes = 4 + o.maxDatagram;
    const count = Math.max(4, Math.min(maxSlots, Math.floor(ringBytes / slotBytes)));
    const sab = new SharedArrayBuffer(CTRL_BYTES + count * slotBytes);
    const slots: Buffer[] = [];
    for (let i = 0; i < count; i++) slots.push(Buffer.from(sab, CTRL_BYTES + i * slotBytes, slotBytes));
    const data: OutWorkerData = { sab, slots: count, slotBytes, options: { ...o } };
    const worker = new Worker(new URL('./datagram-out-worker.ts', import.meta.url), {
      workerData: data,
      execArgv: workerExecArgv(),
      // The thread only copies views of shared memory into its socket: a small heap keeps its
      // isolate from adding tens of MiB to the sender's memory.
      resourceLimits: { maxYoungGenerationSizeMb: 1, maxOldGenerationSizeMb: 16 },
    });
    let closedResolve!: () => void;
    const closed = new Promise<void>((r) => (closedResolve = r));
    const lane = new Lane(sab, slots, worker, closed);
    const fail = (e: Error): void => {
      lane.failure ??= e;
    };
    try {
      await new Promise<void>((resolve, reject) => {
        worker.on('message', (m: OutWorkerMessage) => {
          if (m.t === 'ready') resolve();
          else if (m.t === 'failed') reject(socketError(o, new Error(m.message)));
          else if (m.t === 'closed') closedResolve();
          else if (m.t === 'error') onError(new Error(m.message));
        });
        worker.once('error', (e) => {
          reject(socketError(o, e));
          fail(e);
          closedResolve();
        });
        worker.once('exit', () => {
          reject(socketError(o, new Error('the sending thread exited')));
          fail(new Error('the sending thread exited'));
          closedResolve();
        });
      });
    } catch (err) {
      await worker.terminate();
      throw err;
    }
    return lane;
  }

  backlog(): number {
    return (this.written - Atomics.load(this.ctrl, SENT)) | 0;
  }

  send(parts: readonly Buffer[]): void {
    if (this.failure) throw this.failure;
    // The caller keeps backlog() below the ring size; a full ring here is a bug, not backpressure.
    if (this.backlog() >= this.slots.length) throw new Error('datagram ring overrun');
    const slot = this.slots[this.written % this.slots.length] as Buffer;
    let at = 4;
    for (const p of parts) at += p.copy(slot, at);
    slot.writeUInt32LE(at - 4, 0);
    this.written = (this.written + 1) | 0;
    Atomics.store(this.ctrl, WRITTEN, this.written);
    Atomics.notify(this.ctrl, WRITTEN);
  }

  async close(): Promise<void> {
    Atomics.store(this.ctrl, CLOSING, 1);
    Atomics.notify(this.ctrl, WRITTEN);
    const timeout = new Promise<void>((r) => setTimeout(r, 2000).unref());
    await Promise.race([this.closed, timeout]);
    await this.worker.terminate();
  }
}

/**
 * Datagrams dealt round-robin over the caller's own socket (lane 0) and `threads` sending
 * threads. With more than one lane in use, datagrams may arrive out of order. No lane holds
 * more than `slots` datagrams (a thread's ring, or the socket's own libuv queue, which pump()
 * keeps as short), so a datagram has left the sender once every lane got that many more after
 * it: reorderWindow. The kernel can still hold one longer in a busy CPU's queue; past the
 * window, such a straggler costs at most a repair that was not needed (the receiver asked for
 * it, or counted it lost). Lane 0 alone (spread off) keeps the order.
 */
class ThreadedOut implements DatagramOut {
  readonly #direct: DirectOut;
  readonly #lanes: Array<DirectOut | Lane>;
  readonly backlogLimit: number;
  readonly reorderWindow: number;
  #next = 0;
  #dealt: number;

  private constructor(direct: DirectOut, threads: Lane[]) {
    this.#direct = direct;
    this.#lanes = [direct, ...threads];
    const slots = Math.min(...threads.map((l) => l.slots.length));
    this.backlogLimit = slots - 1;
    this.reorderWindow = this.#lanes.length * slots;
    this.#dealt = this.#lanes.length;
  }

  static async open(
    o: DatagramOutOptions,
    threads: number,
    onError: (e: Error) => void,
  ): Promise<ThreadedOut> {
    const opened = await Promise.allSettled([
      DirectOut.open(o, onError),
      // Receivers judge a unit lost only LOSS_HORIZON units after it: every lane's share of
      // that, in datagrams of up to MAX_UNITS, bounds its ring.
      ...Array.from({ length: threads }, () =>
        Lane.open(o, RING_BYTES / threads, Math.floor(LOSS_HORIZON / MAX_UNITS / (threads + 1)), onError),
      ),
    ]);
    const ok = opened.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const bad = opened.find((r) => r.status === 'rejected');
    if (bad) {
      await Promise.all(ok.map((l) => l.close()));
      throw bad.reason;
    }
    const [direct, ...lanes] = ok as [DirectOut, ...Lane[]];
    return new ThreadedOut(direct, lanes);
  }

  send(parts: readonly Buffer[]): void {
    const lane = this.#lanes[this.#next % this.#dealt] as DirectOut | Lane;
    this.#next = (this.#next + 1) % this.#lanes.length;
    lane.send(parts);
  }

  backlog(): number {
    let most = 0;
    for (const l of this.#lanes) most = Math.max(most, l.backlog());
    return most;
  }

  holdsBuffers(): boolean {
    // The threads copied what they got; the own socket's queue still points at its buffers.
    return this.#direct.holdsBuffers();
  }

  spread(on: boolean): void {
    this.#dealt = on ? this.#lanes.length : 1;
  }

  async close(): Promise<void> {
    await Promise.all(this.#lanes.map((l) => l.close()));
  }
}
