/**
 * Live sessions on loopback: a provider whose chunk table grows while the session runs
 * (LiveTable), real UDP and TCP, receivers in this process with consumers that check the
 * order they hear of rows, deltas, chunks and the seal in.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { test } from 'node:test';
import {
  CODEC_NONE,
  runReceiver,
  runSender,
  type ChunkConsumer,
  type ChunkInfo,
  type ChunkProvider,
  type LiveFollower,
  type ReceiverOptions,
  type SenderOptions,
  type TableExtension,
} from '../../src/transport/index.ts';

const KiB = 1024;

function endpoint(): { port: number; group: string } {
  return {
    port: 20000 + 2 * Math.floor(Math.random() * 6000),
    group: `239.254.${1 + Math.floor(Math.random() * 250)}.${1 + Math.floor(Math.random() * 250)}`,
  };
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface GrowingSource {
  provider: ChunkProvider;
  /** Every distinct chunk, by id, in the order they were appended. */
  chunks: Map<string, Buffer>;
  /** The delta of every append, in order. */
  deltas: number[];
  /** Stored bytes held now and at most; chunks released by the sender. */
  stats: { held: number; peak: number; released: number; waitedFull: number };
  done: Promise<void>;
}

/**
 * Appends `count` chunks of 1-300 KiB, one every `delayMs(i)`; every fifth repeats an earlier
 * id (a dedup hit: a delta with no new row). Holds at most `budget` stored bytes, waiting
 * for the sender to release some (LiveFollower.full) when it has no room, then seals with
 * the list of ids as the final meta.
 */
function growingSource(count: number, delayMs: (i: number) => number, budget = Infinity): GrowingSource {
  const chunks = new Map<string, Buffer>();
  const deltas: number[] = [];
  const stats = { held: 0, peak: 0, released: 0, waitedFull: 0 };
  let follower: LiveFollower | null = null;
  const before: Array<(f: LiveFollower) => void> = [];
  const emit = (fn: (f: LiveFollower) => void): void => {
    if (follower) fn(follower);
    else before.push(fn);
  };
  let room: (() => void) | null = null;
  let closed = false;
  const ids: string[] = [];
  const released = new Set<string>();
  const done = (async () => {
    for (let i = 0; i < count && !closed; i++) {
      await sleep(delayMs(i));
      if (i % 5 === 4) {
        // The same content again: no new row, but the consumer hears where it goes.
        deltas.push(i);
        emit((f) => f.append({ chunks: [], metaDelta: { i, again: ids[i - 2] } }));
        continue;
      }
      const data = randomBytes((1 + ((i * 37) % 300)) * KiB);
      while (stats.held + data.length > budget && !closed) {
        stats.waitedFull++;
        const wait = new Promise<void>((r) => (room = r));
        emit((f) => f.full());
        await wait;
      }
      const id = sha(data);
      chunks.set(id, data);
      ids.push(id);
      stats.held += data.length;
      stats.peak = Math.max(stats.peak, stats.held);
      deltas.push(i);
      const info: ChunkInfo = { id, codec: CODEC_NONE, storedLength: data.length, rawLength: data.length };
      emit((f) => f.append({ chunks: [info], metaDelta: { i, id } }));
    }
    emit((f) => f.seal({ kind: 'test', order: ids }));
  })();
  const provider: ChunkProvider = {
    chunks: [],
    meta: { kind: 'test-live' },
    async readStored(id) {
      // The sender promised never to read a released chunk again: a read would fail its session.
      if (released.has(id)) throw new Error(`chunk ${id} was read after its release`);
      const b = chunks.get(id);
      if (!b) throw new Error(`unknown chunk ${id}`);
      return b;
    },
    live: {
      maxStoredLength: 300 * KiB,
      follow(f) {
        follower = f;
        for (const fn of before.splice(0)) fn(f);
      },
      release(list) {
        for (const id of list) {
          released.add(id);
          stats.held -= chunks.get(id)!.length;
          stats.released++;
        }
        const r = room;
        room = null;
        r?.();
      },
    },
    async close() {
      closed = true;
      const r = room;
      room = null;
      r?.();
    },
  };
  return { provider, chunks, deltas, stats, done };
}

