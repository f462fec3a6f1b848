/**
 * `imgcast server`: one process with the database, the image store, the session scheduler, a
 * multicast sender per sending session, the HTTP API and the discovery responder.
 */
import { mkdir } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { pino, type Logger } from 'pino';

import type { ServerConfig } from '../api/schemas.ts';
import { addressOf, checkRange, type AddressRange } from './address-pool.ts';
import { startDiscoveryResponder } from './discovery.ts';
import { buildApp, type ApiApp, type AppContext } from './app.ts';
import { adminToken } from './auth.ts';
import { consoleRoutes } from './console.ts';
import { liveRoutesWith, type LiveOptions } from './events.ts';
import { imageRoutes } from './image-routes.ts';
import { bootRoutesWith } from './boot-routes.ts';
import { NetBoot } from './netboot.ts';
import { bootenvVersion, bootenvWarnings } from './bootenv.ts';
import { startPxe, type PxeOptions } from './pxe.ts';
import { Tasks } from './tasks.ts';
import { AutoSessions } from './auto-sessions.ts';
import { Counters } from './counters.ts';
import { isPostgresLocation, openDatabase, redactLocation, type Db } from './db.ts';
import { Site, type SiteServer } from './site.ts';
import { ImageStore } from './images.ts';
import { ImageJobs } from './jobs.ts';
import { SendThreads } from './send-thread.ts';
import { historyCutoff, Settings } from './settings.ts';
import { SessionManager, type SendSession } from './sessions.ts';
import { uploadRoutesWith, type UploadOptions } from './uploads.ts';
import { Workstations } from './workstations.ts';

export const DEFAULT_RANGE: AddressRange = { firstGroup: '239.255.43.1', firstPort: 7750, slots: 100 };

export interface ServerOptions {
  dataDir: string;
  /**
   * The database: a SQLite file (default DATA/imgcast.db) or a postgres:// URL that several
   * servers of a site share (each with its own --name and --url).
   */
  database?: string;
  /** Where workstations on other subnets reach this server (what the others refer them to). */
  publicUrl?: string;
  /** How often it tells the site it is up and reads the shared settings again (default 10 s; tests shorten it). */
  siteHeartbeatMs?: number;
  imagesDir?: string;
  /** Address and port of the HTTP API (default 0.0.0.0:7740). */
  host?: string;
  port?: number;
  /** Local IPv4 address to multicast from (and that workstations connect to for data). */
  interface?: string;
  range?: AddressRange;
  name?: string;
  version: string;
  /** Where logs go (default: JSON lines on stdout at info). */
  logger?: Logger;
  /** Replaces the multicast send (tests of the scheduler); default: the real sender. */
  send?: SendSession;
  /** Extra route sets. */
  plugins?: AppContext['plugins'];
  /** Limits of uploads (img make --server): idle timeout, how many at once. */
  uploads?: UploadOptions;
  /** Seconds to wait for joined workstations to connect once a session starts (default 60). */
  connectTimeoutMs?: number;
  /** How long a sending master workstation may be silent before its run fails (default 30 s). */
  masterLostMs?: number;
  /** Pace of the console's live status (GET /api/events). */
  live?: LiveOptions;
  /** Discovery responder on this group:port (undefined: none). */
  discovery?: { group: string; port: number };
  /** The imaging environment network boots load (default DATA/bootenv). */
  bootenvDir?: string;
  /** Kernel arguments the network-booted environment gets besides the server's. */
  kernelArgs?: string;
  /** Answer network boot requests (dnsmasq as a supervised child); undefined: the HTTP routes only. */
  pxe?: Omit<PxeOptions, 'httpPort' | 'log'>;
}

export interface RunningServer {
  url: string;
  app: ApiApp;
  db: Db;
  sessions: SessionManager;
  adminToken: string;
  adminTokenFile: string;
  adminTokenCreated: boolean;
  dataDir: string;
  imagesDir: string;
  bootenvDir: string;
  /** The SQLite file or the PostgreSQL URL (password hidden). */
  database: string;
  /** The servers sharing the database, this one first (as of the last heartbeat). */
  servers(): SiteServer[];
  /** What the administrator should fix in the setup (status shows them too); read again on each call. */
  warnings(): string[];
  close(): Promise<void>;
}

