/** The pure rules of what the imaging environment holds (src/bootenv/contents.ts). */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { test } from 'node:test';

import {
  MODULES,
  TOOLS,
  importSpecifiers,
  kernelPackage,
  moduleClosure,
  moduleName,
  packageClosure,
  packageOf,
  parseBuiltin,
  parseLdd,
  parseModulesDep,
  productionPackages,
  rootPath,
} from '../../src/bootenv/contents.ts';

const ROOT = resolve(import.meta.dirname, '../..');

test('kernelPackage reads the versioned kernel from apt-cache depends linux-image-amd64', () => {
  assert.equal(
    kernelPackage('linux-image-amd64\n  Depends: linux-image-6.1.0-57-amd64\n'),
    'linux-image-6.1.0-57-amd64',
  );
  assert.equal(kernelPackage('linux-image-amd64\n'), undefined);
  assert.equal(kernelPackage('  Depends: linux-image-6.1.0-57-cloud-amd64-unsigned\n'), undefined);
});

test('parseLdd: libraries and the loader as absolute paths; vdso skipped; missing libraries named', () => {
  const out = [
    '\tlinux-vdso.so.1 (0x00007f884d1a5000)',
    '\tlibext2fs.so.2 => /lib/x86_64-linux-gnu/libext2fs.so.2 (0x00007f884d104000)',
    '\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f884ceae000)',
    '\t/lib64/ld-linux-x86-64.so.2 (0x00007f884d1a7000)',
    '',
  ].join('\n');
  assert.deepEqual(parseLdd(out), {
    libraries: [
      '/lib/x86_64-linux-gnu/libext2fs.so.2',
      '/lib/x86_64-linux-gnu/libc.so.6',
      '/lib64/ld-linux-x86-64.so.2',
    ],
    missing: [],
  });
  assert.deepEqual(parseLdd('\tlibefiboot.so.1 => not found\n').missing, ['libefiboot.so.1']);
  assert.deepEqual(parseLdd('\tnot a dynamic executable\n'), { libraries: [], missing: [] });
});

test('moduleClosure: the wanted modules with their dependencies; built-in ones are not missing', () => {
  const dep = parseModulesDep(
    [
      'kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko kernel/lib/crc16.ko',
      'kernel/fs/jbd2/jbd2.ko:',
      'kernel/fs/mbcache.ko:',
      'kernel/lib/crc16.ko:',
      'kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko',
      'kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko',
      'kernel/net/core/failover.ko:',
      'kernel/crypto/crc32c_generic.ko:',
      'kernel/drivers/unused.ko:',
      '',
    ].join('\n'),
  );
  const r = moduleClosure(
    dep,
    ['ext4', 'virtio-net', 'af_packet', 'loop'],
    parseBuiltin('kernel/net/packet/af_packet.ko\n'),
  );
  assert.deepEqual(r.files, [
    'kernel/drivers/net/net_failover.ko',
    'kernel/drivers/net/virtio_net.ko',
    'kernel/fs/ext4/ext4.ko',
    'kernel/fs/jbd2/jbd2.ko',
    'kernel/fs/mbcache.ko',
    'kernel/lib/crc16.ko',
    'kernel/net/core/failover.ko',
  ]);
  assert.deepEqual(r.missing, ['loop']);
  assert.equal(moduleName('kernel/drivers/scsi/sd_mod.ko.xz'), 'sd_mod');
  assert.equal(moduleName('kernel/arch/x86/crypto/crc32c-intel.ko'), 'crc32c_intel');
  // crc32c_generic is loaded before ext4 mounts anything (ext4 asks for crc32c only then).
  assert.ok(MODULES.indexOf('crc32c_generic') < MODULES.indexOf('ext4'));
});

test('productionPackages and packageClosure: dev-only packages never, nested copies resolved as Node does', () => {
  const lock = {
    packages: {
      '': { dependencies: { a: '1' }, devDependencies: { d: '1' } },
      'node_modules/a': { dependencies: { b: '1', c: '1' } },
      'node_modules/b': { dependencies: { c: '2' }, optionalDependencies: { gone: '1' } },
      'node_modules/b/node_modules/c': {},
      'node_modules/c': {},
      'node_modules/d': { dev: true, dependencies: { a: '1' } },
      'node_modules/server-only': {},
    },
  };
  assert.deepEqual(productionPackages(lock), [
    'node_modules/a',
    'node_modules/b',
    'node_modules/c',
    'node_modules/server-only',
    'node_modules/b/node_modules/c',
  ]);
  assert.deepEqual(packageClosure(lock, ['a']), {
    packages: ['node_modules/a', 'node_modules/b', 'node_modules/c', 'node_modules/b/node_modules/c'],
    missing: [],
  });
  assert.deepEqual(packageClosure(lock, ['d', 'nope']).missing, ['d', 'nope']);
  assert.throws(() => productionPackages({ lockfileVersion: 1, dependencies: {} }), /lockfile v2/);
});

test('importSpecifiers and packageOf: what a module loads, including workers; packages by name', () => {
  const src = [
    "import { a } from './a.ts';",
    "import type { T } from '../b.ts';",
    "export { c } from './c.ts';",
    "import 'side-effect';",
    "const { d } = await import('../d.ts');",
    "new Worker(new URL('./worker.ts', import.meta.url));",
    "import {\n  Command,\n  Option,\n} from 'commander';",
    "import x from '@scope/pkg/sub';",
    "import { readFile } from 'node:fs/promises';",
  ].join('\n');
  assert.deepEqual(importSpecifiers(src).sort(), [
    '../b.ts',
    '../d.ts',
    './a.ts',
    './c.ts',
    './worker.ts',
    '@scope/pkg/sub',
    'commander',
    'node:fs/promises',
    'side-effect',
  ]);
  assert.deepEqual(['@scope/pkg/sub', 'commander', 'typebox/value', 'node:fs', './x.ts'].map(packageOf), [
    '@scope/pkg',
    'commander',
    'typebox',
    undefined,
    undefined,
  ]);
});

test("the project's own lock: img's packages are production ones, and the server's stay out", () => {
  const lock = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8')) as unknown;
  const r = packageClosure(lock, ['commander', 'cli-progress', 'typebox']);
  assert.deepEqual(r.missing, []);
  assert.ok(r.packages.includes('node_modules/commander'));
  assert.ok(!r.packages.some((p) => /fastify|\/pg$|kysely|typescript|eslint/.test(p)), r.packages.join(' '));
});

test('rootPath maps host paths into the merged /usr of the environment', () => {
  assert.equal(rootPath('/sbin/mke2fs'), 'usr/sbin/mke2fs');
  assert.equal(rootPath('/lib64/ld-linux-x86-64.so.2'), 'usr/lib64/ld-linux-x86-64.so.2');
  assert.equal(rootPath('/lib/x86_64-linux-gnu/libc.so.6'), 'usr/lib/x86_64-linux-gnu/libc.so.6');
  assert.equal(rootPath('/usr/bin/perl'), 'usr/bin/perl');
  assert.equal(rootPath('/etc/x'), 'etc/x');
  assert.equal(rootPath('/libexec/x'), 'libexec/x');
  // Each tool is named once (a duplicate would be copied twice into the same place).
  assert.equal(new Set(TOOLS.map((t) => t.name)).size, TOOLS.length);
});
