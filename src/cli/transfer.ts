/**
 * Command handlers for `imgcast send` and `img receive`. The CLI registers them and
 * owns argument parsing; these wire a source and a target to the transport.
 *
 * Image mode sends one file set of an image and restores it onto the receiver's
 * target (directory, disk or partition); `live` mode captures a disk, partition or
 * folder and sends it as it is read (engine/live.ts), restored by the same receive;
 * `raw` mode sends any file as chunks and writes it back as a plain file (benchmarks
 * against udpcast/uftp), with resume through a journal next to the output.
 */
import { rm } from 'node:fs/promises';
import { hostname, networkInterfaces } from 'node:os';

import { InterruptedError, UsageError } from '../errors.ts';
import { TransportError } from '../transport/errors.ts';
import { fileConsumer, flatFileProvider } from '../transport/files.ts';
import { runReceiver } from '../transport/receiver.ts';
import { liveDiskProvider, type LiveStats } from '../engine/live.ts';
import type { MakeProgress } from '../engine/make.ts';
import { imageProvider } from '../engine/image-provider.ts';
import { defaultJournal, imageDecoder, restoreConsumer } from '../engine/multicast.ts';
import { DEFAULT_LEVEL, type CompressionLevel } from '../image/types.ts';
import { MAX_DATAGRAM, UNIT_DATAGRAM } from '../transport/packet.ts';
import { runSender } from '../transport/sender.ts';
import type { ReceiverProgress, ReceiverResult, SenderProgress, SenderResult } from '../transport/types.ts';

export interface SendCommandOptions {
  raw?: boolean;
  /** The source is a disk, partition or folder, captured and sent as it is read (no image file). */
  live?: boolean;
  /** Live: compression on this machine (default balanced). */
  level?: CompressionLevel;
  /** Live: stored chunk bytes held for the session before the capture waits. */
  liveMemoryBytes?: number;
  /** Live: the capture's progress. */
  onCapture?: (p: MakeProgress) => void;
  fileset?: number;
  clients?: number;
  wait?: number;
  interface?: string;
  group?: string;
  port?: number;
  rate?: number;
  ttl?: number;
  /** Largest UDP datagram in bytes; 1472 turns IP fragmentation off. */
  datagramSize?: number;
  /** Sending threads (SenderOptions.sendThreads). */
  sendThreads?: number;
  key?: string;
  encrypt?: boolean;
  /** Chunk size for raw mode, bytes. */
  chunkSize?: number;
  log?: (line: string) => void;
  onProgress?: (p: SenderProgress) => void;
  signal?: AbortSignal;
}

export interface ReceiveCommandOptions {
  from: string;
  to: string;
  raw?: boolean;
  interface?: string;
  key?: string;
  name?: string;
  journal?: string;
  /** Restore into a non-empty directory. */
  force?: boolean;
  /** Keep the image's partition sizes (RestoreOptions.keepSizes). */
  keepSizes?: boolean;
  /** Ignore the resume journal: restore everything again. */
  restart?: boolean;
  /** See ReceiverOptions.tuneReassembly. */
  tuneReassembly?: boolean;
  /** See ReceiverOptions.warn. */
  warn?: (line: string) => void;
  log?: (line: string) => void;
  onProgress?: (p: ReceiverProgress) => void;
  signal?: AbortSignal;
}

function positive(n: number | undefined, what: string): void {
  if (n !== undefined && (!Number.isFinite(n) || n <= 0))
    throw new UsageError(`${what} must be a positive number`);
}

/** What a send did; a live send also says what its capture stored and held. */
export type SendResult = SenderResult & { live?: LiveStats & { level: CompressionLevel } };

/**
 * Sends an image (with `raw`, any file; with `live`, a disk, partition or folder read as it
 * is sent) to the receivers that join; throws unless every receiver succeeded.
 */
