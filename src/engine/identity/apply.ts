/**
 * After a verified restore: the restored system is made into the workstation it now is
 * (identity), then the post-imaging scripts run, all on one mount of its volumes that is
 * released however this ends. This is what `img restore --identity/--script` and a
 * workstation in a session run before they report success; the result is what the
 * workstation reports to the server (host name, machine id, SSH host key fingerprints).
 *
 * What identity does on each kind of volume is in linux.ts and windows.ts. A volume is
 * mounted only when there is something to do on it: for identity, the file volumes whose
 * image holds os-release (Linux roots), those holding a systemd-boot random seed (an EFI
 * partition), and NTFS volumes when a name is given; for scripts, every volume.
 */
import { removeFromVfat } from '../../disk/filesystem.ts';
import { includedEntries } from '../../image/fileset.ts';
import type { Manifest, Volume } from '../../image/types.ts';
import { IdentityError } from './errors.ts';
import { checkIdentityName, hostnameAdvice } from './names.ts';
import { applyLinuxIdentity, HostKeyForge, isLinuxRoot, type HostKeySpec, type SshHostKey } from './linux.ts';
import { DEFAULT_HOST_KEY_TYPES, hostKeyType } from './linux-files.ts';
import { runPostImagingScripts, type PostImagingScript, type ScriptRun } from './scripts.ts';
import { mountRestoredVolumes, type Access, type MountedVolume } from './volumes.ts';
import { applyWindowsIdentity, isWindowsVolume, type WindowsIdentity } from './windows.ts';
import { RootPath } from './in-root.ts';

export type { SshHostKey } from './linux.ts';
export type { WindowsIdentity } from './windows.ts';
export type { PostImagingScript, ScriptRun } from './scripts.ts';

/** Who the restored system becomes, and the facts post-imaging scripts see. */
export interface Identity {
  /** Host name and Windows computer name; without one the image's host name stays (all else is renewed). */
  name?: string;
  mac?: string;
  address?: string;
  session?: string;
  image?: string;
}

export interface IdentityResult {
  /** The name applied, or null when none was given. */
  name: string | null;
  /** Each volume identity changed something on, and what. */
  volumes: Array<{ volume: string; role: 'linux' | 'windows' | 'efi'; system?: string; changed: string[] }>;
  /** The new /etc/machine-id of the (first) Linux root; null when none was written (see notes). */
  machineId: string | null;
  /** The new SSH host keys of the (first) Linux root. */
  sshHostKeys: SshHostKey[];
  /** The (first) Windows volume's computer name, or null when there is no Windows volume. */
  windows: WindowsIdentity | null;
  /** What was decided and why, in sentences: kept files, missing answer files, replaced symlinks. */
  notes: string[];
}

export interface PostImagingOptions {
  /** Apply this identity (omitted: only the scripts run). */
  identity?: Identity;
  /** Facts for the scripts' environment when no identity is applied. */
  facts?: Identity;
  scripts?: readonly PostImagingScript[];
  /** Each script's time limit. */
  scriptTimeoutMs?: number;
  /** The file set that was restored (to tell from the image which volumes hold what); default 1. */
  fileset?: number;
  signal?: AbortSignal;
  onWarning?: (message: string) => void;
  onScriptOutput?: (script: string, text: string) => void;
  /** Host keys made while the disk was written (forgeHostKeys); the caller discards it after. */
  hostKeys?: HostKeyForge;
}

export interface PostImagingResult {
  identity: IdentityResult | null;
  scripts: ScriptRun[];
  /** Volumes that were wanted but not mounted, and why (also in identity.notes). */
  notes: string[];
}

function holds(v: Volume, fileset: number, paths: readonly string[]): boolean {
  if (v.kind !== 'files') return false;
  return includedEntries(v.entries, fileset).some((e) => paths.includes(e.path));
}

const OS_RELEASE = ['etc/os-release', 'usr/lib/os-release'];
/** systemd-boot's seed on the EFI partition: every copy would start its entropy pool alike. */
const BOOT_SEED = 'loader/random-seed';

