/**
 * What a restore target holds now, in the words an administrator needs before it is
 * overwritten: the partition table, each partition with its size, type, name and
 * filesystem label, and the signatures on the target itself (filesystems, RAID, LVM,
 * encryption, a leftover backup GPT). `img restore` refuses a target that holds any of
 * it without --force; a multicast receiver, which consented by joining, prints it.
 */
import { readdir, stat } from 'node:fs/promises';
import type { PartitionTableType } from '../image/types.ts';
import { count, systemReason } from '../wording.ts';
import { blkidProbe, deviceSize } from './device.ts';
import { DiskError } from './errors.ts';
import { runTool } from './exec.ts';
import { readPartitionTable } from './partition-table.ts';
import { partitionTypeName } from './partition-types.ts';

export interface ContentFilesystem {
  type: string;
  label?: string;
  uuid?: string;
}

export interface ContentPartition {
  number: number;
  startBytes: number;
  sizeBytes: number;
  /** The raw type (MBR byte as hex, GPT GUID) and its common name when it has one. */
  type: string;
  typeName?: string;
  /** GPT partition name. */
  name?: string;
  /** What blkid finds at the partition's start. */
  filesystem?: ContentFilesystem;
}

export interface ContentSignature {
  /** Byte offset on the target. */
  offset: number;
  /** wipefs/blkid type: ext4, vfat, swap, gpt, PMBR, dos, LVM2_member, crypto_LUKS, … */
  type: string;
  label?: string;
  uuid?: string;
}

export interface TargetContents {
  target: string;
  kind: 'device' | 'file' | 'directory' | 'missing';
  sizeBytes?: number;
  /** The partition table found, with the parser's complaint when it is damaged. */
  table?: { type: PartitionTableType; damaged?: string };
  partitions: ContentPartition[];
  /** Signatures on the target as a whole, and filesystems where partitions usually start. */
  signatures: ContentSignature[];
  /** A folder: how many entries it holds at its top. */
  entries?: number;
  /** Nothing would be lost by writing over it. */
  empty: boolean;
  /** One sentence naming all of the above, for refusals and for what a receiver prints. */
  summary: string;
}

function mib(n: number): string {
  if (n >= 1024 ** 3) return `${(n / 1024 ** 3).toFixed(1)} GiB`;
  return `${(n / (1024 * 1024)).toFixed(1)} MiB`;
}

/** Where a partition table that was lost usually had its first partition: a filesystem there is still data. */
const USUAL_STARTS = [63 * 512, 1024 * 1024];

async function probeAt(
  target: string,
  offset: number,
  size?: number,
): Promise<ContentFilesystem | undefined> {
  const p = await blkidProbe(target, { offset, ...(size !== undefined ? { size } : {}) }).catch(() => ({}));
  const info = p as Record<string, string | undefined>;
  if (!info.TYPE) return undefined;
  return {
    type: info.TYPE,
    ...(info.LABEL ? { label: info.LABEL } : {}),
    ...(info.UUID ? { uuid: info.UUID } : {}),
  };
}

/** Every signature libblkid finds on the target itself (wipefs -n lists them without erasing). */
async function wholeSignatures(target: string): Promise<ContentSignature[]> {
  const r = await runTool('wipefs', ['--no-act', '--json', target]);
  if (r.status !== 0) {
    throw new DiskError(
      'E_DISK_COMMAND',
      `cannot tell what ${target} holds: wipefs --no-act: ${(r.stderr || r.stdout).trim()}`,
      { target },
    );
  }
  if (!r.stdout.trim()) return [];
  const parsed = JSON.parse(r.stdout) as {
    signatures?: Array<{ offset: string; type: string; label: string | null; uuid: string | null }>;
  };
  return (parsed.signatures ?? []).map((s) => ({
    offset: Number.parseInt(s.offset, 16),
    type: s.type,
    ...(s.label ? { label: s.label } : {}),
    ...(s.uuid ? { uuid: s.uuid } : {}),
  }));
}

/**
 * What `target` (a disk device, disk-image file, partition or folder) holds now.
 * Reads only; a missing target is reported as such, not as an error.
 */
