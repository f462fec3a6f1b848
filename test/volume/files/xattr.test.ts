import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { applyXattrs, parseGetfattr, startXattrScan } from '../../../src/volume/files/xattr.ts';
import { tempDir } from '../../helpers/env.ts';

test('parseGetfattr decodes octal-escaped names and base64/empty values', () => {
  const out = Buffer.concat([
    Buffer.from('# file: /r\n'),
    Buffer.from('user.root=0saGk=\n\n'),
    Buffer.from('# file: /r/n\\012l\n'),
    Buffer.from('user.a=0s\nuser.b=0sAAEC\n\n'),
    Buffer.from('# file: /r/'),
    Buffer.from('ü', 'utf8'),
    Buffer.from(' x\\134y\nuser.c=0sYQ==\n\n'),
    Buffer.from('# file: /other/z\nuser.d=0sYQ==\n\n'),
  ]);
  const m = parseGetfattr(out, '/r');
  assert.deepEqual(Object.fromEntries(m), {
    '.': { 'user.root': 'aGk=' },
    'n\nl': { 'user.a': '', 'user.b': 'AAEC' },
    'ü x\\y': { 'user.c': 'YQ==' },
  });
});

test('applyXattrs then a scan give back the same attributes, whatever the file names', async (t) => {
  const dir = await tempDir(t);
  const names = ['plain', 'new\nline', 'back\\slash', 'ünï', '-dash', 'eq=ual'];
  for (const n of names) writeFileSync(join(dir, n), n);
  const items = names.map((n, i) => ({
    path: n,
    xattrs: { 'user.n': Buffer.from(n).toString('base64'), 'user.empty': '', [`user.k${i}`]: 'AP8=' },
  }));
  await applyXattrs(dir, items);
  const scan = await startXattrScan(dir).promise;
  for (const item of items) assert.deepEqual(scan.get(item.path), item.xattrs, JSON.stringify(item.path));
  assert.equal(scan.has('.'), false);
});

test('a failing setfattr is an E_XATTR error naming the problem', async (t) => {
  const dir = await tempDir(t);
  writeFileSync(join(dir, 'f'), 'x');
  await assert.rejects(applyXattrs(dir, [{ path: 'missing', xattrs: { 'user.a': 'YQ==' } }]), {
    code: 'E_XATTR',
    message: /missing/,
  });
  assert.equal(spawnSync('getfattr', ['-d', join(dir, 'f')], { encoding: 'utf8' }).stdout, '');
});
