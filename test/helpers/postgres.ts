/**
 * Throwaway PostgreSQL clusters for tests of the shared (site) database: initdb in a temporary
 * directory, a server that listens on a Unix socket in that directory only (never TCP), trust
 * authentication, fsync off. The server refuses to run as root, so initdb and pg_ctl run as the
 * `postgres` system user (runuser); the tests connect as root through the socket, which root may
 * reach whatever its permissions. Tests skip, saying why, where that cannot be done.
 *
 * URLs take the form pg accepts for a socket: postgresql://postgres@/DB?host=/socket/dir&port=N
 */
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import { chownSync, existsSync, readdirSync, rmSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, type TestContext } from 'node:test';
import { promisify } from 'node:util';
import { Client } from 'pg';

import { hasCommand, isRoot, skipUnless } from './env.ts';

const run = promisify(execFile);

/** The newest installed server's binaries (Debian: /usr/lib/postgresql/VERSION/bin), or undefined. */
function binDir(): string | undefined {
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) return undefined;
  const versions = readdirSync(root)
    .filter((v) => ['initdb', 'pg_ctl', 'postgres'].every((b) => existsSync(join(root, v, 'bin', b))))
    .sort((a, b) => Number.parseFloat(b) - Number.parseFloat(a));
  return versions[0] === undefined ? undefined : join(root, versions[0], 'bin');
}

let unavailableCache: string | undefined | null = null;
/** Why a throwaway PostgreSQL cluster cannot run here, or undefined when it can. */
export function postgresUnavailable(): string | undefined {
  if (unavailableCache !== null) return unavailableCache;
  if (!binDir())
    return (unavailableCache =
      'needs the PostgreSQL server (initdb, pg_ctl, postgres in /usr/lib/postgresql/*/bin: apt-get install postgresql)');
  if (!isRoot())
    return (unavailableCache = 'needs root to run a throwaway PostgreSQL cluster as the postgres user');
  if (!hasCommand('runuser'))
    return (unavailableCache = 'needs runuser (util-linux) to run PostgreSQL as postgres');
  if (spawnSync('id', ['-u', 'postgres'], { stdio: 'ignore' }).status !== 0)
    return (unavailableCache = 'needs the postgres system user (the postgresql package makes it)');
  return (unavailableCache = undefined);
}

export interface PostgresCluster {
  /** The directory holding the data, the log and the server's socket. */
  dir: string;
  port: number;
  /** A URL reaching `database` through the socket as `user` (the cluster trusts everyone). */
  url(database: string, user?: string): string;
  /** Creates a database no test has used and returns its URL. */
  createDatabase(): Promise<string>;
  /** Stops the server at once (nothing in it is kept) and removes the directory; idempotent. */
  stop(): void;
}

/** Starts a cluster; the caller stops it (postgresCluster and postgresPerFile do). */
export async function startPostgres(): Promise<PostgresCluster> {
  const bin = binDir()!;
  const dir = await mkdtemp(join(tmpdir(), 'imgcast-pg-'));
  const data = join(dir, 'data');
  const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
  chownSync(dir, uid, gid);
  // The socket directory is this cluster's own, so any port number is free there; a random one
  // keeps the System V shared memory keys (derived from it) of clusters started together apart.
  const port = 20_000 + Math.floor(Math.random() * 40_000);
  const asPostgres = (cmd: string, args: string[]) =>
    run('runuser', ['-u', 'postgres', '--', join(bin, cmd), ...args], { cwd: dir });
  let stopped = false;
  const stop = (): void => {
    if (stopped) return;
    stopped = true;
    process.off('exit', stop);
    if (existsSync(join(data, 'postmaster.pid')))
      spawnSync(
        'runuser',
        ['-u', 'postgres', '--', join(bin, 'pg_ctl'), '-D', data, '-m', 'immediate', 'stop'],
        {
          cwd: dir,
          stdio: 'ignore',
        },
      );
    rmSync(dir, { recursive: true, force: true });
  };
  // Should the test runner never get to its after hooks, the server still goes with the process.
  process.on('exit', stop);
  try {
    await asPostgres('initdb', [
      '-D',
      data,
      '-U',
      'postgres',
      '-A',
      'trust',
      '-E',
      'UTF8',
      '--locale=C',
      '--no-sync',
      '--no-instructions',
    ]);
    const options = [
      "-c listen_addresses=''",
      `-k ${dir}`,
      `-p ${port}`,
      '-c fsync=off',
      '-c synchronous_commit=off',
      '-c full_page_writes=off',
    ].join(' ');
    await asPostgres('pg_ctl', [
      '-D',
      data,
      '-l',
      join(dir, 'log'),
      '-o',
      options,
      '-w',
      '-t',
      '60',
      'start',
    ]);
  } catch (err) {
    stop();
    const e = err as Error & { stderr?: string };
    throw new Error(`cannot start a throwaway PostgreSQL cluster: ${e.message}\n${e.stderr ?? ''}`, {
      cause: err,
    });
  }
  const url = (database: string, user = 'postgres') =>
    `postgresql://${user}@/${database}?host=${dir}&port=${port}`;
  let made = 0;
  return {
    dir,
    port,
    url,
    async createDatabase() {
      const name = `imgcast_${++made}`;
      const c = new Client({ connectionString: url('postgres') });
      await c.connect();
      try {
        await c.query(`CREATE DATABASE ${name}`);
      } finally {
        await c.end();
      }
      return url(name);
    },
    stop,
  };
}

/** A cluster for one test, stopped when it ends; undefined (the test skipped) where none can run. */
export async function postgresCluster(t: TestContext): Promise<PostgresCluster | undefined> {
  if (skipUnless(t, postgresUnavailable())) return undefined;
  const cluster = await startPostgres();
  t.after(() => cluster.stop());
  return cluster;
}

/**
 * One cluster for the tests of a file, started when the first asks for it and stopped once the
 * file's tests have run; each test gets a database of its own. Call at the file's top level.
 */
export function postgresPerFile(): {
  /** The shared cluster, or undefined (the test skipped) where none can run. */
  cluster(t: TestContext): Promise<PostgresCluster | undefined>;
  /** A new database's URL on the shared cluster, or undefined (the test skipped). */
  database(t: TestContext): Promise<string | undefined>;
} {
  let started: Promise<PostgresCluster> | undefined;
  after(async () => {
    if (started) (await started.catch(() => undefined))?.stop();
  });
  const cluster = async (t: TestContext) => {
    if (skipUnless(t, postgresUnavailable())) return undefined;
    started ??= startPostgres();
    return started;
  };
  return {
    cluster,
    async database(t) {
      return (await cluster(t))?.createDatabase();
    },
  };
}
