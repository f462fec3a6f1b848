/**
 * Raising the scheduling priority of the calling thread alone (Linux: setpriority on a thread's
 * id affects that thread, not its process).
 *
 * The receiving thread of datagram-in.ts is the only thing between the kernel's socket buffers
 * and a lost datagram. Where those buffers are small (the stock net.core.rmem_max: 8 sockets
 * of 208 KiB hold ~25 ms of a 500 Mbit/s stream) a thread that waits that long for a CPU, on a
 * host whose cores are all busy (its own main thread hashing and writing, the libuv pool, other
 * processes), loses datagrams although it has nothing else to do. A raised priority lets it
 * run as soon as data comes. It takes CAP_SYS_NICE (root); without it the thread keeps the
 * priority it has and the receive goes on.
 */
import { readlinkSync } from 'node:fs';
import { setPriority } from 'node:os';

/** The calling thread's kernel id (its task id), or null where /proc does not say. */
export function currentThreadId(): number | null {
  try {
    // "/proc/thread-self" links to "<pid>/task/<tid>".
    const tid = Number(readlinkSync('/proc/thread-self').split('/').pop());
    return Number.isInteger(tid) && tid > 0 ? tid : null;
  } catch {
    return null;
  }
}

export type PriorityOutcome = { raised: true; nice: number } | { raised: false; reason: string };

/** Sets the calling thread's nice value to `nice` (lower runs sooner). */
export function raiseThreadPriority(nice: number): PriorityOutcome {
  const tid = currentThreadId();
  if (tid === null) return { raised: false, reason: 'the thread id is unknown (no /proc/thread-self)' };
  try {
    setPriority(tid, nice);
    return { raised: true, nice };
  } catch (e) {
    // Node reports the errno in the message only (code ERR_SYSTEM_ERROR, info.code EACCES).
    const err = e as Error & { info?: { code?: string } };
    const denied = /^(EACCES|EPERM)$/.test(err.info?.code ?? '') || /\b(EACCES|EPERM)\b/.test(err.message);
    return { raised: false, reason: denied ? 'not allowed (needs root)' : err.message };
  }
}
