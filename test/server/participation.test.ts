import assert from 'node:assert/strict';
import { test } from 'node:test';

import fc from 'fast-check';

import { ServerError } from '../../src/server/errors.ts';
import {
  chooseSession,
  masterConflict,
  moveDown,
  moveUp,
  ordinal,
  sameWorkstation,
  type AutoSessionView,
  type Candidate,
} from '../../src/server/participation.ts';
import { parseRule } from '../../src/server/rules.ts';

const GiB = 1024 ** 3;

const ws: Candidate = {
  id: '525400123456',
  name: 'lab1-07',
  mac: '52:54:00:12:34:56',
  addresses: ['198.18.0.7'],
  diskBytes: 256e9,
  memoryBytes: 8 * GiB,
  cores: 8,
  cpu: 'Intel i5',
  vendor: 'Dell Inc.',
  model: 'OptiPlex 7060',
  serial: 'CZC1',
};

function session(
  name: string,
  o: { enabled?: boolean; master?: string; explicit?: string[]; rules?: string[] } = {},
): AutoSessionView {
  return {
    name,
    enabled: o.enabled ?? true,
    ...(o.master !== undefined ? { master: o.master } : {}),
    explicit: o.explicit ?? [],
    rules: (o.rules ?? []).map(parseRule),
  };
}

function inOrder(sessions: AutoSessionView[], order: string[]): AutoSessionView[] {
  return order.map((n) => sessions.find((s) => s.name === n)!);
}

// ---------------------------------------------------------------------------------------------
// Choosing

test('two enabled sessions match: the first in the list wins, and the later one is named', () => {
  const sessions = [
    session('lab1', { rules: ['name = "lab1-*"'] }),
    session('labs', { rules: ['ip = 198.18.0.0/16'] }),
  ];
  assert.deepEqual(chooseSession(sessions, ws), {
    session: 'lab1',
    role: 'client',
    why: 'lab1 (1st): matches name = "lab1-*"; also matches labs (2nd), which comes later',
  });
});

test('after moveDown the other session comes first and wins', () => {
  const sessions = [
    session('lab1', { rules: ['name = "lab1-*"'] }),
    session('labs', { rules: ['ip = 198.18.0.0/16'] }),
  ];
  const order = moveDown(['lab1', 'labs'], 'lab1');
  assert.deepEqual(order, ['labs', 'lab1']);
  assert.deepEqual(chooseSession(inOrder(sessions, order), ws), {
    session: 'labs',
    role: 'client',
    why: 'labs (1st): matches ip = 198.18.0.0/16; also matches lab1 (2nd), which comes later',
  });
  // And back up again.
  const back = moveUp(order, 'lab1');
  assert.equal(chooseSession(inOrder(sessions, back), ws).session, 'lab1');
});

test('a disabled session is never chosen, however well it matches', () => {
  const sessions = [
    session('lab1', { enabled: false, explicit: ['lab1-07'], rules: ['name = *'] }),
    session('labs', { rules: ['ip = 198.18.0.0/16'] }),
  ];
  assert.deepEqual(chooseSession(sessions, ws), {
    session: 'labs',
    role: 'client',
    why: 'labs (2nd): matches ip = 198.18.0.0/16; lab1 (1st) would take it but is disabled',
  });
  assert.deepEqual(chooseSession([sessions[0]!], ws), {
    session: null,
    why: 'no automatic session is enabled; lab1 (1st) would take it but is disabled',
  });
  assert.deepEqual(chooseSession([session('a', { enabled: false }), session('b', { enabled: false })], ws), {
    session: null,
    why: 'no automatic session is enabled',
  });
});

test('nothing matches: no session, and the reason names what was tried', () => {
  const sessions = [
    session('lab2', { rules: ['name = "lab2-*"'] }),
    session('big', { rules: ['disk >= 1TB', 'memory >= 32G'] }),
    session('old', { enabled: false, rules: ['cores >= 8'] }),
  ];
  assert.deepEqual(chooseSession(sessions, ws), {
    session: null,
    why: 'lab1-07 qualifies for none of the enabled automatic sessions (lab2 (1st) and big (2nd)); old (3rd) would take it but is disabled',
  });
  assert.deepEqual(chooseSession([], ws), { session: null, why: 'there are no automatic sessions' });
  // A session with neither rules nor listings takes nobody.
  assert.equal(chooseSession([session('empty')], ws).session, null);
});

