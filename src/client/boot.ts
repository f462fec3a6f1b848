/**
 * `--reboot`: once the restored disk is verified (and its identity applied), make the firmware
 * boot it next (boot-entry.ts plans it; efibootmgr carries it out under UEFI) and restart the
 * machine into it.
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { promisify } from 'node:util';

import type { Manifest } from '../image/types.ts';
import { efiLoaders, espOf, parseEfibootmgr, planBootEntry, type BootPlan } from './boot-entry.ts';
import { ClientError } from './errors.ts';

const run = promisify(execFile);

/** --reboot boots this machine from its own disk: a target that is no block device cannot be it. */
export function checkRebootTarget(target: string): void {
  if (!target.startsWith('/dev/')) {
    throw new ClientError(
      'E_REBOOT_TARGET',
      `--reboot boots this machine from the disk it restored, and ${target} is not a disk of this machine (a /dev device)`,
      { target },
    );
  }
}

/** Makes the restored disk the firmware's next boot; what was done, in words. */
export async function prepareBootNext(disk: string, manifest: Manifest, label: string): Promise<BootPlan> {
  const uefi = existsSync('/sys/firmware/efi');
  let listing: string | null = null;
  if (uefi)
    listing = await run('efibootmgr', ['-v']).then(
      (r) => r.stdout,
      () => null,
    );
  const esp = manifest.disk ? espOf(manifest.disk) : null;
  const list = listing === null ? null : parseEfibootmgr(listing);
  const plan = planBootEntry({
    uefi,
    netboot: process.env.IMGCAST_NETBOOT === '1',
    efibootmgr: listing !== null,
    list,
    disk,
    esp,
    loaders: esp ? efiLoaders(manifest, esp.number) : [],
    label,
  });
  if (plan.kind !== 'uefi' || !list) return plan;
  let entry = plan.entry;
  let order = list.order;
  if (plan.create) {
    const before = new Set(list.entries.map((e) => e.number));
    const made = parseEfibootmgr((await run('efibootmgr', plan.create)).stdout);
    entry = made.entries.find((e) => !before.has(e.number) && e.label === plan.label)?.number ?? null;
    order = made.order;
    if (!entry) {
      throw new ClientError('E_BOOT_ENTRY', `efibootmgr made no boot entry for ${plan.loader} on ${disk}`, {
        disk,
      });
    }
  }
  if (plan.appendToOrder && !order.includes(entry!))
    await run('efibootmgr', ['--bootorder', [...order, entry!].join(',')]);
  if (plan.bootNext) await run('efibootmgr', ['--bootnext', entry!]);
  return { ...plan, entry };
}

/**
 * How to restart, in order of preference: systemd's reboot, else the plain command. In the
 * network-booted imaging environment (IMGCAST_BOOTENV=1) there is no systemd, and its PID 1 is
 * a shell script that a plain reboot would only signal: `reboot -f` (busybox syncs first).
 */
export function rebootCommands(env: NodeJS.ProcessEnv = process.env): Array<[string, string[]]> {
  if (env.IMGCAST_BOOTENV === '1') return [['reboot', ['-f']]];
  return [
    ['systemctl', ['reboot']],
    ['reboot', []],
  ];
}

/** Restarts the machine (see rebootCommands). */
export async function rebootNow(): Promise<void> {
  const commands = rebootCommands();
  // What is written must reach the disk before a forced restart.
  if (process.env.IMGCAST_BOOTENV === '1') await exitsZero('sync', []);
  for (const [cmd, args] of commands) if (await exitsZero(cmd, args)) return;
  const tried = commands.map(([c, a]) => [c, ...a].join(' '));
  throw new ClientError(
    'E_REBOOT',
    tried.length > 1
      ? `neither ${tried.join(' nor ')} restarted this machine`
      : `${tried[0]} did not restart this machine`,
  );
}

function exitsZero(cmd: string, args: string[]): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const child = spawn(cmd, [...args], { stdio: 'ignore' });
    child.on('error', () => resolve(false));
    child.on('exit', (code) => resolve(code === 0));
  });
}
