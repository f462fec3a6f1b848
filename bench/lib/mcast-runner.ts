/**
 * One end of an imgcast raw transfer as its own process, so the lab tests and the
 * benchmark can run the sender and each receiver in separate network namespaces
 * through the programmatic API (no dependency on the CLI).
 *
 *   node bench/lib/mcast-runner.ts send '<json SenderOptions + file, chunkSize?>'
 *   node bench/lib/mcast-runner.ts receive '<json ReceiverOptions + to, journal?>'
 *
 * stdout carries machine-readable lines: `PROGRESS {json}` (at most every 100 ms) and
 * one final `RESULT {json}` with the API result plus this process's peak RSS (kB,
 * from getrusage, which covers the whole process and is what /usr/bin/time reports).
 * SIGTERM/SIGINT abort the run through its AbortSignal.
 */
import { fileConsumer, flatFileProvider, runReceiver, runSender } from '../../src/transport/index.ts';

interface SendArgs {
  file: string;
  chunkSize?: number;
  [k: string]: unknown;
}
interface ReceiveArgs {
  from: string;
  to: string;
  journal?: string;
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
const log = (line: string): void => void process.stderr.write(`${line}\n`);

function finish(result: unknown): void {
  const rss = process.resourceUsage().maxRSS;
  process.stdout.write(`RESULT ${JSON.stringify({ ...(result as object), maxRssKb: rss })}\n`);
}

if (mode === 'send' && json) {
  const a = JSON.parse(json) as SendArgs;
  const { file, chunkSize, ...opts } = a;
  const provider = await flatFileProvider(file, chunkSize);
  const r = await runSender(provider, { ...opts, log, onProgress: progress, signal: abort.signal });
  await provider.close?.();
  finish(r);
  process.exitCode = r.ok ? 0 : 1;
} else if (mode === 'receive' && json) {
  const a = JSON.parse(json) as ReceiveArgs;
  const { to, journal, ...opts } = a;
  const r = await runReceiver({
    ...opts,
    from: a.from,
    journalPath: journal,
    log,
    onProgress: progress,
    signal: abort.signal,
    makeConsumer: async () => fileConsumer(to, { journalPath: journal }),
  });
  finish(r);
  process.exitCode = r.ok ? 0 : 1;
} else {
  process.stderr.write('usage: mcast-runner.ts send|receive <json options>\n');
  process.exitCode = 2;
}
