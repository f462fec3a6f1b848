/**
 * Adapters between the transport and images: a restore target as a ChunkConsumer (of an
 * image, or of a live master's disk: live.ts, live-restore.ts); image-provider.ts serves an
 * image file to a sender. The session's `meta`
 * carries the manifest and the file set; it arrives over the control channel, which
 * is authenticated when a key is used, and is checked before anything is written.
 */
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';

import { DiskError } from '../disk/errors.ts';
import { Flusher } from '../disk/flusher.ts';
import { ImgcastError } from '../errors.ts';
import { isLiveMeta, liveRestoreConsumer } from './live-restore.ts';
import { describeTargetContents, openRestore, type DescribedSink } from './restore.ts';
import { decodeChunk } from '../image/index.ts';
import { manifestProblem } from '../image/manifest.ts';
import type { Manifest } from '../image/types.ts';
import { TransportError } from '../transport/errors.ts';
import { openJournal, readJournal, sessionFingerprint } from '../transport/journal.ts';
import type { ChunkConsumer, ChunkDecoder, SessionInfo } from '../transport/types.ts';
import { displayName } from '../volume/files/names.ts';
import { count, systemReason } from '../wording.ts';

export interface ImageMeta {
  kind: 'image';
  fileset: number;
  /**
   * The image's file name (without its folder), so that a receiver that reached the wrong
   * sender can say which image it joined. Senders before it did not send it: optional.
   * Like all of the meta it is part of the session fingerprint (transport/journal.ts), so a
   * receive resumes from its journal only in a session of the image under the same name.
   */
  image?: string;
  manifest: Manifest;
}

/** The image codec's decoder: decompresses and checks the hash. */
export const imageDecoder: ChunkDecoder = decodeChunk;

/** What a receiver's restore is given besides the session; see RestoreOptions for force and keepSizes. */
export interface ConsumerOptions {
  force?: boolean;
  keepSizes?: boolean;
  onWarning?: (m: string) => void;
  journalPath?: string;
  restart?: boolean;
}

/**
 * Restores the session's image onto `target`. With a journal (the receiver's
 * journalPath) that lists chunks of this same session layout, it resumes: the target is
 * taken as holding an interrupted restore of it (openRestore's `resume`), and `has`
 * claims what that restore keeps, so only the rest is requested. The journal covers a
 * killed or crashed receiver (power cuts included: `sync` flushes what was written before the
 * receiver journals it), and one that failed (dropped, sender lost) onto a folder or a whole
 * disk. An aborted single-filesystem restore wipes the
 * filesystem's start (it must not look complete), so that journal is cleared.
 */
export async function restoreConsumer(
  session: SessionInfo,
  target: string,
  opts: ConsumerOptions = {},
): Promise<ChunkConsumer> {
  // A live master's disk, streamed as it is read: restored as it arrives (no journal: it cannot be resumed).
  if (isLiveMeta(session.meta)) {
    return liveRestoreConsumer(session, target, {
      ...(opts.force !== undefined ? { force: opts.force } : {}),
      ...(opts.onWarning ? { onWarning: opts.onWarning } : {}),
    });
  }
  const meta = session.meta as Partial<ImageMeta> | null;
  if (!meta || meta.kind !== 'image' || !Number.isInteger(meta.fileset)) {
    throw new TransportError(
      'E_CONSUMER',
      `session from ${session.sender} does not carry an image (was it sent with --raw?)`,
    );
  }
  const about = sessionLabel(session.sender, meta as ImageMeta);
  const problem = manifestProblem(meta.manifest);
  if (problem) throw new TransportError('E_CONSUMER', `${about} sent a bad manifest: ${problem}`);
  const manifest = meta.manifest as Manifest;
  // A receiver may have reached another send than the one meant (same machine, same port): every
  // refusal of the target names the sender and the image, so the mistake shows for what it is.
  const facts = {
    sender: session.sender,
    fileset: meta.fileset,
    ...(typeof meta.image === 'string' ? { image: meta.image } : {}),
  };
  try {
    return await consumerFor(session, manifest, meta.fileset as number, target, opts, about, facts);
  } catch (err) {
    throw aboutSession(err, about, facts, target);
  }
}

