/**
 * Participation rules of automatic sessions: a small expression over what a workstation
 * registered (its inventory), such as
 *
 *     name = "lab1-*" and (ip = 198.18.0.0/24 or mac = 52:54:00) and not vendor = "Dell*"
 *
 * Pure: the rule is text in, a tree out (parseRule), and a yes or no for one workstation
 * (matches); describeRule writes a tree back as canonical text.
 *
 * Grammar (EBNF). Keywords and attribute names are case-insensitive; white space separates
 * tokens and is otherwise ignored; "not" binds tighter than "and", which binds tighter than "or".
 *
 *     rule        = disjunction ;
 *     disjunction = conjunction , { "or" , conjunction } ;
 *     conjunction = negation , { "and" , negation } ;
 *     negation    = "not" , negation | primary ;
 *     primary     = "(" , disjunction , ")" | comparison ;
 *     comparison  = attribute , operator , value ;
 *     attribute   = "name" | "mac" | "ip" | "disk" | "memory" | "cores"
 *                 | "cpu" | "vendor" | "model" | "serial" ;
 *     operator    = "=" | "!=" | "<" | "<=" | ">" | ">=" ;
 *     value       = string | word ;
 *     string      = '"' , { char - ( '"' | "\" | control ) | "\" , ( '"' | "\" ) } , '"' ;
 *     word        = word char , { word char } - ( "and" | "or" | "not" ) ;
 *     word char   = char - ( white space | control | "(" | ")" | '"' | "'" | "=" | "<" | ">" )
 *                   (and "!" only when no "=" follows it) ;
 *
 * Attributes, and what a value means for each:
 *
 *     name     the workstation's name on the server    glob       = !=
 *     cpu      processor model                         glob       = !=
 *     vendor   DMI system vendor                       glob       = !=
 *     model    DMI product name                        glob       = !=
 *     serial   DMI serial number                       glob       = !=
 *     mac      its MAC address                         prefix     = !=
 *     ip       each of its addresses                   subnet     = !=
 *     disk     size of its largest internal disk       size       = != < <= > >=
 *     memory   installed memory                        size       = != < <= > >=
 *     cores    logical processors                      count      = != < <= > >=
 *
 * - glob: the whole value, case-insensitive, compared in Unicode NFC: `*` any run of
 *   characters, `?` one character, `[abc]`, `[a-z]` one of, `[!a-z]` or `[^a-z]` none of (a
 *   `]` first in the brackets is itself). There is no escape character: `[*]` is a star. A
 *   DMI field the workstation could not read is "", so `vendor = ""` finds those.
 * - prefix: the MAC starts with these hex digits, written in pairs separated by ":" or "-",
 *   or not separated at all (`52:54:00`, `52-54-00`, `525400`); unseparated, it may end in
 *   half a byte (`0050c2a`, a 36-bit block). Case-insensitive.
 * - subnet: an IPv4 or IPv6 address (`198.18.0.7`) or subnet (`198.18.0.0/24`,
 *   `2001:db8::/32`); true when any of the workstation's addresses is it or lies in it. Bits
 *   past the prefix length must be zero, so that a typo does not silently widen the subnet.
 *   IPv4 subnets hold IPv4 addresses only (`0.0.0.0/0` is "has an IPv4 address").
 * - size: a decimal number and a unit: none or B for bytes; K, M, G, T (also KiB, MiB, GiB,
 *   TiB) count in powers of 1024; KB, MB, GB, TB in powers of 1000; case-insensitive. Disks
 *   are sold in powers of 1000: a "256 GB" disk holds about 238 GiB, so it passes
 *   `disk >= 256GB` and fails `disk >= 256G`. Compared exactly (no rounding of the number).
 * - count: a whole number.
 *
 * The facts (subjectOf): a workstation with no internal (non-removable) disk has disk 0.
 * `memory` is the memory the operating system reports rounded up to a whole GiB, because the
 * kernel and firmware keep a few hundred MiB before it counts: an 8 GiB machine reports about
 * 7.7 GiB, and `memory >= 8G` should take it.
 *
 * `a != v` always means `not a = v`: for ip, that none of the addresses is in the subnet.
 *
 * Limits: 2000 characters, 32 levels of nesting (parentheses and "not"). Errors are
 * ServerError E_RULE_INVALID, whose message names the column and shows the rule with a caret;
 * details hold `position` (a UTF-16 offset into the text, for an editor), `line`, `column`
 * (1-based, counting Unicode code points) and `rule`. describeRule writes canonical text, which may come out
 * longer than what was typed (quotes, spaces): store what the operator wrote, not the
 * description, so a rule near the length limit keeps parsing.
 */
import type { Inventory } from '../api/schemas.ts';
import { ServerError } from './errors.ts';

export const RULE_MAX_LENGTH = 2000;
export const RULE_MAX_DEPTH = 32;