export async function startServer(o: ServerOptions): Promise<RunningServer> {
  const dataDir = resolve(o.dataDir);
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const imagesDir = resolve(o.imagesDir ?? join(dataDir, 'images'));
  const bootenvDir = resolve(o.bootenvDir ?? join(dataDir, 'bootenv'));
  const range = o.range ?? DEFAULT_RANGE;
  checkRange(range);
  const log = o.logger ?? pino({ level: process.env.IMGCAST_LOG_LEVEL ?? 'info' });
  const location = o.database ?? join(dataDir, 'imgcast.db');
  const db = await openDatabase(location);
  const cleanup: Array<() => Promise<void>> = [async () => db.destroy()];
  try {
    const token = await adminToken(dataDir);
    const name = o.name ?? hostname();
    const host = o.host ?? '0.0.0.0';
    const shared = isPostgresLocation(location);
    const site = await Site.join({
      db,
      shared,
      ...(o.siteHeartbeatMs !== undefined ? { heartbeatMs: o.siteHeartbeatMs } : {}),
      name,
      // Known once the API listens (its port may be chosen then), unless given.
      url: o.publicUrl ?? '',
      version: o.version,
      place: `${hostname()}:${dataDir}`,
    });
    cleanup.unshift(() => site.close());
    const counters = await Counters.load(db, name, site.formerNames);
    cleanup.unshift(() => counters.close());
    const images = await ImageStore.open(imagesDir);
    const settings = await Settings.load(db, (m) => log.warn(m));
    // Another server of the site may change them: each heartbeat reads them again.
    if (shared) site.onBeat(() => settings.reload());
    const workstations = new Workstations(db);
    await workstations.load();
    if (shared) site.onBeat(() => workstations.reload());
    const threads = o.send ? undefined : new SendThreads(o.interface);
    if (threads) cleanup.unshift(() => threads.close());
    const sessions = new SessionManager({
      db,
      server: name,
      elsewhere: (session) => site.elsewhere(session),
      formerNames: site.formerNames,
      images,
      counters,
      range,
      send: o.send ?? threads!.send,
      // The real sender can be readied ahead of the trigger; a scripted one (tests) is not.
      warm: threads !== undefined,
      senderHost: o.interface,
      log,
      connectTimeoutMs: o.connectTimeoutMs,
      masterLostMs: o.masterLostMs,
      describeWorkstation: (id) => workstations.brief(id),
      identityOrder: (id) => workstations.identityOrder(id),
      assignName: (id, template) => workstations.assignName(id, template),
      defaults: () => settings.current(),
      onIdentity: (id, applied, session, image) => workstations.recordIdentity(id, applied, session, image),
    });
    await sessions.start();
    cleanup.unshift(() => sessions.close());
    // Before the sessions close: sends that end then load no thread for a next session.
    if (threads) cleanup.unshift(() => threads.close());
    const auto = new AutoSessions(sessions, workstations, () => {
      const s = settings.current();
      return { clients: s.autoClients, waitMinutes: s.autoWaitMinutes };
    });
    // Runs older than the days kept leave the history: at start, every hour, and when the days change.
    const keepHistory = async () => {
      const before = historyCutoff(settings.current().historyDays, Date.now());
      if (before === null) return;
      try {
        const removed = await sessions.forgetHistory(before);
        if (removed > 0) log.info({ runs: removed, before }, 'runs older than the history keeps removed');
      } catch (err) {
        log.warn({ err }, 'cannot trim the history');
      }
    };
    await keepHistory();
    const historyTimer = setInterval(() => void keepHistory(), 3600_000);
    historyTimer.unref();
    cleanup.unshift(async () => clearInterval(historyTimer));
    settings.onChange(keepHistory);
    // How this server was started, for the settings page; the port and the network boot are known once they run.
    const started: { port: number; pxe: ServerConfig['boot']['pxe'] } = { port: o.port ?? 7740, pxe: null };
    const config = (): ServerConfig => ({
      name: ctx.name,
      version: o.version,
      startedAt: ctx.startedAt,
      listen: { host, port: started.port },
      dataDir,
      imagesDir: images.dir,
      database: redactLocation(location),
      multicast: {
        interface: o.interface ?? null,
        firstGroup: range.firstGroup,
        lastGroup: addressOf(range, range.slots - 1).group,
        firstPort: range.firstPort,
        lastPort: range.firstPort + 2 * range.slots - 1,
        slots: range.slots,
      },
      discovery: o.discovery ? { group: o.discovery.group, port: o.discovery.port } : null,
      boot: {
        bootenvDir,
        bootenvVersion: bootenvVersion(bootenvDir),
        kernelArgs: o.kernelArgs ?? null,
        pxe: started.pxe,
      },
    });
    const warnings = bootenvWarnings(bootenvDir, o.version);
    for (const w of warnings()) log.warn({ bootenv: bootenvDir }, w);
    const ctx: AppContext = {
      name,
      site,
      version: o.version,
      startedAt: Date.now(),
      db,
      adminToken: token.token,
      images,
      sessions,
      auto,
      workstations,
      settings,
      config,
      jobs: new ImageJobs(),
      tasks: new Tasks(sessions, workstations),
      netboot: new NetBoot({ db, sessions, auto, workstations, log }),
      counters,
      log,
      warnings,
      plugins: [
        uploadRoutesWith(o.uploads),
        liveRoutesWith(o.live),
        imageRoutes,
        bootRoutesWith({ bootenvDir, kernelArgs: o.kernelArgs }),
        consoleRoutes,
        ...(o.plugins ?? []),
      ],
    };
    const app = await buildApp(ctx);
    cleanup.unshift(async () => {
      await app.close();
      await workstations.flush();
    });
    await app.listen({ host, port: o.port ?? 7740 });
    const addr = app.server.address();
    const port = typeof addr === 'object' && addr ? addr.port : (o.port ?? 7740);
    started.port = port;
    if (!o.publicUrl) await site.setUrl(defaultUrl(host, port, o.interface));
    const url = `http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${port}`;
    if (o.discovery) {
      const responder = await startDiscoveryResponder({
        group: o.discovery.group,
        port: o.discovery.port,
        interface: o.interface,
        // The API is reachable on the requester's subnet only where it listens there too.
        answer: (_from, local) => {
          const at = host === '0.0.0.0' ? local : host;
          return at ? { api: `http://${at}:${port}`, name: ctx.name } : undefined;
        },
        log: (line) => log.info(line),
      });
      cleanup.unshift(() => responder.close());
    }
    if (o.pxe) {
      const pxe = await startPxe({
        ...o.pxe,
        httpPort: port,
        leaseFile: join(dataDir, 'pxe-leases'),
        log: log.child({ part: 'pxe' }),
      });
      cleanup.unshift(() => pxe.close());
      started.pxe = {
        mode: o.pxe.mode,
        interface: pxe.interface,
        address: pxe.address,
        range: o.pxe.range ?? null,
      };
    }
    let closed: Promise<void> | undefined;
    return {
      url,
      app,
      db,
      sessions,
      adminToken: token.token,
      adminTokenFile: token.file,
      adminTokenCreated: token.created,
      dataDir,
      imagesDir,
      bootenvDir,
      database: redactLocation(location),
      servers: () => site.known(),
      warnings,
      close: () => (closed ??= runAll(cleanup)),
    };
  } catch (err) {
    await runAll(cleanup);
    throw err;
  }
}

/**
 * What the other servers of a site tell workstations to use when no --url is given: the
 * multicast interface's address (the server's address on the lab's network), else the listen
 * address, else this machine's name.
 */
function defaultUrl(host: string, port: number, iface: string | undefined): string {
  const at = iface ?? (host !== '0.0.0.0' && host !== '::' ? host : hostname());
  return `http://${at.includes(':') ? `[${at}]` : at}:${port}`;
}

async function runAll(steps: Array<() => Promise<void>>): Promise<void> {
  for (const step of steps) {
    try {
      await step();
    } catch {
      // Each part is closed regardless of the others.
    }
  }
}
