/**
 * Workstations: the inventory (what each registered, or what the administrator gave), which
 * automatic session each would join now and why, adding one, importing a lab's CSV list; and
 * one workstation's page with its hardware, identity and imaging history.
 */
import { useEffect, useState } from 'preact/hooks';

import { api, fieldOf, seg } from './api.js';
import { RunsTable } from './sessions.js';
import { ErrorText, Field, Loading, PageTitle, bytes, html, useAction, useLoad, when } from './ui.js';

function hardware(w) {
  const inv = w.inventory;
  if (!inv) return html`<span class="muted">not registered yet</span>`;
  const disk = Math.max(0, ...inv.disks.filter((d) => !d.removable).map((d) => d.sizeBytes));
  return [
    `${inv.cpu.cores} cores`,
    `${bytes(inv.memoryBytes)} RAM`,
    disk ? `disk ${bytes(disk)}` : 'no disk',
    [inv.dmi.vendor, inv.dmi.product].filter(Boolean).join(' '),
  ]
    .filter(Boolean)
    .join(', ');
}

/** Which automatic session each workstation joins now: one detail call each, a few at a time. */
function useChoices(list) {
  const [choices, setChoices] = useState({});
  useEffect(() => {
    if (!list || list.length > 500) return undefined;
    let stop = false;
    const queue = [...list];
    const out = {};
    const worker = async () => {
      for (let w; (w = queue.shift()) && !stop;) {
        const d = await api('GET', `/api/workstations/${seg(w.mac)}`).catch(() => null);
        if (d) out[w.id] = d.auto;
        if (!stop) setChoices({ ...out });
      }
    };
    void Promise.all([worker(), worker(), worker(), worker()]);
    return () => {
      stop = true;
    };
  }, [list]);
  return choices;
}

function AddWorkstation({ onDone }) {
  const [f, setF] = useState({ name: '', mac: '', ip: '' });
  const set = (k) => (e) => {
    const v = e.currentTarget.value;
    setF((x) => ({ ...x, [k]: v }));
  };
  const { busy, error, run } = useAction();
  const field = fieldOf(error, ['name', 'mac', 'ip'], { E_WORKSTATION_EXISTS: 'mac' });
  const err = (k) => (field === k ? error : null);
  const submit = (e) => {
    e.preventDefault();
    void run(async () => {
      await api('POST', '/api/workstations', {
        name: f.name.trim(),
        mac: f.mac.trim(),
        ...(f.ip.trim() ? { ip: f.ip.trim() } : {}),
      });
      setF({ name: '', mac: '', ip: '' });
      onDone();
    });
  };
  return html`<form class="grid" onSubmit=${submit} aria-label="add a workstation">
    <${Field} label="Name" name="name" required value=${f.name} onInput=${set('name')} error=${err('name')} />
    <${Field}
      label="MAC address"
      name="mac"
      required
      value=${f.mac}
      onInput=${set('mac')}
      error=${err('mac')}
    />
    <${Field} label="IP address (optional)" name="ip" value=${f.ip} onInput=${set('ip')} error=${err('ip')} />
    <div class="buttons wide">
      <button type="submit" class="primary" disabled=${busy}>Add workstation</button>
    </div>
    ${field ? null : html`<div class="wide"><${ErrorText} error=${error} /></div>`}
  </form>`;
}

function ImportCsv({ onDone }) {
  const [csv, setCsv] = useState('');
  const [result, setResult] = useState(null);
  const { busy, error, run } = useAction();
  const readFile = async (e) => {
    const file = e.currentTarget.files?.[0];
    if (file) setCsv(await file.text());
  };
  const submit = (e) => {
    e.preventDefault();
    setResult(null);
    void run(async () => {
      setResult(await api('POST', '/api/workstations/import', { csv }));
      onDone();
    });
  };
  return html`<form onSubmit=${submit} aria-label="import workstations from CSV">
    <${Field}
      label="CSV file"
      type="file"
      accept=".csv,text/csv,text/plain"
      name="file"
      onChange=${readFile}
    />
    <${Field}
      as="textarea"
      label="Rows: name,mac[,ip] (a header row is allowed)"
      name="csv"
      rows="6"
      class="mono"
      value=${csv}
      onInput=${(e) => setCsv(e.currentTarget.value)}
      error=${error ? { message: error.message, code: error.code } : null}
      wide
    />
    <div class="buttons">
      <button type="submit" class="primary" disabled=${busy || !csv.trim()}>Import</button>
    </div>
    ${
      result
        ? html`<p role="status" class="ok-text">
            Imported ${result.workstations.length} row(s): ${result.added} added, ${result.updated} updated,${' '}
            ${result.unchanged} unchanged.
          </p>`
        : null
    }
  </form>`;
}

