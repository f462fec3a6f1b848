import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, lstat, mkdir, open, readdir, readFile, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { ImageReader } from '../../src/image/reader.ts';
import type { FileVolume } from '../../src/image/types.ts';
import { mountedUses } from '../../src/disk/device.ts';
import { hasCommand, loopUnavailable, skipUnless, tempDir } from '../helpers/env.ts';
import { MiB, mbrExtDisk, sparse } from '../engine/disk-fixtures.ts';
import { HOST_KEY_TYPES, ROOT, identityToolsMissing, linuxReference } from '../engine/identity/fixtures.ts';

const IMG = new URL('../../src/cli/img.ts', import.meta.url).pathname;
const BIN = new URL('../../bin/img.js', import.meta.url).pathname;

function img(...args: string[]) {
  const r = spawnSync(process.execPath, [IMG, ...args], { encoding: 'utf8' });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

test('every command has --help', () => {
  for (const cmd of [
    [],
    ['make'],
    ['restore'],
    ['info'],
    ['ls'],
    ['stat'],
    ['extract'],
    ['add'],
    ['rm'],
    ['fileset'],
    ['fileset', 'exclude'],
    ['verify'],
    ['compact'],
    ['repair'],
    ['receive'],
  ]) {
    const r = img(...cmd, '--help');
    assert.equal(r.code, 0, `img ${cmd.join(' ')} --help: ${r.err}`);
    assert.match(r.out, /Usage: img/);
  }
});

test('img --version prints the package version', async () => {
  const pkg = JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  for (const flag of ['--version', '-V']) {
    const r = img(flag);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out.trim(), pkg.version);
  }
});

test('usage errors exit 2 with a message; operation failures exit 1 with a code', async (t) => {
  const dir = await tempDir(t);
  let r = img('make', dir, join(dir, 'x.imgc'), '--level', 'fastest');
  assert.equal(r.code, 2);
  assert.match(r.err, /fastest/);
  r = img('frobnicate');
  assert.equal(r.code, 2);
  r = img('info', join(dir, 'missing.imgc'));
  assert.equal(r.code, 1);
  assert.match(r.err, /missing\.imgc/);
  await writeFile(
    join(dir, 'not-an-image.imgc'),
    'hello, I am a text file, not an image at all\n'.repeat(20),
  );
  r = img('info', join(dir, 'not-an-image.imgc'), '--json');
  assert.equal(r.code, 1);
  assert.equal(JSON.parse(r.out).error, 'E_IMAGE_MAGIC');
});

test('make, info --json, ls, fileset, verify and restore through the CLI', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(join(src, 'docs'), { recursive: true });
  await writeFile(join(src, 'docs/readme.txt'), 'lab image\n'.repeat(1000));
  await writeFile(join(src, 'big.bin'), Buffer.alloc(3 * 1024 * 1024, 7));
  const image = join(dir, 'lab.imgc');

  let r = img('make', src, image, '--json');
  assert.equal(r.code, 0, r.err);
  const info = JSON.parse(r.out);
  assert.equal(info.volumes.length, 1);
  assert.equal(info.volumes[0].filesystem, 'directory');
  assert.ok(info.fileBytes < 100_000, `a compressible tree should shrink, got ${info.fileBytes}`);

  r = img('make', src, image);
  assert.equal(r.code, 1, 'refuses to overwrite an existing image without --force');

  r = img('ls', image, 'docs', '--json');
  assert.equal(r.code, 0, r.err);
  assert.deepEqual(
    JSON.parse(r.out).map((e: { name: string }) => e.name),
    ['readme.txt'],
  );

  r = img('fileset', 'exclude', image, '4', 'docs');
  assert.equal(r.code, 0, r.err);
  r = img('fileset', 'exclude', image, '11', 'docs');
  assert.equal(r.code, 2);
  r = img('fileset', 'list', image, '--json');
  const sets = JSON.parse(r.out);
  assert.equal(sets.length, 10);
  assert.equal(sets[3].excludedEntries, 2);

  r = img('verify', image, '--json');
  assert.equal(r.code, 0, r.err);
  assert.equal(JSON.parse(r.out).ok, true);
  r = img('repair', image, '--json');
  assert.equal(r.code, 0, r.err);
  assert.deepEqual(JSON.parse(r.out), { repaired: false, generation: 2, bytesDropped: 0 });

  const out = join(dir, 'out');
  r = img('restore', image, out, '--fileset', '4');
  assert.equal(r.code, 0, r.err);
  assert.equal((await stat(join(out, 'big.bin'))).size, 3 * 1024 * 1024);
  await assert.rejects(stat(join(out, 'docs')), { code: 'ENOENT' });

  // Damage one byte in the middle of big.bin's stored chunk: verify fails and restore refuses.
  const reader = await ImageReader.open(image);
  const volume = reader.manifest.volumes[0] as FileVolume;
  const chunk = volume.entries.find((e) => e.path === 'big.bin')?.extents?.[0]?.chunk ?? '';
  const info2 = reader.chunk(chunk);
  await reader.close();
  assert.ok(info2, 'big.bin has a stored chunk');
  const at = info2.offset + info2.storedLength - Math.ceil(info2.storedLength / 2);
  const fh = await open(image, 'r+');
  const b = Buffer.alloc(1);
  await fh.read(b, 0, 1, at);
  b[0] = (b[0] ?? 0) ^ 0xff;
  await fh.write(b, 0, 1, at);
  await fh.close();
  r = img('verify', image);
  assert.equal(r.code, 1);
  assert.match(r.out + r.err, /DAMAGED/);
  assert.match(r.out + r.err, /big\.bin/, 'the report names the damaged file');
  r = img('restore', image, join(dir, 'out-damaged'));
  assert.equal(r.code, 1);
  assert.doesNotMatch(r.out, /restored/);
  assert.ok((await readFile(join(src, 'docs/readme.txt'))).length > 0);
});

