/**
 * Server: the counters (live), the history of sessions with each workstation's result, the
 * settings (how the server was started, and the defaults the administrator changes), the
 * console accounts.
 */
import { useState } from 'preact/hooks';

import { api, currentSignin, fieldOf, seg } from './api.js';
import { RunsTable } from './sessions.js';
import {
  ErrorText,
  Field,
  Loading,
  PageTitle,
  duration,
  html,
  useAction,
  useLoad,
  useTick,
  when,
} from './ui.js';

const COUNTERS = [
  ['requestsReceived', 'Requests from workstations'],
  ['imagesSent', 'Images sent (written and verified)'],
  ['imagesReceived', 'Images received (uploads)'],
  ['clientReferrals', 'Workstations referred to another server'],
  ['errors', 'Errors'],
];

const LEVELS = [
  ['none', 'none (least CPU)'],
  ['speed', 'speed'],
  ['balanced', 'balanced'],
  ['size', 'size (least network)'],
];
const SETTING_FIELDS = ['autoClients', 'autoWaitMinutes', 'names', 'level', 'historyDays'];

/** A number as typed, or the text itself when it is none, for the server to refuse with its reason. */
const typed = (v) => (v.trim() !== '' && Number.isFinite(Number(v)) ? Number(v) : v);

/** What `imgcast server` was started with: fixed until it starts again. */
function Fixed({ c }) {
  const m = c.multicast;
  const pxe = c.boot.pxe;
  return html`<dl class="facts settings-fixed" aria-label="fixed at start">
    <dt>HTTP API</dt>
    <dd data-fixed="listen">${c.listen.host}:${c.listen.port}</dd>
    <dt>Data folder</dt>
    <dd data-fixed="data"><code>${c.dataDir}</code></dd>
    <dt>Image folder</dt>
    <dd data-fixed="images"><code>${c.imagesDir}</code></dd>
    <dt>Database</dt>
    <dd data-fixed="database"><code>${c.database}</code></dd>
    <dt>Multicast</dt>
    <dd data-fixed="multicast">
      groups ${m.firstGroup} – ${m.lastGroup}, ports ${m.firstPort} – ${m.lastPort} (${m.slots} sessions
      sending at once), sent from ${m.interface ?? 'the address of the route to each group'}
    </dd>
    <dt>Discovery</dt>
    <dd data-fixed="discovery">${c.discovery ? `${c.discovery.group}:${c.discovery.port}` : 'off'}</dd>
    <dt>Network boot</dt>
    <dd data-fixed="pxe">
      ${
        pxe
          ? `PXE answered, ${pxe.mode === 'proxy' ? 'proxy DHCP' : `DHCP ${pxe.range ? `${pxe.range.start} – ${pxe.range.end}` : ''}`}, on ${pxe.interface ?? '?'}${pxe.address ? ` (${pxe.address})` : ''}`
          : 'no PXE answers (imgcast server --pxe): the HTTP boot routes only'
      }
    </dd>
    <dt>Imaging environment</dt>
    <dd data-fixed="bootenv">
      <code>${c.boot.bootenvDir}</code>,
      ${c.boot.bootenvVersion ? ` built for imgcast ${c.boot.bootenvVersion}` : ' not built (imgcast bootenv build)'}${c.boot.kernelArgs ? `; kernel arguments ${c.boot.kernelArgs}` : ''}
    </dd>
    <dt>Version</dt>
    <dd data-fixed="version">imgcast ${c.version}</dd>
  </dl>`;
}

