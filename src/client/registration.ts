/**
 * What a workstation tells the server when it registers: its inventory (inventory.ts), with a
 * MAC address to name it by even where it has no Ethernet card of its own (a container): a
 * stable, locally administered stand-in made from the host name.
 */
import { createHash } from 'node:crypto';

import type { Inventory as RegisteredInventory } from '../api/schemas.ts';
import { readInventory, type InventoryDisk } from './inventory.ts';

export async function registration(
  opts: { interface?: string } = {},
): Promise<RegisteredInventory & { disks: InventoryDisk[] }> {
  const inv = await readInventory(opts);
  const mac =
    inv.mac ??
    `02:${createHash('sha256')
      .update(inv.hostname)
      .digest('hex')
      .slice(0, 10)
      .replace(/(..)(?!$)/g, '$1:')}`;
  return {
    ...inv,
    hostname: inv.hostname.slice(0, 255) || 'workstation',
    mac,
    addresses: inv.addresses.slice(0, 64),
  };
}
