/**
 * Real multicast sessions on loopback (127.0.0.1, a 239.255.x.y group, multicast
 * loop on): sender and receivers in this process, files on disk, real UDP and TCP.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  fileConsumer,
  flatFileProvider,
  runReceiver,
  runSender,
  type ReceiverOptions,
  type ReceiverResult,
  type SenderOptions,
  type SenderResult,
} from '../../src/transport/index.ts';
import {
  decodePacket,
  encodeHeader,
  FRAG_PAYLOAD,
  fragmentCount,
  TYPE_DATA,
} from '../../src/transport/packet.ts';
import { UsageError } from '../../src/errors.ts';
import { tempDir } from '../helpers/env.ts';

const MiB = 1024 * 1024;

/** Control port p and data port p + 1 below 32768, out of the kernel's range for outgoing connections' ports. */
function endpoint(): { port: number; group: string } {
  return {
    port: 20000 + 2 * Math.floor(Math.random() * 6000),
    group: `239.255.${1 + Math.floor(Math.random() * 250)}.${1 + Math.floor(Math.random() * 250)}`,
  };
}

/** Random data with two repeated all-zero chunks, so the session also deduplicates. */
async function source(dir: string, mib: number): Promise<string> {
  const parts: Buffer[] = [];
  for (let i = 0; i < mib; i++) parts.push(i === 2 || i === 5 ? Buffer.alloc(MiB) : randomBytes(MiB));
  parts.push(randomBytes(12345));
  const path = join(dir, 'source.bin');
  await writeFile(path, Buffer.concat(parts));
  return path;
}

interface Run {
  sender: SenderResult;
  receivers: ReceiverResult[];
}

async function session(
  t: TestContext,
  src: string,
  n: number,
  sopts: Partial<SenderOptions> = {},
  ropts: (i: number) => Partial<ReceiverOptions> = () => ({}),
  during?: (ep: { port: number; group: string }) => Promise<void>,
): Promise<Run & { outs: string[] }> {
  const dir = await tempDir(t);
  const ep = endpoint();
  const provider = await flatFileProvider(src);
  const sender = runSender(provider, {
    interface: '127.0.0.1',
    ...ep,
    clients: n,
    waitSeconds: 30,
    ...sopts,
  });
  const outs = Array.from({ length: n }, (_, i) => join(dir, `out${i}.bin`));
  const receivers = outs.map((out, i) =>
    runReceiver({
      from: `127.0.0.1:${ep.port}`,
      interface: '127.0.0.1',
      name: `r${i}`,
      makeConsumer: async () => fileConsumer(out),
      ...ropts(i),
    }),
  );
  const side = during?.(ep);
  const result = { sender: await sender, receivers: await Promise.all(receivers), outs };
  await side;
  return result;
}

async function assertSame(src: string, out: string): Promise<void> {
  const [a, b] = await Promise.all([readFile(src), readFile(out)]);
  assert.equal(b.length, a.length, `${out} has the wrong size`);
  assert.ok(a.equals(b), `${out} differs from ${src}`);
}

test('three receivers get 64 MiB byte-exact; repeated chunks travel once', async (t) => {
  const src = await source(await tempDir(t), 64);
  const r = await session(t, src, 3);
  assert.equal(r.sender.ok, true, JSON.stringify(r.sender.receivers));
  assert.equal(r.sender.chunks, 64); // 65 pieces, two identical zero chunks
  for (const rr of r.receivers) assert.equal(rr.ok, true, `${rr.code} ${rr.message}`);
  for (const out of r.outs) await assertSame(src, out);
  assert.deepEqual(
    r.sender.receivers.map((x) => x.state),
    ['ok', 'ok', 'ok'],
  );
  assert.equal(r.sender.counters.chunksSent, 64);
});

