/**
 * Identity and post-imaging scripts on real restored targets: a GPT disk with a Debian-like
 * ext4 root and a vfat EFI partition, NTFS volumes with and without a sysprep answer file,
 * a single-partition image, and folders whose symlinks point out of the restored tree.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { lstat, mkdir, mkdtemp, readFile, readlink, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test, type TestContext } from 'node:test';

import { loopDevicesBackedBy, mountedUses } from '../../../src/disk/device.ts';
import { mountFilesystem, writesInPlace } from '../../../src/disk/filesystem.ts';
import { forgeHostKeys, postImaging, type PostImagingResult } from '../../../src/engine/identity/apply.ts';
import { IdentityError } from '../../../src/engine/identity/errors.ts';
import { computerNameOf } from '../../../src/engine/identity/unattend.ts';
import { makeImage } from '../../../src/engine/make.ts';
import { restoreImage } from '../../../src/engine/restore.ts';
import type { Manifest } from '../../../src/image/types.ts';
import { hasCommand, loopUnavailable, skipUnless, tempDir } from '../../helpers/env.ts';
import { trackedLoops } from '../../disk/loops.ts';
import { MiB, sparse } from '../disk-fixtures.ts';
import {
  ESP,
  HOST_KEY_TYPES,
  OS_RELEASE,
  REFERENCE_MACHINE_ID,
  ROOT,
  debianTree,
  identityToolsMissing,
  linuxReference,
  type LinuxReference,
} from './fixtures.ts';

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: 'pipe' });
}

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

/** Nothing of the target is mounted or attached any more. */
async function released(target: string): Promise<void> {
  assert.deepEqual(await mountedUses(target), [], 'nothing on the target is mounted');
  assert.deepEqual(await loopDevicesBackedBy(target), [], 'no loop device is left over the target');
}

/** Runs `check` with partition `p` of `disk` mounted read-only. */
async function withPartition<T>(
  t: TestContext,
  disk: string,
  p: { start: number; size: number },
  type: 'ext4' | 'ntfs-3g',
  check: (dir: string) => Promise<T>,
): Promise<T> {
  const loops = trackedLoops(t);
  const dev = await loops.attach(disk, { offset: p.start, size: p.size, readOnly: type !== 'ntfs-3g' });
  try {
    const m = await mountFilesystem(dev, type, { readOnly: true });
    try {
      return await check(m.dir);
    } finally {
      await m.unmount();
    }
  } finally {
    await loops.detach(dev);
  }
}

let reference: Promise<LinuxReference> | undefined;
let referenceDir: string | undefined;
after(() => (referenceDir ? rm(referenceDir, { recursive: true, force: true }) : undefined));

/** The reference disk, built once for the file's tests and removed after the last. */
function linuxRef(t: TestContext): Promise<LinuxReference> | undefined {
  if (skipUnless(t, loopUnavailable() ?? identityToolsMissing())) return undefined;
  reference ??= (async () => {
    referenceDir = await mkdtemp(join(tmpdir(), 'imgcast-identity-ref-'));
    return linuxReference(referenceDir);
  })();
  return reference;
}

async function restored(t: TestContext, ref: LinuxReference, name: string): Promise<string> {
  const dir = await tempDir(t);
  const target = join(dir, name);
  await restoreImage(ref.image, target, { fileset: 1, create: true });
  return target;
}

interface RootFacts {
  hostname: string;
  hosts: string;
  machineId: string;
  dbusMachineId: string;
  keys: Record<
    string,
    { fingerprint: string; pub: string; derivedPub: string; privMode: number; pubMode: number; owner: string }
  >;
  present: string[];
  notes: string;
  scriptFile?: string;
}

const STATE = [
  'var/lib/systemd/random-seed',
  'var/lib/dhcp/dhclient.enp1s0.leases',
  'var/lib/dhcp/dhclient6.leases',
  'var/lib/NetworkManager/internal-5f3c-enp1s0.lease',
  'var/lib/NetworkManager/secret_key',
  'var/lib/dhcpcd/duid',
  'etc/ssh/ssh_host_ed25519_key-cert.pub',
];
const KEPT = ['var/lib/NetworkManager/NetworkManager.state', 'home/student/notes.txt', 'etc/ssh/sshd_config'];