export const ATTRIBUTES = [
  'name',
  'mac',
  'ip',
  'disk',
  'memory',
  'cores',
  'cpu',
  'vendor',
  'model',
  'serial',
] as const;
export type Attribute = (typeof ATTRIBUTES)[number];
export type TextAttribute = 'name' | 'cpu' | 'vendor' | 'model' | 'serial';
export type Operator = '=' | '!=' | '<' | '<=' | '>' | '>=';
export type Equality = '=' | '!=';
/** Canonical units: '' is bytes; single letters count in 1024s, two letters in 1000s. */
export type SizeUnit = '' | 'K' | 'M' | 'G' | 'T' | 'KB' | 'MB' | 'GB' | 'TB';

export type Comparison =
  | { kind: 'glob'; attribute: TextAttribute; op: Equality; pattern: string }
  /** `prefix`: lower-case hex digits, no separators. */
  | { kind: 'mac'; attribute: 'mac'; op: Equality; prefix: string }
  /** `address`: 4 or 16 bytes; `prefix`: the subnet's prefix length. */
  | { kind: 'ip'; attribute: 'ip'; op: Equality; family: 4 | 6; address: number[]; prefix: number }
  /** `amount`: canonical decimal text ("256", "1.5"), kept as text so comparisons are exact. */
  | { kind: 'size'; attribute: 'disk' | 'memory'; op: Operator; amount: string; unit: SizeUnit }
  | { kind: 'count'; attribute: 'cores'; op: Operator; value: number };

export type Rule =
  Comparison | { kind: 'and'; rules: Rule[] } | { kind: 'or'; rules: Rule[] } | { kind: 'not'; rule: Rule };

/** What rules look at, taken from a workstation's inventory by subjectOf. */
export interface RuleSubject {
  name: string;
  /** In any of the usual forms; "" when unknown. */
  mac: string;
  addresses: readonly string[];
  /** Size of the largest internal disk; 0 with none. */
  diskBytes: number;
  /** Installed memory (see the module comment). */
  memoryBytes: number;
  cores: number;
  cpu: string;
  vendor: string;
  model: string;
  serial: string;
}

const GIB = 1024 ** 3;

/** `name` is the workstation's name on the server; it defaults to the hostname it registered with. */
export function subjectOf(inv: Inventory, name: string = inv.hostname): RuleSubject {
  const internal = inv.disks.filter((d) => d.removable !== true).map((d) => d.sizeBytes);
  return {
    name,
    mac: inv.mac,
    addresses: [...inv.addresses],
    diskBytes: Math.max(0, ...internal),
    memoryBytes: Math.ceil(inv.memoryBytes / GIB) * GIB,
    cores: inv.cpu.cores,
    cpu: inv.cpu.model,
    vendor: inv.dmi.vendor ?? '',
    model: inv.dmi.product ?? '',
    serial: inv.dmi.serial ?? '',
  };
}

// ---------------------------------------------------------------------------------------------
// Errors

const WINDOW = 72;

/** Throws E_RULE_INVALID pointing at `pos` (a UTF-16 offset into `text`). */
function fail(text: string, pos: number, what: string, after = ''): never {
  const before = text.slice(0, pos);
  const line = (before.match(/\r\n|\r|\n/g)?.length ?? 0) + 1;
  const lineStart = Math.max(before.lastIndexOf('\n'), before.lastIndexOf('\r')) + 1;
  const rest = text.slice(pos).search(/[\r\n]/);
  const lineText = text.slice(lineStart, rest < 0 ? text.length : pos + rest);
  const column = [...text.slice(lineStart, pos)].length + 1;
  const where = /[\r\n]/.test(text) ? `line ${line}, column ${column}` : `column ${column}`;
  // Controls and tabs would shift the caret off the character it points at.
  const chars = [...lineText].map((c) => (/[\s\p{Cc}]/u.test(c) ? ' ' : c));
  let from = 0;
  if (chars.length > WINDOW) from = Math.max(0, Math.min(column - 1 - WINDOW / 2, chars.length - WINDOW));
  const to = Math.min(chars.length, from + WINDOW);
  const shown = (from > 0 ? '…' : '') + chars.slice(from, to).join('') + (to < chars.length ? '…' : '');
  const caret = ' '.repeat(column - 1 - from + (from > 0 ? 1 : 0)) + '^';
  throw new ServerError('E_RULE_INVALID', `${what} at ${where}${after}\n  ${shown}\n  ${caret}`, {
    position: pos,
    line,
    column,
    rule: text.length > RULE_MAX_LENGTH * 2 ? text.slice(0, RULE_MAX_LENGTH * 2) : text,
  });
}

// ---------------------------------------------------------------------------------------------
// Tokens

type TokenType = 'word' | 'string' | 'op' | '(' | ')' | 'end';

