/**
 * The HTTP API: Fastify with TypeBox schemas on every request and response (the same schemas
 * make the OpenAPI document at /api/openapi.json). Each route says who may call it in
 * `config.access`: public, workstation (a registered workstation's token) or admin (the admin
 * token or a login token). Every refusal is `{ error: CODE, message }` and changes nothing.
 */
import swagger from '@fastify/swagger';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import Fastify, { LogController, type FastifyInstance, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { Type } from 'typebox';

import {
  API_VERSION,
  AddRule,
  AutoChoice,
  BootDecision,
  CreateAutoSession,
  CreateTask,
  PhaseReport,
  Task,
  CreateSession,
  CreateWorkstation,
  EditSettings,
  EditWorkstation,
  Imported,
  ImportWorkstations,
  SessionMembers,
  WorkstationDetail,
  EditSession,
  ErrorBody,
  RuleCheck,
  RuleCheckResult,
  Health,
  HistoryEntry,
  Image,
  Inventory,
  JoinView,
  Login,
  LoginResult,
  Registered,
  Session,
  SessionName,
  ServerConfig,
  SettingsView,
  Status,
  StopSession,
  ClientReport,
  JoinRequest,
  MasterClaim,
  MasterReport,
  MasterView,
  Workstation,
} from '../api/schemas.ts';
import { ImgcastError } from '../errors.ts';
import { hashPassword, newToken, sameSecret, tokenHash, verifyPassword } from './auth.ts';
import type { AutoSessions } from './auto-sessions.ts';
import type { Counters } from './counters.ts';
import type { Db } from './db.ts';
import { SERVER_ERROR_STATUS, ServerError } from './errors.ts';
import type { ImageStore } from './images.ts';
import type { ImageJobs } from './jobs.ts';
import type { NetBoot } from './netboot.ts';
import { referral, type SessionManager } from './sessions.ts';
import type { Site } from './site.ts';
import { SETTING_DEFAULTS, type Settings } from './settings.ts';
import type { Tasks } from './tasks.ts';
import type { WorkstationIdentity, Workstations } from './workstations.ts';

export type Access = 'public' | 'workstation' | 'admin' | 'workstation-or-admin';
export type Principal = { kind: 'admin'; name: string } | ({ kind: 'workstation' } & WorkstationIdentity);

declare module 'fastify' {
  interface FastifyContextConfig {
    access?: Access;
  }
  interface FastifyRequest {
    principal: Principal | null;
  }
}

export interface AppContext {
  name: string;
  /** The servers sharing this database (site.ts): where a session this one does not run runs. */
  site: Site;
  version: string;
  startedAt: number;
  db: Db;
  adminToken: string;
  images: ImageStore;
  sessions: SessionManager;
  auto: AutoSessions;
  workstations: Workstations;
  /** What the administrator changes while the server runs (settings.ts). */
  settings: Settings;
  /** How the server was started (fixed until the next start); read at each call. */
  config: () => ServerConfig;
  /** Verify, compact and adds of images under way, for their progress (jobs.ts). */
  jobs: ImageJobs;
  tasks: Tasks;
  netboot: NetBoot;
  counters: Counters;
  log: Logger;
  /** What the administrator should fix in the server's setup, as status shows it (see bootenv.ts). */
  warnings: () => string[];
  /** Upload routes and any other part that registers its own. */
  plugins?: Array<(app: ApiApp, ctx: AppContext) => void | Promise<void>>;
}

export type ApiApp = FastifyInstance<
  import('node:http').Server,
  import('node:http').IncomingMessage,
  import('node:http').ServerResponse,
  Logger,
  TypeBoxTypeProvider
>;

const LOGIN_TTL_MS = 12 * 3600_000;
/** Longest a workstation's wait call is held open. */
const MAX_WAIT_MS = 25_000;
const errors = {
  400: ErrorBody,
  401: ErrorBody,
  403: ErrorBody,
  404: ErrorBody,
  409: ErrorBody,
  501: ErrorBody,
};

export async function buildApp(ctx: AppContext): Promise<ApiApp> {
  const app = Fastify({
    loggerInstance: ctx.log,
    // Hundreds of workstations poll: a log line per request would drown the session events.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: 1024 * 1024,
    return503OnClosing: true,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', allErrors: false } },
  }).withTypeProvider<TypeBoxTypeProvider>() as unknown as ApiApp;

  await app.register(swagger, {
    openapi: {
      info: { title: 'imgcast imaging server', version: ctx.version },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
  });

  app.decorateRequest('principal', null);
  app.addHook('onRequest', async (req) => {
    // A call that does not exist says so to everyone: a workstation asking an older server for
    // something it lacks must hear "no such API call", not that it may not.
    if (req.is404) return;
    const access = req.routeOptions.config.access ?? 'admin';
    if (access === 'public') return;
    req.principal = await authenticate(ctx, req);
    if (!req.principal) {
      throw new ServerError(
        'E_UNAUTHORIZED',
        req.headers.authorization
          ? 'the token is not valid on this server'
          : 'this call needs a token (Authorization: Bearer …)',
      );
    }
    const kind = req.principal.kind;
    const allowed =
      access === 'workstation-or-admin' ||
      (access === 'admin' && kind === 'admin') ||
      (access === 'workstation' && kind === 'workstation');
    if (!allowed) {
      throw new ServerError(
        'E_FORBIDDEN',
        kind === 'workstation'
          ? 'workstations may only register, ask what to join, join sessions, report and upload'
          : 'this call is for workstations',
      );
    }
    if (kind === 'workstation') ctx.counters.add('requestsReceived');
  });

  // PostgreSQL keeps no NUL character in text (SQLite does): refused alike on both, before
  // anything is stored, rather than failing half way with a database error.
  app.addHook('preValidation', async (req) => {
    for (const [part, value] of [
      ['body', req.body],
      ['path', req.params],
      ['query', req.query],
    ] as const) {
      if (holdsNul(value))
        throw new ServerError('E_BAD_REQUEST', `the request's ${part} holds a NUL character (\\u0000)`);
    }
  });

  // A session another server of the site runs: the caller hears where (a client referral) rather
  // than that there is no such session. Asked after validation, so the name is the route's.
  app.addHook('preHandler', async (req) => {
    const name = (req.params as { name?: unknown } | undefined)?.name;
    if (typeof name !== 'string' || !req.routeOptions.url?.startsWith('/api/sessions/:name')) return;
    if (ctx.sessions.isHere(name)) return;
    const other = await ctx.site.elsewhere(name);
    if (!other) return;
    if (req.principal?.kind === 'workstation') ctx.counters.add('clientReferrals');
    throw referral(other);
  });

  app.setErrorHandler((err: unknown, req, reply) => {
    const { status, body } = errorReply(err);
    if (status >= 500) {
      ctx.counters.add('errors');
      req.log.error({ err, url: req.url }, 'request failed');
    }
    void reply.status(status).send(body);
  });
  app.setNotFoundHandler((req, reply) => {
    void reply
      .status(404)
      .send({ error: 'E_NOT_FOUND', message: `no such API call: ${req.method} ${req.url.split('?')[0]}` });
  });

  const pub = { access: 'public' as const };
  const admin = { access: 'admin' as const };
  const ws = { access: 'workstation' as const };

  app.get('/api/openapi.json', { config: pub, schema: { hide: true } }, async () => app.swagger());

  app.get('/api/health', { config: pub, schema: { response: { 200: Health } } }, async () => ({
    ok: true,
    name: ctx.name,
    version: ctx.version,
    api: API_VERSION,
  }));

  app.post(
    '/api/login',
    { config: pub, schema: { body: Login, response: { 200: LoginResult, ...errors } } },
    async (req) => {
      const row = await ctx.db
        .selectFrom('admins')
        .selectAll()
        .where('name', '=', req.body.name)
        .executeTakeFirst();
      if (!row || !(await verifyPassword(req.body.password, row.password_hash))) {
        throw new ServerError('E_UNAUTHORIZED', 'wrong name or password');
      }
      const token = newToken();
      const now = Date.now();
      await ctx.db
        .insertInto('logins')
        .values({
          token_hash: tokenHash(token),
          admin: row.name,
          created_at: now,
          expires_at: now + LOGIN_TTL_MS,
        })
        .execute();
      return { token, expiresAt: now + LOGIN_TTL_MS };
    },
  );

  app.post(
    '/api/logout',
    { config: admin, schema: { response: { 204: Type.Null(), ...errors } } },
    async (req, reply) => {
      // Ends a console sign-in; the admin token (a file on the server) is not a sign-in and stays.
      const token = /^Bearer\s+(\S+)$/i.exec(req.headers.authorization ?? '')?.[1] ?? '';
      await ctx.db.deleteFrom('logins').where('token_hash', '=', tokenHash(token)).execute();
      void reply.status(204);
      return null;
    },
  );

  // --- administration
  app.get('/api/status', { config: admin, schema: { response: { 200: Status, ...errors } } }, async () => {
    await ctx.site.refresh();
    return statusOf(ctx);
  });

  // --- server settings: the defaults the administrator changes, beside how the server was started
  const settingsView = () => ({
    settings: ctx.settings.current(),
    defaults: { ...SETTING_DEFAULTS },
    server: ctx.config(),
  });
  app.get(
    '/api/settings',
    { config: admin, schema: { response: { 200: SettingsView, ...errors } } },
    async () => settingsView(),
  );
  app.patch(
    '/api/settings',
    { config: admin, schema: { body: EditSettings, response: { 200: SettingsView, ...errors } } },
    async (req) => {
      await ctx.settings.change(req.body);
      return settingsView();
    },
  );

  app.get(
    '/api/sessions',
    { config: admin, schema: { response: { 200: Type.Array(Session), ...errors } } },
    async () => ctx.sessions.list(),
  );

  app.post(
    '/api/sessions',
    { config: admin, schema: { body: CreateSession, response: { 201: Session, ...errors } } },
    async (req, reply) => {
      if (req.body.waitMinutes !== undefined && req.body.waitSeconds !== undefined) {
        throw new ServerError('E_BAD_REQUEST', 'give waitMinutes or waitSeconds, not both');
      }
      void reply.status(201);
      return ctx.sessions.create(req.body);
    },
  );

  const byName = Type.Object({ name: SessionName });
  app.get(
    '/api/sessions/:name',
    { config: admin, schema: { params: byName, response: { 200: Session, ...errors } } },
    async (req) => ctx.sessions.get(req.params.name),
  );
  app.patch(
    '/api/sessions/:name',
    { config: admin, schema: { params: byName, body: EditSession, response: { 200: Session, ...errors } } },
    async (req) => ctx.auto.edit(req.params.name, req.body),
  );
  app.post(
    '/api/sessions/:name/start',
    {
      // The master of a session workstations opened starts it from its own console.
      config: { access: 'workstation-or-admin' as const },
      schema: { params: byName, response: { 200: Session, ...errors } },
    },
    async (req) =>
      req.principal?.kind === 'workstation'
        ? ctx.sessions.startNow(req.params.name, { workstation: req.principal.id })
        : ctx.sessions.startNow(req.params.name),
  );
  app.post(
    '/api/sessions/:name/restart',
    { config: admin, schema: { params: byName, response: { 200: Session, ...errors } } },
    async (req) => ctx.sessions.restart(req.params.name),
  );
  app.post(
    '/api/sessions/:name/stop',
    {
      config: admin,
      schema: { params: byName, body: Type.Optional(StopSession), response: { 200: Session, ...errors } },
    },
    async (req) => ctx.sessions.stop(req.params.name, req.body?.delete === true),
  );
  app.delete(
    '/api/sessions/:name',
    { config: admin, schema: { params: byName, response: { 200: Session, ...errors } } },
    async (req) => ctx.sessions.stop(req.params.name, true),
  );

  // --- automatic sessions (a session with a definition; the routes above apply to them too)
  app.get(
    '/api/auto-sessions',
    { config: admin, schema: { response: { 200: Type.Array(Session), ...errors } } },
    async () => ctx.auto.list(),
  );
  app.post(
    '/api/auto-sessions',
    { config: admin, schema: { body: CreateAutoSession, response: { 201: Session, ...errors } } },
    async (req, reply) => {
      const s = await ctx.auto.create(req.body);
      void reply.status(201);
      return s;
    },
  );
  const sessionCall = { config: admin, schema: { params: byName, response: { 200: Session, ...errors } } };
  app.post('/api/sessions/:name/enable', sessionCall, async (req) =>
    ctx.auto.setEnabled(req.params.name, true),
  );
  app.post('/api/sessions/:name/disable', sessionCall, async (req) =>
    ctx.auto.setEnabled(req.params.name, false),
  );
  app.post('/api/sessions/:name/up', sessionCall, async (req) => ctx.auto.move(req.params.name, 'up'));
  app.post('/api/sessions/:name/down', sessionCall, async (req) => ctx.auto.move(req.params.name, 'down'));
  const membersCall = {
    config: admin,
    schema: { params: byName, body: SessionMembers, response: { 200: Session, ...errors } },
  };
  app.post('/api/sessions/:name/include', membersCall, async (req) =>
    ctx.auto.include(req.params.name, req.body.workstations),
  );
  app.post('/api/sessions/:name/exclude', membersCall, async (req) =>
    ctx.auto.exclude(req.params.name, req.body.workstations),
  );
  app.post(
    '/api/sessions/:name/rules',
    { config: admin, schema: { params: byName, body: AddRule, response: { 200: Session, ...errors } } },
    async (req) => ctx.auto.addRule(req.params.name, req.body.rule),
  );
  app.delete(
    '/api/sessions/:name/rules/:number',
    {
      config: admin,
      schema: {
        params: Type.Object({ name: SessionName, number: Type.Integer({ minimum: 1 }) }),
        response: { 200: Session, ...errors },
      },
    },
    async (req) => ctx.auto.removeRule(req.params.name, req.params.number),
  );

  app.post(
    '/api/rules/check',
    { config: admin, schema: { body: RuleCheck, response: { 200: RuleCheckResult, ...errors } } },
    async (req) => ctx.auto.checkRule(req.body.rule),
  );

  app.get(
    '/api/history',
    {
      config: admin,
      schema: {
        querystring: Type.Object({ limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 10000 })) }),
        response: { 200: Type.Array(HistoryEntry), ...errors },
      },
    },
    async (req) => ctx.sessions.history(req.query.limit),
  );

  app.get(
    '/api/images',
    { config: admin, schema: { response: { 200: Type.Array(Image), ...errors } } },
    async () => ctx.images.list(),
  );
  const imageQuery = Type.Object({ path: Type.String({ minLength: 1, maxLength: 4096 }) });
  app.get(
    '/api/images/info',
    { config: admin, schema: { querystring: imageQuery, response: { 200: Image, ...errors } } },
    async (req) => ctx.images.info(req.query.path),
  );
  app.delete(
    '/api/images',
    {
      config: admin,
      schema: {
        querystring: imageQuery,
        response: { 200: Type.Object({ removed: Type.String() }), ...errors },
      },
    },
    async (req) => {
      const { name } = await ctx.images.resolve(req.query.path);
      const user = ctx.sessions.imageInUse(name);
      if (user)
        throw new ServerError('E_IMAGE_IN_USE', `${name} is used by session ${user}; stop it first`, {
          session: user,
        });
      return { removed: await ctx.images.remove(name) };
    },
  );

  app.get(
    '/api/workstations',
    { config: admin, schema: { response: { 200: Type.Array(Workstation), ...errors } } },
    async () => ctx.workstations.list(),
  );
  app.post(
    '/api/workstations',
    { config: admin, schema: { body: CreateWorkstation, response: { 201: Workstation, ...errors } } },
    async (req, reply) => {
      const w = await ctx.workstations.add(req.body);
      void reply.status(201);
      return w;
    },
  );
  app.post(
    '/api/workstations/import',
    { config: admin, schema: { body: ImportWorkstations, response: { 200: Imported, ...errors } } },
    async (req) => ctx.workstations.import(req.body.csv),
  );
  const byWorkstation = Type.Object({ ref: Type.String({ minLength: 1, maxLength: 255 }) });
  app.get(
    '/api/workstations/:ref',
    {
      config: admin,
      schema: { params: byWorkstation, response: { 200: WorkstationDetail, ...errors } },
    },
    async (req) => {
      const w = ctx.workstations.get(req.params.ref);
      return { ...w, auto: ctx.auto.choose(w.id) };
    },
  );
  app.patch(
    '/api/workstations/:ref',
    {
      config: admin,
      schema: { params: byWorkstation, body: EditWorkstation, response: { 200: Workstation, ...errors } },
    },
    async (req) => ctx.workstations.edit(req.params.ref, req.body),
  );
  app.delete(
    '/api/workstations/:ref',
    { config: admin, schema: { params: byWorkstation, response: { 200: Workstation, ...errors } } },
    async (req) => ctx.auto.removeWorkstation(req.params.ref),
  );

  // --- one-off tasks and network boots
  app.get(
    '/api/tasks',
    { config: admin, schema: { response: { 200: Type.Array(Task), ...errors } } },
    async () => ctx.tasks.list(),
  );
  app.post(
    '/api/tasks',
    { config: admin, schema: { body: CreateTask, response: { 201: Task, ...errors } } },
    async (req, reply) => {
      const task = await ctx.tasks.add(req.body);
      void reply.status(201);
      return task;
    },
  );
  app.delete(
    '/api/tasks/:ref',
    { config: admin, schema: { params: byWorkstation, response: { 200: Task, ...errors } } },
    async (req) => ctx.tasks.remove(req.params.ref),
  );
  app.get(
    '/api/boot/decisions',
    {
      config: admin,
      schema: {
        querystring: Type.Object(
          {
            limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 10000 })),
            workstation: Type.Optional(Type.String({ minLength: 1, maxLength: 255 })),
          },
          { additionalProperties: false },
        ),
        response: { 200: Type.Array(BootDecision), ...errors },
      },
    },
    async (req) =>
      ctx.netboot.recent(
        req.query.limit ?? 100,
        req.query.workstation === undefined ? undefined : ctx.workstations.get(req.query.workstation).mac,
      ),
  );

  const adminName = Type.Object({
    name: Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9._@-]+$' }),
  });
  app.get(
    '/api/admins',
    {
      config: admin,
      schema: {
        response: {
          200: Type.Array(Type.Object({ name: Type.String(), createdAt: Type.Number() })),
          ...errors,
        },
      },
    },
    async () =>
      // Sorted here: PostgreSQL's collation would order names unlike SQLite's bytes.
      (await ctx.db.selectFrom('admins').select(['name', 'created_at']).execute())
        .map((a) => ({ name: a.name, createdAt: Number(a.created_at) }))
        .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)),
  );
  app.post(
    '/api/admins',
    {
      config: admin,
      schema: {
        body: Type.Object(
          { name: adminName.properties.name, password: Type.String({ minLength: 8, maxLength: 1024 }) },
          { additionalProperties: false },
        ),
        response: { 204: Type.Null(), ...errors },
      },
    },
    async (req, reply) => {
      const hash = await hashPassword(req.body.password);
      await ctx.db
        .insertInto('admins')
        .values({ name: req.body.name, password_hash: hash, created_at: Date.now() })
        .onConflict((oc) => oc.column('name').doUpdateSet({ password_hash: hash }))
        .execute();
      // A new password ends the account's console sign-ins.
      await ctx.db.deleteFrom('logins').where('admin', '=', req.body.name).execute();
      void reply.status(204);
      return null;
    },
  );
  app.delete(
    '/api/admins/:name',
    { config: admin, schema: { params: adminName, response: { 204: Type.Null(), ...errors } } },
    async (req, reply) => {
      const r = await ctx.db.deleteFrom('admins').where('name', '=', req.params.name).executeTakeFirst();
      if (Number(r.numDeletedRows) === 0)
        throw new ServerError('E_NOT_FOUND', `no admin account ${req.params.name}`);
      await ctx.db.deleteFrom('logins').where('admin', '=', req.params.name).execute();
      void reply.status(204);
      return null;
    },
  );

  // --- workstations
  app.post(
    '/api/workstations/register',
    { config: pub, schema: { body: Inventory, response: { 200: Registered, ...errors } } },
    async (req) => {
      ctx.counters.add('requestsReceived');
      return ctx.workstations.register(req.body, req.ip);
    },
  );

  const me = (req: FastifyRequest) => req.principal as Extract<Principal, { kind: 'workstation' }>;
  app.get('/api/auto', { config: ws, schema: { response: { 200: AutoChoice, ...errors } } }, async (req) =>
    ctx.auto.choose(me(req).id),
  );
  app.post(
    '/api/workstations/me/phase',
    { config: ws, schema: { body: PhaseReport, response: { 204: Type.Null(), ...errors } } },
    async (req, reply) => {
      await ctx.netboot.report(me(req).id, req.body.phase);
      void reply.status(204);
      return null;
    },
  );
  app.post(
    '/api/sessions/:name/join',
    {
      config: ws,
      schema: { params: byName, querystring: JoinRequest, response: { 200: JoinView, ...errors } },
    },
    async (req) => ctx.auto.join(req.params.name, me(req), localAddress(req), req.query.open === true),
  );
  app.post(
    '/api/sessions/:name/master',
    { config: ws, schema: { params: byName, body: MasterClaim, response: { 200: MasterView, ...errors } } },
    async (req) => ctx.sessions.claimMaster(req.params.name, me(req), req.body, me(req).address),
  );
  app.get(
    '/api/sessions/:name/master/wait',
    {
      config: ws,
      schema: {
        params: byName,
        querystring: Type.Object({
          since: Type.Integer({ minimum: 0 }),
          timeoutMs: Type.Optional(Type.Integer({ minimum: 0, maximum: MAX_WAIT_MS })),
        }),
        response: { 200: MasterView, ...errors },
      },
    },
    async (req) =>
      ctx.sessions.masterWait(
        req.params.name,
        me(req).id,
        req.query.since,
        req.query.timeoutMs ?? MAX_WAIT_MS,
      ),
  );
  app.post(
    '/api/sessions/:name/master/report',
    { config: ws, schema: { params: byName, body: MasterReport, response: { 204: Type.Null(), ...errors } } },
    async (req, reply) => {
      await ctx.sessions.masterReport(req.params.name, me(req).id, req.body);
      void reply.status(204);
      return null;
    },
  );
  app.get(
    '/api/sessions/:name/wait',
    {
      config: ws,
      schema: {
        params: byName,
        querystring: Type.Object({
          since: Type.Integer({ minimum: 0 }),
          timeoutMs: Type.Optional(Type.Integer({ minimum: 0, maximum: MAX_WAIT_MS })),
        }),
        response: { 200: JoinView, ...errors },
      },
    },
    async (req) =>
      ctx.sessions.wait(
        req.params.name,
        me(req).id,
        req.query.since,
        req.query.timeoutMs ?? MAX_WAIT_MS,
        localAddress(req),
      ),
  );
  app.post(
    '/api/sessions/:name/report',
    { config: ws, schema: { params: byName, body: ClientReport, response: { 204: Type.Null(), ...errors } } },
    async (req, reply) => {
      await ctx.sessions.report(req.params.name, me(req).id, req.body);
      void reply.status(204);
      return null;
    },
  );

  for (const plugin of ctx.plugins ?? []) await plugin(app, ctx);
  return app;
}

