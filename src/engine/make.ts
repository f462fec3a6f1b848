/**
 * `img make`: capture a directory, a single partition/filesystem, or a whole disk
 * (partition table, boot areas, every partition) into one image file.
 */
import { randomUUID } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { DiskError } from '../disk/errors.ts';
import {
  attachLoop,
  blkidProbe,
  deviceSize,
  describeUses,
  detachLoop,
  mountedUses,
  type BlkidInfo,
} from '../disk/device.ts';
import {
  captureBlocker,
  isFileVolumeType,
  openTreeForReading,
  readFilesystemInfo,
  releaseDeadRuns,
} from '../disk/filesystem.ts';
import { probePartitionTable, type PartitionTable } from '../disk/partition-table.ts';
import { captureRaw } from '../disk/raw.ts';
import { findUnused, type UnusedMap } from '../disk/unused.ts';
import { ImageWriter } from '../image/writer.ts';
import {
  FORMAT_VERSION,
  type ChunkRef,
  type ChunkSink,
  type CompressionLevel,
  type DiskLayout,
  type FileEntry,
  type FilesystemInfo,
  type ImageSource,
  type Manifest,
  type PartitionInfo,
  type RawExtent,
  type Volume,
} from '../image/types.ts';
import { captureTree, type Placed } from '../volume/files/capture.ts';
import { systemReason } from '../wording.ts';
import type { ImageFileFacts } from './explorer.ts';

export interface MakeProgress {
  /** What is being captured: 'boot area', 'partition 2 (ext4)', 'directory', … */
  stage: string;
  /**
   * Bytes read so far over the whole capture, and the expected total (raw ranges by size,
   * filesystems by used space); no total for a directory, which is not measured first.
   */
  bytesDone: number;
  bytesTotal?: number;
  files?: number;
  /** Uncompressed bytes handed to the image so far, over all stages. */
  storedBytes: number;
}

export interface MakeOptions {
  level: CompressionLevel;
  overwrite?: boolean;
  onProgress?: (p: MakeProgress) => void;
  /** Stops the capture: the new image file is not created (its .partial is removed). */
  signal?: AbortSignal;
  /** Non-fatal news, such as what a killed earlier run left mounted and was released. */
  onWarning?: (message: string) => void;
}

export interface MakeStats {
  /** Chunks handed to the image (before dedup) and their raw bytes. */
  chunksWritten: number;
  rawBytes: number;
  /** Distinct chunks after dedup. */
  uniqueChunks: number;
  volumes: number;
  /** Bytes the chunks take in the image file after compression (image files only). */
  storedBytes?: number;
}

export interface MakeResult {
  manifest: Manifest;
  stats: MakeStats;
  /** The new image file (makeImage only). */
  image?: ImageFileFacts;
}

/** Counts what capture hands to the image, for stats and progress. */
function countingSink(inner: ChunkSink, onPut: () => void) {
  const ids = new Set<string>();
  const counts = { chunksWritten: 0, rawBytes: 0 };
  const count = (ref: ChunkRef): ChunkRef => {
    counts.chunksWritten++;
    counts.rawBytes += ref.rawLength;
    ids.add(ref.id);
    onPut();
    return ref;
  };
  const sink: ChunkSink = {
    async putChunk(raw: Buffer): Promise<ChunkRef> {
      return count(await inner.putChunk(raw));
    },
  };
  const queue = inner.queueChunk?.bind(inner);
  if (queue) {
    sink.queueChunk = async (raw: Buffer) => {
      const queued = await queue(raw);
      return { ref: queued.ref.then(count) };
    };
  }
  const lease = inner.leaseChunk?.bind(inner);
  if (lease) {
    sink.leaseChunk = async () => {
      const lent = await lease();
      return {
        buf: lent.buf,
        queue: (length: number) => ({ ref: lent.queue(length).ref.then(count) }),
        release: () => lent.release(),
      };
    };
  }
  return { sink, counts, ids };
}

type SourceKind = ImageSource['kind'];

