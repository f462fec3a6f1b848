/** The words of img session NAME [master|client] [clients=N] [t=MINUTES], parsed and refused. */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { parseSessionWords } from '../../src/cli/session.ts';

test('a role and the master trigger words', () => {
  assert.deepEqual(parseSessionWords([]), { role: 'client' });
  assert.deepEqual(parseSessionWords(['client']), { role: 'client' });
  assert.deepEqual(parseSessionWords(['master']), { role: 'master' });
  assert.deepEqual(parseSessionWords(['master', 'clients=3', 't=1.5']), {
    role: 'master',
    clients: 3,
    waitMinutes: 1.5,
  });
  assert.deepEqual(parseSessionWords(['t=0', 'master']), { role: 'master', waitMinutes: 0 });
});

test('bad words are refused, each saying what it wants', () => {
  const refuse = (words: string[], why: RegExp) =>
    assert.throws(
      () => parseSessionWords(words),
      (e: Error) => why.test(e.message),
      words.join(' '),
    );
  refuse(['master', 'clients=0'], /clients=0: .*whole number from 1/);
  refuse(['master', 'clients=2.5'], /clients=2\.5/);
  refuse(['master', 'clients='], /clients=:/);
  refuse(['master', 't=-1'], /t=-1: .*from 0 to 10080/);
  refuse(['master', 't=soon'], /t=soon/);
  refuse(['master', 'client'], /one role/);
  refuse(['clients=2'], /the master's/);
  refuse(['master', 'now'], /unexpected word "now"/);
});
