/** Images: the image directory's files, and one image's details. */
import { api, seg } from './api.js';
import { ErrorText, Loading, PageTitle, bytes, html, useAction, useLoad, when } from './ui.js';

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

export function ImagePage({ name }) {
  const info = useLoad(() => api('GET', `/api/images/info?path=${seg(name)}`), [name]);
  const i = info.data;
  return html`<${PageTitle}>Image ${name}<//>
    <p><a href="#/images">← All images</a></p>
    <${ErrorText} error=${info.error} />
    ${
      !i
        ? info.error
          ? null
          : html`<${Loading} what="the image" />`
        : html`<dl class="facts">
            <dt>File</dt>
            <dd>${i.name}, ${bytes(i.sizeBytes)}, modified ${when(i.modifiedAt)}</dd>
            <dt>Image id</dt>
            <dd class="mono">${i.imageId ?? '—'}</dd>
            <dt>Captured from</dt>
            <dd>${i.source ?? '—'}</dd>
            <dt>Disk size</dt>
            <dd>${i.rawBytes === null ? 'a folder (no disk layout)' : bytes(i.rawBytes)}</dd>
            <dt>Volumes</dt>
            <dd>${i.volumes ?? '—'}</dd>
            ${
              i.problem
                ? html`<dt>Problem</dt>
                    <dd class="error-text">${i.problem}</dd>`
                : null
            }
          </dl>`
    }`;
}