async function classify(source: string): Promise<{ kind: SourceKind; table: PartitionTable | null }> {
  let st;
  try {
    st = await stat(source);
  } catch (err) {
    throw new DiskError('E_DISK_SOURCE', `cannot capture ${source}: ${systemReason(err)}`, {
      path: source,
    });
  }
  if (st.isDirectory()) return { kind: 'directory', table: null };
  if (!st.isBlockDevice() && !st.isFile()) {
    throw new DiskError('E_DISK_SOURCE', `${source} is not a directory, block device or image file`, {
      path: source,
    });
  }
  const table = await probePartitionTable(source);
  return { kind: table ? 'disk' : 'partition', table };
}

async function refuseWritableMounts(source: string): Promise<void> {
  const rw = (await mountedUses(source)).filter((u) => !u.readOnly);
  if (rw.length > 0) {
    throw new DiskError(
      'E_DISK_MOUNTED',
      `${source} is mounted read-write (${describeUses(rw)}); a live filesystem cannot be captured consistently — unmount it or remount it read-only`,
      { path: source, uses: rw },
    );
  }
}

async function safeProbe(path: string, range: { offset?: number; size?: number }): Promise<BlkidInfo> {
  // An ambivalent or failing probe just means imgcast does not know the content: it is captured raw.
  return blkidProbe(path, range).catch(() => ({}));
}

/** Largest page size Linux uses for swap; mkswap writes its header within the first page. */
const SWAP_HEADER = 64 * 1024;

/** One byte range to capture, with what it holds, planned before any data is read. */
export interface RangePlan {
  offset: number;
  size: number;
  partition?: number;
  /** Set when the range holds a filesystem captured as files. */
  fs?: FilesystemInfo;
  detectedType?: string;
  /** Raw ranges only: the filesystem's unused blocks, not captured. */
  unused?: UnusedMap;
  /** Bytes this stage will read, for the overall progress total. */
  estimate: number;
  stage: string;
}

async function planRange(
  path: string,
  offset: number,
  size: number,
  partition?: number,
  extended = false,
): Promise<RangePlan> {
  const name = partition !== undefined ? `partition ${partition}` : path;
  if (extended) {
    return {
      offset,
      size,
      partition,
      detectedType: 'extended',
      estimate: size,
      stage: `${name} (extended, raw)`,
    };
  }
  const probe = await safeProbe(path, { offset, size });
  const plan: RangePlan = {
    offset,
    size,
    estimate: size,
    stage: `${name} (raw${probe.TYPE ? `, ${probe.TYPE}` : ''})`,
  };
  if (partition !== undefined) plan.partition = partition;
  if (probe.TYPE) plan.detectedType = probe.TYPE;
  if (probe.TYPE === 'swap') plan.estimate = Math.min(size, SWAP_HEADER);
  if (probe.TYPE && !isFileVolumeType(probe.TYPE) && probe.TYPE !== 'swap') {
    const unused = await findUnused(path, { offset, size }, probe.TYPE);
    if ('ranges' in unused) {
      plan.unused = unused;
      plan.estimate = size - unused.bytes;
      plan.stage = `${name} (${probe.TYPE}, used blocks)`;
    }
  }
  if (isFileVolumeType(probe.TYPE)) {
    const loop = await attachLoop(path, { offset, size, readOnly: true });
    try {
      plan.fs = await readFilesystemInfo(loop);
      const blocker = await captureBlocker(loop, plan.fs);
      if (blocker) {
        throw new DiskError('E_DISK_SOURCE', `cannot capture ${name} of ${path}: ${blocker}`, {
          path,
          partition,
        });
      }
    } finally {
      await detachLoop(loop);
    }
    plan.estimate = plan.fs.usedBytes ?? size;
    plan.stage = `${name} (${plan.fs.type})`;
  }
  return plan;
}

/** Overall progress over stages whose sizes are known up front. */
function stagedProgress(
  report: (stage: string, done: number, total: number | undefined, files?: number) => void,
  total?: number,
) {
  let base = 0;
  return {
    stage(name: string, estimate: number) {
      return {
        update: (done: number, files?: number) => report(name, base + Math.min(done, estimate), total, files),
        end: () => {
          base += estimate;
          report(name, base, total);
        },
      };
    },
  };
}

