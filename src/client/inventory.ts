/**
 * What a workstation tells the server about itself when it joins: enough for the server's
 * participation rules (name, MAC, IP, hardware) and for choosing the disk to image. Read from
 * the os module, /sys/block, /sys/class/net and /sys/class/dmi/id, with no tool to install;
 * a fact that cannot be read is left out, never an error, since an imaging environment
 * (initramfs, netboot, a container) may lack any of them.
 */
import { readdir, readFile, realpath, stat } from 'node:fs/promises';
import { availableParallelism, cpus, hostname, networkInterfaces, totalmem } from 'node:os';
import { join } from 'node:path';

export interface InventoryDisk {
  /** '/dev/sda', '/dev/nvme0n1'. */
  path: string;
  sizeBytes: number;
  model?: string;
  serial?: string;
  /** The kernel calls it removable, or it hangs off USB (USB hard disks say they are not removable). */
  removable: boolean;
  /** Spinning (true) or solid state (false), as the kernel believes. */
  rotational?: boolean;
}

export interface Inventory {
  hostname: string;
  /** MAC of the interface used (`interface`), else of the first wired Ethernet interface; absent with no Ethernet. */
  mac?: string;
  /** IPv4 addresses outside loopback. */
  addresses: string[];
  disks: InventoryDisk[];
  memoryBytes: number;
  /** `cores` counts logical processors (hyper-threads included), as the OS schedules them. */
  cpu: { model: string; cores: number };
  /** Serial and UUID are readable by root only; a non-root run has neither. */
  dmi: { vendor?: string; product?: string; serial?: string; uuid?: string };
}

/**
 * Block devices that are not disks of this machine, or that show a disk listed already:
 * loop (files), ram/zram (memory), sr (optical), fd (floppy), nbd (network), dm- (LVM,
 * LUKS, multipath over listed disks), md (software RAID over listed disks; imaging one view
 * of an array behind its members' backs would break the array, so it is never a default; a
 * user who means an array gives --disk /dev/mdN), and eMMC boot and RPMB areas of a listed
 * eMMC disk.
 */
const NOT_A_DISK = /^(?:loop|ram|zram|sr|fd|nbd|md)\d+$|^dm-\d+$|^md_|^mmcblk\d+(?:boot\d+|rpmb)$/;

/** Placeholders firmware vendors leave in DMI fields: saying nothing is more honest than these. */
const DMI_PLACEHOLDERS = new Set(
  [
    'to be filled by o.e.m.',
    'default string',
    'system serial number',
    'system product name',
    'system manufacturer',
    'not specified',
    'not applicable',
    'none',
    'n/a',
    '0',
    '0123456789',
    '00000000-0000-0000-0000-000000000000',
    'ffffffff-ffff-ffff-ffff-ffffffffffff',
    '03000200-0400-0500-0006-000700080009',
  ].map((s) => s.toLowerCase()),
);

export async function readInventory(opts: { interface?: string } = {}): Promise<Inventory> {
  const [disks, mac, dmi] = await Promise.all([readDisks(), readMac(opts.interface), readDmi()]);
  const addresses = Object.values(networkInterfaces())
    .flatMap((list) => list ?? [])
    .filter((a) => a.family === 'IPv4' && !a.internal)
    .map((a) => a.address);
  const list = cpus();
  return {
    hostname: hostname(),
    ...(mac ? { mac } : {}),
    addresses,
    disks,
    memoryBytes: totalmem(),
    cpu: { model: list[0]?.model.trim() ?? '', cores: list.length || availableParallelism() },
    dmi,
  };
}

async function readText(path: string): Promise<string | undefined> {
  try {
    const s = (await readFile(path, 'utf8')).trim();
    return s === '' ? undefined : s;
  } catch {
    return undefined;
  }
}

async function readDisks(): Promise<InventoryDisk[]> {
  const names = await readdir('/sys/block').catch(() => [] as string[]);
  const disks = await Promise.all(names.filter((n) => !NOT_A_DISK.test(n)).map(readDisk));
  return disks
    .filter((d): d is InventoryDisk => d !== undefined)
    .sort((a, b) => a.path.localeCompare(b.path));
}

