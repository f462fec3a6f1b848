/**
 * The imgcast web console: sign-in, then the pages (sessions, automatic sessions,
 * workstations, images, server) over the same HTTP API as the imgcast CLI, with the status
 * pushed live by the server. Pages are addressed by the URL's hash (#/sessions, …) so that
 * the browser's back button and bookmarks work without a server route per page.
 */
import { render } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';

import { currentSignin, endSignin, onSignin, signIn, signOut } from './api.js';
import { AutoSessionPage } from './auto.js';
import { ImagePage, ImagesPage } from './images.js';
import { openLive } from './live.js';
import { ServerPage } from './server.js';
import { SessionPage, SessionsPage, recordRates } from './sessions.js';
import { Field, html, useAction } from './ui.js';
import { WorkstationPage, WorkstationsPage } from './workstations.js';

const PAGES = [
  ['#/sessions', 'Sessions'],
  ['#/workstations', 'Workstations'],
  ['#/images', 'Images'],
  ['#/server', 'Server'],
];

function useHash() {
  const [hash, setHash] = useState(location.hash || '#/sessions');
  useEffect(() => {
    const on = () => setHash(location.hash || '#/sessions');
    addEventListener('hashchange', on);
    return () => removeEventListener('hashchange', on);
  }, []);
  return hash;
}

function SignIn({ message }) {
  const [name, setName] = useState('');
  const [password, setPassword] = useState('');
  const { busy, error, run } = useAction();
  const first = useRef(null);
  useEffect(() => first.current?.querySelector('input')?.focus(), []);
  const submit = (e) => {
    e.preventDefault();
    void run(() => signIn(name.trim(), password));
  };
  return html`<main class="signin">
    <form onSubmit=${submit} aria-labelledby="signin-title">
      <h1 id="signin-title">imgcast console</h1>
      ${message ? html`<p class="notice" role="status">${message}</p>` : null}
      <div ref=${first}>
        <${Field}
          label="Account"
          name="name"
          autocomplete="username"
          required
          value=${name}
          onInput=${(e) => setName(e.currentTarget.value)}
        />
      </div>
      <${Field}
        label="Password"
        name="password"
        type="password"
        autocomplete="current-password"
        required
        value=${password}
        onInput=${(e) => setPassword(e.currentTarget.value)}
        error=${error}
      />
      <button type="submit" class="primary" disabled=${busy}>${busy ? 'Signing in…' : 'Sign in'}</button>
      <p class="hint">Accounts are made on the server with <code>imgcast admin add NAME</code>.</p>
    </form>
  </main>`;
}

function LinkState({ link }) {
  if (link.state === 'live')
    return html`<span class="link live" title="status pushed by the server">● live</span>`;
  return html`<span class="link lost" role="status">${link.why ?? 'connecting to the live status…'}</span>`;
}

function Shell({ signin }) {
  const hash = useHash();
  const [live, setLive] = useState({ status: null, at: 0 });
  const [link, setLink] = useState({ state: 'connecting', why: null });
  useEffect(
    () =>
      openLive(signin.token, {
        onStatus: (status, at) => {
          recordRates(status, at);
          setLive({ status, at });
        },
        onLink: (state, why) => setLink({ state, why }),
      }),
    [signin.token],
  );
  // The sign-in's own end: back to the sign-in page when it expires, whatever the page does.
  useEffect(() => {
    const left = signin.expiresAt - Date.now();
    const t = setTimeout(
      () => signOut('Your sign-in has expired. Sign in again.'),
      Math.max(0, Math.min(left, 2 ** 31 - 1)),
    );
    return () => clearTimeout(t);
  }, [signin.expiresAt]);

  const [path, ...rest] = hash.slice(2).split('/');
  const arg = rest.length ? decodeURIComponent(rest.join('/')) : null;
  let page;
  switch (path) {
    case 'workstations':
      page = arg ? html`<${WorkstationPage} ref_=${arg} key=${arg} />` : html`<${WorkstationsPage} />`;
      break;
    case 'images':
      page = arg ? html`<${ImagePage} name=${arg} key=${arg} live=${live} />` : html`<${ImagesPage} />`;
      break;
    case 'server':
      page = html`<${ServerPage} live=${live} />`;
      break;
    case 'auto':
      page = html`<${AutoSessionPage} name=${arg === 'new' ? null : arg} key=${arg} live=${live} />`;
      break;
    case 'session':
      page = html`<${SessionPage} name=${arg} key=${arg} live=${live} />`;
      break;
    default:
      page = html`<${SessionsPage} live=${live} />`;
  }
  const current = `#/${path === 'auto' || path === 'session' ? 'sessions' : path}`;
  return html`<a
      class="skip"
      href="#main"
      onClick=${(e) => {
        e.preventDefault();
        document.getElementById('main')?.focus();
      }}
      >Skip to content</a
    >
    <header class="top">
      <span class="brand">imgcast</span>
      <nav aria-label="Pages">
        <ul>
          ${PAGES.map(
            ([href, label]) =>
              html`<li>
                <a href=${href} aria-current=${current === href ? 'page' : undefined}>${label}</a>
              </li>`,
          )}
        </ul>
      </nav>
      <${LinkState} link=${link} />
      <span class="who"
        >${live.status?.server.name ? html`${live.status.server.name} · ` : null}${signin.name}</span
      >
      <button type="button" onClick=${() => void endSignin()}>Sign out</button>
    </header>
    <main id="main" tabindex="-1">${page}</main>`;
}

function App() {
  const [state, setState] = useState({ signin: currentSignin(), message: null });
  useEffect(() => onSignin((signin, message) => setState({ signin, message })), []);
  if (!state.signin) return html`<${SignIn} message=${state.message} />`;
  return html`<${Shell} signin=${state.signin} key=${state.signin.token} />`;
}

window.addEventListener('unhandledrejection', (e) => console.error('imgcast console:', e.reason));
const root = document.getElementById('app');
root.textContent = '';
render(html`<${App} />`, root);