/**
 * Applies `opts.identity` to the restored `target` (restored from `manifest`) and runs
 * `opts.scripts`. A bad name is refused (E_IDENTITY_NAME) before anything is mounted.
 */
export async function postImaging(
  target: string,
  manifest: Manifest,
  opts: PostImagingOptions,
): Promise<PostImagingResult> {
  const identity = opts.identity;
  if (identity?.name !== undefined) checkIdentityName(identity.name);
  const scripts = opts.scripts ?? [];
  if (!identity && scripts.length === 0) return { identity: null, scripts: [], notes: [] };
  const fileset = opts.fileset ?? 1;
  const pick = (v: Volume): Access | undefined => {
    if (scripts.length > 0) return 'rw';
    if (v.kind === 'raw') return identity?.name !== undefined ? 'ro' : undefined;
    if (v.fs.type === 'directory' || holds(v, fileset, OS_RELEASE) || holds(v, fileset, [BOOT_SEED]))
      return 'rw';
    return undefined;
  };
  const mounts = await mountRestoredVolumes(target, manifest, pick, {
    ...(opts.signal ? { signal: opts.signal } : {}),
    ...(opts.onWarning ? { onWarning: opts.onWarning } : {}),
  });
  try {
    const result = identity ? await applyIdentity(mounts.volumes, identity, opts.hostKeys) : null;
    result?.notes.push(...mounts.notes);
    opts.signal?.throwIfAborted();
    const facts = identity ?? opts.facts ?? {};
    const root = result?.volumes.find((v) => v.role === 'linux')?.volume;
    const linuxRoot =
      mounts.volumes.find((m) => m.name === root) ??
      (identity ? undefined : await firstLinuxRoot(mounts.volumes));
    const runs = await runPostImagingScripts(
      scripts,
      {
        ...facts,
        ...(linuxRoot?.dir ? { root: linuxRoot.dir } : {}),
        mounts: mounts.volumes.flatMap((m) => (m.dir ? [{ volume: m.name, dir: m.dir }] : [])),
      },
      {
        ...(opts.scriptTimeoutMs !== undefined ? { timeoutMs: opts.scriptTimeoutMs } : {}),
        ...(opts.signal ? { signal: opts.signal } : {}),
        ...(opts.onScriptOutput ? { onOutput: opts.onScriptOutput } : {}),
      },
    ).catch((err: unknown) => {
      // A failed script leaves the identity applied: what the disk holds now goes with the failure.
      if (err instanceof IdentityError && result) err.details.identity = result;
      throw err;
    });
    return { identity: result, scripts: runs, notes: mounts.notes };
  } finally {
    await mounts.release();
  }
}

/** Removes systemd-boot's seed from an EFI partition, through its mount or, without a vfat driver, mtools. */
async function removeBootSeed(m: MountedVolume): Promise<boolean> {
  if (m.dir) return new RootPath(m.dir).remove(BOOT_SEED);
  if (!m.device || m.volume.kind !== 'files' || !m.volume.entries.some((e) => e.path === BOOT_SEED))
    return false;
  try {
    await removeFromVfat(m.device, BOOT_SEED);
    return true;
  } catch (err) {
    // Left out of the restored file set.
    if (/not found/i.test((err as Error).message)) return false;
    throw err;
  }
}

/** The usual sizes of the keys ssh-keygen makes, which a forged key must match to be used. */
const USUAL_BITS: Record<string, number> = { rsa: 3072, ecdsa: 256 };

/**
 * Starts making, before the restore writes anything, the SSH host keys that identity will want
 * on the image's first Linux root: one per host key file the image holds there, or
 * `ssh-keygen -A`'s set where it holds sshd and none (see linux.ts). Only with a name, which
 * the keys' comment carries. Undefined when there is nothing to make; the caller passes it to
 * postImaging and discards it however the restore ends.
 */