for (const loss of [0.01, 0.05]) {
  test(`${loss * 100}% packet loss per receiver: byte-exact, repair bytes within 3x the bytes lost`, async (t) => {
    const src = await source(await tempDir(t), 16);
    const r = await session(t, src, 3, {}, () => ({ simulateLoss: loss }));
    for (const rr of r.receivers) assert.equal(rr.ok, true, `${rr.code} ${rr.message}`);
    for (const out of r.outs) await assertSame(src, out);
    const lostPackets = r.receivers.reduce((a, x) => a + x.counters.lost, 0);
    const simulated = r.receivers.reduce((a, x) => a + x.counters.simulatedDrops, 0);
    assert.ok(simulated > 0, 'the loss hook dropped nothing');
    assert.ok(lostPackets >= simulated);
    const lostBytes = lostPackets * FRAG_PAYLOAD;
    assert.ok(r.sender.counters.repairBytes > 0);
    assert.ok(
      r.sender.counters.repairBytes <= 3 * lostBytes,
      `repair ${r.sender.counters.repairBytes} B vs lost ${lostBytes} B`,
    );
  });
}

test('a receiver that stops responding is dropped as unresponsive; the others finish', async (t) => {
  const src = await source(await tempDir(t), 16);
  const r = await session(t, src, 3, { deadAfterMs: 1500, rateMbit: 100 }, (i) =>
    i === 1 ? { stallAfterChunks: 3 } : {},
  );
  const stalled = r.sender.receivers.find((x) => x.name === 'r1');
  assert.equal(stalled?.state, 'dropped');
  assert.match(stalled?.reason ?? '', /^unresponsive/);
  assert.equal(r.receivers[1]?.ok, false);
  assert.equal(r.receivers[1]?.code, 'E_DROPPED');
  for (const i of [0, 2]) {
    assert.equal(r.receivers[i]?.ok, true);
    await assertSame(src, r.outs[i] as string);
  }
  assert.equal(r.sender.ok, false);
});

test('a receiver killed mid-transfer is dropped as disconnected; the others finish', async (t) => {
  const src = await source(await tempDir(t), 16);
  const ac = new AbortController();
  const r = await session(t, src, 3, { rateMbit: 100 }, (i) =>
    i === 2
      ? {
          signal: ac.signal,
          onProgress: (p) => {
            if (p.chunks >= 2) ac.abort();
          },
        }
      : {},
  );
  assert.equal(r.receivers[2]?.code, 'E_ABORTED');
  const killed = r.sender.receivers.find((x) => x.name === 'r2');
  assert.equal(killed?.state, 'dropped');
  assert.match(killed?.reason ?? '', /^disconnected/);
  for (const i of [0, 1]) await assertSame(src, r.outs[i] as string);
});

test('a receiver losing most packets is dropped as too slow without holding back the other', async (t) => {
  const src = await source(await tempDir(t), 16);
  const r = await session(t, src, 2, { rateMbit: 40, lossWindowMs: 1500 }, (i) =>
    i === 0 ? { simulateLoss: 0.7 } : {},
  );
  const slow = r.sender.receivers.find((x) => x.name === 'r0');
  assert.equal(slow?.state, 'dropped');
  assert.match(
    slow?.reason ?? '',
    /^too slow \(loss\): lost \d+ % of the packets .* while the others lost \d+ %/,
  );
  assert.equal(r.receivers[0]?.code, 'E_DROPPED');
  assert.equal(r.receivers[1]?.ok, true);
  await assertSame(src, r.outs[1] as string);
});