async function readDisk(name: string): Promise<InventoryDisk | undefined> {
  const sys = join('/sys/block', name);
  const attr = (p: string) => readText(join(sys, p));
  // /sys/block/*/size counts 512-byte units whatever the disk's sector size.
  const sectors = Number(await attr('size'));
  if (!Number.isSafeInteger(sectors) || sectors <= 0) return undefined;
  // The paths of an NVMe multipath namespace: the disk itself is listed under its own name.
  if ((await attr('hidden')) === '1') return undefined;
  const udev = await udevProperties(await attr('dev'));
  const model = (await attr('device/model')) ?? udev.ID_MODEL?.replaceAll('_', ' ');
  const serial = (await attr('device/serial')) ?? (await attr('serial')) ?? udev.ID_SERIAL_SHORT;
  const rotational = await attr('queue/rotational');
  const overUsb = (await realpath(sys).catch(() => '')).includes('/usb');
  return {
    path: `/dev/${name}`,
    sizeBytes: sectors * 512,
    ...(model ? { model } : {}),
    ...(serial ? { serial } : {}),
    removable: (await attr('removable')) === '1' || overUsb,
    ...(rotational === '1' || rotational === '0' ? { rotational: rotational === '1' } : {}),
  };
}

/**
 * udev's record of a block device: the only place without an ioctl where a SATA disk's
 * serial is written down. Absent where udev does not run (a bare initramfs): then no serial.
 */
async function udevProperties(dev: string | undefined): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  if (!dev) return out;
  const text = await readText(`/run/udev/data/b${dev}`);
  for (const line of text?.split('\n') ?? []) {
    const m = /^E:(ID_MODEL|ID_SERIAL_SHORT)=(.+)$/.exec(line);
    if (m) out[m[1]!] = m[2]!.trim();
  }
  return out;
}

/**
 * With `address`, the MAC of the interface that has it. Otherwise the first Ethernet interface
 * by preference: a physical wired one (it has a device and is not wireless), one that has an
 * IPv4 address, then by name, so that the same machine names itself the same way every boot.
 */
async function readMac(address: string | undefined): Promise<string | undefined> {
  const ifaces = networkInterfaces();
  const usable = (mac: string | undefined): mac is string =>
    mac !== undefined && /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(mac) && mac !== '00:00:00:00:00:00';
  if (address !== undefined) {
    for (const [name, list] of Object.entries(ifaces)) {
      if (!(list ?? []).some((a) => a.address === address)) continue;
      const mac = (await readText(`/sys/class/net/${name}/address`)) ?? list?.[0]?.mac;
      if (usable(mac)) return mac.toLowerCase();
    }
  }
  const names = await readdir('/sys/class/net').catch(() => [] as string[]);
  const candidates: Array<{ name: string; mac: string; rank: number }> = [];
  for (const name of names) {
    const dir = `/sys/class/net/${name}`;
    // ARPHRD_ETHER: leaves out loopback, tunnels and the like.
    if ((await readText(`${dir}/type`)) !== '1') continue;
    const mac = await readText(`${dir}/address`);
    if (!usable(mac)) continue;
    const physical = await exists(`${dir}/device`);
    const wireless = (await exists(`${dir}/wireless`)) || (await exists(`${dir}/phy80211`));
    const addressed = (ifaces[name] ?? []).some((a) => a.family === 'IPv4' && !a.internal);
    const rank = (physical && !wireless ? 0 : 2) + (addressed ? 0 : 1);
    candidates.push({ name, mac: mac.toLowerCase(), rank });
  }
  candidates.sort((a, b) => a.rank - b.rank || a.name.localeCompare(b.name));
  return candidates[0]?.mac;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

async function readDmi(): Promise<Inventory['dmi']> {
  const field = async (file: string): Promise<string | undefined> => {
    const v = await readText(`/sys/class/dmi/id/${file}`);
    return v === undefined || DMI_PLACEHOLDERS.has(v.toLowerCase()) ? undefined : v;
  };
  const [vendor, product, serial, uuid] = await Promise.all(
    ['sys_vendor', 'product_name', 'product_serial', 'product_uuid'].map(field),
  );
  return {
    ...(vendor ? { vendor } : {}),
    ...(product ? { product } : {}),
    ...(serial ? { serial } : {}),
    ...(uuid ? { uuid: uuid.toLowerCase() } : {}),
  };
}