type Progress = ReturnType<typeof stagedProgress>;

/**
 * Where captured data goes as soon as its chunk is named, for a live capture (live.ts), which
 * tells receivers before the manifest exists. Extents carry their chunk id.
 */
export interface PlacementHooks {
  /** Data of file `path` in file volume `volume` (an entry of a hard-link group names it). */
  files(volume: number, uses: Placed[]): void;
  /** A raw run: of raw volume `volume` (offset within it), or of boot area `-1 - i` (offset on the disk). */
  raw(volume: number, extent: RawExtent): void;
  /** A regular file of file volume `volume` whose data is all handed over (captureTree's onFileDone). */
  fileDone(volume: number, entry: FileEntry): void;
}

/** Captures one planned range: as files when it holds ext2/3/4 or vfat, otherwise raw. */
async function captureRange(
  path: string,
  plan: RangePlan,
  index: number,
  sink: ChunkSink,
  progress: Progress,
  hooks?: PlacementHooks,
): Promise<Volume> {
  const stage = progress.stage(plan.stage, plan.estimate);
  let volume: Volume;
  if (plan.fs) {
    const fs = plan.fs;
    const loop = await attachLoop(path, { offset: plan.offset, size: plan.size, readOnly: true });
    try {
      const tree = await openTreeForReading(loop, fs);
      try {
        const entries = await captureTree(tree.dir, sink, {
          oneFileSystem: true,
          onProgress: (p) => stage.update(p.bytes, p.files),
          ...(hooks
            ? {
                onPlaced: (uses: Placed[]) => hooks.files(index, uses),
                onFileDone: (entry: FileEntry) => hooks.fileDone(index, entry),
              }
            : {}),
        });
        volume = { kind: 'files', index, sizeBytes: plan.size, fs, entries };
      } finally {
        await tree.close(false);
      }
    } finally {
      await detachLoop(loop);
    }
  } else {
    // Swap content is scratch data the next boot discards; only its header page (signature,
    // UUID, label, bad-page list) matters, so the rest is restored as zeros.
    const length = plan.detectedType === 'swap' ? Math.min(plan.size, SWAP_HEADER) : plan.size;
    const unused = plan.unused;
    let passed = 0;
    let passedBytes = 0;
    const extents = await captureRaw(path, plan.offset, length, sink, {
      ...(unused ? { skip: unused.ranges } : {}),
      ...(hooks ? { onExtent: (x: RawExtent) => hooks.raw(index, x) } : {}),
      // Progress counts the bytes actually read, against an estimate without the unused blocks.
      onProgress: (done) => {
        for (; unused && passed < unused.ranges.length && unused.ranges[passed]![1] <= done; passed++) {
          passedBytes += unused.ranges[passed]![1] - unused.ranges[passed]![0];
        }
        stage.update(Math.max(0, done - passedBytes));
      },
    });
    volume = {
      kind: 'raw',
      index,
      sizeBytes: plan.size,
      ...(plan.detectedType ? { detectedType: plan.detectedType } : {}),
      extents,
      ...(unused ? { unused: { bytes: unused.bytes, tool: unused.tool } } : {}),
    };
  }
  if (plan.partition !== undefined) volume.partition = plan.partition;
  stage.end();
  return volume;
}

/** Byte ranges outside the partitions that are copied exactly: the start of the disk and the backup GPT. */
export function bootAreaRanges(table: PartitionTable): Array<{ offset: number; length: number }> {
  const ss = table.sectorSize;
  const starts = table.partitions.filter((p) => !p.logical).map((p) => p.startBytes);
  let first: number;
  if (starts.length > 0) first = Math.min(...starts);
  else if (table.gpt) first = table.gpt.firstUsableLba * ss;
  else first = Math.min(1024 * 1024, table.diskSizeBytes);
  const areas = [{ offset: 0, length: first }];
  for (const container of table.partitions) {
    for (const ebr of container.ebrs ?? []) {
      // The record and the gap up to its logical partition (boot loaders use it like the gap after the MBR).
      const length = ebr.logicalStart !== undefined ? ebr.logicalStart - ebr.offset : ss;
      areas.push({ offset: ebr.offset, length });
    }
  }
  if (table.gpt) {
    const from = Math.min(table.gpt.backupEntriesLba, table.gpt.backupHeaderLba) * ss;
    const to = (Math.max(table.gpt.backupEntriesLba, table.gpt.backupHeaderLba) + 1) * ss;
    areas.push({ offset: from, length: to - from });
  }
  return areas;
}