test('a receiver dropped as too slow that joins again while the others finish still catches up: the send waits for it', async (t) => {
  const dir = await tempDir(t);
  const src = await source(dir, 16);
  const ep = endpoint();
  const sender = runSender(await flatFileProvider(src), {
    interface: '127.0.0.1',
    ...ep,
    clients: 2,
    waitSeconds: 30,
    rateMbit: 40,
    lossWindowMs: 1500,
  });
  const slowOut = join(dir, 'slow.bin');
  const journalPath = join(dir, 'slow.journal');
  const receive = (name: string, out: string, o: Partial<ReceiverOptions> = {}) =>
    runReceiver({
      from: `127.0.0.1:${ep.port}`,
      interface: '127.0.0.1',
      name,
      makeConsumer: async () => fileConsumer(out),
      ...o,
    });
  const fast = receive('pc-2', join(dir, 'fast.bin'));
  let fastDone = false;
  void fast.then(() => (fastDone = true));
  const dropped = await receive('pc-1', slowOut, {
    simulateLoss: 0.7,
    journalPath,
    makeConsumer: async () => fileConsumer(slowOut, { journalPath }),
  });
  assert.equal(dropped.code, 'E_DROPPED', `${dropped.code} ${dropped.message}`);
  assert.equal(fastDone, false, 'dropped while the other still receives');
  // It joins again at once, but is slow to get ready (a disk to open, a busy machine): the
  // other finishes meanwhile, and the send must not end under it.
  const again = receive('pc-1', slowOut, {
    journalPath,
    makeConsumer: async () => {
      await fast;
      await new Promise((r) => setTimeout(r, 1500));
      return fileConsumer(slowOut, { journalPath });
    },
  });
  const [result, caught, other] = await Promise.all([sender, again, fast]);
  assert.equal(other.ok, true);
  assert.equal(caught.ok, true, `${caught.code} ${caught.message}`);
  assert.deepEqual(result.receivers.map((r) => [r.name, r.state]).sort(), [
    ['pc-1', 'ok'],
    ['pc-2', 'ok'],
  ]);
  await assertSame(src, slowOut);
});

test('the journal names a chunk only after a consumer sync that covered it, and everything written when the receiver stops', async (t) => {
  const dir = await tempDir(t);
  const src = await source(dir, 16);
  const out = join(dir, 'synced.bin');
  const journalPath = join(dir, 'synced.journal');
  const applied: string[] = [];
  const durable = new Set<string>();
  let syncs = 0;
  const early: string[] = [];
  const run = await session(t, src, 1, { deadAfterMs: 1000, rateMbit: 100 }, () => ({
    journalPath,
    journalCheckpointBytes: 3 << 20,
    stallAfterChunks: 9,
    makeConsumer: async () => {
      const inner = await fileConsumer(out, { journalPath });
      return {
        ...inner,
        has: (id: string) => inner.has(id),
        prepare: (s) => inner.prepare(s),
        finish: () => inner.finish(),
        abort: (why) => inner.abort(why),
        async apply(id: string, raw: Buffer) {
          await inner.apply(id, raw);
          applied.push(id);
        },
        async sync() {
          // Whatever the journal names by now must have been made durable by an earlier sync.
          const listed = (await readFile(journalPath, 'utf8'))
            .split('\n')
            .filter((l) => /^[0-9a-f]{64}$/.test(l));
          for (const id of listed) if (!durable.has(id)) early.push(id);
          const covered = [...applied];
          await inner.sync!();
          syncs++;
          for (const id of covered) durable.add(id);
        },
      };
    },
  }));
  const r = run.receivers[0]!;
  assert.equal(r.ok, false);
  const journaled = (await readFile(journalPath, 'utf8')).split('\n').filter((l) => /^[0-9a-f]{64}$/.test(l));
  // Checkpoints every 3 chunks of 1 MiB, and a last one when the receiver was dropped.
  assert.ok(syncs >= 3, `${syncs} syncs`);
  assert.equal(journaled.length, applied.length);
  for (const id of journaled)
    assert.ok(durable.has(id), `journaled ${id.slice(0, 12)} before a sync covered it`);
  assert.deepEqual(early, [], 'the journal named chunks no sync had covered yet');
});

