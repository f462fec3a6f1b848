/**
 * Sessions: every session with its live state (pushed by the server), its workstations'
 * progress, and what can be done to it now; the ordered list of automatic sessions; a form
 * for a new server session.
 */
import { useEffect, useRef, useState } from 'preact/hooks';

import { api, fieldOf, seg } from './api.js';
import {
  ErrorText,
  Field,
  Loading,
  PageTitle,
  Progress,
  StateBadge,
  bytes,
  duration,
  html,
  mbit,
  useAction,
  useLoad,
  useTick,
  when,
} from './ui.js';

// --- throughput, sampled from every status the server pushes

const SAMPLES = 600;
const rates = new Map();

/** Keeps each sending session's rate over time for its chart. */
export function recordRates(status, at) {
  const seen = new Set();
  for (const s of status.sessions) {
    const key = `${s.name}#${s.run}`;
    seen.add(key);
    if (s.state !== 'sending' && !rates.has(key)) continue;
    const list = rates.get(key) ?? [];
    if (s.state === 'sending' || list.length === 0 || list.at(-1)[1] !== 0)
      list.push([at, s.state === 'sending' ? s.rateMbit : 0]);
    if (list.length > SAMPLES) list.splice(0, list.length - SAMPLES);
    rates.set(key, list);
  }
  for (const key of rates.keys()) if (!seen.has(key)) rates.delete(key);
}

function Chart({ session }) {
  const list = rates.get(`${session.name}#${session.run}`) ?? [];
  if (list.length < 2) return null;
  const W = 600;
  const H = 120;
  const t0 = list[0][0];
  const t1 = Math.max(list.at(-1)[0], t0 + 1);
  const top = Math.max(1, ...list.map((p) => p[1]));
  const points = list
    .map(([t, v]) => `${(((t - t0) / (t1 - t0)) * W).toFixed(1)},${(H - (v / top) * (H - 10)).toFixed(1)}`)
    .join(' ');
  const now = list.at(-1)[1];
  return html`<figure class="chart">
    <svg
      viewBox=${`0 0 ${W} ${H}`}
      role="img"
      aria-label=${`throughput of ${session.name}: now ${mbit(now)}, peak ${mbit(top)}`}
      preserveAspectRatio="none"
    >
      <line x1="0" y1=${H - 0.5} x2=${W} y2=${H - 0.5} class="axis" />
      <polyline points=${points} class="rate" />
    </svg>
    <figcaption>Throughput: now ${mbit(now)}, peak ${mbit(top)}, over ${duration(t1 - t0)}</figcaption>
  </figure>`;
}

// --- one session

function what(s) {
  if (s.master)
    return html`disk of <strong>${s.master.name}</strong> (${s.master.present ? 'connected' : 'not connected'})`;
  if (s.auto?.master) return html`disk of <strong>${s.auto.master.name}</strong>`;
  if (!s.image) return html`<em>no master yet</em>`;
  return html`<a href=${`#/images/${seg(s.image)}`}>${s.image}</a> (file set ${s.fileset})`;
}

/** "3/2": 3 joined, 2 more needed; the countdown to the time trigger. */
function Trigger({ s, at }) {
  useTick(1000);
  const left = s.startsInMs === null ? null : Math.max(0, s.startsInMs - (Date.now() - at));
  return html`<span class="trigger">
    <span class="joined" title=${`${s.joined} joined, ${s.needed} more needed`}>${s.joined}/${s.needed}</span>
    ${
      s.state === 'waiting'
        ? html` ·${' '}
          ${
            s.startBy === 'command'
              ? 'starts on command'
              : left === null
                ? `starts when ${s.clientCount} joined, or ${duration(s.waitMs)} after the last join`
                : html`starts in <span class="countdown">${duration(left)}</span> or once ${s.clientCount} joined`
          }`
        : null
    }
  </span>`;
}