/**
 * Captures `source` into any ChunkSink (an image file, or a live multicast stream) and
 * returns the manifest describing it. Checks the source before the first chunk is put.
 */
export async function captureSource(
  source: string,
  sink: ChunkSink,
  opts: {
    level: CompressionLevel;
    onProgress?: (p: MakeProgress) => void;
    onWarning?: (message: string) => void;
  },
): Promise<MakeResult> {
  await releaseDeadRuns(opts.onWarning);
  const { kind, table } = await classify(source);
  if (kind !== 'directory') await refuseWritableMounts(source);
  return captureClassified(source, kind, table, sink, opts);
}

/**
 * What a capture of `source` will read, found before any data is: the partition table, each
 * partition's filesystem (or that it is captured raw, and its unused blocks), the boot areas.
 */
export interface CapturePlan {
  source: string;
  kind: SourceKind;
  table: PartitionTable | null;
  /** A disk's partitions (the extended container left out), or the one range of a partition source; none for a directory. */
  ranges: RangePlan[];
  /** A disk's boot areas. */
  areas: Array<{ offset: number; length: number }>;
}

async function planClassified(
  source: string,
  kind: SourceKind,
  table: PartitionTable | null,
): Promise<CapturePlan> {
  if (kind === 'directory') return { source, kind, table, ranges: [], areas: [] };
  if (kind === 'partition') {
    return { source, kind, table, ranges: [await planRange(source, 0, await deviceSize(source))], areas: [] };
  }
  const ranges: RangePlan[] = [];
  for (const p of table!.partitions.filter((x) => !x.extended)) {
    ranges.push(await planRange(source, p.startBytes, p.sizeBytes, p.number, p.extended));
  }
  return { source, kind, table, ranges, areas: bootAreaRanges(table!) };
}

/** Checks `source` (as captureSource does) and plans its capture; reads no data. */
export async function planCapture(
  source: string,
  opts: { onWarning?: (message: string) => void } = {},
): Promise<CapturePlan> {
  await releaseDeadRuns(opts.onWarning);
  const { kind, table } = await classify(source);
  if (kind !== 'directory') await refuseWritableMounts(source);
  return planClassified(source, kind, table);
}

/**
 * The manifest a capture of `plan` will make, as far as it is known before any data is read:
 * the disk layout, each volume's kind, size and filesystem, with no file entries and no extents.
 */
export function layoutOf(plan: CapturePlan, level: CompressionLevel): Manifest {
  const volumes: Volume[] =
    plan.kind === 'directory'
      ? [{ kind: 'files', index: 0, fs: { type: 'directory' }, entries: [] }]
      : plan.ranges.map((r, index) => {
          const v = emptyVolume(r, index);
          if (r.partition !== undefined) v.partition = r.partition;
          return v;
        });
  return {
    formatVersion: FORMAT_VERSION,
    imageId: randomUUID(),
    createdAt: new Date().toISOString(),
    generation: 1,
    level,
    source: { kind: plan.kind, path: plan.source, hostname: hostname() },
    ...(plan.kind === 'disk'
      ? {
          disk: diskLayout(
            plan.table!,
            plan.areas.map((a) => ({ ...a, extents: [] })),
            volumes,
          ),
        }
      : {}),
    volumes,
    filesets: [],
  };
}

function emptyVolume(plan: RangePlan, index: number): Volume {
  if (plan.fs) return { kind: 'files', index, sizeBytes: plan.size, fs: plan.fs, entries: [] };
  return {
    kind: 'raw',
    index,
    sizeBytes: plan.size,
    ...(plan.detectedType ? { detectedType: plan.detectedType } : {}),
    extents: [],
    ...(plan.unused ? { unused: { bytes: plan.unused.bytes, tool: plan.unused.tool } } : {}),
  };
}

