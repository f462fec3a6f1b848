/**
 * Whether a waiting session should have its sender readied ahead of its trigger (a warm
 * sender: image open, chunk table read, sockets and sending thread up, listening on the
 * session's group and port, held by the transport's start gate), keep the one it has, or let
 * it go. Starting a sender at the trigger cost ~0.2 s on a busy server (bench:server: trigger
 * to first data 0.28 s) before any workstation could connect; readied while the lab gathers,
 * the trigger only opens the gate.
 *
 * It is readied as soon as its session waits, before anyone joined: readied at the first join,
 * the image and thread loading (~0.2 s) ran on the cores the gathering workstations were starting
 * on, and a trigger that came soon after (the last of a few workstations) still waited for it.
 * A warm sender holds a group and port, an open image and a thread (~40 MiB of memory) while
 * the lab gathers, so it is readied only for a session the server sends itself (a master
 * workstation's sender is its own), only while a slot is free and fewer than MAX_WARM other
 * sessions have one (MAX_WARM_IDLE for a session nobody joined yet, so that labs already
 * gathering find room; the rest start their sender at the trigger), and once per run: one that
 * ended before its trigger (it failed to ready, gave its slot to a session that had to start, or
 * its session's image or file set changed) is started at the trigger, as it would be without.
 * One whose session no longer sends what it reads goes. Pure.
 */
export type WarmAction = 'ready' | 'keep' | 'drop' | 'none';

/** Warm senders at most at once: labs gathering at the same time, each with a sender held ready. */
export const MAX_WARM = 4;
/** Warm senders at most, counting its own, that a session nobody joined yet may add to. */
export const MAX_WARM_IDLE = 2;

export interface WarmView {
  /** The server's send can be held by a gate (a scripted send in tests cannot). */
  capable: boolean;
  state: string;
  /** The master workstation that sends, or null when the server sends the image. */
  master: string | null;
  image: string;
  fileset: number;
  joined: number;
  /** What the session's warm sender reads, or null without one. */
  warm: { image: string; fileset: number } | null;
  /** A warm sender was readied earlier in this run. */
  readiedThisRun: boolean;
  /** A group and port are free besides those of sending sessions and warm senders. */
  slotFree: boolean;
  /** Warm senders other sessions hold (or that are still closing). */
  othersWarm: number;
}

export function warmAction(v: WarmView): WarmAction {
  const sendsImage = v.capable && v.state === 'waiting' && v.master === null && v.image !== '';
  if (v.warm !== null) {
    const same = v.warm.image === v.image && v.warm.fileset === v.fileset;
    return sendsImage && same ? 'keep' : 'drop';
  }
  const room = v.slotFree && v.othersWarm < (v.joined > 0 ? MAX_WARM : MAX_WARM_IDLE);
  return sendsImage && !v.readiedThisRun && room ? 'ready' : 'none';
}
