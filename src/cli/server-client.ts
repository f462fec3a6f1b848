/**
 * How the admin CLI finds the server and its credentials: `-i SERVER`, else IMGCAST_SERVER,
 * else the config file's `server`, else this machine; the token from IMGCAST_TOKEN, else the
 * config file's `token`, else the admin-token file of the local server's data directory.
 * Config file: $XDG_CONFIG_HOME/imgcast/client.json (~/.config/imgcast/client.json).
 */
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

import { ApiClient, DEFAULT_API_PORT } from '../api/client.ts';
import { UsageError } from '../errors.ts';

/** Where `imgcast server` keeps its state unless told: /var/lib/imgcast/server for root, else ~/.local/share/imgcast. */
export function defaultDataDir(): string {
  if (process.env.IMGCAST_DATA) return process.env.IMGCAST_DATA;
  if (process.getuid?.() === 0) return '/var/lib/imgcast/server';
  return join(process.env.XDG_DATA_HOME ?? join(homedir(), '.local', 'share'), 'imgcast');
}

export function configFile(): string {
  return join(process.env.XDG_CONFIG_HOME ?? join(homedir(), '.config'), 'imgcast', 'client.json');
}

function readConfig(): { server?: string; token?: string } {
  let text: string;
  try {
    text = readFileSync(configFile(), 'utf8');
  } catch {
    return {};
  }
  try {
    const c = JSON.parse(text) as { server?: unknown; token?: unknown };
    return {
      ...(typeof c.server === 'string' ? { server: c.server } : {}),
      ...(typeof c.token === 'string' ? { token: c.token } : {}),
    };
  } catch (err) {
    throw new UsageError(`${configFile()} is not valid JSON: ${(err as Error).message}`);
  }
}

export function adminClient(opts: { server?: string; data?: string }): ApiClient {
  const config = readConfig();
  const server =
    opts.server ?? process.env.IMGCAST_SERVER ?? config.server ?? `127.0.0.1:${DEFAULT_API_PORT}`;
  let token = process.env.IMGCAST_TOKEN ?? config.token;
  if (!token) {
    try {
      token = readFileSync(join(opts.data ?? defaultDataDir(), 'admin-token'), 'utf8').trim();
    } catch {
      // Left unset: the server answers E_UNAUTHORIZED, and the message below says where tokens come from.
    }
  }
  const client = new ApiClient(server, token);
  if (!token) {
    const original = client.request.bind(client);
    client.request = async <T>(method: string, path: string, o?: Parameters<ApiClient['request']>[2]) => {
      try {
        return await original<T>(method, path, o);
      } catch (err) {
        if ((err as { code?: string }).code === 'E_UNAUTHORIZED') {
          throw new UsageError(
            `no admin token: set IMGCAST_TOKEN, put {"token": …} in ${configFile()}, or run on the server ` +
              `(whose token is in ${join(opts.data ?? defaultDataDir(), 'admin-token')})`,
          );
        }
        throw err;
      }
    };
  }
  return client;
}
