import assert from 'node:assert/strict';
import { BlockList } from 'node:net';
import { test } from 'node:test';

import fc from 'fast-check';

import type { Inventory } from '../../src/api/schemas.ts';
import { ServerError } from '../../src/server/errors.ts';
import {
  describeRule,
  formatAddress,
  matches,
  parseAddress,
  parseRule,
  RULE_MAX_DEPTH,
  RULE_MAX_LENGTH,
  subjectOf,
  type Rule,
  type RuleSubject,
} from '../../src/server/rules.ts';

const GiB = 1024 ** 3;

const ws: RuleSubject = {
  name: 'lab1-07',
  mac: '52:54:00:12:34:56',
  addresses: ['198.18.0.7', '10.1.2.3'],
  diskBytes: 256_060_514_304,
  memoryBytes: 8 * GiB,
  cores: 8,
  cpu: 'Intel(R) Core(TM) i5-8500 CPU @ 3.00GHz',
  vendor: 'Dell Inc.',
  model: 'OptiPlex 7060',
  serial: 'CZC1234XYZ',
};

const yes = (rule: string, subject: Partial<RuleSubject> = {}) =>
  assert.equal(matches(parseRule(rule), { ...ws, ...subject }), true, `${rule} should match`);
const no = (rule: string, subject: Partial<RuleSubject> = {}) =>
  assert.equal(matches(parseRule(rule), { ...ws, ...subject }), false, `${rule} should not match`);

/** The ServerError a rule raises: its code, status and details checked on the way. */
function refusal(
  rule: string,
): ServerError & { details: { position: number; line: number; column: number } } {
  try {
    parseRule(rule);
  } catch (err) {
    assert.ok(err instanceof ServerError, String(err));
    assert.equal(err.code, 'E_RULE_INVALID');
    assert.equal(err.status, 400);
    assert.equal(err.details.rule, rule);
    return err as ServerError & { details: { position: number; line: number; column: number } };
  }
  assert.fail(`${JSON.stringify(rule)} parsed`);
}

// ---------------------------------------------------------------------------------------------
// The grammar

test('a comparison of each attribute parses to its tree', () => {
  const cases: Array<[string, Rule]> = [
    ['name = "lab1-*"', { kind: 'glob', attribute: 'name', op: '=', pattern: 'lab1-*' }],
    ['cpu != *i5*', { kind: 'glob', attribute: 'cpu', op: '!=', pattern: '*i5*' }],
    ['vendor = Dell*', { kind: 'glob', attribute: 'vendor', op: '=', pattern: 'Dell*' }],
    ['model = "OptiPlex 70?0"', { kind: 'glob', attribute: 'model', op: '=', pattern: 'OptiPlex 70?0' }],
    ['serial = CZC*', { kind: 'glob', attribute: 'serial', op: '=', pattern: 'CZC*' }],
    ['mac = 52:54:00', { kind: 'mac', attribute: 'mac', op: '=', prefix: '525400' }],
    [
      'ip = 198.18.0.0/24',
      { kind: 'ip', attribute: 'ip', op: '=', family: 4, address: [198, 18, 0, 0], prefix: 24 },
    ],
    ['disk >= 256GB', { kind: 'size', attribute: 'disk', op: '>=', amount: '256', unit: 'GB' }],
    ['memory < 8G', { kind: 'size', attribute: 'memory', op: '<', amount: '8', unit: 'G' }],
    ['cores > 4', { kind: 'count', attribute: 'cores', op: '>', value: 4 }],
  ];
  for (const [text, tree] of cases) assert.deepEqual(parseRule(text), tree, text);
});

test('every operator parses, with or without spaces around it', () => {
  for (const op of ['=', '!=', '<', '<=', '>', '>=']) {
    const tree = { kind: 'count', attribute: 'cores', op, value: 4 };
    assert.deepEqual(parseRule(`cores ${op} 4`), tree);
    assert.deepEqual(parseRule(`cores${op}4`), tree);
  }
  assert.deepEqual(parseRule('name!=x'), parseRule('name != "x"'));
});

test('keywords and attribute names are case-insensitive; values keep their case', () => {
  assert.deepEqual(
    parseRule('NOT Name = Lab* AND CORES >= 2 Or Mac = AA'),
    parseRule('not name = Lab* and cores >= 2 or mac = aa'),
  );
  assert.equal((parseRule('name = LAB') as { pattern: string }).pattern, 'LAB');
});

test('a value is a bare word or a double-quoted string with \\" and \\\\ escapes', () => {
  assert.deepEqual(parseRule('name = lab1'), parseRule('name = "lab1"'));
  assert.deepEqual(parseRule('name = "a \\"b\\" \\\\c"'), {
    kind: 'glob',
    attribute: 'name',
    op: '=',
    pattern: 'a "b" \\c',
  });
  // Only the characters the grammar needs end a word: globs, MACs, subnets and units fit in one.
  assert.equal((parseRule('name = lab[!0-3]?-*.x') as { pattern: string }).pattern, 'lab[!0-3]?-*.x');
  assert.equal((parseRule('name = a!b') as { pattern: string }).pattern, 'a!b');
  assert.deepEqual(parseRule('name = ""'), { kind: 'glob', attribute: 'name', op: '=', pattern: '' });
  // A keyword is a value only in quotes.
  assert.equal((parseRule('name = "and"') as { pattern: string }).pattern, 'and');
  // Attribute names are ordinary words after an operator.
  assert.equal((parseRule('name = disk') as { pattern: string }).pattern, 'disk');
});

test('white space of any kind separates tokens, lines included', () => {
  assert.deepEqual(parseRule('\tname = a\n  and\r\n cores > 1  '), parseRule('name = a and cores > 1'));
});

const A = { kind: 'glob', attribute: 'name', op: '=', pattern: 'a' } as const;
const B = { kind: 'glob', attribute: 'name', op: '=', pattern: 'b' } as const;
const C = { kind: 'glob', attribute: 'name', op: '=', pattern: 'c' } as const;
const D = { kind: 'glob', attribute: 'name', op: '=', pattern: 'd' } as const;

