/**
 * The sender's multicast sockets, as datagram-out.ts opens them on the sender's thread and each
 * sending thread (datagram-out-worker.ts) opens them on its own: one per data port
 * (DATA_PORTS, packet.ts), connected to it, sent to in turn.
 */
import dgram from 'node:dgram';

export interface DatagramOutOptions {
  /** Local address to send from (the multicast interface), or undefined for the default. */
  interface: string | undefined;
  ttl: number;
  group: string;
  /** The first data port; datagrams are dealt over `ports` consecutive ones from it. */
  port: number;
  ports: number;
  /** Largest datagram that will be sent. */
  maxDatagram: number;
  /** SO_SNDBUF to ask for, for each socket (the kernel doubles it for its overhead and caps it at net.core.wmem_max). */
  sendBuffer: number;
}

/**
 * What all of a sender's sockets together ask for as SO_SNDBUF. Small on purpose: frames a
 * socket has sent stay charged to it while they wait in the interface's queue, so a socket
 * that may hold less than that queue is held back by a link slower than the sender (a 100
 * Mbit/s port, a shaped uplink) instead of overrunning the queue, which drops frames the
 * receivers then ask for again. Measured (bench:multicast's tbf rows, tbf latency 20ms, 3
 * receivers): with 16 MiB asked for, tbf dropped 1,670 frames at 400 Mbit/s and 3,333 at 100
 * Mbit/s; with this, none, and the goodput at 100 Mbit/s went from 87 % to 94 % of the link.
 * Charged at about twice the asking, it is ~220 full frames in flight, 2.7 ms of a 1 Gbit/s
 * link: enough to keep a NIC busy between the sender's turns.
 */
export const SEND_BUFFER_TOTAL = 256 << 10;

/**
 * Each socket's share of SEND_BUFFER_TOTAL when `sockets` send at once. A socket with less
 * than a datagram's worth still sends one datagram at a time (the kernel checks the limit
 * before a datagram, not within it).
 */
export function sendBufferShare(sockets: number): number {
  return Math.max(16 << 10, Math.floor(SEND_BUFFER_TOTAL / Math.max(1, sockets)));
}

/** One connected socket per data port, each datagram to the next. */
export class DataSockets {
  readonly #socks: dgram.Socket[];
  #next = 0;
  /** The socket whose datagrams wait in libuv for room in the kernel, -1 when none does. */
  #held = -1;

  private constructor(socks: dgram.Socket[]) {
    this.#socks = socks;
  }

  static async open(o: DatagramOutOptions, onError: (e: Error) => void): Promise<DataSockets> {
    const socks: dgram.Socket[] = [];
    try {
      for (let i = 0; i < o.ports; i++) socks.push(await openSocket(o, o.port + i, onError));
    } catch (e) {
      for (const s of socks) s.close();
      throw e;
    }
    return new DataSockets(socks);
  }

  send(datagram: Buffer | readonly Buffer[]): void {
    // A socket whose kernel buffer is full (a link slower than the sender) queues what it is
    // given; the next datagram on another socket would overtake those, and receivers would ask
    // again for what is only late. So while one socket queues, everything goes to it, in order.
    // Dealt round the sockets regardless, a session on a 100 Mbit/s link sent 8 MiB of needless
    // repairs (3,000-4,000 units asked for per receiver that all came).
    if (this.#held >= 0) {
      const held = this.#socks[this.#held] as dgram.Socket;
      if (held.getSendQueueCount() > 0) {
        held.send(datagram as Buffer);
        return;
      }
      this.#held = -1;
    }
    const i = this.#next;
    const s = this.#socks[i] as dgram.Socket;
    this.#next = i + 1 === this.#socks.length ? 0 : i + 1;
    // dgram copies a list into its own array, so callers may pass one reused list.
    s.send(datagram as Buffer);
    if (s.getSendQueueCount() > 0) this.#held = i;
  }

  /** Datagrams libuv holds for full socket buffers, over all the sockets. */
  queued(): number {
    let n = 0;
    for (const s of this.#socks) n += s.getSendQueueCount();
    return n;
  }

  close(done?: () => void): void {
    let open = this.#socks.length;
    for (const s of this.#socks) s.close(() => --open === 0 && done?.());
  }
}

/** A multicast socket as the sender configures it, connected to `port`. */
async function openSocket(
  o: DatagramOutOptions,
  port: number,
  onError: (e: Error) => void,
): Promise<dgram.Socket> {
  const udp = dgram.createSocket({ type: 'udp4' });
  await new Promise<void>((resolve, reject) => {
    udp.once('error', reject);
    udp.bind(0, o.interface, () => {
      udp.off('error', reject);
      resolve();
    });
  });
  udp.on('error', onError);
  if (o.interface) udp.setMulticastInterface(o.interface);
  udp.setMulticastTTL(o.ttl);
  udp.setMulticastLoopback(true);
  udp.setSendBufferSize(o.sendBuffer);
  // A connected socket skips the per-send address lookup Node does otherwise.
  await new Promise<void>((resolve) => udp.connect(port, o.group, () => resolve()));
  return udp;
}