/** What identity is about in a restored root, read back from the disk through a fresh read-only mount. */
async function readRoot(t: TestContext, disk: string): Promise<RootFacts> {
  return withPartition(t, disk, ROOT, 'ext4', async (root) => {
    const read = (p: string) => readFile(join(root, p), 'utf8');
    const keys: RootFacts['keys'] = {};
    for (const type of HOST_KEY_TYPES) {
      const priv = join(root, `etc/ssh/ssh_host_${type}_key`);
      const fp = sh('ssh-keygen', ['-l', '-E', 'sha256', '-f', `${priv}.pub`]).split(' ')[1]!;
      const ps = await stat(priv);
      const pubs = await stat(`${priv}.pub`);
      keys[type] = {
        fingerprint: fp,
        pub: (await read(`etc/ssh/ssh_host_${type}_key.pub`)).trim(),
        derivedPub: sh('ssh-keygen', ['-y', '-f', priv]).trim(),
        privMode: ps.mode & 0o7777,
        pubMode: pubs.mode & 0o7777,
        owner: `${ps.uid}:${ps.gid} ${pubs.uid}:${pubs.gid}`,
      };
    }
    const present: string[] = [];
    for (const p of [...STATE, ...KEPT])
      if (await lstat(join(root, p)).catch(() => undefined)) present.push(p);
    return {
      hostname: await read('etc/hostname'),
      hosts: await read('etc/hosts'),
      machineId: await read('etc/machine-id'),
      dbusMachineId: await read('var/lib/dbus/machine-id'),
      keys,
      present,
      notes: '',
      scriptFile: await read('etc/imgcast-script').catch(() => undefined),
    };
  });
}