test("img ls shows setuid, setgid and sticky bits as ls -l does, and a symlink's size as its target's length", async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(src);
  for (const [name, mode] of [
    ['suid', 0o4755],
    ['suid-noexec', 0o4644],
    ['sgid', 0o2755],
    ['sgid-noexec', 0o2644],
    ['every-bit', 0o7777],
    ['plain', 0o640],
  ] as const) {
    await writeFile(join(src, name), 'x');
    await chmod(join(src, name), mode);
  }
  for (const [name, mode] of [
    ['tmp', 0o1777],
    ['sticky-closed', 0o1770],
  ] as const) {
    await mkdir(join(src, name));
    await chmod(join(src, name), mode);
  }
  await symlink('some/where/else', join(src, 'link'));
  // Four bytes, not valid UTF-8: the size counts bytes, not the characters shown.
  await symlink(Buffer.from('caf\xe9', 'latin1'), join(src, 'latin1-link'));
  const image = join(dir, 'modes.imgc');
  let r = img('make', src, image);
  assert.equal(r.code, 0, r.err);

  r = img('ls', image);
  assert.equal(r.code, 0, r.err);
  const shown = new Map(
    r.out
      .trim()
      .split('\n')
      .map((line) => {
        const [mode, , , size, , , name] = line.split(/ +/);
        return [name!, `${mode} ${size}`];
      }),
  );
  const names = [
    'suid',
    'suid-noexec',
    'sgid',
    'sgid-noexec',
    'every-bit',
    'plain',
    'tmp',
    'sticky-closed',
    'link',
    'latin1-link',
  ];
  assert.deepEqual([...shown.keys()].sort(), [...names].sort());
  for (const name of names) {
    // stat's %A is ls -l's mode column; %s a symlink's size as ls -l shows it.
    const want = execFileSync('stat', ['-c', '%A', join(src, name)], { encoding: 'utf8' }).trim();
    const size = (await lstat(join(src, name))).size;
    assert.equal(shown.get(name), `${want} ${name === 'tmp' || name === 'sticky-closed' ? 0 : size}`, name);
  }
  assert.equal(shown.get('suid'), '-rwsr-xr-x 1');
  assert.equal(shown.get('tmp'), 'drwxrwxrwt 0');
  assert.equal(shown.get('link'), 'lrwxrwxrwx 15');
  assert.equal(shown.get('latin1-link'), 'lrwxrwxrwx 4');

  r = img('ls', image, 'link', '--json');
  assert.equal(r.code, 0, r.err);
  assert.equal(JSON.parse(r.out)[0].size, 15);
});

