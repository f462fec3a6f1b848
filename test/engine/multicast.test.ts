/** Multicasting a real image (captured from a directory) and restoring it on two receivers. */
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { makeImage } from '../../src/engine/make.ts';
import { receiveCommand, sendCommand } from '../../src/cli/transfer.ts';
import { runReceiver, runSender } from '../../src/transport/index.ts';
import { imageProvider } from '../../src/engine/image-provider.ts';
import { imageDecoder, restoreConsumer, targetIdentity } from '../../src/engine/multicast.ts';
import { hasCommand, loopUnavailable, skipUnless, tempDir } from '../helpers/env.ts';
import { trackedLoops } from '../disk/loops.ts';
import { MiB, mbrExtDisk, sparse } from './disk-fixtures.ts';

const RUNNER = join(import.meta.dirname, '../../bench/lib/mcast-runner.ts');

test('an image sent with sendCommand is restored byte-exact by two receiveCommand receivers', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(join(src, 'sub'), { recursive: true });
  const big = randomBytes(3 * 1024 * 1024 + 17);
  const text = Buffer.from('hello lab\n'.repeat(50_000));
  await writeFile(join(src, 'big.bin'), big);
  await writeFile(join(src, 'sub', 'notes.txt'), text);
  await writeFile(join(src, 'empty'), '');
  const image = join(dir, 'lab.imgc');
  await makeImage(src, image, { level: 'speed' });

  const port = 20000 + 2 * Math.floor(Math.random() * 6000);
  const group = `239.255.${1 + Math.floor(Math.random() * 250)}.${1 + Math.floor(Math.random() * 250)}`;
  const targets = [join(dir, 'a'), join(dir, 'b')];
  const [sent, ...got] = await Promise.all([
    sendCommand(image, { clients: 2, interface: '127.0.0.1', group, port, encrypt: true, key: 'lab-key' }),
    ...targets.map((to, i) =>
      receiveCommand({
        from: `127.0.0.1:${port}`,
        to,
        interface: '127.0.0.1',
        key: 'lab-key',
        name: `pc${i}`,
      }),
    ),
  ]);
  assert.equal(sent.ok, true);
  for (const r of got) assert.equal(r.ok, true);
  for (const to of targets) {
    assert.ok((await readFile(join(to, 'big.bin'))).equals(big));
    assert.ok((await readFile(join(to, 'sub', 'notes.txt'))).equals(text));
    assert.equal((await readFile(join(to, 'empty'))).length, 0);
  }
});

test('coded repairs with compressed image chunks of every size: 3 lossy receivers restore exact trees', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(join(src, 'sub'), { recursive: true });
  // Compressible and incompressible content, small files packed together and a big one cut in
  // chunks: stored chunks of many lengths, so coded repairs XOR runs of unequal length.
  const big = randomBytes(9 * 1024 * 1024 + 12345);
  await writeFile(join(src, 'big.bin'), big);
  for (let i = 0; i < 300; i++) {
    await writeFile(join(src, 'sub', `f${i}.txt`), `file ${i}\n`.repeat(1 + ((i * 37) % 900)));
  }
  const image = join(dir, 'coded.imgc');
  await makeImage(src, image, { level: 'balanced' });
  const port = 20000 + 2 * Math.floor(Math.random() * 6000);
  const group = `239.255.${1 + Math.floor(Math.random() * 250)}.${1 + Math.floor(Math.random() * 250)}`;
  const provider = await imageProvider(image, 1);
  t.after(() => provider.close?.());
  const targets = [0, 1, 2].map((i) => join(dir, `t${i}`));
  const [sent, ...got] = await Promise.all([
    runSender(provider, { clients: 3, interface: '127.0.0.1', group, port, rateMbit: 200 }),
    ...targets.map((to, i) =>
      runReceiver({
        from: `127.0.0.1:${port}`,
        interface: '127.0.0.1',
        name: `pc${i}`,
        simulateLoss: 0.04,
        decode: imageDecoder,
        makeConsumer: (session) => restoreConsumer(session, to),
      }),
    ),
  ]);
  assert.equal(sent.ok, true, JSON.stringify(sent.receivers));
  for (const r of got) assert.equal(r.ok, true, `${r.name}: ${r.code} ${r.message}`);
  const decoded = got.map((r) => r.counters.decoded);
  t.diagnostic(
    `${sent.counters.codedRepairs} coded repairs (${sent.counters.codedRuns} runs), ${sent.counters.repairPackets} repairs in all; decoded ${decoded.join('/')}`,
  );
  assert.ok(sent.counters.codedRepairs > 0, 'no coded repair was sent');
  assert.ok(
    decoded.every((n) => n > 0),
    `every receiver decoded some: ${decoded.join('/')}`,
  );
  for (const to of targets) {
    assert.ok((await readFile(join(to, 'big.bin'))).equals(big));
    for (const i of [0, 1, 150, 299]) {
      assert.equal(
        await readFile(join(to, 'sub', `f${i}.txt`), 'utf8'),
        `file ${i}\n`.repeat(1 + ((i * 37) % 900)),
      );
    }
  }
});

