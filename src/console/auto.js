/**
 * An automatic session: its settings (what it sends, when it starts, delete when done), who
 * takes part (workstations listed from the inventory, and rules checked by the server as they
 * are typed, with the workstations they match), and who would join it now.
 */
import { useEffect, useRef, useState } from 'preact/hooks';

import { api, fieldOf, seg } from './api.js';
import { SessionCard } from './sessions.js';
import { ErrorText, Field, Loading, PageTitle, StateBadge, html, useAction, useLoad } from './ui.js';

const IMAGE_CODES = { E_IMAGE_UNKNOWN: 'image', E_IMAGE_OUTSIDE: 'image', E_IMAGE_UNREADABLE: 'image' };

/** The settings form; `s` is the session (edit) or null (new). */
function Settings({ s, images, workstations, onSaved }) {
  const a = s?.auto;
  const [f, setF] = useState(() => ({
    name: s?.name ?? '',
    source: a?.master ? 'master' : 'image',
    image: s?.image ?? '',
    fileset: String(s?.fileset ?? 1),
    master: a?.master?.mac ?? '',
    // A new session's trigger left empty is the server's default (its settings), shown as the placeholder.
    clientCount: s ? String(s.clientCount) : '',
    waitMinutes: s ? String(s.waitMs / 60_000) : '',
    deleteWhenDone: a?.deleteWhenDone ?? false,
    enabled: a?.enabled ?? true,
  }));
  /** Reads the latest state: a handler of an older render must not undo a newer change. */
  const patch = (k, v) => setF((x) => ({ ...x, [k]: v }));
  const set = (k) => (e) =>
    patch(k, e.currentTarget.type === 'checkbox' ? e.currentTarget.checked : e.currentTarget.value);
  const { busy, error, run } = useAction();
  const [saved, setSaved] = useState(false);
  const settings = useLoad(() => (s ? Promise.resolve(null) : api('GET', '/api/settings')), [!s]);
  const defaults = settings.data?.settings;
  const fields = ['name', 'image', 'fileset', 'master', 'clientCount', 'waitMinutes', 'deleteWhenDone'];
  const field = fieldOf(error, fields, {
    ...IMAGE_CODES,
    E_SESSION_EXISTS: 'name',
    E_WORKSTATION_UNKNOWN: 'master',
    E_MASTER_CONFLICT: 'master',
    E_SESSION_STATE: s ? 'clientCount' : 'name',
  });
  const err = (k) => (field === k ? error : null);
  const usable = (images ?? []).filter((i) => i.problem === null);
  // The select shows the first image until one is picked; that is the one sent.
  const image = f.image || usable[0]?.name || '';

  const submit = (e) => {
    e.preventDefault();
    setSaved(false);
    const send = f.source === 'image' ? { image, fileset: Number(f.fileset) } : { master: f.master };
    const trigger = { clientCount: Number(f.clientCount), waitMinutes: Number(f.waitMinutes) };
    void run(async () => {
      if (!s) {
        if (f.clientCount.trim() === '') delete trigger.clientCount;
        if (f.waitMinutes.trim() === '') delete trigger.waitMinutes;
        const created = await api('POST', '/api/auto-sessions', {
          name: f.name.trim(),
          ...send,
          ...trigger,
          deleteWhenDone: f.deleteWhenDone,
          enabled: f.enabled,
        });
        onSaved(created);
        return;
      }
      // Only what changed: a running session refuses a new trigger, not a new delete-when-done.
      const body = {};
      if (f.source === 'image' && (image !== s.image || Number(f.fileset) !== s.fileset || a.master))
        Object.assign(body, send);
      if (f.source === 'master' && f.master !== a.master?.mac) Object.assign(body, send);
      if (trigger.clientCount !== s.clientCount) body.clientCount = trigger.clientCount;
      if (trigger.waitMinutes * 60_000 !== s.waitMs) body.waitMinutes = trigger.waitMinutes;
      if (f.deleteWhenDone !== a.deleteWhenDone) body.deleteWhenDone = f.deleteWhenDone;
      if (Object.keys(body).length === 0) {
        setSaved(true);
        return;
      }
      onSaved(await api('PATCH', `/api/sessions/${seg(s.name)}`, body));
      setSaved(true);
    });
  };

  return html`<form
    class="grid"
    onSubmit=${submit}
    aria-label=${s ? `settings of ${s.name}` : 'new automatic session'}
  >
    ${s ? null : html`<${Field} label="Name" name="name" required value=${f.name} onInput=${set('name')} error=${err('name')} hint="letters, digits, . _ -" />`}
    <fieldset class="wide">
      <legend>Master</legend>
      <span class="radio">
        <input
          type="radio"
          id="src-image"
          name="source"
          value="image"
          checked=${f.source === 'image'}
          onChange=${set('source')}
        />
        <label for="src-image">an image on the server</label>
      </span>
      <span class="radio">
        <input
          type="radio"
          id="src-master"
          name="source"
          value="master"
          checked=${f.source === 'master'}
          onChange=${set('source')}
        />
        <label for="src-master">a master workstation's disk</label>
      </span>
    </fieldset>
    ${
      f.source === 'image'
        ? html`<${Field} as="select" label="Image" name="image" value=${image} onChange=${set('image')} error=${err('image')}>
            ${usable.length === 0 ? html`<option value="">no image on the server</option>` : null}
            ${usable.map((i) => html`<option value=${i.name}>${i.name}</option>`)}
          </${Field}>
          <${Field} label="File set" type="number" name="fileset" value=${f.fileset} onInput=${set('fileset')} error=${err('fileset')} />`
        : html`<${Field} as="select" label="Master workstation" name="master" value=${f.master} onChange=${set('master')} error=${err('master')}>
          <option value="">choose a workstation</option>
          ${(workstations ?? []).map((w) => html`<option value=${w.mac}>${w.name} (${w.mac})</option>`)}
        </${Field}>`
    }
    <${Field}
      label="Start once this many joined"
      type="number"
      name="clientCount"
      value=${f.clientCount}
      placeholder=${s || !defaults ? undefined : String(defaults.autoClients)}
      onInput=${set('clientCount')}
      error=${err('clientCount')}
      hint=${s ? undefined : `empty: the server's default${defaults ? `, ${defaults.autoClients}` : ''}`}
    />
    <${Field}
      label="Or minutes after the last new client"
      type="number"
      step="any"
      name="waitMinutes"
      value=${f.waitMinutes}
      placeholder=${s || !defaults ? undefined : String(defaults.autoWaitMinutes)}
      onInput=${set('waitMinutes')}
      error=${err('waitMinutes')}
      hint=${s ? undefined : `empty: the server's default${defaults ? `, ${defaults.autoWaitMinutes}` : ''}`}
    />
    <${Field}
      label="Delete the session once a run has finished"
      type="checkbox"
      name="deleteWhenDone"
      checked=${f.deleteWhenDone}
      onChange=${set('deleteWhenDone')}
      error=${err('deleteWhenDone')}
    />
    ${s ? null : html`<${Field} label="Enabled" type="checkbox" name="enabled" checked=${f.enabled} onChange=${set('enabled')} />`}
    <div class="buttons wide">
      <button type="submit" class="primary" disabled=${busy || (f.source === 'image' && !images)}>
        ${s ? 'Save settings' : 'Create automatic session'}
      </button>
      ${saved ? html`<span role="status" class="ok-text">Saved.</span>` : null}
    </div>
    ${field ? null : html`<div class="wide"><${ErrorText} error=${error} /></div>`}
  </form>`;
}

/** Checks a rule with the server (debounced); { text, result } of the latest answer. */
function useRuleCheck(text) {
  const [answer, setAnswer] = useState(null);
  const seq = useRef(0);
  useEffect(() => {
    const mine = ++seq.current;
    if (!text.trim()) {
      setAnswer(null);
      return undefined;
    }
    const t = setTimeout(async () => {
      try {
        const result = await api('POST', '/api/rules/check', { rule: text });
        if (mine === seq.current) setAnswer({ text, result });
      } catch (error) {
        if (mine === seq.current)
          setAnswer({ text, result: { ok: false, message: error.message, error: error.code } });
      }
    }, 200);
    return () => clearTimeout(t);
  }, [text]);
  return answer;
}

function Matches({ matches, session }) {
  if (matches.length === 0) return html`<span class="muted">matches no workstation in the inventory</span>`;
  return html`<span>matches ${matches.length}: </span>
    <ul class="inline-list matches">
      ${matches.map(
        (m, i) =>
          html`<li key=${m.id}>${i > 0 ? ', ' : ''}<a href=${`#/workstations/${seg(m.mac)}`}>${m.name}</a>${m.joins && m.joins !== session ? html` <span class="muted">(joins ${m.joins})</span>` : null}</li>`,
      )}
    </ul>`;
}

function NewRule({ s, onAdded }) {
  const [text, setText] = useState('');
  const check = useRuleCheck(text);
  const { busy, error, run, setError } = useAction();
  const id = 'new-rule';
  const current = check && check.text === text ? check.result : null;
  const problem = error ?? (current && !current.ok ? current : null);
  const submit = (e) => {
    e.preventDefault();
    void run(async () => {
      await api('POST', `/api/sessions/${seg(s.name)}/rules`, { rule: text });
      setText('');
      onAdded();
    });
  };
  return html`<form class="rule-form" onSubmit=${submit} aria-label="add a rule">
    <label for=${id}>New rule</label>
    <div class="row">
      <input
        id=${id}
        name="rule"
        class="mono"
        autocomplete="off"
        spellcheck="false"
        placeholder='name = "lab1-*" and disk >= 200GB'
        value=${text}
        aria-invalid=${problem ? 'true' : undefined}
        aria-describedby=${`${id}-check`}
        onInput=${(e) => {
          setText(e.currentTarget.value);
          setError(null);
        }}
      />
      <button type="submit" class="primary" disabled=${busy || !text.trim() || (current && !current.ok)}>
        Add rule
      </button>
    </div>
    <div id=${`${id}-check`} class="rule-check" aria-live="polite">
      ${
        problem
          ? html`<pre class="error">${problem.message}${problem.error ? ` [${problem.error}]` : ''}</pre>`
          : current?.ok
            ? html`<p class="ok-text">
                Reads as <code>${current.rule}</code>;${' '}
                <${Matches} matches=${current.matches} session=${s.name} />
              </p>`
            : html`<p class="hint">
                Attributes: name, mac, ip, disk, memory, cores, cpu, vendor, model, serial; and, or, not, ( ).
              </p>`
      }
    </div>
  </form>`;
}

function Rules({ s, checks, onChange }) {
  const { busy, error, run } = useAction();
  const rules = s.auto.rules;
  return html`<section aria-labelledby="rules-title">
    <h2 id="rules-title">Rules</h2>
    <p class="hint">A workstation that matches any rule takes part.</p>
    ${
      rules.length === 0
        ? html`<p class="muted">No rules.</p>`
        : html`<ol class="rules">
            ${rules.map(
              (r, i) =>
                html`<li key=${`${i}:${r.text}`} data-rule=${i + 1}>
                  <code>${r.text}</code>
                  ${r.valid ? html` <span class="muted">reads as <code>${r.description}</code></span>` : html` <span class="error-text">${r.description}</span>`}
                  <button
                    type="button"
                    class="danger small"
                    disabled=${busy}
                    aria-label=${`remove rule ${i + 1}: ${r.text}`}
                    onClick=${() =>
                      void run(async () => {
                        await api('DELETE', `/api/sessions/${seg(s.name)}/rules/${i + 1}`);
                        onChange();
                      })}
                  >
                    Remove
                  </button>
                  <div>
                    ${checks[r.text]?.ok ? html`<${Matches} matches=${checks[r.text].matches} session=${s.name} />` : null}
                  </div>
                </li>`,
            )}
          </ol>`
    }
    <${ErrorText} error=${error} />
    <${NewRule} s=${s} onAdded=${onChange} />
  </section>`;
}

function Members({ s, workstations, onChange }) {
  const [pick, setPick] = useState('');
  const { busy, error, run } = useAction();
  const listed = new Set(s.auto.members.map((m) => m.id));
  const choices = (workstations ?? []).filter((w) => !listed.has(w.id));
  const include = (e) => {
    e.preventDefault();
    if (!pick) return;
    void run(async () => {
      await api('POST', `/api/sessions/${seg(s.name)}/include`, { workstations: [pick] });
      setPick('');
      onChange();
    });
  };
  return html`<section aria-labelledby="members-title">
    <h2 id="members-title">Workstations listed</h2>
    ${
      s.auto.members.length === 0
        ? html`<p class="muted">None listed.</p>`
        : html`<ul class="members">
            ${s.auto.members.map(
              (m) =>
                html`<li key=${m.id}>
                  <a href=${`#/workstations/${seg(m.mac)}`}>${m.name}</a> <span class="muted">${m.mac}</span>
                  <button
                    type="button"
                    class="danger small"
                    disabled=${busy}
                    aria-label=${`take ${m.name} out of ${s.name}`}
                    onClick=${() =>
                      void run(async () => {
                        await api('POST', `/api/sessions/${seg(s.name)}/exclude`, { workstations: [m.mac] });
                        onChange();
                      })}
                  >
                    Remove
                  </button>
                </li>`,
            )}
          </ul>`
    }
    <form class="inline" onSubmit=${include}>
      <${Field} as="select" label="Include a workstation" name="include" value=${pick} onChange=${(e) => setPick(e.currentTarget.value)} error=${error}>
        <option value="" selected=${pick === ''}>choose from the inventory</option>
        ${choices.map((w) => html`<option key=${w.mac} value=${w.mac} selected=${pick === w.mac}>${w.name} (${w.mac})</option>`)}
      </${Field}>
      <div class="buttons"><button type="submit" disabled=${busy || !pick}>Include</button></div>
    </form>
  </section>`;
}

/** Who takes part and why, and which session each actually joins now (the first in the list wins). */
function Participants({ s, checks }) {
  const byId = new Map();
  for (const m of s.auto.members) byId.set(m.id, { ...m, why: ['listed'], joins: checks.members?.[m.id] });
  s.auto.rules.forEach((r, i) => {
    for (const m of checks[r.text]?.ok ? checks[r.text].matches : []) {
      const e = byId.get(m.id) ?? { ...m, why: [] };
      e.why.push(`rule ${i + 1}`);
      e.joins = m.joins;
      byId.set(m.id, e);
    }
  });
  const rows = [...byId.values()].sort((a, b) => a.name.localeCompare(b.name));
  return html`<section aria-labelledby="who-title">
    <h2 id="who-title">Who takes part</h2>
    ${
      rows.length === 0
        ? html`<p class="muted">No workstation of the inventory takes part.</p>`
        : html`<table class="participants">
            <thead>
              <tr>
                <th scope="col">Workstation</th>
                <th scope="col">Because</th>
                <th scope="col">Joins now</th>
              </tr>
            </thead>
            <tbody>
              ${rows.map(
                (r) =>
                  html`<tr key=${r.id} data-workstation=${r.name}>
                    <th scope="row">
                      <a href=${`#/workstations/${seg(r.mac)}`}>${r.name}</a>${' '}
                      <span class="muted">${r.mac}</span>
                    </th>
                    <td>${r.why.join(', ')}</td>
                    <td>
                      ${
                        r.joins === undefined
                          ? html`<span class="muted">…</span>`
                          : r.joins === s.name
                            ? 'this session'
                            : r.joins
                              ? html`<a href=${`#/auto/${seg(r.joins)}`}>${r.joins}</a> (earlier in the list)`
                              : html`<span class="muted"
                                  >none${s.auto.enabled ? '' : ' (this session is disabled)'}</span
                                >`
                      }
                    </td>
                  </tr>`,
              )}
            </tbody>
          </table>`
    }
  </section>`;
}

export function AutoSessionPage({ name, live }) {
  const images = useLoad(() => api('GET', '/api/images'));
  const workstations = useLoad(() => api('GET', '/api/workstations'));
  const s = name ? live.status?.sessions.find((x) => x.name === name && x.auto) : null;
  const rulesKey = JSON.stringify([s?.auto?.rules.map((r) => r.text), s?.auto?.members.map((m) => m.id)]);
  const [checks, setChecks] = useState({});
  const [bump, setBump] = useState(0);
  useEffect(() => {
    let stale = false;
    void (async () => {
      const out = { members: {} };
      for (const r of s?.auto?.rules ?? []) {
        out[r.text] = await api('POST', '/api/rules/check', { rule: r.text }).catch(() => null);
      }
      for (const m of s?.auto?.members ?? []) {
        const d = await api('GET', `/api/workstations/${seg(m.mac)}`).catch(() => null);
        if (d) out.members[m.id] = d.auto.session;
      }
      if (!stale) setChecks(out);
    })();
    return () => {
      stale = true;
    };
  }, [rulesKey, bump, s?.auto?.enabled, s?.auto?.position]);
  const refresh = () => setBump((n) => n + 1);

  if (!name) {
    return html`<${PageTitle}>New automatic session<//>
      <p><a href="#/sessions">← Sessions</a></p>
      <${Settings}
        s=${null}
        images=${images.data}
        workstations=${workstations.data}
        onSaved=${(created) => {
          location.hash = `#/auto/${seg(created.name)}`;
        }}
      />`;
  }
  if (!live.status) return html`<${PageTitle}>Automatic session ${name}<//><${Loading} what="the status" />`;
  if (!s)
    return html`<${PageTitle}>Automatic session ${name}<//>
      <p class="notice">
        There is no automatic session ${name} (deleted, or never made).${' '}
        <a href="#/sessions">Back to the sessions</a>
      </p>`;
  return html`<${PageTitle}>Automatic session ${name}<//>
    <p>
      <a href="#/sessions">← Sessions</a> · ${s.auto.position}. in the list ·${' '}
      <${StateBadge} state=${s.state} /> · ${s.auto.enabled ? 'enabled' : 'disabled'}
    </p>
    <${EnableToggle} s=${s} />
    <section aria-labelledby="settings-title">
      <h2 id="settings-title">Settings</h2>
      <${Settings}
        key=${`${s.name}#${s.run}#${s.state}`}
        s=${s}
        images=${images.data}
        workstations=${workstations.data}
        onSaved=${refresh}
      />
    </section>
    <div class="columns">
      <${Members} s=${s} workstations=${workstations.data} onChange=${refresh} />
      <${Rules} s=${s} checks=${checks} onChange=${refresh} />
    </div>
    <${Participants} s=${s} checks=${checks} />
    <section aria-labelledby="live-title">
      <h2 id="live-title">This run</h2>
      <${SessionCard} s=${s} at=${live.at} full=${true} />
    </section>`;
}

function EnableToggle({ s }) {
  const { busy, error, run } = useAction();
  return html`<div>
    <${Field}
      label="Enabled: takes workstations"
      type="checkbox"
      name="enabled"
      checked=${s.auto.enabled}
      disabled=${busy}
      onChange=${() => void run(() => api('POST', `/api/sessions/${seg(s.name)}/${s.auto.enabled ? 'disable' : 'enable'}`))}
      error=${error}
    />
  </div>`;
}