test('a restored Debian-like disk gets its own host name, hosts line, machine id, SSH host keys; seeds, leases and DUIDs go; scripts see it all', async (t) => {
  const ref = await linuxRef(t);
  if (!ref) return;
  const original = await readRoot(t, ref.disk);
  assert.equal(original.machineId, `${REFERENCE_MACHINE_ID}\n`);
  assert.deepEqual(original.present, [...STATE, ...KEPT], 'the reference holds every file identity removes');
  const esp = ref.manifest.volumes[0]!;
  assert.ok(esp.kind === 'files' && esp.entries.some((e) => e.path === 'loader/random-seed'));

  const results: PostImagingResult[] = [];
  const facts: RootFacts[] = [];
  for (const name of ['lab1-01', 'lab1-02']) {
    const target = await restored(t, ref, `${name}.img`);
    const r = await postImaging(target, ref.manifest, {
      identity: { name, mac: '52:54:00:12:34:56', address: '10.0.0.7', session: 'lab1', image: 'ref.imgc' },
      scripts: [
        {
          name: 'write-marker.sh',
          content: [
            'set -e',
            'printf "%s %s %s %s %s\\n" "$IMGCAST_NAME" "$IMGCAST_MAC" "$IMGCAST_ADDRESS" "$IMGCAST_SESSION" "$IMGCAST_IMAGE" > "$IMGCAST_ROOT/etc/imgcast-script"',
            'test "$(pwd)" = "$IMGCAST_ROOT"',
            'if [ -n "$IMGCAST_MOUNT_P1" ]; then ls "$IMGCAST_MOUNT_P1/EFI/BOOT"; else echo no-esp; fi >> "$IMGCAST_ROOT/etc/imgcast-script"',
            'printf "%s\\n" "$IMGCAST_MOUNTS" | cut -d= -f1 | tr "\\n" " " >> "$IMGCAST_ROOT/etc/imgcast-script"',
            'cat "$IMGCAST_ROOT/etc/hostname"',
            // Left running, holding a file on the root open: it must not keep the root mounted.
            'sleep 600 > "$IMGCAST_ROOT/var/held" &',
            'echo done >&2',
          ].join('\n'),
        },
      ],
    });
    await released(target);
    results.push(r);
    facts.push(await readRoot(t, target));

    // The restored filesystems are clean after being written again.
    for (const [p, fsck] of [
      [ROOT, ['fsck.ext4', '-fn']],
      [ESP, ['fsck.vfat', '-n']],
    ] as const) {
      const loops = trackedLoops(t);
      const dev = await loops.attach(target, { offset: p.start, size: p.size, readOnly: true });
      const f = spawnSync(fsck[0], [...fsck.slice(1), dev], { encoding: 'utf8' });
      await loops.detach(dev);
      assert.equal(f.status, 0, `${fsck[0]}: ${f.stdout}${f.stderr}`);
    }
    // Read with mtools, which needs no vfat driver in the kernel.
    const espCopy = await tempDir(t);
    const espLoops = trackedLoops(t);
    const espDev = await espLoops.attach(target, { offset: ESP.start, size: ESP.size, readOnly: true });
    execFileSync('mcopy', ['-s', '-n', '-i', espDev, '::/*', espCopy], {
      env: { ...process.env, MTOOLS_SKIP_CHECK: '1' },
      stdio: 'pipe',
    });
    await espLoops.detach(espDev);
    const espFiles = {
      seed: await lstat(join(espCopy, 'loader/random-seed')).catch(() => undefined),
      loader: await lstat(join(espCopy, 'EFI/BOOT/BOOTX64.EFI')).catch(() => undefined),
    };
    assert.equal(espFiles.seed, undefined, "systemd-boot's random seed is gone from the EFI partition");
    assert.ok(espFiles.loader, 'the rest of the EFI partition stays');
  }

  for (const [i, name] of ['lab1-01', 'lab1-02'].entries()) {
    const r = results[i]!.identity!;
    const f = facts[i]!;
    assert.equal(r.name, name);
    assert.equal(f.hostname, `${name}\n`);
    assert.equal(
      f.hosts,
      original.hosts.replace(
        '127.0.1.1\treference.lab.example reference',
        `127.0.1.1\t${name}.lab.example ${name}`,
      ),
    );
    assert.match(f.machineId, /^[0-9a-f]{32}\n$/);
    assert.equal(f.machineId, `${r.machineId}\n`);
    assert.equal(f.dbusMachineId, f.machineId, 'dbus machine-id (a file) holds the same new id');
    assert.notEqual(f.machineId, original.machineId);
    assert.deepEqual(
      r.sshHostKeys.map((k) => k.type).sort(),
      HOST_KEY_TYPES,
      'the same key types as the image',
    );
    for (const k of r.sshHostKeys) {
      const disk = f.keys[k.type]!;
      assert.equal(
        k.fingerprint,
        disk.fingerprint,
        `${k.type}: the fingerprint reported is the key's on disk`,
      );
      assert.equal(k.publicKey, disk.pub);
      assert.equal(
        disk.derivedPub.split(' ').slice(0, 2).join(' '),
        disk.pub.split(' ').slice(0, 2).join(' '),
        `${k.type}: the private key matches the public one`,
      );
      assert.notEqual(disk.fingerprint, original.keys[k.type]!.fingerprint, `${k.type}: not the image's key`);
      assert.ok(disk.pub.endsWith(` root@${name}`), disk.pub);
      assert.equal(disk.privMode, 0o600);
      assert.equal(disk.pubMode, 0o644);
      assert.equal(disk.owner, '0:0 0:0');
    }
    assert.equal(r.sshHostKeys.find((k) => k.type === 'rsa')?.bits, 2048, 'RSA at the image key size');
    assert.equal(r.sshHostKeys.find((k) => k.type === 'ecdsa')?.bits, 384, 'ECDSA on the image key curve');
    assert.deepEqual(
      f.present,
      KEPT,
      'seeds, leases, DUIDs, NetworkManager secret and the old certificate removed; the rest kept',
    );
    assert.deepEqual(
      r.volumes.map((v) => [v.volume, v.role]),
      [
        ['p1', 'efi'],
        ['p2', 'linux'],
      ],
    );
    assert.equal(r.volumes[1]!.system, 'Debian GNU/Linux 12 (bookworm)');
    assert.equal(r.windows, null);
    assert.ok(
      r.notes.some((n) => /ssh_host_ed25519_key-cert\.pub certified/.test(n)),
      r.notes.join('\n'),
    );

    const script = results[i]!.scripts;
    assert.equal(script.length, 1);
    assert.equal(script[0]!.status, 0);
    assert.equal(script[0]!.output, `${name}\ndone\n`);
    // A kernel without vfat (as on some CI machines) cannot show the EFI partition to scripts, and says so.
    const espMounted = await writesInPlace('vfat');
    assert.equal(
      f.scriptFile,
      `${name} 52:54:00:12:34:56 10.0.0.7 lab1 ref.imgc\n${espMounted ? 'BOOTX64.EFI\np1 p2 ' : 'no-esp\np2 '}`,
    );
    if (!espMounted)
      assert.deepEqual(results[i]!.notes, ['p1 (vfat) is not mounted: this kernel cannot mount vfat']);
  }
  assert.notEqual(facts[0]!.machineId, facts[1]!.machineId, 'two copies, two machine ids');
  for (const type of HOST_KEY_TYPES)
    assert.notEqual(
      facts[0]!.keys[type]!.fingerprint,
      facts[1]!.keys[type]!.fingerprint,
      `two copies, two ${type} keys`,
    );
});

