import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { lstatSync, lutimesSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { nsToSeconds, utimeArg } from '../../../src/volume/files/restore.ts';
import { exactDouble, setExactTimes, splitNs } from '../../../src/volume/files/times.ts';
import { scratchDir } from './tree.ts';

const times = fc.oneof(
  fc.bigInt({ min: 1_000_000_000_000_000_000n, max: 2_000_000_000_000_000_000n }),
  fc.bigInt({ min: -2_000_000_000_000_000_000n, max: -1n }),
  fc.bigInt({ min: 0n, max: 10n ** 12n }),
  fc.constantFrom(0n, 1_700_000_000_000_000_000n, 1_700_000_000_500_000_000n, -1_000_000_000n),
);

test('exactDouble says exactly when Node sets a time to the nanosecond (checked on a real file)', async (t) => {
  const f = join(await scratchDir(t), 'f');
  writeFileSync(f, '');
  let exact = 0;
  fc.assert(
    fc.property(times, (ns) => {
      const s = nsToSeconds(String(ns));
      lutimesSync(f, utimeArg(s), utimeArg(s));
      const set = lstatSync(f, { bigint: true }).mtimeNs;
      assert.equal(exactDouble(String(ns), s), set === ns, `${ns}: utimes set ${set}`);
      if (set === ns) exact++;
    }),
    { numRuns: 3000 },
  );
  t.diagnostic(`${exact} of 3000 times were exact through a double`);
});

test('splitNs gives utimensat seconds and 0..999999999 nanoseconds, before 1970 too', () => {
  assert.deepEqual(splitNs('1700000000123456789'), { sec: 1700000000n, nsec: 123456789 });
  assert.deepEqual(splitNs('-5123456789'), { sec: -6n, nsec: 876543211 });
  assert.deepEqual(splitNs('-1000000000'), { sec: -1n, nsec: 0 });
});

for (const tool of ['perl', 'touch'] as const) {
  test(`setExactTimes through ${tool}: to the nanosecond, before 1970 too, a symlink itself and not its target`, async (t) => {
    const dir = await scratchDir(t);
    writeFileSync(join(dir, 'f'), 'x');
    writeFileSync(join(dir, 'target'), 'x');
    symlinkSync('target', join(dir, 'link'));
    const before = lstatSync(join(dir, 'target'), { bigint: true }).mtimeNs;
    await setExactTimes(
      [
        { path: join(dir, 'f'), atimeNs: '1700000000123456789', mtimeNs: '-5123456789' },
        {
          path: Buffer.from(join(dir, 'link')),
          atimeNs: '1600000000000000001',
          mtimeNs: '1600000000000000001',
        },
      ],
      tool,
    );
    const f = lstatSync(join(dir, 'f'), { bigint: true });
    assert.deepEqual([f.atimeNs, f.mtimeNs], [1700000000123456789n, -5123456789n]);
    const l = lstatSync(join(dir, 'link'), { bigint: true });
    assert.deepEqual([l.atimeNs, l.mtimeNs], [1600000000000000001n, 1600000000000000001n]);
    assert.equal(lstatSync(join(dir, 'target'), { bigint: true }).mtimeNs, before);
  });
}

test('setExactTimes names the entry it could not set', async (t) => {
  const dir = await scratchDir(t);
  await assert.rejects(
    setExactTimes([{ path: join(dir, 'missing'), atimeNs: '1', mtimeNs: '1' }], 'perl'),
    (err: Error & { code?: string }) => {
      assert.equal(err.code, 'E_RESTORE_IO');
      assert.match(err.message, /cannot set times .*missing: no such file or directory \(ENOENT\)/);
      return true;
    },
  );
});

test('setExactTimes falls back to touch when perl is not installed', async (t) => {
  const dir = await scratchDir(t);
  // A PATH holding only what the fallback runs.
  const bin = join(dir, 'bin');
  mkdirSync(bin);
  for (const tool of ['xargs', 'touch']) {
    const where = execFileSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' }).trim();
    symlinkSync(where, join(bin, tool));
  }
  writeFileSync(join(dir, 'f'), 'x');
  const path = process.env.PATH;
  process.env.PATH = bin;
  try {
    await setExactTimes([
      { path: join(dir, 'f'), atimeNs: '1700000000123456789', mtimeNs: '1600000000987654321' },
    ]);
  } finally {
    process.env.PATH = path;
  }
  const f = lstatSync(join(dir, 'f'), { bigint: true });
  assert.deepEqual([f.atimeNs, f.mtimeNs], [1700000000123456789n, 1600000000987654321n]);
});
