/**
 * A restored Linux system made into itself: its host name, a machine id and SSH host keys of
 * its own, and none of the reference machine's random seed, DHCP leases and DHCP unique ids
 * (DUIDs), which would otherwise make every copy look like one machine to the network.
 *
 * Choices, each said in the result's notes when it applies:
 * - /etc/machine-id that is empty or "uninitialized" is kept so: the image was made to be
 *   copied, and every copy makes its own id at its first boot (with first-boot semantics for
 *   "uninitialized"). A /var/lib/dbus/machine-id file beside it would still be the
 *   reference's, so it is removed (dbus falls back to /etc/machine-id; a symlink is kept).
 *   Otherwise a new id is written to both (dbus's only where it is a file).
 * - SSH host keys are made again of each type the image has (RSA and ECDSA at their size);
 *   certificates of the old keys are removed, since they certify keys that are gone. A system
 *   with sshd and no host keys at all gets the types `ssh-keygen -A` makes: Debian's sshd does
 *   not start without them. Keys are generated in a private folder of the imaging machine and
 *   copied in, so ssh-keygen never opens a path inside the image.
 * - Removed: the systemd random seed; dhclient's leases (Debian /var/lib/dhcp, Red Hat
 *   /var/lib/dhclient), which hold its DUID; NetworkManager's leases and its secret_key (the
 *   seed of its stable IPv6 addresses and DHCP ids); dhcpcd's leases, DUID and secret.
 *   systemd-networkd keeps its leases under /run and derives its DUID from the machine id, so
 *   the new machine id renews it.
 */
import { readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Stats } from 'node:fs';

import { hasTool, runTool } from '../../disk/exec.ts';
import { ownedTempDir } from '../../disk/owner.ts';
import { IdentityError } from './errors.ts';
import { RootPath } from './in-root.ts';
import {
  DEFAULT_HOST_KEY_TYPES,
  hostKeyType,
  hostsWithName,
  machineIdState,
  newMachineId,
  parseFingerprint,
} from './linux-files.ts';

export interface SshHostKey {
  /** As in the file name: rsa, ecdsa, ed25519. */
  type: string;
  bits: number;
  /** "SHA256:…", what ssh-keygen -l and ssh's first-contact prompt show. */
  fingerprint: string;
  /** The public key line (type, base64, comment), ready for a known_hosts file after the host's name. */
  publicKey: string;
}

export interface LinuxIdentity {
  /** What os-release calls the system. */
  system: string;
  /** The host name the image had. */
  previousName: string | null;
  machineId: string | null;
  sshHostKeys: SshHostKey[];
  /** Paths (from the system's root) written or removed. */
  changed: string[];
  notes: string[];
}

/**
 * Whether `root` holds a Linux system: os-release in /etc or /usr/lib. /etc/os-release counts
 * even as a symlink whose target is not on this volume (a /usr of its own).
 */
export async function isLinuxRoot(root: string): Promise<boolean> {
  const r = new RootPath(root);
  return (await r.stat('etc/os-release')) !== undefined || (await r.exists('usr/lib/os-release'));
}

async function systemName(r: RootPath): Promise<string> {
  const text = ((await r.read('etc/os-release')) ?? (await r.read('usr/lib/os-release')))?.toString('utf8');
  const field = (k: string) => new RegExp(`^${k}=["']?([^"'\\n]*)`, 'm').exec(text ?? '')?.[1];
  return field('PRETTY_NAME') || field('NAME') || 'Linux';
}

/** State that names the reference machine on the network: removed from every copy. */
const STATE_FILES: Array<{ dir: string; match: RegExp }> = [
  { dir: 'var/lib/systemd', match: /^random-seed$/ },
  { dir: 'var/lib/dhcp', match: /\.leases?$/ },
  { dir: 'var/lib/dhclient', match: /./ },
  { dir: 'var/lib/NetworkManager', match: /(\.lease|^secret_key)$/ },
  { dir: 'var/lib/dhcpcd', match: /(^duid$|^secret$|\.lease6?$)/ },
  { dir: 'var/db/dhcpcd', match: /(^duid$|^secret$|\.lease6?$)/ },
  { dir: 'etc', match: /^dhcpcd\.(duid|secret)$/ },
];

