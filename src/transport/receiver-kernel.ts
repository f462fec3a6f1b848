/**
 * What a receiver asks of and reads from its host's kernel: the settings it changes for its
 * run (through kernel-tuning.ts, which undoes them) and the figures its STATUS reports.
 */
import { readFileSync } from 'node:fs';
import type { SysctlWant } from './kernel-tuning.ts';

/**
 * Host-wide kernel figures the sender needs to size datagrams (Linux /proc; this process's
 * network namespace). Reading them costs a few tens of microseconds, once per STATUS.
 */
export class KernelStats {
  #lastRcvbuf = -1;

  /**
   * Share of the reassembly memory in use: past 1 the kernel drops every new fragmented datagram.
   * The limit is read each time: the receive's kernel tuning raises it after this object exists.
   */
  fragShare(): number | null {
    try {
      const limit = Number(readFileSync('/proc/sys/net/ipv4/ipfrag_high_thresh', 'utf8').trim()) || 0;
      if (limit <= 0) return null;
      const m = /FRAG: inuse \d+ memory (\d+)/.exec(readFileSync('/proc/net/sockstat', 'utf8'));
      return m ? Math.round((Number(m[1]) / limit) * 1000) / 1000 : null;
    } catch {
      return null;
    }
  }

  /** Datagrams dropped for full receive buffers since the last call (null the first time or when unknown). */
  rcvbufDelta(): number | null {
    let now: number;
    try {
      const lines = readFileSync('/proc/net/snmp', 'utf8')
        .split('\n')
        .filter((l) => l.startsWith('Udp:'));
      const names = (lines[0] ?? '').split(/\s+/);
      now = Number((lines[1] ?? '').split(/\s+/)[names.indexOf('RcvbufErrors')]);
    } catch {
      return null;
    }
    if (!Number.isFinite(now)) return null;
    const prev = this.#lastRcvbuf;
    this.#lastRcvbuf = now;
    return prev < 0 ? null : Math.max(0, now - prev);
  }
}

/** The receive buffer asked for: several hundred milliseconds of data at LAN rates. */
export const WANT_RCVBUF = 32 * 1024 * 1024;

/**
 * The kernel settings a receive changes for its run (kernel-tuning.ts undoes them afterwards, or
 * the next run does after a crash): net.core.rmem_max, which caps SO_RCVBUF (212992 on most
 * distributions, about 4 ms of data at 500 Mbit/s), and with `reassembly` the IP reassembly
 * timeout and memory of this network namespace: a datagram that lost a fragment waits 1 s instead
 * of 30 s, and 32 MiB instead of 4 MiB hold the waiting ones, so lost fragments do not fill the
 * reassembly memory and force the sender down to unfragmented datagrams.
 */
export function receiveTuning(buffer: boolean, reassembly: boolean): SysctlWant[] {
  const wants: SysctlWant[] = [];
  if (buffer) wants.push({ name: 'net.core.rmem_max', atLeast: WANT_RCVBUF, perNamespace: false });
  if (reassembly) {
    wants.push(
      { name: 'net.ipv4.ipfrag_time', value: 1, perNamespace: true },
      { name: 'net.ipv4.ipfrag_high_thresh', atLeast: 32 * 1024 * 1024, perNamespace: true },
    );
  }
  return wants;
}
