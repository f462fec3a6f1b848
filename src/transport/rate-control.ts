/**
 * The session's sending rate, decided once per tick from what the receivers say arrived.
 *
 * Loss alone is a poor guide on a LAN: a lossy wire loses 1 % at any rate, a receiver whose
 * socket buffer overflows loses more the faster it is fed, and cutting the rate on every loss
 * report drives a session down to its floor and keeps it there (the hang of issue #12: the
 * sender sat at 2 Mbit/s because the figure it cut on never fell). So the rate follows the
 * delivery rate instead, the way BBR does: what arrived at the typical receiver per second is
 * what the path (link, switch, receiver CPU) carries, whatever was lost on the way. The
 * sender paces at that rate, probes 10 % above it one tick in eight to find more, and after
 * two probes that got through whole goes back to doubling (startup), so a rate that fell
 * recovers in seconds once loss stops. Heavy loss (above LOSS_HIGH of the units sent) means
 * the sender is well past what the path carries: the estimate is reset to what arrived, and
 * the next tick drains the queue at 85 %.
 *
 * The typical receiver is the median one (the lower of the two middle ones): one slow
 * receiver neither slows everyone nor is followed; the drop policy deals with it.
 *
 * A lossy wire loses the same share at any rate, so what arrives is always short of what was
 * sent, and a rate set to what arrived would shrink by that share every cycle, down to the floor.
 * Congestion loss comes and goes with the probes while a wire's loss never stops, so the least
 * loss of the typical receiver over the last few cycles is taken as the wire's share: delivery
 * samples are scaled back up by it, and only loss above it counts as congestion. Ticks
 * where the sender sent less than it was allowed to (nothing to send, waiting for receivers'
 * windows) say little about the path: their samples may raise the estimate but not lower it.
 *
 * Pure: state and reports in, rate out; time comes in with each call.
 */

export interface RateSample {
  /** Payload megabits per second that arrived at one receiver over its reports of the tick. */
  deliveredMbit: number;
  /** Units lost / units expected in those reports, 0..1. */
  loss: number;
}

export interface RateOptions {
  /** Rate of the first tick, before anything arrived. */
  startMbit: number;
  /** Never below this: a session always makes progress, and a quiet spell cannot silence it. */
  minMbit: number;
  /** --rate; Infinity for no cap. */
  maxMbit: number;
}

export type RatePhase = 'startup' | 'cruise';

/** Loss of the typical receiver above which the sender is past what the path carries. */
export const LOSS_HIGH = 0.1;
/** Loss above which startup ends: doubling further would only overflow something. */
const LOSS_STARTUP_END = 0.03;
/** Loss above this is never taken for the wire's own: it is congestion, or a receiver to drop. */
const MAX_WIRE_LOSS = 0.3;
/** The wire's loss is the least over this long (two and a half cycles), once that many ticks were busy. */
const WIRE_WINDOW_MS = 4000;
const WIRE_MIN_TICKS = 8;
/**
 * A probe's loss, the worse of two ticks, is judged against this quantile of the window's
 * losses above the least: on a wire whose loss varies by chance the worse of two ticks lies
 * well above the window's median.
 */
const PROBE_QUANTILE = 0.75;
/** Delivery samples this recent make the estimate (its maximum). */
const BW_WINDOW_MS = 2000;
const STARTUP_GAIN = 2;
/**
 * Growth per tick when probes found room after a spell at a known rate: a quarter, not double,
 * since a path that carried one rate a moment ago is seldom twice as wide now, and doubling on
 * a 100 Mbit/s link queues a whole tick's worth of excess.
 */
const REGROW_GAIN = 1.25;
const PEAK_DECAY = Math.pow(0.5, 200 / 30_000);
/** Loss above the wire's in either tick of a probe means it found no room. */
const PROBE_CLEAN = 0.01;
/** One tick of probing, one of draining what the probe queued, then six at the estimate. */
const CYCLE = [1.1, 0.9, 1, 1, 1, 1, 1, 1];
const DRAIN_GAIN = 0.85;
/** A probe whose delivery reached this share of its gain found room. */
const PROBE_FOUND = 0.4;
/** Startup ends after this many ticks without the delivery growing by a quarter. */
const PLATEAU_TICKS = 3;
/** A tick where the sender used less than this share of its allowance is limited by the sender. */
const APP_LIMITED = 0.8;
/**
 * A cut for heavy loss is followed by another only if the loss fell below this share of what it
 * was: loss that stays after the rate was cut is not the rate's doing but a lossy wire whose
 * share is not learnt yet (WIRE_MIN_TICKS). Cutting on it tick after tick took the rate from
 * 200 to 50 Mbit/s in six ticks on a wire that loses 15 % at any rate.
 */