/**
 * Applies the identity to the Linux system at `root` (a mount of the restored root, or a
 * restored folder). Without `name` the host name stays the image's; everything else is renewed.
 * Host keys that `forge` made ahead (of the type, size and comment wanted) are used; any other
 * is made here.
 */
export async function applyLinuxIdentity(
  root: string,
  name: string | undefined,
  forge?: HostKeyForge,
): Promise<LinuxIdentity> {
  const r = new RootPath(root);
  const out: LinuxIdentity = {
    system: await systemName(r),
    previousName: null,
    machineId: null,
    sshHostKeys: [],
    changed: [],
    notes: [],
  };
  const keys = await hostKeysToMake(r, out.notes);
  // Refused before anything changes: a half-renewed system is worse than an unchanged one.
  if (keys.length > 0 && !(await hasTool('ssh-keygen'))) {
    throw new IdentityError(
      'E_IDENTITY_TOOL',
      `${out.system} at ${root} has SSH host keys to renew, but ssh-keygen is not installed here (package openssh-client); nothing of its identity was changed`,
      { root },
    );
  }
  const write = async (rel: string, content: string | Buffer, meta?: Parameters<RootPath['write']>[2]) => {
    const w = await r.write(rel, content, meta);
    if ('refused' in w) {
      out.notes.push(`/${rel} was not written: ${w.refused}`);
      return false;
    }
    if (w.replaced) out.notes.push(`/${rel} ${w.replaced}; it is a file now`);
    out.changed.push(`/${rel}`);
    return true;
  };

  const oldName = (await r.read('etc/hostname'))?.toString('utf8').split('\n')[0]?.trim();
  out.previousName = oldName || null;
  const hostName = name ?? (oldName || undefined);
  if (name !== undefined) {
    await write('etc/hostname', `${name}\n`);
    const hosts = (await r.read('etc/hosts'))?.toString('utf8');
    if (hosts === undefined && (await r.stat('etc/hosts')) === undefined)
      out.notes.push('/etc/hosts was missing: made with the loopback lines');
    await write(
      'etc/hosts',
      hostsWithName(
        hosts ?? '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n',
        name,
        oldName,
      ),
    );
  } else {
    out.notes.push(`no name given: the host name stays the image's (${oldName || 'none'})`);
  }

  await renewMachineId(r, out, write);

  const comment = `root@${hostName ?? 'localhost'}`;
  // Made side by side: an RSA key alone takes ssh-keygen most of a second of one core.
  const making = keys.map(
    (key) => forge?.take(key.type, key.bits, comment) ?? makeHostKey(key.type, key.bits, comment),
  );
  const results = await Promise.all(making);
  for (const [i, key] of keys.entries()) {
    const made = results[i]!;
    if ('failed' in made) {
      for (const f of [key.file, `${key.file}.pub`])
        if (await r.remove(`etc/ssh/${f}`)) out.changed.push(`/etc/ssh/${f}`);
      out.notes.push(
        `no new ${key.type} host key: ssh-keygen cannot make one here (${made.failed}); the image's was removed rather than shared by every copy`,
      );
      continue;
    }
    await write(`etc/ssh/${key.file}`, made.privateKey, key.privateMeta ?? { mode: 0o600 });
    await write(`etc/ssh/${key.file}.pub`, `${made.publicKey}\n`, key.publicMeta ?? { mode: 0o644 });
    out.sshHostKeys.push({
      type: key.type,
      bits: made.bits,
      fingerprint: made.fingerprint,
      publicKey: made.publicKey,
    });
  }
  for (const cert of await r.list('etc/ssh', (n) => /^ssh_host_[a-z0-9]+_key-cert\.pub$/.test(n))) {
    if (await r.remove(`etc/ssh/${cert.name}`)) {
      out.changed.push(`/etc/ssh/${cert.name}`);
      out.notes.push(
        `/etc/ssh/${cert.name} certified the image's host key and was removed; certify the new key`,
      );
    }
  }

  for (const s of STATE_FILES) {
    for (const f of await r.list(s.dir, (n) => s.match.test(n))) {
      if (f.stat.isDirectory()) continue;
      if (await r.remove(`${s.dir}/${f.name}`)) out.changed.push(`/${s.dir}/${f.name}`);
    }
  }
  return out;
}

