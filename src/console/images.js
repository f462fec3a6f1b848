/**
 * Images: the image directory's files; one image's layout, volumes and file sets, an explorer
 * that changes what each file set leaves out, adding files and folders from this computer,
 * verify and compact, each with its progress (the upload's from the browser, the server's work
 * from the live status's jobs).
 */
import { useRef, useState } from 'preact/hooks';

import { api, apiUpload, seg } from './api.js';
import {
  ErrorText,
  Field,
  Loading,
  PageTitle,
  Progress,
  bytes,
  html,
  useAction,
  useLoad,
  when,
} from './ui.js';

/** The job of `kind` the server runs on image `name` now (verify, compact, add), from the live status. */
function jobOf(live, name, kind) {
  return (live?.status?.jobs ?? []).find((j) => j.image === name && j.kind === kind) ?? null;
}

/** A job's bar: how far the server got ("12 of 40 chunks"), or waiting for its first word. */
function JobProgress({ job: now, kind, label }) {
  // A job leaves the status a moment before its answer comes: it shows as done meanwhile, not restarted.
  const last = useRef(null);
  if (now) last.current = now;
  const job = now ?? (last.current ? { ...last.current, done: last.current.total } : null);
  const done = job?.done ?? 0;
  const total = job?.total ?? 0;
  const of =
    job && total > 0
      ? job.unit === 'bytes'
        ? `${bytes(done)} of ${bytes(total)}`
        : `${done} of ${total} ${job.unit}`
      : 'starting…';
  return html`<div class="job" data-progress=${kind} role="status">
    <span>${label}</span> <${Progress} value=${done} max=${total} label=${`${label} progress`} />
    <span class="muted">${of}</span>
  </div>`;
}

/** An upload's two steps: the browser sending (its own count), then the server adding (its job). */
function UploadProgress({ sent, job }) {
  if (!sent) return null;
  return sent.done < sent.total || !job
    ? html`<div class="job" data-progress="upload" role="status">
        <span>Sending</span> <${Progress} value=${sent.done} max=${sent.total} label="upload progress" />
        <span class="muted">${bytes(sent.done)} of ${bytes(sent.total)}</span>
      </div>`
    : html`<${JobProgress} job=${job} kind="add" label="Adding to the image" />`;
}

