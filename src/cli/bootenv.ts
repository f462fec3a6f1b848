/** `imgcast bootenv build|iso`: the imaging environment workstations boot (src/bootenv). */
import { join } from 'node:path';

import { Command, Option } from 'commander';

import { UsageError } from '../errors.ts';
import { emit, runCommand } from './output.ts';
import { defaultDataDir } from './server-client.ts';

interface DirOptions {
  data?: string;
  out?: string;
  json?: boolean;
}

/** The bootenv directory: --out, else DATA/bootenv (the server serves it from there). */
function bootenvDir(o: DirOptions): string {
  if (o.data !== undefined && o.out !== undefined)
    throw new UsageError('give --data DIR or --out DIR, not both');
  return o.out ?? join(o.data ?? defaultDataDir(), 'bootenv');
}

const dirOptions = (cmd: Command) =>
  cmd
    .addOption(
      new Option(
        '--data <dir>',
        "the server's data directory: writes into DIR/bootenv (default: imgcast server's)",
      ),
    )
    .addOption(new Option('--out <dir>', 'write into this directory instead'))
    .option('--json', 'print the result as JSON');

export function addBootenvCommands(program: Command): void {
  const bootenv = program
    .command('bootenv')
    .description('the imaging environment workstations boot from the network or from a CD/USB stick');

  dirOptions(
    bootenv
      .command('build')
      .description(
        "build it from this machine's Debian packages: vmlinuz, initrd.img (kernel, busybox, Node, img, its tools) and bootenv.json",
      ),
  ).action((o: DirOptions) =>
    runCommand(
      'imgcast',
      !!o.json,
      async (signal) => {
        const dir = bootenvDir(o);
        const { buildBootenv } = await import('../bootenv/build.ts');
        const r = await buildBootenv({
          dir,
          signal,
          log: (line) => process.stderr.write(`imgcast bootenv: ${line}\n`),
        });
        emit(!!o.json, r, () =>
          [
            `imaging environment built in ${r.dir} (kernel ${r.info.kernel}, imgcast ${r.info.imgcast}) in ${r.seconds} s`,
            `  vmlinuz     ${mib(r.info.files.vmlinuz.bytes)}`,
            `  initrd.img  ${mib(r.info.files['initrd.img'].bytes)} (${mib(r.uncompressedBytes)} unpacked: workstations need 512 MiB of memory or more)`,
            ...(r.leftOut.length ? [`  not included (not installed here): ${r.leftOut.join(', ')}`] : []),
          ].join('\n'),
        );
      },
      { interruptible: true },
    ),
  );

  dirOptions(
    bootenv
      .command('iso')
      .description(
        'write imgcast-bootenv.iso: the built environment on a hybrid ISO for a CD/DVD or a USB stick (BIOS and UEFI)',
      )
      .option(
        '--server <url>',
        'put imgcast.server=URL in its menu (default: img finds the server on the network)',
      ),
  ).action((o: DirOptions & { server?: string }) =>
    runCommand('imgcast', !!o.json, async () => {
      const dir = bootenvDir(o);
      const { buildIso } = await import('../bootenv/iso.ts');
      const r = await buildIso({
        dir,
        server: o.server,
        log: (line) => process.stderr.write(`imgcast bootenv: ${line}\n`),
      });
      emit(
        !!o.json,
        r,
        () => `${r.file}: ${mib(r.bytes)}, kernel ${r.kernel}; dd it to a USB stick or burn it`,
      );
    }),
  );
}

const mib = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