export async function sendCommand(imagePath: string, opts: SendCommandOptions): Promise<SendResult> {
  if (opts.live && opts.raw) throw new UsageError('--live and --raw exclude each other');
  if (opts.level !== undefined && !opts.live) {
    throw new UsageError('--level applies to --live only: an image keeps the level it was made with');
  }
  if (opts.liveMemoryBytes !== undefined && !opts.live)
    throw new UsageError('--live-memory applies to --live only');
  positive(opts.clients, '--clients');
  positive(opts.rate, '--rate');
  if (opts.wait !== undefined && !(opts.wait >= 0)) throw new UsageError('--wait must be 0 or more seconds');
  const ds = opts.datagramSize;
  if (ds !== undefined && !(Number.isInteger(ds) && ds >= UNIT_DATAGRAM && ds <= MAX_DATAGRAM)) {
    throw new UsageError(
      `--datagram-size must be ${UNIT_DATAGRAM} (no IP fragmentation) to ${MAX_DATAGRAM} bytes, got ${ds}`,
    );
  }
  const level = opts.level ?? DEFAULT_LEVEL;
  const live = opts.live
    ? await liveDiskProvider(imagePath, {
        level,
        signal: opts.signal,
        onProgress: opts.onCapture,
        log: opts.log,
        ...(opts.liveMemoryBytes !== undefined ? { memoryBytes: opts.liveMemoryBytes } : {}),
      })
    : undefined;
  const provider =
    live ??
    (opts.raw
      ? await flatFileProvider(imagePath, opts.chunkSize)
      : await imageProvider(imagePath, opts.fileset ?? 1));
  // runSender closes the provider when the session ends; one it refused before starting is closed here.
  const sent = await runSender(provider, {
    interface: opts.interface,
    group: opts.group,
    port: opts.port,
    ttl: opts.ttl,
    rateMbit: opts.rate,
    maxDatagram: opts.datagramSize,
    sendThreads: opts.sendThreads,
    clients: opts.clients,
    waitSeconds: opts.wait,
    key: opts.key,
    encrypt: opts.encrypt,
    log: opts.log,
    onProgress: opts.onProgress,
    signal: opts.signal,
  }).catch(async (err: unknown) => {
    await provider.close?.().catch(() => {});
    throw err;
  });
  const result: SendResult = live ? { ...sent, live: { ...live.stats, level } } : sent;
  if (!result.ok) {
    if (opts.signal?.aborted && opts.signal.reason instanceof InterruptedError) throw opts.signal.reason;
    const bad = result.receivers.filter((r) => r.state !== 'ok');
    throw new TransportError(
      bad.length || result.receivers.length ? 'E_DROPPED' : 'E_NO_RECEIVERS',
      result.receivers.length === 0
        ? 'no receiver completed the session'
        : `${bad.length} of ${result.receivers.length} receiver(s) did not finish: ` +
            bad.map((r) => `${r.name}: ${r.reason ?? r.state}`).join('; '),
      { result },
    );
  }
  return result;
}

/** Receives into `to`; throws (non-zero exit) unless the whole session landed and verified. */
export async function receiveCommand(opts: ReceiveCommandOptions): Promise<ReceiverResult> {
  const common = {
    from: opts.from,
    interface: opts.interface,
    key: opts.key,
    name: opts.name ?? workstationName(opts.interface),
    tuneKernel: true,
    tuneReassembly: opts.tuneReassembly,
    log: opts.log,
    warn: opts.warn,
    onProgress: opts.onProgress,
    signal: opts.signal,
  };
  let result: ReceiverResult;
  if (opts.raw) {
    const journal = opts.journal ?? `${opts.to}.journal`;
    if (opts.restart) await rm(journal, { force: true });
    result = await runReceiver({
      ...common,
      journalPath: journal,
      makeConsumer: async () => fileConsumer(opts.to, { journalPath: journal }),
    });
  } else {
    const journal = opts.journal ?? (await defaultJournal(opts.to));
    result = await runReceiver({
      ...common,
      decode: imageDecoder,
      journalPath: journal,
      makeConsumer: (session) =>
        restoreConsumer(session, opts.to, {
          force: opts.force,
          keepSizes: opts.keepSizes,
          onWarning: opts.warn ?? opts.log,
          journalPath: journal,
          restart: opts.restart,
        }),
    });
  }
  if (!result.ok) {
    // Stopped by Ctrl-C / SIGTERM: say so (exit 130/143), not "aborted by the caller".
    if (opts.signal?.aborted && opts.signal.reason instanceof InterruptedError) throw opts.signal.reason;
    throw new TransportError(result.code ?? 'E_CONSUMER', result.message ?? 'receive failed', { result });
  }
  return result;
}

/**
 * How a workstation is named to the sender unless --name says otherwise: its hostname and the
 * MAC address of the interface it receives on (or of its first wired one), so the name is the
 * same after a crash or a reboot, and two machines cloned with one hostname stay apart.
 */
function workstationName(address?: string): string {
  const all = Object.values(networkInterfaces()).flatMap((list) => list ?? []);
  const ipv4 = all.filter((i) => i.family === 'IPv4' && !i.internal && i.mac !== '00:00:00:00:00:00');
  const mac = (address ? ipv4.find((i) => i.address === address) : undefined)?.mac ?? ipv4[0]?.mac;
  return mac ? `${hostname()}/${mac}` : hostname();
}
