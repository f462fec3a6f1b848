/**
 * The messages between the compression pool (pool.ts) and its workers (pool-worker.ts). Types
 * only: the worker imports nothing here at run time.
 *
 * A job with a `seq` gets one reply with the same `seq`; the others (warm, a text stream's
 * open and writes) get none. Codec numbers travel with the jobs, so the worker does not load
 * codec.ts for two constants.
 */
import type { ChunkWriteOutcome, ChunkWritePlan } from './types.ts';

/** zstd parameters, as codec.ts's LEVEL_PARAMS holds them. */
export type ZstdParams = Readonly<Record<number, number>>;

/**
 * Names `length` bytes at `offset` of `sab` (SHA-256, with `hash`) and compresses them in
 * place with `params` (none: only names). Reply: CompressReply.
 */
export interface CompressJob {
  seq: number;
  params: ZstdParams | null;
  hash: boolean;
  sab: SharedArrayBuffer;
  offset: number;
  length: number;
  /** CODEC_ZSTD and CODEC_NONE, for the reply. */
  zstd: number;
  none: number;
}

/**
 * Decodes the stored chunk at `offset` of `sab` into `outSab` at `outOffset` (rawLength + 1
 * bytes of room) and proves it against `id`; with `read`, reads its record from the image
 * first; with `plan`, writes the plan's files from the decoded bytes. Reply: DecodeReply.
 */
export interface DecodeJob {
  seq: number;
  decode: true;
  id: string;
  codec: number;
  /** CODEC_NONE: the codec of a chunk stored as it is. */
  none: number;
  sab: SharedArrayBuffer;
  offset: number;
  length: number;
  outSab: SharedArrayBuffer;
  outOffset: number;
  rawLength: number;
  plan: ChunkWritePlan | undefined;
  /** The image file's descriptor and the record's place in it. */
  read: { fd: number; position: number } | undefined;
}

/** Creates folders in order (parents first) with `mode`. Reply: DirsReply. */
export interface DirsJob {
  seq: number;
  mkdirs: ReadonlyArray<string | Buffer>;
  mode: number;
}

/** Loads what jobs use (zstd, the hash). No reply. */
export interface WarmJob {
  warm: true;
}

/** Starts text stream `stream`, one zstd frame with `params`. No reply. */
export interface TextOpenJob {
  stream: number;
  open: true;
  params: ZstdParams;
}

/** Adds text to stream `stream`. No reply. */
export interface TextWriteJob {
  stream: number;
  text: string;
}

/** Ends stream `stream`. Reply: TextReply (or ErrorReply). */
export interface TextEndJob {
  seq: number;
  stream: number;
}

export type TextJob = TextOpenJob | TextWriteJob | TextEndJob;
export type PoolJob = CompressJob | DecodeJob | DirsJob | WarmJob | TextJob;
/** The jobs that get a reply, as the pool hands them over before it numbers them. */
export type UnnumberedJob =
  Omit<CompressJob, 'seq'> | Omit<DecodeJob, 'seq'> | Omit<DirsJob, 'seq'> | Omit<TextEndJob, 'seq'>;

/** What a makeDirs job met: all made, or the first folder that could not be. */
export type DirsOutcome = { ok: true } | { ok: false; index: number; reason: string; code?: string };

export interface CompressReply {
  seq: number;
  /** The raw bytes' SHA-256 (hex), when the job asked for it. */
  id: string | undefined;
  codec: number;
  storedLength: number;
}

export interface DecodeReply {
  seq: number;
  decoded: true;
  /** Why the chunk is damaged; undefined: intact. */
  damage?: string | undefined;
  /** The error reading its record (job.read). */
  readError?: { message: string; code?: string | undefined };
  /** What the plan's writes met (job.plan, intact chunks only). */
  written?: ChunkWriteOutcome | undefined;
}

export interface DirsReply {
  seq: number;
  made: DirsOutcome;
}

export interface TextReply {
  seq: number;
  text: { sha: Uint8Array; stored: Uint8Array; rawLength: number };
}

/** The job failed as a whole (not a damaged chunk or a refused write: those are outcomes). */
export interface ErrorReply {
  seq: number;
  error: string;
}

export type PoolReply = CompressReply | DecodeReply | DirsReply | TextReply | ErrorReply;
