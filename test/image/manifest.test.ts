import assert from 'node:assert/strict';
import { test } from 'node:test';
import { manifestProblem } from '../../src/image/manifest.ts';

function manifest(entry: Record<string, unknown>): unknown {
  return {
    formatVersion: 1,
    imageId: 'x',
    generation: 1,
    level: 'balanced',
    source: {},
    filesets: [],
    volumes: [{ kind: 'files', index: 0, fs: { type: 'directory' }, entries: [entry] }],
  };
}

const base = { path: 'f', type: 'file', mode: 0o644, uid: 0, gid: 0, mtimeNs: '0', atimeNs: '0' };

test('inode flags: entries of older images have none; when present they are chattr letters', () => {
  assert.equal(manifestProblem(manifest(base)), undefined);
  assert.equal(manifestProblem(manifest({ ...base, flags: 'iad' })), undefined);
  assert.match(
    manifestProblem(manifest({ ...base, flags: '+i -R' })) ?? '',
    /flags is not a string of letters/,
  );
  assert.match(manifestProblem(manifest({ ...base, flags: 16 })) ?? '', /flags is not a string of letters/);
});