function Clients({ s }) {
  if (s.clients.length === 0) return html`<p class="muted">No workstation has joined this run yet.</p>`;
  return html`<table class="clients">
    <caption class="sr-only">
      Workstations of ${s.name}
    </caption>
    <thead>
      <tr>
        <th scope="col">Workstation</th>
        <th scope="col">State</th>
        <th scope="col">Progress</th>
        <th scope="col">Received</th>
        <th scope="col">Rate</th>
        <th scope="col">ETA</th>
        <th scope="col">Result</th>
      </tr>
    </thead>
    <tbody>
      ${s.clients.map(
        (c) =>
          html`<tr key=${c.workstation} class=${`client state-${c.state}`} data-workstation=${c.name}>
            <th scope="row">
              <a href=${`#/workstations/${seg(c.mac)}`}>${c.name}</a> <span class="muted">${c.address}</span>
            </th>
            <td><${StateBadge} state=${c.state} /></td>
            <td><${Progress} value=${c.bytes} max=${c.totalBytes} label=${`progress of ${c.name}`} /></td>
            <td>${bytes(c.bytes)} of ${bytes(c.totalBytes)}</td>
            <td>${c.state === 'receiving' ? mbit(c.rateMbit) : '—'}</td>
            <td>${duration(c.etaMs)}</td>
            <td>
              ${c.reason ? html`<span class="error-text">${c.reason}${c.code ? ` [${c.code}]` : ''}</span>` : c.state === 'ok' ? 'written and verified' : ''}
            </td>
          </tr>`,
      )}
    </tbody>
  </table>`;
}

/** Changes a waiting session's client count or wait (PATCH /api/sessions/NAME). */
function ChangeTrigger({ s, onDone }) {
  const [count, setCount] = useState(String(s.clientCount));
  const [wait, setWait] = useState(String(s.waitMs / 60_000));
  const { busy, error, run } = useAction();
  const field = fieldOf(error, ['clientCount', 'waitMinutes']);
  const submit = (e) => {
    e.preventDefault();
    const body = {};
    if (Number(count) !== s.clientCount) body.clientCount = Number(count);
    if (Number(wait) * 60_000 !== s.waitMs) body.waitMinutes = Number(wait);
    void run(async () => {
      await api('PATCH', `/api/sessions/${seg(s.name)}`, body);
      onDone();
    });
  };
  return html`<form class="inline" onSubmit=${submit} aria-label=${`change the start of ${s.name}`}>
    <${Field}
      label="Clients to start"
      type="number"
      name="clientCount"
      value=${count}
      onInput=${(e) => setCount(e.currentTarget.value)}
      error=${field === 'clientCount' ? error : null}
    />
    <${Field}
      label="Minutes after the last join"
      type="number"
      step="any"
      name="waitMinutes"
      value=${wait}
      onInput=${(e) => setWait(e.currentTarget.value)}
      error=${field === 'waitMinutes' ? error : null}
    />
    <div class="buttons">
      <button type="submit" class="primary" disabled=${busy}>Save</button>
      <button type="button" onClick=${onDone}>Cancel</button>
    </div>
    ${field ? null : html`<${ErrorText} error=${error} />`}
  </form>`;
}