/** The defaults the administrator changes; each field shows the server's reason when it refuses it. */
function Defaults({ view, onSaved }) {
  const cur = view.settings;
  const def = view.defaults;
  const [f, setF] = useState(() => ({
    autoClients: String(cur.autoClients),
    autoWaitMinutes: String(cur.autoWaitMinutes),
    names: cur.names,
    level: cur.level,
    historyDays: String(cur.historyDays),
  }));
  const set = (k) => (e) => {
    const v = e.currentTarget.value;
    setF((x) => ({ ...x, [k]: v }));
  };
  const { busy, error, run } = useAction();
  const [saved, setSaved] = useState(false);
  const field = fieldOf(error, SETTING_FIELDS);
  const err = (k) => (field === k ? error : null);
  const submit = (e) => {
    e.preventDefault();
    setSaved(false);
    const body = {};
    for (const k of SETTING_FIELDS) {
      const v = k === 'names' || k === 'level' ? f[k].trim() : typed(f[k]);
      if (v !== cur[k]) body[k] = v;
    }
    void run(async () => {
      if (Object.keys(body).length > 0) onSaved(await api('PATCH', '/api/settings', body));
      setSaved(true);
    });
  };
  const was = (k) => `default ${def[k] === '' ? 'none' : def[k]}`;
  return html`<form class="grid" onSubmit=${submit} aria-label="server settings">
    <${Field}
      label="Automatic sessions start once this many joined"
      type="number"
      name="autoClients"
      value=${f.autoClients}
      onInput=${set('autoClients')}
      error=${err('autoClients')}
      hint=${`for a new automatic session given no count; ${was('autoClients')}`}
    />
    <${Field}
      label="Or minutes after the last new client"
      type="number"
      step="any"
      name="autoWaitMinutes"
      value=${f.autoWaitMinutes}
      onInput=${set('autoWaitMinutes')}
      error=${err('autoWaitMinutes')}
      hint=${`for a new automatic session given no wait; ${was('autoWaitMinutes')}`}
    />
    <${Field}
      label="Naming template of new sessions"
      name="names"
      autocomplete="off"
      value=${f.names}
      onInput=${set('names')}
      error=${err('names')}
      hint=${`names the workstations nobody named: lab1-{nn} (join order), pc-{mac}; empty: none; ${was('names')}`}
    />
    <${Field}
      as="select"
      label="Compression of uploads and live masters"
      name="level"
      value=${f.level}
      onChange=${set('level')}
      error=${err('level')}
      hint=${`when img make --server or a master gives none; ${was('level')}`}
    >
      ${LEVELS.map(([v, label]) => html`<option value=${v}>${label}</option>`)}
    </${Field}>
    <${Field}
      label="Days the history keeps a run"
      type="number"
      name="historyDays"
      value=${f.historyDays}
      onInput=${set('historyDays')}
      error=${err('historyDays')}
      hint=${`older runs are removed; 0 keeps them forever (the default)`}
    />
    <div class="buttons wide">
      <button type="submit" class="primary" disabled=${busy}>Save settings</button>
      ${saved ? html`<span role="status" class="ok-text">Saved.</span>` : null}
    </div>
    ${field ? null : html`<div class="wide"><${ErrorText} error=${error} /></div>`}
  </form>`;
}

function Settings({ onSaved }) {
  const view = useLoad(() => api('GET', '/api/settings'));
  const [latest, setLatest] = useState(null);
  const saved = (v) => {
    setLatest(v);
    // Fewer days kept may have taken runs out of the history shown above.
    onSaved();
  };
  const v = latest ?? view.data;
  return html`<section aria-labelledby="settings-title">
    <h2 id="settings-title">Settings</h2>
    <${ErrorText} error=${view.error} />
    ${
      !v
        ? view.error
          ? null
          : html`<${Loading} what="the settings" />`
        : html`<h3>Fixed until the server is started again</h3>
          <p class="hint">These come from the options of <code>imgcast server</code>.</p>
          <${Fixed} c=${v.server} />
          <h3>Defaults</h3>
          <p class="hint">
            They apply to what is made from now on (<code>imgcast settings set NAME VALUE</code> changes
            them too); what exists keeps its own values.
          </p>
          <${Defaults} view=${v} onSaved=${saved} />`
    }
  </section>`;
}

