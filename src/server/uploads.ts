/**
 * Uploads: `img make --server` captures a workstation's disk straight into the server's
 * image directory. The workstation names and compresses every chunk; the server proves each
 * one against its name before storing it as it came, and commits the manifest at the end.
 *
 * An upload writes through ImageWriter under a hidden temporary name beside the image
 * (`.<name>.upload-<id>`, `.partial` until the writer commits), so nothing is listed before
 * the commit and nothing an interrupted upload leaves can be mistaken for an image: the
 * writer's own crash rules hold, an idle upload is aborted, and what a killed server left is
 * removed at the next start.
 *
 *   POST   /api/uploads                        { name, level }   -> Upload
 *   GET    /api/uploads                        (admin)           -> Upload[]
 *   GET    /api/uploads/:id                                      -> Upload (also a keep-alive)
 *   PUT    /api/uploads/:id/chunks/:chunk      stored bytes      -> { chunk, stored }
 *   POST   /api/uploads/:id/have               { ids }           -> { have }
 *   POST   /api/uploads/:id/commit             { manifest }      -> { image, chunks, ... }
 *   DELETE /api/uploads/:id                                      -> { aborted }
 */
import { randomBytes } from 'node:crypto';
import { link, open, readdir, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { Logger } from 'pino';
import { Type } from 'typebox';

import {
  CommitUpload,
  CreateUpload,
  ErrorBody,
  UPLOAD_CODEC_HEADER,
  UPLOAD_RAW_LENGTH_HEADER,
  Upload,
  UploadChunkResult,
  UploadCommitted,
  UploadHave,
  UploadHaveResult,
} from '../api/schemas.ts';
import { ImageError } from '../image/errors.ts';
import { CHUNK_SIZE, type CompressionLevel, type Manifest } from '../image/types.ts';
import { ImageWriter } from '../image/writer.ts';
import type { ApiApp, AppContext, Principal } from './app.ts';
import type { Counters } from './counters.ts';
import { ServerError } from './errors.ts';
import type { ImageStore } from './images.ts';

export interface UploadOptions {
  /** An upload without a request for this long is aborted (default 10 minutes). */
  idleMs?: number;
  /** Uploads open at once (default 16); each holds a writer's buffers. */
  maxUploads?: number;
}

export const DEFAULT_UPLOAD_IDLE_MS = 10 * 60_000;
const DEFAULT_MAX_UPLOADS = 16;
/** A chunk body: at most a chunk's raw size (stored bytes never outgrow it), and room to spare. */
const CHUNK_BODY_LIMIT = CHUNK_SIZE + 64 * 1024;
/** A commit body: the manifest as JSON (17 MB for 55k files), well short of V8's longest string. */
const MANIFEST_BODY_LIMIT = 256 * 1024 * 1024;
/** What an upload leaves under its temporary name: `.<name>.upload-<id>` and its `.partial`. */
const TEMP_NAME = /^\..+\.upload-[0-9a-f]{32}(\.partial)?$/;
/** How many ended uploads keep their reason, for the message a late request gets. */
const ENDED_KEPT = 256;

interface OpenUpload {
  id: string;
  name: string;
  path: string;
  temp: string;
  level: CompressionLevel;
  owner: string;
  writer: ImageWriter;
  createdAt: number;
  lastActivityAt: number;
  /** Requests being handled now: an upload is not idle while one is. */
  busy: number;
  state: 'open' | 'committing';
}

export class Uploads {
  readonly idleMs: number;
  readonly maxUploads: number;
  #images: ImageStore;
  #counters: Counters;
  #log: Logger;
  #open = new Map<string, OpenUpload>();
  /** Image paths of open uploads. */
  #reserved = new Set<string>();
  #ended = new Map<string, string>();
  #timer: NodeJS.Timeout | undefined;
  #now: () => number;

  constructor(
    images: ImageStore,
    counters: Counters,
    log: Logger,
    opts: UploadOptions & { now?: () => number } = {},
  ) {
    this.#images = images;
    this.#counters = counters;
    this.#log = log;
    this.idleMs = opts.idleMs ?? DEFAULT_UPLOAD_IDLE_MS;
    this.maxUploads = opts.maxUploads ?? DEFAULT_MAX_UPLOADS;
    this.#now = opts.now ?? Date.now;
  }

  /** Removes what uploads of an earlier run left (the server was killed), then watches for idle ones. */
  async start(): Promise<void> {
    const removed = await removeTempFiles(this.#images.dir);
    if (removed.length > 0) {
      this.#log.warn({ files: removed }, 'removed what interrupted uploads left in the image directory');
    }
    const every = Math.max(50, Math.min(30_000, Math.floor(this.idleMs / 4)));
    this.#timer = setInterval(() => void this.#sweep(), every);
    this.#timer.unref();
  }

  async close(): Promise<void> {
    clearInterval(this.#timer);
    await Promise.all([...this.#open.values()].map((u) => this.#end(u, 'the server shut down')));
  }

  async create(name: string, level: CompressionLevel, owner: string): Promise<Upload> {
    if (this.#open.size >= this.maxUploads) {
      throw new ServerError(
        'E_UPLOAD_BUSY',
        `the server takes ${this.maxUploads} uploads at once; try again when one has finished`,
        { limit: this.maxUploads },
      );
    }
    const place = await this.#images.place(name);
    // Reserved before the next await, so two uploads of one name cannot both get past here.
    if (this.#reserved.has(place.path)) {
      throw new ServerError('E_IMAGE_EXISTS', `${place.name} is being uploaded already`, {
        path: place.name,
      });
    }
    this.#reserved.add(place.path);
    const id = randomBytes(16).toString('hex');
    const temp = join(dirname(place.path), `.${basename(place.path)}.upload-${id}`);
    let writer: ImageWriter;
    try {
      writer = await ImageWriter.create(temp, { level });
    } catch (err) {
      this.#reserved.delete(place.path);
      throw err;
    }
    const now = this.#now();
    const u: OpenUpload = {
      id,
      name: place.name,
      path: place.path,
      temp,
      level,
      owner,
      writer,
      createdAt: now,
      lastActivityAt: now,
      busy: 0,
      state: 'open',
    };
    this.#open.set(id, u);
    this.#log.info({ upload: id, image: u.name, owner, level }, 'upload started');
    return this.#view(u);
  }

  list(): Upload[] {
    return [...this.#open.values()].map((u) => this.#view(u));
  }

  /** The upload's view; counts as activity. */
  async touch(id: string, owner: string): Promise<Upload> {
    return this.#use(id, owner, async (u) => this.#view(u));
  }

  async putChunk(
    id: string,
    owner: string,
    chunk: string,
    codec: number,
    rawLength: number,
    stored: Buffer,
  ): Promise<boolean> {
    return this.#use(id, owner, async (u) => {
      try {
        return await u.writer.putStored(chunk, codec, rawLength, stored);
      } catch (err) {
        if (err instanceof ImageError && err.code === 'E_CHUNK_CORRUPT') {
          throw new ServerError('E_CHUNK_INVALID', `refused: ${err.message}`, { ...err.details });
        }
        throw this.#gone(u) ?? err;
      }
    });
  }

  async have(id: string, owner: string, ids: string[]): Promise<string[]> {
    return this.#use(id, owner, async (u) => ids.filter((c) => u.writer.hasChunk(c)));
  }

  /**
   * Commits the manifest (the writer checks it and that every chunk it names was stored),
   * then gives the image its name, refusing to replace one that appeared meanwhile. The
   * upload ends either way: a failed commit leaves nothing behind.
   */
  async commit(
    id: string,
    owner: string,
    manifest: Manifest,
  ): Promise<{ name: string; path: string; chunks: number; rawBytes: number; storedBytes: number }> {
    return this.#use(id, owner, async (u) => {
      if (u.state !== 'open')
        throw new ServerError('E_UPLOAD_STATE', `upload ${id} is being committed already`);
      u.state = 'committing';
      try {
        await u.writer.commit(manifest);
        try {
          // link() fails on an existing name where rename() would replace it.
          await link(u.temp, u.path);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
            throw new ServerError('E_IMAGE_EXISTS', `${u.name} appeared on the server during the upload`, {
              path: u.name,
            });
          }
          throw err;
        } finally {
          await unlink(u.temp).catch(() => {});
        }
        await fsyncDir(dirname(u.path));
      } catch (err) {
        await this.#end(u, 'its commit failed');
        throw err;
      }
      this.#open.delete(id);
      this.#reserved.delete(u.path);
      this.#remember(id, `upload ${id} was committed as ${u.name}`);
      this.#counters.add('imagesReceived');
      const s = u.writer.stats;
      this.#log.info(
        { upload: id, image: u.name, chunks: s.chunksStored, bytes: s.storedBytes },
        'upload committed',
      );
      return {
        name: u.name,
        path: u.path,
        chunks: s.chunksStored,
        rawBytes: s.rawBytes,
        storedBytes: s.storedBytes,
      };
    });
  }

  async abort(id: string, owner: string): Promise<void> {
    const u = this.#find(id, owner);
    if (u.state === 'committing') {
      throw new ServerError('E_UPLOAD_STATE', `upload ${id} is being committed; it cannot be aborted now`);
    }
    await this.#end(u, 'it was aborted by its uploader');
  }

  /** Runs one request on an upload: found, owned by the caller, and not idle while it runs. */
  async #use<T>(id: string, owner: string, work: (u: OpenUpload) => Promise<T>): Promise<T> {
    const u = this.#find(id, owner);
    u.busy++;
    u.lastActivityAt = this.#now();
    try {
      return await work(u);
    } finally {
      u.busy--;
      u.lastActivityAt = this.#now();
    }
  }

  #find(id: string, owner: string): OpenUpload {
    const u = this.#open.get(id);
    // Another uploader's upload is answered as unknown: its id is nobody else's business.
    if (!u || (owner !== u.owner && !owner.startsWith('admin:'))) {
      throw new ServerError('E_UPLOAD_UNKNOWN', this.#ended.get(id) ?? `no upload ${id} on this server`, {
        upload: id,
      });
    }
    return u;
  }

  /** The error for a request that met its upload's end (idle timeout, shutdown) while it ran. */
  #gone(u: OpenUpload): ServerError | undefined {
    if (this.#open.get(u.id) === u) return undefined;
    return new ServerError('E_UPLOAD_UNKNOWN', this.#ended.get(u.id) ?? `upload ${u.id} has ended`, {
      upload: u.id,
    });
  }

  async #end(u: OpenUpload, reason: string): Promise<void> {
    if (this.#open.get(u.id) !== u) return;
    this.#open.delete(u.id);
    this.#remember(u.id, `upload ${u.id} (${u.name}) was aborted: ${reason}`);
    this.#log.info({ upload: u.id, image: u.name, reason }, 'upload aborted');
    await u.writer.abort().catch((err: unknown) => {
      this.#log.warn({ err, upload: u.id }, 'aborting the upload failed');
    });
    // The writer removes its .partial; the temporary name exists only between commit and link.
    await unlink(u.temp).catch(() => {});
    this.#reserved.delete(u.path);
  }

  #remember(id: string, message: string): void {
    this.#ended.set(id, message);
    if (this.#ended.size > ENDED_KEPT) this.#ended.delete(this.#ended.keys().next().value!);
  }

  async #sweep(): Promise<void> {
    const now = this.#now();
    for (const u of [...this.#open.values()]) {
      if (u.state === 'open' && u.busy === 0 && now - u.lastActivityAt >= this.idleMs) {
        await this.#end(u, `no request came for ${spoken(this.idleMs)}`);
      }
    }
  }

  #view(u: OpenUpload): Upload {
    const s = u.writer.stats;
    return {
      id: u.id,
      name: u.name,
      level: u.level,
      owner: u.owner,
      createdAt: u.createdAt,
      lastActivityAt: u.lastActivityAt,
      idleMs: this.idleMs,
      chunks: s.chunksStored,
      rawBytes: s.rawBytes,
      storedBytes: s.storedBytes,
      state: u.state,
    };
  }
}

