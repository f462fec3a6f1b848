/** Shared pieces of the benchmarks: timing child commands with peak RSS, and BENCHMARKS.md sections. */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, release } from 'node:os';
import { join } from 'node:path';

export interface Measured {
  seconds: number;
  /** Peak resident set of the largest process in the command, KiB (GNU time %M). */
  maxRssKiB: number;
}

/** Runs `bash -c script` under GNU time; rejects with the command's stderr when it fails. */
export function measure(script: string, env: NodeJS.ProcessEnv = process.env): Promise<Measured> {
  return new Promise((resolve, reject) => {
    const child = spawn('/usr/bin/time', ['-f', '@@TIME %e %M', 'bash', '-o', 'pipefail', '-c', script], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env,
    });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      const m = /@@TIME ([\d.]+) (\d+)/.exec(err);
      if (code !== 0 || !m)
        reject(new Error(`benchmark step failed (${code}): ${script}\n${err.slice(-2000)}`));
      else resolve({ seconds: Number(m[1]), maxRssKiB: Number(m[2]) });
    });
  });
}

export function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

export function machineLine(): string {
  return `${cpus().length} cores (${cpus()[0]?.model ?? 'unknown CPU'}), Linux ${release()}, Node ${process.version}`;
}

/** Replaces (or appends) the section between `<!-- bench:NAME -->` markers in BENCHMARKS.md. */
export function writeSection(root: string, name: string, body: string): string {
  const file = join(root, 'BENCHMARKS.md');
  const begin = `<!-- bench:${name} -->`;
  const end = `<!-- /bench:${name} -->`;
  let text = existsSync(file)
    ? readFileSync(file, 'utf8')
    : '# Benchmarks\n\nEvery figure here comes from one run of the command shown with it, on the machine it names; ratios compare tools measured side by side in that run.\n';
  const section = `${begin}\n${body.trim()}\n${end}`;
  const a = text.indexOf(begin);
  const b = text.indexOf(end);
  text =
    a >= 0 && b > a
      ? text.slice(0, a) + section + text.slice(b + end.length)
      : `${text.trimEnd()}\n\n${section}\n`;
  writeFileSync(file, text);
  return file;
}
