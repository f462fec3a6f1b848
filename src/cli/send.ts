/** `imgcast send`: the low-level multicast sender, like udp-sender but for images. */
import { Command, InvalidArgumentError, Option } from 'commander';
import { sendCommand, type SendResult } from './transfer.ts';
import { COMPRESSION_LEVELS, type CompressionLevel } from '../image/types.ts';
import { MAX_SEND_THREADS } from '../transport/datagram-out.ts';
import {
  DATA_PORTS,
  DEFAULT_DATAGRAM,
  FRAG_PAYLOAD,
  MAX_CONTROL_PORT,
  MAX_DATAGRAM,
  UNIT_DATAGRAM,
} from '../transport/packet.ts';
import type { SenderProgress } from '../transport/types.ts';
import { parseFileset } from './img.ts';
import { localIPv4, multicastGroup, multicastTtl, positiveInteger, seconds } from './options.ts';
import { emit, formatBytes, runCommand, withProgress } from './output.ts';
import { count } from '../wording.ts';

export function positiveNumber(what: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`${what} must be a positive number`);
    return n;
  };
}

function datagramSize(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < UNIT_DATAGRAM || n > MAX_DATAGRAM) {
    throw new InvalidArgumentError(
      `a size in bytes from ${UNIT_DATAGRAM} (no IP fragmentation) to ${MAX_DATAGRAM}`,
    );
  }
  return n;
}

function sendThreads(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > MAX_SEND_THREADS) {
    throw new InvalidArgumentError(
      `a whole number from 0 (send from the main thread) to ${MAX_SEND_THREADS}`,
    );
  }
  return n;
}

export function port(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > MAX_CONTROL_PORT)
    throw new InvalidArgumentError(`a port from 1 to ${MAX_CONTROL_PORT}`);
  return n;
}

function describeResult(r: SendResult): string {
  const lines = [
    `${r.ok ? 'done' : 'FAILED'}: ${count(r.chunks, 'chunk')}, ${formatBytes(r.bytes)} per pass in ${(r.durationMs / 1000).toFixed(1)} s; ` +
      `${count(r.counters.repairPackets, 'repair packet')} (${formatBytes(r.counters.repairBytes)})` +
      (r.counters.codedRepairs
        ? `, ${r.counters.codedRepairs} of them coded (${count(r.counters.codedRuns, 'run')} for different receivers)`
        : ''),
  ];
  if (r.live) {
    lines.push(
      `  captured live at level ${r.live.level}: ${count(r.live.chunks, 'chunk')}, ${formatBytes(r.live.rawBytes)} read, ` +
        `${formatBytes(r.live.storedBytes)} compressed; at most ${formatBytes(r.live.peakHeldBytes)} held in memory` +
        (r.live.waitedForMemory
          ? ` (the capture waited for the network ${count(r.live.waitedForMemory, 'time')})`
          : ''),
    );
  }
  const sizes = r.counters.datagramsByUnits.map((n, k) => (n > 0 ? `${n} x ${k}` : '')).filter(Boolean);
  if (sizes.length) {
    lines.push(
      `  datagrams (count x ${FRAG_PAYLOAD}-byte units): ${sizes.join(', ')}` +
        (r.counters.fragmentationPauses
          ? `; stopped fragmenting ${count(r.counters.fragmentationPauses, 'time')} for a receiver's full IP reassembly memory`
          : ''),
    );
  }
  for (const c of r.receivers) {
    lines.push(
      `  ${c.name.padEnd(20)} ${c.address.padEnd(22)} ${c.state.padEnd(8)} ${formatBytes(c.bytes)}/${formatBytes(c.totalBytes)} ${c.rateMbit.toFixed(0)} Mbit/s${c.reason ? `  ${c.reason}` : ''}`,
    );
  }
  return lines.join('\n');
}

