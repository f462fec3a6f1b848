/**
 * What a network-booting workstation is told: boot the imaging environment ("image") or its
 * own disk ("local"), with the reason in words. Pure: the caller gives what the server knows.
 *
 * Labs stay network-first for good, so "image" must mean there is work for this machine now:
 * a task queued for it always is; an automatic session that takes it is, unless it already
 * imaged this workstation successfully after the session's definition last changed (otherwise
 * every reboot of an imaged lab would image it again). The session's master workstation is held
 * to the same rule: once a run it sent succeeded, it boots its disk too, or a network-first
 * master would send its disk again on every boot; unless workstations have joined the session
 * and wait for it (a new or failed workstation's next run has no other way to get its master).
 * A MAC the server has never seen is
 * imaged when a session's rules take it by what a boot request shows (its MAC, its address): it
 * registers itself once img auto runs in the environment.
 */
import type { Choice } from './participation.ts';

export interface BootFacts {
  /** The MAC as the firmware gave it. */
  mac: string;
  /** The workstation is registered or created on the server. */
  known: boolean;
  /** What it would do when it asks (chooseWork: a task first, then the automatic sessions). */
  choice: Choice;
  /** When the chosen session last imaged this workstation successfully; null: never. */
  imagedAt: number | null;
  /** When the chosen session's definition (what it puts on a disk, who takes part) last changed. */
  definedAt: number | null;
  /** Workstations joined to the chosen session that still wait for it (for its master, when it has one). */
  joinedWaiting?: number;
}

export type BootDecision =
  { action: 'image'; session: string; why: string } | { action: 'local'; session: null; why: string };

export function decideBoot(f: BootFacts): BootDecision {
  const c = f.choice;
  if (c.session === null) {
    return {
      action: 'local',
      session: null,
      why: f.known
        ? `nothing queued for it: ${c.why}`
        : `unknown workstation ${f.mac} matching no rule: ${c.why}`,
    };
  }
  if (c.task === true) return { action: 'image', session: c.session, why: `task ${c.session}: ${c.why}` };
  const master = c.role === 'master';
  if (f.imagedAt !== null && (f.definedAt === null || f.imagedAt >= f.definedAt)) {
    const at = new Date(f.imagedAt).toISOString();
    const waiting = f.joinedWaiting ?? 0;
    if (!master) {
      return {
        action: 'local',
        session: null,
        why: `already imaged by ${c.session} (${at}) and the session has not changed since`,
      };
    }
    if (waiting === 0) {
      return {
        action: 'local',
        session: null,
        why: `master of ${c.session}, whose run it sent succeeded (${at}); the session has not changed since and no workstation waits for it`,
      };
    }
    return {
      action: 'image',
      session: c.session,
      why: `${c.why}; ${waiting} workstation(s) joined ${c.session} and wait for their master`,
    };
  }
  if (master) return { action: 'image', session: c.session, why: c.why };
  return {
    action: 'image',
    session: c.session,
    why: f.known ? c.why : `${c.why}; not registered yet: it registers when img auto runs`,
  };
}
