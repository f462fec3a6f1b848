/**
 * The computer name in a Windows answer file (unattend.xml): the <ComputerName> of the
 * Microsoft-Windows-Shell-Setup component in the specialize pass, which Windows setup applies
 * on the first boot after sysprep. The file is edited where it must change and nowhere else:
 * a small scanner finds the elements (skipping comments, CDATA, processing instructions and
 * the DOCTYPE, reading quoted attribute values whole), and only the name's text, or one
 * inserted element, is spliced in. Everything else (other components, passwords, comments,
 * indentation, line endings, the byte-order mark and the UTF-16 encoding some tools save in)
 * stays as it was.
 */

interface XmlElement {
  /** Local name (without a namespace prefix). */
  name: string;
  /** The name as written, prefix included. */
  qname: string;
  attrs: Map<string, string>;
  /** Offsets in the text: the start tag, and the end tag (equal to the start tag's for an empty-element tag). */
  openStart: number;
  openEnd: number;
  closeStart: number;
  closeEnd: number;
  selfClosing: boolean;
  parent: XmlElement | undefined;
  children: XmlElement[];
}

export class AnswerFileError extends Error {}

function skipTo(text: string, from: number, end: string, what: string): number {
  const at = text.indexOf(end, from);
  if (at < 0) throw new AnswerFileError(`unterminated ${what} at offset ${from}`);
  return at + end.length;
}

/** The element tree of `text` (a document with one root element). */
function parseElements(text: string): XmlElement {
  const stack: XmlElement[] = [];
  let root: XmlElement | undefined;
  let i = 0;
  while ((i = text.indexOf('<', i)) >= 0) {
    if (text.startsWith('<!--', i)) i = skipTo(text, i + 4, '-->', 'comment');
    else if (text.startsWith('<![CDATA[', i)) i = skipTo(text, i + 9, ']]>', 'CDATA section');
    else if (text.startsWith('<?', i)) i = skipTo(text, i + 2, '?>', 'processing instruction');
    else if (text.startsWith('<!', i)) i = skipTo(text, i + 2, '>', 'declaration');
    else if (text[i + 1] === '/') {
      const end = skipTo(text, i, '>', 'end tag');
      const qname = text.slice(i + 2, end - 1).trim();
      const open = stack.pop();
      if (!open || open.qname !== qname)
        throw new AnswerFileError(
          `</${qname}> at offset ${i} closes ${open ? `<${open.qname}>` : 'nothing'}`,
        );
      open.closeStart = i;
      open.closeEnd = end;
      i = end;
    } else {
      const el = startTag(text, i);
      el.parent = stack.at(-1);
      if (el.parent) el.parent.children.push(el);
      else if (root) throw new AnswerFileError(`a second root element <${el.qname}> at offset ${i}`);
      else root = el;
      if (!el.selfClosing) stack.push(el);
      i = el.openEnd;
    }
  }
  if (stack.length > 0) throw new AnswerFileError(`<${stack.at(-1)!.qname}> is never closed`);
  if (!root) throw new AnswerFileError('no element at all');
  return root;
}