/** Who the request's bearer token names, or null (also used to re-check a long-lived stream's token). */
export async function authenticate(ctx: AppContext, req: FastifyRequest): Promise<Principal | null> {
  const m = /^Bearer\s+(\S+)$/i.exec(req.headers.authorization ?? '');
  if (!m) return null;
  const token = m[1]!;
  if (sameSecret(token, ctx.adminToken)) return { kind: 'admin', name: 'admin' };
  const w = ctx.workstations.byToken(token, req.ip);
  if (w) return { kind: 'workstation', ...w };
  const login = await ctx.db
    .selectFrom('logins')
    .selectAll()
    .where('token_hash', '=', tokenHash(token))
    .executeTakeFirst();
  if (login && Number(login.expires_at) > Date.now()) return { kind: 'admin', name: login.admin };
  // Last, as it costs a query: a workstation registered on another server sharing the database.
  const stored = await ctx.workstations.byStoredToken(token, req.ip);
  if (stored) return { kind: 'workstation', ...stored };
  return null;
}

/** Whether a decoded JSON value (or route parameters) holds a NUL character in any string or key. */
function holdsNul(value: unknown, depth = 0): boolean {
  if (typeof value === 'string') return value.includes('\u0000');
  if (value === null || typeof value !== 'object' || depth > 64) return false;
  // Only what JSON and the router decode: an upload's bytes (a Buffer, a stream) are not text.
  const proto: unknown = Object.getPrototypeOf(value);
  if (!Array.isArray(value) && proto !== Object.prototype && proto !== null) return false;
  for (const [k, v] of Object.entries(value)) if (k.includes('\u0000') || holdsNul(v, depth + 1)) return true;
  return false;
}