test('receiving a raw session as an image is refused before anything is written', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'plain.bin');
  await writeFile(file, randomBytes(100_000));
  const port = 20000 + 2 * Math.floor(Math.random() * 6000);
  const ac = new AbortController();
  const send = sendCommand(file, {
    raw: true,
    clients: 1,
    interface: '127.0.0.1',
    group: '239.255.77.77',
    port,
    signal: ac.signal,
  });
  send.catch(() => {});
  await assert.rejects(
    receiveCommand({ from: `127.0.0.1:${port}`, to: join(dir, 'target'), interface: '127.0.0.1' }),
    (e: unknown) => e instanceof Error && /does not carry an image/.test(e.message),
  );
  // A receiver that fails before joining does not count; the sender keeps waiting until stopped.
  ac.abort();
  await assert.rejects(
    send,
    (e: unknown) => e instanceof Error && /did not finish|no receiver/.test(e.message),
  );
});

test('a receiver killed with SIGKILL mid-restore resumes from its journal and gets only the missing chunks', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(join(src, 'data'), { recursive: true });
  const files = new Map<string, Buffer>();
  for (let i = 0; i < 12; i++) files.set(`data/part-${i}.bin`, randomBytes(4 * 1024 * 1024));
  files.set('readme.txt', Buffer.from('lab image\n'.repeat(1000)));
  for (const [name, data] of files) await writeFile(join(src, name), data);
  const image = join(dir, 'lab.imgc');
  await makeImage(src, image, { level: 'speed' });
  const target = join(dir, 'restored');
  const journal = join(dir, 'restored.journal');
  const port = 20000 + 2 * Math.floor(Math.random() * 6000);
  const group = `239.255.${1 + Math.floor(Math.random() * 250)}.${1 + Math.floor(Math.random() * 250)}`;
  const common = { interface: '127.0.0.1', group, clients: 1 };

  // First session: slow enough to kill the receiver (its own process) part-way.
  const first = sendCommand(image, { ...common, port, rate: 60 }).catch((e: unknown) => e);
  const child = spawn(
    process.execPath,
    [
      RUNNER,
      'receive',
      // A checkpoint (sync, then journal) after every chunk instead of every 64 MiB.
      JSON.stringify({
        from: `127.0.0.1:${port}`,
        interface: '127.0.0.1',
        to: target,
        journal,
        image: true,
        journalCheckpointBytes: 1,
      }),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const journaledIds = (): string[] => {
    try {
      return readFileSync(journal, 'utf8')
        .split('\n')
        .filter((l) => /^[0-9a-f]{64}$/.test(l));
    } catch {
      return [];
    }
  };
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
  const killedAfter = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      for (const line of out.split('\n')) {
        if (!line.startsWith('PROGRESS ')) continue;
        const p = JSON.parse(line.slice(9)) as { chunks?: number };
        // Killed once 4 chunks are in the journal: checkpoints trail the writes a little.
        if ((p.chunks ?? 0) >= 4 && journaledIds().length >= 4) {
          child.kill('SIGKILL');
          resolve(p.chunks!);
        }
      }
      out = out.slice(out.lastIndexOf('\n') + 1);
    });
    child.on('exit', () => reject(new Error(`receiver exited before it was killed:\n${err}`)));
  });
  const firstResult = await first;
  assert.ok(firstResult instanceof Error, 'the first session cannot succeed: its only receiver was killed');
  const journaled = journaledIds();
  assert.ok(journaled.length >= 4, `${journaled.length} chunks journaled after ${killedAfter} received`);

  // Second session, same image: the restarted receiver resumes into the half-restored folder.
  const port2 = port + 1;
  const [sent, got] = await Promise.all([
    sendCommand(image, { ...common, port: port2 }),
    receiveCommand({ from: `127.0.0.1:${port2}`, to: target, interface: '127.0.0.1', journal }),
  ]);
  assert.equal(got.ok, true);
  assert.ok(got.chunksHad >= journaled.length, `had ${got.chunksHad}, journal listed ${journaled.length}`);
  assert.equal(sent.counters.chunksSent, sent.chunks - got.chunksHad, 'only the missing chunks were sent');
  for (const [name, data] of files) assert.ok((await readFile(join(target, name))).equals(data), name);
  // Finished: the journal is gone, so a later receive onto this folder starts afresh.
  await assert.rejects(readFile(journal));
});