interface Token {
  type: TokenType;
  /** The word, the string's contents (escapes undone), the operator. */
  text: string;
  start: number;
  end: number;
  /** Source offset of each UTF-16 unit of `text` (strings only; a word's units are contiguous). */
  offsets?: number[];
}

const KEYWORDS = new Set(['and', 'or', 'not']);
const SPECIAL = new Set(['(', ')', '"', "'", '=', '<', '>']);

function isKeyword(t: Token, word?: string): boolean {
  if (t.type !== 'word') return false;
  const w = t.text.toLowerCase();
  return word === undefined ? KEYWORDS.has(w) : w === word;
}

/** Where character `i` of a token's text came from in the rule. */
function sourceOf(t: Token, i: number): number {
  if (t.offsets) return t.offsets[i] ?? t.end - 1;
  return t.start + i;
}

function hex4(c: string): string {
  return `U+${(c.codePointAt(0) ?? 0).toString(16).toUpperCase().padStart(4, '0')}`;
}

class Lexer {
  #text: string;
  #pos = 0;
  #peeked: Token | undefined;

  constructor(text: string) {
    this.#text = text;
  }

  peek(): Token {
    this.#peeked ??= this.#lex();
    return this.#peeked;
  }

  next(): Token {
    const t = this.peek();
    this.#peeked = undefined;
    return t;
  }

  #lex(): Token {
    const s = this.#text;
    let i = this.#pos;
    while (i < s.length && /\s/.test(s[i]!)) i++;
    const start = i;
    const token = (type: TokenType, end: number, text = s.slice(start, end)): Token => {
      this.#pos = end;
      return { type, text, start, end };
    };
    if (i >= s.length) return token('end', i, '');
    const c = s[i]!;
    if (c === '(' || c === ')') return token(c, i + 1);
    if (c === '=') return token('op', i + 1);
    if (c === '<' || c === '>') return token('op', s[i + 1] === '=' ? i + 2 : i + 1);
    if (c === '!' && s[i + 1] === '=') return token('op', i + 2);
    if (c === "'") fail(s, i, `a string takes double quotes ("…"), not '`);
    if (c === '"') {
      let text = '';
      const offsets: number[] = [];
      let j = i + 1;
      for (;;) {
        if (j >= s.length) fail(s, i, 'unclosed string (no closing ")');
        const d = s[j]!;
        if (d === '"') break;
        if (d === '\\') {
          const e = s[j + 1];
          if (e !== '"' && e !== '\\') {
            fail(s, j, `unknown escape \\${e ?? ''} in a string`, `; only \\" and \\\\ are escapes`);
          }
          text += e;
          offsets.push(j + 1);
          j += 2;
          continue;
        }
        if (/\p{Cc}/u.test(d)) fail(s, j, `control character ${hex4(d)} in a string`);
        text += d;
        offsets.push(j);
        j++;
      }
      this.#pos = j + 1;
      return { type: 'string', text, start, end: j + 1, offsets };
    }
    let j = i;
    while (j < s.length) {
      const d = s[j]!;
      if (/\s/.test(d) || SPECIAL.has(d) || (d === '!' && s[j + 1] === '=')) break;
      if (/\p{Cc}/u.test(d)) fail(s, j, `control character ${hex4(d)}`);
      j++;
    }
    return token('word', j);
  }
}

function clip(s: string): string {
  const chars = [...s];
  return chars.length > 24 ? `${chars.slice(0, 24).join('')}…` : s;
}

function found(t: Token): string {
  switch (t.type) {
    case 'end':
      return ', found the end of the rule';
    case 'string':
      return `, found the string "${clip(t.text)}"`;
    default:
      return `, found "${clip(t.text)}"`;
  }
}

// ---------------------------------------------------------------------------------------------
// Parsing

const TEXT_ATTRIBUTES = new Set<string>(['name', 'cpu', 'vendor', 'model', 'serial']);
const EQUALITY_HINT: Record<string, string> = {
  name: 'a glob such as "lab1-*"',
  cpu: 'a glob such as "*i5*"',
  vendor: 'a glob such as "Dell*"',
  model: 'a glob such as "OptiPlex*"',
  serial: 'a glob such as "CZC*"',
  mac: 'a MAC prefix such as 52:54:00',
  ip: 'an address or subnet such as 198.18.0.0/24',
};
/** Words people reach for, pointed at the attribute that has the fact. */
const ALIASES = new Map<string, Attribute>(
  Object.entries({
    hostname: 'name',
    host: 'name',
    address: 'ip',
    addr: 'ip',
    subnet: 'ip',
    ram: 'memory',
    mem: 'memory',
    size: 'disk',
    cpus: 'cores',
    threads: 'cores',
    processor: 'cpu',
    manufacturer: 'vendor',
    product: 'model',
  }) as Array<[string, Attribute]>,
);

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length]!;
}

