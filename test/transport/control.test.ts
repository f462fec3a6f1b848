import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  Channel,
  FrameDecoder,
  parseToReceiver,
  parseToSender,
  type ToReceiver,
  type ToSender,
} from '../../src/transport/control.ts';
import { TransportError } from '../../src/transport/errors.ts';

const counters = {
  packets: 10,
  duplicates: 1,
  stray: 2,
  forged: 3,
  rejectedChunks: 0,
  overrun: 0,
  lost: 4,
  simulatedDrops: 0,
  nakFragments: 7,
  decoded: 8,
  undecodable: 9,
};
const toSender: ToSender[] = [
  { t: 'hello', v: 1, name: 'pc-17', nonce: 'a'.repeat(32), proof: 'b'.repeat(64) },
  { t: 'hello', v: 1, name: '', nonce: '0'.repeat(32), proof: null },
  { t: 'join', have: [0, 3, 5, 6] },
  {
    t: 'status',
    chunks: 3,
    bytes: 100,
    heard: 99,
    rx: 5,
    exp: 6,
    got: 5,
    ms: 101,
    win: 9,
    ovf: 0,
    frag: 0.25,
    nak: [
      [4, [0, 2, 9, 10]],
      [7, null],
    ],
    kept: [1, 3],
    counters,
  },
  { t: 'done', ok: false, code: 'E_CONSUMER', message: 'disk full', counters },
  {
    t: 'status',
    chunks: 3,
    bytes: 100,
    heard: 99,
    rx: 5,
    exp: 6,
    got: 5,
    ms: 101,
    win: 9,
    ovf: null,
    frag: null,
    nak: [],
    low: 3,
    known: 10,
    kept: [],
    counters,
  },
];
const toReceiver: ToReceiver[] = [
  { t: 'challenge', v: 1, nonce: 'c'.repeat(32), keyed: true },
  {
    t: 'session',
    nonce: '0123456789abcdef',
    group: '239.1.2.3',
    port: 7748,
    chunks: [['d'.repeat(64), 0, 10, 10]],
    meta: { any: ['json'] },
    encrypt: { key: 'e'.repeat(64), salt: '01020304' },
    proof: null,
  },
  {
    t: 'session',
    nonce: '0123456789abcdef',
    group: '239.1.2.3',
    port: 7748,
    ports: 8,
    chunks: [],
    meta: { kind: 'live' },
    encrypt: null,
    proof: null,
    live: true,
    maxStored: 4 * 1024 * 1024,
  },
  {
    t: 'extend',
    from: 7,
    chunks: [
      ['d'.repeat(64), 1, 10, 30],
      ['e'.repeat(64), 0, 5, 5],
    ],
    delta: { places: [1, 2] },
  },
  { t: 'extend', from: 9, chunks: [], delta: { again: true } },
  { t: 'seal', chunks: 9, meta: { kind: 'image' } },
  { t: 'tick', txPos: 3, serial: 44, rate: 500, started: true, firstPassDone: false, horizon: 64 },
  { t: 'drop', reason: 'too slow', code: 'E_DROPPED' },
  { t: 'end' },
];
const invalid = (e: unknown) =>
  e instanceof TransportError && (e.code === 'E_CONTROL_INVALID' || e.code === 'E_AUTH');

test('control messages round trip', () => {
  for (const m of toSender) assert.deepEqual(parseToSender(Buffer.from(JSON.stringify(m)), 10), m);
  for (const m of toReceiver) assert.deepEqual(parseToReceiver(Buffer.from(JSON.stringify(m))), m);
});

test('schema violations are rejected with E_CONTROL_INVALID', () => {
  const bad: unknown[] = [
    { t: 'join', have: [3, 1] },
    { t: 'join', have: [0, 11] },
    { t: 'join', have: [0] },
    { t: 'hello', v: 1, name: 'x', nonce: 'XYZ', proof: null },
    { t: 'status', ...toSender[3], nak: [[10, null]] },
    { t: 'status', ...toSender[3], chunks: -1 },
    { t: 'status', ...toSender[3], frag: 'full' },
    { t: 'status', ...toSender[3], frag: -0.5 },
    { t: 'status', ...toSender[3], ovf: 1.5 },
    { t: 'nope' },
    [1, 2],
    'text',
  ];
  for (const b of bad) assert.throws(() => parseToSender(Buffer.from(JSON.stringify(b)), 10), invalid);
  assert.throws(() => parseToSender(Buffer.from('{not json'), 10), invalid);
  assert.throws(
    () => parseToReceiver(Buffer.from(JSON.stringify({ ...toReceiver[1], group: '1.2.3' }))),
    invalid,
  );
  assert.throws(
    () => parseToReceiver(Buffer.from(JSON.stringify({ ...toReceiver[1], chunks: [['x', 0, 1, 1]] }))),
    invalid,
  );
  const badToReceiver: unknown[] = [
    { ...toReceiver[2], live: 'yes' },
    { ...toReceiver[2], maxStored: -1 },
    { ...toReceiver[2], ports: 0 },
    { ...toReceiver[2], ports: 17 },
    { ...toReceiver[2], ports: 2.5 },
    { ...toReceiver[2], port: 65530, ports: 8 },
    { t: 'extend', from: -1, chunks: [], delta: null },
    { t: 'extend', from: 0, chunks: [['d'.repeat(64), 0, 1]], delta: null },
    { t: 'extend', from: 0, chunks: [['d'.repeat(64), 0, 1, 2 ** 40]], delta: null },
    { t: 'extend', from: 0, chunks: 'none', delta: null },
    { t: 'seal', chunks: 1.5, meta: null },
  ];
  for (const b of badToReceiver)
    assert.throws(() => parseToReceiver(Buffer.from(JSON.stringify(b))), invalid);
  assert.throws(
    () => parseToSender(Buffer.from(JSON.stringify({ ...toSender[5], low: 11 })), 10),
    invalid,
    'a low past the table',
  );
  assert.throws(() => parseToSender(Buffer.from(JSON.stringify({ ...toSender[5], known: -1 })), 10), invalid);
});

