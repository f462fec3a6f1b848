import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DEFAULT_DROP_LIMITS, judgeReceivers, type ReceiverView } from '../../src/transport/drop-policy.ts';

const NOW = 100_000;
const session = { startedAt: NOW - 30_000, totalChunks: 100, othersDoneAt: 0 };
const view = (name: string, over: Partial<ReceiverView> = {}): ReceiverView => ({
  name,
  joinedAt: NOW - 30_000,
  lastHeard: NOW - 100,
  lastProgress: NOW - 500,
  chunks: 50,
  rx: 100_000,
  exp: 100_000,
  heldMs: 0,
  ...over,
});

test('healthy receivers are kept', () => {
  assert.deepEqual(judgeReceivers(NOW, [view('a'), view('b'), view('c')], session), []);
});

test('a receiver silent past deadAfterMs is dropped as unresponsive, naming how long', () => {
  const v = judgeReceivers(NOW, [view('a'), view('b', { lastHeard: NOW - 11_000 })], session);
  assert.deepEqual(v, [{ name: 'b', reason: 'unresponsive: no message for 11 s' }]);
});

test('one receiver holding the window closed is dropped; a lone one never is', () => {
  const held = DEFAULT_DROP_LIMITS.holdLimitMs + 200;
  const v = judgeReceivers(NOW, [view('a'), view('slow', { heldMs: held, chunks: 12 })], session);
  assert.equal(v.length, 1);
  assert.equal(v[0]?.name, 'slow');
  assert.match(
    v[0]?.reason ?? '',
    /^too slow \(held back\): .* for 8 of the last 10 s \(it has 12 of 100 chunks\)/,
  );
  assert.deepEqual(judgeReceivers(NOW, [view('alone', { heldMs: held })], session), []);
});

test('an outlier losing most packets is dropped; everyone losing alike is congestion, nobody is dropped', () => {
  const lossy = view('lossy', { rx: 30_000 });
  const v = judgeReceivers(NOW, [view('a'), view('b'), lossy], session);
  assert.equal(v.length, 1);
  assert.match(v[0]?.reason ?? '', /^too slow \(loss\): lost 70 % .* while the others lost 0 %/);
  const all = [view('a', { rx: 30_000 }), view('b', { rx: 35_000 }), view('c', { rx: 32_000 })];
  assert.deepEqual(judgeReceivers(NOW, all, session), []);
  // Two of three starved alike (guests short of CPU) against one that keeps up: not outliers.
  const starved = [view('fast', { rx: 78_000 }), view('s1', { rx: 16_000 }), view('s2', { rx: 18_000 })];
  assert.deepEqual(judgeReceivers(NOW, starved, session), []);
  // Of two, the one losing most while the other does not is still the outlier.
  assert.deepEqual(
    judgeReceivers(NOW, [view('a'), lossy], session).map((x) => x.name),
    ['lossy'],
  );
  // The other one is silent (paused): its 0 % says nothing, so the one at work is no outlier.
  assert.deepEqual(
    judgeReceivers(NOW, [view('paused', { lastHeard: NOW - 8000, rx: 0, exp: 0 }), lossy], session),
    [],
  );
  // Too early to judge: joined less than a loss window ago.
  assert.deepEqual(judgeReceivers(NOW, [view('a'), { ...lossy, joinedAt: NOW - 2000 }], session), []);
});

test('no chunk completed for stallAfterMs is a stall, counted from the start at the earliest', () => {
  const v = judgeReceivers(NOW, [view('a'), view('b', { lastProgress: NOW - 16_000, chunks: 7 })], session);
  assert.deepEqual(v, [{ name: 'b', reason: 'stalled: no chunk completed for 16 s (has 7 of 100)' }]);
  const justStarted = { ...session, startedAt: NOW - 5000 };
  assert.deepEqual(judgeReceivers(NOW, [view('b', { lastProgress: 0 })], justStarted), []);
});

test('a receiver still missing chunks lagLimitMs after all others finished is dropped as lagging', () => {
  const late = { ...session, othersDoneAt: NOW - DEFAULT_DROP_LIMITS.lagLimitMs - 1000 };
  const v = judgeReceivers(NOW, [view('last', { chunks: 90 })], late);
  assert.match(v[0]?.reason ?? '', /^too slow \(lagging\): still missing 10 chunks 60 s after/);
});

test('a receiver holding every chunk is finishing its target: only a long silence drops it', () => {
  const late = { ...session, othersDoneAt: NOW - DEFAULT_DROP_LIMITS.lagLimitMs - 1000 };
  const finishing = view('f', { chunks: 100, lastHeard: NOW - 30_000, lastProgress: NOW - 40_000, rx: 0 });
  assert.deepEqual(judgeReceivers(NOW, [view('a'), finishing], session), []);
  assert.deepEqual(judgeReceivers(NOW, [finishing], late), [], 'not lagging: it misses nothing');
  const gone = { ...finishing, lastHeard: NOW - DEFAULT_DROP_LIMITS.finishSilenceMs - 2000 };
  assert.deepEqual(judgeReceivers(NOW, [gone], late), [
    { name: 'f', reason: 'unresponsive: no message for 62 s while finishing (it had every chunk)' },
  ]);
  // A live table that may still grow: having every chunk so far is not finishing.
  const growing = { ...session, sealed: false };
  assert.deepEqual(judgeReceivers(NOW, [finishing], growing), [
    { name: 'f', reason: 'unresponsive: no message for 30 s' },
  ]);
});
