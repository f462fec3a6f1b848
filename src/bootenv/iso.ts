/**
 * `imgcast bootenv iso`: the built environment (vmlinuz, initrd.img) on a hybrid ISO image that
 * boots from a CD/DVD or, written to a USB stick as it is, from USB, under BIOS and UEFI: what
 * grub-mkrescue makes (GRUB for both firmwares, xorriso for the ISO, mtools for its EFI image).
 * Its menu: "image this workstation (automatic)", the default, and "maintenance shell".
 */
import { spawn } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

import { BOOTENV_FILES, hasCommand, type BootenvInfo } from './build.ts';
import { BootenvError } from './errors.ts';

export const ISO_FILE = 'imgcast-bootenv.iso';

export interface IsoOptions {
  dir: string;
  /** Baked into the menu entries as imgcast.server=URL; without it img finds the server itself. */
  server?: string;
  log?: (line: string) => void;
}

export interface IsoResult {
  file: string;
  bytes: number;
  kernel: string;
  seconds: number;
}

/** Packages grub-mkrescue needs for a hybrid BIOS + UEFI image. */
const ISO_NEEDS: Array<[string, string]> = [
  ['grub-mkrescue', 'grub-common'],
  ['xorriso', 'xorriso'],
  ['mformat', 'mtools'],
];

/** The kernel arguments of each menu entry (the same the server's iPXE script writes). */
export function grubConfig(o: { server?: string }): string {
  const common = [
    'console=tty0',
    'console=ttyS0,115200',
    ...(o.server ? [`imgcast.server=${o.server}`] : []),
  ];
  const entry = (title: string, extra: string[]) =>
    [
      `menuentry '${title}' {`,
      `  linux /imgcast/vmlinuz ${[...common, ...extra].join(' ')}`,
      '  initrd /imgcast/initrd.img',
      '}',
    ].join('\n');
  return [
    'serial --unit=0 --speed=115200',
    'terminal_input serial console',
    'terminal_output serial console',
    'set timeout=5',
    'set default=0',
    entry('image this workstation (automatic)', []),
    entry('maintenance shell', ['imgcast.mode=shell']),
    '',
  ].join('\n');
}

/** A server URL as the kernel argument takes it: http(s)://HOST[:PORT], no spaces or quotes. */
export function checkServerUrl(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new BootenvError('E_BOOTENV_STEP', `--server ${url}: not a URL (http://HOST:PORT)`);
  }
  if (!/^https?:$/.test(u.protocol) || /[\s'"]/.test(url))
    throw new BootenvError('E_BOOTENV_STEP', `--server ${url}: an http:// URL without spaces or quotes`);
  return url.replace(/\/$/, '');
}

export async function buildIso(o: IsoOptions): Promise<IsoResult> {
  const log = o.log ?? (() => {});
  const started = Date.now();
  const dir = resolve(o.dir);
  const server = o.server === undefined ? undefined : checkServerUrl(o.server);
  const missing = ISO_NEEDS.filter(([c]) => !hasCommand(c));
  if (missing.length)
    throw new BootenvError(
      'E_BOOTENV_TOOL',
      `the ISO needs ${missing.map(([c]) => c).join(', ')}: apt-get install ${[...new Set(missing.map(([, p]) => p))].join(' ')}`,
    );
  for (const [dirName, pkg] of [
    ['/usr/lib/grub/i386-pc', 'grub-pc-bin'],
    ['/usr/lib/grub/x86_64-efi', 'grub-efi-amd64-bin'],
  ] as const) {
    if (!existsSync(dirName))
      throw new BootenvError(
        'E_BOOTENV_TOOL',
        `the ISO boots under BIOS and UEFI and needs ${dirName}: apt-get install ${pkg}`,
      );
  }
  let info: BootenvInfo;
  try {
    info = JSON.parse(await readFile(join(dir, BOOTENV_FILES.info), 'utf8')) as BootenvInfo;
    for (const f of [BOOTENV_FILES.kernel, BOOTENV_FILES.initrd]) await stat(join(dir, f));
  } catch {
    throw new BootenvError(
      'E_BOOTENV_MISSING',
      `no built environment in ${dir} (vmlinuz, initrd.img, bootenv.json): run imgcast bootenv build first`,
      { dir },
    );
  }
  const scratch = await mkdtemp(join(tmpdir(), 'imgcast-iso-'));
  const out = join(dir, `.${ISO_FILE}.partial-${process.pid}`);
  try {
    const tree = join(scratch, 'tree');
    await mkdir(join(tree, 'imgcast'), { recursive: true });
    await mkdir(join(tree, 'boot/grub'), { recursive: true });
    await copyFile(join(dir, BOOTENV_FILES.kernel), join(tree, 'imgcast/vmlinuz'));
    await copyFile(join(dir, BOOTENV_FILES.initrd), join(tree, 'imgcast/initrd.img'));
    await writeFile(join(tree, 'boot/grub/grub.cfg'), grubConfig({ server }));
    log(
      `grub-mkrescue: kernel ${info.kernel}${server ? `, server ${server}` : ', server found by discovery'}`,
    );
    await run('grub-mkrescue', ['-o', out, tree, '--', '-volid', 'IMGCAST']);
    const bytes = (await stat(out)).size;
    const file = join(dir, ISO_FILE);
    await rename(out, file);
    const seconds = Math.round((Date.now() - started) / 100) / 10;
    log(`written ${file}: ${(bytes / 1024 / 1024).toFixed(1)} MiB in ${seconds} s`);
    return { file, bytes, kernel: info.kernel, seconds };
  } finally {
    await rm(out, { force: true });
    await rm(scratch, { recursive: true, force: true });
  }
}

function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((res, rej) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out = (out + d).slice(-20_000)));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (out = (out + d).slice(-20_000)));
    child.on('error', (e) => rej(new BootenvError('E_BOOTENV_TOOL', `cannot run ${cmd}: ${e.message}`)));
    child.on('close', (code) =>
      code === 0
        ? res()
        : rej(
            new BootenvError(
              'E_BOOTENV_STEP',
              `${cmd} failed (exit ${code}): ${out.trim().split('\n').slice(-15).join('\n')}`,
            ),
          ),
    );
  });
}