test('without a journal, a consumer that asks for eager syncs is synced while receiving, so finish() has little left', async (t) => {
  const dir = await tempDir(t);
  const src = await source(dir, 24);
  const out = join(dir, 'eager.bin');
  let syncs = 0;
  let syncsBeforeFinish = -1;
  let appliedAtFirstSync = -1;
  let applied = 0;
  const run = await session(t, src, 1, { rateMbit: 200 }, () => ({
    makeConsumer: async () => {
      const inner = fileConsumer(out);
      return {
        ...inner,
        has: (id: string) => inner.has(id),
        prepare: (s) => inner.prepare(s),
        abort: (why) => inner.abort(why),
        async apply(id: string, raw: Buffer) {
          await inner.apply(id, raw);
          applied++;
        },
        async sync() {
          if (appliedAtFirstSync < 0) appliedAtFirstSync = applied;
          await inner.sync!();
          syncs++;
        },
        async finish() {
          syncsBeforeFinish = syncs;
          await inner.finish();
        },
      };
    },
  }));
  assert.equal(run.receivers[0]!.ok, true, run.receivers[0]!.message ?? '');
  await assertSame(src, out);
  assert.equal(fileConsumer(out).eagerSyncBytes, 8 << 20);
  // 24 MiB in 1 MiB chunks, a sync whenever 8 MiB wait and none runs: at least two before the end.
  assert.ok(syncsBeforeFinish >= 2, `${syncsBeforeFinish} syncs before finish()`);
  assert.ok(
    appliedAtFirstSync >= 8 && appliedAtFirstSync < 24,
    `first sync after ${appliedAtFirstSync} chunks`,
  );
});

test('resume: a receiver that comes back with its journal gets only the missing chunks', async (t) => {
  const dir = await tempDir(t);
  const src = await source(dir, 16);
  const out = join(dir, 'resumed.bin');
  const journalPath = join(dir, 'resumed.journal');
  const consumer = () => fileConsumer(out, { journalPath });
  const ep = endpoint();
  const first = await Promise.all([
    runSender(await flatFileProvider(src), {
      interface: '127.0.0.1',
      ...ep,
      clients: 1,
      deadAfterMs: 1000,
      rateMbit: 100,
    }),
    runReceiver({
      from: `127.0.0.1:${ep.port}`,
      interface: '127.0.0.1',
      journalPath,
      stallAfterChunks: 5,
      makeConsumer: async () => consumer(),
    }),
  ]);
  assert.equal(first[1].ok, false);
  const had = first[1].chunks;
  assert.ok(had >= 5 && had < 16, `first run wrote ${had} chunks`);

  const ep2 = endpoint();
  const [s, rr] = await Promise.all([
    runSender(await flatFileProvider(src), { interface: '127.0.0.1', ...ep2, clients: 1 }),
    runReceiver({
      from: `127.0.0.1:${ep2.port}`,
      interface: '127.0.0.1',
      journalPath,
      makeConsumer: async () => consumer(),
    }),
  ]);
  assert.equal(rr.ok, true, `${rr.code} ${rr.message}`);
  assert.equal(rr.chunksHad, had);
  assert.equal(s.receivers[0]?.chunksHad, had);
  assert.equal(s.counters.chunksSkipped, had);
  assert.equal(s.counters.chunksSent, s.chunks - had);
  await assertSame(src, out);
});

test('late join: a receiver joining mid-transfer still gets everything', async (t) => {
  const dir = await tempDir(t);
  const src = await source(dir, 16);
  const ep = endpoint();
  const outs = [join(dir, 'early.bin'), join(dir, 'late.bin')];
  let startLate: () => void = () => {};
  const lateGo = new Promise<void>((r) => (startLate = r));
  const sender = runSender(await flatFileProvider(src), {
    interface: '127.0.0.1',
    ...ep,
    clients: 1,
    rateMbit: 60,
  });
  const early = runReceiver({
    from: `127.0.0.1:${ep.port}`,
    interface: '127.0.0.1',
    name: 'early',
    makeConsumer: async () => fileConsumer(outs[0] as string),
    onProgress: (p) => {
      if (p.chunks >= 4) startLate();
    },
  });
  await lateGo;
  const late = runReceiver({
    from: `127.0.0.1:${ep.port}`,
    interface: '127.0.0.1',
    name: 'late',
    makeConsumer: async () => fileConsumer(outs[1] as string),
  });
  const [s, e, l] = await Promise.all([sender, early, late]);
  assert.equal(e.ok, true);
  assert.equal(l.ok, true, `${l.code} ${l.message}`);
  for (const o of outs) await assertSame(src, o);
  const lateReport = s.receivers.find((x) => x.name === 'late');
  assert.ok((lateReport?.repairsRequested ?? 0) > 0, 'the late receiver should have needed repairs');
  assert.equal(s.counters.chunksSent, s.chunks, 'the first pass is not restarted');
});

