/**
 * The discovery contract between `imgcast server` and `img session`: where a workstation
 * asks (a multicast group and port every lab can use without configuration) and the two
 * datagrams of the exchange. It lives here, below both sides, so neither imports the other;
 * each side checks what it receives with the same parser the other side's output must pass.
 *
 * request (workstation to group): {"imgcast":"discover","v":1,"id":"<16-64 hex>"}
 * reply   (server to requester):  {"imgcast":"server","v":1,"id":"<same>","api":"http://ADDR:PORT","name":"…"}
 */
import { networkInterfaces } from 'node:os';
import { ImgcastError, UsageError } from '../errors.ts';

/** In 239.255.0.0/16, the site-local scope RFC 2365 gives organisations; routers keep it in the site. */
export const DISCOVERY_GROUP = '239.255.42.250';
export const DISCOVERY_PORT = 7741;
/** Both datagrams stay far below any MTU: no fragments to lose, and a flood of junk costs little to reject. */
const DISCOVERY_MAX_BYTES = 512;

/**
 * Stable codes of discovery, on either side:
 * E_DISCOVERY_SOCKET  the discovery socket could not be opened, bound, joined to the group or sent from
 * (a bad IMGCAST_DISCOVERY is a UsageError; no server answering is the client's E_NO_SERVER)
 */
export class DiscoveryError extends ImgcastError {}

/** What a server says about itself: its HTTP API base URL, reachable from the requester, and its name. */
export interface DiscoveryAnswer {
  api: string;
  name: string;
}

const ID = /^[0-9a-f]{16,64}$/;
const OCTET = '(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])';
const IPV4 = new RegExp(`^${OCTET}\\.${OCTET}\\.${OCTET}\\.${OCTET}$`);

/**
 * The group and port both sides use: the defaults, or `IMGCAST_DISCOVERY=GROUP:PORT` for a
 * site that runs two imaging setups side by side or whose network reserves the default.
 * An empty value counts as unset. The group must be in 239.0.0.0/8: discovery is only
 * meant to reach the site, and any other multicast range either leaves it or is reserved.
 */
export function discoveryEndpoint(env: Record<string, string | undefined> = process.env): {
  group: string;
  port: number;
} {
  const value = env.IMGCAST_DISCOVERY?.trim();
  if (!value) return { group: DISCOVERY_GROUP, port: DISCOVERY_PORT };
  const bad = (why: string): UsageError =>
    new UsageError(`IMGCAST_DISCOVERY="${value}" is not GROUP:PORT: ${why}`, {
      variable: 'IMGCAST_DISCOVERY',
      value,
    });
  const m = /^([^:]+):(\d+)$/.exec(value);
  if (!m) throw bad(`write it as GROUP:PORT, for example ${DISCOVERY_GROUP}:${DISCOVERY_PORT}`);
  const o = IPV4.exec(m[1]!);
  if (!o || o[1] !== '239') {
    throw bad(
      'GROUP must be an IPv4 multicast address in 239.0.0.0/8 (the range meant for use inside a site)',
    );
  }
  const port = Number(m[2]);
  if (port < 1 || port > 65535) throw bad('PORT must be from 1 to 65535');
  return { group: m[1]!, port };
}

/**
 * Where both sides ask and listen when no interface is given: every IPv4 address of this
 * host outside loopback, one per interface, so a machine with several NICs is found on each.
 */
export function discoveryInterfaces(): string[] {
  const out: string[] = [];
  for (const list of Object.values(networkInterfaces())) {
    const a = (list ?? []).find((e) => e.family === 'IPv4' && !e.internal);
    if (a) out.push(a.address);
  }
  return out;
}

/** A discovery id: random, so a reply meant for another workstation's question is not taken. */
function isDiscoveryId(id: unknown): id is string {
  return typeof id === 'string' && ID.test(id);
}

export function encodeDiscoveryRequest(id: string): Buffer {
  return Buffer.from(JSON.stringify({ imgcast: 'discover', v: 1, id }));
}

/** The id of a well-formed request, or undefined for anything else (never throws). */
export function parseDiscoveryRequest(datagram: Buffer): string | undefined {
  const m = parseObject(datagram);
  if (!m || m.imgcast !== 'discover' || m.v !== 1 || !isDiscoveryId(m.id)) return undefined;
  return m.id;
}

export function encodeDiscoveryReply(id: string, answer: DiscoveryAnswer): Buffer {
  return Buffer.from(JSON.stringify({ imgcast: 'server', v: 1, id, api: answer.api, name: answer.name }));
}

/** A well-formed reply, or undefined for anything else (never throws). */
export function parseDiscoveryReply(datagram: Buffer): ({ id: string } & DiscoveryAnswer) | undefined {
  const m = parseObject(datagram);
  if (!m || m.imgcast !== 'server' || m.v !== 1 || !isDiscoveryId(m.id)) return undefined;
  if (typeof m.name !== 'string' || m.name.length > 255 || typeof m.api !== 'string' || !isApiUrl(m.api)) {
    return undefined;
  }
  return { id: m.id, api: m.api, name: m.name };
}

/** An http(s) base URL with a host, no credentials, query or fragment: what the client puts paths after. */
function isApiUrl(s: string): boolean {
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    return false;
  }
  return (
    (u.protocol === 'http:' || u.protocol === 'https:') &&
    u.hostname !== '' &&
    u.username === '' &&
    u.password === '' &&
    u.search === '' &&
    u.hash === '' &&
    !/\s/.test(s)
  );
}

function parseObject(datagram: Buffer): Record<string, unknown> | undefined {
  if (datagram.length === 0 || datagram.length > DISCOVERY_MAX_BYTES) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(datagram.toString('utf8'));
  } catch {
    return undefined;
  }
  return typeof value === 'object' && value !== null && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : undefined;
}
