/**
 * Extended attributes through the attr tools: Node has no xattr API, and one bulk
 * getfattr/setfattr run costs far less than a process per file.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileVolumeError } from './errors.ts';
import { nameBytes, nameFromBytes } from './names.ts';
import { systemReason } from '../../wording.ts';

export type XattrMap = Map<string, Record<string, string>>;

/**
 * Starts `getfattr` over the whole tree at once (so it runs on the other core while
 * the walk reads data) and resolves to attributes keyed by path relative to root
 * ('.' for root). -h: a symlink's own attributes, never its target's; -P: do not
 * descend through symlinked directories. `start`, a path below root, limits the scan
 * to it (and what is below it).
 */
export function startXattrScan(root: string, start = root): { promise: Promise<XattrMap>; kill(): void } {
  let kill = (): void => {};
  const promise = new Promise<XattrMap>((resolvePromise, reject) => {
    const child = spawn(
      'getfattr',
      ['-R', '-P', '-h', '-d', '-m', '-', '-e', 'base64', '--absolute-names', '--', start],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    kill = () => child.kill();
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e: NodeJS.ErrnoException) => {
      reject(
        new FileVolumeError(
          'E_XATTR',
          e.code === 'ENOENT'
            ? 'cannot read extended attributes: getfattr is not installed (package "attr")'
            : `cannot run getfattr on ${root}: ${systemReason(e)}`,
          { path: root },
          { cause: e },
        ),
      );
    });
    child.on('close', (code) => {
      // Filesystems without xattr support (vfat) make getfattr complain per file; that just means "none".
      const problems = Buffer.concat(err)
        .toString('utf8')
        .split('\n')
        .filter((l) => l.trim() !== '' && !/Operation not supported/.test(l));
      if (code !== 0 && problems.length > 0) {
        reject(
          new FileVolumeError(
            'E_XATTR',
            `getfattr could not read the extended attributes of ${root} (exit ${code}): ${problems.slice(0, 5).join('; ')}`,
            { path: root, exitCode: code, stderr: problems.slice(0, 50) },
          ),
        );
        return;
      }
      resolvePromise(parseGetfattr(Buffer.concat(out), root));
    });
  });
  return { promise, kill: () => kill() };
}

/** Parses `getfattr -d -e base64 --absolute-names` output; exported for tests. */
export function parseGetfattr(output: Buffer, root: string): XattrMap {
  const map: XattrMap = new Map();
  const prefix = root.endsWith('/') ? root : root + '/';
  let current: Record<string, string> | undefined;
  // latin1 keeps bytes 1:1 so octal escapes and UTF-8 names decode correctly afterwards.
  for (const line of output.toString('latin1').split('\n')) {
    if (line.startsWith('# file: ')) {
      const abs = unquote(line.slice(8));
      const rel =
        abs === root || abs + '/' === prefix
          ? '.'
          : abs.startsWith(prefix)
            ? abs.slice(prefix.length)
            : undefined;
      current = rel === undefined ? undefined : {};
      if (rel !== undefined && current) map.set(rel, current);
      continue;
    }
    if (line === '' || !current) continue;
    const m = /^(.*)=0s([A-Za-z0-9+/]*=*)$/.exec(line);
    if (m) current[unquote(m[1]!)] = m[2]!;
    else if (!line.includes('=')) current[unquote(line)] = '';
    else {
      const eq = line.indexOf('=');
      const v = line.slice(eq + 1);
      current[unquote(line.slice(0, eq))] =
        v === '""' ? '' : Buffer.from(v.replace(/^"|"$/g, ''), 'latin1').toString('base64');
    }
  }
  for (const [k, v] of map) if (Object.keys(v).length === 0) map.delete(k);
  return map;
}

function unquote(s: string): string {
  return nameFromBytes(
    Buffer.from(
      s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))),
      'latin1',
    ),
  );
}

/** Octal-escapes what would break setfattr's line format (backslash, control bytes, and '=' in names). */
function quote(s: string, alsoEquals: boolean): string {
  let out = '';
  for (const byte of nameBytes(s)) {
    if (byte === 0x5c || byte < 0x20 || byte === 0x7f || (alsoEquals && byte === 0x3d)) {
      out += '\\' + byte.toString(8).padStart(3, '0');
    } else out += String.fromCharCode(byte);
  }
  return out;
}

/**
 * Sets the attributes with one `setfattr -h --restore` run; paths are relative to
 * targetDir. Resolves to setfattr's complaints when the only trouble was a target
 * that does not support some attributes (an extract onto such a filesystem should
 * say so, not fail); any other failure rejects.
 */
export async function applyXattrs(
  targetDir: string,
  items: ReadonlyArray<{ path: string; xattrs: Record<string, string> }>,
): Promise<string[]> {
  if (items.length === 0) return [];
  let dump = '';
  for (const { path, xattrs } of items) {
    dump += `# file: ${quote(path, false)}\n`;
    for (const [name, value] of Object.entries(xattrs)) {
      dump += `${quote(name, true)}=${value === '' ? '""' : '0s' + value}\n`;
    }
    dump += '\n';
  }
  const dir = mkdtempSync(join(tmpdir(), 'imgcast-xattr-'));
  const file = join(dir, 'dump');
  try {
    writeFileSync(file, Buffer.from(dump, 'latin1'));
    return await new Promise<string[]>((resolvePromise, reject) => {
      const child = spawn('setfattr', ['-h', `--restore=${file}`], {
        cwd: targetDir,
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      const err: Buffer[] = [];
      child.stderr.on('data', (b: Buffer) => err.push(b));
      child.on('error', (e: NodeJS.ErrnoException) =>
        reject(
          new FileVolumeError(
            'E_XATTR',
            e.code === 'ENOENT'
              ? 'cannot restore extended attributes: setfattr is not installed (package "attr")'
              : `cannot run setfattr in ${targetDir}: ${systemReason(e)}`,
            { path: targetDir },
            { cause: e },
          ),
        ),
      );
      child.on('close', (code) => {
        const lines = Buffer.concat(err)
          .toString('utf8')
          .split('\n')
          .filter((l) => l.trim() !== '');
        if (code === 0) return resolvePromise([]);
        if (lines.length > 0 && lines.every((l) => /Operation not supported/.test(l)))
          return resolvePromise(lines);
        reject(
          new FileVolumeError(
            'E_XATTR',
            `setfattr could not restore extended attributes under ${targetDir} (exit ${code}): ${lines.slice(0, 5).join('; ')}`,
            { path: targetDir, exitCode: code, stderr: lines.slice(0, 50) },
          ),
        );
      });
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