test('precedence: not binds tighter than and, and tighter than or', () => {
  assert.deepEqual(parseRule('name = a or name = b and name = c'), {
    kind: 'or',
    rules: [A, { kind: 'and', rules: [B, C] }],
  });
  assert.deepEqual(parseRule('name = a and name = b or name = c and name = d'), {
    kind: 'or',
    rules: [
      { kind: 'and', rules: [A, B] },
      { kind: 'and', rules: [C, D] },
    ],
  });
  assert.deepEqual(parseRule('not name = a and name = b'), {
    kind: 'and',
    rules: [{ kind: 'not', rule: A }, B],
  });
  assert.deepEqual(parseRule('not name = a or name = b'), {
    kind: 'or',
    rules: [{ kind: 'not', rule: A }, B],
  });
  assert.deepEqual(parseRule('not not name = a'), { kind: 'not', rule: { kind: 'not', rule: A } });
});

test('parentheses group, and redundant ones leave no trace', () => {
  assert.deepEqual(parseRule('(name = a or name = b) and name = c'), {
    kind: 'and',
    rules: [{ kind: 'or', rules: [A, B] }, C],
  });
  assert.deepEqual(parseRule('not (name = a and name = b)'), {
    kind: 'not',
    rule: { kind: 'and', rules: [A, B] },
  });
  assert.deepEqual(parseRule('((name = a))'), A);
  assert.deepEqual(parseRule('name = a and (name = b and name = c)'), { kind: 'and', rules: [A, B, C] });
  assert.deepEqual(parseRule('(name = a or name = b) or name = c'), { kind: 'or', rules: [A, B, C] });
});

test('precedence decides what matches, not just the shape', () => {
  const s = { name: 'x', cores: 8 };
  // or(false, and(true, false)) = false; read left to right it would be true.
  no('name = x or name = y and cores < 2', { name: 'z' });
  yes('name = x or name = y and cores < 2', s);
  yes('(name = x or name = y) and cores > 2', s);
  no('(name = x or name = y) and cores < 2', s);
  no('not name = x and cores > 2', s);
  yes('not (name = x and cores < 2)', s);
  yes('not not name = x', s);
});

test('nesting up to the limit parses; one more level is refused where it begins', () => {
  const deep = (n: number) => `${'('.repeat(n)}name = a${')'.repeat(n)}`;
  assert.deepEqual(parseRule(deep(RULE_MAX_DEPTH)), A);
  const err = refusal(deep(RULE_MAX_DEPTH + 1));
  assert.match(err.message, /^the rule nests deeper than 32 levels at column 33/);
  assert.equal(err.details.position, RULE_MAX_DEPTH);
  assert.deepEqual(
    parseRule(`${'not '.repeat(RULE_MAX_DEPTH)}name = a`),
    parseRule(`${'not '.repeat(RULE_MAX_DEPTH)}name = a`),
  );
  assert.equal(refusal(`${'not '.repeat(RULE_MAX_DEPTH + 1)}name = a`).details.position, 4 * RULE_MAX_DEPTH);
  // A long chain is flat, not deep.
  const chain = Array.from({ length: 100 }, () => 'cores > 1').join(' and ');
  assert.equal((parseRule(chain) as { rules: Rule[] }).rules.length, 100);
});

test('the length limit counts characters, not UTF-16 units', () => {
  const fill = (n: number, c: string) => `name = "${c.repeat(n - 9)}"`;
  assert.equal(fill(RULE_MAX_LENGTH, 'a').length, RULE_MAX_LENGTH);
  parseRule(fill(RULE_MAX_LENGTH, 'a'));
  parseRule(fill(RULE_MAX_LENGTH, '😀'));
  const err = refusal(fill(RULE_MAX_LENGTH + 1, 'a'));
  assert.match(err.message, /^the rule is longer than 2000 characters at column 2001 \(it has 2001\)/);
  assert.equal(err.details.position, RULE_MAX_LENGTH);
  assert.equal(refusal(fill(RULE_MAX_LENGTH + 1, '😀')).details.position, 8 + 2 * (RULE_MAX_LENGTH + 1 - 9));
});

// ---------------------------------------------------------------------------------------------
// Errors