interface Heard {
  consumer: ChunkConsumer;
  /** What the consumer was told, in order. */
  events: string[];
  applied: Map<string, string>;
  sealedMeta: unknown;
  deltas: number[];
}

/** A consumer that checks it hears of every chunk's row before the chunk itself, and of the seal last. */
function listeningConsumer(): Heard {
  const known = new Set<string>();
  const h: Heard = {
    consumer: undefined as unknown as ChunkConsumer,
    events: [],
    applied: new Map(),
    sealedMeta: null,
    deltas: [],
  };
  let sealed = false;
  h.consumer = {
    has: () => false,
    async prepare(session) {
      assert.equal(session.live, true);
      assert.deepEqual(session.meta, { kind: 'test-live' });
    },
    async extend(ext: TableExtension) {
      assert.equal(sealed, false, 'an extension after the seal');
      for (const c of ext.chunks) known.add(c.id);
      h.deltas.push((ext.metaDelta as { i: number }).i);
      h.events.push(`extend ${ext.chunks.length}`);
    },
    async apply(id, raw) {
      assert.ok(known.has(id), `chunk ${id} applied before its row was announced`);
      assert.equal(h.applied.has(id), false, `chunk ${id} applied twice`);
      h.applied.set(id, sha(raw));
      h.events.push('apply');
    },
    async seal(meta) {
      sealed = true;
      h.sealedMeta = meta;
      h.events.push('seal');
    },
    async finish() {
      assert.equal(sealed, true, 'finished before the seal');
      h.events.push('finish');
    },
    async abort() {},
  };
  return h;
}

function receive(ep: { port: number }, name: string, h: Heard, extra: Partial<ReceiverOptions> = {}) {
  return runReceiver({
    from: `127.0.0.1:${ep.port}`,
    interface: '127.0.0.1',
    name,
    makeConsumer: async () => h.consumer,
    ...extra,
  });
}

function send(provider: ChunkProvider, ep: { port: number; group: string }, opts: Partial<SenderOptions>) {
  return runSender(provider, { interface: '127.0.0.1', ...ep, waitSeconds: 30, ...opts });
}

function assertEverything(src: GrowingSource, h: Heard, name: string): void {
  assert.equal(h.applied.size, src.chunks.size, `${name}: chunks applied`);
  for (const [id, data] of src.chunks) assert.equal(h.applied.get(id), sha(data), `${name}: chunk ${id}`);
  assert.deepEqual(h.deltas, src.deltas, `${name}: every delta, in order`);
  assert.deepEqual(h.sealedMeta, { kind: 'test', order: [...src.chunks.keys()] });
  assert.equal(h.events.at(-1), 'finish');
  assert.ok(
    h.events.findLastIndex((e) => e.startsWith('extend')) < h.events.indexOf('seal'),
    `${name}: no extension after the seal`,
  );
}

test('a growing table: two receivers, one joining late, both lossy, encrypted, get every chunk and delta in order and the seal', async (t) => {
  // 60 appends over ~3 s: most of the session is spent waiting for the source.
  const src = growingSource(60, (i) => (i % 10 === 0 ? 200 : 30));
  const ep = endpoint();
  const sender = send(src.provider, ep, { clients: 1, rateMbit: 200, key: 'lab-key', encrypt: true });
  const early = listeningConsumer();
  const late = listeningConsumer();
  let lateStarted: () => void = () => {};
  const lateGo = new Promise<void>((r) => (lateStarted = r));
  const first = receive(ep, 'early', early, {
    key: 'lab-key',
    simulateLoss: 0.05,
    onProgress: (p) => {
      if (p.chunks >= 10) lateStarted();
    },
  });
  await lateGo;
  const second = receive(ep, 'late', late, { key: 'lab-key', simulateLoss: 0.05 });
  const [s, a, b] = await Promise.all([sender, first, second, src.done]);
  assert.equal(s.ok, true, JSON.stringify(s.receivers));
  assert.equal(a.ok, true, `${a.code} ${a.message}`);
  assert.equal(b.ok, true, `${b.code} ${b.message}`);
  assert.equal(s.chunks, src.chunks.size, 'repeated ids travel once');
  assertEverything(src, early, 'early');
  assertEverything(src, late, 'late');
  assert.ok(a.counters.simulatedDrops > 0 && b.counters.simulatedDrops > 0, 'the loss hook dropped nothing');
  assert.ok(s.counters.repairPackets > 0, 'no repair was sent');
  t.diagnostic(
    `${s.chunks} chunks in ${s.durationMs} ms; repairs ${s.counters.repairPackets}; late joined with ${late.events.indexOf('apply')} extensions before its first chunk`,
  );
});