/** The server address the request came in on: where the workstation can reach this machine. */
function localAddress(req: FastifyRequest): string {
  const a = req.socket.localAddress ?? '127.0.0.1';
  return a.startsWith('::ffff:') ? a.slice(7) : a;
}

function errorReply(err: unknown): {
  status: number;
  body: { error: string; message: string } & Record<string, unknown>;
} {
  if (err instanceof ServerError)
    return { status: err.status, body: { ...err.details, error: err.code, message: err.message } };
  if (err instanceof ImgcastError) {
    const status = (SERVER_ERROR_STATUS as Record<string, number>)[err.code] ?? 422;
    return { status, body: { ...err.details, error: err.code, message: err.message } };
  }
  const e = err as {
    code?: string;
    statusCode?: number;
    message?: string;
    validation?: unknown;
    validationContext?: string;
  };
  if (e.validation) {
    return {
      status: 400,
      body: { error: 'E_BAD_REQUEST', message: `bad ${e.validationContext ?? 'request'}: ${e.message}` },
    };
  }
  switch (e.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return { status: 413, body: { error: 'E_TOO_LARGE', message: 'the request body is too large' } };
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return {
        status: 415,
        body: { error: 'E_UNSUPPORTED_MEDIA', message: e.message ?? 'unsupported content type' },
      };
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return {
        status: 400,
        body: { error: 'E_BAD_JSON', message: `the body is not valid JSON: ${e.message}` },
      };
  }
  if (err instanceof SyntaxError && e.statusCode === 400) {
    return {
      status: 400,
      body: { error: 'E_BAD_JSON', message: `the body is not valid JSON: ${err.message}` },
    };
  }
  if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
    return { status: e.statusCode, body: { error: 'E_BAD_REQUEST', message: e.message ?? 'bad request' } };
  }
  return {
    status: 500,
    body: { error: 'E_INTERNAL', message: 'the server failed on this request; its log says why' },
  };
}

/** The body of GET /api/status, and of each status event of /api/events. */
export function statusOf(ctx: AppContext): Status {
  return {
    server: { name: ctx.name, version: ctx.version, startedAt: ctx.startedAt, warnings: ctx.warnings() },
    counters: ctx.counters.view(),
    sessions: ctx.sessions.list(),
    jobs: ctx.jobs.list(),
    servers: ctx.site.known(),
  };
}
