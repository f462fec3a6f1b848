/**
 * Datagrams of a session spread over several data ports (DATA_PORTS, sender.ts) come in over
 * one socket per port. The event loop reads each ready socket in turn, up to 32 datagrams at a
 * time, so after any pause of the reading thread what was sent in order comes out grouped by
 * socket, the first datagrams of the last socket behind the later ones of the others. Loss is
 * judged by gaps in the serials (arrivals.ts) within a horizon of a few datagrams, so such a
 * batch would read as loss. SerialOrder gathers what one turn of the event loop read from all
 * the sockets and hands it on sorted by serial at the end of that turn (setImmediate runs right
 * after the poll phase), which puts back the order the sender sent in.
 */
import { HEADER_SIZE, MAGIC } from './packet.ts';

/** The serial of a data-plane datagram (packet.ts: u32 at 24), or null for anything else. */
function serialOf(b: Buffer): number | null {
  return b.length >= HEADER_SIZE && b.readUInt16BE(0) === MAGIC ? b.readUInt32BE(24) : null;
}

export class SerialOrder {
  readonly #deliver: (b: Buffer) => void;
  #batch: Buffer[] = [];
  #scheduled = false;

  /** `deliver` gets every datagram pushed, once, in serial order within each turn. */
  constructor(deliver: (b: Buffer) => void) {
    this.#deliver = deliver;
  }

  /** Keeps `b` (which must stay valid until the end of this turn of the event loop). */
  push(b: Buffer): void {
    this.#batch.push(b);
    if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(this.#flush);
    }
  }

  readonly #flush = (): void => {
    this.#scheduled = false;
    const batch = this.#batch;
    this.#batch = [];
    if (batch.length > 1) sortBySerial(batch);
    for (const b of batch) this.#deliver(b);
  };
}

/**
 * Sorts datagrams by serial, in place and stably. Serials are compared as distances from the
 * first one's, so a batch across the u32 wrap keeps its order; datagrams without a serial
 * (stray or damaged ones, which the receiver counts and drops) go first.
 */
export function sortBySerial(batch: Buffer[]): void {
  // Mostly in order already (a reader that keeps up takes one datagram per socket per turn):
  // find out without allocating, as this runs for every datagram on the receiving thread.
  let ref: number | null = null;
  let last = -Infinity;
  let sorted = true;
  for (const b of batch) {
    const s = serialOf(b);
    if (s !== null) ref ??= s;
    const k = keyOf(s, ref);
    if (k < last) {
      sorted = false;
      break;
    }
    last = k;
  }
  if (sorted) return;
  ref = null;
  const keyed = batch.map((b, i) => {
    const s = serialOf(b);
    if (s !== null) ref ??= s;
    return { b, i, key: keyOf(s, ref) };
  });
  keyed.sort((x, y) => (x.key < y.key ? -1 : x.key > y.key ? 1 : x.i - y.i));
  for (let i = 0; i < batch.length; i++) batch[i] = (keyed[i] as { b: Buffer }).b;
}

/** Sort key: the serial's distance from `ref` (the first serial of the batch), -Infinity without one. */
function keyOf(serial: number | null, ref: number | null): number {
  return serial === null || ref === null ? -Infinity : (serial - ref) | 0;
}
