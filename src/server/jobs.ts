/**
 * Long operations on images the API runs for the console (verify, compact, adding uploaded
 * files), with their progress: the HTTP call that started one still answers with its result
 * when it ends, and meanwhile the status (GET /api/status and the /api/events stream) lists it
 * with how far it got, so the console draws a progress bar without a second kind of request.
 */
import { randomUUID } from 'node:crypto';

import type { ImageJob } from '../api/schemas.ts';

export type JobKind = ImageJob['kind'];

export interface RunningJob {
  /** How far it got, in the job's unit; `total` may grow (an add learns its size as it goes). */
  progress(done: number, total: number): void;
}

export class ImageJobs {
  #jobs = new Map<string, ImageJob>();
  #listeners = new Set<() => void>();
  #now: () => number;

  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  /** Runs `fn` as a job of `image`, listed until it settles however it ends. */
  async run<T>(
    kind: JobKind,
    image: string,
    unit: ImageJob['unit'],
    fn: (job: RunningJob) => Promise<T>,
  ): Promise<T> {
    const job: ImageJob = { id: randomUUID(), kind, image, done: 0, total: 0, unit, startedAt: this.#now() };
    this.#jobs.set(job.id, job);
    this.#changed();
    try {
      return await fn({
        progress: (done, total) => {
          if (done === job.done && total === job.total) return;
          job.done = done;
          job.total = total;
          this.#changed();
        },
      });
    } finally {
      this.#jobs.delete(job.id);
      this.#changed();
    }
  }

  /** The jobs under way, oldest first (copies: the status is serialized later). */
  list(): ImageJob[] {
    return [...this.#jobs.values()].map((j) => ({ ...j }));
  }

  /** Called on every start, progress and end; returns the unsubscribe. */
  onChange(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #changed(): void {
    for (const l of [...this.#listeners]) {
      try {
        l();
      } catch {
        // A listener's failure is its own (the status feed drops a broken stream itself).
      }
    }
  }
}