async function renewMachineId(
  r: RootPath,
  out: LinuxIdentity,
  write: (rel: string, content: string) => Promise<boolean>,
): Promise<void> {
  const content = await r.read('etc/machine-id');
  const dbus = await r.stat('var/lib/dbus/machine-id');
  if (content === undefined) {
    out.notes.push(
      (await r.stat('etc/machine-id'))
        ? '/etc/machine-id is not a regular file: left as it is'
        : 'the image has no /etc/machine-id: systemd makes one at first boot',
    );
    return;
  }
  const state = machineIdState(content.toString('utf8'));
  if (state === 'empty' || state === 'uninitialized') {
    out.notes.push(
      `/etc/machine-id is ${state === 'empty' ? 'empty' : '"uninitialized"'} in the image, and kept so: each copy makes its own at first boot`,
    );
    if (dbus?.isFile() && (await r.remove('var/lib/dbus/machine-id'))) {
      out.changed.push('/var/lib/dbus/machine-id');
      out.notes.push(
        "/var/lib/dbus/machine-id held the reference's id and was removed (dbus reads /etc/machine-id)",
      );
    }
    return;
  }
  if (state === 'invalid') out.notes.push('/etc/machine-id held no valid id; it holds a new one now');
  const id = newMachineId();
  if (await write('etc/machine-id', `${id}\n`)) out.machineId = id;
  if (dbus?.isFile()) await write('var/lib/dbus/machine-id', `${id}\n`);
}

interface KeyToMake {
  type: string;
  file: string;
  bits?: number;
  privateMeta?: { mode: number; uid: number; gid: number };
  publicMeta?: { mode: number; uid: number; gid: number };
}

function metaOf(st: Stats | undefined) {
  return st?.isFile() ? { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid } : undefined;
}

/** The host keys the system has (or, with sshd and none, the default set), with their old size and metadata. */
async function hostKeysToMake(r: RootPath, notes: string[]): Promise<KeyToMake[]> {
  const found = await r.list('etc/ssh', (n) => hostKeyType(n) !== undefined);
  const keys: KeyToMake[] = [];
  for (const f of found) {
    if (!f.stat.isFile() && !f.stat.isSymbolicLink()) continue;
    const type = hostKeyType(f.name)!;
    const pub = await r.stat(`etc/ssh/${f.name}.pub`);
    keys.push({
      type,
      file: f.name,
      ...(type === 'rsa' || type === 'ecdsa' ? { bits: await keyBits(r, f.name) } : {}),
      ...(metaOf(f.stat) ? { privateMeta: metaOf(f.stat)! } : {}),
      ...(metaOf(pub) ? { publicMeta: metaOf(pub)! } : {}),
    });
  }
  if (keys.length > 0) return keys;
  const sshd = (await r.exists('usr/sbin/sshd')) || (await r.exists('sbin/sshd'));
  if (!sshd) return [];
  notes.push(
    `sshd is installed but the image has no SSH host keys: new ${DEFAULT_HOST_KEY_TYPES.join(', ')} keys were made, as ssh-keygen -A would (sshd does not start without them)`,
  );
  return DEFAULT_HOST_KEY_TYPES.map((type) => ({ type, file: `ssh_host_${type}_key` }));
}