function startTag(text: string, at: number): XmlElement {
  const nameMatch = /^<([A-Za-z_][\w.:-]*)/.exec(text.slice(at, at + 256));
  if (!nameMatch) throw new AnswerFileError(`a malformed tag at offset ${at}`);
  const qname = nameMatch[1]!;
  const attrs = new Map<string, string>();
  let i = at + nameMatch[0].length;
  for (;;) {
    while (/\s/.test(text[i] ?? '')) i++;
    if (text.startsWith('/>', i) || text[i] === '>') break;
    const attr = /^([A-Za-z_][\w.:-]*)\s*=\s*(["'])/.exec(text.slice(i, i + 512));
    if (!attr) throw new AnswerFileError(`a malformed attribute in <${qname}> at offset ${i}`);
    const valueStart = i + attr[0].length;
    const valueEnd = text.indexOf(attr[2]!, valueStart);
    if (valueEnd < 0) throw new AnswerFileError(`an unterminated attribute value in <${qname}>`);
    attrs.set(localName(attr[1]!), text.slice(valueStart, valueEnd));
    i = valueEnd + 1;
  }
  const selfClosing = text[i] === '/';
  const openEnd = i + (selfClosing ? 2 : 1);
  return {
    name: localName(qname),
    qname,
    attrs,
    openStart: at,
    openEnd,
    closeStart: openEnd,
    closeEnd: openEnd,
    selfClosing,
    parent: undefined,
    children: [],
  };
}

function localName(qname: string): string {
  return qname.slice(qname.indexOf(':') + 1);
}

function prefixOf(qname: string): string {
  const colon = qname.indexOf(':');
  return colon < 0 ? '' : qname.slice(0, colon + 1);
}

function escapeText(s: string): string {
  return s.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;');
}

function unescapeText(s: string): string {
  return s
    .replaceAll('&lt;', '<')
    .replaceAll('&gt;', '>')
    .replaceAll('&quot;', '"')
    .replaceAll('&apos;', "'")
    .replaceAll('&amp;', '&');
}

/** The whitespace that starts the line `offset` is on. */
function indentAt(text: string, offset: number): string {
  const lineStart = text.lastIndexOf('\n', offset - 1) + 1;
  return /^[ \t]*/.exec(text.slice(lineStart, offset))![0];
}

function eolOf(text: string): string {
  return text.includes('\r\n') ? '\r\n' : '\n';
}

/** What one level of indentation is in this file: the difference between a child's indent and its parent's. */
function indentStep(text: string, root: XmlElement): string {
  const child = root.children[0];
  if (child) {
    const outer = indentAt(text, root.openStart);
    const inner = indentAt(text, child.openStart);
    if (inner.startsWith(outer) && inner.length > outer.length) return inner.slice(outer.length);
  }
  return '    ';
}

/** Text to put right after `parent`'s start tag so that `markup` is its first child, indented like its children. */
function asFirstChild(text: string, parent: XmlElement, markup: string, step: string): string {
  const eol = eolOf(text);
  const first = parent.children[0];
  if (first) {
    const gap = text.slice(parent.openEnd, first.openStart);
    if (/^\s*$/.test(gap) && gap.length > 0) return `${gap}${markup}`;
  }
  return `${eol}${indentAt(text, parent.openStart)}${step}${markup}`;
}

export type ComputerNameEdit =
  /** Its <ComputerName> now says the new name (`previous` is what it said). */
  | { action: 'replaced'; previous: string }
  /** The Shell-Setup component had no <ComputerName>: one was added. */
  | { action: 'added' }
  /** The specialize pass had no Shell-Setup component: one was added (architecture taken from another component). */
  | { action: 'component-added'; architecture: string }
  /** The file had no specialize pass: one was added. */
  | { action: 'pass-added'; architecture: string };

const SHELL_SETUP = 'Microsoft-Windows-Shell-Setup';
const PASS_ORDER = [
  'windowsPE',
  'offlineServicing',
  'generalize',
  'specialize',
  'auditSystem',
  'auditUser',
  'oobeSystem',
];

/**
 * `xml` (an unattend.xml's text) with the specialize pass's computer name set to `name`.
 * Throws AnswerFileError when the text is not an answer file (no <unattend> root, or
 * markup the scanner cannot follow); nothing is guessed then.
 */
export function setComputerName(xml: string, name: string): { xml: string; edit: ComputerNameEdit } {
  const root = parseElements(xml);
  if (root.name !== 'unattend')
    throw new AnswerFileError(`its root element is <${root.qname}>, not <unattend>`);
  const p = prefixOf(root.qname);
  const step = indentStep(xml, root);
  const eol = eolOf(xml);
  const splice = (from: number, to: number, insert: string) => xml.slice(0, from) + insert + xml.slice(to);
  const value = escapeText(name);
  const passes = root.children.filter((c) => c.name === 'settings');
  const specialize = passes.find((s) => s.attrs.get('pass') === 'specialize');
  const architecture = findAttr(root, 'component', 'processorArchitecture') ?? DEFAULT_ARCHITECTURE;
  const component = (indent: string) =>
    [
      `<${p}component name="${SHELL_SETUP}" processorArchitecture="${architecture}" publicKeyToken="31bf3856ad364e35" language="neutral" versionScope="nonSxS">`,
      `${indent}${step}<${p}ComputerName>${value}</${p}ComputerName>`,
      `${indent}</${p}component>`,
    ].join(eol);

  if (specialize) {
    const shell = specialize.children.find(
      (c) => c.name === 'component' && c.attrs.get('name') === SHELL_SETUP,
    );
    if (shell) {
      const cn = shell.children.find((c) => c.name === 'ComputerName');
      if (cn) {
        if (cn.selfClosing) {
          return {
            xml: splice(cn.openStart, cn.openEnd, `<${cn.qname}>${value}</${cn.qname}>`),
            edit: { action: 'replaced', previous: '' },
          };
        }
        const previous = unescapeText(xml.slice(cn.openEnd, cn.closeStart)).trim();
        return { xml: splice(cn.openEnd, cn.closeStart, value), edit: { action: 'replaced', previous } };
      }
      const markup = `<${prefixOf(shell.qname)}ComputerName>${value}</${prefixOf(shell.qname)}ComputerName>`;
      if (shell.selfClosing) {
        const indent = indentAt(xml, shell.openStart);
        const open = xml.slice(shell.openStart, shell.openEnd - 2).trimEnd();
        return {
          xml: splice(
            shell.openStart,
            shell.openEnd,
            `${open}>${eol}${indent}${step}${markup}${eol}${indent}</${shell.qname}>`,
          ),
          edit: { action: 'added' },
        };
      }
      return {
        xml: splice(shell.openEnd, shell.openEnd, asFirstChild(xml, shell, markup, step)),
        edit: { action: 'added' },
      };
    }
    const indent = indentAt(xml, specialize.openStart) + step;
    if (specialize.selfClosing) {
      const outer = indentAt(xml, specialize.openStart);
      const open = xml.slice(specialize.openStart, specialize.openEnd - 2).trimEnd();
      return {
        xml: splice(
          specialize.openStart,
          specialize.openEnd,
          `${open}>${eol}${indent}${component(indent)}${eol}${outer}</${specialize.qname}>`,
        ),
        edit: { action: 'component-added', architecture },
      };
    }
    return {
      xml: splice(
        specialize.openEnd,
        specialize.openEnd,
        asFirstChild(xml, specialize, component(indent), step),
      ),
      edit: { action: 'component-added', architecture },
    };
  }

  if (root.selfClosing) throw new AnswerFileError('its <unattend> element is empty');
  const outer = indentAt(xml, root.openStart) + step;
  const settings = [
    `<${p}settings pass="specialize">`,
    `${outer}${step}${component(outer + step)}`,
    `${outer}</${p}settings>`,
  ].join(eol);
  // Windows reads the passes in any order; the usual one is kept for whoever reads the file next.
  const later = passes.find(
    (s) => PASS_ORDER.indexOf(s.attrs.get('pass') ?? '') > PASS_ORDER.indexOf('specialize'),
  );
  if (later) {
    return {
      xml: splice(later.openStart, later.openStart, `${settings}${eol}${indentAt(xml, later.openStart)}`),
      edit: { action: 'pass-added', architecture },
    };
  }
  const lastChild = root.children.at(-1);
  const at = lastChild ? lastChild.closeEnd : root.openEnd;
  return {
    xml: splice(at, at, `${eol}${outer}${settings}`),
    edit: { action: 'pass-added', architecture },
  };
}

/** Where nothing in the file names one: the architecture of nearly every Windows PC. */
const DEFAULT_ARCHITECTURE = 'amd64';

function findAttr(el: XmlElement, name: string, attr: string): string | undefined {
  if (el.name === name && el.attrs.has(attr)) return el.attrs.get(attr);
  for (const c of el.children) {
    const v = findAttr(c, name, attr);
    if (v !== undefined) return v;
  }
  return undefined;
}

/** The computer name the specialize pass sets, or undefined (none, or not an answer file). */
export function computerNameOf(xml: string): string | undefined {
  let root: XmlElement;
  try {
    root = parseElements(xml);
  } catch {
    return undefined;
  }
  const cn = root.children
    .find((c) => c.name === 'settings' && c.attrs.get('pass') === 'specialize')
    ?.children.find((c) => c.name === 'component' && c.attrs.get('name') === SHELL_SETUP)
    ?.children.find((c) => c.name === 'ComputerName');
  return cn && !cn.selfClosing ? unescapeText(xml.slice(cn.openEnd, cn.closeStart)).trim() : undefined;
}

/** An answer file's bytes as text, and how to turn the edited text back into bytes of the same encoding. */
export function decodeAnswerFile(bytes: Buffer): { text: string; encode: (text: string) => Buffer } {
  if (bytes[0] === 0xff && bytes[1] === 0xfe) {
    return {
      text: bytes.subarray(2).toString('utf16le'),
      encode: (t) => Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(t, 'utf16le')]),
    };
  }
  if (bytes[0] === 0xfe && bytes[1] === 0xff) {
    const swapped = Buffer.from(bytes.subarray(2)).swap16();
    return {
      text: swapped.toString('utf16le'),
      encode: (t) => Buffer.concat([Buffer.from([0xfe, 0xff]), Buffer.from(t, 'utf16le').swap16()]),
    };
  }
  const bom = bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf;
  return {
    text: bytes.subarray(bom ? 3 : 0).toString('utf8'),
    encode: (t) => Buffer.concat([Buffer.from(bom ? [0xef, 0xbb, 0xbf] : []), Buffer.from(t, 'utf8')]),
  };
}
