/**
 * `img make --server`: a capture that goes straight into the imaging server's image
 * directory. The workstation names and compresses every chunk on its own cores (the image
 * writer's compression pool), sends each once with a few requests in flight, and commits
 * the manifest at the end; the server proves every chunk against its name and lists the
 * image only once it is committed. Memory stays bounded: the capture waits for a slot
 * when the network is the slower side.
 */
import { SlotSink } from '../image/slot-sink.ts';
import http from 'node:http';
import https from 'node:https';

import { registration } from './registration.ts';
import { ApiClient, ApiError } from '../api/client.ts';
import {
  UPLOAD_CODEC_HEADER,
  UPLOAD_RAW_LENGTH_HEADER,
  type Registered,
  type Upload,
  type UploadChunkResult,
  type UploadCommitted,
} from '../api/schemas.ts';
import { captureOnto, type CaptureOptions, type MakeResult } from '../engine/make.ts';
import { ImgcastError } from '../errors.ts';
import { CompressPool } from '../image/pool.ts';
import {
  CHUNK_SIZE,
  DEFAULT_LEVEL,
  FORMAT_VERSION,
  type CompressionLevel,
  type Manifest,
  type QueuedChunk,
} from '../image/types.ts';
import { IN_FLIGHT_SLOTS } from '../image/writer.ts';

/** Chunk requests in flight: enough to keep a LAN busy through each request's round trip. */
export const DEFAULT_PUTS_IN_FLIGHT = 4;
/** Tries of one idempotent request that met a dropped connection or a busy server. */
const TRIES = 5;
/** A chunk request that takes longer has met a dead connection (4 MiB take 3 s at 10 Mbit/s). */
const CHUNK_TIMEOUT_MS = 120_000;
/** The commit checks every reference and flushes the whole image to disk. */
const COMMIT_TIMEOUT_MS = 30 * 60_000;

export interface UploadStats {
  /** Chunks sent, and the server's answer that it stored them (not a duplicate of its own). */
  chunksSent: number;
  chunksStored: number;
  /** Chunks the capture handed over again, not sent a second time. */
  chunksDeduplicated: number;
  rawBytesSent: number;
  /** Bytes on the wire: the compressed chunks. */
  storedBytesSent: number;
  /** Requests sent again after a dropped connection, a busy server or a replaced token. */
  retries: number;
}

/** Who this workstation is to the server: an admin token, or a workstation registered now. */
export async function connect(
  server: string,
  opts: { token?: string; signal?: AbortSignal } = {},
): Promise<{ api: ApiClient; register?: () => Promise<void> }> {
  const api = new ApiClient(server, opts.token);
  if (opts.token) return { api };
  // The stale token may go along: registering is public, the server does not look at it.
  const register = async () => {
    const r = await api.request<Registered>('POST', '/api/workstations/register', {
      body: await registration(),
      signal: opts.signal,
    });
    api.token = r.token;
  };
  await register();
  return { api, register };
}

/**
 * A ChunkSink whose chunks go to an upload on the imaging server. Hashing and compression
 * run on the compression pool, in this sink's own slots of shared memory (leased to the
 * capture as the image writer's are), and each request sends its chunk straight from its
 * slot: IN_FLIGHT_SLOTS + `putsInFlight` chunks at most are in memory, whatever the network.
 */
