/** Server: the counters (live), the history of sessions with each workstation's result, the console accounts. */
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
            </section>`
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
    <${Accounts} />`;
}