/** Files named like an upload's temporary ones, anywhere in the image directory (as deep as the listing looks). */
async function removeTempFiles(root: string): Promise<string[]> {
  const removed: string[] = [];
  const walk = async (dir: string, depth: number): Promise<void> => {
    const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
    for (const e of entries) {
      const full = join(dir, e.name);
      if (e.isFile() && TEMP_NAME.test(e.name)) {
        await unlink(full).then(
          () => removed.push(full),
          () => {},
        );
      } else if (e.isDirectory() && !e.name.startsWith('.') && depth < 8) {
        await walk(full, depth + 1);
      }
    }
  };
  await walk(root, 0);
  return removed;
}

function spoken(ms: number): string {
  if (ms >= 120_000) return `${Math.round(ms / 60_000)} minutes`;
  return `${ms >= 10_000 ? Math.round(ms / 1000) : (ms / 1000).toFixed(1)} s`;
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r').catch(() => undefined);
  if (!fh) return;
  await fh.sync().catch(() => {});
  await fh.close().catch(() => {});
}

function ownerOf(p: Principal | null): string {
  if (!p) throw new ServerError('E_UNAUTHORIZED', 'this call needs a token');
  return p.kind === 'admin' ? `admin:${p.name}` : `workstation:${p.id}`;
}