test('host keys made ahead (forgeHostKeys) are used when they are the key identity wants; a wrongly guessed size is made afresh', async (t) => {
  const ref = await linuxRef(t);
  if (!ref) return;
  assert.equal(forgeHostKeys(ref.manifest, 1, undefined), undefined, 'without a name, nothing is made ahead');
  // Made from the manifest alone, before the restore: one key per host key file of the root,
  // at ssh-keygen's usual sizes (RSA 3072, ECDSA 256), while the reference has RSA 2048 and ECDSA 384.
  const forge = forgeHostKeys(ref.manifest, 1, 'lab1-03');
  assert.ok(forge);
  t.after(() => forge.discard());
  assert.equal(forge.pending, 3);
  const target = await restored(t, ref, 'forged.img');
  const r = await postImaging(target, ref.manifest, { identity: { name: 'lab1-03' }, hostKeys: forge });
  await released(target);
  assert.equal(forge.pending, 2, 'the ed25519 key made ahead was taken; the RSA and ECDSA guesses were not');
  const bits = Object.fromEntries(r.identity!.sshHostKeys.map((k) => [k.type, k.bits]));
  assert.deepEqual(bits, { ecdsa: 384, ed25519: 256, rsa: 2048 }, "the image's key sizes are kept");
  const facts = await readRoot(t, target);
  for (const type of HOST_KEY_TYPES) {
    const key = facts.keys[type]!;
    assert.equal(
      key.derivedPub.split(' ').slice(0, 2).join(' '),
      key.pub.split(' ').slice(0, 2).join(' '),
      `${type}: the private key matches the public one`,
    );
    assert.match(key.pub, / root@lab1-03$/);
    assert.equal(key.fingerprint, r.identity!.sshHostKeys.find((k) => k.type === type)!.fingerprint);
  }
  await forge.discard();
  assert.equal(forge.pending, 0);
});

test('a bad name is refused before anything is mounted or changed', async (t) => {
  const ref = await linuxRef(t);
  if (!ref) return;
  const target = await restored(t, ref, 'bad-name.img');
  const before = sha256(await readFile(target));
  for (const name of ['lab_01', 'lab1.example.org', '-x', '', 'x'.repeat(64)]) {
    await assert.rejects(
      postImaging(target, ref.manifest, {
        identity: { name },
        scripts: [{ name: 'x', content: 'touch /tmp/never' }],
      }),
      (err: unknown) => err instanceof IdentityError && err.code === 'E_IDENTITY_NAME',
      JSON.stringify(name),
    );
  }
  await released(target);
  assert.equal(sha256(await readFile(target)), before, 'the target is byte for byte as restored');
});

