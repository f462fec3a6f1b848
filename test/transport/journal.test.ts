import assert from 'node:assert/strict';
import { test } from 'node:test';
import { sessionFingerprint } from '../../src/transport/journal.ts';

const chunks = [{ id: 'a'.repeat(64), codec: 1, storedLength: 10, rawLength: 20 }];

test('the session fingerprint is what was sent, not what the image file was called', () => {
  const named = sessionFingerprint({ chunks, meta: { kind: 'image', fileset: 1, image: 'lab.imgc' } });
  const renamed = sessionFingerprint({ chunks, meta: { kind: 'image', fileset: 1, image: 'lab-2024.imgc' } });
  const older = sessionFingerprint({ chunks, meta: { kind: 'image', fileset: 1 } });
  assert.equal(named, renamed);
  assert.equal(named, older);
  // Another file set, or other chunks, is another layout.
  assert.notEqual(
    named,
    sessionFingerprint({ chunks, meta: { kind: 'image', fileset: 2, image: 'lab.imgc' } }),
  );
  assert.notEqual(named, sessionFingerprint({ chunks: [], meta: { kind: 'image', fileset: 1 } }));
});
