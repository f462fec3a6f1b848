/** What every page shares: the template tag, number formats, form fields and their errors. */
import { h } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import htm from 'htm';

import { ApiError } from './api.js';

export const html = htm.bind(h);

// --- formats

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
export function bytes(n) {
  if (n === null || n === undefined) return '—';
  let i = 0;
  let v = n;
  while (v >= 1024 && i < UNITS.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)} ${UNITS[i]}`;
}

export const mbit = (n) => (n ? `${n >= 100 ? Math.round(n) : n.toFixed(1)} Mbit/s` : '—');

/** 75 000 ms → "1:15"; an hour or more → "1:02:03". */
export function duration(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '—';
  const s = Math.max(0, Math.round(ms / 1000));
  const hh = Math.floor(s / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return hh > 0 ? `${hh}:${String(mm).padStart(2, '0')}:${ss}` : `${mm}:${ss}`;
}

export function when(ms) {
  if (ms === null || ms === undefined) return '—';
  const d = new Date(ms);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
}

export const percent = (part, whole) => (whole > 0 ? Math.min(100, Math.floor((part / whole) * 100)) : 0);

// --- hooks

/** Re-renders every `ms` (countdowns). */
export function useTick(ms = 1000) {
  const [, set] = useState(0);
  useEffect(() => {
    const t = setInterval(() => set((n) => n + 1), ms);
    return () => clearInterval(t);
  }, [ms]);
}

/**
 * Loads with `load()` on mount and whenever `deps` change: { data, error, loading, reload }.
 * An answer that comes after a newer load began is dropped.
 */
export function useLoad(load, deps = []) {
  const [state, set] = useState({ data: undefined, error: null, loading: true });
  const seq = useRef(0);
  const run = async () => {
    const mine = ++seq.current;
    set((s) => ({ ...s, loading: true }));
    try {
      const data = await load();
      if (mine === seq.current) set({ data, error: null, loading: false });
    } catch (error) {
      if (mine === seq.current) set((s) => ({ ...s, error, loading: false }));
    }
  };
  useEffect(() => {
    void run();
  }, deps);
  return { ...state, reload: run };
}

/**
 * An action's button state and its refusal: run(fn) marks it busy, keeps the server's reason
 * (an ApiError) for the form to show next to the field it concerns.
 */
export function useAction() {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const run = async (fn) => {
    setBusy(true);
    setError(null);
    try {
      return await fn();
    } catch (err) {
      setError(err instanceof ApiError ? err : new ApiError(0, { error: 'E_CONSOLE', message: String(err) }));
      return undefined;
    } finally {
      setBusy(false);
    }
  };
  return { busy, error, setError, run };
}

// --- components

let ids = 0;
/** A unique id for a label's `for` and an error's `aria-describedby`. */
export function useId(prefix = 'f') {
  const r = useRef(null);
  if (r.current === null) r.current = `${prefix}${++ids}`;
  return r.current;
}

/** The server's reason for refusing, shown where it applies; polite for screen readers. */
export function ErrorText({ error, id }) {
  if (!error) return null;
  const message = typeof error === 'string' ? error : error.message;
  const code = typeof error === 'string' ? null : error.code;
  return html`<p class="error" id=${id} role="alert">
    ${message}${code && code !== 'E_CONSOLE' ? html` <span class="code">[${code}]</span>` : null}
  </p>`;
}

/**
 * A labelled input with its refusal under it. `as` is 'input' (default), 'select' or
 * 'textarea'; other props go to the control.
 */
export function Field({ label, hint, error, as = 'input', children, wide, ...props }) {
  const id = useId();
  const describedBy = [hint ? `${id}-hint` : null, error ? `${id}-err` : null].filter(Boolean).join(' ');
  const control = h(
    as,
    {
      id,
      'aria-invalid': error ? 'true' : undefined,
      'aria-describedby': describedBy || undefined,
      ...props,
    },
    children,
  );
  return html`<div class=${`field${wide ? ' wide' : ''}${props.type === 'checkbox' ? ' check' : ''}`}>
    ${
      props.type === 'checkbox'
        ? html`${control}<label for=${id}>${label}</label>`
        : html`<label for=${id}>${label}</label>${control}`
    }
    ${hint ? html`<p class="hint" id=${`${id}-hint`}>${hint}</p>` : null}
    <${ErrorText} error=${error} id=${`${id}-err`} />
  </div>`;
}

export function StateBadge({ state }) {
  return html`<span class=${`badge state-${state}`}>${state}</span>`;
}

export function Progress({ value, max, label }) {
  const p = percent(value, max);
  return html`<span class="progress">
    <progress value=${p} max="100" aria-label=${label}>${p} %</progress>
    <span class="pct">${p} %</span>
  </span>`;
}

/** A page's heading, focused when the page opens so keyboard and screen-reader users land on it. */
export function PageTitle({ children }) {
  const ref = useRef(null);
  useEffect(() => ref.current?.focus(), []);
  return html`<h1 tabindex="-1" ref=${ref}>${children}</h1>`;
}

export function Loading({ what }) {
  return html`<p class="muted" role="status">Loading ${what}…</p>`;
}