test('random and mutated control bytes never crash the parsers', () => {
  const samples = [...toSender, ...toReceiver].map((m) => Buffer.from(JSON.stringify(m)));
  fc.assert(
    fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 400 }).map((a) => Buffer.from(a)),
        fc
          .tuple(
            fc.constantFrom(...samples),
            fc.array(fc.tuple(fc.nat(), fc.nat({ max: 255 })), { maxLength: 4 }),
          )
          .map(([s, flips]) => {
            const b = Buffer.from(s);
            for (const [at, v] of flips) b[at % b.length] = v;
            return b;
          }),
        fc.anything().map((x) => Buffer.from(JSON.stringify(x) ?? 'null')),
      ),
      (b) => {
        for (const parse of [(x: Buffer) => parseToSender(x, 100), parseToReceiver]) {
          try {
            parse(b);
          } catch (e) {
            assert.ok(invalid(e), String(e));
          }
        }
      },
    ),
    { numRuns: 3000 },
  );
});

test('frames reassemble from any split of the stream, and oversized frames are refused', () => {
  fc.assert(
    fc.property(
      fc.array(fc.string(), { maxLength: 10 }),
      fc.array(fc.nat({ max: 50 }), { maxLength: 20 }),
      (msgs, cuts) => {
        const stream = Buffer.concat(
          msgs.map((m) => {
            const body = Buffer.from(m);
            const h = Buffer.alloc(4);
            h.writeUInt32BE(body.length);
            return Buffer.concat([h, body]);
          }),
        );
        const d = new FrameDecoder(1 << 20);
        const got: string[] = [];
        let at = 0;
        for (const c of [...cuts, stream.length]) {
          const end = Math.min(stream.length, at + c);
          for (const f of d.push(stream.subarray(at, end))) got.push(f.toString());
          at = end;
        }
        for (const f of d.push(stream.subarray(at))) got.push(f.toString());
        assert.deepEqual(got, msgs);
      },
    ),
  );
  const d = new FrameDecoder(100);
  assert.throws(() => d.push(Buffer.from([0, 0, 1, 0])), invalid);
});

async function pair(t: import('node:test').TestContext): Promise<[net.Socket, net.Socket]> {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as net.AddressInfo).port;
  const client = net.connect(port, '127.0.0.1');
  const [serverSide] = (await once(server, 'connection')) as [net.Socket];
  t.after(() => {
    client.destroy();
    serverSide.destroy();
    server.close();
  });
  return [serverSide, client];
}

test('MAC-protected channels deliver messages and close on a MAC mismatch', async (t) => {
  const [a, b] = await pair(t);
  const sender = new Channel<ToSender>(a, 1 << 20, (x) => parseToSender(x, 10), true);
  const receiver = new Channel<ToReceiver>(b, 1 << 20, parseToReceiver, false);
  sender.setMacKey(Buffer.alloc(32, 1));
  receiver.setMacKey(Buffer.alloc(32, 1));
  const got = new Promise<ToReceiver>((r) => (receiver.onMessage = r));
  sender.send({ t: 'drop', reason: 'x', code: null });
  assert.deepEqual(await got, { t: 'drop', reason: 'x', code: null });

  const closed = new Promise<string>((r) => (sender.onClose = (reason) => r(reason)));
  receiver.setMacKey(Buffer.alloc(32, 2));
  receiver.send({ t: 'join', have: [] });
  assert.match(await closed, /MAC/);
});

test('a garbage stream closes the channel with a reason', async (t) => {
  const [a, b] = await pair(t);
  const ch = new Channel<ToSender>(a, 1000, (x) => parseToSender(x, 10), true);
  const closed = new Promise<string>((r) => (ch.onClose = (reason) => r(reason)));
  b.write(Buffer.from([0, 0, 0, 5, 1, 2, 3, 4, 5]));
  assert.match(await closed, /not valid JSON/);
});
