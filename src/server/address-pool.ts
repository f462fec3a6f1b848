/**
 * Each sending session gets its own multicast group and port pair (control TCP port P, data
 * UDP ports P + 1 to P + DATA_PORTS), so sessions running at once never see each other's
 * datagrams even on one group-unaware switch. The data ports of neighbouring slots overlap; the
 * groups keep them apart (a receiver binds its sockets to its session's group). Pure: slots are
 * numbered; slot i is the i-th group of the range and the i-th port pair.
 */
import { DATA_PORTS } from '../transport/index.ts';
import { ServerError } from './errors.ts';

export interface AddressRange {
  /** First group, e.g. 239.255.43.1. */
  firstGroup: string;
  /** First control port; the data ports are the DATA_PORTS above each control port. */
  firstPort: number;
  /** How many sessions can send at once. */
  slots: number;
}

export interface SessionAddress {
  slot: number;
  group: string;
  port: number;
}

function groupNumber(g: string): number {
  return g.split('.').reduce((n, p) => n * 256 + Number(p), 0) >>> 0;
}

function groupText(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/** Checks a range: admin-scoped groups (239/8) and ports that fit. */
export function checkRange(r: AddressRange): void {
  const first = groupNumber(r.firstGroup);
  const last = first + r.slots - 1;
  if (!/^\d+\.\d+\.\d+\.\d+$/.test(r.firstGroup) || first >>> 24 !== 239 || last >>> 24 !== 239) {
    throw new ServerError(
      'E_BAD_REQUEST',
      `the session groups ${r.firstGroup} + ${r.slots} must lie in 239.0.0.0/8`,
    );
  }
  // The last slot's control port is firstPort + 2 (slots - 1); its data ports follow it.
  const lastPort = r.firstPort + 2 * (r.slots - 1) + DATA_PORTS;
  if (!Number.isInteger(r.firstPort) || r.firstPort < 1024 || lastPort > 65535) {
    throw new ServerError(
      'E_BAD_REQUEST',
      `the session ports ${r.firstPort}..${lastPort} (control and data) must lie within 1024..65535`,
    );
  }
}

/** The lowest free slot's address, or undefined when every slot is taken. */
export function allocate(r: AddressRange, taken: ReadonlySet<number>): SessionAddress | undefined {
  for (let slot = 0; slot < r.slots; slot++) {
    if (!taken.has(slot)) return addressOf(r, slot);
  }
  return undefined;
}

export function addressOf(r: AddressRange, slot: number): SessionAddress {
  return { slot, group: groupText(groupNumber(r.firstGroup) + slot), port: r.firstPort + 2 * slot };
}