test('a receive whose writes the backing filesystem cannot hold fails with the cause, and the sender hears it', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  if (!hasCommand('sfdisk')) return void t.skip('needs sfdisk');
  const dir = await tempDir(t);
  const { image } = await mbrExtDisk(dir, { dataBytes: 30 * MiB });
  const small = await mkdtemp(join(tmpdir(), 'imgcast-test-tmpfs-'));
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=20m', 'tmpfs', small]);
  const loops = trackedLoops(t);
  t.after(async () => {
    spawnSync('umount', [small]);
    await rm(small, { recursive: true, force: true });
  });
  const backing = await sparse(join(small, 'disk.img'), 64 * MiB);
  const dev = await loops.attach(backing);
  const port = 20000 + 2 * Math.floor(Math.random() * 6000);
  const group = `239.255.${1 + Math.floor(Math.random() * 250)}.${1 + Math.floor(Math.random() * 250)}`;
  const [sent, got] = await Promise.allSettled([
    sendCommand(image, { clients: 1, interface: '127.0.0.1', group, port }),
    receiveCommand({ from: `127.0.0.1:${port}`, to: dev, interface: '127.0.0.1', journal: join(dir, 'j') }),
  ]);
  assert.equal(got.status, 'rejected');
  const reason = (got as PromiseRejectedResult).reason as Error & { code?: string };
  // The restore's own code reaches the caller (and the sender), with its message.
  assert.equal(reason.code, 'E_DISK_WRITE');
  assert.match(
    reason.message,
    new RegExp(`restoring onto ${dev}: .*the filesystem holding ${backing}.* is full`),
  );
  assert.ok(
    sent.status === 'rejected' || !sent.value.ok,
    `the sender reported ${sent.status === 'fulfilled' ? JSON.stringify(sent.value.receivers) : ''}`,
  );
});

test('a receiver whose target does not fit the session names the sender and the image it joined', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(src);
  await writeFile(join(src, 'a.txt'), 'folder image\n');
  const image = join(dir, 'lab.imgc');
  await makeImage(src, image, { level: 'speed' });
  // A disk-image file: a folder image cannot go there.
  const target = await sparse(join(dir, 'disk.img'), 8 * MiB);
  const port = 20000 + 2 * Math.floor(Math.random() * 6000);
  const group = `239.255.${1 + Math.floor(Math.random() * 250)}.${1 + Math.floor(Math.random() * 250)}`;
  const ac = new AbortController();
  t.after(() => ac.abort());
  const send = sendCommand(image, { clients: 1, interface: '127.0.0.1', group, port, signal: ac.signal });
  send.catch(() => {});
  await assert.rejects(
    receiveCommand({
      from: `127.0.0.1:${port}`,
      to: target,
      interface: '127.0.0.1',
      journal: join(dir, 'j'),
    }),
    (e: unknown) => {
      assert.ok(e instanceof Error);
      assert.match(
        e.message,
        new RegExp(
          `session from 127\\.0\\.0\\.1:${port} \\(image lab\\.imgc, file set 1\\): ` +
            'the image holds a directory tree without a filesystem',
        ),
      );
      return true;
    },
  );
  ac.abort();
  await assert.rejects(send);
});

test('a session meta without the image name (an older sender) is accepted, and refusals name the sender', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(src);
  await writeFile(join(src, 'a.txt'), 'folder image\n');
  const image = join(dir, 'lab.imgc');
  await makeImage(src, image, { level: 'speed' });
  const provider = await imageProvider(image, 1);
  t.after(() => provider.close?.());
  assert.equal((provider.meta as { image?: string }).image, 'lab.imgc');
  const { image: _name, ...older } = provider.meta as Record<string, unknown>;
  const session = {
    nonce: '0123456789abcdef',
    group: '239.255.1.1',
    port: 7748,
    chunks: provider.chunks,
    meta: older,
    encrypted: false,
    sender: '198.18.0.1:7747',
  };
  // Accepted: it restores into a folder.
  const ok = await restoreConsumer(session, join(dir, 'out'));
  await ok.abort(new Error('test over'));
  await assert.rejects(
    restoreConsumer(session, await sparse(join(dir, 'disk.img'), 8 * MiB)),
    /^[^]*session from 198\.18\.0\.1:7747 \(file set 1\): the image holds a directory tree/,
  );
});

test('a resume journal speaks for one target: another file or loop device under the same path does not inherit it', async (t) => {
  const dir = await tempDir(t);
  const a = join(dir, 'a.img');
  const b = join(dir, 'b.img');
  await writeFile(a, Buffer.alloc(1 << 20));
  await writeFile(b, Buffer.alloc(1 << 20));
  assert.notEqual(await targetIdentity(a), await targetIdentity(b));
  assert.equal(await targetIdentity(a), await targetIdentity(a));
  // The same name made anew is another target: its old journal must not be trusted.
  const before = await targetIdentity(a);
  await rm(a);
  await writeFile(join(dir, 'filler'), 'x');
  await writeFile(a, Buffer.alloc(1 << 20));
  assert.notEqual(await targetIdentity(a), before);
  assert.equal(await targetIdentity(join(dir, 'missing')), 'missing');
  if (skipUnless(t, loopUnavailable())) return;
  const loops = trackedLoops(t);
  const dev = await loops.attach(b);
  const onB = await targetIdentity(dev);
  assert.match(onB, /^loop /);
  await loops.detach(dev);
  const again = await loops.attach(b);
  assert.equal(await targetIdentity(again), onB, 'the same backing file is the same target');
  await loops.detach(again);
  const other = await loops.attach(a);
  assert.notEqual(await targetIdentity(other), onB);
});
