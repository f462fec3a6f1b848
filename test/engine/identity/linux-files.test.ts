import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  hostKeyType,
  hostsWithName,
  machineIdState,
  newMachineId,
  parseFingerprint,
} from '../../../src/engine/identity/linux-files.ts';

const DEBIAN = `127.0.0.1\tlocalhost
127.0.1.1\tdebian

# The following lines are desirable for IPv6 capable hosts
::1     localhost ip6-localhost ip6-loopback
ff02::1 ip6-allnodes
`;

test("hosts: Debian's 127.0.1.1 line names the new host; every other line and the final newline stay", () => {
  assert.equal(
    hostsWithName(DEBIAN, 'lab1-01', 'debian'),
    DEBIAN.replace('127.0.1.1\tdebian', '127.0.1.1\tlab1-01'),
  );
});

test('hosts: a domain name on the line keeps its domain; a comment on it stays', () => {
  assert.equal(
    hostsWithName('127.0.1.1 ref.lab.example.org ref # set by the installer\n', 'lab1-02', 'ref'),
    '127.0.1.1 lab1-02.lab.example.org lab1-02 # set by the installer\n',
  );
});

test('hosts: a line naming something else (the image had another host name there) names the new host alone', () => {
  assert.equal(hostsWithName('127.0.1.1\told-name\n', 'pc', 'ref'), '127.0.1.1\tpc\n');
  assert.equal(hostsWithName('127.0.1.1\told-name\n', 'pc', undefined), '127.0.1.1\tpc\n');
});

test('hosts: without a 127.0.1.1 line one is added after 127.0.0.1 (or first); commented lines are not it', () => {
  assert.equal(
    hostsWithName('127.0.0.1 localhost\n::1 localhost\n', 'pc', 'ref'),
    '127.0.0.1 localhost\n127.0.1.1\tpc\n::1 localhost\n',
  );
  assert.equal(
    hostsWithName('#127.0.1.1 ref\n::1 localhost\n', 'pc', 'ref'),
    '127.0.1.1\tpc\n#127.0.1.1 ref\n::1 localhost\n',
  );
  assert.equal(hostsWithName('', 'pc', undefined), '127.0.1.1\tpc\n');
  assert.equal(hostsWithName('127.0.0.1 localhost', 'pc', undefined), '127.0.0.1 localhost\n127.0.1.1\tpc\n');
});

test('hosts: CRLF files stay CRLF; a file without a final newline stays without one', () => {
  assert.equal(
    hostsWithName('127.0.0.1 localhost\r\n127.0.1.1 ref\r\n', 'pc', 'ref'),
    '127.0.0.1 localhost\r\n127.0.1.1 pc\r\n',
  );
  assert.equal(hostsWithName('127.0.1.1 ref', 'pc', 'ref'), '127.0.1.1 pc');
});

test('machine-id: states as systemd reads them; new ids are 32 lower-case hex digits, v4 UUID bits, random', () => {
  assert.equal(machineIdState('0123456789abcdef0123456789abcdef\n'), 'id');
  assert.equal(machineIdState(''), 'empty');
  assert.equal(machineIdState('\n'), 'empty');
  assert.equal(machineIdState('uninitialized\n'), 'uninitialized');
  assert.equal(machineIdState('0123456789ABCDEF0123456789ABCDEF\n'), 'invalid');
  assert.equal(machineIdState('hello'), 'invalid');
  const a = newMachineId();
  const b = newMachineId();
  assert.match(a, /^[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}$/);
  assert.notEqual(a, b);
  assert.equal(newMachineId(Buffer.alloc(16, 0xff)), 'ffffffffffff4fffbfffffffffffffff');
});

test('host key file names and ssh-keygen -l lines', () => {
  assert.equal(hostKeyType('ssh_host_ed25519_key'), 'ed25519');
  assert.equal(hostKeyType('ssh_host_rsa_key'), 'rsa');
  assert.equal(hostKeyType('ssh_host_rsa_key.pub'), undefined);
  assert.equal(hostKeyType('ssh_host_rsa_key-cert.pub'), undefined);
  assert.deepEqual(
    parseFingerprint('256 SHA256:AbC+/d0123456789abcdefghijklmnopqrstuvwxyzA root@lab1-01 (ED25519)\n'),
    {
      bits: 256,
      fingerprint: 'SHA256:AbC+/d0123456789abcdefghijklmnopqrstuvwxyzA',
      keyType: 'ED25519',
    },
  );
  assert.equal(parseFingerprint('ssh-keygen: not a key'), undefined);
});
