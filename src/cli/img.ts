/**
 * `img`: the workstation engine. Captures and restores disks, folders and partitions,
 * browses and edits images, and receives multicast sessions.
 */
import { Command, Option } from 'commander';
import { basename } from 'node:path';
import { serverUrl } from '../api/client.ts';
import { UsageError } from '../errors.ts';
import type { PostImagingResult } from '../engine/identity/apply.ts';
import type { HostKeyForge } from '../engine/identity/linux.ts';
import type { VerifyAfterReport } from '../engine/verify-target.ts';
import type { ImageReader } from '../image/reader.ts';
import { count } from '../wording.ts';
import { COMPRESSION_LEVELS, DEFAULT_LEVEL, type CompressionLevel, type Manifest } from '../image/types.ts';
import { displayName } from '../volume/files/names.ts';
import { VERSION, emit, formatBytes, runCommand, withProgress } from './output.ts';
import { describeListing, describeInfo, describePostImaging, describeVerify } from './render.ts';
import { addReceiveCommand } from './receive.ts';
import { addSessionCommand } from './session.ts';
import { collect, identityName, seconds } from './options.ts';

/** Opens an image for reading for the length of `use`, closing it however `use` ends. */
async function withReader<T>(image: string, use: (reader: ImageReader) => Promise<T>): Promise<T> {
  const { ImageReader } = await import('../image/reader.ts');
  const reader = await ImageReader.open(image);
  try {
    return await use(reader);
  } finally {
    await reader.close();
  }
}

export function parseFileset(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < 1 || n > 10)
    throw new UsageError(`file set must be 1 to 10, not "${value}"`);
  return n;
}

/** Non-fatal news on stderr, so --json output on stdout stays one document. */
function warn(message: string): void {
  process.stderr.write(`img: ${message}\n`);
}

/**
 * Where `img make` puts the image: the file IMAGE, or (--server with --name) a new image on
 * the imaging server. Mixing the two, or half of the server pair, is a usage error.
 */
export function makeTarget(
  image: string | undefined,
  o: { server?: string; name?: string; force?: boolean },
): { server: string; name: string } | undefined {
  if (o.server === undefined && o.name === undefined) {
    if (image === undefined)
      throw new UsageError('give the image file to create, or --server HOST --name IMAGE');
    return undefined;
  }
  if (o.server === undefined)
    throw new UsageError('--name names an image on the server: give --server HOST too');
  if (o.name === undefined)
    throw new UsageError('--server needs --name: the name of the image on the server');
  if (image !== undefined) {
    throw new UsageError(`give either an image file (${image}) or --server with --name, not both`);
  }
  if (o.force) throw new UsageError('--force is for image files; the server never overwrites an image');
  // A mistyped address is refused before anything is read.
  serverUrl(o.server);
  return { server: o.server, name: o.name };
}

const json = () => new Option('--json', 'print the result as JSON for scripts');
const fileset = () => new Option('-f, --fileset <n>', 'file set 1-10 (default 1)').argParser(parseFileset);