export function forgeHostKeys(
  manifest: Manifest,
  fileset: number,
  name: string | undefined,
): HostKeyForge | undefined {
  if (name === undefined) return undefined;
  for (const v of manifest.volumes) {
    if (v.kind !== 'files' || !holds(v, fileset, OS_RELEASE)) continue;
    const entries = includedEntries(v.entries, fileset);
    const specs: HostKeySpec[] = [];
    for (const e of entries) {
      const m = /^etc\/ssh\/([^/]+)$/.exec(e.path);
      const type = m ? hostKeyType(m[1]!) : undefined;
      if (type && (e.type === 'file' || e.type === 'symlink'))
        specs.push({ type, ...(USUAL_BITS[type] ? { bits: USUAL_BITS[type] } : {}) });
    }
    if (specs.length === 0 && entries.some((e) => e.path === 'usr/sbin/sshd' || e.path === 'sbin/sshd'))
      specs.push(...DEFAULT_HOST_KEY_TYPES.map((type) => ({ type })));
    return specs.length > 0 ? new HostKeyForge(specs, `root@${name}`) : undefined;
  }
  return undefined;
}

async function firstLinuxRoot(volumes: MountedVolume[]): Promise<MountedVolume | undefined> {
  for (const m of volumes) if (m.dir && m.volume.kind === 'files' && (await isLinuxRoot(m.dir))) return m;
  return undefined;
}

/** Identity on volumes already mounted read-write (mountRestoredVolumes). */
export async function applyIdentity(
  volumes: readonly MountedVolume[],
  identity: Identity,
  hostKeys?: HostKeyForge,
): Promise<IdentityResult> {
  const name = identity.name;
  if (name !== undefined) checkIdentityName(name);
  const result: IdentityResult = {
    name: name ?? null,
    volumes: [],
    machineId: null,
    sshHostKeys: [],
    windows: null,
    notes: [],
  };
  const advice = name !== undefined ? hostnameAdvice(name) : undefined;
  if (advice) result.notes.push(advice);
  let linuxRoots = 0;
  for (const m of volumes) {
    if (m.type === 'vfat') {
      if (await removeBootSeed(m))
        result.volumes.push({ volume: m.name, role: 'efi', changed: [`/${BOOT_SEED}`] });
      continue;
    }
    if (!m.dir) continue;
    if (m.volume.kind === 'files' && (await isLinuxRoot(m.dir))) {
      await m.makeWritable();
      const linux = await applyLinuxIdentity(m.dir!, name, hostKeys);
      linuxRoots++;
      result.volumes.push({ volume: m.name, role: 'linux', system: linux.system, changed: linux.changed });
      result.notes.push(...linux.notes.map((n) => `${m.name}: ${n}`));
      if (linuxRoots === 1) {
        result.machineId = linux.machineId;
        result.sshHostKeys = linux.sshHostKeys;
      } else {
        result.notes.push(
          `${m.name}: a second Linux system (${linux.system}), renewed too; its machine id ${linux.machineId ?? '(kept)'} and host keys are not in this result`,
        );
      }
    } else if (m.type === 'ntfs' && (await isWindowsVolume(m.dir))) {
      const notes: string[] = [];
      const w = await applyWindowsIdentity(
        {
          name: m.name,
          dir: m.dir,
          writable: async () => {
            await m.makeWritable();
            return m.dir!;
          },
        },
        name,
        notes,
      );
      result.notes.push(...notes.map((n) => `${m.name}: ${n}`));
      if (w.why) result.notes.push(`${m.name}: ${w.why}`);
      if (w.answerFiles.length > 0)
        result.volumes.push({ volume: m.name, role: 'windows', system: 'Windows', changed: w.answerFiles });
      if (!result.windows) result.windows = w;
      else
        result.notes.push(
          `${m.name}: a second Windows volume (computer name ${w.computerName ?? 'not set'})`,
        );
    }
  }
  if (linuxRoots === 0 && !result.windows) {
    result.notes.push(
      'no Linux system (os-release) and no Windows volume was found on the restored target: nothing was renamed',
    );
  }
  return result;
}
