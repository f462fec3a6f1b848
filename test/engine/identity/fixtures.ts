/**
 * A reference workstation for identity tests: a GPT disk-image file with a vfat EFI partition
 * (with a systemd-boot random seed) and an ext4 root shaped like Debian's (os-release, host
 * name, hosts, machine ids, real SSH host keys of three types, a random seed, DHCP leases and
 * DUIDs), built without mounting (mke2fs -d, mtools) and captured with makeImage.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeImage } from '../../../src/engine/make.ts';
import type { Manifest } from '../../../src/image/types.ts';
import { hasCommand } from '../../helpers/env.ts';
import { MiB, sparse } from '../disk-fixtures.ts';

export const ESP = { start: MiB, size: 20 * MiB };
export const ROOT = { start: 21 * MiB, size: 43 * MiB };
export const REFERENCE_MACHINE_ID = '0123456789abcdef0123456789abcdef';
export const HOST_KEY_TYPES = ['ecdsa', 'ed25519', 'rsa'];

export const OS_RELEASE = `PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
ID=debian
`;

export const HOSTS = `127.0.0.1\tlocalhost
127.0.1.1\treference.lab.example reference

# The following lines are desirable for IPv6 capable hosts
::1     localhost ip6-localhost ip6-loopback
ff02::1 ip6-allnodes
ff02::2 ip6-allrouters
`;

/** What the tests need besides root and loop devices, or undefined. */
export function identityToolsMissing(): string | undefined {
  for (const c of ['ssh-keygen', 'mcopy', 'mkfs.vfat', 'sgdisk', 'fsck.ext4', 'fsck.vfat']) {
    if (!hasCommand(c)) return `needs ${c}`;
  }
  return undefined;
}

function sh(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: 'pipe', env });
}

/** The Debian-like root tree in `tree`. */
export async function debianTree(tree: string): Promise<void> {
  for (const d of [
    'etc/ssh',
    'usr/lib',
    'usr/sbin',
    'var/lib/dbus',
    'var/lib/systemd',
    'var/lib/dhcp',
    'var/lib/NetworkManager',
    'var/lib/dhcpcd',
    'home/student',
  ])
    await mkdir(join(tree, d), { recursive: true });
  await writeFile(join(tree, 'usr/lib/os-release'), OS_RELEASE);
  execFileSync('ln', ['-s', '../usr/lib/os-release', join(tree, 'etc/os-release')]);
  await writeFile(join(tree, 'etc/hostname'), 'reference\n');
  await writeFile(join(tree, 'etc/hosts'), HOSTS);
  await writeFile(join(tree, 'etc/machine-id'), `${REFERENCE_MACHINE_ID}\n`, { mode: 0o444 });
  await writeFile(join(tree, 'var/lib/dbus/machine-id'), `${REFERENCE_MACHINE_ID}\n`);
  for (const type of HOST_KEY_TYPES) {
    sh('ssh-keygen', [
      '-q',
      '-t',
      type,
      ...(type === 'rsa' ? ['-b', '2048'] : type === 'ecdsa' ? ['-b', '384'] : []),
      '-N',
      '',
      '-C',
      'root@reference',
      '-f',
      join(tree, `etc/ssh/ssh_host_${type}_key`),
    ]);
  }
  await writeFile(
    join(tree, 'etc/ssh/ssh_host_ed25519_key-cert.pub'),
    'ssh-ed25519-cert-v01@openssh.com AAAA fake\n',
  );
  await writeFile(join(tree, 'etc/ssh/sshd_config'), 'PermitRootLogin no\n');
  await writeFile(join(tree, 'usr/sbin/sshd'), '#!/bin/sh\n', { mode: 0o755 });
  await writeFile(join(tree, 'var/lib/systemd/random-seed'), randomBytes(512), { mode: 0o600 });
  await writeFile(join(tree, 'var/lib/dhcp/dhclient.enp1s0.leases'), 'lease { fixed-address 10.0.0.7; }\n');
  await writeFile(join(tree, 'var/lib/dhcp/dhclient6.leases'), 'default-duid "\\000\\001";\n');
  await writeFile(join(tree, 'var/lib/NetworkManager/internal-5f3c-enp1s0.lease'), 'ADDRESS=10.0.0.7\n');
  await writeFile(join(tree, 'var/lib/NetworkManager/secret_key'), randomBytes(32), { mode: 0o600 });
  await writeFile(
    join(tree, 'var/lib/NetworkManager/NetworkManager.state'),
    '[main]\nNetworkingEnabled=true\n',
  );
  await writeFile(join(tree, 'var/lib/dhcpcd/duid'), '00:01:00:01:2c:aa:bb:cc\n');
  await writeFile(join(tree, 'home/student/notes.txt'), 'keep me\n');
}

export interface LinuxReference {
  disk: string;
  image: string;
  manifest: Manifest;
  tree: string;
}

/** The reference disk (64 MiB, GPT: p1 vfat ESP, p2 ext4 Debian-like root), captured into `dir`/ref.imgc. */
export async function linuxReference(dir: string): Promise<LinuxReference> {
  const disk = await sparse(join(dir, 'ref.img'), 64 * MiB + MiB);
  sh('sgdisk', ['-n1:2048:+20M', '-t1:ef00', '-c1:EFI system', '-n2:0:+43M', '-t2:8300', '-c2:root', disk]);
  const tree = join(dir, 'tree');
  await debianTree(tree);
  sh('mkfs.ext4', [
    '-q',
    '-F',
    '-L',
    'labroot',
    '-E',
    `offset=${ROOT.start}`,
    '-d',
    tree,
    disk,
    `${ROOT.size / 1024}k`,
  ]);
  const esp = join(dir, 'esp.img');
  await sparse(esp, ESP.size);
  sh('mkfs.vfat', ['-F', '16', '-n', 'LABESP', esp]);
  const espTree = join(dir, 'esp');
  await mkdir(join(espTree, 'loader'), { recursive: true });
  await mkdir(join(espTree, 'EFI/BOOT'), { recursive: true });
  await writeFile(join(espTree, 'loader/random-seed'), randomBytes(32));
  await writeFile(join(espTree, 'EFI/BOOT/BOOTX64.EFI'), randomBytes(64 * 1024));
  const mtools = { ...process.env, MTOOLS_SKIP_CHECK: '1' };
  sh('mcopy', ['-s', '-m', '-i', esp, join(espTree, 'loader'), join(espTree, 'EFI'), '::/'], mtools);
  sh('dd', [`if=${esp}`, `of=${disk}`, 'bs=1M', `seek=${ESP.start / MiB}`, 'conv=notrunc', 'status=none']);
  const image = join(dir, 'ref.imgc');
  const { manifest } = await makeImage(disk, image, { level: 'speed' });
  return { disk, image, manifest, tree };
}