test('garbage and forged packets on the data port are counted and never written', async (t) => {
  const src = await source(await tempDir(t), 16);
  const spray = async (ep: { port: number; group: string }) => {
    // Learn the session nonce the way an attacker on the LAN would: by listening.
    const sniff = dgram.createSocket({ type: 'udp4', reuseAddr: true });
    await new Promise<void>((r) => sniff.bind(ep.port + 1, ep.group, () => r()));
    sniff.addMembership(ep.group, '127.0.0.1');
    const [pkt] = (await new Promise((r) => sniff.once('message', (m) => r([m])))) as [Buffer];
    sniff.close();
    const seen = decodePacket(pkt);
    const out = dgram.createSocket('udp4');
    await new Promise<void>((r) => out.bind(0, '127.0.0.1', () => r()));
    out.setMulticastInterface('127.0.0.1');
    out.setMulticastLoopback(true);
    const count = fragmentCount(MiB);
    for (let round = 0; round < 40; round++) {
      for (let k = 0; k < 50; k++) {
        out.send(randomBytes(1 + Math.floor(Math.random() * 1400)), ep.port + 1, ep.group);
        // Right nonce and shape, wrong content, for chunks not sent yet.
        const seq = Math.min(14, seen.seq + 1 + (k % 6));
        const frag = Math.floor(Math.random() * (count - 1));
        const h = encodeHeader({
          type: TYPE_DATA,
          nonce: seen.nonce,
          seq,
          frag,
          count,
          txPos: 0,
          serial: seen.serial,
        });
        out.send(Buffer.concat([h, randomBytes(FRAG_PAYLOAD)]), ep.port + 1, ep.group);
      }
      await new Promise((r) => setTimeout(r, 5));
    }
    out.close();
  };
  const r = await session(t, src, 2, { rateMbit: 80 }, () => ({}), spray);
  for (const rr of r.receivers) assert.equal(rr.ok, true, `${rr.code} ${rr.message}`);
  for (const out of r.outs) await assertSame(src, out);
  const stray = r.receivers.reduce((a, x) => a + x.counters.stray + x.counters.forged, 0);
  const rejected = r.receivers.reduce((a, x) => a + x.counters.rejectedChunks, 0);
  assert.ok(stray > 0, 'garbage should be counted');
  assert.ok(rejected > 0, 'forged fragments should have spoiled (and been caught in) some chunks');
});

test('a wrong key is rejected on both sides; a receiver with the right key proceeds', async (t) => {
  const src = await source(await tempDir(t), 4);
  const r = await session(
    t,
    src,
    1,
    { key: 'secret-one', encrypt: true },
    () => ({ key: 'secret-one' }),
    async (ep) => {
      const wrong = await runReceiver({
        from: `127.0.0.1:${ep.port}`,
        key: 'secret-two',
        interface: '127.0.0.1',
        makeConsumer: async () => assert.fail('no session with a wrong key'),
      });
      assert.equal(wrong.code, 'E_AUTH');
      const none = await runReceiver({
        from: `127.0.0.1:${ep.port}`,
        interface: '127.0.0.1',
        makeConsumer: async () => assert.fail('no session without a key'),
      });
      assert.equal(none.code, 'E_AUTH');
      assert.match(none.message ?? '', /requires a key/);
    },
  );
  assert.equal(r.receivers[0]?.ok, true);
  await assertSame(src, r.outs[0] as string);
});

test('a receiver with a key refuses a sender without one', async (t) => {
  const src = await source(await tempDir(t), 2);
  const ep = endpoint();
  const ac = new AbortController();
  const sender = runSender(await flatFileProvider(src), { interface: '127.0.0.1', ...ep, signal: ac.signal });
  const r = await runReceiver({
    from: `127.0.0.1:${ep.port}`,
    interface: '127.0.0.1',
    key: 'k',
    makeConsumer: async () => assert.fail('no session without mutual authentication'),
  });
  ac.abort();
  const s = await sender;
  assert.equal(r.code, 'E_AUTH');
  assert.equal(s.ok, false);
});