function suggestion(word: string): Attribute | undefined {
  const w = word.toLowerCase();
  const alias = ALIASES.get(w);
  if (alias) return alias;
  const near = ATTRIBUTES.map((a) => ({ a, d: editDistance(w, a) })).sort((x, y) => x.d - y.d)[0];
  return near && near.d <= Math.min(2, near.a.length - 2) ? near.a : undefined;
}

const UNITS = new Map<string, SizeUnit>(
  Object.entries({
    '': '',
    b: '',
    k: 'K',
    kib: 'K',
    m: 'M',
    mib: 'M',
    g: 'G',
    gib: 'G',
    t: 'T',
    tib: 'T',
    kb: 'KB',
    mb: 'MB',
    gb: 'GB',
    tb: 'TB',
  }) as Array<[string, SizeUnit]>,
);
const UNIT_BYTES: Record<SizeUnit, bigint> = {
  '': 1n,
  K: 1024n,
  M: 1024n ** 2n,
  G: 1024n ** 3n,
  T: 1024n ** 4n,
  KB: 1000n,
  MB: 1000n ** 2n,
  GB: 1000n ** 3n,
  TB: 1000n ** 4n,
};
const UNIT_LIST = 'B, K, M, G, T (powers of 1024) or KB, MB, GB, TB (powers of 1000)';

class Parser {
  #text: string;
  #lexer: Lexer;

  constructor(text: string) {
    this.#text = text;
    this.#lexer = new Lexer(text);
  }

  #fail(pos: number, what: string, after = ''): never {
    return fail(this.#text, pos, what, after);
  }