test('messages say "1 chunk" and "1 entry", and system errors as sentences, not Node\'s raw text', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(src);
  await writeFile(join(src, 'only.txt'), 'one small file\n');
  const image = join(dir, 'one.imgc');
  let r = img('make', src, image);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /; 1 chunk, /);
  assert.match(r.out, /, 2 entries, /);
  r = img('verify', image);
  assert.match(r.out, /OK — 1 chunk \(/);
  r = img('restore', image, join(dir, 'out'));
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /: 1 chunk, /);
  await writeFile(join(dir, 'extra.txt'), 'added later\n');
  r = img('add', image, join(dir, 'extra.txt'));
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /: 1 entry, /);
  r = img('rm', image, 'extra.txt');
  assert.match(r.out, /removed 1 entry$/m);
  r = img('fileset', 'exclude', image, '3', 'only.txt');
  assert.match(r.out, /file set 3: 1 entry excluded/);
  r = img('extract', image, 'only.txt', '--to', join(dir, 'x'));
  assert.match(r.out, /extracted 1 entry /);

  for (const args of [
    ['make', join(dir, 'missing'), join(dir, 'm.imgc')],
    ['add', image, join(dir, 'missing')],
  ]) {
    r = img(...args);
    assert.equal(r.code, 1, r.err);
    assert.match(r.err, /missing: no such file or directory \(ENOENT\)/, r.err);
    assert.doesNotMatch(r.err, /ENOENT: no such file or directory, /, r.err);
  }
});

test("the README's CLI reference lists every command and every option their --help shows", async () => {
  const readme = await readFile(new URL('../../README.md', import.meta.url), 'utf8');
  // The first cell of each row of the reference tables: the command as typed, with its options.
  const rows = [...readme.matchAll(/^\| `((?:img|imgcast) [^`]*)`/gm)].map((m) =>
    m[1]!.replace(/\\\|/g, '|'),
  );
  const IMGCAST = new URL('../../src/cli/imgcast.ts', import.meta.url).pathname;
  const commands: Array<[string, string[]]> = [
    ...[
      'make',
      'restore',
      'info',
      'ls',
      'stat',
      'extract',
      'add',
      'rm',
      'fileset list',
      'fileset exclude',
      'fileset include',
      'verify',
      'compact',
      'repair',
      'receive',
      'session',
      'auto',
    ].map((c): [string, string[]] => [`img ${c}`, [IMG, ...c.split(' ')]]),
    ['imgcast send', [IMGCAST, 'send']],
    ...['session add', 'session edit', 'workstation add', 'workstation edit', 'workstation import'].map(
      (c): [string, string[]] => [`imgcast ${c}`, [IMGCAST, ...c.split(' ')]],
    ),
  ];
  // The administration commands all take these; the README says so once, above their table.
  const adminCommon = new Set(['--server', '--data', '--json']);
  for (const [command, argv] of commands) {
    const row = rows.find((r) => r === command || r.startsWith(`${command} `));
    assert.ok(row, `README has no row for ${command}`);
    const help = spawnSync(process.execPath, [...argv, '--help'], { encoding: 'utf8' }).stdout;
    const admin = command.startsWith('imgcast ') && command !== 'imgcast send';
    const options = [...help.matchAll(/^ +(?:(-[a-zA-Z]), )?(--[a-z-]+)/gm)].filter(
      (m) => m[2] !== '--help' && !(admin && adminCommon.has(m[2]!)),
    );
    assert.ok(options.length > 0 || command.endsWith('info') || admin, `${command}: no options in --help`);
    for (const [, short, long] of options) {
      assert.ok(row.includes(long!), `README's ${command} row lacks ${long}: ${row}`);
      if (short)
        assert.ok(row.includes(`${short}, ${long}`), `README's ${command} row lacks ${short}: ${row}`);
    }
  }
});

test('the bin launchers run the commands (npx img, npx imgcast)', () => {
  for (const [bin, usage] of [
    ['../../bin/img.js', /Usage: img/],
    ['../../bin/imgcast.js', /Usage: imgcast/],
  ] as const) {
    const r = spawnSync(process.execPath, [new URL(bin, import.meta.url).pathname, '--help'], {
      encoding: 'utf8',
    });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, usage);
  }
});