test('a failing script fails with its output, the scripts after it do not run, and everything is unmounted', async (t) => {
  const ref = await linuxRef(t);
  if (!ref) return;
  const target = await restored(t, ref, 'failing.img');
  await assert.rejects(
    postImaging(target, ref.manifest, {
      identity: { name: 'lab1-03' },
      scripts: [
        { name: 'first.sh', content: 'echo first ran > "$IMGCAST_ROOT/first"' },
        { name: 'broken.sh', content: '#!/bin/sh\necho about to fail\necho "no such share" >&2\nexit 3\n' },
        { name: 'never.sh', content: 'touch "$IMGCAST_ROOT/never"' },
      ],
    }),
    (err: unknown) => {
      assert.ok(err instanceof IdentityError, String(err));
      assert.equal(err.code, 'E_SCRIPT_FAILED');
      assert.match(
        err.message,
        /post-imaging script broken\.sh failed \(exit status 3\): about to fail \| no such share/,
      );
      assert.equal(err.details.output, 'about to fail\nno such share\n');
      assert.equal(err.details.status, 3);
      assert.deepEqual(err.details.notRun, ['never.sh']);
      assert.deepEqual(
        (err.details.ran as Array<{ name: string }>).map((r) => r.name),
        ['first.sh'],
      );
      return true;
    },
  );
  await released(target);
  const seen = await withPartition(t, target, ROOT, 'ext4', async (root) => ({
    first: await readFile(join(root, 'first'), 'utf8').catch(() => undefined),
    never: await lstat(join(root, 'never')).catch(() => undefined),
    hostname: await readFile(join(root, 'etc/hostname'), 'utf8'),
  }));
  assert.deepEqual(seen, { first: 'first ran\n', never: undefined, hostname: 'lab1-03\n' });
});

test('a script past its time limit is killed (its children too) and fails with E_SCRIPT_TIMEOUT', async (t) => {
  const ref = await linuxRef(t);
  if (!ref) return;
  const target = await restored(t, ref, 'slow.img');
  const started = Date.now();
  await assert.rejects(
    postImaging(target, ref.manifest, {
      scripts: [{ name: 'slow.sh', content: 'echo waiting\nsleep 300 & wait\n' }],
      scriptTimeoutMs: 700,
    }),
    (err: unknown) =>
      err instanceof IdentityError &&
      err.code === 'E_SCRIPT_TIMEOUT' &&
      /slow\.sh ran longer than 1 s and was killed; its output ended: waiting/.test(err.message),
  );
  assert.ok(Date.now() - started < 20_000, 'killed at once, not after the sleep');
  await released(target);
});

test('stopped mid-script (Ctrl-C): the script is killed, the stop is the reason, and everything is unmounted', async (t) => {
  const ref = await linuxRef(t);
  if (!ref) return;
  const target = await restored(t, ref, 'stopped.img');
  const stop = new AbortController();
  const reason = new Error('stopped by the test');
  const run = postImaging(target, ref.manifest, {
    identity: { name: 'lab1-06' },
    scripts: [{ name: 'long.sh', content: 'echo started\nsleep 300\n' }],
    signal: stop.signal,
    onScriptOutput: () => stop.abort(reason),
  });
  await assert.rejects(run, (err: unknown) => err === reason);
  await released(target);
});

test('scripts alone (no identity) change nothing else; IMGCAST_ROOT still names the Linux root', async (t) => {
  const ref = await linuxRef(t);
  if (!ref) return;
  const target = await restored(t, ref, 'scripts-only.img');
  const r = await postImaging(target, ref.manifest, {
    facts: { image: 'ref.imgc' },
    scripts: [
      { name: 'a.sh', content: 'echo "$IMGCAST_IMAGE:$IMGCAST_NAME:" > "$IMGCAST_ROOT/etc/imgcast-script"' },
    ],
  });
  assert.equal(r.identity, null);
  await released(target);
  const f = await readRoot(t, target);
  assert.equal(f.scriptFile, 'ref.imgc::\n');
  assert.equal(f.hostname, 'reference\n');
  assert.equal(f.machineId, `${REFERENCE_MACHINE_ID}\n`);
});