  parse(): Rule {
    if (this.#lexer.peek().type === 'end') this.#fail(this.#lexer.peek().start, 'the rule is empty');
    const rule = this.#disjunction(0);
    const t = this.#lexer.peek();
    if (t.type === 'end') return rule;
    if (t.type === ')') this.#fail(t.start, 'unexpected ")"', ': no "(" is open');
    return this.#fail(t.start, 'expected "and", "or" or the end of the rule', found(t) + unitHint(rule, t));
  }

  #disjunction(depth: number): Rule {
    const rules = [this.#conjunction(depth)];
    while (isKeyword(this.#lexer.peek(), 'or')) {
      this.#lexer.next();
      rules.push(this.#conjunction(depth));
    }
    return rules.length === 1
      ? rules[0]!
      : { kind: 'or', rules: rules.flatMap((r) => (r.kind === 'or' ? r.rules : [r])) };
  }

  #conjunction(depth: number): Rule {
    const rules = [this.#negation(depth)];
    while (isKeyword(this.#lexer.peek(), 'and')) {
      this.#lexer.next();
      rules.push(this.#negation(depth));
    }
    return rules.length === 1
      ? rules[0]!
      : { kind: 'and', rules: rules.flatMap((r) => (r.kind === 'and' ? r.rules : [r])) };
  }

  #deeper(t: Token, depth: number): number {
    if (depth + 1 > RULE_MAX_DEPTH) {
      this.#fail(
        t.start,
        `the rule nests deeper than ${RULE_MAX_DEPTH} levels`,
        ' (parentheses and "not" count)',
      );
    }
    return depth + 1;
  }

  #negation(depth: number): Rule {
    const t = this.#lexer.peek();
    if (!isKeyword(t, 'not')) return this.#primary(depth);
    this.#lexer.next();
    return { kind: 'not', rule: this.#negation(this.#deeper(t, depth)) };
  }

  #primary(depth: number): Rule {
    const open = this.#lexer.peek();
    if (open.type !== '(') return this.#comparison();
    this.#lexer.next();
    const rule = this.#disjunction(this.#deeper(open, depth));
    const close = this.#lexer.next();
    if (close.type !== ')') {
      const col = [...this.#text.slice(0, open.start)].length + 1;
      this.#fail(
        close.start,
        'expected ")"',
        ` to close the "(" at column ${col}${found(close)}${unitHint(rule, close)}`,
      );
    }
    return rule;
  }

  #comparison(): Comparison {
    const t = this.#lexer.next();
    if (t.type !== 'word' || isKeyword(t)) {
      this.#fail(t.start, `expected an attribute (${ATTRIBUTES.join(', ')}), "not" or "("`, found(t));
    }
    const attribute = t.text.toLowerCase() as Attribute;
    if (!ATTRIBUTES.includes(attribute)) {
      const near = suggestion(t.text);
      this.#fail(
        t.start,
        `unknown attribute "${clip(t.text)}"`,
        `${near ? ` (did you mean ${near}?)` : ''}; the attributes are ${ATTRIBUTES.join(', ')}`,
      );
    }
    const o = this.#lexer.next();
    if (o.type !== 'op') {
      this.#fail(o.start, `expected an operator (=, !=, <, <=, >, >=) after ${attribute}`, found(o));
    }
    const op = o.text as Operator;
    const hint = EQUALITY_HINT[attribute];
    if (hint !== undefined && op !== '=' && op !== '!=') {
      this.#fail(o.start, `${attribute} cannot be compared with "${op}"`, `: it takes = or != and ${hint}`);
    }
    const v = this.#lexer.next();
    if ((v.type !== 'word' && v.type !== 'string') || isKeyword(v)) {
      const quote = isKeyword(v) ? ` (to mean the word itself, quote it: "${v.text}")` : '';
      this.#fail(v.start, `expected a value after "${op}"`, found(v) + quote);
    }
    if (TEXT_ATTRIBUTES.has(attribute)) {
      return {
        kind: 'glob',
        attribute: attribute as TextAttribute,
        op: op as Equality,
        pattern: this.#glob(v),
      };
    }
    switch (attribute) {
      case 'mac':
        return { kind: 'mac', attribute, op: op as Equality, prefix: this.#mac(v) };
      case 'ip':
        return { kind: 'ip', attribute, op: op as Equality, ...this.#subnet(v) };
      case 'disk':
      case 'memory':
        return { kind: 'size', attribute, op, ...this.#size(v, attribute) };
      default:
        return { kind: 'count', attribute: 'cores', op, value: this.#count(v) };
    }
  }

  #glob(v: Token): string {
    const bad = globError(v.text);
    if (bad) this.#fail(sourceOf(v, bad.index), `${bad.message} in the glob "${clip(v.text)}"`);
    const pattern = v.text.normalize('NFC');
    const badNfc = globError(pattern);
    if (badNfc) this.#fail(v.start, `${badNfc.message} in the glob "${clip(pattern)}" (in Unicode NFC)`);
    return pattern;
  }

  #mac(v: Token): string {
    const s = v.text;
    const bad = (i: number, what: string): never =>
      this.#fail(
        sourceOf(v, i),
        `${what} in the MAC prefix "${clip(s)}"`,
        ': write hex digit pairs such as 52:54:00, 52-54-00 or 525400',
      );
    if (s === '') bad(0, 'no hex digits');
    const sep = /[:-]/.exec(s);
    if (!sep) {
      const i = s.search(/[^0-9a-f]/i);
      if (i >= 0) bad(i, `"${s[i]}" is not a hex digit`);
      if (s.length > 12) bad(12, 'more than the 12 hex digits of a MAC');
      return s.toLowerCase();
    }
    let at = 0;
    const groups = s.split(sep[0]);
    for (const [n, g] of groups.entries()) {
      if (n >= 6) bad(at - 1, 'more than the 6 bytes of a MAC');
      const other = g.search(/[:-]/);
      if (other >= 0) bad(at + other, `"${sep[0]}" and "${g[other]}" mixed`);
      const i = g.search(/[^0-9a-f]/i);
      if (i >= 0) bad(at + i, `"${g[i]}" is not a hex digit`);
      if (g.length !== 2) bad(at, g === '' ? 'a missing byte' : `"${g}" is not a pair of hex digits`);
      at += g.length + 1;
    }
    return groups.join('').toLowerCase();
  }

  #subnet(v: Token): { family: 4 | 6; address: number[]; prefix: number } {
    const s = v.text;
    const slash = s.indexOf('/');
    const addrText = slash < 0 ? s : s.slice(0, slash);
    const parsed = parseAddress(addrText);
    if (!parsed) {
      this.#fail(
        v.start,
        `"${clip(addrText)}" is not an IPv4 or IPv6 address`,
        ' (write 198.18.0.7 or 198.18.0.0/24)',
      );
    }
    const bits = parsed.length * 8;
    let prefix = bits;
    if (slash >= 0) {
      const len = s.slice(slash + 1);
      if (!/^\d{1,3}$/.test(len) || Number(len) > bits) {
        this.#fail(
          sourceOf(v, slash + 1),
          `bad prefix length "/${clip(len)}"`,
          `: an IPv${bits === 32 ? 4 : 6} subnet takes /0 to /${bits}`,
        );
      }
      prefix = Number(len);
    }
    const net = masked(parsed, prefix);
    if (net.some((b, i) => b !== parsed[i])) {
      this.#fail(
        v.start,
        `${clip(s)} has bits set past its prefix length`,
        `; the subnet is ${formatAddress(net)}/${prefix}`,
      );
    }
    return unmap(net, prefix);
  }

  #size(v: Token, attribute: string): { amount: string; unit: SizeUnit } {
    const m = /^(\d+)(?:\.(\d+))?([a-z]*)$/i.exec(v.text);
    if (!m) {
      this.#fail(
        v.start,
        `"${clip(v.text)}" is not a size for ${attribute}`,
        `: write a number and a unit such as 256GB or 8G; units are ${UNIT_LIST}`,
      );
    }
    const unit = UNITS.get(m[3]!.toLowerCase());
    if (unit === undefined) {
      this.#fail(
        sourceOf(v, v.text.length - m[3]!.length),
        `unknown unit "${clip(m[3]!)}"`,
        `; units are ${UNIT_LIST}`,
      );
    }
    const whole = m[1]!.replace(/^0+(?=\d)/, '');
    const fraction = (m[2] ?? '').replace(/0+$/, '');
    return { amount: fraction === '' ? whole : `${whole}.${fraction}`, unit };
  }

  #count(v: Token): number {
    if (!/^\d+$/.test(v.text) || !Number.isSafeInteger(Number(v.text))) {
      this.#fail(v.start, `"${clip(v.text)}" is not a whole number`, ' (cores counts logical processors)');
    }
    return Number(v.text);
  }
}

