/**
 * The rings between datagram-out.ts and its sending threads (datagram-out-worker.ts), and what
 * they tell each other. A ring is CTRL_BYTES of int32 counters, then `slots` slots of
 * [u32 length][datagram]. WRITTEN and SENT count datagrams (wrapping int32): slot i holds
 * datagram number i % slots.
 */
import type { DatagramOutOptions } from './datagram-out-socket.ts';

export const WRITTEN = 0;
export const SENT = 1;
export const CLOSING = 2;
export const CTRL_BYTES = 16;

export interface OutWorkerData {
  sab: SharedArrayBuffer;
  slots: number;
  slotBytes: number;
  options: DatagramOutOptions;
}

/** Thread to main: its socket is open (ready) or could not be (failed), a send failed (error), it closed. */
export type OutWorkerMessage =
  { t: 'ready' } | { t: 'failed'; message: string } | { t: 'error'; message: string } | { t: 'closed' };