export function SessionCard({ s, at, full = false }) {
  const [changing, setChanging] = useState(false);
  const { busy, error, run } = useAction();
  const act = (method, path, body, confirmText) => () => {
    if (confirmText && !confirm(confirmText)) return;
    void run(() => api(method, `/api/sessions/${seg(s.name)}${path}`, body));
  };
  const live = s.state === 'waiting' || s.state === 'sending';
  return html`<article
    class=${`session state-${s.state}`}
    aria-labelledby=${`s-${s.name}`}
    data-session=${s.name}
  >
    <header>
      <h3 id=${`s-${s.name}`}>
        ${full ? s.name : html`<a href=${`#/session/${seg(s.name)}`}>${s.name}</a>`} ${' '}<${StateBadge}
          state=${s.state}
        />
        ${s.auto ? html` <span class="badge">automatic</span>` : s.origin === 'workstation' ? html` <span class="badge">opened by workstations</span>` : null}
      </h3>
      <p class="summary">
        Sends ${what(s)} · <${Trigger} s=${s} at=${at} />
        ${s.state === 'sending' ? html` · ${mbit(s.rateMbit)}` : null}
        ${s.group ? html` · <span class="muted">${s.group}:${s.port}</span>` : null}
        ${s.run > 1 ? html` · run ${s.run}` : null}
      </p>
      ${s.message ? html`<p class="message">${s.message}</p>` : null}
    </header>
    <div class="buttons" role="group" aria-label=${`actions on ${s.name}`}>
      ${
        s.state === 'waiting'
          ? html`<button type="button" onClick=${act('POST', '/start')} disabled=${busy}>Start now</button>
              <button type="button" onClick=${() => setChanging(!changing)} aria-expanded=${changing}>
                Change count or wait
              </button>`
          : null
      }
      ${live ? html`<button type="button" onClick=${act('POST', '/stop', {}, `Stop session ${s.name}${s.state === 'sending' ? ' while it sends' : ''}?`)} disabled=${busy}>Stop</button>` : html`<button type="button" onClick=${act('POST', '/restart')} disabled=${busy}>Restart</button>`}
      ${s.auto ? html`<a class="button" href=${`#/auto/${seg(s.name)}`}>Edit</a>` : null}
      <button
        type="button"
        class="danger"
        onClick=${act('DELETE', '', undefined, `Delete session ${s.name}${live ? ' (it stops first)' : ''}? Its history stays.`)}
        disabled=${busy}
      >
        Delete
      </button>
    </div>
    <${ErrorText} error=${error} />
    ${changing && s.state === 'waiting' ? html`<${ChangeTrigger} s=${s} onDone=${() => setChanging(false)} />` : null}
    ${full || s.state === 'sending' ? html`<${Chart} session=${s} />` : null}
    <${Clients} s=${s} />
    ${full ? html`<p class="muted">Created ${when(s.createdAt)}${s.startedAt ? `, started ${when(s.startedAt)}` : ''}${s.finishedAt ? `, ended ${when(s.finishedAt)}` : ''}.</p>` : null}
  </article>`;
}

// --- the automatic sessions' list

/**
 * The button that moved a session keeps the focus once the list is redrawn in its new order (a
 * list item moved in the page loses it otherwise), so the keyboard can move it on.
 */
let refocus = null;