test('encryption without a pre-shared key is refused before anything is sent', async (t) => {
  const src = await source(await tempDir(t), 1);
  await assert.rejects(
    runSender(await flatFileProvider(src), { interface: '127.0.0.1', ...endpoint(), encrypt: true }),
    (err: unknown) => err instanceof UsageError && /needs a pre-shared key/.test(err.message),
  );
});

test('encrypted session with a key delivers byte-exact data; the wire does not carry plaintext', async (t) => {
  const src = await source(await tempDir(t), 8);
  const plain = await readFile(src);
  const firstBlock = plain.subarray(0, 64);
  let sawPlain = false;
  let sniffed = 0;
  const watch = async (ep: { port: number; group: string }) => {
    const sniff = dgram.createSocket({ type: 'udp4', reuseAddr: true });
    await new Promise<void>((r) => sniff.bind(ep.port + 1, ep.group, () => r()));
    sniff.addMembership(ep.group, '127.0.0.1');
    sniff.on('message', (m) => {
      sniffed++;
      if (m.includes(firstBlock)) sawPlain = true;
    });
    await new Promise((r) => setTimeout(r, 1500));
    sniff.close();
  };
  const r = await session(
    t,
    src,
    2,
    { key: 'k3y', encrypt: true, rateMbit: 100 },
    () => ({ key: 'k3y' }),
    watch,
  );
  for (const rr of r.receivers) assert.equal(rr.ok, true, `${rr.code} ${rr.message}`);
  for (const out of r.outs) await assertSame(src, out);
  assert.ok(sniffed > 0);
  assert.equal(sawPlain, false);
});

test('malformed control connections are closed without disturbing the session', async (t) => {
  const dir = await tempDir(t);
  const src = await source(dir, 4);
  const ep = endpoint();
  const sender = runSender(await flatFileProvider(src), { interface: '127.0.0.1', ...ep, clients: 1 });
  const junk = [
    Buffer.from('GET / HTTP/1.0\r\n\r\n'),
    Buffer.from([0, 0, 0, 3, 1, 2, 3]),
    Buffer.from([255, 255, 255, 255]),
  ];
  for (const bytes of junk) {
    for (;;) {
      const s = net.connect(ep.port, '127.0.0.1');
      const ok = await new Promise<boolean>((res) => {
        s.once('connect', () => res(true));
        s.once('error', () => res(false));
      });
      if (!ok) {
        await new Promise((res) => setTimeout(res, 100)); // the sender is not listening yet
        continue;
      }
      s.on('error', () => {});
      s.resume(); // read the CHALLENGE so the sender's FIN is seen
      s.write(bytes);
      await new Promise((res) => s.once('close', res));
      break;
    }
  }
  const out = join(dir, 'out.bin');
  const r = await runReceiver({
    from: `127.0.0.1:${ep.port}`,
    interface: '127.0.0.1',
    makeConsumer: async () => fileConsumer(out),
  });
  const s = await sender;
  assert.equal(r.ok, true, `${r.code} ${r.message}`);
  await assertSame(src, out);
  assert.equal(s.counters.controlRejected, 3);
  assert.equal(s.ok, true);
});

test('ids in the session table are content hashes of what receivers write', async (t) => {
  const dir = await tempDir(t);
  const src = await source(dir, 3);
  const p = await flatFileProvider(src);
  for (const c of p.chunks) {
    const stored = await p.readStored(c.id);
    assert.equal(createHash('sha256').update(stored).digest('hex'), c.id);
  }
  await p.close?.();
});

