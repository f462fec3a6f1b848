/**
 * The shared ring between datagram-in.ts and its thread (datagram-in-worker.ts): CTRL.INTS
 * int32 fields, then the ring. Each datagram is a record [u32 length][bytes], padded to 4
 * bytes; a length of 0xffffffff (or no room for one) at the end means "continue at 0". The
 * thread advances WRITE, the main thread READ; equal means empty.
 */
import type { PriorityOutcome } from './thread-priority.ts';

export const CTRL = {
  WRITE: 0,
  READ: 1,
  /** Datagrams the thread dropped for a full ring. */
  DROPPED: 2,
  /** 0 once the main thread found the ring empty: the thread's next write sets it to 1 and sends a notice. */
  NOTIFIED: 3,
  INTS: 4,
} as const;
export const RING_OFFSET = 16;

export interface InWorkerData {
  sab: SharedArrayBuffer;
  ringBytes: number;
  group: string;
  /** The first data port; the session's datagrams come in on `ports` consecutive ones. */
  port: number;
  ports: number;
  /** Address the socket binds to (the group on Linux keeps other groups on the port out). */
  bindAddress: string | undefined;
  interface: string | undefined;
  /** Receive buffer asked for each socket. */
  rcvbuf: number;
  /** Nice value the thread asks for itself (thread-priority.ts). */
  nice: number;
}

/** What the thread says once its sockets are open. */
export interface InWorkerReady {
  t: 'ready';
  /** The receive buffer granted, over all the sockets. */
  rcvbuf: number;
  /** The thread's priority: raised to `nice`, or why not. */
  priority: PriorityOutcome;
}

/** Bytes a datagram of `length` bytes takes in the ring. */
export function recordSize(length: number): number {
  return (4 + length + 3) & ~3;
}
