/**
 * The sender's multicast socket, as datagram-out.ts opens it on the sender's thread and each
 * sending thread (datagram-out-worker.ts) opens it on its own.
 */
import dgram from 'node:dgram';

export interface DatagramOutOptions {
  /** Local address to send from (the multicast interface), or undefined for the default. */
  interface: string | undefined;
  ttl: number;
  group: string;
  port: number;
  /** Largest datagram that will be sent. */
  maxDatagram: number;
  /** SO_SNDBUF to ask for (the kernel doubles it for its overhead and caps it at net.core.wmem_max). */
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

/** Each socket's share of SEND_BUFFER_TOTAL when `sockets` send at once. */
export function sendBufferShare(sockets: number): number {
  return Math.max(32 << 10, Math.floor(SEND_BUFFER_TOTAL / Math.max(1, sockets)));
}

/** The multicast socket as the sender configures it. */
export async function openSocket(o: DatagramOutOptions, onError: (e: Error) => void): Promise<dgram.Socket> {
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
  await new Promise<void>((resolve) => udp.connect(o.port, o.group, () => resolve()));
  return udp;
}
