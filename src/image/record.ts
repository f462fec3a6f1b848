/**
 * A record header's constants (format.ts describes the whole layout). Apart from format.ts so
 * the compression pool's workers (pool-worker.ts), which check chunk records themselves, load
 * these without the rest of the format code: each module a worker loads adds to its start-up.
 */
export const RECORD_MAGIC = Buffer.from('IRC1', 'latin1');
export const RECORD_HEADER_SIZE = 56;

export const RECORD_CHUNK = 1;
export const RECORD_MANIFEST = 2;
export const RECORD_INDEX = 3;
