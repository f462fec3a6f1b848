/**
 * The server's side of discovery: it listens on the discovery group and tells each workstation
 * that asks where the HTTP API is, so a lab needs no configuration. The wire format and the
 * defaults are in src/api/discovery.ts.
 */
import dgram from 'node:dgram';
import { networkInterfaces } from 'node:os';
import {
  DiscoveryError,
  discoveryInterfaces,
  encodeDiscoveryReply,
  parseDiscoveryReply,
  parseDiscoveryRequest,
  type DiscoveryAnswer,
} from '../api/discovery.ts';
import { systemReason } from '../wording.ts';

export interface DiscoveryResponderOptions {
  group: string;
  port: number;
  /** One IPv4 address of this host to listen on; default every non-loopback interface. */
  interface?: string;
  /**
   * Builds the reply, or undefined to stay silent. `localAddress` is this host's address on
   * the requester's subnet (the one it can reach), undefined when it is on none of them.
   */
  answer: (
    from: { address: string; port: number },
    localAddress: string | undefined,
  ) => DiscoveryAnswer | undefined;
  log?: (line: string) => void;
}

export interface DiscoveryResponder {
  close(): Promise<void>;
}

/**
 * Interfaces can come up after the server (DHCP late at boot, a NIC plugged in): without a
 * fixed interface the responder looks for new ones this often and joins the group there too.
 */
const REJOIN_MS = 10_000;

/**
 * Listens on `group`:`port` and answers every well-formed request with a unicast reply to its
 * sender. Anything else is dropped without a word: the port is open to the whole subnet, and a
 * log line per junk datagram would let anyone fill the log. Throws DiscoveryError
 * (E_DISCOVERY_SOCKET) when the port cannot be bound or the given interface cannot join.
 */
export async function startDiscoveryResponder(opts: DiscoveryResponderOptions): Promise<DiscoveryResponder> {
  const { group, port } = opts;
  const log = opts.log ?? (() => {});
  const sock = dgram.createSocket({ type: 'udp4', reuseAddr: true });
  await new Promise<void>((resolve, reject) => {
    sock.once('error', reject);
    // Bound to the group (on Linux) so only datagrams sent to the group arrive, not unicast to the port.
    sock.bind(port, process.platform === 'linux' ? group : undefined, () => {
      sock.off('error', reject);
      resolve();
    });
  }).catch((err: unknown) => {
    sock.close();
    throw new DiscoveryError(
      'E_DISCOVERY_SOCKET',
      `cannot listen for discovery on ${group}:${port}: ${systemReason(err)}`,
      { group, port },
      { cause: err },
    );
  });
  // After bind, a failed send is reported to its callback; whatever else comes must not end the server.
  sock.on('error', (err) => log(`discovery: socket error: ${systemReason(err)}`));

  const joined = new Set<string>();
  const reported = new Set<string>();
  const join = (address: string): Error | undefined => {
    try {
      sock.addMembership(group, address);
    } catch (err) {
      // Still joined from before: the interface lost its address and got it back.
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') return err as Error;
    }
    joined.add(address);
    reported.delete(address);
    log(`discovery: listening on ${group}:${port} on ${address}`);
    return undefined;
  };

  let timer: NodeJS.Timeout | undefined;
  if (opts.interface !== undefined) {
    const err = join(opts.interface);
    if (err) {
      sock.close();
      throw new DiscoveryError(
        'E_DISCOVERY_SOCKET',
        `cannot join the discovery group ${group} on ${opts.interface}: ${
          // The kernel finds no interface with that address.
          (err as NodeJS.ErrnoException).code === 'ENODEV'
            ? 'it is not an IPv4 address of this host (ENODEV)'
            : systemReason(err)
        }`,
        { group, port, interface: opts.interface },
        { cause: err },
      );
    }
  } else {
    const joinAll = (): void => {
      const present = discoveryInterfaces();
      for (const a of joined) if (!present.includes(a)) joined.delete(a);
      for (const a of present) {
        if (joined.has(a)) continue;
        const err = join(a);
        if (err && !reported.has(a)) {
          reported.add(a);
          log(
            `discovery: cannot join ${group} on ${a}: ${systemReason(err)}; trying again every ${REJOIN_MS / 1000} s`,
          );
        }
      }
      if (joined.size > 0) reported.delete('');
      else if (!reported.has('')) {
        reported.add('');
        log(`discovery: no IPv4 interface to listen on yet; looking again every ${REJOIN_MS / 1000} s`);
      }
    };
    joinAll();
    timer = setInterval(joinAll, REJOIN_MS).unref();
  }

  sock.on('message', (datagram, rinfo) => {
    const id = parseDiscoveryRequest(datagram);
    if (id === undefined) return;
    const from = `${rinfo.address}:${rinfo.port}`;
    let answer: DiscoveryAnswer | undefined;
    try {
      answer = opts.answer({ address: rinfo.address, port: rinfo.port }, localAddressFor(rinfo.address));
    } catch (err) {
      log(`discovery: no answer to ${from}: ${systemReason(err)}`);
      return;
    }
    if (answer === undefined) return;
    const reply = encodeDiscoveryReply(id, answer);
    // The client parses with the same rules: a reply it would drop is a bug here, worth a line, not a datagram.
    if (!parseDiscoveryReply(reply)) {
      log(
        `discovery: no answer to ${from}: the reply (api ${JSON.stringify(answer.api)}) would be refused; ` +
          'the api must be an http(s) URL and the name at most 255 characters, the whole at most 512 bytes',
      );
      return;
    }
    sock.send(reply, rinfo.port, rinfo.address, (err) => {
      if (err) log(`discovery: cannot answer ${from}: ${systemReason(err)}`);
      else log(`discovery: told ${from} the API is at ${answer.api}`);
    });
  });

  let closing: Promise<void> | undefined;
  return {
    close() {
      clearInterval(timer);
      closing ??= new Promise<void>((resolve) => sock.close(() => resolve()));
      return closing;
    },
  };
}

/**
 * This host's IPv4 address on the same subnet as `remote` (the longest matching prefix when
 * subnets nest), which is the one the requester can reach without a router.
 */
function localAddressFor(remote: string): string | undefined {
  const r = toUint32(remote);
  if (r === undefined) return undefined;
  let best: { address: string; bits: number } | undefined;
  for (const list of Object.values(networkInterfaces())) {
    for (const e of list ?? []) {
      if (e.family !== 'IPv4') continue;
      const a = toUint32(e.address);
      const mask = toUint32(e.netmask);
      if (a === undefined || mask === undefined) continue;
      const bits = popcount(mask);
      if ((a & mask) >>> 0 === (r & mask) >>> 0 && (!best || bits > best.bits))
        best = { address: e.address, bits };
    }
  }
  return best?.address;
}

function popcount(n: number): number {
  let c = 0;
  for (let v = n >>> 0; v; v >>>= 1) c += v & 1;
  return c;
}

function toUint32(address: string): number | undefined {
  const parts = address.split('.');
  if (parts.length !== 4) return undefined;
  let n = 0;
  for (const p of parts) {
    const o = Number(p);
    if (!/^\d{1,3}$/.test(p) || o > 255) return undefined;
    n = n * 256 + o;
  }
  return n >>> 0;
}