/** "disk >= 256 GB": the unit, split off, reads as the start of something else. */
function unitHint(rule: Rule, t: Token): string {
  const last = lastComparison(rule);
  if (last?.kind !== 'size' || t.type !== 'word' || !UNITS.has(t.text.toLowerCase())) return '';
  return ` (write the unit next to the number: ${last.amount}${t.text})`;
}

function lastComparison(r: Rule): Comparison {
  switch (r.kind) {
    case 'and':
    case 'or':
      return lastComparison(r.rules[r.rules.length - 1]!);
    case 'not':
      return lastComparison(r.rule);
    default:
      return r;
  }
}

/** Parses a participation rule; throws E_RULE_INVALID naming the place and the trouble. */
export function parseRule(text: string): Rule {
  if (text.length > RULE_MAX_LENGTH) {
    const chars = [...text];
    if (chars.length > RULE_MAX_LENGTH) {
      const at = chars.slice(0, RULE_MAX_LENGTH).join('').length;
      fail(text, at, `the rule is longer than ${RULE_MAX_LENGTH} characters`, ` (it has ${chars.length})`);
    }
  }
  if (!text.isWellFormed()) {
    const at = [...text].findIndex((c) => /^\p{Cs}$/u.test(c));
    fail(text, [...text].slice(0, Math.max(0, at)).join('').length, 'a lone UTF-16 surrogate');
  }
  return new Parser(text).parse();
}

// ---------------------------------------------------------------------------------------------
// Globs
//
// Matched by hand rather than through a RegExp: `.*a.*a.*a.*b` backtracks in polynomial time of
// a degree that grows with every star, so one rule with a handful of stars would stall the
// server on every join. With each token but the star taking exactly one character, going back
// to the last star only is enough, which bounds a match by pattern length × value length.

type GlobToken =
  | { t: 'star' }
  | { t: 'any' }
  | { t: 'char'; c: string }
  | { t: 'class'; negated: boolean; ranges: Array<[number, number]> };

/** The characters of a string, each with its UTF-16 offset. */
function charsOf(s: string): Array<{ ch: string; at: number }> {
  const out: Array<{ ch: string; at: number }> = [];
  for (let i = 0; i < s.length;) {
    const ch = String.fromCodePoint(s.codePointAt(i)!);
    out.push({ ch, at: i });
    i += ch.length;
  }
  return out;
}

function compileGlob(pattern: string): GlobToken[] | { index: number; message: string } {
  const cs = charsOf(pattern);
  const out: GlobToken[] = [];
  for (let k = 0; k < cs.length; k++) {
    const c = cs[k]!.ch;
    if (c === '*') {
      // Runs of stars mean what one star means.
      if (out.at(-1)?.t !== 'star') out.push({ t: 'star' });
    } else if (c === '?') out.push({ t: 'any' });
    else if (c !== '[') out.push({ t: 'char', c });
    else {
      let j = k + 1;
      const negated = cs[j]?.ch === '!' || cs[j]?.ch === '^';
      if (negated) j++;
      const ranges: Array<[number, number]> = [];
      for (let first = true; ; first = false) {
        const e = cs[j];
        if (!e) return { index: cs[k]!.at, message: 'unclosed "["' };
        if (e.ch === ']' && !first) break;
        const dash = cs[j + 1];
        const to = cs[j + 2];
        const lo = e.ch.codePointAt(0)!;
        if (dash?.ch === '-' && to && to.ch !== ']') {
          const hi = to.ch.codePointAt(0)!;
          if (lo > hi) return { index: e.at, message: `the range ${e.ch}-${to.ch} runs backwards` };
          ranges.push([lo, hi]);
          j += 3;
        } else {
          ranges.push([lo, lo]);
          j++;
        }
      }
      out.push({ t: 'class', negated, ranges });
      k = j;
    }
  }
  return out;
}

function globError(pattern: string): { index: number; message: string } | undefined {
  const g = compileGlob(pattern);
  return Array.isArray(g) ? undefined : g;
}

