/**
 * What the server knows of the imaging environment it serves (bootenv.json, written by
 * `imgcast bootenv build`, see the network boot contract): an environment built by another
 * imgcast version may speak another API to this server, so the server says so at startup, in
 * its log and in its status, without refusing it (an administrator may mean it, for a while).
 *
 * Read synchronously and again only when the file changes: the status is made for every live
 * status event, and a rebuild while the server runs must clear the warning.
 */
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

export const BOOTENV_MANIFEST = 'bootenv.json';

/** Why the environment in `dir` does not fit a server of `version`, for the administrator; null when it does. */
export function bootenvProblem(manifestText: string | null, dir: string, version: string): string | null {
  if (manifestText === null) return null; // not built: the boot routes say so when a boot needs it
  let built: unknown;
  try {
    built = (JSON.parse(manifestText) as { imgcast?: unknown }).imgcast;
  } catch {
    return `the imaging environment in ${dir} has an unreadable ${BOOTENV_MANIFEST}: rebuild it (imgcast bootenv build)`;
  }
  if (typeof built !== 'string' || built === '')
    return `the imaging environment in ${dir} does not say which imgcast version it was built for: rebuild it (imgcast bootenv build)`;
  if (built === version) return null;
  return `the imaging environment in ${dir} was built for imgcast ${built}, this server is ${version}: network-booted workstations run img ${built} against it; rebuild it (imgcast bootenv build)`;
}

/** The warnings about the environment in `dir`, re-read when bootenv.json changes. */
export function bootenvWarnings(dir: string, version: string): () => string[] {
  const file = join(dir, BOOTENV_MANIFEST);
  let seen: string | undefined;
  let warnings: string[] = [];
  return () => {
    const s = statSync(file, { throwIfNoEntry: false });
    const key = s ? `${s.mtimeMs}:${s.size}:${s.ino}` : '';
    if (key !== seen) {
      seen = key;
      let text: string | null = null;
      try {
        text = s ? readFileSync(file, 'utf8') : null;
      } catch (err) {
        text = `unreadable: ${(err as Error).message}`;
      }
      const problem = bootenvProblem(text, dir, version);
      warnings = problem === null ? [] : [problem];
    }
    return warnings;
  };
}

/** The imgcast version the environment in `dir` was built for; null when it is not built or does not say. */
export function bootenvVersion(dir: string): string | null {
  try {
    const built = (JSON.parse(readFileSync(join(dir, BOOTENV_MANIFEST), 'utf8')) as { imgcast?: unknown })
      .imgcast;
    return typeof built === 'string' && built !== '' ? built : null;
  } catch {
    return null;
  }
}