export function WorkstationsPage() {
  const list = useLoad(() => api('GET', '/api/workstations'));
  const choices = useChoices(list.data);
  const [panel, setPanel] = useState(null);
  const toggle = (p) => () => setPanel(panel === p ? null : p);
  return html`<${PageTitle}>Workstations<//>
    <div class="buttons">
      <button type="button" aria-expanded=${panel === 'add'} onClick=${toggle('add')}>
        Add a workstation
      </button>
      <button type="button" aria-expanded=${panel === 'import'} onClick=${toggle('import')}>
        Import CSV
      </button>
      <button type="button" onClick=${list.reload}>Refresh</button>
    </div>
    ${panel === 'add' ? html`<${AddWorkstation} onDone=${list.reload} />` : null}
    ${panel === 'import' ? html`<${ImportCsv} onDone=${list.reload} />` : null}
    <${ErrorText} error=${list.error} />
    ${
      !list.data
        ? html`<${Loading} what="the workstations" />`
        : list.data.length === 0
          ? html`<p class="muted">
              No workstations yet: they appear when they register (<code>img session</code>,${' '}
              <code>img auto</code>), or add them here.
            </p>`
          : html`<table class="workstations">
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">MAC</th>
                  <th scope="col">Addresses</th>
                  <th scope="col">Hardware</th>
                  <th scope="col">Last seen</th>
                  <th scope="col">Boot phase</th>
                  <th scope="col">img auto joins</th>
                </tr>
              </thead>
              <tbody>
                ${list.data.map((w) => {
                  const c = choices[w.id];
                  return html`<tr key=${w.id} data-workstation=${w.name}>
                    <th scope="row"><a href=${`#/workstations/${seg(w.mac)}`}>${w.name}</a></th>
                    <td class="mono">${w.mac}</td>
                    <td>
                      ${[w.ip, ...w.addresses.filter((a) => a !== w.ip)].filter(Boolean).join(', ') || '—'}
                    </td>
                    <td>${hardware(w)}</td>
                    <td>${when(w.lastSeenAt)}</td>
                    <td data-phase=${w.phase ?? ''}>
                      ${w.phase ? html`${w.phase} <span class="muted">· ${when(w.phaseAt)}</span>` : html`<span class="muted">—</span>`}
                    </td>
                    <td>
                      ${c === undefined ? html`<span class="muted">…</span>` : c.session ? html`<a href=${`#/auto/${seg(c.session)}`}>${c.session}</a> <span class="muted">· ${c.why}</span>` : html`<span class="muted">${c.why}</span>`}
                    </td>
                  </tr>`;
                })}
              </tbody>
            </table>`
    }`;
}

function EditWorkstation({ w, onDone }) {
  const [f, setF] = useState({ name: w.name, ip: w.ip ?? '' });
  const patch = (k, v) => setF((x) => ({ ...x, [k]: v }));
  const { busy, error, run } = useAction();
  const field = fieldOf(error, ['name', 'ip'], { E_WORKSTATION_EXISTS: 'name' });
  const submit = (e) => {
    e.preventDefault();
    const body = {};
    if (f.name.trim() !== w.name) body.name = f.name.trim();
    if ((f.ip.trim() || null) !== w.ip) body.ip = f.ip.trim() || null;
    void run(async () => onDone(await api('PATCH', `/api/workstations/${seg(w.mac)}`, body)));
  };
  return html`<form class="grid" onSubmit=${submit} aria-label=${`edit ${w.name}`}>
    <${Field}
      label="Name"
      name="name"
      value=${f.name}
      onInput=${(e) => patch('name', e.currentTarget.value)}
      error=${field === 'name' ? error : null}
    />
    <${Field}
      label="IP address"
      name="ip"
      value=${f.ip}
      onInput=${(e) => patch('ip', e.currentTarget.value)}
      error=${field === 'ip' ? error : null}
      hint="empty: none"
    />
    <div class="buttons wide"><button type="submit" class="primary" disabled=${busy}>Save</button></div>
    ${field ? null : html`<div class="wide"><${ErrorText} error=${error} /></div>`}
  </form>`;
}

export function WorkstationPage({ ref_ }) {
  const d = useLoad(() => api('GET', `/api/workstations/${seg(ref_)}`), [ref_]);
  const history = useLoad(() => api('GET', '/api/history?limit=2000'), [ref_]);
  const del = useAction();
  if (d.error) return html`<${PageTitle}>Workstation ${ref_}<//><${ErrorText} error=${d.error} />`;
  if (!d.data) return html`<${PageTitle}>Workstation ${ref_}<//><${Loading} what="the workstation" />`;
  const w = d.data;
  const inv = w.inventory;
  const runs = (history.data ?? []).filter((h) => h.clients.some((c) => c.workstation === w.id));
  return html`<${PageTitle}>Workstation ${w.name}<//>
    <p><a href="#/workstations">← All workstations</a></p>
    <dl class="facts">
      <dt>MAC</dt>
      <dd class="mono">${w.mac}</dd>
      <dt>Name</dt>
      <dd>
        ${w.name} <span class="muted">(${w.named ? 'given by the administrator' : 'its host name'})</span>
      </dd>
      <dt>Host name</dt>
      <dd>${w.hostname ?? '—'}</dd>
      <dt>IP given</dt>
      <dd>${w.ip ?? '—'}</dd>
      <dt>Addresses</dt>
      <dd>${w.addresses.join(', ') || '—'}</dd>
      <dt>Registered</dt>
      <dd>${when(w.registeredAt)}</dd>
      <dt>Last seen</dt>
      <dd>${when(w.lastSeenAt)}${w.lastAddress ? ` from ${w.lastAddress}` : ''}</dd>
      <dt>img auto</dt>
      <dd data-choice>
        ${w.auto.session ? html`joins <a href=${`#/auto/${seg(w.auto.session)}`}>${w.auto.session}</a> as ${w.auto.role}: ` : 'nothing to do: '}${w.auto.why}
      </dd>
    </dl>
    ${
      inv
        ? html`<section aria-labelledby="hw-title">
            <h2 id="hw-title">Hardware</h2>
            <dl class="facts">
              <dt>Processor</dt>
              <dd>${inv.cpu.model || '—'}, ${inv.cpu.cores} logical processors</dd>
              <dt>Memory</dt>
              <dd>${bytes(inv.memoryBytes)}</dd>
              <dt>System</dt>
              <dd>${[inv.dmi.vendor, inv.dmi.product].filter(Boolean).join(' ') || '—'}</dd>
              <dt>Serial</dt>
              <dd>${inv.dmi.serial || '—'}</dd>
              <dt>UUID</dt>
              <dd class="mono">${inv.dmi.uuid || '—'}</dd>
            </dl>
            <table>
              <caption>
                Disks
              </caption>
              <thead>
                <tr>
                  <th scope="col">Device</th>
                  <th scope="col">Size</th>
                  <th scope="col">Model</th>
                  <th scope="col">Serial</th>
                  <th scope="col">Kind</th>
                </tr>
              </thead>
              <tbody>
                ${inv.disks.map(
                  (k) =>
                    html`<tr key=${k.path}>
                      <th scope="row">${k.path}</th>
                      <td>${bytes(k.sizeBytes)}</td>
                      <td>${k.model ?? '—'}</td>
                      <td>${k.serial ?? '—'}</td>
                      <td>${k.removable ? 'removable' : k.rotational ? 'rotational' : 'solid state'}</td>
                    </tr>`,
                )}
              </tbody>
            </table>
          </section>`
        : html`<p class="muted">Not registered yet: rules on its hardware do not match it until it does.</p>`
    }
    <section aria-labelledby="id-title">
      <h2 id="id-title">Identity</h2>
      ${
        w.identity
          ? html`<dl class="facts" data-identity>
              <dt>Host name</dt>
              <dd>${w.identity.name ?? "the image's (not named by the administrator)"}</dd>
              <dt>Machine id</dt>
              <dd><code>${w.identity.machineId ?? '—'}</code></dd>
              ${w.identity.windowsName ? html`<dt>Windows name</dt><dd>${w.identity.windowsName}</dd>` : ''}
              <dt>Imaged</dt>
              <dd>${when(w.identity.reportedAt)} in session ${w.identity.session} (${w.identity.image})</dd>
            </dl>
            ${
              w.identity.sshHostKeys.length === 0
                ? html`<p class="muted">No SSH host keys reported (none were made on this system).</p>`
                : html`<table class="host-keys">
                    <caption>SSH host keys (fill known_hosts with these before the lab boots)</caption>
                    <thead><tr><th scope="col">Type</th><th scope="col">Bits</th><th scope="col">Fingerprint</th></tr></thead>
                    <tbody>
                      ${w.identity.sshHostKeys.map(
                        (k) =>
                          html`<tr key=${k.type} data-key=${k.type}><th scope="row">${k.type}</th><td>${k.bits}</td><td><code>${k.fingerprint}</code></td></tr>`,
                      )}
                    </tbody>
                  </table>`
            }
            ${
              w.identity.notes.length
                ? html`<ul class="notes" aria-label="notes of the identity">
                    ${w.identity.notes.map((n, i) => html`<li key=${i}>${n}</li>`)}
                  </ul>`
                : null
            }`
          : html`<p class="muted">No identity reported yet: it is set when the workstation is imaged.</p>`
      }
    </section>
    <section aria-labelledby="edit-title">
      <h2 id="edit-title">Name and address</h2>
      <${EditWorkstation} w=${w} key=${`${w.name}|${w.ip}`} onDone=${() => d.reload()} />
      <div class="buttons">
        <button
          type="button"
          class="danger"
          disabled=${del.busy}
          onClick=${() => {
            if (confirm(`Forget workstation ${w.name}?`))
              void del.run(async () => {
                await api('DELETE', `/api/workstations/${seg(w.mac)}`);
                location.hash = '#/workstations';
              });
          }}
        >
          Forget this workstation
        </button>
      </div>
      <${ErrorText} error=${del.error} />
    </section>
    <section aria-labelledby="wh-title">
      <h2 id="wh-title">Imaging history</h2>
      ${runs.length === 0 ? html`<p class="muted">Never imaged by this server.</p>` : html`<${RunsTable} runs=${runs} workstation=${w.id} />`}
    </section>`;
}
