/**
 * The workstation's side of discovery: without --server, `img session` asks the discovery
 * group who the imaging server is and takes the first well-formed answer to its own question.
 * The wire format and the defaults are in src/api/discovery.ts.
 */
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import {
  DiscoveryError,
  discoveryInterfaces,
  encodeDiscoveryRequest,
  parseDiscoveryReply,
} from '../api/discovery.ts';
import { ImgcastError } from '../errors.ts';
import { systemReason } from '../wording.ts';
import { ClientError } from './errors.ts';

export interface DiscoverOptions {
  group: string;
  port: number;
  /** One IPv4 address of this host to ask from; default every non-loopback interface in turn. */
  interface?: string;
  /** How long to wait for an answer in all (default 2100 ms). */
  timeoutMs?: number;
  /** How many times to ask within that time, evenly spaced (default 3). */
  attempts?: number;
  signal?: AbortSignal;
}

export interface DiscoveredServer {
  /** Base URL of the server's HTTP API. */
  api: string;
  name: string;
  /** The address the answer came from. */
  from: string;
}

/**
 * Asks `group`:`port` for an imgcast server with TTL 1 (discovery is for this subnet; a site
 * with several subnets runs a server on each, or gives --server), again every
 * timeoutMs / attempts in case a datagram was lost. Throws ClientError E_NO_SERVER when nobody
 * answered in time, DiscoveryError E_DISCOVERY_SOCKET when no request could be sent at all,
 * and the signal's ImgcastError reason (or E_ABORTED) when aborted.
 */
export async function discoverServer(opts: DiscoverOptions): Promise<DiscoveredServer> {
  const { group, port, signal } = opts;
  const timeoutMs = opts.timeoutMs ?? 2100;
  const attempts = Math.max(1, Math.floor(opts.attempts ?? 3));
  const aborted = (): ImgcastError =>
    signal?.reason instanceof ImgcastError
      ? signal.reason
      : new ClientError('E_ABORTED', 'looking for the imgcast server was stopped');
  if (signal?.aborted) throw aborted();

  const id = randomBytes(8).toString('hex');
  const request = encodeDiscoveryRequest(id);
  const sources = opts.interface !== undefined ? [opts.interface] : discoveryInterfaces();
  const sock = dgram.createSocket('udp4');
  const sendErrors = new Map<string, string>();
  let sent = 0;

  try {
    await new Promise<void>((resolve, reject) => {
      sock.once('error', reject);
      sock.bind(0, () => {
        sock.off('error', reject);
        resolve();
      });
    }).catch((err: unknown) => {
      throw new DiscoveryError(
        'E_DISCOVERY_SOCKET',
        `cannot open a socket to look for the server: ${systemReason(err)}`,
        {},
        { cause: err },
      );
    });
    sock.setMulticastTTL(1);
    // A server on this same machine answers too.
    sock.setMulticastLoopback(true);

    return await new Promise<DiscoveredServer>((resolve, reject) => {
      let done = false;
      const timers: NodeJS.Timeout[] = [];
      const finish = (fn: () => void): void => {
        if (done) return;
        done = true;
        for (const t of timers) clearTimeout(t);
        signal?.removeEventListener('abort', onAbort);
        fn();
      };
      const onAbort = (): void => finish(() => reject(aborted()));
      signal?.addEventListener('abort', onAbort, { once: true });
      // Aborted while the socket was being bound: the event has been and gone.
      if (signal?.aborted) onAbort();
      sock.on('error', () => {
        // Errors of sends come to their callbacks; a late stray one changes nothing.
      });
      sock.on('message', (datagram, rinfo) => {
        const reply = parseDiscoveryReply(datagram);
        if (reply?.id !== id) return;
        finish(() => resolve({ api: reply.api, name: reply.name, from: rinfo.address }));
      });

      const ask = async (): Promise<void> => {
        // One interface at a time: the multicast interface is read when a datagram leaves, and
        // Node sends on a later tick, so setting the next one before the callback would move both.
        for (const source of sources.length > 0 ? sources : [undefined]) {
          if (done) return;
          try {
            if (source !== undefined) sock.setMulticastInterface(source);
            await new Promise<void>((ok, fail) =>
              sock.send(request, port, group, (e) => (e ? fail(e) : ok())),
            );
            sent++;
          } catch (err) {
            const notOurs = (err as NodeJS.ErrnoException).code === 'EADDRNOTAVAIL';
            sendErrors.set(
              source ?? 'the default interface',
              notOurs ? 'it is not an IPv4 address of this host (EADDRNOTAVAIL)' : systemReason(err),
            );
          }
        }
      };
      const noServer = (): void => {
        if (sent === 0) {
          finish(() =>
            reject(
              new DiscoveryError(
                'E_DISCOVERY_SOCKET',
                `cannot send a discovery request to ${group}:${port}: ${[...sendErrors].map(([a, e]) => `from ${a}: ${e}`).join('; ')}`,
                { group, port, errors: Object.fromEntries(sendErrors) },
              ),
            ),
          );
          return;
        }
        const seconds = Number((timeoutMs / 1000).toFixed(1));
        const where = sources.length > 0 ? ` (asked from ${sources.join(', ')})` : '';
        finish(() =>
          reject(
            new ClientError(
              'E_NO_SERVER',
              `no imgcast server answered on ${group}:${port} within ${seconds} s${where}; ` +
                'give the server with --server HOST[:PORT]',
              {
                group,
                port,
                timeoutMs,
                asked: sources,
                ...(sendErrors.size ? { sendErrors: Object.fromEntries(sendErrors) } : {}),
              },
            ),
          ),
        );
      };
      for (let i = 0; i < attempts; i++) {
        timers.push(setTimeout(() => void ask(), (i * timeoutMs) / attempts));
      }
      timers.push(setTimeout(noServer, timeoutMs));
    });
  } finally {
    sock.close();
  }
}