test('an explicit listing qualifies by id, name or MAC in any form, and beats having nothing', () => {
  for (const ref of [
    '525400123456',
    'lab1-07',
    'LAB1-07',
    ' lab1-07 ',
    '52:54:00:12:34:56',
    '52-54-00-12-34-56',
    '52:54:00:12:34:56'.toUpperCase(),
  ]) {
    const choice = chooseSession([session('lab', { explicit: ['other', ref] })], ws);
    assert.deepEqual(
      choice,
      { session: 'lab', role: 'client', why: `lab (1st): listed explicitly as ${ref}` },
      ref,
    );
  }
  for (const ref of ['lab1-0', 'lab1-07x', '52:54:00:12:34', '525400123457', 'lab1-*']) {
    assert.equal(chooseSession([session('lab', { explicit: [ref] })], ws).session, null, ref);
  }
});

test('within one session the explicit listing is the reason given, else the first rule that matches', () => {
  const both = session('lab', { explicit: ['lab1-07'], rules: ['name = *'] });
  assert.match(chooseSession([both], ws).why, /listed explicitly as lab1-07$/);
  const rules = session('lab', { rules: ['cores > 64', 'vendor = Dell*', 'name = *'] });
  assert.equal(chooseSession([rules], ws).why, 'lab (1st): matches rule 2 of 3, vendor = "Dell*"');
  // Any rule matching is enough: the others need not.
  assert.equal(
    chooseSession([session('lab', { rules: ['cores > 64', 'mac = 52:54:00'] })], ws).session,
    'lab',
  );
});

test('list order decides between a rule match and a later explicit listing', () => {
  const sessions = [session('labs', { rules: ['name = lab*'] }), session('mine', { explicit: ['lab1-07'] })];
  assert.deepEqual(chooseSession(sessions, ws), {
    session: 'labs',
    role: 'client',
    why: 'labs (1st): matches name = "lab*"; also matches mine (2nd), which comes later',
  });
  assert.equal(chooseSession(inOrder(sessions, moveUp(['labs', 'mine'], 'mine')), ws).session, 'mine');
});

test('passed-over sessions are named up to three, then counted', () => {
  const names = ['a', 'b', 'c', 'd', 'e', 'f'];
  const sessions = names.map((n) => session(n, { rules: ['name = *'] }));
  assert.equal(
    chooseSession(sessions, ws).why,
    'a (1st): matches name = "*"; also matches b (2nd), c (3rd), d (4th) and 2 more, which come later',
  );
  assert.equal(
    chooseSession(sessions.slice(0, 3), ws).why,
    'a (1st): matches name = "*"; also matches b (2nd) and c (3rd), which come later',
  );
  // Positions are those of the whole list, disabled sessions included.
  const gapped = [
    session('x', { enabled: false }),
    session('y', { rules: ['cores > 64'] }),
    session('z', { rules: ['name = *'] }),
  ];
  assert.equal(chooseSession(gapped, ws).why, 'z (3rd): matches name = "*"');
});

test('the master of an enabled session runs as its master, even when an earlier session matches it', () => {
  const sessions = [
    session('labs', { rules: ['name = lab*'] }),
    session('lab1', { master: 'lab1-07', rules: ['name = "lab1-*"'] }),
  ];
  assert.deepEqual(chooseSession(sessions, ws), {
    session: 'lab1',
    role: 'master',
    why: 'master of lab1 (2nd): it sends its disk rather than receiving; it also matches labs (1st), which it does not join as a client',
  });
  // Its own session's rules match it too; it is still only the master.
  assert.deepEqual(chooseSession([sessions[1]!], ws), {
    session: 'lab1',
    role: 'master',
    why: 'master of lab1 (1st): it sends its disk rather than receiving',
  });
  // Named by MAC or id as well.
  assert.equal(chooseSession([session('m', { master: '52-54-00-12-34-56' })], ws).session, 'm');
  assert.equal(chooseSession([session('m', { master: '525400123456' })], { ...ws, mac: '' }).session, 'm');
});