function AutoRow({ s, first, last }) {
  const { busy, error, run } = useAction();
  // The box shows what was asked until the pushed status (or a refusal) says otherwise.
  const [asked, setAsked] = useState(null);
  const a = s.auto;
  useEffect(() => {
    if (asked === a.enabled) setAsked(null);
  }, [a.enabled, asked]);
  const up = useRef(null);
  const down = useRef(null);
  // Buttons that cannot act say so (aria-disabled) rather than being disabled: a disabled
  // button drops the keyboard focus, and the first session's "up" is where focus lands after
  // moving it there.
  const move = (way, blocked) => () => {
    if (busy || blocked) return;
    refocus = `${s.name} ${way}`;
    void run(() => api('POST', `/api/sessions/${seg(s.name)}/${way}`));
  };
  useEffect(() => {
    for (const [way, ref] of [
      ['up', up],
      ['down', down],
    ]) {
      if (refocus === `${s.name} ${way}` && ref.current && document.activeElement !== ref.current) {
        ref.current.focus();
        refocus = null;
      }
    }
  }, [a.position]);
  const who = [
    a.members.length ? `${a.members.length} listed` : null,
    a.rules.length ? `${a.rules.length} rule${a.rules.length > 1 ? 's' : ''}` : null,
  ].filter(Boolean);
  return html`<li class=${`auto-row${a.enabled ? '' : ' disabled'}`} data-session=${s.name}>
    <span class="pos">${a.position}.</span>
    <span class="check">
      <input
        type="checkbox"
        id=${`en-${s.name}`}
        checked=${asked ?? a.enabled}
        aria-busy=${busy ? 'true' : undefined}
        onChange=${(e) => {
          if (busy) {
            e.currentTarget.checked = asked ?? a.enabled;
            return;
          }
          const want = !a.enabled;
          setAsked(want);
          void run(async () => {
            try {
              await api('POST', `/api/sessions/${seg(s.name)}/${want ? 'enable' : 'disable'}`);
            } catch (err) {
              setAsked(null);
              throw err;
            }
          });
        }}
      />
      <label for=${`en-${s.name}`}><span class="sr-only">${s.name} </span>enabled</label>
    </span>
    <span class="name"><a href=${`#/auto/${seg(s.name)}`}>${s.name}</a></span>
    <span class="what">${what(s)}</span>
    <span class="who">${who.length ? who.join(', ') : html`<em>takes no workstation yet</em>`}</span>
    <span class="state"><${StateBadge} state=${s.state} /> ${s.joined}/${s.needed}</span>
    <span class="buttons">
      <button
        type="button"
        ref=${up}
        onClick=${move('up', first)}
        aria-disabled=${first ? 'true' : undefined}
        aria-label=${`move ${s.name} up`}
      >
        ↑ Up
      </button>
      <button
        type="button"
        ref=${down}
        onClick=${move('down', last)}
        aria-disabled=${last ? 'true' : undefined}
        aria-label=${`move ${s.name} down`}
      >
        ↓ Down
      </button>
      <a class="button" href=${`#/session/${seg(s.name)}`} aria-label=${`status of ${s.name}`}>Status</a>
      <a class="button" href=${`#/auto/${seg(s.name)}`} aria-label=${`edit ${s.name}`}>Edit</a>
      <button
        type="button"
        class="danger"
        disabled=${busy}
        aria-label=${`delete ${s.name}`}
        onClick=${() => {
          if (
            confirm(
              `Delete automatic session ${s.name}${s.state === 'sending' ? ' (it stops sending)' : ''}?`,
            )
          )
            void run(() => api('DELETE', `/api/sessions/${seg(s.name)}`));
        }}
      >
        Delete
      </button>
    </span>
    <${ErrorText} error=${error} />
  </li>`;
}

function AutoList({ sessions }) {
  const list = sessions.filter((s) => s.auto).sort((a, b) => a.auto.position - b.auto.position);
  return html`<section aria-labelledby="auto-title">
    <div class="section-head">
      <h2 id="auto-title">Automatic sessions</h2>
      <a class="button primary" href="#/auto/new">Add automatic session</a>
    </div>
    <p class="hint">
      A workstation running <code>img auto</code> joins the first enabled session in this list that takes it.
    </p>
    ${
      list.length === 0
        ? html`<p class="muted">No automatic sessions.</p>`
        : html`<ol class="auto-list">
            ${list.map((s, i) => html`<${AutoRow} key=${s.name} s=${s} first=${i === 0} last=${i === list.length - 1} />`)}
          </ol>`
    }
  </section>`;
}

// --- a new server session

function NewSession({ onCreated }) {
  const images = useLoad(() => api('GET', '/api/images'));
  const [f, setF] = useState({ name: '', image: '', fileset: '1', clientCount: '1', waitMinutes: '5' });
  const set = (k) => (e) => {
    const v = e.currentTarget.value;
    setF((x) => ({ ...x, [k]: v }));
  };
  const { busy, error, run } = useAction();
  const fields = ['name', 'image', 'fileset', 'clientCount', 'waitMinutes'];
  const field = fieldOf(error, fields, {
    E_SESSION_EXISTS: 'name',
    E_IMAGE_UNKNOWN: 'image',
    E_IMAGE_OUTSIDE: 'image',
    E_IMAGE_UNREADABLE: 'image',
  });
  const err = (k) => (field === k ? error : null);
  const usable = (images.data ?? []).filter((i) => i.problem === null);
  const image = f.image || usable[0]?.name || '';
  const submit = (e) => {
    e.preventDefault();
    void run(async () => {
      await api('POST', '/api/sessions', {
        name: f.name.trim(),
        image,
        fileset: Number(f.fileset),
        clientCount: Number(f.clientCount),
        waitMinutes: Number(f.waitMinutes),
      });
      setF((x) => ({ ...x, name: '' }));
      onCreated(f.name.trim());
    });
  };
  return html`<form class="grid" onSubmit=${submit} aria-label="new server session">
    <${Field} label="Name" name="name" required value=${f.name} onInput=${set('name')} error=${err('name')} hint="letters, digits, . _ -" />
    <${Field} as="select" label="Image" name="image" value=${image} onChange=${set('image')} error=${err('image') ?? images.error}>
      ${usable.length === 0 ? html`<option value="">no image on the server</option>` : null}
      ${usable.map((i) => html`<option value=${i.name}>${i.name} (${bytes(i.sizeBytes)})</option>`)}
    </${Field}>
    <${Field} label="File set" type="number" name="fileset" value=${f.fileset} onInput=${set('fileset')} error=${err('fileset')} />
    <${Field} label="Start once this many joined" type="number" name="clientCount" value=${f.clientCount} onInput=${set('clientCount')} error=${err('clientCount')} />
    <${Field} label="Or minutes after the last join" type="number" step="any" name="waitMinutes" value=${f.waitMinutes} onInput=${set('waitMinutes')} error=${err('waitMinutes')} />
    <div class="buttons wide">
      <button type="submit" class="primary" disabled=${busy || !images.data}>Create session</button>
    </div>
    ${field ? null : html`<div class="wide"><${ErrorText} error=${error} /></div>`}
  </form>`;
}

// --- pages

export function SessionsPage({ live }) {
  const [creating, setCreating] = useState(false);
  const [created, setCreated] = useState(null);
  if (!live.status) return html`<${PageTitle}>Sessions<//><${Loading} what="the status" />`;
  const sessions = live.status.sessions;
  const plain = sessions.filter((s) => !s.auto);
  const running = sessions.filter((s) => s.auto && (s.state === 'sending' || s.joined > 0));
  return html`<${PageTitle}>Sessions<//>
    <section aria-labelledby="run-title">
      <div class="section-head">
        <h2 id="run-title">Running and waiting</h2>
        <button
          type="button"
          class="primary"
          aria-expanded=${creating}
          onClick=${() => setCreating(!creating)}
        >
          New server session
        </button>
      </div>
      ${created ? html`<p class="notice" role="status">Session ${created} created; it waits for its workstations (<code>img session ${created}</code>).</p>` : null}
      ${
        creating
          ? html`<${NewSession}
              onCreated=${(name) => {
                setCreated(name);
                setCreating(false);
              }}
            />`
          : null
      }
      ${plain.length + running.length === 0 ? html`<p class="muted">No sessions.</p>` : null}
      ${[...plain, ...running].map((s) => html`<${SessionCard} key=${s.name} s=${s} at=${live.at} />`)}
    </section>
    <${AutoList} sessions=${sessions} />`;
}