test('symlinks in a restored folder never lead identity outside it; symlinked files are replaced, not followed', async (t) => {
  if (skipUnless(t, identityToolsMissing())) return;
  const dir = await tempDir(t);
  const host = join(dir, 'host');
  await mkdir(join(host, 'victim-dir'), { recursive: true });
  await mkdir(join(host, 'victim-ssh'), { recursive: true });
  const victims: Record<string, string> = {
    'victim-hostname': 'HOST NAME\n',
    'victim-hosts': '127.0.1.1 host\n',
    'victim-machine-id': 'ffffffffffffffffffffffffffffffff\n',
    'victim-dir/old.leases': 'host lease\n',
    'victim-dir/random-seed': 'host seed\n',
    'victim-ssh/ssh_host_ed25519_key': 'host key\n',
  };
  for (const [p, c] of Object.entries(victims)) await writeFile(join(host, p), c);
  const src = join(dir, 'src');
  for (const d of ['etc', 'var/lib/systemd', 'var/lib/dbus']) await mkdir(join(src, d), { recursive: true });
  await writeFile(join(src, 'etc/os-release'), OS_RELEASE);
  await symlink(join(host, 'victim-hostname'), join(src, 'etc/hostname'));
  await symlink(`../../../../../../../../../../${host}/victim-hosts`, join(src, 'etc/hosts'));
  await symlink(join(host, 'victim-machine-id'), join(src, 'etc/machine-id'));
  await symlink('/etc/machine-id', join(src, 'var/lib/dbus/machine-id'));
  await symlink(join(host, 'victim-dir'), join(src, 'var/lib/dhcp'));
  await symlink(join(host, 'victim-dir'), join(src, 'var/lib/dhclient'));
  await symlink(join(host, 'victim-ssh'), join(src, 'etc/ssh'));
  await symlink(`../../../..${host}/victim-dir/random-seed`, join(src, 'var/lib/systemd/random-seed'));
  const image = join(dir, 'tree.imgc');
  const { manifest } = await makeImage(src, image, { level: 'speed' });
  const target = join(dir, 'restored');
  await restoreImage(image, target, { fileset: 1 });
  const hostStats = async () =>
    Promise.all(
      Object.keys(victims).map(async (p) => [
        p,
        await readFile(join(host, p), 'utf8'),
        (await stat(join(host, p))).mtimeMs,
      ]),
    );
  const before = await hostStats();

  const r = (await postImaging(target, manifest, { identity: { name: 'lab1-04' } })).identity!;

  assert.deepEqual(
    await hostStats(),
    before,
    'no file outside the restored folder was written, removed or touched',
  );
  const restoredSeed = await lstat(join(target, 'var/lib/systemd/random-seed')).catch(() => undefined);
  assert.equal(restoredSeed, undefined, 'the random seed (a symlink) was removed itself');
  assert.equal((await lstat(join(target, 'etc/hostname'))).isFile(), true);
  assert.equal(await readFile(join(target, 'etc/hostname'), 'utf8'), 'lab1-04\n');
  // Its target is outside the folder, so there was nothing to edit: a new one with the loopback lines.
  assert.equal(
    await readFile(join(target, 'etc/hosts'), 'utf8'),
    '127.0.0.1\tlocalhost\n127.0.1.1\tlab1-04\n::1\t\tlocalhost ip6-localhost ip6-loopback\n',
  );
  assert.equal(
    await readlink(join(target, 'var/lib/dbus/machine-id')),
    '/etc/machine-id',
    'a symlinked dbus id is left',
  );
  assert.equal(r.machineId, null);
  assert.deepEqual(
    r.sshHostKeys,
    [],
    "the host keys the symlinked /etc/ssh points to are the host machine's: none in the image",
  );
  assert.ok(
    r.notes.some((n) => /\/etc\/hostname was a symlink to .*victim-hostname; it is a file now/.test(n)),
    r.notes.join('\n'),
  );
  assert.ok(
    r.notes.some((n) => /\/etc\/machine-id is not a regular file/.test(n)),
    r.notes.join('\n'),
  );
});

