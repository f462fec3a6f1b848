/**
 * What travels for one chunk: its stored bytes, sealed with AES-256-GCM when the
 * session encrypts. Sealing once per chunk (not per packet) keeps crypto off the
 * per-packet path. The IV is salt ‖ chunk seq ‖ 0, unique because the key is random
 * per session and a seq names one chunk; repairs resend the identical ciphertext.
 * The chunk id is the additional authenticated data, binding ciphertext to its id.
 */
import { createCipheriv, createDecipheriv, createHash } from 'node:crypto';
import { TransportError } from './errors.ts';

export const GCM_TAG = 16;

export interface DataKey {
  key: Buffer;
  salt: Buffer;
}

function iv(k: DataKey, seq: number): Buffer {
  const b = Buffer.alloc(12);
  k.salt.copy(b, 0, 0, 4);
  b.writeUInt32BE(seq, 4);
  return b;
}

export function sealChunk(k: DataKey, seq: number, id: string, stored: Buffer): Buffer {
  const c = createCipheriv('aes-256-gcm', k.key, iv(k, seq));
  c.setAAD(Buffer.from(id, 'hex'));
  const out = Buffer.allocUnsafe(stored.length + GCM_TAG);
  const n = c.update(stored).copy(out, 0);
  c.final();
  c.getAuthTag().copy(out, n);
  return out;
}

/** Throws E_CHUNK_REJECTED when the tag does not match (forged fragments, wrong key). */
export function openChunk(k: DataKey, seq: number, id: string, wire: Buffer): Buffer {
  if (wire.length < GCM_TAG)
    throw new TransportError('E_CHUNK_REJECTED', `chunk ${id} too short to be sealed`);
  const d = createDecipheriv('aes-256-gcm', k.key, iv(k, seq));
  d.setAAD(Buffer.from(id, 'hex'));
  d.setAuthTag(wire.subarray(wire.length - GCM_TAG));
  try {
    const a = d.update(wire.subarray(0, wire.length - GCM_TAG));
    d.final();
    return a;
  } catch {
    throw new TransportError(
      'E_CHUNK_REJECTED',
      `chunk ${id} (seq ${seq}) failed decryption/authentication`,
      {
        chunk: id,
      },
    );
  }
}

/** Codec 0 means "stored as is"; other codecs need the image codec's decoder. */
export const CODEC_NONE = 0;

export type ChunkDecoder = (id: string, codec: number, stored: Buffer, rawLength: number) => Buffer;

/** Verifies uncompressed chunks against their id; rejects codecs it cannot decode. */
export const rawDecoder: ChunkDecoder = (id, codec, stored, rawLength) => {
  if (codec !== CODEC_NONE) {
    throw new TransportError(
      'E_CONSUMER',
      `chunk ${id} uses codec ${codec}, which this receiver cannot decode`,
    );
  }
  if (stored.length !== rawLength || createHash('sha256').update(stored).digest('hex') !== id) {
    throw new TransportError('E_CHUNK_REJECTED', `chunk ${id} does not match its hash`, { chunk: id });
  }
  return stored;
};