const CUT_STILL = 0.75;
/** How long after a cut its loss is remembered. */
const CUT_MEMORY_MS = 1000;
/**
 * In startup, loss at most this far above the least seen since the datagram size last changed
 * did not come with the rate: doubling past a path loses a third or more of what is sent, and
 * the 1.25 steps of a regrowth a fifth, while a lossy wire's share moves by a couple of points
 * from tick to tick whatever the rate.
 */
const STARTUP_FLAT_LOSS = 0.05;

export class RateControl {
  #rate: number;
  #phase: RatePhase = 'startup';
  readonly #opts: RateOptions;
  #samples: Array<[number, number]> = [];
  #cycle = 0;
  #foundRoom = 0;
  #plateauBw = 0;
  #plateauTicks = 0;
  #drain = false;
  #lossyTicks = 0;
  #prevDelivered = 0;
  #prevLoss = 0;
  /** The estimate when probes sent the rate growing again (0 in the first startup). */
  #regrowFrom = 0;
  /** The highest estimate lately, halving every 30 s. */
  #peak = 0;
  #probeBase = 0;
  #lastTick: number | null = null;
  /** The typical receiver's loss that never goes away (a lossy wire), 0..MAX_WIRE_LOSS. */
  #wireLoss = 0;
  /** How far the typical tick's loss lies above #wireLoss by chance alone (the window's median above its least). */
  #wireNoise = 0;
  /** How far the worse of two ticks lies above #wireLoss by chance (PROBE_QUANTILE of the window above its least). */
  #probeNoise = 0;
  #losses: Array<[number, number]> = [];
  /** The last cut for heavy loss: when, and the typical receiver's loss that caused it. */
  #cut: { at: number; loss: number } | null = null;
  /** Units per datagram at the last tick, and the least loss of the typical receiver in startup since it changed. */
  #unitsPerDatagram = 0;
  #startupLeast = Infinity;

  constructor(opts: RateOptions) {
    this.#opts = opts;
    this.#rate = this.#clamp(opts.startMbit);
  }

  get rateMbit(): number {
    return this.#rate;
  }

  get phase(): RatePhase {
    return this.#phase;
  }

  /** The share of units the typical receiver loses even when nothing queues. */
  get wireLoss(): number {
    return this.#wireLoss;
  }

