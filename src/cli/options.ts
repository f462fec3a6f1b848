/**
 * Checks of `imgcast send` and `img receive` option values, run by commander as it parses
 * them: a bad value is a usage error (exit 2) that names the option as typed, and nothing
 * (image, socket, target) has been opened yet. The transport checks again for its API
 * callers; these are the CLI's own, so a user never meets a transport error for a typo.
 */
import { InvalidArgumentError } from 'commander';
import { networkInterfaces } from 'node:os';
import { hostnameProblem } from '../engine/identity/names.ts';
import { MAX_CONTROL_PORT } from '../transport/packet.ts';

const OCTET = '(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])';
const IPV4 = new RegExp(`^${OCTET}\\.${OCTET}\\.${OCTET}\\.${OCTET}$`);

function octets(value: string): number[] | undefined {
  const m = IPV4.exec(value);
  return m ? m.slice(1, 5).map(Number) : undefined;
}

/**
 * `--group`: an IPv4 multicast address outside 224.0.0.0/24, where routers and switches
 * keep their own control traffic (OSPF, IGMP, mDNS…): a session there would be sent on
 * every link-local listener's group, and never leaves the subnet whatever the TTL.
 */
export function multicastGroup(value: string): string {
  const o = octets(value);
  if (!o || o[0]! < 224 || o[0]! > 239) {
    throw new InvalidArgumentError(
      'an IPv4 multicast address, 224.0.0.0 to 239.255.255.255 (239.x.x.x is meant for use inside one site)',
    );
  }
  if (o[0] === 224 && o[1] === 0 && o[2] === 0) {
    throw new InvalidArgumentError(
      '224.0.0.0/24 is reserved for local network control (routers, IGMP, mDNS); use a group in 239.0.0.0/8',
    );
  }
  return value;
}

/** `--ttl`: what IP_MULTICAST_TTL takes; 0 would keep every datagram on this host. */
export function multicastTtl(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < 1 || n > 255) {
    throw new InvalidArgumentError('a whole number of hops from 1 (this subnet only) to 255');
  }
  return n;
}

/**
 * `--interface`: one of this host's own IPv4 addresses. Multicast picks its interface by
 * address, so an interface name (eth0) or an address this host does not have cannot work.
 */
export function localIPv4(value: string): string {
  if (!octets(value)) {
    throw new InvalidArgumentError(
      `an IPv4 address of this host, not an interface name (${localAddresses()})`,
    );
  }
  const own = Object.values(networkInterfaces()).some((list) =>
    (list ?? []).some((a) => a.family === 'IPv4' && a.address === value),
  );
  if (!own)
    throw new InvalidArgumentError(
      `an IPv4 address of this host, which has no such address (${localAddresses()})`,
    );
  return value;
}

function localAddresses(): string {
  const all = Object.values(networkInterfaces())
    .flatMap((list) => list ?? [])
    .filter((a) => a.family === 'IPv4')
    .map((a) => a.address);
  return all.length > 0 ? `this host has ${all.join(', ')}` : 'this host has none';
}

const HOSTNAME = /^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/;

/** `--from HOST[:PORT]`: a host name or IPv4 address, and the sender's control port (send's --port). */
export function senderAddress(value: string): string {
  const m = /^([^:]*)(?::(.*))?$/.exec(value)!;
  const host = m[1]!;
  const port = m[2];
  const dotted = /^[0-9.]+$/.test(host);
  if (!HOSTNAME.test(host) || (dotted && !octets(host))) {
    throw new InvalidArgumentError('HOST or HOST:PORT, where HOST is a host name or an IPv4 address');
  }
  if (port !== undefined && (!/^\d+$/.test(port) || Number(port) < 1 || Number(port) > MAX_CONTROL_PORT)) {
    throw new InvalidArgumentError(
      `HOST or HOST:PORT, where PORT is the sender's --port, from 1 to ${MAX_CONTROL_PORT} (default 7747)`,
    );
  }
  return value;
}

/** A count of things that must be at least 1. */
export function positiveInteger(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < 1 || !Number.isSafeInteger(n)) {
    throw new InvalidArgumentError('a whole number, 1 or more');
  }
  return n;
}

/** A duration in seconds that may be 0. */
export function seconds(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < 0) {
    throw new InvalidArgumentError('a number of seconds, 0 or more');
  }
  return n;
}

/** `--identity NAME`: a host name (engine/identity/names.ts), refused before anything is restored. */
export function identityName(value: string): string {
  const problem = hostnameProblem(value);
  if (problem) throw new InvalidArgumentError(problem);
  return value;
}

/** A repeatable option's values, in the order given. */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}
