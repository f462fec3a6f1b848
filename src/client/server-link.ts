/** How a workstation reaches its imaging server: found or told, registered, and which disk it works on. */
import { ApiClient, ApiError } from '../api/client.ts';
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

/** A referral chain longer than this is a loop between misconfigured servers, not a site. */
const MAX_REFERRALS = 2;

/**
 * Runs `part` with the server's link; when that server answers that another server of its site
 * runs the session (E_REFERRED, a client referral), registers there and runs `part` again with it.
 * Only the session's first request can be referred, so nothing was done on the first server.
 */
export async function followReferrals<T>(
  first: { api: ApiClient; reg: Registered },
  inventory: Awaited<ReturnType<typeof registration>>,
  o: { signal?: AbortSignal; onNote?: (line: string) => void },
  part: (link: { api: ApiClient; reg: Registered }) => Promise<T>,
): Promise<T> {
  let link = first;
  for (let hop = 0; ; hop++) {
    try {
      return await part(link);
    } catch (err) {
      if (!(err instanceof ApiError) || err.code !== 'E_REFERRED' || hop >= MAX_REFERRALS) throw err;
      const to = err.details.url;
      if (typeof to !== 'string') throw err;
      o.onNote?.(`${err.message}: going on there`);
      link = await register(to, inventory, o.signal);
    }
  }
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
