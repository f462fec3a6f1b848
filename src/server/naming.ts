/**
 * Naming templates: how a session names the workstations the administrator has not named, such
 * as `lab1-{nn}` (lab1-01, lab1-02, … in the order they join) or `pc-{mac}`. A counter is `{n}`
 * with as many n as digits (`{n}` no padding, `{nnn}` three digits); `{mac}` is the MAC's twelve
 * hex digits. The next name is the lowest number whose name no other workstation holds, so a
 * machine keeps the name it was given once (the server stores it as the workstation's name) and
 * a lab numbered before is continued, not renumbered. Pure: the caller gives the names taken.
 */
import { hostnameProblem } from '../engine/identity/names.ts';

export interface NameTemplate {
  text: string;
  parts: Array<{ literal: string } | { counter: number } | { mac: true }>;
}

export class TemplateError extends Error {
  readonly position: number;
  constructor(message: string, position: number) {
    super(message);
    this.position = position;
  }
}

/** Host names are at most 63 characters; a counter may grow past its digits, so leave it room. */
const MAX_COUNT = 99_999;

export function parseNameTemplate(text: string): NameTemplate {
  const parts: NameTemplate['parts'] = [];
  let literal = '';
  let i = 0;
  while (i < text.length) {
    const c = text[i]!;
    if (c === '{') {
      const end = text.indexOf('}', i);
      if (end < 0) throw new TemplateError(`unclosed "{" at position ${i + 1}`, i + 1);
      const field = text.slice(i + 1, end);
      if (literal) parts.push({ literal });
      literal = '';
      if (/^n+$/.test(field)) parts.push({ counter: field.length });
      else if (field === 'mac') parts.push({ mac: true });
      else
        throw new TemplateError(
          `unknown field {${field}} at position ${i + 1}: give {n}, {nn}, {nnn}… (a number) or {mac}`,
          i + 1,
        );
      i = end + 1;
    } else if (c === '}') {
      throw new TemplateError(`"}" without "{" at position ${i + 1}`, i + 1);
    } else {
      literal += c;
      i++;
    }
  }
  if (literal) parts.push({ literal });
  if (!parts.some((p) => 'counter' in p || 'mac' in p)) {
    throw new TemplateError(
      'a template names every workstation differently: give a number ({nn}) or the MAC ({mac})',
      1,
    );
  }
  const template = { text, parts };
  // Checked with the widest values it can produce: every name it makes must be a host name.
  const widest = render(template, MAX_COUNT, 'ffffffffffff');
  const problem = hostnameProblem(widest);
  if (problem) throw new TemplateError(`its names cannot be host names (${widest}): ${problem}`, 1);
  return template;
}

function render(t: NameTemplate, n: number, macHex: string): string {
  return t.parts
    .map((p) => ('literal' in p ? p.literal : 'counter' in p ? String(n).padStart(p.counter, '0') : macHex))
    .join('');
}

/** The name `template` gives a workstation with `mac`, none of `taken` (compared ignoring case). */
export function nextName(template: NameTemplate, mac: string, taken: ReadonlySet<string>): string {
  const hex = mac.toLowerCase().replace(/[^0-9a-f]/g, '');
  const used = new Set([...taken].map((n) => n.toLowerCase()));
  const counted = template.parts.some((p) => 'counter' in p);
  for (let n = 1; n <= MAX_COUNT; n++) {
    const name = render(template, n, hex);
    if (!used.has(name.toLowerCase())) return name;
    if (!counted) break;
  }
  throw new TemplateError(
    counted
      ? `every name of ${template.text} up to ${MAX_COUNT} is taken`
      : `${render(template, 1, hex)} is already another workstation's name`,
    1,
  );
}
