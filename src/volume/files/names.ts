/**
 * File names are bytes; an image keeps them as strings (JSON). A name that is valid
 * UTF-8, as nearly all are, is kept as the string it reads as. A name that is not (a
 * Latin-1 name from an old archive, a CP437 name from a Windows zip) keeps every byte
 * that is not part of a valid UTF-8 sequence as a lone surrogate U+DC80..U+DCFF, the
 * "surrogateescape" of PEP 383: JSON carries it as \udcXX, no valid name can produce
 * one, and fsPath turns the string back into the very same bytes. Without this, such
 * a name read as U+FFFD and the capture failed on it.
 */
import { isUtf8 } from 'node:buffer';
import { FileVolumeError } from './errors.ts';

/** The string an image keeps for a name (or a symlink target) read as bytes. */
export function nameFromBytes(b: Buffer): string {
  if (isUtf8(b)) return b.toString('utf8');
  let out = '';
  let run = 0;
  let i = 0;
  while (i < b.length) {
    const n = sequenceLength(b, i);
    if (n > 0) {
      i += n;
      continue;
    }
    out += b.toString('utf8', run, i) + String.fromCharCode(0xdc00 | b[i]!);
    i++;
    run = i;
  }
  return out + b.toString('utf8', run, i);
}

/** Length of the valid UTF-8 sequence starting at b[i] (RFC 3629), or 0 if none does. */
function sequenceLength(b: Buffer, i: number): number {
  const c = b[i]!;
  if (c < 0x80) return 1;
  const cont = (k: number, lo = 0x80, hi = 0xbf): boolean =>
    i + k < b.length && b[i + k]! >= lo && b[i + k]! <= hi;
  if (c >= 0xc2 && c <= 0xdf) return cont(1) ? 2 : 0;
  if (c >= 0xe0 && c <= 0xef) {
    // No overlong forms (E0 80..9F) and no UTF-16 surrogates (ED A0..BF).
    const lo = c === 0xe0 ? 0xa0 : 0x80;
    const hi = c === 0xed ? 0x9f : 0xbf;
    return cont(1, lo, hi) && cont(2) ? 3 : 0;
  }
  if (c >= 0xf0 && c <= 0xf4) {
    // No overlong forms (F0 80..8F) and nothing above U+10FFFF (F4 90..).
    const lo = c === 0xf0 ? 0x90 : 0x80;
    const hi = c === 0xf4 ? 0x8f : 0xbf;
    return cont(1, lo, hi) && cont(2) && cont(3) ? 4 : 0;
  }
  return 0;
}

/**
 * What to hand the filesystem for an image path: the string itself when it is well
 * formed (every name that was valid UTF-8), otherwise the exact bytes it stands for.
 * A lone surrogate that no name can produce (outside U+DC80..U+DCFF) is refused: the
 * image did not come from a capture.
 */
export function fsPath(s: string): string | Buffer {
  if (s.isWellFormed()) return s;
  return Buffer.from(bytesOf(s));
}

/** The bytes an image string stands for, as fsPath gives them, always as a Buffer. */
export function nameBytes(s: string): Buffer {
  return s.isWellFormed() ? Buffer.from(s, 'utf8') : Buffer.from(bytesOf(s));
}

function bytesOf(s: string): Uint8Array {
  const parts: Buffer[] = [];
  let run = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0xd800 || c > 0xdfff) continue;
    if (c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      i++; // a proper pair: an ordinary character outside the BMP
      continue;
    }
    if (c < 0xdc80 || c > 0xdcff) {
      throw new FileVolumeError(
        'E_NAME_INVALID',
        `the name ${JSON.stringify(s)} holds a lone UTF-16 surrogate that stands for no byte`,
        { path: s },
      );
    }
    parts.push(Buffer.from(s.slice(run, i), 'utf8'), Buffer.of(c & 0xff));
    run = i + 1;
  }
  parts.push(Buffer.from(s.slice(run), 'utf8'));
  return Buffer.concat(parts);
}

/** Characters a name shows escaped to people: bytes that are not UTF-8, and control characters. */
// eslint-disable-next-line no-control-regex -- control characters are what it looks for
const ESCAPED = /[\udc80-\udcff\x00-\x1f\x7f]/u;
const ESCAPED_ALL = new RegExp(ESCAPED.source, 'gu');

/**
 * A name for people, on one line: bytes that are not UTF-8 and control characters show
 * as \xNN (\n and \t as such). --json output keeps the exact string instead.
 */
export function displayName(s: string): string {
  if (!ESCAPED.test(s)) return s;
  return s.replace(ESCAPED_ALL, (c) => {
    if (c === '\n') return '\\n';
    if (c === '\t') return '\\t';
    return `\\x${(c.charCodeAt(0) & 0xff).toString(16).toUpperCase().padStart(2, '0')}`;
  });
}

/**
 * A path typed the way displayName shows it ('caf\xE9.txt'): \xNN, \n and \t become the
 * bytes and characters they stand for. Callers try it only when the literal path names
 * nothing, since a name may itself hold a backslash.
 */
export function parseDisplayName(s: string): string {
  return s.replace(/\\(?:x([0-9a-fA-F]{2})|n|t)/g, (all, hex: string | undefined) => {
    if (hex === undefined) return all === '\\n' ? '\n' : '\t';
    const byte = parseInt(hex, 16);
    // Bytes of a name that is not UTF-8 are lone surrogates (see nameFromBytes); below 0x80 a byte is its character.
    return String.fromCharCode(byte >= 0x80 ? 0xdc00 | byte : byte);
  });
}
