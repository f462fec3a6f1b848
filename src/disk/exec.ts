import { execFile } from 'node:child_process';
import { constants } from 'node:fs';
import { access } from 'node:fs/promises';
import { join } from 'node:path';
import { DiskError } from './errors.ts';
import { systemReason } from '../wording.ts';

export interface RunResult {
  stdout: string;
  stderr: string;
  status: number;
}

/** Why a tool could not be started: a missing one is named as such, not as spawn's "ENOENT". */
function cannotRun(err: Error & { code?: unknown }): string {
  return err.code === 'ENOENT' ? 'it is not installed (not found on PATH) (ENOENT)' : systemReason(err);
}

/** Runs a tool without a shell; resolves with its exit status instead of throwing, for probes. */
export function runTool(cmd: string, args: readonly string[]): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err && typeof (err as NodeJS.ErrnoException).code === 'string') {
        reject(
          new DiskError('E_DISK_COMMAND', `cannot run ${cmd}: ${cannotRun(err)}`, {
            command: cmd,
            args: [...args],
          }),
        );
        return;
      }
      const status = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ stdout, stderr, status });
    });
  });
}

/** Runs a tool and throws a DiskError carrying its stderr when it fails. */
export async function run(cmd: string, args: readonly string[], what?: string): Promise<string> {
  const r = await runTool(cmd, args);
  if (r.status !== 0) {
    const detail = (r.stderr || r.stdout).trim() || `exit status ${r.status}`;
    throw new DiskError(
      'E_DISK_COMMAND',
      `${what ? what + ': ' : ''}${cmd} ${args.join(' ')} failed: ${detail}`,
      { command: cmd, args: [...args], status: r.status, stderr: r.stderr },
    );
  }
  return r.stdout;
}

/** Whether `cmd` is on PATH (or in /usr/sbin and /sbin, where root tools live). */
export async function hasTool(cmd: string): Promise<boolean> {
  const dirs = [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/sbin'].filter(Boolean);
  for (const d of dirs) {
    try {
      await access(join(d, cmd), constants.X_OK);
      return true;
    } catch {
      // not here
    }
  }
  return false;
}