export async function describeTargetContents(target: string): Promise<TargetContents> {
  const st = await stat(target).catch((err: unknown) => {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new DiskError(
      'E_DISK_IO',
      `cannot access ${target}: ${systemReason(err)}`,
      { target },
      { cause: err },
    );
  });
  if (!st) return finish({ target, kind: 'missing', partitions: [], signatures: [] });
  if (st.isDirectory()) {
    const entries = (await readdir(target)).filter((n) => n !== 'lost+found').length;
    return finish({ target, kind: 'directory', partitions: [], signatures: [], entries });
  }
  const kind = st.isBlockDevice() ? 'device' : 'file';
  const sizeBytes = await deviceSize(target);
  const c: Omit<TargetContents, 'empty' | 'summary'> = {
    target,
    kind,
    sizeBytes,
    partitions: [],
    signatures: await wholeSignatures(target),
  };
  try {
    const table = await readPartitionTable(target);
    c.table = { type: table.table };
    for (const p of table.partitions) {
      const typeName = partitionTypeName(table.table, p.type);
      const filesystem = p.extended ? undefined : await probeAt(target, p.startBytes, p.sizeBytes);
      c.partitions.push({
        number: p.number,
        startBytes: p.startBytes,
        sizeBytes: p.sizeBytes,
        type: p.type,
        ...(typeName ? { typeName } : {}),
        ...(p.name ? { name: p.name } : {}),
        ...(filesystem ? { filesystem } : {}),
      });
    }
  } catch (err) {
    if (!(err instanceof DiskError)) throw err;
    if (err.code === 'E_DISK_TABLE_CORRUPT') {
      const pt = c.signatures.find((s) => ['gpt', 'PMBR', 'dos'].includes(s.type));
      c.table = { type: pt?.type === 'dos' ? 'mbr' : 'gpt', damaged: err.message };
    } else if (err.code !== 'E_DISK_NO_TABLE') throw err;
  }
  if (!c.table) {
    // No table (or one that was wiped): a filesystem where a first partition usually starts is still someone's data.
    for (const offset of USUAL_STARTS) {
      if (offset >= sizeBytes || c.signatures.some((s) => s.offset === offset)) continue;
      const fs = await probeAt(target, offset, sizeBytes - offset);
      if (fs) c.signatures.push({ offset, ...fs });
    }
  }
  return finish(c);
}

function finish(c: Omit<TargetContents, 'empty' | 'summary'>): TargetContents {
  const empty =
    c.kind === 'directory'
      ? (c.entries ?? 0) === 0
      : !c.table && c.partitions.length === 0 && c.signatures.length === 0;
  return { ...c, empty, summary: summarize(c, empty) };
}

/** The wipefs types that are the signatures of each kind of partition table. */
const TABLE_SIGNATURES: Record<PartitionTableType, string[]> = { gpt: ['gpt', 'PMBR'], mbr: ['dos'] };

function describeFs(fs: ContentFilesystem): string {
  return `${fs.type}${fs.label ? ` "${fs.label}"` : ''}`;
}

function summarize(c: Omit<TargetContents, 'empty' | 'summary'>, empty: boolean): string {
  if (c.kind === 'missing') return `${c.target} does not exist`;
  if (c.kind === 'directory') {
    return empty
      ? `folder ${c.target} is empty`
      : `folder ${c.target} holds ${count(c.entries ?? 0, 'entry', 'entries')}`;
  }
  const what = `${c.kind === 'device' ? 'device' : 'file'} ${c.target} (${mib(c.sizeBytes ?? 0)})`;
  if (empty) return `${what} holds no partition table and no filesystem signature`;
  const parts: string[] = [];
  if (c.table) {
    const name = c.table.type === 'gpt' ? 'a GPT' : 'an MBR';
    if (c.table.damaged) parts.push(`${name} partition table that is damaged (${c.table.damaged})`);
    else if (c.partitions.length === 0) parts.push(`${name} partition table with no partitions`);
    else {
      const list = c.partitions.map((p) => {
        const bits = [mib(p.sizeBytes), p.typeName ?? `type ${p.type}`];
        if (p.name) bits.push(`named "${p.name}"`);
        bits.push(p.filesystem ? describeFs(p.filesystem) : 'no filesystem found');
        return `${p.number}: ${bits.join(', ')}`;
      });
      parts.push(
        `${name} partition table with ${count(c.partitions.length, 'partition')} (${list.join('; ')})`,
      );
    }
  }
  // The table's own signatures are the table above; anything else (a GPT left under an MBR, say) is named with where it is.
  const own = c.table ? TABLE_SIGNATURES[c.table.type] : [];
  const others = c.signatures.filter((s) => !own.includes(s.type));
  if (others.length > 0) {
    const list = others.map((s) => `${describeFs(s)} at byte ${s.offset}`);
    parts.push(`signature${others.length === 1 ? '' : 's'}: ${list.join(', ')}`);
  }
  return `${what} holds ${parts.join('; ')}`;
}
