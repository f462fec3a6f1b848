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
  // The kernel caps SO_SNDBUF at net.core.wmem_max (often 208 KiB-4 MiB); try big, settle for what it allows.
  for (const size of [16 << 20, 4 << 20, 1 << 20]) {
    try {
      udp.setSendBufferSize(size);
      break;
    } catch {
      /* try smaller */
    }
  }
  // A connected socket skips the per-send address lookup Node does otherwise.
  await new Promise<void>((resolve) => udp.connect(o.port, o.group, () => resolve()));
  return udp;
}
