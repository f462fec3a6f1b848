/**
 * The server's live status (GET /api/events, server-sent events), read with fetch rather than
 * EventSource: EventSource cannot send the Authorization header, and the token must not go
 * into a URL. A dropped stream is opened again with a growing pause; one that stays silent
 * past three heartbeats is taken for dead. A `signed-out` event, or a 401/403, ends the
 * sign-in with the server's reason.
 */
import { signOut, signedOutMessage, ApiError } from './api.js';

const SILENT_MS = 45_000;

/**
 * Starts reading; calls onStatus(status, receivedAt) for every status and onLink(state, why)
 * with 'connecting' | 'live' | 'lost'. Returns a function that stops it.
 */
export function openLive(token, { onStatus, onLink }) {
  let stopped = false;
  let abort;
  let watchdog;

  const parse = (block) => {
    let event = 'message';
    const data = [];
    for (const line of block.split(/\r\n|\r|\n/)) {
      if (line === '' || line.startsWith(':')) continue;
      const i = line.indexOf(':');
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
      if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
    }
    return { event, data: data.join('\n') };
  };

  const loop = async () => {
    let pause = 1000;
    while (!stopped) {
      abort = new AbortController();
      const alive = () => {
        clearTimeout(watchdog);
        watchdog = setTimeout(() => abort.abort(), SILENT_MS);
      };
      try {
        onLink('connecting', null);
        alive();
        const r = await fetch('/api/events', {
          headers: { authorization: `Bearer ${token}`, accept: 'text/event-stream' },
          cache: 'no-store',
          signal: abort.signal,
        });
        if (r.status === 401 || r.status === 403) {
          const body = await r.json().catch(() => null);
          stopped = true;
          signOut(signedOutMessage(new ApiError(r.status, body)));
          return;
        }
        if (!r.ok || !r.body) throw new Error(`the server answered ${r.status}`);
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          alive();
          buffer += value;
          for (let m; (m = /\r\n\r\n|\n\n|\r\r/.exec(buffer));) {
            const block = buffer.slice(0, m.index);
            buffer = buffer.slice(m.index + m[0].length);
            const e = parse(block);
            if (e.event === 'status') {
              pause = 1000;
              onLink('live', null);
              onStatus(JSON.parse(e.data), Date.now());
            } else if (e.event === 'signed-out') {
              stopped = true;
              const body = JSON.parse(e.data);
              signOut(`Your sign-in has ended (${body.message}). Sign in again.`);
              return;
            }
          }
        }
        if (!stopped) onLink('lost', 'the server ended the live status; reconnecting');
      } catch (err) {
        if (stopped) return;
        onLink(
          'lost',
          `live status lost (${err.name === 'AbortError' ? 'no news from the server' : err.message}); reconnecting`,
        );
      } finally {
        clearTimeout(watchdog);
      }
      await new Promise((r) => setTimeout(r, pause));
      pause = Math.min(pause * 2, 15_000);
    }
  };
  void loop();
  return () => {
    stopped = true;
    clearTimeout(watchdog);
    abort?.abort();
  };
}
