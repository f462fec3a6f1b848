/**
 * A session's send on a thread of its own (SendThreads), with a real image and real receivers on
 * loopback: held by its gate, its progress and log on the server's thread, an administrator's
 * stop reaching the receivers with its reason, and a failure in the thread with its code.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { makeImage } from '../../src/engine/make.ts';
import { imageDecoder, restoreConsumer } from '../../src/engine/multicast.ts';
import { ImgcastError } from '../../src/errors.ts';
import { SendThreads } from '../../src/server/send-thread.ts';
import type { SendProgress, SendSession } from '../../src/server/sessions.ts';
import { runReceiver } from '../../src/transport/receiver.ts';
import { tempDir } from '../helpers/env.ts';

type Plan = Parameters<SendSession>[0];

async function setup(t: TestContext) {
  const dir = await tempDir(t);
  await mkdir(join(dir, 'src'));
  const data = randomBytes(3 * 1024 * 1024 + 5);
  await writeFile(join(dir, 'src', 'data.bin'), data);
  const image = join(dir, 'lab.imgc');
  await makeImage(join(dir, 'src'), image, { level: 'speed' });
  const threads = new SendThreads('127.0.0.1');
  t.after(() => threads.close());
  const port = 20000 + 2 * Math.floor(Math.random() * 6000);
  const group = `239.255.${1 + Math.floor(Math.random() * 250)}.${1 + Math.floor(Math.random() * 250)}`;
  const progress: SendProgress[] = [];
  const lines: string[] = [];
  const abort = new AbortController();
  const plan: Plan = {
    imagePath: image,
    fileset: 1,
    group,
    port,
    key: 'the-session-key',
    clients: 1,
    signal: abort.signal,
    log: (line) => lines.push(line),
    onProgress: (p) => progress.push(p),
  };
  const receive = (name: string) =>
    runReceiver({
      from: `127.0.0.1:${port}`,
      interface: '127.0.0.1',
      key: plan.key,
      name,
      decode: imageDecoder,
      makeConsumer: (session) => restoreConsumer(session, join(dir, name)),
    });
  return { dir, data, threads, plan, abort, progress, lines, receive };
}

test('a gated send on its own thread holds its receiver until the gate opens, then sends; progress and log come back', async (t) => {
  const { dir, data, threads, plan, progress, lines, receive } = await setup(t);
  let open: (clients: number) => void = () => {};
  const gate = new Promise<{ clients: number }>((resolve) => (open = (clients) => resolve({ clients })));
  const sent = threads.send({ ...plan, gate });
  const got = receive('pc1');
  const deadline = Date.now() + 10_000;
  while (!progress.some((p) => p.receivers.length === 1) && Date.now() < deadline) await sleep(20);
  await sleep(500);
  assert.ok(progress.length > 0, 'no progress came from the thread');
  assert.ok(
    progress.every((p) => p.phase === 'waiting'),
    `sent before its gate opened: ${JSON.stringify(progress.at(-1))}`,
  );
  open(1);
  const [result, r] = await Promise.all([sent, got]);
  assert.equal(r.ok, true, `${r.code} ${r.message}`);
  assert.deepEqual(
    result.receivers.map((x) => [x.name, x.state]),
    [['pc1', 'ok']],
  );
  assert.ok((await readFile(join(dir, 'pc1', 'data.bin'))).equals(data));
  assert.ok(
    lines.some((l) => l.startsWith('starting with 1 receiver(s)')),
    lines.join(' | '),
  );
});

test("an administrator's stop reaches the thread and, with its reason, the receivers", async (t) => {
  const { threads, plan, abort, progress, receive } = await setup(t);
  // Two awaited, one comes: the send waits until it is stopped.
  const sent = threads.send({ ...plan, clients: 2 });
  const got = receive('pc1');
  const deadline = Date.now() + 10_000;
  while (!progress.some((p) => p.receivers.length === 1) && Date.now() < deadline) await sleep(20);
  abort.abort(new ImgcastError('E_STOPPED', 'stopped by the administrator'));
  const [result, r] = await Promise.all([sent, got]);
  assert.equal(result.receivers[0]?.state, 'dropped');
  assert.equal(r.ok, false);
  assert.match(r.message ?? '', /session stopped by the sender: stopped by the administrator/);
});

test('a send that fails in its thread fails with the error and its code', async (t) => {
  const { dir, threads, plan } = await setup(t);
  await assert.rejects(threads.send({ ...plan, imagePath: join(dir, 'gone.imgc') }), (err: unknown) => {
    assert.ok(err instanceof ImgcastError, String(err));
    assert.match(err.code, /^E_/);
    return true;
  });
  // The next send gets a thread too.
  await assert.rejects(threads.send({ ...plan, imagePath: join(dir, 'gone.imgc') }), ImgcastError);
});
