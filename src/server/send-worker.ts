/**
 * The thread of one session's multicast send (send-thread.ts starts it ahead of time and ends
 * it once it answered). It loads the sender and the image reader at once, then waits: given
 * a session, it opens the image, runs the transport's sender, and tells the server's thread its
 * progress, its log and its result.
 */
import { parentPort } from 'node:worker_threads';

import { reviveError, serializeError } from '../engine/live.ts';
import { imageProvider } from '../engine/image-provider.ts';
import { runSender } from '../transport/sender.ts';
import type { FromSendThread, SendThreadData, ToSendThread } from './send-thread.ts';

const port = parentPort!;
const tell = (m: FromSendThread) => port.postMessage(m);
const abort = new AbortController();
let open: (clients: number) => void = () => {};
const gate = new Promise<{ clients: number }>((resolve) => (open = (clients) => resolve({ clients })));
port.on('message', (m: ToSendThread) => {
  if (m.t === 'start') void send(m.data);
  else if (m.t === 'open') open(m.clients);
  else abort.abort(reviveError(m.reason));
});

async function send(data: SendThreadData): Promise<void> {
  try {
    const provider = await imageProvider(data.imagePath, data.fileset);
    const result = await runSender(provider, {
      interface: data.interface,
      group: data.group,
      port: data.port,
      key: data.key,
      clients: data.clients,
      // Joined workstations connect within moments of the start; one that does not is left behind after this.
      waitSeconds: 15,
      ...(data.gated ? { gate } : {}),
      signal: abort.signal,
      log: (line) => tell({ t: 'log', line }),
      onProgress: (p) =>
        tell({
          t: 'progress',
          p: {
            phase: p.phase,
            bytesSent: p.bytesSent,
            receivers: p.receivers.map(({ name, state, bytes, totalBytes }) => ({
              name,
              state,
              bytes,
              totalBytes,
            })),
          },
        }),
    }).catch(async (err: unknown) => {
      // runSender closes the provider once it ran; one it refused before (a port in use) is closed here.
      await provider.close?.().catch(() => {});
      throw err;
    });
    tell({ t: 'done', result });
  } catch (err) {
    tell({ t: 'failed', error: serializeError(err) });
  }
}
