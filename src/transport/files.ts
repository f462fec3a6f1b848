/**
 * Plain-file endpoints of the transport: serve a file as chunks, write chunks back
 * into a file. Used to benchmark raw transfers against udpcast/uftp and by tests;
 * images go through the adapters in cli.ts instead.
 */
import { webcrypto } from 'node:crypto';
import { open, rm, type FileHandle } from 'node:fs/promises';
import { writeFull } from '../file-write.ts';
import { CODEC_NONE } from './chunkwire.ts';
import { TransportError } from './errors.ts';
import { openJournal, readJournal, sessionFingerprint } from './journal.ts';
import type { ChunkConsumer, ChunkInfo, ChunkProvider, SessionInfo } from './types.ts';

/** Layout a flat-file session carries in `meta`: the file's chunks in order, repeats included. */
export interface FlatMeta {
  kind: 'flat';
  size: number;
  order: string[];
}

function isFlatMeta(m: unknown): m is FlatMeta {
  const x = m as FlatMeta;
  return (
    typeof x === 'object' &&
    x !== null &&
    x.kind === 'flat' &&
    Number.isSafeInteger(x.size) &&
    Array.isArray(x.order) &&
    x.order.every((id) => typeof id === 'string')
  );
}

export const FLAT_CHUNK_SIZE = 1024 * 1024;
const HASH_LANES = 4;
/** Bytes applied between the write-back syncs a fileConsumer asks for while receiving. */
const EAGER_SYNC_BYTES = 8 * 1024 * 1024;

/** Serves a plain file as uncompressed chunks (codec 0); hashes the whole file once up front, in parallel. */
export async function flatFileProvider(path: string, chunkSize = FLAT_CHUNK_SIZE): Promise<ChunkProvider> {
  if (!Number.isInteger(chunkSize) || chunkSize < 1 || chunkSize > 64 * 1024 * 1024) {
    throw new TransportError('E_CONSUMER', `chunk size ${chunkSize} must be 1 byte to 64 MiB`);
  }
  let fh: FileHandle;
  try {
    fh = await open(path, 'r');
  } catch (e) {
    throw new TransportError('E_CONSUMER', `cannot open ${path}: ${(e as Error).message}`, { path });
  }
  const size = (await fh.stat()).size;
  const n = Math.ceil(size / chunkSize);
  const ids: string[] = new Array<string>(n);
  // Hashing is the whole start-up cost: WebCrypto digests run on the libuv thread pool, so
  // several lanes (each reading and hashing every LANES-th chunk) use all cores.
  const lanes = Math.min(HASH_LANES, n);
  const file = fh;
  async function lane(first: number): Promise<void> {
    const buf = Buffer.allocUnsafe(chunkSize);
    for (let i = first; i < n; i += lanes) {
      const off = i * chunkSize;
      const len = Math.min(chunkSize, size - off);
      const { bytesRead } = await file.read(buf, 0, len, off);
      if (bytesRead !== len)
        throw new TransportError('E_CONSUMER', `${path} changed size while being read`, { path });
      ids[i] = Buffer.from(await webcrypto.subtle.digest('SHA-256', buf.subarray(0, len))).toString('hex');
    }
  }
  try {
    await Promise.all(Array.from({ length: lanes }, (_, k) => lane(k)));
  } finally {
    await fh.close();
  }
  const chunks: ChunkInfo[] = [];
  const offsets = new Map<string, { offset: number; length: number }>();
  for (let i = 0; i < n; i++) {
    const off = i * chunkSize;
    const len = Math.min(chunkSize, size - off);
    const id = ids[i] as string;
    chunks.push({ id, codec: CODEC_NONE, storedLength: len, rawLength: len });
    if (!offsets.has(id)) offsets.set(id, { offset: off, length: len });
  }
  const meta: FlatMeta = { kind: 'flat', size, order: chunks.map((c) => c.id) };
  let shared: Promise<FileHandle> | null = null;
  return {
    chunks,
    meta,
    async readStored(id: string, into?: Buffer): Promise<Buffer> {
      const where = offsets.get(id);
      if (!where) throw new TransportError('E_CONSUMER', `chunk ${id} is not part of ${path}`, { path });
      shared ??= open(path, 'r');
      const out =
        into && into.length >= where.length
          ? into.subarray(0, where.length)
          : Buffer.allocUnsafe(where.length);
      const { bytesRead } = await (await shared).read(out, 0, where.length, where.offset);
      if (bytesRead !== where.length)
        throw new TransportError('E_CONSUMER', `${path} shrank while being sent`, { path });
      return out;
    },
    async close(): Promise<void> {
      const s = shared;
      shared = null;
      await (await s)?.close();
    },
  };
}

/**
 * Writes a flat-file session into `path`: chunk i of the layout lands at the sum of
 * the raw lengths before it. An existing file of the right size is kept so a resumed
 * session only fills what is missing; `has` answers from the journal given here
 * (pass the same path as the receiver's journalPath). A missing or resized file
 * restarts the journal, so the receiver re-requests everything.
 */
export function fileConsumer(path: string, opts: { journalPath?: string } = {}): ChunkConsumer {
  let fh: FileHandle | null = null;
  const where = new Map<string, number[]>();
  let have = new Set<string>();
  return {
    has: (id) => have.has(id),
    // One fdatasync of one file: cheap enough to keep the disk busy while receiving. Left to the
    // end, a 512 MiB receive (no journal) spent 0.9 s in its final sync, three receivers on one disk.
    eagerSyncBytes: EAGER_SYNC_BYTES,
    async prepare(session: SessionInfo): Promise<void> {
      const byId = new Map(session.chunks.map((c) => [c.id, c]));
      const order = isFlatMeta(session.meta) ? session.meta.order : session.chunks.map((c) => c.id);
      let off = 0;
      for (const id of order) {
        const c = byId.get(id);
        if (!c)
          throw new TransportError('E_CONSUMER', `layout names chunk ${id} that the session does not send`);
        let list = where.get(id);
        if (!list) where.set(id, (list = []));
        list.push(off);
        off += c.rawLength;
      }
      const fp = sessionFingerprint(session);
      if (opts.journalPath) have = await readJournal(opts.journalPath, fp);
      try {
        fh = await open(path, 'r+');
      } catch {
        fh = await open(path, 'w+');
      }
      if ((await fh.stat()).size !== off) {
        // A file of another size cannot hold what the journal says: start over, journal included.
        await fh.truncate(off);
        have.clear();
        if (opts.journalPath) await (await openJournal(opts.journalPath, fp, true)).close();
      }
    },
    async sync(): Promise<void> {
      await fh?.datasync();
    },
    async apply(id: string, raw: Buffer): Promise<void> {
      const offs = where.get(id);
      if (!fh || !offs)
        throw new TransportError('E_CONSUMER', `chunk ${id} does not belong in ${path}`, { path });
      for (const o of offs) {
        await writeFull(fh, raw, 0, raw.length, o);
      }
    },
    async finish(): Promise<void> {
      if (!fh) throw new TransportError('E_CONSUMER', `${path} was never prepared`);
      await fh.sync();
      await fh.close();
      fh = null;
      // Done: a later receive into this file must not take its chunks as already there.
      if (opts.journalPath) await rm(opts.journalPath, { force: true });
    },
    async abort(): Promise<void> {
      await fh?.close().catch(() => {});
      fh = null;
    },
  };
}