async function captureClassified(
  source: string,
  kind: SourceKind,
  table: PartitionTable | null,
  sink: ChunkSink,
  opts: { level: CompressionLevel; onProgress?: (p: MakeProgress) => void; signal?: AbortSignal },
): Promise<MakeResult> {
  return capturePlanned(await planClassified(source, kind, table), sink, opts);
}

/** Captures what `plan` says into `sink`; with `hooks`, says where each piece goes as soon as its chunk is named. */
export async function capturePlanned(
  plan: CapturePlan,
  sink: ChunkSink,
  opts: {
    level: CompressionLevel;
    onProgress?: (p: MakeProgress) => void;
    signal?: AbortSignal;
    hooks?: PlacementHooks;
    /** The manifest's identity and time (a live capture announced them before). */
    imageId?: string;
    createdAt?: string;
  },
): Promise<MakeResult> {
  const { source, kind } = plan;
  const hooks = opts.hooks;
  let storedBytes = 0;
  const counted = countingSink(sink, () => {
    storedBytes = counted.counts.rawBytes;
  });
  const report = (stage: string, bytesDone: number, bytesTotal: number | undefined, files?: number) =>
    opts.onProgress?.({
      stage,
      bytesDone,
      ...(bytesTotal !== undefined ? { bytesTotal } : {}),
      ...(files !== undefined ? { files } : {}),
      storedBytes,
    });
  const volumes: Volume[] = [];
  let disk: DiskLayout | undefined;
  if (kind === 'directory') {
    const entries = await captureTree(source, counted.sink, {
      onProgress: (p) => report('directory', p.bytes, undefined, p.files),
      ...(opts.signal ? { signal: opts.signal } : {}),
      ...(hooks
        ? {
            onPlaced: (uses: Placed[]) => hooks.files(0, uses),
            onFileDone: (entry: FileEntry) => hooks.fileDone(0, entry),
          }
        : {}),
    });
    volumes.push({ kind: 'files', index: 0, fs: { type: 'directory' }, entries });
  } else if (kind === 'partition') {
    const range = plan.ranges[0]!;
    volumes.push(
      await captureRange(source, range, 0, counted.sink, stagedProgress(report, range.estimate), hooks),
    );
  } else {
    disk = await captureDisk(plan, counted.sink, volumes, report, hooks);
  }
  const manifest: Manifest = {
    formatVersion: FORMAT_VERSION,
    imageId: opts.imageId ?? randomUUID(),
    createdAt: opts.createdAt ?? new Date().toISOString(),
    generation: 1,
    level: opts.level,
    source: { kind, path: source, hostname: hostname() },
    ...(disk ? { disk } : {}),
    volumes,
    filesets: [],
  };
  return { manifest, stats: { ...counted.counts, uniqueChunks: counted.ids.size, volumes: volumes.length } };
}

/**
 * Where a capture goes: an image file here (makeImage), or one being uploaded to the
 * imaging server. The source is checked before `open` is called, so a bad source never
 * creates anything.
 */
export interface CaptureTarget {
  sink: ChunkSink;
  /** Makes the capture permanent; resolves with the manifest as committed. */
  commit(manifest: Manifest): Promise<Manifest>;
  /** Undoes whatever the target began; safe to call more than once and after a failed commit. */
  abort(): Promise<void>;
}

export type CaptureOptions = Omit<MakeOptions, 'overwrite'>;