test('the launchers refuse a Node older than 24 with a message saying how to run them', (t) => {
  const old = ['/usr/bin/node', '/usr/local/bin/node'].find((p) => {
    const v = spawnSync(p, ['--version'], { encoding: 'utf8' });
    return v.status === 0 && Number(v.stdout.trim().slice(1).split('.')[0]) < 24;
  });
  if (!old) {
    t.skip('no Node older than 24 installed at /usr/bin or /usr/local/bin to start the launchers with');
    return;
  }
  for (const bin of ['../../bin/img.js', '../../bin/imgcast.js']) {
    const r: SpawnSyncReturns<string> = spawnSync(old, [new URL(bin, import.meta.url).pathname, '--help'], {
      encoding: 'utf8',
    });
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /needs Node\.js 24 or newer; this is v\d+.*npx img/);
  }
});

test('Ctrl-C during img make: the half-made image is removed, exit 130 with the reason', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(src);
  // Incompressible data, enough that the capture is still running when the signal comes.
  execFileSync('sh', ['-c', `head -c ${256 << 20} /dev/urandom > ${join(src, 'big')}`]);
  const image = join(dir, 'x.imgc');
  const child = spawn(process.execPath, [IMG, 'make', src, image], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  // Signalled once the image file is begun, that is while the capture runs.
  for (let i = 0; i < 500 && !existsSync(`${image}.partial`); i++)
    await new Promise((r) => setTimeout(r, 10));
  assert.ok(existsSync(`${image}.partial`), 'the capture never began');
  child.kill('SIGINT');
  const code = await exited;
  assert.equal(code, 130, err);
  assert.match(err, /interrupted by SIGINT \[E_INTERRUPTED\]/);
  assert.ok(!existsSync(image) && !existsSync(`${image}.partial`));
});

/** Mount points under imgcast's mount folder, as the kernel lists them. */
async function imgcastMounts(): Promise<string[]> {
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  return info
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((m) => m.startsWith('/run/imgcast-mounts/'));
}

/** Starts `img ARGS` and kills it with SIGKILL once it has mounted a filesystem; returns its stderr. */
async function killOnceMounted(args: string[]): Promise<string> {
  const before = new Set(await imgcastMounts());
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  let exited = false;
  const done = new Promise<void>((resolve) =>
    child.on('exit', () => {
      exited = true;
      resolve();
    }),
  );
  let mounted = false;
  for (let i = 0; i < 3000 && !exited && !mounted; i++) {
    mounted = (await imgcastMounts()).some((m) => !before.has(m));
    if (!mounted) await new Promise((r) => setTimeout(r, 5));
  }
  child.kill('SIGKILL');
  await done;
  assert.ok(mounted, `img ${args[0]} ended before it mounted anything: ${err}`);
  return err;
}

test('after img restore and img make are killed with SIGKILL, the next run releases their mounts, loop devices and folders', async (t) => {
  if (skipUnless(t, loopUnavailable())) return;
  if (!hasCommand('sfdisk')) return void t.skip('needs sfdisk');
  const dir = await tempDir(t);
  const { image, disk } = await mbrExtDisk(dir, { dataBytes: 30 * MiB });
  const target = await sparse(join(dir, 'target.img'), 64 * MiB);
  const folders = async () => new Set(await readdir('/run/imgcast-mounts').catch(() => [] as string[]));
  const foldersBefore = await folders();
  const loopsOf = (path: string) => spawnSync('losetup', ['-j', path], { encoding: 'utf8' }).stdout.trim();

  await killOnceMounted(['restore', image, target]);
  assert.ok((await mountedUses(target)).length > 0, 'the killed restore left its filesystem mounted');
  // The killed run left its half-written ext4 where partition 1 starts: overwriting it takes --force.
  let r = spawnSync(process.execPath, [BIN, 'restore', image, target, '--force'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /released \/dev\/loop\d+ on \/run\/imgcast-mounts\/mnt-.*killed/);
  assert.deepEqual(await mountedUses(target), []);
  assert.equal(loopsOf(target), '');
  const fsck = spawnSync('e2fsck', ['-fn', `${target}?offset=${MiB}`], { encoding: 'utf8' });
  assert.equal(fsck.status, 0, fsck.stdout + fsck.stderr);

  // A capture holds its source mounted read-only; the next capture releases that too.
  await killOnceMounted(['make', disk, join(dir, 'killed.imgc')]);
  assert.ok((await mountedUses(disk)).length > 0, 'the killed capture left its source mounted');
  r = spawnSync(process.execPath, [BIN, 'make', disk, join(dir, 'again.imgc')], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /released .*killed/);
  assert.deepEqual(await mountedUses(disk), []);
  assert.equal(loopsOf(disk), '');
  assert.deepEqual(
    [...(await folders())].filter((n) => !foldersBefore.has(n)),
    [],
    'mount folders left behind',
  );
});

test('a target that does not exist becomes a disk-image file only with --create, never under /dev, and says so', async (t) => {
  if (!hasCommand('sfdisk')) return void t.skip('needs sfdisk');
  const dir = await tempDir(t);
  const { disk, image } = await rawDiskImage(dir);
  let r;

  const typo = '/dev/imgcast-test-no-such-disk';
  for (const args of [[typo], [typo, '--create']]) {
    r = img('restore', image, ...args);
    assert.equal(r.code, 1, r.err);
    assert.match(r.err, /\/dev\/imgcast-test-no-such-disk/);
    assert.match(r.err, args.length === 1 ? /does not exist/ : /under \/dev/);
    assert.ok(!existsSync(typo), `${typo} was created`);
  }
  const fresh = join(dir, 'new.img');
  r = img('restore', image, fresh);
  assert.equal(r.code, 1, r.err);
  assert.match(r.err, /new\.img does not exist.*--create/);
  assert.ok(!existsSync(fresh));
  r = img('restore', image, join(dir, 'no-such-folder', 'new.img'), '--create');
  assert.equal(r.code, 1, r.err);
  assert.match(r.err, /no-such-folder.* does not exist/);
  assert.ok(!existsSync(join(dir, 'no-such-folder')));

  r = img('restore', image, fresh, '--create');
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /created .*new\.img.*disk-image file/);
  assert.equal((await stat(fresh)).size, 8 * MiB);
  assert.ok((await readFile(fresh)).equals(await readFile(disk)));
  r = img('restore', image, join(dir, 'json.img'), '--create', '--json');
  assert.equal(r.code, 0, r.err);
  assert.equal(JSON.parse(r.out).created, true);
});

