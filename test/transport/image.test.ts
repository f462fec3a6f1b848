/** Multicasting a real image (captured from a directory) and restoring it on two receivers. */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { makeImage } from '../../src/engine/make.ts';
import { receiveCommand, sendCommand } from '../../src/transport/cli.ts';
import { tempDir } from '../helpers/env.ts';

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

  const port = 20000 + 2 * Math.floor(Math.random() * 20000);
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

test('receiving a raw session as an image is refused before anything is written', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'plain.bin');
  await writeFile(file, randomBytes(100_000));
  const port = 20000 + 2 * Math.floor(Math.random() * 20000);
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