/** The size of the image's key (RSA 3072 or 4096, ECDSA 256/384/521), read from a copy outside the image. */
async function keyBits(r: RootPath, file: string): Promise<number | undefined> {
  const content = (await r.read(`etc/ssh/${file}.pub`)) ?? (await r.read(`etc/ssh/${file}`));
  if (!content) return undefined;
  const dir = await ownedTempDir(tmpdir(), 'imgcast-key-');
  try {
    const copy = join(dir, 'key');
    await writeFile(copy, content, { mode: 0o600 });
    const l = await runTool('ssh-keygen', ['-l', '-E', 'sha256', '-f', copy]);
    return l.status === 0 ? parseFingerprint(l.stdout)?.bits : undefined;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

type MadeKey = { privateKey: Buffer; publicKey: string; bits: number; fingerprint: string };

/** A new host key from ssh-keygen, made in a private folder of this machine and read back into memory. */
async function makeHostKey(
  type: string,
  bits: number | undefined,
  comment: string,
): Promise<MadeKey | { failed: string }> {
  const dir = await ownedTempDir(tmpdir(), 'imgcast-key-');
  try {
    const file = join(dir, `ssh_host_${type}_key`);
    const args = [
      '-q',
      '-t',
      type,
      ...(bits ? ['-b', String(bits)] : []),
      '-N',
      '',
      '-C',
      comment,
      '-f',
      file,
    ];
    const made = await runTool('ssh-keygen', args);
    if (made.status !== 0)
      return { failed: (made.stderr || made.stdout).trim() || `exit status ${made.status}` };
    const l = await runTool('ssh-keygen', ['-l', '-E', 'sha256', '-f', `${file}.pub`]);
    const fp = parseFingerprint(l.stdout);
    if (l.status !== 0 || !fp) return { failed: `ssh-keygen -l: ${(l.stderr || l.stdout).trim()}` };
    return {
      privateKey: await readFile(file),
      publicKey: (await readFile(`${file}.pub`, 'utf8')).trim(),
      bits: fp.bits,
      fingerprint: fp.fingerprint,
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** A host key to make ahead: its type and, for RSA and ECDSA, its size. */
export interface HostKeySpec {
  type: string;
  bits?: number;
}

/**
 * Host keys made ahead, while the disk is still being written: ssh-keygen's RSA key costs most
 * of a second of one core, which a restore waiting on its disk's writeback leaves idle. The
 * keys are made from what the manifest says (key types by file name, the usual sizes) and
 * held in memory; identity takes one only when it is exactly the key it would make (type,
 * size and comment), and makes any other itself, so a guess that was wrong costs time, never
 * a different key. Each key is taken at most once; discard() waits for those never taken
 * (no ssh-keygen outlives the command) and drops them.
 */
export class HostKeyForge {
  readonly #comment: string;
  readonly #keys: Array<HostKeySpec & { made: Promise<MadeKey | { failed: string }> }>;

  constructor(specs: readonly HostKeySpec[], comment: string) {
    this.#comment = comment;
    this.#keys = specs.map((spec) => ({
      ...spec,
      made: makeHostKey(spec.type, spec.bits, comment).catch((err: unknown) => ({
        failed: (err as Error).message,
      })),
    }));
  }

  /** The key made ahead for this type, size and comment, or undefined. */
  take(
    type: string,
    bits: number | undefined,
    comment: string,
  ): Promise<MadeKey | { failed: string }> | undefined {
    if (comment !== this.#comment) return undefined;
    const i = this.#keys.findIndex((k) => k.type === type && k.bits === bits);
    if (i < 0) return undefined;
    const [key] = this.#keys.splice(i, 1);
    // One that failed ahead is made again here, so that its failure is said as it would be without the forge.
    return key!.made.then((made) => ('failed' in made ? makeHostKey(type, bits, comment) : made));
  }

  /** How many keys made ahead were not taken yet. */
  get pending(): number {
    return this.#keys.length;
  }

  async discard(): Promise<void> {
    const left = this.#keys.splice(0);
    await Promise.all(left.map((k) => k.made));
  }
}
