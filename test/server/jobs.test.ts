/**
 * The jobs of the status (src/server/jobs.ts): listed from their start to their end however
 * they end, with their progress, and every change heard by the live status.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ImageJobs } from '../../src/server/jobs.ts';

test('a job is listed while it runs, with its progress; it goes when it ends or fails; listeners hear each change', async () => {
  const jobs = new ImageJobs(() => 1000);
  let changes = 0;
  const stop = jobs.onChange(() => changes++);
  let release = () => {};
  const running = jobs.run('verify', 'lab.imgc', 'chunks', async (job) => {
    job.progress(1, 4);
    job.progress(1, 4);
    job.progress(3, 4);
    await new Promise<void>((r) => (release = r));
    return 'report';
  });
  await Promise.resolve();
  const [j] = jobs.list();
  assert.deepEqual(
    { ...j, id: undefined },
    {
      id: undefined,
      kind: 'verify',
      image: 'lab.imgc',
      done: 3,
      total: 4,
      unit: 'chunks',
      startedAt: 1000,
    },
  );
  assert.equal(changes, 3, 'start, 1/4, 3/4 (the same progress twice is no change)');
  release();
  assert.equal(await running, 'report');
  assert.deepEqual(jobs.list(), []);
  assert.equal(changes, 4);

  await assert.rejects(
    jobs.run('compact', 'lab.imgc', 'chunks', async () => {
      throw new Error('disk full');
    }),
    /disk full/,
  );
  assert.deepEqual(jobs.list(), [], 'a failed job goes too');
  stop();
  await jobs.run('add', 'x.imgc', 'bytes', async (job) => job.progress(1, 2));
  assert.equal(changes, 6, 'no longer heard once unsubscribed');
});