test('a partition image whose machine-id is "uninitialized" keeps it; sshd without host keys gets the default set', async (t) => {
  if (skipUnless(t, loopUnavailable() ?? identityToolsMissing())) return;
  const dir = await tempDir(t);
  const tree = join(dir, 'tree');
  await debianTree(tree);
  await writeFile(join(tree, 'etc/machine-id'), 'uninitialized\n');
  execFileSync('sh', ['-c', `rm ${join(tree, 'etc/ssh')}/ssh_host_*`]);
  const part = await sparse(join(dir, 'root.img'), 32 * MiB);
  sh('mkfs.ext4', ['-q', '-F', '-d', tree, part]);
  const image = join(dir, 'root.imgc');
  const { manifest } = await makeImage(part, image, { level: 'speed' });
  assert.equal(manifest.disk, undefined);
  const target = await sparse(join(dir, 'target.img'), 40 * MiB);
  await restoreImage(image, target, { fileset: 1 });

  const r = (await postImaging(target, manifest, { identity: { name: 'lab1-05' } })).identity!;
  await released(target);
  assert.deepEqual(
    r.volumes.map((v) => [v.volume, v.role]),
    [['v0', 'linux']],
  );
  assert.equal(r.machineId, null);
  assert.ok(
    r.notes.some((n) => /"uninitialized" in the image, and kept so/.test(n)),
    r.notes.join('\n'),
  );
  assert.deepEqual(
    r.sshHostKeys.map((k) => k.type),
    ['rsa', 'ecdsa', 'ed25519'],
  );
  assert.ok(r.notes.some((n) => /sshd is installed but the image has no SSH host keys/.test(n)));
  const seen = await withPartition(t, target, { start: 0, size: 40 * MiB }, 'ext4', async (root) => ({
    machineId: await readFile(join(root, 'etc/machine-id'), 'utf8'),
    dbus: await lstat(join(root, 'var/lib/dbus/machine-id')).catch(() => undefined),
    keys: sh('sh', ['-c', `cd ${root}/etc/ssh && stat -c '%n %a %u' ssh_host_*`])
      .trim()
      .split('\n'),
    hostname: await readFile(join(root, 'etc/hostname'), 'utf8'),
  }));
  assert.equal(seen.machineId, 'uninitialized\n');
  assert.equal(seen.dbus, undefined, "dbus's copy of the reference's id was removed");
  assert.deepEqual(seen.keys, [
    'ssh_host_ecdsa_key 600 0',
    'ssh_host_ecdsa_key.pub 644 0',
    'ssh_host_ed25519_key 600 0',
    'ssh_host_ed25519_key.pub 644 0',
    'ssh_host_rsa_key 600 0',
    'ssh_host_rsa_key.pub 644 0',
  ]);
  assert.equal(seen.hostname, 'lab1-05\n');
});

// ------------------------------------------------------------------------------ Windows

const UNATTEND = `<?xml version="1.0" encoding="utf-8"?>
<unattend xmlns="urn:schemas-microsoft-com:unattend">
    <settings pass="specialize">
        <component name="Microsoft-Windows-Shell-Setup" processorArchitecture="amd64" publicKeyToken="31bf3856ad364e35" language="neutral" versionScope="nonSxS">
            <ComputerName>REFPC</ComputerName>
            <TimeZone>W. Europe Standard Time</TimeZone>
        </component>
    </settings>
</unattend>
`;

/** An MBR disk of one NTFS partition holding Windows folders and, with `answer`, Windows/Panther/unattend.xml. */
async function windowsImage(
  t: TestContext,
  dir: string,
  answer: boolean,
): Promise<{ image: string; manifest: Manifest }> {
  const disk = await sparse(join(dir, 'win.img'), 34 * MiB);
  execFileSync('sfdisk', ['-q', disk], { input: 'label: dos\nstart=2048, size=32MiB, type=7\n' });
  const loops = trackedLoops(t);
  const part = await loops.attach(disk, { offset: MiB, size: 32 * MiB });
  sh('mkntfs', ['-Q', '-F', '-q', '-L', 'Windows', part]);
  const m = await mountFilesystem(part, 'ntfs-3g', { readOnly: false });
  try {
    await mkdir(join(m.dir, 'Windows/System32/config'), { recursive: true });
    await mkdir(join(m.dir, 'Windows/Panther'), { recursive: true });
    await writeFile(join(m.dir, 'Windows/System32/config/SYSTEM'), 'hive');
    // Windows writes the name as it likes: the lookup ignores case.
    if (answer) await writeFile(join(m.dir, 'Windows/Panther/unattend.xml'), `\ufeff${UNATTEND}`);
  } finally {
    await m.unmount();
  }
  await loops.detach(part);
  const image = join(dir, 'win.imgc');
  const { manifest } = await makeImage(disk, image, { level: 'speed' });
  assert.ok(manifest.volumes[0]?.kind === 'raw' && manifest.volumes[0].detectedType === 'ntfs');
  return { image, manifest };
}