export function addSendCommand(program: Command): void {
  program
    .command('send')
    .description(
      'multicast an image, or a disk read as it is sent (--live), to the receivers that join (img receive), then report each one',
    )
    .argument(
      '<image>',
      'image file (.imgc); with --live a disk, partition or folder (captured as it is sent); any file with --raw',
    )
    .addOption(new Option('-f, --fileset <n>', 'file set 1-10 to send').argParser(parseFileset).default(1))
    .addOption(
      new Option('-c, --clients <n>', 'start once this many receivers joined')
        .argParser(positiveInteger)
        .default(1),
    )
    .addOption(
      new Option('-t, --wait <seconds>', 'start anyway this long after the last join')
        .argParser(seconds)
        .default(300),
    )
    .addOption(
      new Option('--interface <addr>', 'local IPv4 address of the interface to use').argParser(localIPv4),
    )
    .addOption(
      new Option('--group <addr>', 'multicast group (239.0.0.0/8; not 224.0.0.x)')
        .argParser(multicastGroup)
        .default('239.255.42.1'),
    )
    .addOption(
      new Option('--port <p>', `control TCP port; data uses the ${DATA_PORTS} UDP ports above it`)
        .argParser(port)
        .default(7747),
    )
    .addOption(new Option('--rate <mbit>', 'cap the data rate, Mbit/s').argParser(positiveNumber('--rate')))
    .addOption(
      new Option('--ttl <n>', 'multicast TTL, 1-255 (1 = this subnet)').argParser(multicastTtl).default(1),
    )
    .addOption(
      new Option(
        '--datagram-size <bytes>',
        `largest UDP datagram; above ${UNIT_DATAGRAM} datagrams are IP-fragmented (fewer packets to ` +
          `process, fewer lost ones tolerated: the sender shrinks them itself when receivers report loss); ` +
          `${UNIT_DATAGRAM} never fragments, for networks that drop IP fragments; at most ${MAX_DATAGRAM}`,
      )
        .argParser(datagramSize)
        .default(DEFAULT_DATAGRAM),
    )
    .addOption(
      new Option(
        '--send-threads <n>',
        'threads that hand datagrams to the kernel beside the main one (default: 1 with 2 or more cores, ' +
          'else 0); while loss keeps datagrams small they are dealt over all of them',
      ).argParser(sendThreads),
    )
    .option('--key <secret>', 'pre-shared key: receivers must prove it (also env IMGCAST_KEY)')
    .option(
      '--encrypt',
      'encrypt the data stream (AES-256-GCM; needs --key, which protects the data key on the control connection)',
    )
    .option(
      '--live',
      'capture the disk, partition or folder given and send it as it is read, without an image file: ' +
        'receivers restore it as it streams; reading, compressing and sending overlap',
    )
    .addOption(
      new Option(
        '-l, --level <level>',
        'with --live: compression on this machine, none trades network for CPU, size the reverse (default balanced)',
      ).choices(COMPRESSION_LEVELS),
    )
    .addOption(
      new Option(
        '--live-memory <MiB>',
        'with --live: compressed data held for receivers before the capture waits for them (default 256); ' +
          'a receiver can join late while none of it was let go',
      ).argParser(positiveInteger),
    )
    .option('--raw', 'send a plain file instead of an image (for tests and benchmarks)')
    .option('--json', 'print the result as JSON')
    .option('-v, --verbose', 'log session events to stderr')
    .action(
      (
        image: string,
        o: {
          fileset: number;
          clients: number;
          wait: number;
          interface?: string;
          group: string;
          port: number;
          rate?: number;
          ttl: number;
          datagramSize: number;
          sendThreads?: number;
          key?: string;
          encrypt?: boolean;
          raw?: boolean;
          live?: boolean;
          level?: CompressionLevel;
          liveMemory?: number;
          json?: boolean;
          verbose?: boolean;
        },
      ) =>
        runCommand(
          'imgcast',
          !!o.json,
          async (signal) => {
            const waiting = waitingReporter(!!o.json);
            const result = await withProgress('send', { json: !!o.json }, (update) =>
              sendCommand(image, {
                raw: o.raw,
                live: o.live,
                ...(o.level !== undefined ? { level: o.level } : {}),
                ...(o.liveMemory !== undefined ? { liveMemoryBytes: o.liveMemory * 1024 * 1024 } : {}),
                fileset: o.fileset,
                clients: o.clients,
                wait: o.wait,
                interface: o.interface,
                group: o.group,
                port: o.port,
                rate: o.rate,
                ttl: o.ttl,
                datagramSize: o.datagramSize,
                sendThreads: o.sendThreads,
                key: o.key ?? process.env.IMGCAST_KEY,
                encrypt: o.encrypt,
                log: o.verbose ? (line) => process.stderr.write(`${line}\n`) : undefined,
                signal,
                onProgress: (p: SenderProgress) => {
                  waiting(p);
                  if (p.phase === 'waiting') return;
                  const total = p.receivers.reduce((n, r) => n + r.totalBytes, 0);
                  const done = p.receivers.reduce((n, r) => n + r.bytes, 0);
                  update(done, total);
                },
              }),
            );
            emit(!!o.json, result, () => describeResult(result));
          },
          { interruptible: true },
        ),
    );
}

/**
 * Until the session starts, says on stderr who joined and when it starts (a line per change off
 * a terminal, one line kept up to date on one), so an administrator never watches a silent wait.
 */
function waitingReporter(json: boolean): (p: SenderProgress) => void {
  let last = '';
  let shown = false;
  return (p) => {
    if (json) return;
    if (p.phase !== 'waiting') {
      if (shown && process.stderr.isTTY) process.stderr.write('\n');
      shown = false;
      return;
    }
    const joined = `${p.joined} of ${count(p.wanted, 'receiver')} joined`;
    const when =
      p.joined === 0
        ? 'waiting for the first (--wait counts from the last join)'
        : `starts when ${p.wanted} have joined or in ${formatClock(p.startsInMs)}`;
    const line = `waiting: ${joined}; ${when}`;
    if (process.stderr.isTTY) {
      process.stderr.write(`\r${line}\x1b[K`);
      shown = true;
    } else if (line.replace(/in \d+:\d+$/, '') !== last.replace(/in \d+:\d+$/, '')) {
      process.stderr.write(`${line}\n`);
    }
    last = line;
  };
}

function formatClock(ms: number): string {
  const s = Math.ceil(ms / 1000);
  return `${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`;
}
