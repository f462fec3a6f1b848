/** How a workstation reaches its imaging server: found or told, registered, and which disk it works on. */
import { ApiClient } from '../api/client.ts';
import { discoveryEndpoint } from '../api/discovery.ts';
import type { Registered } from '../api/schemas.ts';
import { discoverServer } from './discover.ts';
import { pickDisk, systemDiskDevices, type DiskCandidate } from './pick-disk.ts';
import type { registration } from './registration.ts';

export async function register(
  server: string,
  inventory: Awaited<ReturnType<typeof registration>>,
  signal: AbortSignal | undefined,
): Promise<{ api: ApiClient; reg: Registered }> {
  const anon = new ApiClient(server);
  const reg = await anon.request<Registered>('POST', '/api/workstations/register', {
    body: inventory,
    signal,
  });
  return { api: new ApiClient(server, reg.token), reg };
}

export async function findServer(o: {
  interface?: string;
  signal?: AbortSignal;
  onNote?: (line: string) => void;
}): Promise<string> {
  const { group, port } = discoveryEndpoint();
  const found = await discoverServer({ group, port, interface: o.interface, signal: o.signal });
  o.onNote?.(`found imaging server ${found.name} at ${found.api}`);
  return found.api;
}

export async function chooseDisk(disks: DiskCandidate[]): Promise<string> {
  const picked = pickDisk(disks, { systemDisks: await systemDiskDevices() });
  if ('error' in picked) throw picked.error;
  return picked.disk;
}
