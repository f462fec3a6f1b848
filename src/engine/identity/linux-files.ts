/**
 * The contents of the Linux files identity rewrites, as pure functions of their old text:
 * /etc/hosts, /etc/machine-id, an SSH host key's name and ssh-keygen's fingerprint line.
 */
import { randomBytes } from 'node:crypto';

/** The loopback address Debian (and its derivatives) give the machine's own name. */
const OWN_NAME_ADDRESS = '127.0.1.1';

/**
 * /etc/hosts with the 127.0.1.1 line naming `name`. Aliases that were the old host name,
 * or a domain name starting with it, are renamed (so "127.0.1.1 pc.lab.example pc" keeps its
 * domain); a line that named something else entirely names `name` alone. Without such a line,
 * one is added after the 127.0.0.1 line (or first). Comments, other lines, line endings and
 * the final newline are kept.
 */
export function hostsWithName(text: string, name: string, oldName: string | undefined): string {
  const eol = text.includes('\r\n') ? '\r\n' : '\n';
  const lines = text.length === 0 ? [] : text.split(/\r?\n/);
  const trailing = lines.length > 0 && lines.at(-1) === '';
  if (trailing) lines.pop();
  let found = false;
  const out = lines.map((line) => {
    const m = /^(\s*)(\S+)(\s+)([^#]*?)(\s*#.*)?$/.exec(line);
    if (!m || m[2] !== OWN_NAME_ADDRESS) return line;
    found = true;
    const aliases = m[4]!.split(/\s+/).filter(Boolean);
    const renamed = aliases.flatMap((a) => {
      if (oldName && a.toLowerCase() === oldName.toLowerCase()) return [name];
      if (oldName && a.toLowerCase().startsWith(`${oldName.toLowerCase()}.`))
        return [name + a.slice(oldName.length)];
      return [];
    });
    const names = renamed.length > 0 ? [...new Set(renamed)] : [name];
    return `${m[1]}${OWN_NAME_ADDRESS}${m[3]}${names.join(' ')}${m[5] ?? ''}`;
  });
  let endsWithNew = false;
  if (!found) {
    const at = out.findLastIndex((l) => /^\s*127\.0\.0\.1\s/.test(l)) + 1;
    endsWithNew = at === out.length;
    out.splice(at, 0, `${OWN_NAME_ADDRESS}\t${name}`);
  }
  return out.join(eol) + (trailing || endsWithNew ? eol : '');
}

/**
 * What an image's /etc/machine-id says, by systemd's reading of it (machine-id(5)): a
 * machine id; "uninitialized", the marker of an image meant to be copied, which makes the
 * first boot a first boot (systemd-firstboot, presets) and writes a new id then; empty,
 * which also makes each boot generate one (kept once /etc is writable); or something else.
 */
export type MachineIdState = 'id' | 'uninitialized' | 'empty' | 'invalid';

export function machineIdState(content: string): MachineIdState {
  const t = content.trim();
  if (t === '') return 'empty';
  if (t === 'uninitialized') return 'uninitialized';
  return /^[0-9a-f]{32}$/.test(t) ? 'id' : 'invalid';
}

/** A new machine id: 128 random bits as 32 lower-case hex digits, marked as a v4 UUID as systemd makes them. */
export function newMachineId(random: Buffer = randomBytes(16)): string {
  const b = Buffer.from(random.subarray(0, 16));
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  return b.toString('hex');
}

/** The key type in an SSH host key file name ("ssh_host_ed25519_key" → "ed25519"), or undefined. */
export function hostKeyType(fileName: string): string | undefined {
  return /^ssh_host_([a-z0-9]+)_key$/.exec(fileName)?.[1];
}

/** The types OpenSSH's `ssh-keygen -A` makes, for a system with sshd but no host keys at all. */
export const DEFAULT_HOST_KEY_TYPES = ['rsa', 'ecdsa', 'ed25519'] as const;

export interface KeyFingerprint {
  bits: number;
  /** "SHA256:…", as ssh-keygen -l prints it and ssh shows it when it first meets a host. */
  fingerprint: string;
  /** What ssh-keygen calls the type, e.g. "ED25519", "RSA", "ECDSA". */
  keyType: string;
}

/** Parses one line of `ssh-keygen -l -E sha256`: "256 SHA256:abc… root@pc (ED25519)". */
export function parseFingerprint(line: string): KeyFingerprint | undefined {
  const m = /^(\d+)\s+(SHA256:[A-Za-z0-9+/]+=*)\s+.*\(([A-Z0-9-]+)\)\s*$/.exec(line.trim());
  return m ? { bits: Number(m[1]), fingerprint: m[2]!, keyType: m[3]! } : undefined;
}