function Accounts() {
  const list = useLoad(() => api('GET', '/api/admins'));
  const [f, setF] = useState({ name: '', password: '' });
  /** Reads the latest state: a handler of an older render must not undo a newer change. */
  const patch = (k, v) => setF((x) => ({ ...x, [k]: v }));
  const add = useAction();
  const del = useAction();
  const field = fieldOf(add.error, ['name', 'password']);
  const submit = (e) => {
    e.preventDefault();
    void add.run(async () => {
      await api('POST', '/api/admins', { name: f.name.trim(), password: f.password });
      setF({ name: '', password: '' });
      await list.reload();
    });
  };
  return html`<section aria-labelledby="acc-title">
    <h2 id="acc-title">Console accounts</h2>
    <${ErrorText} error=${list.error ?? del.error} />
    <ul class="members">
      ${(list.data ?? []).map(
        (a) =>
          html`<li key=${a.name}>
            ${a.name} <span class="muted">since ${when(a.createdAt)}</span>
            ${
              a.name === currentSignin()?.name
                ? html` <span class="muted">(you)</span>`
                : html`<button
                    type="button"
                    class="danger small"
                    disabled=${del.busy}
                    aria-label=${`remove account ${a.name}`}
                    onClick=${() => {
                      if (confirm(`Remove the console account ${a.name}?`))
                        void del.run(async () => {
                          await api('DELETE', `/api/admins/${seg(a.name)}`);
                          await list.reload();
                        });
                    }}
                  >
                    Remove
                  </button>`
            }
          </li>`,
      )}
    </ul>
    <form class="grid" onSubmit=${submit} aria-label="add or change an account">
      <${Field}
        label="Account"
        name="name"
        autocomplete="off"
        value=${f.name}
        onInput=${(e) => patch('name', e.currentTarget.value)}
        error=${field === 'name' ? add.error : null}
      />
      <${Field}
        label="Password (8 characters or more)"
        name="password"
        type="password"
        autocomplete="new-password"
        value=${f.password}
        onInput=${(e) => patch('password', e.currentTarget.value)}
        error=${field === 'password' ? add.error : null}
      />
      <div class="buttons wide">
        <button type="submit" disabled=${add.busy}>Add account or set its password</button>
      </div>
      ${field ? null : html`<div class="wide"><${ErrorText} error=${add.error} /></div>`}
    </form>
  </section>`;
}

const SERVER_STATES = {
  up: 'up',
  stopped: 'stopped',
  down: 'down (no heartbeat for 30 s)',
};

/** The other servers sharing this one's database (a site), when there are any. */
function Site({ servers }) {
  if (servers.filter((x) => !x.self).length === 0) return null;
  return html`<section aria-labelledby="site-title">
    <h2 id="site-title">Site</h2>
    <p class="muted">
      These servers share one database. Each runs and shows its own sessions, and refers
      workstations that ask it for another's session to that server.
    </p>
    <table class="site-servers">
      <thead>
        <tr>
          <th>Server</th>
          <th>Address</th>
          <th>State</th>
          <th>Version</th>
        </tr>
      </thead>
      <tbody>
        ${servers.map(
          (x) =>
            html`<tr key=${x.name} data-server=${x.name}>
              <td>${x.name}${x.self ? ' (this one)' : ''}</td>
              <td><a href=${x.url}>${x.url}</a></td>
              <td data-state=${x.state}>
                ${SERVER_STATES[x.state] ?? x.state}${x.state === 'up' ? '' : `, last seen ${when(x.seenAt)}`}
              </td>
              <td>${x.version}</td>
            </tr>`,
        )}
      </tbody>
    </table>
  </section>`;
}

export function ServerPage({ live }) {
  useTick(1000);
  const history = useLoad(() => api('GET', '/api/history?limit=200'));
  const st = live.status;
  return html`<${PageTitle}>Server<//>
    ${
      !st
        ? html`<${Loading} what="the status" />`
        : html`<p>
              <strong>${st.server.name}</strong>, imgcast ${st.server.version}, up${' '}
              ${duration(Date.now() - st.server.startedAt)} (since ${when(st.server.startedAt)}).
            </p>
            ${(st.server.warnings ?? []).map(
              (w) => html`<p key=${w} class="error-text" role="alert">Warning: ${w}</p>`,
            )}
            <section aria-labelledby="counters-title">
              <h2 id="counters-title">Counters</h2>
              <dl class="counters">
                ${COUNTERS.map(
                  ([k, label]) =>
                    html`<div key=${k} data-counter=${k}>
                      <dt>${label}</dt>
                      <dd>${st.counters[k]}</dd>
                    </div>`,
                )}
              </dl>
            </section>
            <${Site} servers=${st.servers ?? []} />`
    }
    <section aria-labelledby="hist-title">
      <div class="section-head">
        <h2 id="hist-title">History</h2>
        <button type="button" onClick=${history.reload}>Refresh</button>
      </div>
      <${ErrorText} error=${history.error} />
      ${
        !history.data
          ? html`<${Loading} what="the history" />`
          : history.data.length === 0
            ? html`<p class="muted">No session has run yet.</p>`
            : html`<${RunsTable} runs=${history.data} />`
      }
    </section>
    <${Settings} onSaved=${history.reload} />
    <${Accounts} />`;
}