/** An 8 MiB MBR disk with one raw partition, captured by img make: restoring it needs no loop devices. */
async function rawDiskImage(dir: string): Promise<{ disk: string; image: string }> {
  const disk = await sparse(join(dir, 'raw-disk.img'), 8 * MiB);
  execFileSync('sfdisk', ['-q', disk], { input: 'label: dos\nstart=2048, size=4MiB, type=83\n' });
  const fh = await open(disk, 'r+');
  await fh.write(Buffer.alloc(64 * 1024, 0x5a), 0, 64 * 1024, 2 * MiB);
  await fh.close();
  const image = join(dir, 'raw.imgc');
  const r = img('make', disk, image);
  assert.equal(r.code, 0, r.err);
  return { disk, image };
}

test('img restore overwrites a disk holding partitions or filesystems only with --force, and names what it holds', async (t) => {
  for (const c of ['sfdisk', 'sgdisk', 'mkfs.ext4', 'wipefs'])
    if (!hasCommand(c)) return void t.skip(`needs ${c}`);
  const dir = await tempDir(t);
  const { image } = await rawDiskImage(dir);
  const hash = async (f: string) =>
    createHash('sha256')
      .update(await readFile(f))
      .digest('hex');

  const used = await sparse(join(dir, 'used.img'), 16 * MiB);
  execFileSync('sgdisk', [
    '-n1:2048:+4M',
    '-t1:ef00',
    '-c1:EFI system',
    '-n2:0:+6M',
    '-t2:8300',
    '-c2:home',
    used,
  ]);
  execFileSync('mkfs.ext4', ['-q', '-F', '-L', 'labhome', '-E', `offset=${5 * MiB}`, used, '6M'], {
    stdio: 'pipe',
  });
  const before = await hash(used);
  let r = img('restore', image, used);
  assert.equal(r.code, 1, r.err);
  assert.match(r.err, /holds a GPT partition table with 2 partitions/);
  assert.match(r.err, /1: 4\.0 MiB, EFI System, named "EFI system", no filesystem found/);
  assert.match(r.err, /2: 6\.0 MiB, Linux filesystem, named "home", ext4 "labhome"/);
  assert.match(r.err, /--force/);
  assert.match(r.err, /\[E_DISK_NOT_EMPTY\]/);
  assert.equal(await hash(used), before, 'the refused target is untouched');
  r = img('restore', image, used, '--json');
  assert.equal(r.code, 1);
  const refusal = JSON.parse(r.out);
  assert.equal(refusal.error, 'E_DISK_NOT_EMPTY');
  assert.deepEqual(
    refusal.contents.partitions.map((p: { number: number; name?: string }) => [p.number, p.name]),
    [
      [1, 'EFI system'],
      [2, 'home'],
    ],
  );

  // A filesystem on the whole target, without any table.
  const bare = await sparse(join(dir, 'bare.img'), 16 * MiB);
  execFileSync('mkfs.ext4', ['-q', '-F', '-L', 'whole', bare], { stdio: 'pipe' });
  r = img('restore', image, bare);
  assert.equal(r.code, 1, r.err);
  assert.match(r.err, /signature: ext4 "whole" at byte \d+/);

  r = img('restore', image, used, '--force');
  assert.equal(r.code, 0, r.err);
  // A target with nothing on it asks for nothing.
  r = img('restore', image, await sparse(join(dir, 'blank.img'), 16 * MiB));
  assert.equal(r.code, 0, r.err);
});