test('a workstation that rejoins under the same name counts once: the session succeeds when its new connection finishes', async (t) => {
  const dir = await tempDir(t);
  const src = await source(dir, 24);
  const ep = endpoint();
  const sender = runSender(await flatFileProvider(src), {
    interface: '127.0.0.1',
    ...ep,
    clients: 2,
    waitSeconds: 30,
    rateMbit: 40,
  });
  const receive = (
    name: string,
    out: string,
    signal?: AbortSignal,
    onProgress?: ReceiverOptions['onProgress'],
  ) =>
    runReceiver({
      from: `127.0.0.1:${ep.port}`,
      interface: '127.0.0.1',
      name,
      makeConsumer: async () => fileConsumer(out),
      signal,
      onProgress,
    });
  const first = new AbortController();
  const crashed = receive('pc-1', join(dir, 'first.bin'), first.signal, (p) => {
    if (p.chunks >= 2) first.abort();
  });
  const other = receive('pc-2', join(dir, 'other.bin'));
  assert.equal((await crashed).code, 'E_ABORTED');
  const again = await receive('pc-1', join(dir, 'again.bin'));
  const result = await sender;
  assert.equal(again.ok, true, `${again.code} ${again.message}`);
  assert.equal((await other).ok, true);
  assert.deepEqual(result.receivers.map((r) => [r.name, r.state]).sort(), [
    ['pc-1', 'ok'],
    ['pc-2', 'ok'],
  ]);
  assert.equal(result.ok, true);
  await assertSame(src, join(dir, 'again.bin'));
});

test('a receiver finishing its target for longer than the drop limits (event loop blocked) is not dropped', async (t) => {
  const src = await source(await tempDir(t), 8);
  const r = await session(t, src, 2, { deadAfterMs: 1000, stallAfterMs: 1500, lagLimitMs: 1000 }, (i) => ({
    makeConsumer: async () => {
      const out = join(await tempDir(t), `slow${i}.bin`);
      const inner = await fileConsumer(out);
      return {
        ...inner,
        async finish() {
          await inner.finish();
          // A big tree's last pass: synchronous work that keeps this receiver from answering.
          const until = Date.now() + 2500;
          while (Date.now() < until);
          await new Promise((res) => setTimeout(res, 1500));
          await writeFile(`${out}.finished`, '');
        },
      };
    },
  }));
  assert.equal(r.sender.ok, true, JSON.stringify(r.sender.receivers.map((x) => [x.name, x.state, x.reason])));
  for (const rr of r.receivers) assert.equal(rr.ok, true, `${rr.code} ${rr.message}`);
});

test('a gated sender holds receivers that joined until the gate opens, then starts once the count it gives joined', async (t) => {
  const dir = await tempDir(t);
  const src = await source(dir, 4);
  const ep = endpoint();
  let open: (clients: number) => void = () => {};
  const gate = new Promise<{ clients: number }>((resolve) => (open = (clients) => resolve({ clients })));
  const phases: Array<{ phase: string; joined: number }> = [];
  const lines: string[] = [];
  const sender = runSender(await flatFileProvider(src), {
    interface: '127.0.0.1',
    ...ep,
    // Without the gate it would start with the first receiver; the gate's count replaces this one.
    clients: 1,
    waitSeconds: 30,
    gate,
    log: (line) => lines.push(line),
    onProgress: (p) => phases.push({ phase: p.phase, joined: p.joined }),
  });
  const outs = [join(dir, 'a.bin'), join(dir, 'b.bin')];
  const receive = (i: number) =>
    runReceiver({
      from: `127.0.0.1:${ep.port}`,
      interface: '127.0.0.1',
      name: `r${i}`,
      makeConsumer: async () => fileConsumer(outs[i] as string),
    });
  const first = receive(0);
  const deadline = Date.now() + 5000;
  while (!phases.some((p) => p.joined === 1) && Date.now() < deadline) await sleep(20);
  // Held: the receiver the sender waits for joined.
  await sleep(600);
  assert.ok(
    phases.every((p) => p.phase === 'waiting'),
    `started before its gate opened: ${JSON.stringify(phases.at(-1))}`,
  );
  open(2);
  await sleep(400);
  assert.ok(
    phases.every((p) => p.phase === 'waiting'),
    'started before the count the gate gave joined',
  );
  const [s, a, b] = await Promise.all([sender, first, receive(1)]);
  assert.equal(s.ok, true, JSON.stringify(s.receivers));
  assert.equal(a.ok && b.ok, true, `${a.code} ${a.message}; ${b.code} ${b.message}`);
  for (const o of outs) await assertSame(src, o);
  assert.ok(
    lines.some((l) => l.startsWith('starting with 2 receiver(s)')),
    `not started with both: ${lines.join(' | ')}`,
  );
});
