/**
 * A restored Windows volume named: the computer name goes into the sysprep answer file that
 * Windows setup reads on the first boot after sysprep (its specialize pass). Windows names
 * files without regard to case and ntfs-3g shows them as they were written, so paths are
 * looked up name by name without case; reparse points (junctions, symlinks) are not followed.
 */
import { lstat, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import { windowsNameProblem } from './names.ts';
import { AnswerFileError, decodeAnswerFile, setComputerName, type ComputerNameEdit } from './unattend.ts';

/**
 * Where Windows setup looks for an answer file after sysprep, in its order (the implicit
 * search of "Windows Setup Automation Overview"); the first found is the one it uses. Every
 * one found is edited, so none says another name.
 */
export const ANSWER_FILES = [
  'Windows/Panther/Unattend/Unattend.xml',
  'Windows/Panther/Unattend.xml',
  'Sysprep/Unattend.xml',
  'Windows/System32/Sysprep/Unattend.xml',
] as const;

export interface WindowsIdentity {
  /** The volume, as the image names it (p3). */
  volume: string;
  /** The name now in the answer file(s), or null when none was set (`why` says why). */
  computerName: string | null;
  /** Answer files edited, as Windows paths from the volume's root. */
  answerFiles: string[];
  why?: string;
}

/** The real path of `rel` below `root`, each name matched without case; undefined if missing or through a link. */
async function findNoCase(root: string, rel: string): Promise<string | undefined> {
  let at = root;
  for (const want of rel.split('/')) {
    const names = await readdir(at).catch(() => undefined);
    const name = names?.find((n) => n.toLowerCase() === want.toLowerCase());
    if (name === undefined) return undefined;
    const next = join(at, name);
    const st = await lstat(next).catch(() => undefined);
    if (!st || st.isSymbolicLink()) return undefined;
    at = next;
  }
  return at;
}

/** Whether the NTFS volume at `root` holds a Windows installation. */
export async function isWindowsVolume(root: string): Promise<boolean> {
  return (await findNoCase(root, 'Windows/System32')) !== undefined;
}

function describeEdit(file: string, edit: ComputerNameEdit, name: string): string {
  switch (edit.action) {
    case 'replaced':
      return `${file}: ComputerName ${edit.previous ? `${edit.previous} -> ` : ''}${name}`;
    case 'added':
      return `${file}: ComputerName ${name} added to the Microsoft-Windows-Shell-Setup component`;
    case 'component-added':
      return `${file}: a Microsoft-Windows-Shell-Setup component (${edit.architecture}) with ComputerName ${name} added to the specialize pass`;
    case 'pass-added':
      return `${file}: a specialize pass with ComputerName ${name} added (component architecture ${edit.architecture})`;
  }
}

/** A mounted NTFS volume: possibly read-only, made writable only when there is something to write. */
export interface NtfsVolume {
  /** As the image names it (p3). */
  name: string;
  dir: string;
  /** Mounts it read-write and gives the new folder. */
  writable(): Promise<string>;
}

/** Sets the computer name in the answer files of the Windows volume `vol`. */
export async function applyWindowsIdentity(
  vol: NtfsVolume,
  name: string | undefined,
  notes: string[],
): Promise<WindowsIdentity> {
  const out: WindowsIdentity = { volume: vol.name, computerName: null, answerFiles: [] };
  const found: string[] = [];
  for (const rel of ANSWER_FILES) {
    const real = await findNoCase(vol.dir, rel);
    if (real && (await lstat(real)).isFile()) found.push(real.slice(vol.dir.length));
  }
  if (found.length === 0) {
    out.why = `no sysprep answer file on ${vol.name} (looked for ${ANSWER_FILES.map((f) => `\\${f.replaceAll('/', '\\')}`).join(', ')}): the computer name was not set, and Windows keeps the image's`;
    return out;
  }
  if (name === undefined) {
    out.why = 'no name given: the answer file was left as it is';
    return out;
  }
  const problem = windowsNameProblem(name);
  if (problem) {
    out.why = `${problem}: the answer file was left as it is`;
    return out;
  }
  let dir: string;
  try {
    dir = await vol.writable();
  } catch (err) {
    out.why = `the volume cannot be written (${(err as Error).message}): the computer name was not set`;
    return out;
  }
  const failed: string[] = [];
  for (const rel of found) {
    const file = rel.replaceAll('/', '\\');
    const real = join(dir, rel);
    const { text, encode } = decodeAnswerFile(await readFile(real));
    let edited;
    try {
      edited = setComputerName(text, name);
    } catch (err) {
      if (!(err instanceof AnswerFileError)) throw err;
      failed.push(`${file} was not changed: it cannot be read as an answer file (${err.message})`);
      continue;
    }
    await writeFile(real, encode(edited.xml));
    out.answerFiles.push(file);
    notes.push(describeEdit(file, edited.edit, name));
  }
  notes.push(...failed);
  if (out.answerFiles.length > 0) out.computerName = name;
  else out.why = failed.join('; ');
  return out;
}
