/**
 * The product's commands run as real processes inside a NetLab host, for the lab tests: their
 * output kept (its tail), how and when they ended, and the words a failure report uses.
 */
import type { ChildProcess } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { closeSync, openSync, writeSync } from 'node:fs';

import type { NetLab } from './netlab.ts';

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  at: number;
}

export interface Proc {
  /** How the report names it: sender, r1, server, ws1, ... */
  name: string;
  /** Lab namespace, or 'host'. */
  where: string;
  argv: string[];
  child: ChildProcess;
  startedAt: number;
  exit: Promise<Exit>;
  exited: Exit | null;
  stdout(): string;
  stderr(): string;
}

/** Starts `bin args` in host `host`; keeps the last `keep` characters of each output stream. */
export function startProc(
  lab: NetLab,
  host: number,
  name: string,
  bin: string,
  args: string[],
  opts: { env: NodeJS.ProcessEnv; root: string; keep: number; cwd?: string },
): Proc {
  const child = lab.exec(host, bin, args, { env: opts.env, cwd: opts.cwd ?? opts.root });
  let out = '';
  let err = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (out = (out + d).slice(-opts.keep)));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-opts.keep)));
  child.on('error', (e) => (err += `\n[could not run: ${e.message}]`));
  const p: Proc = {
    name,
    where: lab.ns(host),
    argv: [bin.slice(opts.root.length + 1), ...args],
    child,
    startedAt: Date.now(),
    exited: null,
    exit: new Promise((res) =>
      child.on('close', (code, signal) => {
        p.exited = { code, signal, at: Date.now() };
        res(p.exited);
      }),
    ),
    stdout: () => out,
    stderr: () => err,
  };
  return p;
}

export const secs = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;
export const tail = (text: string, n: number): string => text.trimEnd().split('\n').slice(-n).join('\n');
export const indent = (text: string): string =>
  text.trim() ? text.trimEnd().replace(/^/gm, '    ') : '    (nothing)';

export function describeExit(p: Proc, now = Date.now()): string {
  if (!p.exited) return `STILL RUNNING after ${secs(now - p.startedAt)}`;
  const how = p.exited.signal ? `killed by ${p.exited.signal}` : `exit code ${p.exited.code}`;
  return `${how} after ${secs(p.exited.at - p.startedAt)}`;
}

/** Whether every one of `procs` exits within `ms`. */
export async function settle(procs: Proc[], ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const all = Promise.all(procs.map((p) => p.exit)).then(() => true);
  const late = new Promise<boolean>((res) => (timer = setTimeout(() => res(false), ms)));
  try {
    return await Promise.race([all, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** A file of `size` random bytes (incompressible, so an image holds it in full). */
export function randomFile(path: string, size: number): void {
  const buf = Buffer.alloc(1024 * 1024);
  const fd = openSync(path, 'w');
  try {
    for (let left = size; left > 0;) {
      const n = Math.min(left, buf.length);
      randomFillSync(buf, 0, n);
      writeSync(fd, buf, 0, n);
      left -= n;
    }
  } finally {
    closeSync(fd);
  }
}
