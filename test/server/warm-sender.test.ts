import assert from 'node:assert/strict';
import { test } from 'node:test';

import { MAX_WARM, MAX_WARM_IDLE, warmAction, type WarmView } from '../../src/server/warm-sender.ts';

const waiting: WarmView = {
  capable: true,
  state: 'waiting',
  master: null,
  image: 'lab.imgc',
  fileset: 1,
  joined: 1,
  warm: null,
  readiedThisRun: false,
  slotFree: true,
  othersWarm: 0,
};

test('a waiting image session is readied before anyone joined; fewer of those are held than of sessions someone joined', () => {
  assert.equal(warmAction(waiting), 'ready');
  assert.equal(warmAction({ ...waiting, joined: 0 }), 'ready');
  assert.ok(MAX_WARM_IDLE < MAX_WARM);
  assert.equal(warmAction({ ...waiting, joined: 0, othersWarm: MAX_WARM_IDLE - 1 }), 'ready');
  assert.equal(warmAction({ ...waiting, joined: 0, othersWarm: MAX_WARM_IDLE }), 'none');
  assert.equal(warmAction({ ...waiting, joined: 1, othersWarm: MAX_WARM_IDLE }), 'ready');
});

test('not readied: a send that cannot be held, a master workstation sending, no image yet, no free slot, enough held', () => {
  assert.equal(warmAction({ ...waiting, othersWarm: MAX_WARM - 1 }), 'ready');
  assert.equal(warmAction({ ...waiting, othersWarm: MAX_WARM }), 'none');
  assert.equal(warmAction({ ...waiting, capable: false }), 'none');
  assert.equal(warmAction({ ...waiting, master: 'w9' }), 'none');
  assert.equal(warmAction({ ...waiting, image: '' }), 'none');
  assert.equal(warmAction({ ...waiting, slotFree: false }), 'none');
  for (const state of ['sending', 'done', 'failed', 'stopped', 'interrupted'])
    assert.equal(warmAction({ ...waiting, state }), 'none', state);
});

test('once per run: a warm sender that ended before the trigger is not readied again', () => {
  assert.equal(warmAction({ ...waiting, readiedThisRun: true }), 'none');
});

test('a warm sender is kept while its session waits to send what it reads', () => {
  const warm = { ...waiting, warm: { image: 'lab.imgc', fileset: 1 }, readiedThisRun: true };
  assert.equal(warmAction(warm), 'keep');
  // Slots and warm senders are counted with it: none left is no reason to let it go.
  assert.equal(warmAction({ ...warm, slotFree: false, othersWarm: MAX_WARM }), 'keep');
  // Nor is every workstation having left again.
  assert.equal(warmAction({ ...warm, joined: 0 }), 'keep');
});

test('a warm sender goes when its session changed what it sends, got a master, or stopped waiting', () => {
  const warm = { ...waiting, warm: { image: 'lab.imgc', fileset: 1 }, readiedThisRun: true };
  assert.equal(warmAction({ ...warm, image: 'other.imgc' }), 'drop');
  assert.equal(warmAction({ ...warm, fileset: 2 }), 'drop');
  assert.equal(warmAction({ ...warm, master: 'w9', image: '' }), 'drop');
  assert.equal(warmAction({ ...warm, state: 'stopped' }), 'drop');
  assert.equal(warmAction({ ...warm, capable: false }), 'drop');
});
