/**
 * GET /api/events read as the console reads it (fetch, the token in the Authorization header),
 * for tests of what the live status carries: the events so far, and a wait for one that holds.
 */
import type { RunningServer } from '../../src/server/server.ts';

/** Reads the event stream as the console does: fetch, the token in the header. */
export async function openEvents(f: { server: RunningServer }, token: string | null, waitMs = 5000) {
  const ctl = new AbortController();
  const res = await fetch(`${f.server.url}/api/events`, {
    headers: token === null ? {} : { authorization: `Bearer ${token}` },
    signal: ctl.signal,
  });
  const events: Array<{ event: string; data: unknown }> = [];
  let ended = false;
  let wake = () => {};
  if (res.ok) {
    void (async () => {
      let buf = '';
      const decoder = new TextDecoder();
      try {
        for await (const chunk of res.body!) {
          buf += decoder.decode(chunk as Uint8Array, { stream: true });
          for (let i; (i = buf.indexOf('\n\n')) >= 0;) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            const m = /^event: (.*)\ndata: (.*)$/.exec(block);
            if (m) events.push({ event: m[1]!, data: JSON.parse(m[2]!) });
            wake();
          }
        }
      } catch {
        // Aborted by the test.
      }
      ended = true;
      wake();
    })();
  }
  /** Waits until `pred` holds of the events (or the stream ends), at most `waitMs`. */
  const until = async (pred: () => boolean, what: string) => {
    const deadline = Date.now() + waitMs;
    while (!pred()) {
      if (Date.now() > deadline)
        throw new Error(`timed out waiting for ${what}; events: ${JSON.stringify(events)}`);
      await new Promise<void>((r) => {
        wake = r;
        setTimeout(r, 100);
      });
    }
  };
  return { res, events, until, ended: () => ended, close: () => ctl.abort() };
}
