/** Human-readable renderings of command results (the --json output is the structured form). */
import type { ListedEntry, describeImage } from '../engine/explorer.ts';
import type { PostImagingResult } from '../engine/identity/apply.ts';
import type { VerifyReport } from '../image/verify.ts';
import { partitionTypeName } from '../disk/partition-types.ts';
import type { PartitionTableType } from '../image/types.ts';
import { displayName } from '../volume/files/names.ts';
import { count } from '../wording.ts';
import { formatBytes } from './output.ts';

const TYPE_CHAR: Record<string, string> = {
  dir: 'd',
  file: '-',
  symlink: 'l',
  chardev: 'c',
  blockdev: 'b',
  fifo: 'p',
  socket: 's',
  volume: 'V',
};

/**
 * The permission column as `ls -l` writes it: setuid, setgid and sticky take the place of
 * the owner's, group's and others' x, lower case (s, t) where that x is set as well and
 * upper case (S, T) where it is not, so a special bit is never hidden behind a plain x.
 */
function modeString(mode: number | undefined): string {
  if (mode === undefined) return '---------';
  const out: string[] = [];
  for (let i = 0; i < 9; i++) out.push(mode & (1 << (8 - i)) ? 'rwxrwxrwx'[i]! : '-');
  for (const [bit, at, letter] of [
    [0o4000, 2, 's'],
    [0o2000, 5, 's'],
    [0o1000, 8, 't'],
  ] as const) {
    if (mode & bit) out[at] = out[at] === 'x' ? letter : letter.toUpperCase();
  }
  return out.join('');
}

export function describeListing(rows: ListedEntry[]): string {
  return rows
    .map((r) => {
      if (r.type === 'volume') {
        return `V ${r.name.padEnd(6)} ${r.filesystem ?? ''}${r.label ? ` "${r.label}"` : ''}  ${formatBytes(r.size)}`;
      }
      const sets = r.excludedFrom.length ? `  [excluded from ${r.excludedFrom.join(',')}]` : '';
      const link = r.linkTarget !== undefined ? ` -> ${displayName(r.linkTarget)}` : '';
      return `${TYPE_CHAR[r.type] ?? '?'}${modeString(r.mode)} ${String(r.uid).padStart(5)} ${String(r.gid).padStart(5)} ${String(r.size).padStart(12)} ${r.mtime?.slice(0, 19).replace('T', ' ')} ${displayName(r.name)}${link}${sets}`;
    })
    .join('\n');
}

export function describeInfo(info: ReturnType<typeof describeImage>): string {
  const lines = [
    `image:       ${info.path}`,
    `id:          ${info.imageId} (format ${info.formatVersion}, generation ${info.generation})`,
    `created:     ${info.createdAt} from ${info.source.kind} ${info.source.path}${info.source.hostname ? ` on ${info.source.hostname}` : ''}`,
    `compression: ${info.level}`,
    `size:        ${formatBytes(info.fileBytes)} on disk; ${count(info.chunks, 'chunk')}, ${formatBytes(info.chunkRawBytes)} of data stored as ${formatBytes(info.chunkStoredBytes)}`,
  ];
  if (info.disk) {
    lines.push(
      `disk:        ${formatBytes(info.disk.sizeBytes)}, ${info.disk.table.toUpperCase()} partition table`,
    );
    for (const p of info.disk.partitions) {
      lines.push(
        `  partition ${p.number}: start ${p.startBytes}, ${formatBytes(p.sizeBytes)}, type ${describeType(info.disk.table, p.type)}${p.name ? ` "${p.name}"` : ''}`,
      );
    }
    const { smallestDiskBytes: fits, keepSizesDiskBytes: kept } = info.disk;
    lines.push(
      `fits on:     a disk of ${fits} bytes (${formatBytes(fits)}) or more (file set 1)` +
        (kept !== fits ? `; ${kept} bytes (${formatBytes(kept)}) with --keep-sizes` : ''),
    );
  }
  lines.push('volumes:');
  for (const v of info.volumes) {
    if (v.kind === 'files') {
      lines.push(
        `  ${v.name}: ${v.filesystem}${v.label ? ` "${v.label}"` : ''}${v.uuid ? ` ${v.uuid}` : ''}, ${count(v.entries, 'entry', 'entries')}, ${formatBytes(v.bytes)}`,
      );
    } else {
      lines.push(
        `  ${v.name}: raw${v.detectedType ? ` (${v.detectedType})` : ''}, ${formatBytes(v.sizeBytes ?? 0)} partition, ${formatBytes(v.bytes)} non-zero data` +
          (v.unused
            ? `; ${formatBytes(v.unused.bytes)} unused by the filesystem left out (${v.unused.tool})`
            : ''),
      );
    }
  }
  const sets = info.filesets.filter((s) => s.excludedEntries > 0);
  lines.push(
    `file sets:   ${sets.length ? sets.map((s) => `${s.number} (excludes ${count(s.excludedEntries, 'entry', 'entries')})`).join(', ') : 'all 10 are the whole image'}`,
  );
  return lines.join('\n');
}

function describeType(table: PartitionTableType, type: string): string {
  const name = partitionTypeName(table, type);
  return name ? `${name} (${table === 'mbr' ? `0x${type}` : type})` : table === 'mbr' ? `0x${type}` : type;
}

export function describeVerify(image: string, report: VerifyReport): string {
  if (report.ok) {
    return `${image}: OK — ${count(report.chunksChecked, 'chunk')} (${formatBytes(report.bytesChecked)}) match their hashes; structure intact`;
  }
  const lines = [`${image}: DAMAGED — ${count(report.problems.length, 'problem')}:`];
  for (const p of report.problems) lines.push(`  [${p.code}] ${p.message}`);
  return lines.join('\n');
}

/** What identity and post-imaging scripts did to a restored system, as `img restore` and `img session` say it. */
export function describePostImaging(r: PostImagingResult): string {
  const lines: string[] = [];
  const id = r.identity;
  if (id) {
    const systems = id.volumes
      .filter((v) => v.role !== 'efi')
      .map((v) => `${v.volume}: ${v.system ?? v.role}`)
      .join(', ');
    lines.push(
      `identity: ${id.name ?? "the image's host name kept"}${systems ? ` (${systems})` : ''}`,
      ...(id.machineId ? [`  machine-id ${id.machineId}`] : []),
      ...id.sshHostKeys.map((k) => `  SSH host key ${k.type.padEnd(7)} ${k.fingerprint} (${k.bits} bits)`),
      ...(id.windows
        ? [
            `  Windows computer name ${id.windows.computerName ?? 'not set'}${id.windows.answerFiles.length ? ` in ${id.windows.answerFiles.join(', ')}` : ''}`,
          ]
        : []),
      ...id.notes.map((n) => `  note: ${n}`),
    );
  } else {
    lines.push(...r.notes.map((n) => `note: ${n}`));
  }
  for (const s of r.scripts) {
    lines.push(`post-imaging script ${s.name}: done in ${(s.durationMs / 1000).toFixed(1)} s`);
  }
  return lines.join('\n');
}