test('extract and restore into a folder that cannot be made (/proc/x) fail at once, naming it', async (t) => {
  if (!existsSync('/proc/self')) return void t.skip('needs /proc');
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(src);
  await writeFile(join(src, 'a.txt'), 'hello\n');
  const image = join(dir, 'p.imgc');
  assert.equal(img('make', src, image).code, 0);
  const target = `/proc/imgcast-test-${process.pid}`;
  const deeper = `${target}/deeper`;
  for (const [folder, args] of [
    [target, ['extract', image, 'a.txt', '--to', target]],
    [target, ['restore', image, target]],
    [deeper, ['extract', image, 'a.txt', '--to', deeper]],
  ] as const) {
    // Node's recursive mkdir went round forever here (ENOENT on /proc/x, EEXIST on /proc, again).
    const r = spawnSync(process.execPath, [BIN, ...args], {
      encoding: 'utf8',
      timeout: 20_000,
      killSignal: 'SIGKILL',
    });
    assert.equal(r.signal, null, `img ${args.join(' ')} still running after 20 s`);
    assert.equal(r.status, 1, r.stderr);
    assert.equal(
      r.stderr,
      `img: cannot create the folder ${folder}: /proc does not let folders be made in it (ENOENT) [E_RESTORE_IO]\n`,
    );
  }
  // A folder that cannot be made for another reason names what is in the way.
  const r = spawnSync(process.execPath, [BIN, 'extract', image, 'a.txt', '--to', join(image, 'x')], {
    encoding: 'utf8',
    timeout: 20_000,
    killSignal: 'SIGKILL',
  });
  assert.equal(r.status, 1, r.stderr);
  assert.equal(
    r.stderr,
    `img: cannot create the folder ${join(image, 'x')}: ${image}: it is not a folder [E_RESTORE_IO]\n`,
  );
});

test('restore --verify-after of an image of an empty folder says "1 entry"', async (t) => {
  const dir = await tempDir(t);
  await mkdir(join(dir, 'src'));
  const image = join(dir, 'empty.imgc');
  assert.equal(img('make', join(dir, 'src'), image).code, 0);
  const r = img('restore', image, join(dir, 'out'), '--verify-after');
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /compared with the image: 1 entry, /);
});