test('the master of a disabled session joins where it qualifies, as a client', () => {
  const sessions = [
    session('lab1', { enabled: false, master: 'lab1-07' }),
    session('labs', { rules: ['name = lab*'] }),
  ];
  assert.deepEqual(chooseSession(sessions, ws), {
    session: 'labs',
    role: 'client',
    why: 'labs (2nd): matches name = "lab*"; lab1 (1st) would take it but is disabled',
  });
});

test('ordinals', () => {
  const cases: Array<[number, string]> = [
    [1, '1st'],
    [2, '2nd'],
    [3, '3rd'],
    [4, '4th'],
    [10, '10th'],
    [11, '11th'],
    [12, '12th'],
    [13, '13th'],
    [21, '21st'],
    [22, '22nd'],
    [23, '23rd'],
    [101, '101st'],
    [111, '111th'],
    [112, '112th'],
  ];
  for (const [n, s] of cases) assert.equal(ordinal(n), s);
});

// ---------------------------------------------------------------------------------------------
// Masters

const existing = [
  { name: 'lab1', master: 'lab1-00', explicit: ['lab1-01', 'lab1-02'] },
  { name: 'lab2', explicit: ['52:54:00:aa:bb:cc'] },
  { name: 'old', master: 'spare-01', explicit: [] },
];

test('no conflict: a fresh master, or no master at all', () => {
  assert.equal(
    masterConflict(existing, { name: 'lab3', master: 'lab3-00', explicit: ['lab3-01'] }),
    undefined,
  );
  assert.equal(masterConflict(existing, { name: 'lab3', explicit: ['lab3-01'] }), undefined);
  assert.equal(masterConflict([], { name: 'lab3', master: 'lab3-00', explicit: [] }), undefined);
  // A workstation may be listed in several sessions; only masters are exclusive.
  assert.equal(masterConflict(existing, { name: 'lab3', explicit: ['lab1-01'] }), undefined);
});

test('a master cannot be the master of another session', () => {
  assert.equal(
    masterConflict(existing, { name: 'lab3', master: 'lab1-00', explicit: [] }),
    'lab1-00 is already the master of lab1; a workstation can be the master of one session only',
  );
  // Disabled sessions count: enabling one later must not bring the conflict back.
  assert.match(
    masterConflict(existing, { name: 'lab3', master: 'SPARE-01', explicit: [] }) ?? '',
    /master of old;/,
  );
});

test('a master cannot take part explicitly in another session', () => {
  assert.equal(
    masterConflict(existing, { name: 'lab3', master: 'lab1-02', explicit: [] }),
    'lab1-02 is listed as a participant of lab1, so it cannot be the master of lab3',
  );
  // The same MAC written another way, or as the workstation id.
  assert.match(
    masterConflict(existing, { name: 'lab3', master: '525400AABBCC', explicit: [] }) ?? '',
    /participant of lab2/,
  );
  assert.match(
    masterConflict(existing, { name: 'lab3', master: '52-54-00-AA-BB-CC', explicit: [] }) ?? '',
    /participant of lab2/,
  );
});

test('the other way round: a session cannot list the master of another session', () => {
  assert.equal(
    masterConflict(existing, { name: 'lab3', explicit: ['lab3-01', 'lab1-00'] }),
    'lab1-00 is the master of lab1, so it cannot be listed as a participant of lab3',
  );
});

test('a master cannot be listed in its own session', () => {
  assert.equal(
    masterConflict(existing, { name: 'lab3', master: 'lab3-00', explicit: ['lab3-01', 'LAB3-00'] }),
    'lab3-00 cannot be both the master of lab3 and listed as one of its participants',
  );
});