function ntfsUnavailable(): string | undefined {
  for (const c of ['mkntfs', 'ntfs-3g', 'sfdisk'])
    if (!hasCommand(c)) return `needs ${c} (packages ntfs-3g, fdisk)`;
  return undefined;
}

test('a Windows volume with a sysprep answer file gets the computer name (ntfs-3g); a name Windows cannot take is said, not set', async (t) => {
  if (skipUnless(t, loopUnavailable() ?? ntfsUnavailable())) return;
  const dir = await tempDir(t);
  const { image, manifest } = await windowsImage(t, dir, true);
  const target = join(dir, 'restored.img');
  await restoreImage(image, target, { fileset: 1, create: true });

  const r = (await postImaging(target, manifest, { identity: { name: 'lab1-01' } })).identity!;
  await released(target);
  assert.deepEqual(r.windows, {
    volume: 'p1',
    computerName: 'lab1-01',
    answerFiles: ['\\Windows\\Panther\\unattend.xml'],
  });
  assert.deepEqual(r.volumes, [
    { volume: 'p1', role: 'windows', system: 'Windows', changed: ['\\Windows\\Panther\\unattend.xml'] },
  ]);
  assert.ok(
    r.notes.includes('p1: \\Windows\\Panther\\unattend.xml: ComputerName REFPC -> lab1-01'),
    r.notes.join('\n'),
  );
  const part = { start: MiB, size: 32 * MiB };
  const bytes = await withPartition(t, target, part, 'ntfs-3g', (root) =>
    readFile(join(root, 'Windows/Panther/unattend.xml')),
  );
  assert.deepEqual(bytes.subarray(0, 3), Buffer.from([0xef, 0xbb, 0xbf]), 'the byte-order mark stays');
  assert.equal(bytes.subarray(3).toString('utf8'), UNATTEND.replace('REFPC', 'lab1-01'));
  assert.equal(computerNameOf(bytes.subarray(3).toString('utf8')), 'lab1-01');

  const long = (await postImaging(target, manifest, { identity: { name: 'lab-room101-pc17' } })).identity!;
  assert.equal(long.windows?.computerName, null);
  assert.match(
    long.windows?.why ?? '',
    /16 characters long and Windows computer names have at most 15: the answer file was left as it is/,
  );
  const after = await withPartition(t, target, part, 'ntfs-3g', (root) =>
    readFile(join(root, 'Windows/Panther/unattend.xml'), 'utf8'),
  );
  assert.equal(computerNameOf(after.replace(/^\ufeff/, '')), 'lab1-01', 'unchanged by the refused name');
  await released(target);
});

test('a Windows volume without an answer file: the result says plainly that the name was not set, and why', async (t) => {
  if (skipUnless(t, loopUnavailable() ?? ntfsUnavailable())) return;
  const dir = await tempDir(t);
  const { image, manifest } = await windowsImage(t, dir, false);
  const target = join(dir, 'restored.img');
  await restoreImage(image, target, { fileset: 1, create: true });
  const before = sha256(await readFile(target));
  const r = (await postImaging(target, manifest, { identity: { name: 'lab1-02' } })).identity!;
  await released(target);
  assert.equal(r.windows?.computerName, null);
  assert.match(
    r.windows?.why ?? '',
    /^no sysprep answer file on p1 \(looked for \\Windows\\Panther\\Unattend\\Unattend\.xml, .*\): the computer name was not set, and Windows keeps the image's$/,
  );
  assert.ok(r.notes.includes(`p1: ${r.windows!.why}`));
  assert.deepEqual(r.volumes, []);
  assert.equal(sha256(await readFile(target)), before, 'nothing on the volume changed');
});
