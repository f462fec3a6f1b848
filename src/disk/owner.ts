/**
 * Which imgcast run made a mount point, a staging folder or a loop device, so that the
 * next run can undo what a killed one (SIGKILL, a crash, a power cut of the process)
 * left behind without touching what a run still alive is using.
 *
 * A run is named by its pid and its start time in clock ticks since boot (field 22 of
 * /proc/PID/stat): a pid alone is reused, the pair is not while the machine is up, and
 * everything named here (mounts, loop devices, /run) is gone after a reboot anyway.
 * Folders carry that tag in their name; loop devices, which have no name of our
 * choosing, get a record in STATE_DIR/loops from attach to detach.
 */
import { mkdir, mkdtemp, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';

/** A run's tag: "<pid>.<start ticks>". */
export type RunTag = string;

function startTicks(statLine: string): string | undefined {
  // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
  const rest = statLine.slice(statLine.lastIndexOf(')') + 2).split(' ');
  return rest[19];
}

let ownTag: Promise<RunTag> | undefined;

/** This process's tag. */
export function runTag(): Promise<RunTag> {
  ownTag ??= readFile('/proc/self/stat', 'utf8').then(
    (s) => `${process.pid}.${startTicks(s) ?? '0'}`,
    () => `${process.pid}.0`,
  );
  return ownTag;
}

/** Whether the run that `tag` names is still running. */
export async function runAlive(tag: RunTag): Promise<boolean> {
  const [pid, start] = tag.split('.');
  if (pid === String(process.pid)) return tag === (await runTag());
  const line = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  if (line !== undefined) return start === '0' || startTicks(line) === start;
  try {
    process.kill(Number(pid), 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

const TAGGED = /^(\d+\.\d+)-[A-Za-z0-9]{6}$/;

/** The tag in a folder name made by ownedTempDir(…, prefix), or undefined (not one of ours, or made before tags). */
export function tagOf(name: string, prefix: string): RunTag | undefined {
  if (!name.startsWith(prefix)) return undefined;
  return TAGGED.exec(name.slice(prefix.length))?.[1];
}

/** A new folder `<parent>/<prefix><tag>-XXXXXX`, which releaseLeftovers may remove once this run is gone. */
export async function ownedTempDir(parent: string, prefix: string): Promise<string> {
  return mkdtemp(join(parent, `${prefix}${await runTag()}-`));
}

/** Prefixes of the staging folders imgcast makes in tmpdir(); folders with a dead run's tag are removed. */
export const STAGING_PREFIXES = [
  'imgcast-vfat-',
  'imgcast-domain-',
  'imgcast-key-',
  'imgcast-script-',
] as const;

/** Where run state lives: tmpfs under /run, so it goes with a reboot, as loop devices and mounts do. */
export async function runStateDir(): Promise<string> {
  const root = await stat('/run').then(
    () => '/run',
    () => tmpdir(),
  );
  return join(root, 'imgcast');
}

async function loopsDir(): Promise<string> {
  return join(await runStateDir(), 'loops');
}

export interface LoopRecord {
  /** /dev/loopN */
  device: string;
  tag: RunTag;
  /** What the loop device was attached to (as realpath gave it) and where. */
  backingFile: string;
  offset: number;
}

/** Records that this run attached `device`; written before the caller uses the device. */
export async function recordLoop(device: string, backingFile: string, offset: number): Promise<void> {
  const dir = await loopsDir();
  await mkdir(dir, { recursive: true });
  const tag = await runTag();
  const file = join(dir, `${basename(device)}@${tag}`);
  const record: LoopRecord = { device, tag, backingFile, offset };
  // Written aside and renamed: a run killed mid-write leaves no half record for the next to trip on.
  await writeFile(`${file}.new`, JSON.stringify(record));
  await rename(`${file}.new`, file);
}

/** Drops the record of `device` made by the run `tag` (this run by default). */
export async function forgetLoop(device: string, tag?: RunTag): Promise<void> {
  const file = join(await loopsDir(), `${basename(device)}@${tag ?? (await runTag())}`);
  await rm(file, { force: true });
}

/** Every loop record, of live and dead runs. */
export async function loopRecords(): Promise<LoopRecord[]> {
  const dir = await loopsDir();
  const out: LoopRecord[] = [];
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    const file = join(dir, name);
    if (name.endsWith('.new')) {
      // A record that never got renamed into place: its run died between the two steps.
      const tag = name.slice(name.indexOf('@') + 1, -'.new'.length);
      if (!(await runAlive(tag))) await rm(file, { force: true });
      continue;
    }
    try {
      out.push(JSON.parse(await readFile(file, 'utf8')) as LoopRecord);
    } catch {
      await rm(file, { force: true });
    }
  }
  return out;
}
