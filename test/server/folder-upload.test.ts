/**
 * A folder's files as the console sends them (src/server/folder-upload.ts): the path checks on
 * their own, then bodies received into real temporary folders: what lands where, in pieces cut
 * anywhere (a header split across chunks), and every way a body may try to put a file outside
 * the receiving folder or be malformed, refused with its code.
 */
import assert from 'node:assert/strict';
import { lstat, mkdir, readFile, readdir, stat, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';

import { ServerError } from '../../src/server/errors.ts';
import { parseFileHeader, receiveFiles, uploadPathParts } from '../../src/server/folder-upload.ts';
import { tempDir } from '../helpers/env.ts';

const LIMITS = { maxBytes: 1 << 20, maxFiles: 100 };

/** The body for `files` ([path, content, mtime?]), cut into pieces of `piece` bytes. */
function body(files: Array<[string, string | Buffer, number?]>, piece = 7): Buffer[] {
  const whole = Buffer.concat(
    files.flatMap(([path, content, mtimeMs]) => {
      const data = Buffer.from(content);
      return [Buffer.from(`${JSON.stringify({ path, size: data.length, mtimeMs })}\n`), data];
    }),
  );
  const out: Buffer[] = [];
  for (let i = 0; i < whole.length; i += piece) out.push(whole.subarray(i, i + piece));
  return out;
}

async function* stream(pieces: Buffer[]): AsyncIterable<Buffer> {
  for (const p of pieces) yield p;
}

function code(c: string, why?: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof ServerError, String(err));
    assert.equal(err.code, c, err.message);
    if (why) assert.match(err.message, why);
    return true;
  };
}

test('paths: relative parts only; up, absolute, empty and dot parts escape; NUL too', () => {
  assert.deepEqual(uploadPathParts('drivers/nic/e1000.inf'), ['drivers', 'nic', 'e1000.inf']);
  assert.deepEqual(uploadPathParts('a b/ünï/x..y'), ['a b', 'ünï', 'x..y']);
  for (const [p, why] of [
    ['drivers/../../etc/passwd', /goes up/],
    ['..', /goes up/],
    ['/etc/passwd', /is absolute/],
    ['drivers//x', /empty or '\.' part/],
    ['drivers/./x', /empty or '\.' part/],
    ['drivers/', /empty or '\.' part/],
    ['dri\0vers/x', /NUL/],
  ] as const) {
    assert.throws(() => uploadPathParts(p), code('E_PATH_ESCAPE', why), p);
  }
  assert.throws(() => uploadPathParts(''), code('E_BAD_REQUEST'));
  assert.throws(() => uploadPathParts(`a/${'x'.repeat(256)}`), code('E_BAD_REQUEST', /longer than 255/));
  assert.throws(() => parseFileHeader('{"path":"a/b","size":-1}', 10), code('E_BAD_REQUEST', /size/));
  assert.throws(() => parseFileHeader('{"path":"a/b","size":11}', 10), code('E_TOO_LARGE'));
  assert.throws(() => parseFileHeader('[1]', 10), code('E_BAD_REQUEST', /not a JSON object/));
  assert.deepEqual(parseFileHeader('{"path":"a/b","size":3,"mtimeMs":5}', 10), {
    path: 'a/b',
    parts: ['a', 'b'],
    size: 3,
    mtimeMs: 5,
  });
});

test('a folder arrives with its subfolders, contents and times, however the body is cut', async (t) => {
  for (const piece of [1, 5, 64, 1 << 16]) {
    const dir = await tempDir(t, 'imgcast-folder-upload-');
    const when = Date.UTC(2024, 0, 2, 3, 4, 5);
    const got = await receiveFiles(
      stream(
        body(
          [
            ['drivers/readme.txt', 'read me\n', when],
            ['drivers/nic/e1000.inf', '[e1000]\n'],
            ['drivers/nic/empty', ''],
            ['drivers/gpu/big.bin', Buffer.alloc(3000, 9)],
          ],
          piece,
        ),
      ),
      dir,
      LIMITS,
    );
    assert.deepEqual(got, { top: 'drivers', files: 4, bytes: 8 + 8 + 0 + 3000 });
    assert.deepEqual((await readdir(join(dir, 'drivers'))).sort(), ['gpu', 'nic', 'readme.txt']);
    assert.equal(await readFile(join(dir, 'drivers/nic/e1000.inf'), 'utf8'), '[e1000]\n');
    assert.equal((await readFile(join(dir, 'drivers/nic/empty'))).length, 0);
    assert.deepEqual(await readFile(join(dir, 'drivers/gpu/big.bin')), Buffer.alloc(3000, 9));
    assert.equal((await stat(join(dir, 'drivers/readme.txt'))).mtimeMs, when);
  }
});