/** "session from 198.18.0.1:7747 (image lab.imgc, file set 1)"; without the image from an older sender. */
function sessionLabel(sender: string, meta: ImageMeta): string {
  const name = typeof meta.image === 'string' && meta.image !== '' ? displayName(meta.image) : '';
  const shown = name.length > 255 ? `${name.slice(0, 255)}…` : name;
  return `session from ${sender} (${shown ? `image ${shown}, ` : ''}file set ${meta.fileset})`;
}

/** The error, its message led by what session it is about (an imgcast error keeps its class and code). */
function aboutSession(err: unknown, about: string, facts: Record<string, unknown>, target: string): Error {
  if (err instanceof ImgcastError) {
    if (!err.message.startsWith(about)) err.message = `${about}: ${err.message}`;
    Object.assign(err.details, facts);
    return err;
  }
  return new TransportError(
    'E_CONSUMER',
    `${about}: cannot restore onto ${target}: ${systemReason(err)}`,
    { target, ...facts },
    { cause: err },
  );
}

/** restoreConsumer once the session's meta is known to carry an image; `about` names the session. */
async function consumerFor(
  session: SessionInfo,
  manifest: Manifest,
  fileset: number,
  target: string,
  opts: ConsumerOptions,
  about: string,
  facts: Record<string, unknown>,
): Promise<ChunkConsumer> {
  const fingerprint = sessionFingerprint(session);
  const journal = opts.journalPath;
  // The journal speaks for one target: a different disk (or file) under the same path must not
  // inherit its chunks, or a resume would call verified what was never written there. Its target
  // is recorded beside it once the target exists (a missing one is made by prepare).
  const targetFile = journal ? `${journal}.target` : undefined;
  // The layout a whole disk gets depends on keepSizes too: a resume must be given the same.
  const identity = async () => `${await targetIdentity(target)}${opts.keepSizes ? ' keep-sizes' : ''}`;
  const sameTarget =
    targetFile !== undefined && (await readFile(targetFile, 'utf8').catch(() => '')) === (await identity());
  const written =
    journal && sameTarget && !opts.restart ? await readJournal(journal, fingerprint) : new Set<string>();
  // A workstation consents by joining (an unattended lab cannot answer a prompt), but it says what
  // it is about to overwrite before anything is written.
  const before = await describeTargetContents(target);
  if (!before.empty && written.size === 0) opts.onWarning?.(`overwriting ${before.summary}`);
  const base = {
    fileset,
    force: opts.force,
    overwrite: true,
    create: before.kind === 'missing',
    keepSizes: opts.keepSizes,
    onWarning: opts.onWarning,
  };
  let sink: DescribedSink;
  if (written.size > 0) {
    try {
      sink = await openRestore(manifest, target, { ...base, resume: written });
      opts.onWarning?.(
        `resuming an interrupted restore onto ${target}: ${count(sink.resumed.size, 'chunk')} ${sink.resumed.size === 1 ? 'is' : 'are'} there`,
      );
    } catch (err) {
      if (!(err instanceof DiskError && err.code === 'E_DISK_RESUME')) throw err;
      opts.onWarning?.(`${err.message}; restoring in full`);
      sink = await openRestore(manifest, target, base);
    }
  } else {
    sink = await openRestore(manifest, target, base);
  }
  // From here the journal describes this run only: start it afresh unless resuming.
  if (journal && sink.resumed.size === 0) await (await openJournal(journal, fingerprint, true)).close();
  const sent = new Set(session.chunks.map((c) => c.id));
  const absent = [...sink.needed].find((id) => !sent.has(id));
  if (absent) {
    throw new TransportError(
      'E_CONSUMER',
      `restoring onto ${target} needs chunk ${absent}, which the session does not send; nothing was written`,
    );
  }
  // Flushes for the journal's checkpoints, set up by prepare (which makes a missing target).
  let flusher: Flusher | undefined;
  return {
    has: (id) => sink.resumed.has(id),
    // Its `before` is the last check of the target (not mounted now): a refusal too.
    prepare: async () => {
      await sink.prepare().catch((err: unknown) => {
        throw aboutSession(err, about, facts, target);
      });
      if (targetFile && sink.resumed.size === 0) await writeFile(targetFile, await identity());
      // A folder is one filesystem (syncfs); a disk's partitions are written through loop
      // devices and mounts of their own, which only a whole-system sync reaches. Started now,
      // before any data arrives (see Flusher).
      const isDir = await stat(target).then(
        (s) => s.isDirectory(),
        () => false,
      );
      flusher = new Flusher(isDir ? ['-f', target] : []);
      if (journal) flusher.start();
    },
    async apply(id: string, raw: Buffer): Promise<void> {
      if (sink.needed.has(id)) await sink.applyChunk(id, raw);
    },
    async sync(): Promise<void> {
      if (!flusher) throw new Error('sync called before prepare');
      const r = await flusher.run();
      if (r.status !== 0)
        throw new Error(`sync ${flusher.args.join(' ')} failed: ${r.stderr || `exit status ${r.status}`}`);
    },
    async finish() {
      // Closed once finished: if finishing fails, the receiver's last checkpoint still flushes.
      await sink.finish();
      flusher?.close();
      // Done: a later receive onto this target must not take its chunks as already there.
      if (journal) await rm(journal, { force: true });
      if (targetFile) await rm(targetFile, { force: true });
    },
    async abort(reason: unknown) {
      flusher?.close();
      await sink.abort(reason);
      // A folder or disk keeps what was written (a disk's table is blanked, and a resume writes it
      // again); a single filesystem loses its start, so its journal would lie.
      if (journal && !sink.resumableAfterAbort) await rm(journal, { force: true });
      if (targetFile && !sink.resumableAfterAbort) await rm(targetFile, { force: true });
    },
  };
}