export class UploadSink extends SlotSink {
  readonly id: string;
  readonly name: string;
  readonly level: CompressionLevel;
  readonly stats: UploadStats = {
    chunksSent: 0,
    chunksStored: 0,
    chunksDeduplicated: 0,
    rawBytesSent: 0,
    storedBytesSent: 0,
    retries: 0,
  };
  #api: ApiClient;
  #register: (() => Promise<void>) | undefined;
  #putsInFlight: number;
  /** Slots for chunks being compressed, as many as the image writer has, plus one per request: a request sends from its slot. */
  #sab: SharedArrayBuffer;
  #freeSlots: number[];
  #slots: number;
  /** Slots a request is sending from. */
  #sending = 0;
  #agent: http.Agent;
  #slotWaiters: Array<() => void> = [];
  #puts = 0;
  #putWaiters: Array<() => void> = [];
  /** Chunks being compressed whose id is not known yet. */
  #unnamed = new Set<Promise<void>>();
  #failure: Error | undefined;
  #closed = false;
  #stop = new AbortController();
  #aborting: Promise<void> | undefined;
  #lastRequestAt = Date.now();
  #keepAlive: NodeJS.Timeout | undefined;
  /** A registration under way: requests refused together wait for one new token. */
  #registering: Promise<void> | undefined;

  private constructor(
    api: ApiClient,
    upload: Upload,
    opts: { register?: () => Promise<void>; putsInFlight: number },
  ) {
    super();
    this.#api = api;
    this.#register = opts.register;
    this.id = upload.id;
    this.name = upload.name;
    this.level = upload.level;
    this.#putsInFlight = opts.putsInFlight;
    const slots = (this.#slots = IN_FLIGHT_SLOTS + opts.putsInFlight);
    this.#sab = new SharedArrayBuffer(slots * CHUNK_SIZE);
    this.#freeSlots = Array.from({ length: slots }, (_, i) => i);
    const secure = api.baseUrl.startsWith('https:');
    this.#agent = new (secure ? https : http).Agent({ keepAlive: true, maxSockets: opts.putsInFlight });
    // A capture may read for a long time without a chunk to send (a big disk mostly zeros):
    // the server must not take the upload for abandoned meanwhile.
    const every = Math.max(50, Math.floor(upload.idleMs / 3));
    this.#keepAlive = setInterval(() => {
      if (Date.now() - this.#lastRequestAt < every || this.#closed) return;
      void this.#retrying(() =>
        this.#api.request<Upload>('GET', this.#path(''), { signal: this.#stop.signal }),
      ).catch((err: unknown) => this.#fail(err));
    }, every);
    this.#keepAlive.unref();
  }

  static async create(
    api: ApiClient,
    opts: {
      name: string;
      /** None: the server's default level; the upload's answer says which it is. */
      level?: CompressionLevel;
      register?: () => Promise<void>;
      putsInFlight?: number;
      signal?: AbortSignal;
    },
  ): Promise<UploadSink> {
    const upload = await api.request<Upload>('POST', '/api/uploads', {
      body: { name: opts.name, level: opts.level },
      signal: opts.signal,
    });
    return new UploadSink(api, upload, {
      register: opts.register,
      putsInFlight: Math.max(1, opts.putsInFlight ?? DEFAULT_PUTS_IN_FLIGHT),
    });
  }

  protected async storeSlot(slot: number, id: string, rawLength: number): Promise<void> {
    try {
      await this.#compressAndSend(slot, rawLength, id);
    } catch (err) {
      this.#fail(err);
    }
  }

  protected countDeduplicated(): void {
    this.stats.chunksDeduplicated++;
  }

