/**
 * Units per datagram (k): a datagram carries k consecutive units of a chunk (packet.ts), from
 * 1 up to the --datagram-size limit (16 by default: 23132-byte datagrams, 16 frames at MTU
 * 1500, IP-fragmented). Bigger datagrams cut the per-datagram CPU cost at both ends, but one
 * lost frame loses all k units.
 *
 * Only frame loss argues for small datagrams. A k-unit datagram crosses a wire that loses p
 * of its frames with probability (1-p)^k, so the receivers' unit loss is turned back into p
 * (one unit more than seen, so a short clean sample is no proof of a clean wire) using the
 * recent average k. Whole-datagram loss after reassembly (a full socket buffer, a middlebox,
 * a receiver too busy to read) costs per datagram whatever k is; shrinking k for it multiplies
 * the datagrams a busy receiver must handle and the session spirals down. So loss the
 * receiver's kernel reports as socket-buffer overflow is left out, and as that loss does not
 * grow with k, the estimate of p it leaves is small at large k and k stays large. A receiver
 * reports overflow in datagrams; each report is turned into units at the size of the datagrams
 * sent just before it (the current k, or unitsPerDatagram of the last moments when k just
 * shrank), not at the window's average: the average trails after k grew (from 1 unit at the
 * start) and is pulled down by small repairs, and the part of the overflow it left uncounted
 * was taken for frame loss. In the 2-core lab that cut datagrams
 * of a clean wire from 16 units to 4-6 for a second at a time whenever several receivers
 * overflowed at once (42 datagrams of 16 units dropped = 672 units lost, counted as 42 x 10.7
 * = 449), and a transfer sent ~30 % more datagrams than it needed (bench:server).
 *
 * The choice is the largest k whose expected repairs stay within REPAIR_BUDGET x the bytes
 * the receivers lose (unitsForLoss; coded repairs make that about k / receivers, plain ones
 * about k), ignoring the worst receiver when there are 3 or more (one lossy receiver is the
 * drop policy's business; and no more than a tenth of them). k grows at most by doubling per
 * decision: a wrong guess at k = 16 fills the receivers' reassembly memory.
 *
 * IP reassembly memory: a datagram that lost a fragment stays in the receiving kernel's
 * reassembly queue for net.ipv4.ipfrag_time (30 s); once the queues hold ipfrag_high_thresh
 * the kernel drops every new fragmented datagram until some expire. Receivers report how full
 * it is; above FRAG_HIGH on any receiver k is 1 (no fragments) until all are below FRAG_LOW.
 *
 * Pure: reports in, k out.
 */

/** Repair bytes per byte the receivers lose that the datagram size aims at. */
const REPAIR_BUDGET = 2.2;
/** Repairs this small a share of the data are not worth smaller datagrams, whatever their ratio to the loss. */
const REPAIR_FLOOR = 0.002;
/** Units expected in a receiver's window before its loss counts (fewer say little). */
const K_MIN_UNITS = 200;
const FRAG_HIGH = 0.5;
const FRAG_LOW = 0.2;

/** One receiver's loss over the recent window. */
export interface SizeSample {
  /** Units that arrived and units the sender numbered, over the window. */
  rx: number;
  exp: number;
  /** Units in the datagrams its host dropped for a full socket buffer over the window (0 when unknown). */
  overflowUnits: number;
  /** Share of its host's IP reassembly memory in use, null when unknown. */
  frag: number | null;
}

export interface SizeDecision {
  k: number;
  /** A line for the log when something worth saying changed. */
  note: string | null;
}

export class DatagramSizer {
  #k = 1;
  #decided = false;
  #fragHold = false;
  /** Times the sender had to send unfragmented for full reassembly memory. */
  fragmentationPauses = 0;
  readonly #kMax: number;
  readonly #codingFits: (receivers: number) => boolean;

  /** `codingFits(n)`: whether a coded repair for n receivers fits the datagram size limit. */
  constructor(kMax: number, codingFits: (receivers: number) => boolean) {
    this.#kMax = kMax;
    this.#codingFits = codingFits;
  }

  /** Units per datagram now: 1 until the first reports say more is safe. */
  get k(): number {
    return this.#k;
  }

  /** Whether a report said enough to choose k yet. */
  get decided(): boolean {
    return this.#decided;
  }

