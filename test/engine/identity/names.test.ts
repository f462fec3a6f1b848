import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  checkIdentityName,
  hostnameAdvice,
  hostnameProblem,
  windowsNameProblem,
} from '../../../src/engine/identity/names.ts';
import { IdentityError } from '../../../src/engine/identity/errors.ts';

test('host names: one RFC 1123 label of letters, digits and inner hyphens, at most 63 characters', () => {
  for (const ok of ['lab1-01', 'a', 'PC7', '1lab', 'x'.repeat(63), '0-0'])
    assert.equal(hostnameProblem(ok), undefined, ok);
  for (const [bad, why] of [
    ['', /empty/],
    ['x'.repeat(64), /64 characters long; a host name has at most 63/],
    ['lab1.example.org', /dot/],
    ['-lab', /not a host name/],
    ['lab-', /not a host name/],
    ['lab_1', /not a host name/],
    ['lab 1', /not a host name/],
    ['läb', /not a host name/],
    ['lab/../x', /dot|not a host name/],
  ] as const) {
    assert.match(hostnameProblem(bad) ?? '', why, JSON.stringify(bad));
  }
});

test('checkIdentityName refuses with E_IDENTITY_NAME and names the name', () => {
  assert.throws(
    () => checkIdentityName('lab_1'),
    (err: unknown) =>
      err instanceof IdentityError && err.code === 'E_IDENTITY_NAME' && /"lab_1"/.test(err.message),
  );
  checkIdentityName('lab1-01');
});

test('upper case is taken with advice; Windows names stop at 15 characters and are not digits alone', () => {
  assert.match(hostnameAdvice('Lab1') ?? '', /upper-case/);
  assert.equal(hostnameAdvice('lab1'), undefined);
  assert.equal(windowsNameProblem('lab1-01'), undefined);
  assert.equal(windowsNameProblem('x'.repeat(15)), undefined);
  assert.match(
    windowsNameProblem('x'.repeat(16)) ?? '',
    /16 characters long and Windows computer names have at most 15/,
  );
  assert.match(windowsNameProblem('12345') ?? '', /digits only/);
});
