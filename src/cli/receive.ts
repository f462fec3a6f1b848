/** `img receive`: join a multicast send and write what it carries to a disk, partition or folder. */
import { Option, type Command } from 'commander';
import { localIPv4, senderAddress } from './options.ts';
import { emit, formatBytes, runCommand, withProgress } from './output.ts';
import { count } from '../wording.ts';

export function addReceiveCommand(program: Command): void {
  program
    .command('receive')
    .description('join a multicast send (imgcast send) and restore the image it carries, verified')
    .addOption(
      new Option('--from <host[:port]>', 'the sender (control port, default 7747)')
        .argParser(senderAddress)
        .makeOptionMandatory(),
    )
    .requiredOption(
      '--to <target>',
      'disk device, disk-image file, partition or folder (a plain file with --raw)',
    )
    .addOption(
      new Option('--interface <addr>', 'local IPv4 address of the interface to receive on').argParser(
        localIPv4,
      ),
    )
    .option(
      '--name <name>',
      'how this workstation is reported (default: HOSTNAME/MAC of the receiving interface, the same after a crash, so a rejoin counts as the same receiver)',
    )
    .option('--key <secret>', 'pre-shared key the sender requires (also env IMGCAST_KEY)')
    .option(
      '--journal <file>',
      'resume journal: a receive that was killed, crashed or failed resumes from it and gets only the ' +
        'missing chunks (default: TARGET.imgcast-journal beside a file or folder, ' +
        '/var/lib/imgcast/journals/ for a device; TARGET.journal with --raw)',
    )
    .option('--restart', 'ignore the resume journal and restore everything')
    .option('--force', 'write into a folder that is not empty')
    .option('--keep-sizes', "keep the image's partition sizes (see img restore --help)")
    .option(
      '--no-tune-reassembly',
      "leave the kernel's IP reassembly settings alone. By default (as root, Linux) the receive drops " +
        'incomplete fragmented datagrams after 1 s instead of 30 s and allows 32 MiB of reassembly memory ' +
        'while it runs (restored at the end), so lost fragments do not force the sender back to small ' +
        'datagrams',
    )
    .option('--raw', 'receive a plain file (the sender used --raw)')
    .option('--json', 'print the result as JSON')
    .option('-v, --verbose', 'log session events to stderr')
    .action(
      (o: {
        from: string;
        to: string;
        interface?: string;
        name?: string;
        key?: string;
        journal?: string;
        restart?: boolean;
        raw?: boolean;
        force?: boolean;
        keepSizes?: boolean;
        tuneReassembly?: boolean;
        json?: boolean;
        verbose?: boolean;
      }) =>
        runCommand(
          'img',
          !!o.json,
          async (signal) => {
            // Loaded here: the transport is a quarter of img's start-up, which every other command skips.
            const { receiveCommand } = await import('./transfer.ts');
            const r = await withProgress('receive', { json: !!o.json }, (update) =>
              receiveCommand({
                from: o.from,
                to: o.to,
                raw: o.raw,
                interface: o.interface,
                name: o.name,
                key: o.key ?? process.env.IMGCAST_KEY,
                journal: o.journal,
                restart: !!o.restart,
                force: !!o.force,
                keepSizes: !!o.keepSizes,
                tuneReassembly: o.tuneReassembly !== false,
                onProgress: (p) => update(p.bytes, p.totalBytes),
                signal,
                log: o.verbose ? (line) => process.stderr.write(`${line}\n`) : undefined,
                warn: (line) => process.stderr.write(`img: ${line}\n`),
              }),
            );
            emit(
              !!o.json,
              r,
              () =>
                `received ${r.chunks}/${r.totalChunks} chunks (${formatBytes(r.bytes)}) in ${(r.durationMs / 1000).toFixed(1)} s into ${o.to}, verified` +
                (r.chunksHad
                  ? `; ${count(r.chunksHad, 'chunk')} ${r.chunksHad === 1 ? 'was' : 'were'} already there (resumed)`
                  : ''),
            );
          },
          { interruptible: true },
        ),
    );
}