/** Captures `source` into the target `open` makes, committing it at the end or aborting it on any failure. */
export async function captureOnto(
  source: string,
  opts: CaptureOptions,
  open: () => Promise<CaptureTarget>,
): Promise<MakeResult> {
  await releaseDeadRuns(opts.onWarning);
  // Refuse a bad source before creating (or overwriting) the target.
  const { kind, table } = await classify(source);
  if (kind !== 'directory') await refuseWritableMounts(source);
  opts.signal?.throwIfAborted();
  const target = await open();
  // Aborting the target makes every later chunk fail, which unwinds whatever is capturing.
  const stop = () => void target.abort().catch(() => {});
  opts.signal?.addEventListener('abort', stop, { once: true });
  try {
    opts.signal?.throwIfAborted();
    const result = await captureClassified(source, kind, table, target.sink, opts);
    opts.signal?.throwIfAborted();
    result.manifest = await target.commit(result.manifest);
    return result;
  } catch (err) {
    await target.abort().catch(() => {});
    // The target's own complaint (closed, aborted) is not the reason when the operator stopped it.
    if (opts.signal?.aborted) throw opts.signal.reason;
    throw err;
  } finally {
    opts.signal?.removeEventListener('abort', stop);
  }
}

/** `img make`: captures `source` (directory, partition/filesystem, or whole disk) into a new image file. */
export async function makeImage(source: string, imagePath: string, opts: MakeOptions): Promise<MakeResult> {
  let writer: ImageWriter | undefined;
  const result = await captureOnto(source, opts, async () => {
    const w = (writer = await ImageWriter.create(imagePath, {
      level: opts.level,
      overwrite: opts.overwrite,
    }));
    return { sink: w, commit: (m) => w.commit(m), abort: () => w.abort() };
  });
  const w = writer!;
  result.stats.storedBytes = w.stats.storedBytes;
  result.image = {
    path: imagePath,
    fileBytes: (await stat(imagePath)).size,
    chunks: w.stats.chunksStored,
    chunkRawBytes: w.stats.rawBytes,
    chunkStoredBytes: w.stats.storedBytes,
  };
  return result;
}

async function captureDisk(
  plan: CapturePlan,
  sink: ChunkSink,
  volumes: Volume[],
  report: (stage: string, done: number, total: number | undefined, files?: number) => void,
  hooks?: PlacementHooks,
): Promise<DiskLayout> {
  const { source, ranges: plans, areas } = plan;
  const total = areas.reduce((n, a) => n + a.length, 0) + plans.reduce((n, p) => n + p.estimate, 0);
  const progress = stagedProgress(report, total);

  const bootAreas: DiskLayout['bootAreas'] = [];
  for (const [i, area] of areas.entries()) {
    const stage = progress.stage('boot area', area.length);
    const extents = await captureRaw(source, area.offset, area.length, sink, {
      extentBase: area.offset,
      onProgress: (done) => stage.update(done),
      ...(hooks ? { onExtent: (x: RawExtent) => hooks.raw(-1 - i, x) } : {}),
    });
    stage.end();
    bootAreas.push({ ...area, extents });
  }
  for (const range of plans) {
    volumes.push(await captureRange(source, range, volumes.length, sink, progress, hooks));
  }
  return diskLayout(plan.table!, bootAreas, volumes);
}

/** The disk layout of a partition table whose partitions (extended containers left out) hold `volumes`, in order. */
function diskLayout(
  table: PartitionTable,
  bootAreas: DiskLayout['bootAreas'],
  volumes: Volume[],
): DiskLayout {
  // The extended container is no volume: its boot records are boot areas (restored byte
  // for byte, so the chain is too) and its logical partitions are captured like primaries.
  const parts = table.partitions.filter((x) => !x.extended);
  const containers = table.partitions
    .filter((x) => x.extended)
    .map((x) => ({ number: x.number, startBytes: x.startBytes, sizeBytes: x.sizeBytes, type: x.type }));
  const partitions: PartitionInfo[] = parts.map((p, index) => {
    if (volumes[index]?.partition !== p.number)
      throw new Error(`internal: volume ${index} is not partition ${p.number}`);
    return {
      number: p.number,
      startBytes: p.startBytes,
      sizeBytes: p.sizeBytes,
      type: p.type,
      ...(p.uuid ? { uuid: p.uuid } : {}),
      ...(p.name ? { name: p.name } : {}),
      ...(p.bootable !== undefined ? { bootable: p.bootable } : {}),
      volume: index,
    };
  });
  return {
    sizeBytes: table.diskSizeBytes,
    sectorSize: table.sectorSize,
    table: table.table,
    partitions,
    bootAreas,
    ...(containers.length > 0 ? { containers } : {}),
  };
}
