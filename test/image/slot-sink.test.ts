import assert from 'node:assert/strict';
import { test } from 'node:test';
import { chunkId } from '../../src/image/codec.ts';
import { SlotSink } from '../../src/image/slot-sink.ts';
import { CHUNK_SIZE, type QueuedChunk } from '../../src/image/types.ts';

/** A sink of `slots` slots that keeps what it is given in memory; `hold` delays each store. */
class MemorySink extends SlotSink {
  readonly kept = new Map<string, Buffer>();
  deduplicated = 0;
  failure: Error | undefined;
  #slots: Buffer[];
  #free: number[];
  #waiters: Array<() => void> = [];
  hold: Promise<void> = Promise.resolve();

  constructor(slots: number) {
    super();
    this.#slots = Array.from({ length: slots }, () => Buffer.alloc(CHUNK_SIZE));
    this.#free = this.#slots.map((_, i) => i);
  }
  protected async acquireSlot(): Promise<number> {
    while (this.#free.length === 0) {
      this.check();
      await new Promise<void>((r) => this.#waiters.push(r));
    }
    this.check();
    return this.#free.pop()!;
  }
  protected slotBuffer(slot: number): Buffer {
    return this.#slots[slot]!;
  }
  protected releaseSlot(slot: number): void {
    this.#free.push(slot);
    for (const w of this.#waiters.splice(0)) w();
  }
  protected check(): void {
    if (this.failure) throw this.failure;
  }
  protected queueSlot(slot: number, rawLength: number): QueuedChunk {
    const raw = Buffer.from(this.slotBuffer(slot).subarray(0, rawLength));
    const id = chunkId(raw);
    this.kept.set(id, raw);
    this.releaseSlot(slot);
    return { ref: Promise.resolve({ id, rawLength }) };
  }
  protected async storeSlot(slot: number, id: string, rawLength: number): Promise<void> {
    await this.hold;
    this.kept.set(id, Buffer.from(this.slotBuffer(slot).subarray(0, rawLength)));
    this.releaseSlot(slot);
  }
  protected countDeduplicated(): void {
    this.deduplicated++;
  }
  async settled(): Promise<void> {
    await Promise.all(this.known.values());
  }
}

test('putChunk names the chunk, stores its bytes once, and counts repeats as deduplicated', async () => {
  const sink = new MemorySink(2);
  const a = Buffer.from('alpha'.repeat(1000));
  const refs = await Promise.all([sink.putChunk(a), sink.putChunk(a), sink.putChunk(Buffer.from('beta'))]);
  await sink.settled();
  assert.equal(refs[0]!.id, chunkId(a));
  assert.equal(refs[1]!.id, chunkId(a));
  assert.equal(sink.kept.size, 2);
  assert.equal(sink.deduplicated, 1);
  assert.deepEqual(sink.kept.get(chunkId(a)), a);
});

test('a put waiting for a slot is already known: the same content put meanwhile is deduplicated', async () => {
  const sink = new MemorySink(1);
  let open!: () => void;
  sink.hold = new Promise((r) => (open = r));
  await sink.putChunk(Buffer.from('first'));
  // The only slot is held by the first store: this put waits, registered under its id.
  const second = sink.putChunk(Buffer.from('second'));
  const again = await sink.putChunk(Buffer.from('second'));
  assert.equal(sink.deduplicated, 1);
  open();
  assert.equal((await second).id, again.id);
  await sink.settled();
  assert.deepEqual([...sink.kept.values()].map(String).sort(), ['first', 'second']);
});

test('the caller may reuse its buffer once putChunk resolves: the sink kept a copy', async () => {
  const sink = new MemorySink(1);
  const raw = Buffer.from('original');
  const ref = await sink.putChunk(raw);
  raw.fill(0);
  await sink.settled();
  assert.equal(String(sink.kept.get(ref.id)), 'original');
});

test('a chunk that is no Buffer or larger than a chunk is refused, and a failed sink takes nothing', async () => {
  const sink = new MemorySink(1);
  await assert.rejects(sink.putChunk('text' as unknown as Buffer), TypeError);
  await assert.rejects(sink.queueChunk(Buffer.alloc(CHUNK_SIZE + 1)), RangeError);
  sink.failure = new Error('disk gone');
  await assert.rejects(sink.putChunk(Buffer.from('x')), /disk gone/);
  await assert.rejects(sink.leaseChunk(), /disk gone/);
  assert.equal(sink.kept.size, 0);
});

test('a put refused while waiting for a slot is forgotten, so the same content can be put again', async () => {
  const sink = new MemorySink(1);
  let open!: () => void;
  sink.hold = new Promise((r) => (open = r));
  await sink.putChunk(Buffer.from('holder'));
  const waiting = sink.putChunk(Buffer.from('late'));
  sink.failure = new Error('stopped');
  open();
  await assert.rejects(waiting, /stopped/);
  sink.failure = undefined;
  await sink.putChunk(Buffer.from('late'));
  await sink.settled();
  assert.equal(sink.deduplicated, 0);
  assert.equal(String(sink.kept.get(chunkId(Buffer.from('late')))), 'late');
});

test('a lease fills a slot in place and queues it once', async () => {
  const sink = new MemorySink(1);
  const lease = await sink.leaseChunk();
  lease.buf.write('leased');
  const ref = await lease.queue(6).ref;
  assert.equal(String(sink.kept.get(ref.id)), 'leased');
  assert.throws(() => lease.queue(6), /already queued/);
});
