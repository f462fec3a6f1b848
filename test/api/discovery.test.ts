import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  DISCOVERY_GROUP,
  DISCOVERY_PORT,
  discoveryEndpoint,
  encodeDiscoveryReply,
  encodeDiscoveryRequest,
  parseDiscoveryReply,
  parseDiscoveryRequest,
} from '../../src/api/discovery.ts';
import { UsageError } from '../../src/errors.ts';

const ID = '0123456789abcdef';

test('the endpoint is the default unless IMGCAST_DISCOVERY gives GROUP:PORT', () => {
  const defaults = { group: DISCOVERY_GROUP, port: DISCOVERY_PORT };
  assert.deepEqual(defaults, { group: '239.255.42.250', port: 7741 });
  assert.deepEqual(discoveryEndpoint({}), defaults);
  assert.deepEqual(discoveryEndpoint({ IMGCAST_DISCOVERY: '' }), defaults);
  assert.deepEqual(discoveryEndpoint({ IMGCAST_DISCOVERY: ' 239.1.2.3:9000 ' }), {
    group: '239.1.2.3',
    port: 9000,
  });
  assert.deepEqual(discoveryEndpoint({ IMGCAST_DISCOVERY: '239.255.255.255:65535' }), {
    group: '239.255.255.255',
    port: 65535,
  });
});

test('a bad IMGCAST_DISCOVERY is a usage error that names the variable, the value and the fix', () => {
  const cases: Array<[string, RegExp]> = [
    ['239.1.2.3', /GROUP:PORT/],
    ['239.1.2.3:', /GROUP:PORT/],
    [':7741', /GROUP:PORT/],
    ['224.0.0.251:5353', /239\.0\.0\.0\/8/],
    ['238.1.2.3:7741', /239\.0\.0\.0\/8/],
    ['192.168.1.10:7741', /239\.0\.0\.0\/8/],
    ['239.1.2:7741', /239\.0\.0\.0\/8/],
    ['239.1.2.300:7741', /239\.0\.0\.0\/8/],
    ['imgcast.lan:7741', /239\.0\.0\.0\/8/],
    ['239.1.2.3:0', /PORT must be from 1 to 65535/],
    ['239.1.2.3:65536', /PORT must be from 1 to 65535/],
    ['239.1.2.3:-1', /GROUP:PORT/],
    ['239.1.2.3:77x', /GROUP:PORT/],
  ];
  for (const [value, why] of cases) {
    assert.throws(
      () => discoveryEndpoint({ IMGCAST_DISCOVERY: value }),
      (e: unknown) =>
        e instanceof UsageError &&
        e.code === 'E_USAGE' &&
        e.message.includes(`IMGCAST_DISCOVERY="${value}"`) &&
        why.test(e.message) &&
        e.details.variable === 'IMGCAST_DISCOVERY',
      value,
    );
  }
});

test('requests and replies round trip; anything else parses to undefined', () => {
  assert.equal(parseDiscoveryRequest(encodeDiscoveryRequest(ID)), ID);
  const answer = { api: 'http://10.0.0.1:7740', name: 'lab-1' };
  assert.deepEqual(parseDiscoveryReply(encodeDiscoveryReply(ID, answer)), { id: ID, ...answer });
  assert.deepEqual(
    parseDiscoveryReply(encodeDiscoveryReply(ID, { api: 'https://imaging.example/', name: '' })),
    {
      id: ID,
      api: 'https://imaging.example/',
      name: '',
    },
  );
  // Each side refuses the other's message: a responder never answers a reply.
  assert.equal(parseDiscoveryRequest(encodeDiscoveryReply(ID, answer)), undefined);
  assert.equal(parseDiscoveryReply(encodeDiscoveryRequest(ID)), undefined);

  const badRequests = [
    '',
    'null',
    '[]',
    '"discover"',
    '{',
    JSON.stringify({ imgcast: 'discover', v: 2, id: ID }),
    JSON.stringify({ imgcast: 'discover', v: '1', id: ID }),
    JSON.stringify({ imgcast: 'discover', v: 1 }),
    JSON.stringify({ imgcast: 'discover', v: 1, id: 'ABCDEF0123456789' }),
    JSON.stringify({ imgcast: 'discover', v: 1, id: 'abc' }),
    JSON.stringify({ imgcast: 'discover', v: 1, id: 'a'.repeat(65) }),
    JSON.stringify({ imgcast: 'discover', v: 1, id: 1234567890123456 }),
    JSON.stringify({ imgcast: 'discover', v: 1, id: ID, pad: 'x'.repeat(500) }),
    '{"__proto__":{"imgcast":"discover","v":1,"id":"0123456789abcdef"}}',
  ];
  for (const s of badRequests) assert.equal(parseDiscoveryRequest(Buffer.from(s)), undefined, s);
  assert.equal(parseDiscoveryRequest(Buffer.from([0xff, 0xfe, 0x00, 0x7b])), undefined);

  const reply = (over: Record<string, unknown>) =>
    Buffer.from(
      JSON.stringify({ imgcast: 'server', v: 1, id: ID, api: 'http://10.0.0.1:7740', name: 'x', ...over }),
    );
  for (const over of [
    { api: 'ftp://10.0.0.1/' },
    { api: 'http://' },
    { api: '10.0.0.1:7740' },
    { api: 'http://user:pw@10.0.0.1:7740' },
    { api: 'http://10.0.0.1:7740/?q=1' },
    { api: 'http://10.0.0.1:7740/#x' },
    { api: 42 },
    { name: 7 },
    { name: 'n'.repeat(256) },
    { v: 2 },
    { id: 'nothex-nothex-nothex' },
  ]) {
    assert.equal(parseDiscoveryReply(reply(over)), undefined, JSON.stringify(over));
  }
});