export function SessionPage({ name, live }) {
  const history = useLoad(() => api('GET', '/api/history?limit=1000'), [name]);
  if (!live.status) return html`<${PageTitle}>Session ${name}<//><${Loading} what="the status" />`;
  const s = live.status.sessions.find((x) => x.name === name);
  const past = (history.data ?? []).filter((h) => h.session === name);
  return html`<${PageTitle}>Session ${name}<//>
    <p><a href="#/sessions">← All sessions</a></p>
    ${s ? html`<${SessionCard} s=${s} at=${live.at} full=${true} />` : html`<p class="notice">There is no session ${name} now${past.length ? '; its past runs are below' : ''}.</p>`}
    <section aria-labelledby="runs-title">
      <h2 id="runs-title">Past runs</h2>
      ${past.length === 0 ? html`<p class="muted">None yet.</p>` : html`<${RunsTable} runs=${past} />`}
    </section>`;
}

export function RunsTable({ runs, workstation }) {
  return html`<table class="history">
    <thead>
      <tr>
        <th scope="col">Session</th>
        <th scope="col">Run</th>
        <th scope="col">Image</th>
        <th scope="col">Result</th>
        <th scope="col">Started</th>
        <th scope="col">Ended</th>
        <th scope="col">Workstations</th>
      </tr>
    </thead>
    <tbody>
      ${runs.map(
        (h) =>
          html`<tr key=${`${h.session}#${h.run}#${h.finishedAt}`}>
            <th scope="row"><a href=${`#/session/${seg(h.session)}`}>${h.session}</a></th>
            <td>${h.run}</td>
            <td>${h.image || '—'}${h.image ? ` (set ${h.fileset})` : ''}</td>
            <td>
              <${StateBadge}
                state=${h.state}
              />${h.message ? html` <span class="muted">${h.message}</span>` : null}
            </td>
            <td>${when(h.startedAt)}</td>
            <td>${when(h.finishedAt)}</td>
            <td>
              <ul class="plain">
                ${h.clients
                  .filter((c) => !workstation || c.workstation === workstation)
                  .map(
                    (c) =>
                      html`<li key=${c.workstation}>
                        ${c.name}: <${StateBadge} state=${c.state} />${c.reason ? html` <span class="error-text">${c.reason}</span>` : null}
                      </li>`,
                  )}
              </ul>
            </td>
          </tr>`,
      )}
    </tbody>
  </table>`;
}