  /** The delivery-rate estimate: the most that arrived at the typical receiver per tick lately (wire loss added back). */
  bandwidth(now: number): number {
    let best = 0;
    for (const [t, bw] of this.#samples) if (now - t <= BW_WINDOW_MS && bw > best) best = bw;
    return best;
  }

  /**
   * One decision. `sentMbit` is what the sender put on the wire over the tick; `samples` has one
   * entry per receiver that reported during it (none: nothing is learned, the rate stays).
   * `unitsPerDatagram` is the datagram size now: a wire's share of lost units grows with it.
   */
  tick(now: number, sentMbit: number, samples: readonly RateSample[], unitsPerDatagram = 1): number {
    if (unitsPerDatagram !== this.#unitsPerDatagram) {
      this.#unitsPerDatagram = unitsPerDatagram;
      this.#startupLeast = Infinity;
    }
    const appLimited = sentMbit < APP_LIMITED * this.#rate;
    // Idle or held-back ticks measure nothing: the estimate they would let expire still holds.
    if (appLimited) this.#shift(now);
    this.#samples = this.#samples.filter(([t]) => now - t <= BW_WINDOW_MS);
    this.#lastTick = now;
    if (samples.length === 0) return this.#rate;
    const rawLoss = median(samples.map((s) => s.loss));
    // An outage says nothing about the wire's own share. Heavy loss does count: the least of the
    // window is taken, so congestion (which backing off ends) never sets it, while a wire that
    // loses more than LOSS_HIGH at any rate (1 % of frames in 16-frame datagrams is 15 %) would
    // otherwise read as overshoot every tick and hold the rate at its floor.
    if (!appLimited && rawLoss <= MAX_WIRE_LOSS) this.#losses.push([now, rawLoss]);
    this.#losses = this.#losses.filter(([t]) => now - t <= WIRE_WINDOW_MS);
    const recent = this.#losses.map(([, l]) => l);
    const enough = recent.length >= WIRE_MIN_TICKS;
    this.#wireLoss = enough ? Math.min(MAX_WIRE_LOSS, ...recent) : 0;
    this.#wireNoise = enough ? Math.max(0, Math.min(MAX_WIRE_LOSS, median(recent)) - this.#wireLoss) : 0;
    this.#probeNoise = enough
      ? Math.max(0, Math.min(MAX_WIRE_LOSS, quantile(recent, PROBE_QUANTILE)) - this.#wireLoss)
      : 0;
    const delivered = median(samples.map((s) => s.deliveredMbit)) / (1 - this.#wireLoss);
    const loss = Math.max(0, rawLoss - this.#wireLoss);
    const before = this.bandwidth(now);
    // In startup, what arrived growing by a quarter or more, and most of what was sent arriving,
    // says the path took the extra rate: loss that does not stop delivery from growing is the
    // wire's (its share is learnt only after WIRE_MIN_TICKS; ending startup on it left a 1 %
    // frame-loss wire at a fifth of its path for seconds). Past the path, delivery can still grow
    // for a tick (reports lag), but by then a third or more of what was sent is lost.
    const growing =
      this.#phase === 'startup' &&
      this.#plateauBw > 0 &&
      delivered >= this.#plateauBw * 1.25 &&
      delivered >= (1 - MAX_WIRE_LOSS) * sentMbit;

    const lastCut = this.#cut !== null && now - this.#cut.at <= CUT_MEMORY_MS ? this.#cut : null;
    const notTheRate = lastCut !== null && rawLoss <= MAX_WIRE_LOSS && rawLoss >= CUT_STILL * lastCut.loss;
    if (
      loss > LOSS_HIGH &&
      !appLimited &&
      !growing &&
      !notTheRate &&
      this.#phase === 'startup' &&
      this.#lossyTicks === 0
    ) {
      // One bad tick in startup is often the datagrams still growing from one unit (costly per
      // byte for the receivers): hold the rate and look again before believing it.
      this.#lossyTicks = 1;
      return this.#rate;
    }
    if (loss > LOSS_HIGH && !appLimited && !growing && !notTheRate) {
      this.#lossyTicks = 0;
      this.#cut = { at: now, loss: rawLoss };
      // Past what the path carries: what did arrive is the best measure of it, except that a
      // regrowth that overshot falls back no lower than where it started (what arrived in the
      // tick of the overshoot is an underestimate: reports of a flooded path come late).
      const base = Math.max(delivered, this.#regrowFrom * 0.95);
      this.#regrowFrom = 0;
      this.#samples = [[now, base]];
      this.#phase = 'cruise';
      this.#drain = true;
      this.#foundRoom = 0;
      // Probe right after the drain: if the loss was a passing spell, the rate comes back soon.
      this.#cycle = CYCLE.length - 1;
      this.#rate = this.#clamp(base * DRAIN_GAIN);
      return this.#rate;
    }
    if (!appLimited || delivered > before) this.#samples.push([now, delivered]);
    const bw = Math.max(this.bandwidth(now), this.#opts.minMbit);
    this.#peak = Math.max(this.#peak * PEAK_DECAY, bw);

    if (this.#phase === 'startup') {
      if (delivered >= this.#plateauBw * 1.25) {
        this.#plateauBw = delivered;
        this.#plateauTicks = 0;
      } else if (!appLimited) {
        this.#plateauTicks++;
      }
      // Loss that stayed where it was while the rate grew is the wire's, not the rate's: ending
      // startup on it, before the wire's share is learnt, cut a 1 % frame-loss session to half
      // of what it had reached whenever delivery had not kept growing (the receivers' first
      // chunks waiting for repairs, or a sender at the end of its CPU), and probes took seconds
      // to win it back (bench:multicast, 1 % frame loss, 200-380 Mbit/s on a path of 500).
      // (The first tick at a new datagram size has nothing to compare with: it counts as before.)
      const flat = Number.isFinite(this.#startupLeast) && rawLoss <= this.#startupLeast + STARTUP_FLAT_LOSS;
      this.#startupLeast = Math.min(this.#startupLeast, rawLoss);
      this.#lossyTicks = loss > LOSS_STARTUP_END && !growing && !flat ? this.#lossyTicks + 1 : 0;
      // Two lossy ticks, not one: the first ticks' figures are few and the datagram size still moving.
      if (this.#lossyTicks >= 2 || this.#plateauTicks >= PLATEAU_TICKS) {
        this.#phase = 'cruise';
        this.#regrowFrom = 0;
        this.#cycle = 1;
        this.#rate = this.#clamp(bw * (CYCLE[1] as number));
        return this.#rate;
      }
      // Far below what the path carried lately (an outage, a burst of loss that passed): double
      // back up; near it, creep.
      const grow = this.#regrowFrom > 0 && bw >= this.#peak / 2 ? REGROW_GAIN : STARTUP_GAIN;
      this.#rate = this.#clamp(Math.max(this.#rate, bw * grow));
      return this.#rate;
    }

    // Cruise. The tick that just ended ran at gain CYCLE[cycle]. A probe is judged one tick
    // later, on the better of the two ticks: receivers report every 100 ms, so what a probe
    // delivered arrives partly in the tick after it.
    const gain = this.#drain ? DRAIN_GAIN : (CYCLE[this.#cycle] as number);
    const probed = !this.#drain && this.#cycle === 1;
    const probeDelivered = Math.max(delivered, this.#prevDelivered);
    const probeLoss = Math.max(loss, this.#prevLoss);
    this.#prevDelivered = delivered;
    this.#prevLoss = loss;
    // The probe is compared with what arrived typically before it, not with the best of the
    // window: on a wire whose loss varies by chance that best is chance too, and a probe that
    // found room was judged short of it.
    if (gain > 1) this.#probeBase = this.#typicalDelivery(now) || before;
    // A lossy wire's loss varies from tick to tick (1 % of frames is ~6 % of 6-frame datagrams,
    // ±1.5 % by chance): a probe whose loss is only that far above the least of the window
    // found no congestion. Judged against the least alone, nearly every probe failed and the
    // rate crept up 5 % a cycle (bench:multicast, 1 % frame loss: 400-500 Mbit/s on a path
    // that carried 800).
    if (probed && probeLoss <= PROBE_CLEAN + this.#probeNoise && this.#probeBase > 0) {
      const probeGain = CYCLE[0] as number;
      this.#foundRoom =
        probeDelivered >= this.#probeBase * (1 + (probeGain - 1) * PROBE_FOUND) ? this.#foundRoom + 1 : 0;
      if (this.#foundRoom >= 2) {
        // Two probes in a row got through whole: the path has much more room (loss stopped,
        // another session ended); find it by doubling rather than 10 % per cycle.
        this.#phase = 'startup';
        this.#plateauBw = delivered;
        this.#plateauTicks = 0;
        this.#foundRoom = 0;
        this.#regrowFrom = bw;
        this.#rate = this.#clamp(bw * (bw >= this.#peak / 2 ? REGROW_GAIN : STARTUP_GAIN));
        return this.#rate;
      }
    }
    this.#drain = false;
    this.#cycle = (this.#cycle + 1) % CYCLE.length;
    // Moderate loss (a lossy wire, or a receiver near its limit): no probing until it eases.
    const next = CYCLE[this.#cycle] as number;
    // (A wire's tick-to-tick spread is not moderate loss: the same allowance as a probe's.)
    this.#rate = this.#clamp(bw * (loss > LOSS_STARTUP_END + this.#wireNoise ? Math.min(1, next) : next));
    return this.#rate;
  }

  /** The median delivery sample of the window (0 without any). */
  #typicalDelivery(now: number): number {
    return median(this.#samples.filter(([t]) => now - t <= BW_WINDOW_MS).map(([, bw]) => bw));
  }

  /** Moves the samples' times forward by the time since the last tick, keeping their age. */
  #shift(now: number): void {
    if (this.#lastTick === null) return;
    const by = now - this.#lastTick;
    this.#samples = this.#samples.map(([t, bw]) => [t + by, bw]);
  }

  #clamp(mbit: number): number {
    return Math.min(this.#opts.maxMbit, Math.max(this.#opts.minMbit, mbit));
  }
}

/** The value with a share `q` (0..1) of the others below it, the lower one between two. */
export function quantile(values: readonly number[], q: number): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) * q)] ?? 0;
}

/** The median, the lower of the two middle values for an even count. */
export function median(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)] ?? 0;
}