/**
 * Where an image receive keeps its resume journal unless told: beside a file or folder
 * target, and for a device (whose folder is /dev) under /var/lib/imgcast.
 */
export async function defaultJournal(target: string): Promise<string> {
  const abs = resolve(target);
  if (!abs.startsWith('/dev/')) return `${abs}.imgcast-journal`;
  const dir = '/var/lib/imgcast/journals';
  await mkdir(dir, { recursive: true });
  return join(dir, `${abs.slice(1).replaceAll('/', '_')}.journal`);
}

/**
 * What makes a target the same one after a crash or a reboot: a file or folder by its inode; a
 * loop device by its backing file's inode; another block device by its size and, where the
 * kernel knows them, its serial number or WWN (device numbers may change across boots).
 */
export async function targetIdentity(target: string): Promise<string> {
  let st;
  try {
    st = await stat(target);
  } catch {
    return 'missing';
  }
  if (!st.isBlockDevice()) return `inode ${st.dev}:${st.ino}`;
  const sys = `/sys/dev/block/${Math.floor(st.rdev / 256) & 0xfff}:${(st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00)}`;
  const read = (p: string) =>
    readFile(join(sys, p), 'utf8').then(
      (t) => t.trim(),
      () => '',
    );
  const size = await read('size');
  const backing = await read('loop/backing_file');
  if (backing) {
    const b = await stat(backing.replace(/ \(deleted\)$/, '')).catch(() => undefined);
    return `loop ${backing} ${b ? `${b.dev}:${b.ino}` : 'gone'} ${size}`;
  }
  const serial = (await read('device/serial')) || (await read('device/wwid')) || (await read('wwid'));
  return `disk ${size} ${serial || `rdev ${st.rdev}`}`;
}
