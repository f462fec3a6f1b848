/**
 * The console's calls to the imaging server's HTTP API, with the sign-in's token. The token
 * lives in sessionStorage: it goes with the browser tab, and a closed tab is signed out.
 * A call the server refuses with 401 or 403 ends the sign-in (the token expired, was ended,
 * or is no admin's), and the console goes back to the sign-in page with the server's reason.
 */

const KEY = 'imgcast.signin';

/** A refused call: the server's stable code and its reason, plus any details it gave. */
export class ApiError extends Error {
  constructor(status, body) {
    super(body?.message ?? `the server answered ${status}`);
    this.status = status;
    this.code = body?.error ?? 'E_HTTP';
    this.details = body ?? {};
  }
}

let signin = read();
const listeners = new Set();

function read() {
  try {
    const s = JSON.parse(sessionStorage.getItem(KEY) ?? 'null');
    return s && typeof s.token === 'string' ? s : null;
  } catch {
    return null;
  }
}

/** The current sign-in ({ name, token, expiresAt }) or null. */
export function currentSignin() {
  return signin;
}

/** Called with (signin, message) whenever the sign-in starts or ends. */
export function onSignin(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

function announce(message) {
  for (const l of [...listeners]) l(signin, message);
}

export async function signIn(name, password) {
  const r = await fetch('/api/login', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name, password }),
  });
  const body = await r.json().catch(() => null);
  if (!r.ok) throw new ApiError(r.status, body);
  signin = { name, token: body.token, expiresAt: body.expiresAt };
  sessionStorage.setItem(KEY, JSON.stringify(signin));
  announce(null);
}

/** Ends the sign-in here; `message` says why on the sign-in page (null: the user signed out). */
export function signOut(message = null) {
  if (!signin && message === null) return;
  signin = null;
  sessionStorage.removeItem(KEY);
  announce(message);
}

/** Signs out: the server forgets the token (POST /api/logout), then the console does. */
export async function endSignin() {
  const s = signin;
  if (!s) return;
  await fetch('/api/logout', { method: 'POST', headers: { authorization: `Bearer ${s.token}` } }).catch(
    () => {},
  );
  signOut('You have signed out.');
}

/** Calls the API; resolves to the parsed body (undefined for 204), rejects with ApiError. */
export function api(method, path, body) {
  return request(method, path, body === undefined ? undefined : JSON.stringify(body), 'application/json');
}

/** Sends bytes (a File from an input) as the body, application/octet-stream. */
export function apiBytes(method, path, blob) {
  return request(method, path, blob, 'application/octet-stream');
}

/**
 * Sends a Blob (a file, or a folder's files) as the body, reporting `onProgress(sent, total)`
 * as it goes: XMLHttpRequest, since fetch says nothing of an upload's progress.
 */
export function apiUpload(method, path, blob, type, onProgress) {
  const s = signin;
  if (!s) return Promise.reject(new ApiError(401, { error: 'E_UNAUTHORIZED', message: 'not signed in' }));
  return new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open(method, path);
    x.setRequestHeader('authorization', `Bearer ${s.token}`);
    x.setRequestHeader('content-type', type);
    x.upload.onprogress = (e) => onProgress?.(e.loaded, e.lengthComputable ? e.total : blob.size);
    x.onload = () => {
      try {
        resolve(settle(s, x.status, x.responseText));
      } catch (err) {
        reject(err);
      }
    };
    x.onerror = () =>
      reject(
        new ApiError(0, {
          error: 'E_NETWORK',
          message: 'the server cannot be reached (the upload broke off)',
        }),
      );
    x.send(blob);
  });
}

async function request(method, path, body, type) {
  const s = signin;
  if (!s) throw new ApiError(401, { error: 'E_UNAUTHORIZED', message: 'not signed in' });
  const headers = { authorization: `Bearer ${s.token}` };
  if (body !== undefined) headers['content-type'] = type;
  let r;
  try {
    r = await fetch(path, { method, headers, body });
  } catch (err) {
    throw new ApiError(0, { error: 'E_NETWORK', message: `the server cannot be reached (${err.message})` });
  }
  return settle(s, r.status, await r.text());
}

/** The answer's body, or the refusal as an ApiError (a 401 or 403 also ends the sign-in `s`). */
function settle(s, status, text) {
  let parsed;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    parsed = { error: 'E_HTTP', message: `the server answered ${status} with something not JSON` };
  }
  if (status >= 200 && status < 300) return parsed;
  const err = new ApiError(status, parsed);
  // Every call the console makes is an administrator's: a token that cannot make it is no sign-in.
  if ((status === 401 || status === 403) && signin === s) signOut(signedOutMessage(err));
  throw err;
}

export function signedOutMessage(err) {
  return err.status === 403
    ? `This sign-in cannot administer the server: ${err.message}`
    : `Your sign-in has ended (${err.message}). Sign in again.`;
}

/** encodeURIComponent for a path segment. */
export const seg = (s) => encodeURIComponent(s);

/**
 * Which form field a refusal is about, so that its reason shows next to it: the field the
 * server names in its details ({ field }) or its validation names ("body/clientCount must be
 * >= 1"), or one the caller maps from the error code; null when it is about the form as a whole.
 */
export function fieldOf(err, fields, byCode = {}) {
  if (!(err instanceof ApiError)) return null;
  if (byCode[err.code] && fields.includes(byCode[err.code])) return byCode[err.code];
  if (typeof err.details.field === 'string' && fields.includes(err.details.field)) return err.details.field;
  const m = /\b(?:body|querystring|params)\/(\w+)/.exec(err.message);
  return m && fields.includes(m[1]) ? m[1] : null;
}
