/**
 * Node gives every received datagram a fresh ArrayBuffer. The receiver copies it into
 * its chunk buffers at once, but V8 frees that external memory only when a collection
 * runs, which it starts by itself only after ~64 MiB of it: at line rate that was half
 * of a receiver's peak memory. A minor collection (a scavenge: the young objects are
 * almost all dead, so it costs well under a millisecond) every few MiB keeps the dead
 * datagrams to that much.
 *
 * The gc function comes from a throwaway context created while the flag that exposes
 * it is on; the flag is switched off again at once, so no other context sees a global gc.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

type GcFunction = (options?: { type?: 'major' | 'minor'; execution?: 'sync' | 'async' }) => void;

let gc: GcFunction | null | undefined;

function obtain(): GcFunction | null {
  const existing = (globalThis as { gc?: unknown }).gc;
  if (typeof existing === 'function') return existing as GcFunction;
  try {
    setFlagsFromString('--expose-gc');
    const fn: unknown = runInNewContext('gc');
    return typeof fn === 'function' ? (fn as GcFunction) : null;
  } catch {
    return null;
  } finally {
    setFlagsFromString('--no-expose-gc');
  }
}

/** Runs a minor collection; does nothing where V8 will not hand out its gc function. */
export function collectYoung(): void {
  gc ??= obtain();
  gc?.({ type: 'minor' });
}