/** The character and its other-case forms that are single characters too ("ß" has no "SS" here). */
function caseForms(ch: string): string[] {
  return [ch, ch.toLowerCase(), ch.toUpperCase()].filter(
    (f, i, all) => [...f].length === 1 && all.indexOf(f) === i,
  );
}

function sameLetter(a: string, b: string): boolean {
  return a === b || a.toLowerCase() === b.toLowerCase() || a.toUpperCase() === b.toUpperCase();
}

function takes(token: GlobToken, ch: string): boolean {
  switch (token.t) {
    case 'star':
    case 'any':
      return true;
    case 'char':
      return sameLetter(token.c, ch);
    case 'class': {
      const hit = caseForms(ch).some((f) => {
        const cp = f.codePointAt(0)!;
        return token.ranges.some(([lo, hi]) => cp >= lo && cp <= hi);
      });
      return hit !== token.negated;
    }
  }
}

const compiled = new WeakMap<object, GlobToken[]>();

function globMatches(c: Extract<Comparison, { kind: 'glob' }>, value: string): boolean {
  let tokens = compiled.get(c);
  if (!tokens) {
    const g = compileGlob(c.pattern.normalize('NFC'));
    if (!Array.isArray(g)) throw new ServerError('E_RULE_INVALID', `${g.message} in the glob "${c.pattern}"`);
    tokens = g;
    compiled.set(c, tokens);
  }
  const s = [...value.normalize('NFC')];
  let p = 0;
  let i = 0;
  let star = -1;
  let resume = 0;
  while (i < s.length) {
    const t = tokens[p];
    if (t?.t === 'star') {
      star = p++;
      resume = i;
    } else if (t && takes(t, s[i]!)) {
      p++;
      i++;
    } else if (star >= 0) {
      // Let the last star take one more character and try again from there.
      p = star + 1;
      i = ++resume;
    } else return false;
  }
  while (tokens[p]?.t === 'star') p++;
  return p === tokens.length;
}

// ---------------------------------------------------------------------------------------------
// Addresses

function parseIPv4(s: string): number[] | undefined {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(s);
  if (!m) return undefined;
  const parts = m.slice(1);
  // "010" means 8 to some tools and 10 to others: refuse rather than guess.
  if (parts.some((p) => (p.length > 1 && p.startsWith('0')) || Number(p) > 255)) return undefined;
  return parts.map(Number);
}

function parseIPv6(text: string): number[] | undefined {
  let s = text;
  if (!/^[0-9a-f:.]+$/i.test(s) || !s.includes(':')) return undefined;
  if (s.includes('.')) {
    const last = s.lastIndexOf(':');
    const v4 = parseIPv4(s.slice(last + 1));
    if (!v4) return undefined;
    s = `${s.slice(0, last + 1)}${((v4[0]! << 8) | v4[1]!).toString(16)}:${((v4[2]! << 8) | v4[3]!).toString(16)}`;
  }
  const gap = s.indexOf('::');
  if (gap !== s.lastIndexOf('::')) return undefined;
  const split = (part: string) => (part === '' ? [] : part.split(':'));
  let groups: string[];
  if (gap >= 0) {
    const head = split(s.slice(0, gap));
    const tail = split(s.slice(gap + 2));
    if (head.length + tail.length > 7) return undefined;
    groups = [...head, ...Array<string>(8 - head.length - tail.length).fill('0'), ...tail];
  } else {
    groups = s.split(':');
    if (groups.length !== 8) return undefined;
  }
  if (!groups.every((g) => /^[0-9a-f]{1,4}$/i.test(g))) return undefined;
  return groups.flatMap((g) => {
    const n = parseInt(g, 16);
    return [n >> 8, n & 255];
  });
}

/** 4 or 16 bytes, or undefined. */
export function parseAddress(s: string): number[] | undefined {
  return s.includes(':') ? parseIPv6(s) : parseIPv4(s);
}

function masked(bytes: readonly number[], prefix: number): number[] {
  return bytes.map((b, i) => {
    const keep = Math.max(0, Math.min(8, prefix - i * 8));
    return b & ((0xff << (8 - keep)) & 0xff);
  });
}

const MAPPED = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/** IPv4-mapped IPv6 (::ffff:198.18.0.7) is the IPv4 address: Linux shows it so on dual-stack sockets. */
function unmap(bytes: number[], prefix: number): { family: 4 | 6; address: number[]; prefix: number } {
  if (bytes.length === 16 && prefix >= 96 && MAPPED.every((b, i) => bytes[i] === b)) {
    return { family: 4, address: bytes.slice(12), prefix: prefix - 96 };
  }
  return { family: bytes.length === 4 ? 4 : 6, address: bytes, prefix };
}