  /**
   * Waits for every chunk to be sent, then has the server commit the manifest; resolves
   * with what the server made of it. On any failure the upload is aborted.
   */
  async commit(manifest: Manifest): Promise<UploadCommitted> {
    this.check();
    try {
      await this.#settle();
      this.check();
      clearInterval(this.#keepAlive);
      const send = () =>
        this.#api.request<UploadCommitted>('POST', this.#path('/commit'), {
          body: { manifest },
          timeoutMs: COMMIT_TIMEOUT_MS,
          signal: this.#stop.signal,
        });
      let done: UploadCommitted;
      const used = this.#api.token;
      try {
        done = await send();
      } catch (err) {
        // Refused at the door (another process re-registered this workstation): nothing was committed.
        if (!(err instanceof ApiError && err.code === 'E_UNAUTHORIZED' && this.#register)) throw err;
        await this.#registerAgain(used);
        done = await send();
      }
      this.#closed = true;
      this.#agent.destroy();
      return done;
    } catch (err) {
      await this.abort().catch(() => {});
      throw err;
    }
  }

  /** Stops sending and has the server drop the upload; safe to call more than once. */
  abort(): Promise<void> {
    if (this.#aborting) return this.#aborting;
    if (this.#closed) return Promise.resolve();
    this.#aborting = (async () => {
      this.#closed = true;
      clearInterval(this.#keepAlive);
      this.#stop.abort(new ImgcastError('E_UPLOAD_ABORTED', `the upload of ${this.name} was aborted`));
      this.#wake();
      this.#agent.destroy();
      // Told first: chunks still being compressed (seconds at --level size) send nothing more.
      // Best effort: a server that cannot be told drops the upload once it has been idle long enough.
      await this.#api.request('DELETE', this.#path(''), { timeoutMs: 10_000 }).catch(() => {});
      await this.#settle();
    })();
    return this.#aborting;
  }

  #path(rest: string): string {
    return `/api/uploads/${this.id}${rest}`;
  }

  protected queueSlot(slot: number, rawLength: number): QueuedChunk {
    const named = CompressPool.shared().compress(this.#sab, slot * CHUNK_SIZE, rawLength, this.level, {
      hash: true,
    });
    const job = named.then(
      (r) => {
        const id = r.id!;
        if (this.known.has(id)) {
          this.stats.chunksDeduplicated++;
          this.releaseSlot(slot);
          return;
        }
        const send = this.#send(slot, id, rawLength, r.codec, r.storedLength).catch((err: unknown) =>
          this.#fail(err),
        );
        this.known.set(id, send);
        return send;
      },
      (err: unknown) => {
        this.releaseSlot(slot);
        this.#fail(err);
      },
    );
    this.#unnamed.add(job);
    void job.finally(() => this.#unnamed.delete(job));
    // The id comes with naming, not with the request: a failed send surfaces from the sink instead.
    const ref = named.then((r) => ({ id: r.id!, rawLength }));
    ref.catch(() => {});
    return { ref };
  }

  async #compressAndSend(slot: number, rawLength: number, id: string): Promise<void> {
    let slotHeld = true;
    try {
      const r = await CompressPool.shared().compress(this.#sab, slot * CHUNK_SIZE, rawLength, this.level);
      slotHeld = false;
      await this.#send(slot, id, rawLength, r.codec, r.storedLength);
    } finally {
      if (slotHeld) this.releaseSlot(slot);
    }
  }