export function ImagesPage() {
  const list = useLoad(() => api('GET', '/api/images'));
  const del = useAction();
  return html`<${PageTitle}>Images<//>
    <div class="buttons"><button type="button" onClick=${list.reload}>Refresh</button></div>
    <p class="hint">
      Images come from <code>img make … --server</code>, or are copied into the server's image directory.
    </p>
    <${ErrorText} error=${list.error ?? del.error} />
    ${
      !list.data
        ? html`<${Loading} what="the images" />`
        : list.data.length === 0
          ? html`<p class="muted">No images.</p>`
          : html`<table class="images">
              <thead>
                <tr>
                  <th scope="col">Image</th>
                  <th scope="col">File size</th>
                  <th scope="col">Disk size</th>
                  <th scope="col">Volumes</th>
                  <th scope="col">Source</th>
                  <th scope="col">Modified</th>
                  <th scope="col"><span class="sr-only">Actions</span></th>
                </tr>
              </thead>
              <tbody>
                ${list.data.map(
                  (i) =>
                    html`<tr key=${i.name} data-image=${i.name}>
                      <th scope="row"><a href=${`#/images/${seg(i.name)}`}>${i.name}</a></th>
                      <td>${bytes(i.sizeBytes)}</td>
                      <td>${i.rawBytes === null ? '—' : bytes(i.rawBytes)}</td>
                      <td>${i.volumes ?? '—'}</td>
                      <td>${i.problem ? html`<span class="error-text">${i.problem}</span>` : i.source}</td>
                      <td>${when(i.modifiedAt)}</td>
                      <td>
                        <button
                          type="button"
                          class="danger small"
                          disabled=${del.busy}
                          aria-label=${`delete ${i.name}`}
                          onClick=${() => {
                            if (confirm(`Delete the image file ${i.name}? This cannot be undone.`))
                              void del.run(async () => {
                                await api('DELETE', `/api/images?path=${seg(i.name)}`);
                                await list.reload();
                              });
                          }}
                        >
                          Delete
                        </button>
                      </td>
                    </tr>`,
                )}
              </tbody>
            </table>`
    }`;
}

function Layout({ d }) {
  return html`<section aria-labelledby="layout-title">
    <h2 id="layout-title">Layout</h2>
    ${
      d.disk
        ? html`<p>
            Disk of ${bytes(d.disk.sizeBytes)}, ${String(d.disk.table).toUpperCase()} partition table.
          </p>
          <table>
            <caption class="sr-only">Partitions</caption>
            <thead>
              <tr>
                <th scope="col">Partition</th>
                <th scope="col">Start</th>
                <th scope="col">Size</th>
                <th scope="col">Type</th>
                <th scope="col">Name</th>
              </tr>
            </thead>
            <tbody>
              ${d.disk.partitions.map(
                (p) => html`<tr key=${p.number}>
                  <th scope="row">p${p.number}</th>
                  <td>${bytes(p.startBytes)}</td>
                  <td>${bytes(p.sizeBytes)}</td>
                  <td class="mono">${p.type}</td>
                  <td>${p.name || '—'}</td>
                </tr>`,
              )}
            </tbody>
          </table>`
        : html`<p>A folder capture: one file volume, no disk layout.</p>`
    }
    <table>
      <caption>Volumes</caption>
      <thead>
        <tr>
          <th scope="col">Volume</th>
          <th scope="col">Kind</th>
          <th scope="col">Filesystem</th>
          <th scope="col">Label</th>
          <th scope="col">Content</th>
        </tr>
      </thead>
      <tbody>
        ${d.volumes.map(
          (v) => html`<tr key=${v.name}>
            <th scope="row">${v.name}</th>
            <td>${v.kind === 'files' ? 'files' : 'raw blocks'}</td>
            <td>${v.filesystem ?? v.detectedType ?? '—'}</td>
            <td>${v.label || '—'}</td>
            <td>${v.kind === 'files' ? `${v.entries} entries, ${bytes(v.bytes)}` : `${bytes(v.bytes)} stored of ${bytes(v.sizeBytes)}`}</td>
          </tr>`,
        )}
      </tbody>
    </table>
    <table>
      <caption>File sets</caption>
      <thead>
        <tr>
          <th scope="col">Set</th>
          <th scope="col">Leaves out</th>
          <th scope="col">Description</th>
        </tr>
      </thead>
      <tbody>
        ${d.filesets.map(
          (f) => html`<tr key=${f.number} data-fileset=${f.number}>
            <th scope="row">${f.number}${f.isDefault ? ' (default)' : ''}</th>
            <td>${f.excludedEntries === 0 ? 'nothing: the whole image' : `${f.excludedEntries} entries, ${bytes(f.bytes)}`}</td>
            <td>${f.description || '—'}</td>
          </tr>`,
        )}
      </tbody>
    </table>
  </section>`;
}

/** Browses the image's tree; each entry's check box leaves it out of (or puts it back in) the chosen file set. */
function Explorer({ name, live, onChanged }) {
  const [dir, setDir] = useState('.');
  const [set, setSet] = useState(2);
  const tree = useLoad(() => api('GET', `/api/images/tree?path=${seg(name)}&dir=${seg(dir)}`), [name, dir]);
  const { busy, error, run } = useAction();
  const parts = dir === '.' ? [] : dir.split('/');
  // What was just asked shows at once, until the image's new state replaces it (or the refusal).
  const [pending, setPending] = useState({});
  const toggle = (e, entry) => {
    const excluded = e.currentTarget.checked;
    setPending((p) => ({ ...p, [entry.path]: excluded }));
    void run(async () => {
      try {
        await api('POST', '/api/images/exclude', { path: name, fileset: set, paths: [entry.path], excluded });
        await tree.reload();
        onChanged();
      } finally {
        setPending((p) => {
          const { [entry.path]: _, ...rest } = p;
          return rest;
        });
      }
    });
  };
  return html`<section aria-labelledby="explorer-title">
    <h2 id="explorer-title">Explorer</h2>
    <div class="narrow">
      <${Field} as="select" label="File set to edit" name="fileset" value=${String(set)} onChange=${(e) => setSet(Number(e.currentTarget.value))}>
        ${Array.from({ length: 10 }, (_, i) => html`<option value=${String(i + 1)}>file set ${i + 1}</option>`)}
      </${Field}>
    </div>
    <nav aria-label="folder" class="crumbs">
      <button type="button" class="link" onClick=${() => setDir('.')} aria-current=${dir === '.' ? 'location' : undefined}>${name}</button>
      ${parts.map(
        (p, i) =>
          html`<span key=${i}> / <button type="button" class="link" aria-current=${i === parts.length - 1 ? 'location' : undefined} onClick=${() => setDir(parts.slice(0, i + 1).join('/'))}>${p}</button></span>`,
      )}
    </nav>
    <${ErrorText} error=${tree.error ?? error} />
    <div class="adders">
      <${AddFile} name=${name} dir=${dir} live=${live} onAdded=${() => {
        void tree.reload();
        onChanged();
      }} />
      <${AddFolder} name=${name} dir=${dir} live=${live} onAdded=${() => {
        void tree.reload();
        onChanged();
      }} />
    </div>
    ${
      !tree.data
        ? html`<${Loading} what="the folder" />`
        : html`<table class="tree">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Type</th>
              <th scope="col">Size</th>
              <th scope="col">Modified</th>
              <th scope="col">Left out of</th>
              <th scope="col">Out of file set ${set}</th>
            </tr>
          </thead>
          <tbody>
            ${tree.data.entries.map(
              (e) => html`<tr key=${e.path} data-path=${e.path}>
                <th scope="row">
                  ${
                    e.type === 'dir' || e.type === 'volume'
                      ? html`<button type="button" class="link" onClick=${() => setDir(e.path)}>${e.name}/</button>`
                      : e.name
                  }
                </th>
                <td>${e.type}${e.filesystem ? ` (${e.filesystem}${e.label ? `, ${e.label}` : ''})` : ''}</td>
                <td>${e.type === 'dir' ? '—' : bytes(e.size)}</td>
                <td>${e.mtime ? when(Date.parse(e.mtime)) : '—'}</td>
                <td>${e.excludedFrom.length ? e.excludedFrom.map((n) => `set ${n}`).join(', ') : '—'}</td>
                <td>
                  ${
                    e.type === 'volume'
                      ? null
                      : html`<input
                        type="checkbox"
                        aria-label=${`leave ${e.path} out of file set ${set}`}
                        checked=${pending[e.path] ?? e.excludedFrom.includes(set)}
                        aria-busy=${busy ? 'true' : undefined}
                        onChange=${(ev) => (busy ? (ev.currentTarget.checked = e.excludedFrom.includes(set)) : toggle(ev, e))}
                      />`
                  }
                </td>
              </tr>`,
            )}
          </tbody>
        </table>`
    }
  </section>`;
}

/** Adds a file from this computer into the folder the explorer shows (img add FILE --at DIR). */
function AddFile({ name, dir, live, onAdded }) {
  const [file, setFile] = useState(null);
  const [replace, setReplace] = useState(false);
  const [added, setAdded] = useState(null);
  const [sent, setSent] = useState(null);
  const { busy, error, run } = useAction();
  const submit = (e) => {
    e.preventDefault();
    if (!file) return;
    setAdded(null);
    const form = e.currentTarget;
    void run(async () => {
      setSent({ done: 0, total: file.size });
      try {
        const q = `path=${seg(name)}&at=${seg(dir)}&name=${seg(file.name)}${replace ? '&replace=true' : ''}`;
        setAdded(
          await apiUpload('PUT', `/api/images/files?${q}`, file, 'application/octet-stream', (done, total) =>
            setSent({ done, total }),
          ),
        );
      } finally {
        setSent(null);
      }
      form.reset();
      setFile(null);
      onAdded();
    });
  };
  return html`<form class="inline" onSubmit=${submit} aria-label="add a file to this folder">
    <${Field}
      label=${`Add a file to ${dir === '.' ? 'the top folder' : dir}`}
      type="file"
      name="file"
      onChange=${(e) => setFile(e.currentTarget.files?.[0] ?? null)}
      error=${error}
      hint="it joins every file set"
    />
    <${Field} label="Replace one of that name" type="checkbox" name="replace" checked=${replace} onChange=${(e) => setReplace(e.currentTarget.checked)} />
    <div class="buttons"><button type="submit" disabled=${busy || !file}>${busy ? 'Adding…' : 'Add file'}</button></div>
    <${UploadProgress} sent=${sent} job=${jobOf(live, name, 'add')} />
    ${added ? html`<p role="status" class="ok-text">Added ${added.path} (${bytes(added.bytes)}).</p>` : null}
  </form>`;
}

/**
 * The files of a folder picked on this computer, as the server takes them (folder-upload.ts):
 * per file a line of JSON (its path inside the folder, size, time) and its bytes. The Blob
 * only refers to the files; nothing is read into memory before it is sent.
 */
function folderBody(files) {
  const parts = [];
  for (const f of files) {
    const path = f.webkitRelativePath || f.name;
    parts.push(`${JSON.stringify({ path, size: f.size, mtimeMs: f.lastModified })}\n`, f);
  }
  return new Blob(parts);
}

/** Adds a whole folder from this computer, its subfolders kept (img add FOLDER --at DIR). */
function AddFolder({ name, dir, live, onAdded }) {
  const [files, setFiles] = useState(null);
  const [replace, setReplace] = useState(false);
  const [added, setAdded] = useState(null);
  const [sent, setSent] = useState(null);
  const { busy, error, setError, run } = useAction();
  const top = files?.[0]?.webkitRelativePath?.split('/')[0] ?? null;
  const pick = (e) => {
    const list = [...(e.currentTarget.files ?? [])];
    setAdded(null);
    setError(null);
    setFiles(list.length ? list : null);
  };
  const submit = (e) => {
    e.preventDefault();
    if (!files) return;
    setAdded(null);
    const form = e.currentTarget;
    const body = folderBody(files);
    void run(async () => {
      setSent({ done: 0, total: body.size });
      try {
        const q = `path=${seg(name)}&at=${seg(dir)}${replace ? '&replace=true' : ''}`;
        setAdded(
          await apiUpload(
            'POST',
            `/api/images/folder?${q}`,
            body,
            'application/x-imgcast-files',
            (done, total) => setSent({ done, total }),
          ),
        );
      } finally {
        setSent(null);
      }
      form.reset();
      setFiles(null);
      onAdded();
    });
  };
  return html`<form class="inline" onSubmit=${submit} aria-label="add a folder to this folder">
    <${Field}
      label=${`Add a folder to ${dir === '.' ? 'the top folder' : dir}`}
      type="file"
      name="folder"
      webkitdirectory
      multiple
      onChange=${pick}
      error=${error}
      hint=${files ? `${top}: ${files.length} file(s), ${bytes(files.reduce((n, f) => n + f.size, 0))}` : 'its subfolders come too (empty ones do not: browsers leave them out)'}
    />
    <${Field} label="Replace a folder of that name" type="checkbox" name="replace-folder" checked=${replace} onChange=${(e) => setReplace(e.currentTarget.checked)} />
    <div class="buttons"><button type="submit" disabled=${busy || !files}>${busy ? 'Adding…' : 'Add folder'}</button></div>
    <${UploadProgress} sent=${sent} job=${jobOf(live, name, 'add')} />
    ${added ? html`<p role="status" class="ok-text">Added ${added.path}: ${added.files} file(s), ${bytes(added.bytes)}.</p>` : null}
  </form>`;
}

function Maintenance({ name, live, onChanged }) {
  const verify = useAction();
  const compact = useAction();
  const [report, setReport] = useState(null);
  const [compacted, setCompacted] = useState(null);
  return html`<section aria-labelledby="maint-title">
    <h2 id="maint-title">Verify and compact</h2>
    <div class="buttons">
      <button type="button" disabled=${verify.busy} onClick=${() => void verify.run(async () => setReport(await api('POST', '/api/images/verify', { path: name })))}>
        ${verify.busy ? 'Verifying…' : 'Verify every chunk'}
      </button>
      <button type="button" disabled=${compact.busy} onClick=${() =>
        void compact.run(async () => {
          setCompacted(await api('POST', '/api/images/compact', { path: name }));
          onChanged();
        })}>
        ${compact.busy ? 'Compacting…' : 'Compact (reclaim removed data)'}
      </button>
    </div>
    ${verify.busy ? html`<${JobProgress} job=${jobOf(live, name, 'verify')} kind="verify" label="Verifying" />` : null}
    ${compact.busy ? html`<${JobProgress} job=${jobOf(live, name, 'compact')} kind="compact" label="Compacting" />` : null}
    <${ErrorText} error=${verify.error ?? compact.error} />
    ${
      report
        ? html`<div role="status" class=${report.ok ? 'ok-text' : 'error'}>
          ${
            report.ok
              ? `Verified: ${report.chunksChecked} chunks, ${bytes(report.bytesChecked)}, all intact${report.unreferencedChunks ? `; ${report.unreferencedChunks} unused (compact reclaims them)` : ''}.`
              : html`Damaged: ${report.problems.length} problem(s).
                <ul>${report.problems.map((p, i) => html`<li key=${i}>${p.message} [${p.code}]</li>`)}</ul>`
          }
        </div>`
        : null
    }
    ${
      compacted
        ? html`<p role="status" class="ok-text">Compacted: ${bytes(compacted.bytesBefore)} → ${bytes(compacted.bytesAfter)}, ${compacted.chunksDropped} chunk(s) dropped.</p>`
        : null
    }
  </section>`;
}

export function ImagePage({ name, live }) {
  const info = useLoad(() => api('GET', `/api/images/info?path=${seg(name)}`), [name]);
  const details = useLoad(() => api('GET', `/api/images/details?path=${seg(name)}`), [name]);
  const i = info.data;
  const d = details.data;
  return html`<${PageTitle}>Image ${name}<//>
    <p><a href="#/images">← All images</a></p>
    <${ErrorText} error=${info.error} />
    ${
      !i
        ? info.error
          ? null
          : html`<${Loading} what="the image" />`
        : html`<dl class="facts">
          <dt>File</dt><dd>${i.name}, ${bytes(i.sizeBytes)}, modified ${when(i.modifiedAt)}</dd>
          <dt>Image id</dt><dd class="mono">${i.imageId ?? '—'}</dd>
          <dt>Captured from</dt><dd>${i.source ?? '—'}</dd>
          ${
            d
              ? html`<dt>Captured</dt><dd>${when(Date.parse(d.createdAt))}, compression ${d.level}, generation ${d.generation}</dd>
            <dt>Stored</dt><dd>${d.chunks} chunks, ${bytes(d.chunkRawBytes)} of data in ${bytes(d.chunkStoredBytes)}</dd>`
              : null
          }
          ${i.problem ? html`<dt>Problem</dt><dd class="error-text">${i.problem}</dd>` : null}
        </dl>`
    }
    ${d ? html`<${Layout} d=${d} />` : html`<${ErrorText} error=${i?.problem ? null : details.error} />`}
    ${
      i && !i.problem
        ? html`<${Explorer} name=${name} live=${live} onChanged=${details.reload} />
          <${Maintenance} name=${name} live=${live} onChanged=${() => {
            info.reload();
            details.reload();
          }} />`
        : null
    }`;
}
