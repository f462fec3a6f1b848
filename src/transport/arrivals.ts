import { LOSS_HORIZON } from './packet.ts';

const ARRIVAL_RING = 1 << 16;

/**
 * Units the sender numbered against units that arrived, for the loss figures in STATUS (rx of
 * exp). A serial is judged only once LOSS_HORIZON later ones have been seen: with several
 * sending threads datagrams arrive out of order, by at most the sender's reorder window
 * (datagram-out.ts keeps that within LOSS_HORIZON units), and a unit overtaken by later
 * ones is late, not lost. Counted that way, reordering neither shrinks the sender's datagrams
 * nor slows it down. While one socket sends alone, in order, the sender says so (TICK's
 * horizon) and a gap is judged after LOSS_HORIZON_ORDERED units: at 100 Mbit/s the wide horizon
 * delayed every loss figure by a third of a second, and the rate control by as much.
 */
export class ArrivalCounter {
  readonly #seen = new Uint8Array(ARRIVAL_RING);
  /** The last serial judged, -1 before the first packet. */
  #judgedTo = -1;
  #rx = 0;
  #exp = 0;

  start(firstSerial: number): void {
    this.#judgedTo = firstSerial - 1;
  }

  arrived(serial: number, units: number): void {
    if (this.#judgedTo < 0) return;
    const last = serial + units - 1;
    // A jump past the ring (a long stall, or a forged serial) judges the oldest serials early.
    if (last - this.#judgedTo >= ARRIVAL_RING) this.#judge(last - ARRIVAL_RING + 1);
    for (let s = Math.max(serial, this.#judgedTo + 1); s <= last; s++) this.#seen[s & (ARRIVAL_RING - 1)] = 1;
  }

  /** Arrived and expected units judged since the last call. */
  take(maxSerial: number, horizon: number = LOSS_HORIZON): { rx: number; exp: number } {
    const to = maxSerial - horizon;
    if (this.#judgedTo >= 0 && to > this.#judgedTo) this.#judge(to);
    const r = { rx: Math.max(0, Math.min(this.#rx, this.#exp)), exp: this.#exp };
    this.#rx = 0;
    this.#exp = 0;
    return r;
  }

  #judge(to: number): void {
    const seen = this.#seen;
    for (let s = this.#judgedTo + 1; s <= to; s++) {
      const i = s & (ARRIVAL_RING - 1);
      if (seen[i]) {
        this.#rx++;
        seen[i] = 0;
      }
    }
    this.#exp += to - this.#judgedTo;
    this.#judgedTo = to;
  }
}