test('a slow source does not get its receivers dropped as stalled', async () => {
  // Pauses of 3 s between bursts, with receivers judged stalled after 1.5 s without progress (and
  // dead after 2 s silent: shorter is what a loaded two-core machine's event loops miss by themselves).
  const src = growingSource(12, (i) => (i % 4 === 0 ? 3000 : 10));
  const ep = endpoint();
  const h = [listeningConsumer(), listeningConsumer()];
  const [s, ...got] = await Promise.all([
    send(src.provider, ep, { clients: 2, stallAfterMs: 1500, deadAfterMs: 2000 }),
    receive(ep, 'r0', h[0]!),
    receive(ep, 'r1', h[1]!),
    src.done,
  ]);
  assert.equal(s.ok, true, JSON.stringify(s.receivers.map((r) => [r.name, r.state, r.reason])));
  for (const [i, r] of got.slice(0, 2).entries()) {
    assert.equal((r as { ok: boolean }).ok, true);
    assertEverything(src, h[i]!, `r${i}`);
  }
  assert.ok(s.durationMs >= 8500, `the source took its time (${s.durationMs} ms)`);
});

test('a full provider gets chunks every receiver has released; from then on a joiner is turned away', async (t) => {
  // 2 MiB of budget for ~7 MiB of chunks: capture waits for releases, which need the receiver's progress.
  const src = growingSource(50, () => 5, 2 * 1024 * KiB);
  const ep = endpoint();
  const h = listeningConsumer();
  const tooLate = listeningConsumer();
  const sender = send(src.provider, ep, { clients: 1 });
  const first = receive(ep, 'r0', h);
  // Joins once the provider had to wait for room (the sender releases from then on).
  while (src.stats.released === 0) await sleep(20);
  const refused = await receive(ep, 'late', tooLate);
  const [s, r] = await Promise.all([sender, first, src.done]);
  assert.equal(r.ok, true, `${r.code} ${r.message}`);
  assertEverything(src, h, 'r0');
  assert.equal(refused.ok, false);
  assert.equal(refused.code, 'E_DROPPED');
  assert.match(
    refused.message ?? '',
    /joined too late: this live session no longer holds its first \d+ chunks/,
  );
  assert.equal(tooLate.events.length, 0, 'the late receiver was told nothing of the table');
  assert.ok(src.stats.waitedFull > 0, 'the provider never ran full');
  assert.ok(src.stats.peak <= 2 * 1024 * KiB, `held ${src.stats.peak} bytes at most`);
  assert.ok(src.stats.released > 0);
  const lateReport = s.receivers.find((x) => x.name === 'late');
  assert.equal(lateReport, undefined, 'a receiver turned away before joining is not in the result');
  t.diagnostic(`peak ${src.stats.peak} bytes held, ${src.stats.released} chunks released`);
});

test('a source that fails ends the session for every receiver with the reason', async () => {
  const ep = endpoint();
  let follower: LiveFollower | null = null;
  const provider: ChunkProvider = {
    chunks: [],
    meta: { kind: 'test-live' },
    readStored: async () => Buffer.alloc(0),
    live: {
      maxStoredLength: 1024,
      follow: (f) => (follower = f),
      release: () => {},
    },
  };
  const h = listeningConsumer();
  const sender = send(provider, ep, { clients: 1 }).catch((e: unknown) => e);
  const r = receive(ep, 'r0', h);
  while (!follower) await sleep(10);
  await sleep(300);
  (follower as LiveFollower).fail(new Error('the source disk went away'));
  const [s, got] = await Promise.all([sender, r]);
  assert.ok(s instanceof Error && /source disk went away/.test(s.message));
  assert.equal(got.ok, false);
  assert.equal(got.code, 'E_DROPPED');
  assert.match(got.message ?? '', /sender failed: the source disk went away/);
});