const errors = { 400: ErrorBody, 401: ErrorBody, 403: ErrorBody, 404: ErrorBody, 409: ErrorBody };
const byId = Type.Object({ id: Type.String({ pattern: '^[0-9a-f]{32}$' }) });

/** The upload routes with their own settings (tests use a short idle time). */
export function uploadRoutesWith(opts: UploadOptions = {}) {
  return async (app: ApiApp, ctx: AppContext): Promise<void> => {
    const uploads = new Uploads(ctx.images, ctx.counters, ctx.log, opts);
    await uploads.start();
    app.addHook('onClose', () => uploads.close());
    const access = { access: 'workstation-or-admin' as const };

    app.post(
      '/api/uploads',
      { config: access, schema: { body: CreateUpload, response: { 201: Upload, ...errors } } },
      async (req, reply) => {
        const created = await uploads.create(
          req.body.name,
          // The workstation compresses what it sends at the level the server answers with.
          req.body.level ?? ctx.settings.current().level,
          ownerOf(req.principal),
        );
        void reply.status(201);
        return created;
      },
    );
    app.get(
      '/api/uploads',
      { config: { access: 'admin' }, schema: { response: { 200: Type.Array(Upload), ...errors } } },
      async () => uploads.list(),
    );
    app.get(
      '/api/uploads/:id',
      { config: access, schema: { params: byId, response: { 200: Upload, ...errors } } },
      async (req) => uploads.touch(req.params.id, ownerOf(req.principal)),
    );
    app.post(
      '/api/uploads/:id/have',
      {
        config: access,
        schema: { params: byId, body: UploadHave, response: { 200: UploadHaveResult, ...errors } },
      },
      async (req) => ({ have: await uploads.have(req.params.id, ownerOf(req.principal), req.body.ids) }),
    );
    app.post(
      '/api/uploads/:id/commit',
      {
        config: access,
        bodyLimit: MANIFEST_BODY_LIMIT,
        schema: { params: byId, body: CommitUpload, response: { 200: UploadCommitted, ...errors } },
      },
      async (req) => {
        const done = await uploads.commit(
          req.params.id,
          ownerOf(req.principal),
          req.body.manifest as unknown as Manifest,
        );
        return {
          image: await ctx.images.describe(done.path),
          chunks: done.chunks,
          rawBytes: done.rawBytes,
          storedBytes: done.storedBytes,
        };
      },
    );
    app.delete(
      '/api/uploads/:id',
      {
        config: access,
        schema: { params: byId, response: { 200: Type.Object({ aborted: Type.String() }), ...errors } },
      },
      async (req) => {
        await uploads.abort(req.params.id, ownerOf(req.principal));
        return { aborted: req.params.id };
      },
    );

    // Chunk bodies are bytes: their parser lives in a scope of its own, so no other route takes them.
    await app.register(async (scope: ApiApp) => {
      scope.addContentTypeParser(
        'application/octet-stream',
        { parseAs: 'buffer', bodyLimit: CHUNK_BODY_LIMIT },
        (_req, body, done) => done(null, body),
      );
      scope.put(
        '/api/uploads/:id/chunks/:chunk',
        {
          config: access,
          bodyLimit: CHUNK_BODY_LIMIT,
          schema: {
            params: Type.Object({
              id: byId.properties.id,
              chunk: Type.String({ pattern: '^[0-9a-f]{64}$' }),
            }),
            headers: Type.Object({
              [UPLOAD_CODEC_HEADER]: Type.Integer({ minimum: 0, maximum: 255 }),
              [UPLOAD_RAW_LENGTH_HEADER]: Type.Integer({ minimum: 0, maximum: CHUNK_SIZE }),
            }),
            response: { 200: UploadChunkResult, ...errors },
          },
        },
        async (req) => {
          const body = req.body;
          if (body !== undefined && !Buffer.isBuffer(body)) {
            throw new ServerError('E_UNSUPPORTED_MEDIA', 'a chunk is sent as application/octet-stream');
          }
          const chunk = req.params.chunk;
          const stored = await uploads.putChunk(
            req.params.id,
            ownerOf(req.principal),
            chunk,
            req.headers[UPLOAD_CODEC_HEADER] as unknown as number,
            req.headers[UPLOAD_RAW_LENGTH_HEADER] as unknown as number,
            body ?? Buffer.alloc(0),
          );
          return { chunk, stored };
        },
      );
    });
  };
}

/** The upload routes with their default settings: `startServer({ plugins: [uploadRoutes] })`. */
export const uploadRoutes = uploadRoutesWith();