  /** `kAvg`: units per datagram actually sent over the window the samples cover. */
  decide(samples: readonly SizeSample[], kAvg: number): SizeDecision {
    const notes: string[] = [];
    const fragHigh = samples.some((s) => (s.frag ?? 0) > FRAG_HIGH);
    if (fragHigh && !this.#fragHold) {
      this.#fragHold = true;
      this.fragmentationPauses++;
      const worst = samples.reduce((a, s) => Math.max(a, s.frag ?? 0), 0);
      notes.push(
        `a receiver's IP reassembly memory is ${Math.round(worst * 100)} % full (fragments lost on the way): ` +
          'sending unfragmented datagrams until it drains',
      );
    } else if (this.#fragHold && samples.every((s) => (s.frag ?? 0) <= FRAG_LOW)) {
      this.#fragHold = false;
      notes.push('reassembly memory drained: datagrams may be fragmented again');
    }
    const losses: number[] = [];
    for (const s of samples) {
      if (s.exp < K_MIN_UNITS) continue;
      // A report with rx above exp (a forged one) must not make the overflow negative.
      const overflowUnits = Math.max(0, Math.min(s.exp - s.rx, s.overflowUnits));
      losses.push(frameLoss(s.exp - s.rx - overflowUnits + 1, s.exp, kAvg));
    }
    // No receiver said enough: keep k (a quiet spell says nothing about the wire).
    if (losses.length === 0) return { k: this.#k, note: notes.join('; ') || null };
    this.#decided = true;
    losses.sort((a, b) => a - b);
    const n = losses.length;
    const considered = losses.slice(0, n - Math.max(n >= 3 ? 1 : 0, Math.floor(n / 10)));
    // What the ignored ones lose counts up to the worst of the rest: an outlier's loss must not
    // buy everyone bigger datagrams either.
    const cap = considered[considered.length - 1] as number;
    const lostByAll = losses.reduce((a, p) => a + Math.min(p, cap), 0);
    const kLoss = unitsForLoss(considered, lostByAll, this.#kMax, n >= 2 && this.#codingFits(n));
    const next = this.#fragHold ? 1 : Math.min(kLoss, 2 * this.#k);
    if (next !== this.#k) {
      notes.push(
        `datagrams of ${next} unit${next === 1 ? '' : 's'}: frame loss up to ${(cap * 100).toFixed(2)} % ` +
          `over ${considered.length} receiver${considered.length === 1 ? '' : 's'} (average ${kAvg.toFixed(1)} units sent)`,
      );
    }
    this.#k = next;
    return { k: next, note: notes.join('; ') || null };
  }
}

/** What the sender sent per housekeeping tick: [time, units, datagrams]. */
export type SentTick = readonly [number, number, number];

/**
 * Units per datagram of what was sent in the `windowMs` before `now` (the ticks in `history`,
 * plus `current`, the tick under way), or `fallback` when nothing was: the size of the datagrams
 * a receiver's overflow reported now most likely dropped.
 */
export function unitsPerDatagram(
  history: readonly SentTick[],
  current: SentTick,
  now: number,
  windowMs: number,
  fallback: number,
): number {
  let units = current[1];
  let datagrams = current[2];
  for (const [t, u, d] of history) {
    if (now - t > windowMs) continue;
    units += u;
    datagrams += d;
  }
  return datagrams > 0 ? Math.max(1, units / datagrams) : fallback;
}

/** Per-frame wire loss behind `lost` of `exp` units sent in datagrams of kAvg units on average. */
export function frameLoss(lost: number, exp: number, kAvg: number): number {
  const unitLoss = Math.min(1, Math.max(0, lost / exp));
  return 1 - Math.pow(1 - unitLoss, 1 / Math.max(1, kAvg));
}

/**
 * Units per datagram for receivers losing `losses` of their frames, `lost` frames per frame sent
 * over all of them: the most, up to kMax, whose expected repair bytes stay within
 * REPAIR_BUDGET x the bytes lost, or within REPAIR_FLOOR of the data when loss is that rare. A k-unit
 * datagram is lost with probability D = 1 - (1 - p)^k, and repairs are lost alike (1 / (1 - D)).
 * With coded repairs one datagram repairs a different run for each receiver, so repairs cost
 * about what the worst receiver misses; without them, what any receiver misses.
 */
export function unitsForLoss(losses: readonly number[], lost: number, kMax: number, coded: boolean): number {
  const budget = Math.max(REPAIR_BUDGET * lost, REPAIR_FLOOR);
  let best = 1;
  for (let k = 2; k <= kMax; k++) {
    const d = losses.map((p) => 1 - Math.pow(1 - p, k));
    const miss = coded ? Math.max(0, ...d) : 1 - d.reduce((a, x) => a * (1 - x), 1);
    if (miss >= 1 || miss / (1 - miss) > budget) break;
    best = k;
  }
  return best;
}