/** [rule, message start, UTF-16 position]: each message names the column of that position. */
const ERRORS: Array<[string, RegExp, number]> = [
  ['', /^the rule is empty at column 1/, 0],
  ['   ', /^the rule is empty at column 4/, 3],
  ['name = "x" and mac =', /^expected a value after "=" at column 21, found the end of the rule/, 20],
  ['name = (', /^expected a value after "=" at column 8, found "\("/, 7],
  [
    'name = and',
    /^expected a value after "=" at column 8, found "and" \(to mean the word itself, quote it: "and"\)/,
    7,
  ],
  ['name = OR', /^expected a value after "=" at column 8, found "OR"/, 7],
  [
    'nmae = x',
    /^unknown attribute "nmae" at column 1 \(did you mean name\?\); the attributes are name, mac, ip, disk, memory, cores, cpu, vendor, model, serial/,
    0,
  ],
  [
    'cores > 1 and ram >= 8G',
    /^unknown attribute "ram" at column 15 \(did you mean memory\?\); the attributes are/,
    14,
  ],
  ['colour = red', /^unknown attribute "colour" at column 1; the attributes are/, 0],
  [
    '"lab*" = name',
    /^expected an attribute \(name, mac, .*serial\), "not" or "\(" at column 1, found the string "lab\*"/,
    0,
  ],
  ['name = a and', /^expected an attribute .* at column 13, found the end of the rule/, 12],
  ['name = a and or cores > 1', /^expected an attribute .* at column 14, found "or"/, 13],
  ['()', /^expected an attribute .* at column 2, found "\)"/, 1],
  ['= 5', /^expected an attribute .* at column 1, found "="/, 0],
  ['name lab1', /^expected an operator \(=, !=, <, <=, >, >=\) after name at column 6, found "lab1"/, 5],
  ['name', /^expected an operator .* after name at column 5, found the end of the rule/, 4],
  [
    'name < 5',
    /^name cannot be compared with "<" at column 6: it takes = or != and a glob such as "lab1-\*"/,
    5,
  ],
  ['vendor >= D', /^vendor cannot be compared with ">=" at column 8: it takes = or !=/, 7],
  ['mac > 52', /^mac cannot be compared with ">" at column 5: it takes = or != and a MAC prefix/, 4],
  [
    'ip <= 10.0.0.0/8',
    /^ip cannot be compared with "<=" at column 4: it takes = or != and an address or subnet/,
    3,
  ],
  ['name = a b', /^expected "and", "or" or the end of the rule at column 10, found "b"/, 9],
  ['name = a)', /^unexpected "\)" at column 9: no "\(" is open/, 8],
  ['(name = a', /^expected "\)" at column 10 to close the "\(" at column 1, found the end of the rule/, 9],
  ['(name = a cores > 1)', /^expected "\)" at column 11 to close the "\(" at column 1, found "cores"/, 10],
  [
    'disk >= 256 GB',
    /^expected "and", "or" or the end of the rule at column 13, found "GB" \(write the unit next to the number: 256GB\)/,
    12,
  ],
  ['(memory > 8 g)', /found "g" \(write the unit next to the number: 8g\)/, 12],
  ['name = "abc', /^unclosed string \(no closing "\) at column 8/, 7],
  ['name = "a\\nb"', /^unknown escape \\n in a string at column 10; only \\" and \\\\ are escapes/, 9],
  ['name = "a\\', /^unknown escape \\ in a string at column 10/, 9],
  ['name = "a\tb"', /^control character U\+0009 in a string at column 10/, 9],
  ['name = a\u0007b', /^control character U\+0007 at column 9/, 8],
  ["name = 'lab*'", /^a string takes double quotes \("…"\), not ' at column 8/, 7],
  ['name = "lab[1-"', /^unclosed "\[" in the glob "lab\[1-" at column 12/, 11],
  ['name = lab[z-a]', /^the range z-a runs backwards in the glob "lab\[z-a\]" at column 12/, 11],
  ['name = "\\"x[]"', /^unclosed "\[" in the glob ""x\[\]" at column 12/, 11],
  [
    'mac = ""',
    /^no hex digits in the MAC prefix "" at column 8: write hex digit pairs such as 52:54:00, 52-54-00 or 525400/,
    7,
  ],
  ['mac = 52:5g:00', /^"g" is not a hex digit in the MAC prefix "52:5g:00" at column 11/, 10],
  ['mac = 52:54-00', /^":" and "-" mixed in the MAC prefix "52:54-00" at column 12/, 11],
  ['mac = 52:5:00', /^"5" is not a pair of hex digits in the MAC prefix "52:5:00" at column 10/, 9],
  ['mac = 52::00', /^a missing byte in the MAC prefix "52::00" at column 10/, 9],
  ['mac = 52:54:', /^a missing byte in the MAC prefix "52:54:" at column 13/, 12],
  [
    'mac = 0123456789abc',
    /^more than the 12 hex digits of a MAC in the MAC prefix "0123456789abc" at column 19/,
    18,
  ],
  ['mac = 01:23:45:67:89:ab:cd', /^more than the 6 bytes of a MAC in the MAC prefix .* at column 24/, 23],
  ['mac = 52.54.00', /^"\." is not a hex digit in the MAC prefix "52\.54\.00" at column 9/, 8],
  [
    'ip = 198.18.0.256',
    /^"198\.18\.0\.256" is not an IPv4 or IPv6 address at column 6 \(write 198\.18\.0\.7 or 198\.18\.0\.0\/24\)/,
    5,
  ],
  ['ip = 198.18.0', /^"198\.18\.0" is not an IPv4 or IPv6 address at column 6/, 5],
  ['ip = 010.0.0.1', /^"010\.0\.0\.1" is not an IPv4 or IPv6 address/, 5],
  ['ip = lab1', /^"lab1" is not an IPv4 or IPv6 address/, 5],
  ['ip = 1::2::3', /^"1::2::3" is not an IPv4 or IPv6 address/, 5],
  ['ip = 198.18.0.0/33', /^bad prefix length "\/33" at column 17: an IPv4 subnet takes \/0 to \/32/, 16],
  ['ip = 2001:db8::/129', /^bad prefix length "\/129" at column 17: an IPv6 subnet takes \/0 to \/128/, 16],
  ['ip = 198.18.0.0/', /^bad prefix length "\/" at column 17/, 16],
  ['ip = 198.18.0.0/2x', /^bad prefix length "\/2x" at column 17/, 16],
  [
    'ip = 198.18.0.5/24',
    /^198\.18\.0\.5\/24 has bits set past its prefix length at column 6; the subnet is 198\.18\.0\.0\/24/,
    5,
  ],
  [
    'ip = 2001:db8::1/64',
    /^2001:db8::1\/64 has bits set past its prefix length at column 6; the subnet is 2001:db8::\/64/,
    5,
  ],
  [
    'disk >= big',
    /^"big" is not a size for disk at column 9: write a number and a unit such as 256GB or 8G; units are B, K, M, G, T \(powers of 1024\) or KB, MB, GB, TB \(powers of 1000\)/,
    8,
  ],
  ['memory > -1G', /^"-1G" is not a size for memory at column 10/, 9],
  ['disk > .5T', /^"\.5T" is not a size for disk/, 7],
  ['disk > 1e3', /^"1e3" is not a size for disk at column 8/, 7],
  ['disk > 8Gx', /^unknown unit "Gx" at column 9; units are B, K, M/, 8],
  ['disk >= 256XB', /^unknown unit "XB" at column 12/, 11],
  ['disk >= 1constructor', /^unknown unit "constructor" at column 10/, 9],
  ['cores >= 4.5', /^"4\.5" is not a whole number at column 10 \(cores counts logical processors\)/, 9],
  ['cores >= 4K', /^"4K" is not a whole number at column 10/, 9],
  ['cores >= 99999999999999999', /^"99999999999999999" is not a whole number/, 9],
  ['name = a\uD800', /^a lone UTF-16 surrogate at column 9/, 8],
];

test('every refusal names the trouble, its column, and shows a caret under it', () => {
  for (const [rule, message, position] of ERRORS) {
    const err = refusal(rule);
    assert.match(err.message, message, rule);
    assert.equal(err.details.position, position, `${rule}: position`);
    assert.equal(err.details.line, 1);
    assert.equal(err.details.column, position + 1, `${rule}: column`);
    const [, shown, caret] = err.message.split('\n');
    assert.equal(shown, `  ${rule.replaceAll('\t', ' ').replaceAll('\u0007', ' ')}`, rule);
    assert.equal(caret, `  ${' '.repeat(position)}^`, rule);
  }
});

test('an error in a long rule shows the stretch around it', () => {
  const rule = `name = "${'a'.repeat(200)}" and foo = 1 and ${'cores > 1 and '.repeat(10)}cores > 1`;
  const err = refusal(rule);
  const [first, shown, caret] = err.message.split('\n');
  assert.match(first!, /^unknown attribute "foo" at column 215/);
  assert.ok(shown!.startsWith('  …') && shown!.endsWith('…'), shown);
  assert.equal([...shown!].length, 2 + 72 + 2);
  assert.equal([...shown!][caret!.length - 1], 'f');
});

test('an error on a later line names the line and its column, and shows that line', () => {
  const err = refusal('name = "lab1-*"\n  and (mem >= 8G\n  or cores > 4)');
  assert.match(err.message, /^unknown attribute "mem" at line 2, column 8 \(did you mean memory\?\)/);
  assert.deepEqual([err.details.line, err.details.column, err.details.position], [2, 8, 23]);
  assert.deepEqual(err.message.split('\n').slice(1), ['    and (mem >= 8G', '         ^']);
});

test('columns count characters, so the caret stays under the trouble after wide or composed letters', () => {
  const err = refusal('name = "Ünïcødé-😀😀" and cpu < 1');
  assert.equal(err.details.column, 29);
  assert.equal(err.details.position, 30);
  const [, shown, caret] = err.message.split('\n');
  assert.equal([...shown!][caret!.length - 1], '<');
});

// ---------------------------------------------------------------------------------------------
// Globs

test('a glob matches the whole value: * any run, ? one character, [..] one of', () => {
  yes('name = lab1-*');
  yes('name = *');
  yes('name = lab?-0?');
  yes('name = lab[0-9]-[0-9][0-9]');
  yes('name = lab[123]-*');
  no('name = lab[23]-*');
  yes('name = lab[!23]-*');
  yes('name = lab[^23]-*');
  no('name = lab[!1]-*');
  no('name = lab1'); // no implicit prefix
  no('name = lab1-0'); // nor suffix
  yes('name = *-07');
  no('name = lab?-7');
  yes('name = "*"', { name: '' });
  no('name = "?"', { name: '' });
});

test('glob brackets: a leading ] is a member, - at either end is itself, [*] is a star', () => {
  yes('name = a[]]b', { name: 'a]b' });
  yes('name = a[!]]b', { name: 'axb' });
  no('name = a[!]]b', { name: 'a]b' });
  yes('name = a[-x]b', { name: 'a-b' });
  yes('name = a[x-]b', { name: 'a-b' });
  yes('name = "a[*]"', { name: 'a*' });
  no('name = "a[*]"', { name: 'ab' });
  yes('name = "a[?]"', { name: 'a?' });
  yes('name = a[[]', { name: 'a[' });
});

test('regular expression characters in a glob are plain characters', () => {
  yes('model = "OptiPlex 7060"');
  yes('cpu = "Intel(R) Core(TM) i5-8500 CPU @ 3.00GHz"');
  no('name = "lab1.07"', { name: 'lab1x07' });
  yes('name = "a+b|c$^"', { name: 'a+b|c$^' });
  yes('name = "a\\\\b"', { name: 'a\\b' });
  yes('serial = "{1}"', { serial: '{1}' });
});

test('globs ignore case, also in brackets and beyond ASCII', () => {
  yes('name = LAB1-*');
  yes('name = [L]ab1-*');
  yes('name = [a-z]ab1-*', { name: 'Lab1-07' });
  no('name = [!l]ab1-*');
  yes('vendor = "DELL*"');
  yes('name = "ÄRZTE-*"', { name: 'ärzte-01' });
  yes('name = "σ*"', { name: 'Σίσυφος' });
});

test('unicode names: ? is one character (an emoji, an accented letter), compared in NFC', () => {
  yes('name = "raum-?"', { name: 'raum-😀' });
  no('name = "raum-??"', { name: 'raum-😀' });
  yes('name = "café"', { name: 'cafe\u0301' }); // decomposed name, composed rule
  yes('name = "cafe\u0301"', { name: 'café' }); // and the other way
  yes('name = "caf?"', { name: 'cafe\u0301' });
  yes('name = [à-ä]*', { name: 'ängstrom' });
  yes('name = 実験室-*', { name: '実験室-3' });
  assert.equal((parseRule('name = "cafe\u0301"') as { pattern: string }).pattern, 'café');
});

test(
  'a glob full of stars takes time in proportion to its length, not exponential in its stars',
  { timeout: 10_000 },
  () => {
    // As a regular expression, six stars against 60 characters already took seconds.
    const many = parseRule(`name = "${'*a'.repeat(400)}*b"`);
    assert.equal(matches(many, { ...ws, name: 'a'.repeat(255) }), false);
    assert.equal(matches(many, { ...ws, name: `${'a'.repeat(400)}b` }), true);
    yes('name = "**lab1**07*"');
  },
);

test('the glob matcher agrees with a regular expression of the same glob', () => {
  const toRegExp = (pattern: string) => {
    let out = '';
    const cs = [...pattern];
    for (let k = 0; k < cs.length; k++) {
      const c = cs[k]!;
      if (c === '*') out += '.*';
      else if (c === '?') out += '.';
      else if (c !== '[') out += `\\u{${c.codePointAt(0)!.toString(16)}}`;
      else {
        const close = cs.indexOf(']', k + (cs[k + 1] === '!' ? 3 : 2));
        const body = cs.slice(k + 1, close).join('');
        out += `[${body.replace(/^!/, '^').replace(/\]/g, '\\]')}]`;
        k = close;
      }
    }
    return new RegExp(`^${out}$`, 'isu');
  };
  const piece = fc.constantFrom('a', 'B', 'é', 'É', '-', '*', '?', '[a-c]', '[!b]', '[]]', '[É]');
  const text = fc.array(fc.constantFrom('a', 'A', 'b', 'B', 'c', 'é', 'É', '-', ']', 'x'), { maxLength: 8 });
  fc.assert(
    fc.property(fc.array(piece, { maxLength: 6 }), text, (pieces, chars) => {
      const pattern = pieces.join('');
      const name = chars.join('');
      const rule = parseRule(`name = "${pattern}"`);
      assert.equal(matches(rule, { ...ws, name }), toRegExp(pattern).test(name), `${pattern} ~ ${name}`);
    }),
    { numRuns: 2000 },
  );
});

test('every glob attribute reads its own fact; unknown DMI fields are empty', () => {
  yes('cpu = "*i5-8500*"');
  yes('vendor = Dell*');
  yes('model = OptiPlex*');
  yes('serial = CZC*');
  no('model = Dell*');
  yes('vendor = ""', { vendor: '' });
  no('vendor = "*?*"', { vendor: '' });
  yes('vendor != "Dell*"', { vendor: '' });
});

// ---------------------------------------------------------------------------------------------
// MAC prefixes

test('a MAC prefix in any of its forms matches the start of the MAC', () => {
  for (const prefix of ['52:54:00', '52-54-00', '525400', '52:54:00:12:34:56', '52', 'AA', '5254001', 'a']) {
    const expected = '525400123456'.startsWith(prefix.toLowerCase().replace(/[:-]/g, ''));
    assert.equal(matches(parseRule(`mac = ${prefix}`), ws), expected, prefix);
  }
  yes('mac = 52:54:00', { mac: '52-54-00-AB-CD-EF' });
  yes('mac = 52-54-00', { mac: '5254.00ab.cdef' });
  yes('mac = "52:54:00"');
  yes('mac = 5254001');
  no('mac = 5254002');
  no('mac = 54:00'); // a prefix, not a part
  yes('mac != 00:50:56');
  no('mac = 52:54:00', { mac: '' });
  yes('mac != 52:54:00', { mac: '' });
  yes('mac = 0050c2a', { mac: '00:50:c2:a1:23:45' });
});

// ---------------------------------------------------------------------------------------------
// Addresses

test('ip equals an address, or holds it in a subnet; any of the addresses will do', () => {
  yes('ip = 198.18.0.7');
  yes('ip = 10.1.2.3');
  no('ip = 198.18.0.8');
  yes('ip = 198.18.0.0/24');
  yes('ip = 10.0.0.0/8');
  no('ip = 198.18.1.0/24');
  yes('ip = 198.18.0.0/24', { addresses: ['198.18.0.0'] });
  yes('ip = 198.18.0.0/24', { addresses: ['198.18.0.255'] });
  no('ip = 198.18.0.0/24', { addresses: ['198.18.1.0'] });
  no('ip = 198.18.0.0/24', { addresses: ['198.17.255.255'] });
  yes('ip = 198.18.0.0/15', { addresses: ['198.19.255.255'] });
  no('ip = 198.18.0.0/15', { addresses: ['198.20.0.0'] });
  no('ip = 198.18.0.0/24', { addresses: [] });
});

test('ip edges: /0 holds every address of its family, /32 and /128 one', () => {
  yes('ip = 0.0.0.0/0');
  yes('ip = 0.0.0.0/0', { addresses: ['255.255.255.255'] });
  no('ip = 0.0.0.0/0', { addresses: [] });
  no('ip = 0.0.0.0/0', { addresses: ['2001:db8::1'] });
  yes('ip = ::/0', { addresses: ['2001:db8::1'] });
  no('ip = ::/0');
  yes('ip = 198.18.0.7/32');
  no('ip = 198.18.0.6/32');
  assert.deepEqual(parseRule('ip = 198.18.0.7/32'), parseRule('ip = 198.18.0.7'));
  yes('ip = 2001:db8::7/128', { addresses: ['2001:db8::7'] });
  no('ip = 2001:db8::7/128', { addresses: ['2001:db8::8'] });
  yes('ip = 255.255.255.255/32', { addresses: ['255.255.255.255'] });
});

test('!= on ip means no address is in the subnet', () => {
  no('ip != 198.18.0.0/24'); // 198.18.0.7 is in it, although 10.1.2.3 is not
  yes('ip != 192.168.0.0/16');
  yes('ip != 198.18.0.0/24', { addresses: [] });
});

test('IPv6 subnets, and how the workstation writes its addresses', () => {
  yes('ip = 2001:db8::/32', { addresses: ['2001:DB8:0:0:0:0:0:1'] });
  yes('ip = 2001:db8::/32', { addresses: ['2001:0db8::abcd'] });
  no('ip = 2001:db8::/32', { addresses: ['2001:db9::1'] });
  yes('ip = fe80::/10', { addresses: ['fe80::1%eth0'] });
  yes('ip = 198.18.0.0/24', { addresses: ['::ffff:198.18.0.9'] });
  yes('ip = 198.18.0.0/24', { addresses: ['198.18.0.9/24'] });
  yes('ip = ::ffff:198.18.0.0/120', { addresses: ['198.18.0.9'] });
  assert.deepEqual(parseRule('ip = ::ffff:198.18.0.0/120'), parseRule('ip = 198.18.0.0/24'));
  yes('ip = 198.18.0.0/24', { addresses: ['junk', '', '300.1.1.1', '198.18.0.1'] });
  no('ip = 198.18.0.0/24', { addresses: ['junk', '198.18.0.1.5'] });
});

test('addresses parse strictly and print canonically', () => {
  for (const [text, canonical] of [
    ['2001:0db8:0000:0000:0000:0000:0000:0001', '2001:db8::1'],
    ['2001:db8:0:1:0:0:0:1', '2001:db8:0:1::1'],
    ['2001:0:0:1:0:0:0:1', '2001:0:0:1::1'],
    ['::', '::'],
    ['::1', '::1'],
    ['1::', '1::'],
    ['1:2:3:4:5:6:7:8', '1:2:3:4:5:6:7:8'],
    ['1:0:3:4:5:6:7:8', '1:0:3:4:5:6:7:8'],
    ['::1.2.3.4', '::102:304'],
    ['0.0.0.0', '0.0.0.0'],
  ]) {
    assert.equal(formatAddress(parseAddress(text!)!), canonical, text);
  }
  for (const bad of [
    '1:2:3:4:5:6:7',
    '1:2:3:4:5:6:7:8:9',
    '1::2::3',
    ':1::',
    '12345::',
    'g::',
    '1.2.3',
    '256.1.1.1',
    '01.1.1.1',
    '',
  ]) {
    assert.equal(parseAddress(bad), undefined, bad);
  }
});

test('IPv4 subnet matching agrees with node:net BlockList', () => {
  const address = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((b) => b.join('.'));
  fc.assert(
    fc.property(address, fc.integer({ min: 0, max: 32 }), address, (net, prefix, addr) => {
      const bytes = parseAddress(net)!.map(
        (b, i) => b & (0xff << (8 - Math.max(0, Math.min(8, prefix - 8 * i)))),
      );
      const subnet = `${bytes.join('.')}/${prefix}`;
      const list = new BlockList();
      list.addSubnet(bytes.join('.'), prefix, 'ipv4');
      assert.equal(
        matches(parseRule(`ip = ${subnet}`), { ...ws, addresses: [addr] }),
        list.check(addr, 'ipv4'),
        subnet,
      );
    }),
    { numRuns: 500 },
  );
});

// ---------------------------------------------------------------------------------------------
// Sizes and counts

test('size units: single letters count in 1024s, two letters in 1000s, any case', () => {
  const bytes = (rule: string, n: number) => {
    yes(rule, { diskBytes: n });
    no(rule, { diskBytes: n - 1 });
  };
  bytes('disk >= 1K', 1024);
  bytes('disk >= 1KiB', 1024);
  bytes('disk >= 1kb', 1000);
  bytes('disk >= 1M', 1024 ** 2);
  bytes('disk >= 1MB', 1000 ** 2);
  bytes('disk >= 1g', 1024 ** 3);
  bytes('disk >= 1GiB', 1024 ** 3);
  bytes('disk >= 1GB', 1000 ** 3);
  bytes('disk >= 1T', 1024 ** 4);
  bytes('disk >= 1TB', 1000 ** 4);
  bytes('disk >= 512', 512);
  bytes('disk >= 512B', 512);
  bytes('disk >= 0.5K', 512);
  bytes('disk >= 1.5T', 1.5 * 1024 ** 4);
  assert.deepEqual(parseRule('disk >= 1KiB'), parseRule('disk >= 1k'));
  assert.deepEqual(parseRule('disk >= 512b'), parseRule('disk >= 512'));
});

test('sizes compare exactly at the boundary, decimals included', () => {
  for (const [rule, equal] of [
    ['disk = 256GB', true],
    ['disk != 256GB', false],
    ['disk >= 256GB', true],
    ['disk <= 256GB', true],
    ['disk > 256GB', false],
    ['disk < 256GB', false],
  ] as const) {
    assert.equal(matches(parseRule(rule), { ...ws, diskBytes: 256e9 }), equal, rule);
  }
  // 1.1 * 1e9 in floating point is 1100000000.0000002; the rule must still take 1.1 GB.
  yes('disk >= 1.1GB', { diskBytes: 1_100_000_000 });
  yes('disk = 1.1GB', { diskBytes: 1_100_000_000 });
  no('disk >= 1.1GB', { diskBytes: 1_099_999_999 });
  // A fraction of a byte: 0.3K is 307.2 bytes, between 307 and 308.
  yes('disk > 0.3K', { diskBytes: 308 });
  no('disk > 0.3K', { diskBytes: 307 });
  no('disk = 0.3K', { diskBytes: 307 });
  yes('memory <= 1.25G', { memoryBytes: 1.25 * GiB });
  no('memory < 1.25G', { memoryBytes: 1.25 * GiB });
  yes('disk < 100000000T', { diskBytes: Number.MAX_SAFE_INTEGER });
});

test('a disk sold as 256 GB passes 256GB but not 256G', () => {
  yes('disk >= 256GB'); // 256 060 514 304 bytes
  no('disk >= 256G'); // 274 877 906 944
  yes('disk < 1T and disk > 200G');
});

test('amounts are kept in canonical decimal form', () => {
  assert.deepEqual(parseRule('disk >= 0256.500G'), {
    kind: 'size',
    attribute: 'disk',
    op: '>=',
    amount: '256.5',
    unit: 'G',
  });
  assert.deepEqual(parseRule('disk >= 0.0T'), {
    kind: 'size',
    attribute: 'disk',
    op: '>=',
    amount: '0',
    unit: 'T',
  });
  assert.deepEqual(parseRule('disk >= 000'), {
    kind: 'size',
    attribute: 'disk',
    op: '>=',
    amount: '0',
    unit: '',
  });
  assert.deepEqual(parseRule('cores = 007'), { kind: 'count', attribute: 'cores', op: '=', value: 7 });
});

test('cores compares whole numbers with every operator', () => {
  yes('cores = 8');
  yes('cores != 4');
  yes('cores >= 8');
  no('cores > 8');
  yes('cores <= 8');
  no('cores < 8');
  yes('cores > 0', { cores: 1 });
  no('cores > 0', { cores: 0 });
});

// ---------------------------------------------------------------------------------------------
// The subject

const inventory: Inventory = {
  hostname: 'lab1-07.local',
  mac: '52:54:00:12:34:56',
  addresses: ['198.18.0.7'],
  disks: [
    { path: '/dev/sda', sizeBytes: 500_107_862_016, removable: false },
    { path: '/dev/sdb', sizeBytes: 2_000_398_934_016, removable: true },
    { path: '/dev/nvme0n1', sizeBytes: 256_060_514_304 },
  ],
  memoryBytes: 8 * GiB - 300 * 1024 ** 2,
  cpu: { model: 'Intel(R) Core(TM) i5-8500 CPU @ 3.00GHz', cores: 6 },
  dmi: { vendor: 'Dell Inc.', product: 'OptiPlex 7060', serial: 'CZC1234XYZ', uuid: 'x' },
};

test('subjectOf takes the facts from the inventory', () => {
  assert.deepEqual(subjectOf(inventory, 'lab1-07'), {
    name: 'lab1-07',
    mac: '52:54:00:12:34:56',
    addresses: ['198.18.0.7'],
    diskBytes: 500_107_862_016, // the USB disk is larger, but removable
    memoryBytes: 8 * GiB,
    cores: 6,
    cpu: 'Intel(R) Core(TM) i5-8500 CPU @ 3.00GHz',
    vendor: 'Dell Inc.',
    model: 'OptiPlex 7060',
    serial: 'CZC1234XYZ',
  });
  assert.equal(subjectOf(inventory).name, 'lab1-07.local');
});

test('memory is what the OS reports rounded up to a whole GiB, so an 8 GiB machine passes memory >= 8G', () => {
  const rule = parseRule('memory >= 8G');
  const memory = (memoryBytes: number) => matches(rule, subjectOf({ ...inventory, memoryBytes }));
  assert.equal(memory(8 * GiB - 300 * 1024 ** 2), true);
  assert.equal(memory(8 * GiB), true);
  assert.equal(memory(7 * GiB), false);
  assert.equal(subjectOf({ ...inventory, memoryBytes: 0 }).memoryBytes, 0);
  assert.equal(subjectOf({ ...inventory, memoryBytes: 8 * GiB + 1 }).memoryBytes, 9 * GiB);
});

test('a workstation with no disk, or only removable ones, has disk 0', () => {
  for (const disks of [[], [{ path: '/dev/sdb', sizeBytes: 64e9, removable: true }]]) {
    const s = subjectOf({ ...inventory, disks });
    assert.equal(s.diskBytes, 0);
    assert.equal(matches(parseRule('disk >= 1'), s), false);
    assert.equal(matches(parseRule('disk < 1T'), s), true);
    assert.equal(matches(parseRule('disk = 0'), s), true);
  }
});

test('missing DMI fields are empty strings', () => {
  const s = subjectOf({ ...inventory, dmi: {} });
  assert.deepEqual([s.vendor, s.model, s.serial], ['', '', '']);
});

test('the example from the brief', () => {
  const rule = parseRule(
    'name = "lab1-*" and (ip = 198.18.0.0/24 or mac = 52:54:00) and not vendor = "Dell*" and memory >= 8G',
  );
  const s = subjectOf({ ...inventory, dmi: { vendor: 'HP' } }, 'lab1-07');
  assert.equal(matches(rule, s), true);
  assert.equal(matches(rule, { ...s, vendor: 'Dell Inc.' }), false);
  assert.equal(matches(rule, { ...s, addresses: ['10.0.0.1'] }), true); // the MAC still matches
  assert.equal(matches(rule, { ...s, addresses: ['10.0.0.1'], mac: '00:50:56:00:00:01' }), false);
  assert.equal(matches(rule, { ...s, name: 'lab2-07' }), false);
  assert.equal(matches(rule, { ...s, memoryBytes: 4 * GiB }), false);
});

// ---------------------------------------------------------------------------------------------
// Description

test('describeRule writes canonical text: lower-case keywords, quoted globs, needed parentheses only', () => {
  for (const [text, canonical] of [
    ['NAME=lab1-*', 'name = "lab1-*"'],
    [
      '(name = a OR name = b) AND NOT (cores<2 OR cores>8)',
      '(name = "a" or name = "b") and not (cores < 2 or cores > 8)',
    ],
    ['((name = a) and (name = b)) or name = c', 'name = "a" and name = "b" or name = "c"'],
    ['not (not name = a)', 'not not name = "a"'],
    ['not (name = a and name = b)', 'not (name = "a" and name = "b")'],
    ['mac = AA-BB-CC', 'mac = aa:bb:cc'],
    ['mac = AABBCCD', 'mac = aabbccd'],
    ['ip = 2001:0DB8::/32', 'ip = 2001:db8::/32'],
    ['ip = 198.18.0.7/32', 'ip = 198.18.0.7'],
    ['disk >= 0256.50gib', 'disk >= 256.5G'],
    ['memory < 16Gb', 'memory < 16GB'],
    ['name = "say \\"hi\\" \\\\o/"', 'name = "say \\"hi\\" \\\\o/"'],
    ['vendor = ""', 'vendor = ""'],
    ['name = "and"', 'name = "and"'],
  ]) {
    assert.equal(describeRule(parseRule(text!)), canonical, text);
  }
});

// ---------------------------------------------------------------------------------------------
// Properties

/** Rule text built from a random tree, written in one of the many ways the grammar allows. */
const ruleText = (() => {
  const space = fc.constantFrom(' ', ' ', '  ', '\n', '\t ');
  const keyword = (k: string) => fc.constantFrom(k, k.toUpperCase(), k[0]!.toUpperCase() + k.slice(1));
  const globPiece = fc.oneof(
    fc.constantFrom(
      'a',
      'Z',
      '0',
      '-',
      '.',
      ' ',
      'é',
      'e\u0301',
      '😀',
      '実',
      '"',
      '\\',
      '!',
      '(',
      "'",
      '=',
      'and',
    ),
    fc.constantFrom('*', '?', '[a-z]', '[!0-9]', '[^x]', '[]]', '[*]', '[-a]'),
  );
  const glob = fc.array(globPiece, { maxLength: 6 }).map((p) => p.join(''));
  const quote = (s: string) => `"${s.replace(/[\\"]/g, '\\$&')}"`;
  const bareSafe = (s: string) => /^[^\s()"'=<>!]+$/u.test(s) && !/^(and|or|not)$/i.test(s);
  const value = (s: string) => (bareSafe(s) ? fc.constantFrom(s, quote(s)) : fc.constant(quote(s)));
  const attr = (a: string) => fc.constantFrom(a, a.toUpperCase());
  const eq = fc.constantFrom('=', '!=');
  const anyOp = fc.constantFrom('=', '!=', '<', '<=', '>', '>=');
  const globCmp = fc
    .tuple(fc.constantFrom('name', 'cpu', 'vendor', 'model', 'serial'), eq, glob)
    .chain(([a, op, g]) => fc.tuple(attr(a), value(g)).map(([x, v]) => `${x} ${op} ${v}`));
  const hex = fc.constantFrom(...'0123456789abcdefABCDEF');
  const mac = fc.array(hex, { minLength: 1, maxLength: 12 }).chain((d) => {
    const pairs = d.length % 2 === 0 ? (d.join('').match(/../g) ?? []) : undefined;
    const forms = pairs ? [d.join(''), pairs.join(':'), pairs.join('-')] : [d.join('')];
    return fc.tuple(eq, fc.constantFrom(...forms)).map(([op, v]) => `mac ${op} ${v}`);
  });
  const ipv4 = fc
    .tuple(
      fc.array(fc.nat(255), { minLength: 4, maxLength: 4 }),
      fc.integer({ min: 0, max: 32 }),
      fc.boolean(),
    )
    .map(([b, prefix, slash]) => {
      const net = b.map((x, i) => x & (0xff << (8 - Math.max(0, Math.min(8, prefix - 8 * i)))));
      return slash || prefix !== 32 ? `${net.join('.')}/${prefix}` : net.join('.');
    });
  const ipv6 = fc
    .tuple(
      fc.array(fc.constantFrom(0, 0, 0, 1, 0xdb8, 0xffff, 0x2001), { minLength: 8, maxLength: 8 }),
      fc.integer({ min: 0, max: 128 }),
      fc.boolean(),
    )
    .map(([g, prefix, compress]) => {
      const bytes = g
        .flatMap((x) => [x >> 8, x & 255])
        .map((x, i) => x & (0xff << (8 - Math.max(0, Math.min(8, prefix - 8 * i)))));
      const text = compress
        ? formatAddress(bytes)
        : Array.from({ length: 8 }, (_, i) =>
            ((bytes[2 * i]! << 8) | bytes[2 * i + 1]!).toString(16).padStart(4, '0'),
          ).join(':');
      return `${text}/${prefix}`;
    });
  const ip = fc.tuple(eq, fc.oneof(ipv4, ipv6)).map(([op, v]) => `ip ${op} ${v}`);
  const size = fc
    .tuple(
      fc.constantFrom('disk', 'memory'),
      anyOp,
      fc.stringMatching(/^0{0,2}[0-9]{1,5}(\.[0-9]{1,3}0?)?$/),
      fc.constantFrom('', 'b', 'B', 'K', 'k', 'KiB', 'M', 'mib', 'G', 'gib', 'T', 'KB', 'mb', 'GB', 'Tb'),
    )
    .map(([a, op, n, u]) => `${a} ${op} ${n}${u}`);
  const count = fc.tuple(anyOp, fc.stringMatching(/^0?[0-9]{1,4}$/)).map(([op, n]) => `cores ${op} ${n}`);
  const comparison = fc.oneof(globCmp, mac, ip, size, count);

  type Tree = { text: string; kind: 'leaf' | 'and' | 'or' | 'not' };
  const wrap = (t: Tree) => fc.tuple(space, space).map(([a, b]) => `(${a}${t.text}${b})`);
  /** Parenthesised when the context needs it, or at random when it does not. */
  const child = (t: Tree, needs: boolean) => (needs ? wrap(t) : fc.oneof(fc.constant(t.text), wrap(t)));
  const tree: fc.Arbitrary<Tree> = fc.letrec<{ tree: Tree }>((tie) => ({
    tree: fc.oneof(
      { depthSize: 'small', maxDepth: 5 },
      comparison.map((text) => ({ text, kind: 'leaf' as const })),
      fc.tuple(tie('tree'), keyword('not'), space).chain(([t, k, s]) =>
        child(t, t.kind === 'and' || t.kind === 'or').map((c) => ({
          text: `${k}${s}${c}`,
          kind: 'not' as const,
        })),
      ),
      ...(['and', 'or'] as const).map((k) =>
        fc
          .tuple(fc.array(tie('tree'), { minLength: 2, maxLength: 4 }), keyword(k), space)
          .chain(([ts, word, s]) =>
            fc
              .tuple(...ts.map((t) => child(t, k === 'and' && t.kind === 'or')))
              .map((parts) => ({ text: parts.join(`${s}${word}${s}`), kind: k })),
          ),
      ),
    ),
  })).tree;
  return fc.tuple(space, tree, space).map(([a, t, b]) => `${a}${t.text}${b}`);
})();

test('round trip: describeRule(parseRule(x)) parses to the same rule, and describes itself', () => {
  fc.assert(
    fc.property(ruleText, (text) => {
      const rule = parseRule(text);
      const described = describeRule(rule);
      assert.deepEqual(parseRule(described), rule);
      assert.equal(describeRule(parseRule(described)), described);
    }),
    { numRuns: 1000 },
  );
});

const subject = fc.record({
  name: fc.constantFrom('lab1-07', 'LAB2-01', 'café', 'cafe\u0301', '', '😀-"'),
  mac: fc.constantFrom('52:54:00:12:34:56', 'AA-BB-CC-00-00-01', ''),
  addresses: fc.array(fc.constantFrom('198.18.0.7', '10.0.0.1', '2001:db8::1', '::ffff:198.18.0.9', 'junk'), {
    maxLength: 3,
  }),
  diskBytes: fc.constantFrom(0, 512, 256e9, 1024 ** 4),
  memoryBytes: fc.constantFrom(0, GiB, 8 * GiB),
  cores: fc.nat(64),
  cpu: fc.constantFrom('', 'Intel i5'),
  vendor: fc.constantFrom('', 'Dell Inc.'),
  model: fc.constantFrom('', 'OptiPlex'),
  serial: fc.constantFrom('', 'CZC1'),
});

test('x != v is always not x = v, and the canonical text decides as the original', () => {
  fc.assert(
    fc.property(ruleText, subject, (text, s) => {
      const rule = parseRule(text);
      assert.equal(matches(parseRule(describeRule(rule)), s), matches(rule, s));
      const negated = parseRule(`not (${text})`);
      assert.equal(matches(negated, s), !matches(rule, s));
      if (rule.kind !== 'and' && rule.kind !== 'or' && rule.kind !== 'not' && rule.op === '!=') {
        const positive = parseRule(describeRule({ ...rule, op: '=' } as Rule));
        assert.equal(matches(rule, s), !matches(positive, s));
      }
    }),
    { numRuns: 500 },
  );
});

test('any text either parses and round-trips, or is refused with a position inside it', () => {
  const piece = fc.constantFrom(
    'name',
    'mac',
    'ip',
    'disk',
    'cores',
    'NOT',
    'and',
    'or',
    '(',
    ')',
    '=',
    '!=',
    '<',
    '>=',
    '"',
    '\\',
    "'",
    ' ',
    '\n',
    '*',
    '[',
    ']',
    '-',
    '52:54',
    '198.18.0.0/24',
    '::1',
    '8G',
    '1.5',
    'é',
    '😀',
    '\u0000',
    'x',
  );
  fc.assert(
    fc.property(fc.array(piece, { maxLength: 14 }), (pieces) => {
      const text = pieces.join('');
      let rule: Rule;
      try {
        rule = parseRule(text);
      } catch (err) {
        assert.ok(err instanceof ServerError && err.code === 'E_RULE_INVALID', String(err));
        const { position, column } = err.details as { position: number; column: number };
        assert.ok(position >= 0 && position <= text.length, `${position} in ${JSON.stringify(text)}`);
        assert.ok(column >= 1);
        assert.match(err.message, / at (line \d+, )?column \d+/);
        return;
      }
      assert.deepEqual(parseRule(describeRule(rule)), rule);
    }),
    { numRuns: 3000 },
  );
});