  /** Sends one compressed chunk straight out of `slot`, which is released once the server has answered. */
  async #send(
    slot: number,
    id: string,
    rawLength: number,
    codec: number,
    storedLength: number,
  ): Promise<void> {
    try {
      await this.#acquirePut();
    } catch (err) {
      this.releaseSlot(slot);
      throw err;
    }
    this.#sending++;
    try {
      const bytes = this.slotBuffer(slot).subarray(0, storedLength);
      const path = this.#path(`/chunks/${id}`);
      const headers = { [UPLOAD_CODEC_HEADER]: String(codec), [UPLOAD_RAW_LENGTH_HEADER]: String(rawLength) };
      const r = await this.#retrying(() =>
        putBytes(this.#api, this.#agent, path, headers, bytes, this.#stop.signal),
      );
      this.stats.chunksSent++;
      if ((r as UploadChunkResult).stored) this.stats.chunksStored++;
      this.stats.rawBytesSent += rawLength;
      this.stats.storedBytesSent += storedLength;
    } finally {
      this.#sending--;
      this.releaseSlot(slot);
      this.#releasePut();
    }
  }

  /**
   * An idempotent request (chunks, keep-alive), sent again after a dropped connection or a
   * busy server, and after registering again when another process of this workstation
   * registered it meanwhile (which replaces the token).
   */
  async #retrying<T>(send: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      this.check();
      this.#lastRequestAt = Date.now();
      const used = this.#api.token;
      try {
        return await send();
      } catch (err) {
        if (this.#closed || attempt >= TRIES || !(err instanceof ApiError)) throw err;
        if (err.code === 'E_UNAUTHORIZED' && this.#register) {
          await this.#registerAgain(used);
        } else if (err.code === 'E_SERVER_UNREACHABLE' || err.status === 502 || err.status === 503) {
          await new Promise((r) => setTimeout(r, 250 * 2 ** attempt));
        } else {
          throw err;
        }
        this.stats.retries++;
      }
    }
  }

  /**
   * Registers this workstation again after its token `used` was refused: another process of
   * this machine registered it meanwhile, which replaced the token. The upload belongs to
   * the workstation, not to the token, so it goes on under the new one.
   */
  async #registerAgain(used: string | undefined): Promise<void> {
    if (this.#api.token !== used) return;
    this.#registering ??= this.#register!().finally(() => (this.#registering = undefined));
    await this.#registering;
  }

  #fail(err: unknown): void {
    if (this.#closed) return;
    this.#failure ??= err instanceof Error ? err : new Error(String(err));
    this.#wake();
  }

  protected check(): void {
    if (this.#failure) throw this.#failure;
    if (this.#closed) {
      throw new ImgcastError(
        'E_UPLOAD_ABORTED',
        `the upload of ${this.name} is already committed or aborted`,
        {
          upload: this.id,
        },
      );
    }
  }

  async #settle(): Promise<void> {
    for (;;) {
      // #known keeps finished sends too (for dedup): settled once a round added nothing new.
      const known = this.known.size;
      await Promise.all([...this.known.values(), ...this.#unnamed]);
      if (this.#unnamed.size === 0 && this.known.size === known) return;
    }
  }

  protected slotBuffer(slot: number): Buffer {
    return Buffer.from(this.#sab, slot * CHUNK_SIZE, CHUNK_SIZE);
  }

  protected async acquireSlot(): Promise<number> {
    // Slots being sent from do not count: the capture and the compressors get as many as the
    // image writer gives them, so a stopped upload waits for no more compression than a stopped local make.
    while (
      this.#freeSlots.length === 0 ||
      this.#slots - this.#freeSlots.length - this.#sending >= IN_FLIGHT_SLOTS
    ) {
      this.check();
      await new Promise<void>((resolve) => this.#slotWaiters.push(resolve));
    }
    this.check();
    return this.#freeSlots.pop()!;
  }

  protected releaseSlot(slot: number): void {
    this.#freeSlots.push(slot);
    this.#wake();
  }

  async #acquirePut(): Promise<void> {
    while (this.#puts >= this.#putsInFlight) {
      this.check();
      await new Promise<void>((resolve) => this.#putWaiters.push(resolve));
    }
    this.check();
    this.#puts++;
  }

  #releasePut(): void {
    this.#puts--;
    this.#wake();
  }

  /** Waiters re-check for room, a failure or the end; there are never more than a few. */
  #wake(): void {
    for (const w of this.#slotWaiters.splice(0)) w();
    for (const w of this.#putWaiters.splice(0)) w();
  }
}

/**
 * A chunk's PUT through node:http rather than fetch: fetch copies a body twice before it
 * sends it (half a second of the main thread per 500 MB, and most of its garbage), and
 * cannot send from shared memory. Answers and failures are those of ApiClient.request.
 */
function putBytes(
  api: ApiClient,
  agent: http.Agent,
  path: string,
  headers: Record<string, string>,
  body: Buffer,
  signal: AbortSignal,
): Promise<unknown> {
  const url = new URL(path, api.baseUrl);
  const get = url.protocol === 'https:' ? https.request : http.request;
  return new Promise((resolve, reject) => {
    const unreachable = (why: string) =>
      new ApiError('E_SERVER_UNREACHABLE', `cannot reach the imaging server at ${api.baseUrl}: ${why}`, 0, {
        server: api.baseUrl,
      });
    const req = get(
      url,
      {
        method: 'PUT',
        agent,
        signal,
        timeout: CHUNK_TIMEOUT_MS,
        headers: {
          ...headers,
          'content-type': 'application/octet-stream',
          'content-length': String(body.length),
          ...(api.token ? { authorization: `Bearer ${api.token}` } : {}),
        },
      },
      (res) => {
        const pieces: Buffer[] = [];
        res.on('data', (b: Buffer) => pieces.push(b));
        res.on('error', (err) => reject(unreachable(err.message)));
        res.on('end', () => {
          const text = Buffer.concat(pieces).toString('utf8');
          let parsed: unknown;
          try {
            parsed = text === '' ? undefined : JSON.parse(text);
          } catch {
            parsed = undefined;
          }
          const status = res.statusCode ?? 0;
          if (status >= 200 && status < 300) return resolve(parsed);
          const { error, message, ...details } = (parsed ?? {}) as Record<string, unknown>;
          reject(
            new ApiError(
              typeof error === 'string' ? error : `E_HTTP_${status}`,
              typeof message === 'string' ? message : `PUT ${path}: HTTP ${status}`,
              status,
              details,
            ),
          );
        });
      },
    );
    req.on('timeout', () =>
      req.destroy(unreachable(`no answer to a chunk within ${CHUNK_TIMEOUT_MS / 1000} s`)),
    );
    req.on('error', (err) => {
      if (signal.aborted) return reject(signal.reason);
      reject(err instanceof ApiError ? err : unreachable(err.message));
    });
    req.end(body);
  });
}

export interface ServerMakeOptions extends Omit<CaptureOptions, 'level'> {
  /** The compression; none: the server's default level (its settings). */
  level?: CompressionLevel;
  /** HOST, HOST:PORT or URL of the imaging server. */
  server: string;
  /** The image's name on the server, inside its image directory. */
  name: string;
  /** An admin token; without one, this machine registers as a workstation. */
  token?: string;
  putsInFlight?: number;
}

export interface ServerMakeResult extends MakeResult {
  server: string;
  /** The image as the server lists it, and what it stored. */
  committed: UploadCommitted;
  upload: UploadStats;
}

/** `img make SOURCE --server HOST --name NAME`: captures `source` into a new image on the server. */
export async function makeImageOnServer(source: string, opts: ServerMakeOptions): Promise<ServerMakeResult> {
  let sink: UploadSink | undefined;
  let api: ApiClient | undefined;
  let committed: UploadCommitted | undefined;
  // The level the capture's manifest names is the server's writer's (UploadSink.level) on commit.
  const result = await captureOnto(source, { ...opts, level: opts.level ?? DEFAULT_LEVEL }, async () => {
    const c = await connect(opts.server, { token: opts.token, signal: opts.signal });
    api = c.api;
    const s = (sink = await UploadSink.create(c.api, {
      name: opts.name,
      level: opts.level,
      register: c.register,
      putsInFlight: opts.putsInFlight,
      signal: opts.signal,
    }));
    return {
      sink: s,
      commit: async (m) => {
        committed = await s.commit(m);
        // What the server's writer fills in when it commits.
        return { ...m, formatVersion: FORMAT_VERSION, generation: 1, level: s.level };
      },
      abort: () => s.abort(),
    };
  });
  const done = committed!;
  result.stats.storedBytes = done.storedBytes;
  result.image = {
    path: done.image.name,
    fileBytes: done.image.sizeBytes,
    chunks: done.chunks,
    chunkRawBytes: done.rawBytes,
    chunkStoredBytes: done.storedBytes,
  };
  return { ...result, server: api!.baseUrl, committed: done, upload: sink!.stats };
}
