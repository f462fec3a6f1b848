import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { writeFailure } from '../../src/disk/write-errors.ts';
import { tempDir } from '../helpers/env.ts';

test("a failed write says why in words with the errno, not in Node's raw form", async (t) => {
  const dir = await tempDir(t);
  const target = join(dir, 'disk.img');
  await writeFile(target, Buffer.alloc(4096));
  const enospc = Object.assign(new Error('ENOSPC: no space left on device, write'), {
    code: 'ENOSPC',
    syscall: 'write',
  });
  const err = await writeFailure(target, 'boot area 1', enospc);
  assert.equal(err.code, 'E_DISK_WRITE');
  assert.match(
    err.message,
    new RegExp(
      `^restoring onto ${target}: boot area 1: no space left on the device \\(ENOSPC\\); the filesystem holding`,
    ),
  );
  assert.doesNotMatch(err.message, /ENOSPC:/);
});