test('editing a session checks it against the others, not against its old self', () => {
  assert.equal(
    masterConflict(existing, { name: 'lab1', master: 'lab1-00', explicit: ['lab1-01', 'lab1-03'] }),
    undefined,
  );
  assert.match(
    masterConflict(existing, { name: 'lab1', master: 'spare-01', explicit: [] }) ?? '',
    /master of old/,
  );
});

test('a caller with the registry tells names and MACs of one workstation apart', () => {
  const ids = new Map([
    ['lab1-00', '525400000000'],
    ['52:54:00:00:00:00', '525400000000'],
  ]);
  const same = (a: string, b: string) => (ids.get(a) ?? a) === (ids.get(b) ?? b);
  assert.equal(
    masterConflict(existing, { name: 'lab3', master: '52:54:00:00:00:00', explicit: [] }),
    undefined,
  );
  assert.match(
    masterConflict(existing, { name: 'lab3', master: '52:54:00:00:00:00', explicit: [] }, same) ?? '',
    /master of lab1/,
  );
});

test('sameWorkstation: equal ignoring case and Unicode form, or one MAC however written', () => {
  assert.equal(sameWorkstation('Lab1-07', 'lab1-07'), true);
  assert.equal(sameWorkstation('café', 'cafe\u0301'), true);
  assert.equal(sameWorkstation('52:54:00:12:34:56', '525400123456'), true);
  assert.equal(sameWorkstation('52-54-00-12-34-56', '52:54:00:12:34:56'), true);
  assert.equal(sameWorkstation('lab1-07', 'lab1-08'), false);
  assert.equal(sameWorkstation('52:54:00:12:34', '52:54:00:12:34:56'), false);
  // Names that merely contain hex digits are names.
  assert.equal(sameWorkstation('ab-cd', 'abcd'), false);
});

// ---------------------------------------------------------------------------------------------
// Ordering

test('moveUp and moveDown swap with the neighbour, stop at the ends, and leave the input alone', () => {
  const list = Object.freeze(['a', 'b', 'c']);
  assert.deepEqual(moveUp(list, 'b'), ['b', 'a', 'c']);
  assert.deepEqual(moveUp(list, 'c'), ['a', 'c', 'b']);
  assert.deepEqual(moveUp(list, 'a'), ['a', 'b', 'c']);
  assert.deepEqual(moveDown(list, 'b'), ['a', 'c', 'b']);
  assert.deepEqual(moveDown(list, 'a'), ['b', 'a', 'c']);
  assert.deepEqual(moveDown(list, 'c'), ['a', 'b', 'c']);
  assert.deepEqual(list, ['a', 'b', 'c']);
  assert.deepEqual(moveUp(['only'], 'only'), ['only']);
});

test('moving an unknown session is refused', () => {
  for (const move of [moveUp, moveDown]) {
    assert.throws(
      () => move(['a', 'b'], 'c'),
      (err: unknown) =>
        err instanceof ServerError &&
        err.code === 'E_SESSION_UNKNOWN' &&
        err.status === 404 &&
        err.message === 'no automatic session named c',
    );
    assert.throws(() => move([], 'a'), ServerError);
    assert.throws(() => move(['a'], 'A'), ServerError); // names are exact
  }
});

test('moves keep the same sessions, and up undoes down', () => {
  const lists = fc.uniqueArray(fc.string({ minLength: 1, maxLength: 4 }), { minLength: 1, maxLength: 8 });
  fc.assert(
    fc.property(
      lists.chain((l) => fc.tuple(fc.constant(l), fc.constantFrom(...l))),
      ([list, name]) => {
        const down = moveDown(list, name);
        assert.deepEqual([...down].sort(), [...list].sort());
        const i = list.indexOf(name);
        assert.equal(down.indexOf(name), Math.min(i + 1, list.length - 1));
        if (i < list.length - 1) assert.deepEqual(moveUp(down, name), list);
        const up = moveUp(list, name);
        assert.equal(up.indexOf(name), Math.max(i - 1, 0));
        if (i > 0) assert.deepEqual(moveDown(up, name), list);
      },
    ),
    { numRuns: 300 },
  );
});