export function buildImgProgram(): Command {
  const program = new Command('img')
    .description('imgcast workstation engine: capture, restore, explore and receive disk images')
    .version(VERSION, '-V, --version', 'print the version')
    .showHelpAfterError()
    .exitOverride();

  program
    .command('make')
    .description(
      'capture a folder, a whole disk (device or disk-image file) or a partition into an image, here or on the imaging server',
    )
    .argument('<source>', 'folder, disk device (/dev/sda), disk-image file, or partition (/dev/sda2)')
    .argument('[image]', 'image file to create (.imgc); not with --server')
    .addOption(
      new Option(
        '-l, --level <level>',
        `compression: none trades network for CPU, size the reverse (default ${DEFAULT_LEVEL}; with --server, the server's default level)`,
      ).choices(COMPRESSION_LEVELS),
    )
    .option('--force', 'overwrite an existing image file')
    .option(
      '--server <host[:port]>',
      'capture straight onto this imaging server (with --name); IMGCAST_TOKEN may hold an admin token, otherwise this machine registers as a workstation',
    )
    .option('--name <image>', "the image's name in the server's image directory (with --server)")
    .addOption(json())
    .addHelpText(
      'after',
      '\nExamples:\n  img make /dev/sda lab.imgc\n  img make /dev/sda --server imaging.lab:7740 --name lab-2026',
    )
    .action(
      (
        source: string,
        image: string | undefined,
        o: { level?: CompressionLevel; force?: boolean; server?: string; name?: string; json?: boolean },
      ) =>
        runCommand(
          'img',
          !!o.json,
          async (signal) => {
            const onServer = makeTarget(image, o);
            const { describeManifest } = await import('../engine/explorer.ts');
            if (onServer) {
              const { makeImageOnServer } = await import('../client/upload.ts');
              const result = await withProgress('capture', { json: !!o.json }, (update) =>
                makeImageOnServer(source, {
                  server: onServer.server,
                  name: onServer.name,
                  token: process.env.IMGCAST_TOKEN || undefined,
                  level: o.level,
                  onProgress: (p) => update(p.bytesDone, p.bytesTotal),
                  onWarning: warn,
                  signal,
                }),
              );
              const info = describeManifest(result.manifest, result.image!);
              const sent = result.upload;
              emit(
                !!o.json,
                {
                  ...info,
                  server: result.server,
                  image: result.committed.image,
                  stats: result.stats,
                  upload: sent,
                },
                () =>
                  [
                    `on server:   ${result.server}`,
                    describeInfo(info),
                    `sent:        ${count(sent.chunksSent, 'chunk')}, ${formatBytes(sent.storedBytesSent)} compressed from ${formatBytes(sent.rawBytesSent)}${sent.retries > 0 ? `; ${count(sent.retries, 'request')} sent again` : ''}`,
                  ].join('\n'),
              );
              return;
            }
            const { makeImage } = await import('../engine/make.ts');
            const result = await withProgress('capture', { json: !!o.json }, (update) =>
              makeImage(source, image!, {
                level: o.level ?? DEFAULT_LEVEL,
                overwrite: !!o.force,
                onProgress: (p) => update(p.bytesDone, p.bytesTotal),
                onWarning: warn,
                signal,
              }),
            );
            const info = describeManifest(result.manifest, result.image!);
            emit(!!o.json, { ...info, stats: result.stats }, () => describeInfo(info));
          },
          { interruptible: true },
        ),
    );

  program
    .command('restore')
    .description('write an image onto a disk (device or file), a partition or a folder, and verify it')
    .argument('<image>', 'image file')
    .argument('<target>', 'disk device, disk-image file, partition, or folder')
    .addOption(fileset())
    .option(
      '--force',
      'overwrite what TARGET holds: a partition table, filesystems, a folder that is not empty',
    )
    .option('--create', 'create TARGET as a new disk-image file if it does not exist (never under /dev)')
    .option(
      '--keep-sizes',
      "keep the image's partition sizes: a larger disk's extra space stays unused, a smaller one must hold them (default: the last ext volume grows to the end of the disk; on a smaller disk the ext volumes shrink as far as their files allow)",
    )
    .option(
      '--verify-after',
      'then read TARGET back (from the disk, through fresh mounts) and compare it with the image',
    )
    .addOption(
      new Option(
        '--identity <name>',
        'then make the restored system this workstation: host name (and Windows computer name), new machine-id and SSH host keys, no random seed, DHCP leases or DUIDs',
      ).argParser(identityName),
    )
    .addOption(
      new Option(
        '--script <file>',
        'then run this post-imaging script with the restored volumes mounted (repeatable; IMGCAST_* variables say where)',
      ).argParser(collect),
    )
    .addOption(
      new Option('--script-timeout <seconds>', 'time limit of each script (default 600)').argParser(seconds),
    )
    .option(
      '--reboot',
      'then boot this machine into the restored disk (a disk of this machine; under UEFI through a boot entry and BootNext)',
    )
    .addOption(json())
    .addHelpText(
      'after',
      '\nExamples:\n  img restore lab.imgc /dev/sda --force --identity lab1-07\n  img restore lab.imgc /dev/sda --force --identity lab1-07 --script join-domain.sh',
    )
    .action(
      (
        image: string,
        target: string,
        o: {
          fileset?: number;
          force?: boolean;
          create?: boolean;
          keepSizes?: boolean;
          verifyAfter?: boolean;
          identity?: string;
          script?: string[];
          scriptTimeout?: number;
          reboot?: boolean;
          json?: boolean;
        },
      ) =>
        runCommand(
          'img',
          !!o.json,
          async (signal) => {
            const { restoreImage } = await import('../engine/restore.ts');
            const fileset = o.fileset ?? 1;
            if (o.reboot) (await import('../client/boot.ts')).checkRebootTarget(target);
            // A script that cannot be read is refused before anything is written.
            const { readScript } = await import('../engine/identity/scripts.ts');
            const scripts = [];
            for (const file of o.script ?? []) scripts.push(await readScript(file));
            // The identity's host keys are made while the disk is written (see HostKeyForge).
            const forgeHostKeys =
              o.identity !== undefined
                ? (await import('../engine/identity/apply.ts')).forgeHostKeys
                : undefined;
            let manifest: Manifest | undefined;
            let hostKeys: HostKeyForge | undefined;
            try {
              const result = await withProgress('restore', { json: !!o.json }, (update) =>
                restoreImage(image, target, {
                  fileset,
                  force: !!o.force,
                  overwrite: !!o.force,
                  create: !!o.create,
                  keepSizes: !!o.keepSizes,
                  onProgress: (p) => update(p.bytesDone, p.bytesTotal),
                  onWarning: warn,
                  onManifest: (m) => {
                    manifest = m;
                    hostKeys = forgeHostKeys?.(m, fileset, o.identity);
                  },
                  signal,
                }),
              );
              let readBack: VerifyAfterReport | undefined;
              if (o.verifyAfter) {
                const { verifyRestoredImage } = await import('../engine/verify-target.ts');
                readBack = await withProgress('verify', { json: !!o.json }, (update) =>
                  verifyRestoredImage(image, target, {
                    fileset,
                    keepSizes: !!o.keepSizes,
                    onProgress: update,
                    signal,
                  }),
                );
              }
              let after: PostImagingResult | undefined;
              if (o.identity !== undefined || scripts.length > 0) {
                const { postImaging } = await import('../engine/identity/apply.ts');
                const facts = { image: basename(image) };
                after = await postImaging(target, manifest!, {
                  ...(o.identity !== undefined ? { identity: { ...facts, name: o.identity } } : {}),
                  facts,
                  scripts,
                  ...(o.scriptTimeout !== undefined ? { scriptTimeoutMs: o.scriptTimeout * 1000 } : {}),
                  fileset,
                  signal,
                  onWarning: warn,
                  // A script's output goes where a command's would, as it comes (kept in the --json result too).
                  onScriptOutput: o.json ? undefined : (_script, text) => process.stderr.write(text),
                  ...(hostKeys ? { hostKeys } : {}),
                });
              }
              const post = after
                ? {
                    identity: after.identity,
                    scripts: after.scripts,
                    ...(after.notes.length ? { notes: after.notes } : {}),
                  }
                : {};
              emit(
                !!o.json,
                { ok: true, image, fileset, ...result, ...(readBack ? { readBack } : {}), ...post },
                () =>
                  [
                    `restored ${image} (file set ${fileset}) to ${result.description}: ${count(result.chunks, 'chunk')}, ${formatBytes(result.bytes)}, each verified against its hash before it was written, and every write flushed to the target without error`,
                    ...(result.created ? [`created ${target}: a new disk-image file`] : []),
                    ...(readBack
                      ? [
                          `read back from ${target} and compared with the image: ${count(readBack.entries, 'entry', 'entries')}, ${formatBytes(readBack.fileBytes)} of file content, ${formatBytes(readBack.rawBytes)} of boot areas and raw volumes, all as the image says`,
                          ...readBack.notChecked.map((n) => `not compared: ${n}`),
                        ]
                      : []),
                    ...(after ? [describePostImaging(after)] : []),
                  ].join('\n'),
              );
            } finally {
              await hostKeys?.discard();
            }
            if (o.reboot) {
              const { prepareBootNext, rebootNow } = await import('../client/boot.ts');
              const manifest = await withReader(image, async (reader) => reader.manifest);
              const plan = await prepareBootNext(target, manifest, `imgcast ${basename(image)}`);
              process.stderr.write(`img: rebooting into the restored disk: ${plan.note}\n`);
              await rebootNow();
            }
          },
          { interruptible: true },
        ),
    );

  program
    .command('info')
    .description('show what an image holds: source, disk layout, volumes, file sets, sizes')
    .argument('<image>')
    .addOption(json())
    .action((image: string, o: { json?: boolean }) =>
      runCommand('img', !!o.json, async () => {
        await withReader(image, async (reader) => {
          const { describeImage } = await import('../engine/explorer.ts');
          const info = describeImage(reader);
          emit(!!o.json, info, () => describeInfo(info));
        });
      }),
    );

  program
    .command('ls')
    .description('list a folder of the image (disk images show partitions as p1, p2, …)')
    .argument('<image>')
    .argument('[path]', 'folder or file inside the image', '.')
    .addOption(fileset())
    .addOption(json())
    .action((image: string, path: string, o: { fileset?: number; json?: boolean }) =>
      runCommand('img', !!o.json, async () => {
        await withReader(image, async (reader) => {
          const { listPath } = await import('../engine/explorer.ts');
          const rows = listPath(reader.manifest, path, o.fileset);
          emit(!!o.json, rows, () => describeListing(rows));
        });
      }),
    );

  program
    .command('stat')
    .description("show one file's details: type, size, owner, mode, times, links, file sets, chunks")
    .argument('<image>')
    .argument('<path>')
    .addOption(json())
    .action((image: string, path: string, o: { json?: boolean }) =>
      runCommand('img', !!o.json, async () => {
        await withReader(image, async (reader) => {
          const { statPath } = await import('../engine/explorer.ts');
          const s = statPath(reader.manifest, path);
          emit(!!o.json, s, () =>
            [
              `path:      ${displayName(s.path)}`,
              `type:      ${s.type}${s.linkTarget !== undefined ? ` -> ${displayName(s.linkTarget)}` : ''}`,
              `size:      ${s.size} (${formatBytes(s.size)})`,
              `mode:      ${(s.mode ?? 0).toString(8).padStart(4, '0')}  owner ${s.uid}:${s.gid}`,
              `modified:  ${s.mtime}`,
              `excluded from file sets: ${s.excludedFrom.length ? s.excludedFrom.join(', ') : 'none'}`,
              ...(s.hardlinks.length ? [`hard links: ${s.hardlinks.map(displayName).join(', ')}`] : []),
              ...(s.entry.xattrs
                ? [`xattrs:    ${Object.keys(s.entry.xattrs).map(displayName).join(', ')}`]
                : []),
              ...(s.entry.flags ? [`flags:     ${s.entry.flags} (as lsattr letters them)`] : []),
              `chunks:    ${new Set((s.entry.extents ?? []).map((x) => x.chunk)).size}`,
            ].join('\n'),
          );
        });
      }),
    );

  program
    .command('extract')
    .description('copy files or folders out of the image into a local folder')
    .argument('<image>')
    .argument('<paths...>', 'paths inside the image')
    .requiredOption('--to <dir>', 'folder to extract into (paths keep their image location below it)')
    .addOption(fileset())
    .addOption(json())
    .action((image: string, paths: string[], o: { to: string; fileset?: number; json?: boolean }) =>
      runCommand('img', !!o.json, async () => {
        const { extractPaths } = await import('../engine/explorer.ts');
        const r = await withProgress('extract', { json: !!o.json }, (update) =>
          extractPaths(image, paths, o.to, {
            fileset: o.fileset ?? 1,
            onProgress: (p) => update(p.bytesDone, p.bytesTotal),
          }),
        );
        emit(
          !!o.json,
          r,
          () => `extracted ${count(r.entries, 'entry', 'entries')} (${formatBytes(r.bytes)}) to ${o.to}`,
        );
      }),
    );

  program
    .command('add')
    .description('add a local file or folder to the image (it joins every file set)')
    .argument('<image>')
    .argument('<source>', 'local file or folder')
    .option('--at <path>', 'folder inside the image to add it under', '.')
    .option('--replace', 'replace what already exists at that path')
    .addOption(json())
    .action((image: string, source: string, o: { at: string; replace?: boolean; json?: boolean }) =>
      runCommand('img', !!o.json, async () => {
        const { addToImage } = await import('../engine/explorer.ts');
        const r = await addToImage(image, source, { at: o.at, replace: !!o.replace });
        emit(
          !!o.json,
          r,
          () => `added ${r.path}: ${count(r.added, 'entry', 'entries')}, ${formatBytes(r.bytes)}`,
        );
      }),
    );

  program
    .command('rm')
    .description('remove files or folders from the image (run compact to reclaim the space)')
    .argument('<image>')
    .argument('<paths...>')
    .addOption(json())
    .action((image: string, paths: string[], o: { json?: boolean }) =>
      runCommand('img', !!o.json, async () => {
        const { removeFromImage } = await import('../engine/explorer.ts');
        const r = await removeFromImage(image, paths);
        emit(!!o.json, r, () => `removed ${count(r.removed, 'entry', 'entries')}`);
      }),
    );

  const fs = program
    .command('fileset')
    .description('file sets 1-10: variants of the image that leave things out');
  fs.command('list')
    .description('show every file set and what it excludes')
    .argument('<image>')
    .addOption(json())
    .action((image: string, o: { json?: boolean }) =>
      runCommand('img', !!o.json, async () => {
        await withReader(image, async (reader) => {
          const { listFilesets } = await import('../engine/explorer.ts');
          const sets = listFilesets(reader.manifest);
          emit(!!o.json, sets, () =>
            sets
              .map(
                (s) =>
                  `${String(s.number).padStart(2)}${s.isDefault ? ' (default)' : '          '}  ${
                    s.excludedEntries === 0
                      ? 'whole image'
                      : `excludes ${count(s.excludedEntries, 'entry', 'entries')}, ${formatBytes(s.bytes)}`
                  }${s.description ? `  ${s.description}` : ''}`,
              )
              .join('\n'),
          );
        });
      }),
    );
  for (const [verb, excluded] of [
    ['exclude', true],
    ['include', false],
  ] as const) {
    fs.command(verb)
      .description(
        excluded
          ? 'leave paths (and everything below them) out of file set N'
          : 'put excluded paths back into file set N',
      )
      .argument('<image>')
      .argument('<n>', 'file set 1-10', parseFileset)
      .argument('<paths...>')
      .addOption(json())
      .action((image: string, n: number, paths: string[], o: { json?: boolean }) =>
        runCommand('img', !!o.json, async () => {
          const { setExcluded } = await import('../engine/explorer.ts');
          const r = await setExcluded(image, n, paths, excluded);
          emit(
            !!o.json,
            r,
            () =>
              `file set ${n}: ${count(r.changed, 'entry', 'entries')} ${excluded ? 'excluded' : 'included'}`,
          );
        }),
      );
  }

  program
    .command('verify')
    .description(
      'check every chunk and structure of an image; names the volume, file and chunk of any damage',
    )
    .argument('<image>')
    .addOption(json())
    .action((image: string, o: { json?: boolean }) =>
      runCommand('img', !!o.json, async () => {
        const { verifyImage } = await import('../image/verify.ts');
        const report = await withProgress('verify', { json: !!o.json, bytes: false }, (update) =>
          verifyImage(image, { onProgress: update }),
        );
        emit(!!o.json, report, () => describeVerify(image, report));
        return report.ok ? 0 : 1;
      }),
    );

  program
    .command('compact')
    .description('rewrite the image without data that removed files left behind')
    .argument('<image>')
    .addOption(json())
    .action((image: string, o: { json?: boolean }) =>
      runCommand('img', !!o.json, async () => {
        const { compactImage } = await import('../image/compact.ts');
        const r = await withProgress('compact', { json: !!o.json, bytes: false }, (update) =>
          compactImage(image, { onProgress: update }),
        );
        emit(
          !!o.json,
          r,
          () =>
            `compacted ${image}: ${formatBytes(r.bytesBefore)} -> ${formatBytes(r.bytesAfter)}, ${count(r.chunksDropped, 'chunk')} dropped` +
            (r.chunksRepacked > 0
              ? `, ${count(r.chunksRepacked, 'mostly-unused pack')} re-packed into ${r.packsWritten}`
              : ''),
        );
      }),
    );

  program
    .command('repair')
    .description('cut off the unfinished tail of an interrupted edit, back to the last committed generation')
    .argument('<image>')
    .addOption(json())
    .action((image: string, o: { json?: boolean }) =>
      runCommand('img', !!o.json, async () => {
        const { repairImage } = await import('../image/repair.ts');
        const r = await repairImage(image);
        emit(!!o.json, r, () =>
          r.repaired
            ? `repaired ${image}: dropped ${formatBytes(r.bytesDropped)} of an interrupted edit; generation ${r.generation} is intact`
            : `${image} needed no repair (generation ${r.generation})`,
        );
      }),
    );

  addReceiveCommand(program);
  addSessionCommand(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildImgProgram();
  try {
    await program.parseAsync(argv);
  } catch (err) {
    const { reportError } = await import('./output.ts');
    process.exitCode = reportError('img', argv.includes('--json'), err);
  }
}

if (import.meta.main) await main(process.argv);