test('refused: escapes, a second top folder, a path twice, a file and a folder of one name, a body cut short, over the limits', async (t) => {
  const cases: Array<[string, Buffer[], string, RegExp, typeof LIMITS?]> = [
    [
      'up',
      body([
        ['d/a', 'x'],
        ['d/../../outside', 'x'],
      ]),
      'E_PATH_ESCAPE',
      /goes up/,
    ],
    ['absolute', body([['/tmp/x', 'x']]), 'E_PATH_ESCAPE', /absolute/],
    [
      'two tops',
      body([
        ['d/a', 'x'],
        ['e/b', 'x'],
      ]),
      'E_BAD_REQUEST',
      /one folder sent \(d\), not e\/b/,
    ],
    [
      'twice',
      body([
        ['d/a', 'x'],
        ['d/a', 'y'],
      ]),
      'E_BAD_REQUEST',
      /d\/a comes twice/,
    ],
    [
      'file then folder',
      body([
        ['d/a', 'x'],
        ['d/a/b', 'y'],
      ]),
      'E_BAD_REQUEST',
      /has that folder's name/,
    ],
    [
      'folder then file',
      body([
        ['d/a/b', 'x'],
        ['d/a', 'y'],
      ]),
      'E_BAD_REQUEST',
      /both a folder and a file/,
    ],
    ['cut short', [Buffer.from('{"path":"d/a","size":10}\nabc')], 'E_BAD_REQUEST', /ends inside d\/a \(7 of/],
    ['cut header', [Buffer.from('{"path":"d/a",')], 'E_BAD_REQUEST', /inside a file's header/],
    ['empty', [], 'E_BAD_REQUEST', /no file/],
    ['not JSON', [Buffer.from('hello\n')], 'E_BAD_REQUEST', /not JSON/],
    [
      'too many bytes',
      body([['d/a', 'x'.repeat(20)]]),
      'E_TOO_LARGE',
      /past the limit/,
      { maxBytes: 10, maxFiles: 10 },
    ],
    [
      'too many files',
      body([
        ['d/a', 'x'],
        ['d/b', 'x'],
      ]),
      'E_TOO_LARGE',
      /1 files at most/,
      { maxBytes: 10, maxFiles: 1 },
    ],
  ];
  for (const [what, pieces, c, why, limits] of cases) {
    const dir = await tempDir(t, 'imgcast-folder-upload-');
    await assert.rejects(receiveFiles(stream(pieces), dir, limits ?? LIMITS), code(c, why), what);
  }
});

test('a folder that is a symlink in the receiving folder is not followed', async (t) => {
  // The server's receiving folder is new and private; should a link be there anyway, files do not go through it.
  const dir = await tempDir(t, 'imgcast-folder-upload-');
  const elsewhere = await tempDir(t, 'imgcast-folder-elsewhere-');
  await mkdir(join(dir, 'd'));
  await symlink(elsewhere, join(dir, 'd', 'link'));
  await assert.rejects(
    receiveFiles(stream(body([['d/link/x', 'x']])), dir, LIMITS),
    code('E_PATH_ESCAPE', /goes through a symlink/),
  );
  await symlink(join(elsewhere, 'target'), join(dir, 'd', 'file-link'));
  await assert.rejects(
    receiveFiles(stream(body([['d/file-link', 'x']])), dir, LIMITS),
    code('E_PATH_ESCAPE', /d\/file-link is a symlink/),
  );
  assert.deepEqual(await readdir(elsewhere), [], 'nothing written through a link');
  assert.ok((await lstat(join(dir, 'd', 'file-link'))).isSymbolicLink());
});
