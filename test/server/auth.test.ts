import assert from 'node:assert/strict';
import { chmod, readFile, stat } from 'node:fs/promises';
import { test } from 'node:test';

import { adminToken, hashPassword, verifyPassword } from '../../src/server/auth.ts';
import { tempDir } from '../helpers/env.ts';

test('the admin token is made once, readable by its owner only, and kept', async (t) => {
  const dir = await tempDir(t);
  const first = await adminToken(dir);
  assert.equal(first.created, true);
  assert.equal((await stat(first.file)).mode & 0o777, 0o600);
  assert.equal((await readFile(first.file, 'utf8')).trim(), first.token);
  const second = await adminToken(dir);
  assert.equal(second.created, false);
  assert.equal(second.token, first.token);
});

test('an admin token file others can read is narrowed back to its owner', async (t) => {
  const dir = await tempDir(t);
  const { file } = await adminToken(dir);
  await chmod(file, 0o644);
  await adminToken(dir);
  assert.equal((await stat(file)).mode & 0o777, 0o600);
});

test('passwords are salted scrypt hashes that verify only the right password', async () => {
  const a = await hashPassword('correct horse');
  const b = await hashPassword('correct horse');
  assert.notEqual(a, b);
  assert.match(a, /^scrypt\$16384\$8\$1\$/);
  assert.equal(await verifyPassword('correct horse', a), true);
  assert.equal(await verifyPassword('correct horsE', a), false);
  assert.equal(await verifyPassword('correct horse', 'plain'), false);
});