test('img restore --identity NAME --script FILE: the restored disk is that workstation, the script ran on it, the result says so', async (t) => {
  if (skipUnless(t, loopUnavailable() ?? identityToolsMissing())) return;
  const dir = await tempDir(t);
  const ref = await linuxReference(dir);
  const script = join(dir, 'marker.sh');
  await writeFile(
    script,
    '#!/bin/sh\necho "$IMGCAST_NAME $IMGCAST_IMAGE" > "$IMGCAST_ROOT/etc/marker"\necho marked\n',
  );
  const target = join(dir, 'pc.img');

  let r = img(
    'restore',
    ref.image,
    target,
    '--create',
    '--identity',
    'lab1-09',
    '--script',
    script,
    '--verify-after',
    '--json',
  );
  assert.equal(r.code, 0, r.err);
  const out = JSON.parse(r.out);
  assert.ok(out.readBack, 'the read-back ran before the identity changed the disk');
  assert.equal(out.identity.name, 'lab1-09');
  assert.match(out.identity.machineId, /^[0-9a-f]{32}$/);
  assert.deepEqual(out.identity.sshHostKeys.map((k: { type: string }) => k.type).sort(), HOST_KEY_TYPES);
  assert.deepEqual(
    out.scripts.map((s: { name: string; output: string }) => [s.name, s.output]),
    [['marker.sh', 'marked\n']],
  );
  const loop = execFileSync(
    'losetup',
    ['--find', '--show', '-r', '-o', String(ROOT.start), '--sizelimit', String(ROOT.size), target],
    { encoding: 'utf8' },
  ).trim();
  t.after(() => void spawnSync('losetup', ['-d', loop]));
  const cat = (p: string) =>
    execFileSync('debugfs', ['-R', `cat ${p}`, loop], { encoding: 'utf8', stdio: 'pipe' });
  assert.equal(cat('/etc/hostname'), 'lab1-09\n');
  assert.equal(cat('/etc/machine-id'), `${out.identity.machineId}\n`);
  assert.equal(cat('/etc/marker'), 'lab1-09 ref.imgc\n');
  for (const k of out.identity.sshHostKeys as Array<{ type: string; publicKey: string }>)
    assert.equal(cat(`/etc/ssh/ssh_host_${k.type}_key.pub`), `${k.publicKey}\n`);
  execFileSync('losetup', ['-d', loop]);

  // The human form: the name, machine-id and every fingerprint, and the script's output on stderr.
  r = img('restore', ref.image, target, '--force', '--identity', 'lab1-10', '--script', script);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /^identity: lab1-10 \(p2: Debian GNU\/Linux 12 \(bookworm\)\)$/m);
  assert.match(r.out, /^ {2}machine-id [0-9a-f]{32}$/m);
  for (const type of HOST_KEY_TYPES)
    assert.match(r.out, new RegExp(`^  SSH host key ${type} +SHA256:\\S+ \\(\\d+ bits\\)$`, 'm'));
  assert.match(r.out, /^post-imaging script marker\.sh: done in \d+\.\d s$/m);
  assert.match(r.err, /^marked$/m);
});

test('img restore --identity with a bad name is a usage error, and a script that fails fails the command with its output', async (t) => {
  if (skipUnless(t, loopUnavailable() ?? identityToolsMissing())) return;
  const dir = await tempDir(t);
  const ref = await linuxReference(dir);
  const target = join(dir, 'pc.img');
  let r = img('restore', ref.image, target, '--create', '--identity', 'lab_1');
  assert.equal(r.code, 2);
  assert.match(r.err, /"lab_1" is not a host name/);
  assert.equal(existsSync(target), false, 'nothing was restored');
  r = img('restore', ref.image, target, '--create', '--script', join(dir, 'missing.sh'), '--json');
  assert.equal(r.code, 1);
  assert.equal(JSON.parse(r.out).error, 'E_SCRIPT_UNREADABLE');
  assert.equal(existsSync(target), false, 'nothing was restored');

  const bad = join(dir, 'bad.sh');
  await writeFile(bad, 'echo "cannot reach the licence server" >&2\nexit 4\n');
  r = img('restore', ref.image, target, '--create', '--identity', 'lab1-11', '--script', bad, '--json');
  assert.equal(r.code, 1);
  const err = JSON.parse(r.out);
  assert.equal(err.error, 'E_SCRIPT_FAILED');
  assert.equal(err.status, 4);
  assert.equal(err.output, 'cannot reach the licence server\n');
  assert.match(
    r.err,
    /post-imaging script bad\.sh failed \(exit status 4\): cannot reach the licence server \[E_SCRIPT_FAILED\]/,
  );
  assert.deepEqual(await mountedUses(target), [], 'nothing left mounted');
});

test('--reboot is refused before anything is written when the target is no disk of this machine, and is no master option', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'hello'), 'hi\n');
  const image = join(dir, 'x.imgc');
  assert.equal(img('make', dir, image).code, 0);
  const target = join(dir, 'restored.img');
  const r = img('restore', image, target, '--create', '--reboot');
  assert.equal(r.code, 1, r.err);
  assert.match(
    r.err,
    /--reboot boots this machine from the disk it restored, and .* is not a disk of this machine .*\[E_REBOOT_TARGET\]/,
  );
  assert.equal(existsSync(target), false, 'nothing may be written');
  const m = img('session', 'lab', 'master', '--reboot', '--server', '127.0.0.1:1');
  assert.equal(m.code, 2, m.err);
  assert.match(m.err, /--reboot is a client's/);
});
