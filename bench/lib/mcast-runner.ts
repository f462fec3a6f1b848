/**
 * One end of an imgcast transfer as its own process, so the lab tests and the
 * benchmark can run the sender and each receiver in separate network namespaces
 * (or kill one with SIGKILL) through the programmatic API (no dependency on the CLI).
 *
 *   node bench/lib/mcast-runner.ts send '<json SenderOptions + file, chunkSize? | image, fileset?>'
 *   node bench/lib/mcast-runner.ts receive '<json ReceiverOptions + to, journal?, image?>'
 *
 * `file` sends a flat file (raw mode); `image` sends one file set of an image, and a
 * receiver with `image: true` restores it onto `to` (resuming from `journal`).
 *
 * stdout carries machine-readable lines: `PROGRESS {json}` (at most every 100 ms) and
 * one final `RESULT {json}` with the API result plus this process's peak RSS (kB,
 * from getrusage, which covers the whole process and is what /usr/bin/time reports).
 * SIGTERM/SIGINT abort the run through its AbortSignal.
 */
import { fileConsumer, flatFileProvider, runReceiver, runSender } from '../../src/transport/index.ts';
import { imageProvider } from '../../src/engine/image-provider.ts';
import { imageDecoder, restoreConsumer } from '../../src/engine/multicast.ts';

interface SendArgs {
  file?: string;
  chunkSize?: number;
  image?: string;
  fileset?: number;
  [k: string]: unknown;
}
interface ReceiveArgs {
  from: string;
  to: string;
  journal?: string;
  image?: boolean;
  [k: string]: unknown;
}

const [mode, json] = process.argv.slice(2);
const abort = new AbortController();
for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => abort.abort(new Error(`${sig}`)));

let lastProgress = 0;
function progress(p: unknown): void {
  const now = Date.now();
  if (now - lastProgress < 100) return;
  lastProgress = now;
  process.stdout.write(`PROGRESS ${JSON.stringify(p)}\n`);
}
const started = performance.now();
const log = (line: string): void =>
  void process.stderr.write(`[+${Math.round(performance.now() - started)} ms] ${line}\n`);

// Peak of each part of memoryUsage(), sampled, for looking into where a peak RSS comes from.
// Once a second: a call takes about 0.6 ms here (it walks the heap's spaces), and every
// 50 ms that was 165 ms of a receiver's main thread in a 14 s run, which udpcast does not pay.
const peakMem: Record<string, number> = {};
setInterval(() => {
  for (const [k, v] of Object.entries(process.memoryUsage())) peakMem[k] = Math.max(peakMem[k] ?? 0, v);
}, 1000).unref();

function finish(result: unknown): void {
  const rss = process.resourceUsage().maxRSS;
  const memMiB = Object.fromEntries(Object.entries(peakMem).map(([k, v]) => [k, Math.round(v / 1048576)]));
  process.stdout.write(`RESULT ${JSON.stringify({ ...(result as object), maxRssKb: rss, memMiB })}\n`);
}

if (mode === 'send' && json) {
  const a = JSON.parse(json) as SendArgs;
  const { file, chunkSize, image, fileset, ...opts } = a;
  const provider = image
    ? await imageProvider(image, fileset ?? 1)
    : await flatFileProvider(file!, chunkSize);
  const r = await runSender(provider, { ...opts, log, onProgress: progress, signal: abort.signal });
  await provider.close?.();
  finish(r);
  process.exitCode = r.ok ? 0 : 1;
} else if (mode === 'receive' && json) {
  const a = JSON.parse(json) as ReceiveArgs;
  const { to, journal, image, ...opts } = a;
  const r = await runReceiver({
    ...opts,
    from: a.from,
    journalPath: journal,
    log,
    onProgress: progress,
    signal: abort.signal,
    ...(image
      ? {
          decode: imageDecoder,
          makeConsumer: (session) => restoreConsumer(session, to, { journalPath: journal, onWarning: log }),
        }
      : { makeConsumer: async () => fileConsumer(to, { journalPath: journal }) }),
  });
  finish(r);
  process.exitCode = r.ok ? 0 : 1;
} else {
  process.stderr.write('usage: mcast-runner.ts send|receive <json options>\n');
  process.exitCode = 2;
}