export function formatAddress(bytes: readonly number[]): string {
  if (bytes.length === 4) return bytes.join('.');
  const groups = Array.from({ length: 8 }, (_, i) => (bytes[2 * i]! << 8) | bytes[2 * i + 1]!);
  // RFC 5952: the longest run of two or more zero groups becomes "::", the first of equals.
  let best = { at: -1, len: 1 };
  for (let i = 0; i < 8;) {
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > best.len) best = { at: i, len: j - i };
    i = j === i ? i + 1 : j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (best.at < 0) return hex.join(':');
  return `${hex.slice(0, best.at).join(':')}::${hex.slice(best.at + best.len).join(':')}`;
}

/** A workstation's address as a rule compares it: zone and prefix length dropped, mapped IPv4 unwrapped. */
function subjectAddress(text: string): { family: 4 | 6; address: number[] } | undefined {
  const bytes = parseAddress(
    text
      .trim()
      .replace(/%.*$/, '')
      .replace(/\/\d+$/, ''),
  );
  return bytes && unmap(bytes, bytes.length * 8);
}

function inSubnet(
  a: { family: 4 | 6; address: number[] },
  net: Extract<Comparison, { kind: 'ip' }>,
): boolean {
  if (a.family !== net.family) return false;
  const m = masked(a.address, net.prefix);
  return m.every((b, i) => b === net.address[i]);
}

// ---------------------------------------------------------------------------------------------
// Matching

/** The MAC's hex digits, lower case ("" when it has none). */
export function macDigits(mac: string): string {
  return mac.toLowerCase().replace(/[^0-9a-f]/g, '');
}

/** Sign of (bytes − amount·unit), exactly: "1.1GB" is 1100000000, not 1100000000.0000002. */
function compareSize(bytes: number, amount: string, unit: SizeUnit): number {
  const [whole, fraction = ''] = amount.split('.');
  const left = BigInt(Number.isFinite(bytes) ? Math.round(bytes) : 0) * 10n ** BigInt(fraction.length);
  const right = BigInt(`${whole}${fraction}`) * UNIT_BYTES[unit];
  return left < right ? -1 : left > right ? 1 : 0;
}

function holds(op: Operator, sign: number): boolean {
  switch (op) {
    case '=':
      return sign === 0;
    case '!=':
      return sign !== 0;
    case '<':
      return sign < 0;
    case '<=':
      return sign <= 0;
    case '>':
      return sign > 0;
    case '>=':
      return sign >= 0;
  }
}

export function matches(rule: Rule, ws: RuleSubject): boolean {
  switch (rule.kind) {
    case 'and':
      return rule.rules.every((r) => matches(r, ws));
    case 'or':
      return rule.rules.some((r) => matches(r, ws));
    case 'not':
      return !matches(rule.rule, ws);
    case 'glob':
      return globMatches(rule, ws[rule.attribute]) === (rule.op === '=');
    case 'mac': {
      const mac = macDigits(ws.mac);
      return (rule.prefix !== '' && mac.length === 12 && mac.startsWith(rule.prefix)) === (rule.op === '=');
    }
    case 'ip': {
      const hit = ws.addresses.some((text) => {
        const a = subjectAddress(text);
        return a !== undefined && inSubnet(a, rule);
      });
      return hit === (rule.op === '=');
    }
    case 'size':
      return holds(
        rule.op,
        compareSize(rule.attribute === 'disk' ? ws.diskBytes : ws.memoryBytes, rule.amount, rule.unit),
      );
    case 'count':
      return holds(rule.op, Math.sign(ws.cores - rule.value));
  }
}

// ---------------------------------------------------------------------------------------------
// Description

function quoted(s: string): string {
  return `"${s.replace(/[\\"]/g, '\\$&')}"`;
}

function valueText(c: Comparison): string {
  switch (c.kind) {
    case 'glob':
      return quoted(c.pattern);
    case 'mac':
      return c.prefix.length % 2 === 0 ? (c.prefix.match(/../g) ?? []).join(':') : c.prefix;
    case 'ip':
      return c.prefix === c.address.length * 8
        ? formatAddress(c.address)
        : `${formatAddress(c.address)}/${c.prefix}`;
    case 'size':
      return `${c.amount}${c.unit}`;
    case 'count':
      return String(c.value);
  }
}

function describe(r: Rule, inside: 'or' | 'and' | 'not' | null): string {
  switch (r.kind) {
    case 'or': {
      const s = r.rules.map((x) => describe(x, 'or')).join(' or ');
      return inside === 'and' || inside === 'not' ? `(${s})` : s;
    }
    case 'and': {
      const s = r.rules.map((x) => describe(x, 'and')).join(' and ');
      return inside === 'not' ? `(${s})` : s;
    }
    case 'not':
      return `not ${describe(r.rule, 'not')}`;
    default:
      return `${r.attribute} ${r.op} ${valueText(r)}`;
  }
}

/** Canonical text: lower-case keywords, single spaces, only the parentheses needed, globs quoted. */
export function describeRule(rule: Rule): string {
  return describe(rule, null);
}
