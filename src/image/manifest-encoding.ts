/**
 * The manifest record's bytes, made without ever holding the whole JSON text: a
 * manifest of 55k files is ~17 MB of JSON, and the one-piece form (a string, its
 * UTF-8 copy, zstd's output buffers) added ~70 MiB to a capture's peak memory at
 * commit. The text is produced in pieces, hashed and compressed as it goes; only the
 * compressed record (a few MB) is kept.
 */
import { CODEC_ZSTD } from './codec.ts';
import { ImageError } from './errors.ts';
import { MAX_MANIFEST_RAW } from './format.ts';
import { CompressPool } from './pool.ts';
import type { Manifest } from './types.ts';

export interface EncodedManifest {
  codec: number;
  /** The stored (compressed) bytes, in order. */
  stored: Buffer[];
  storedLength: number;
  /** Length of the JSON text. */
  rawLength: number;
  /** SHA-256 of the JSON text. */
  sha: Buffer;
}

/** Arrays longer than this are written in slices; shorter ones are walked into. */
const BIG_ARRAY = 64;
/**
 * Elements stringified at once in a big array: a slice of entries is a few hundred KB
 * of text that goes out as one piece, where one piece per element meant joining 110k
 * small strings into batches (the 55k-entry manifest of the bench tree: 70 ms to
 * encode instead of 110 ms).
 */
const SLICE = 512;
const STAGING = 1 << 20;
/** Pieces this long are sent on their own rather than copied into a batch first. */
const BIG_PIECE = STAGING / 8;

/**
 * JSON text of `value` in pieces whose concatenation is exactly JSON.stringify(value),
 * for plain data (objects, arrays, strings, numbers, booleans, null; undefined
 * properties are left out and undefined array elements become null, as in JSON).
 */
export function* jsonPieces(value: unknown): Generator<string> {
  if (Array.isArray(value)) {
    if (value.length > BIG_ARRAY) {
      // An array's JSON is its elements' JSON joined by commas, each as JSON.stringify
      // writes an element (undefined, functions and symbols as null): so is a slice's.
      yield '[';
      for (let i = 0; i < value.length; i += SLICE) {
        const text = JSON.stringify(value.slice(i, i + SLICE));
        yield i === 0 ? text.slice(1, -1) : `,${text.slice(1, -1)}`;
      }
      yield ']';
      return;
    }
    yield '[';
    for (let i = 0; i < value.length; i++) {
      if (i > 0) yield ',';
      const v: unknown = value[i];
      if (v === undefined || typeof v === 'function' || typeof v === 'symbol') yield 'null';
      else yield* jsonPieces(v);
    }
    yield ']';
    return;
  }
  if (value !== null && typeof value === 'object' && !hasToJSON(value)) {
    yield '{';
    let first = true;
    for (const [k, v] of Object.entries(value)) {
      if (v === undefined || typeof v === 'function' || typeof v === 'symbol') continue;
      yield `${first ? '' : ','}${JSON.stringify(k)}:`;
      first = false;
      yield* jsonPieces(v);
    }
    yield '}';
    return;
  }
  yield JSON.stringify(value);
}

const NON_ASCII = /[\u0080-\uffff]/g;

/**
 * JSON text with every character beyond ASCII written as a \u escape (JSON.parse gives
 * the same value back). A reader then holds the manifest as a one-byte string: a single
 * accented file name among 55k otherwise made V8 hold all 17 MB of it as UTF-16, twice
 * the memory and ~20 ms more to decode and parse.
 */
export function asciiJson(json: string): string {
  NON_ASCII.lastIndex = 0;
  if (!NON_ASCII.test(json)) return json;
  return json.replace(NON_ASCII, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

function hasToJSON(v: object): boolean {
  return typeof (v as { toJSON?: unknown }).toJSON === 'function';
}

/**
 * The manifest record's payload: zstd of the JSON text, with its length and SHA-256.
 * This thread only writes the text; a pool worker hashes and compresses it meanwhile.
 */
export async function encodeManifest(m: Manifest): Promise<EncodedManifest> {
  const stream = CompressPool.shared().textStream('balanced');
  // UTF-16 units written so far, a lower bound of the UTF-8 length: refuses a runaway
  // manifest early; the exact length is checked when the worker has it.
  let units = 0;
  const write = (piece: string): void => {
    const text = asciiJson(piece);
    units += text.length;
    if (units > MAX_MANIFEST_RAW) throw tooLarge();
    stream.write(text);
  };
  try {
    // Small pieces are joined into strings of about STAGING characters (one message per
    // batch rather than per piece); slices of big arrays go as they are.
    let batch = '';
    for (const piece of jsonPieces(m)) {
      if (piece.length >= BIG_PIECE) {
        if (batch.length > 0) write(batch);
        batch = '';
        write(piece);
        continue;
      }
      batch += piece;
      if (batch.length >= STAGING) {
        write(batch);
        batch = '';
      }
    }
    if (batch.length > 0) write(batch);
  } catch (err) {
    stream.abort();
    throw err;
  }
  const t = await stream.end();
  if (t.rawLength > MAX_MANIFEST_RAW) throw tooLarge();
  return {
    codec: CODEC_ZSTD,
    stored: [t.stored],
    storedLength: t.stored.length,
    rawLength: t.rawLength,
    sha: t.sha,
  };
}

function tooLarge(): ImageError {
  return new ImageError('E_MANIFEST_INVALID', `the manifest is too large (over ${MAX_MANIFEST_RAW} bytes)`, {
    limit: MAX_MANIFEST_RAW,
  });
}
