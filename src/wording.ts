/**
 * How messages say a count, an article and an operating-system error, so that what a user reads is
 * a sentence ("1 chunk", "no space left on the device (ENOSPC)") and not Node's raw
 * "ENOSPC: no space left on device, write".
 */
import { ImgcastError } from './errors.ts';

/** `n` and the noun, singular for 1: "1 chunk", "3 chunks", "2 entries" (with `plural`). */
export function count(n: number, noun: string, plural = `${noun}s`): string {
  return `${n} ${n === 1 ? noun : plural}`;
}

/**
 * Names said letter by letter whose first letter sounds like a vowel ("en-tee-eff-ess"): they
 * take "an" although they are written with a consonant. Filesystem and table types as blkid
 * and wipefs name them.
 */
const SPELLED_WITH_VOWEL_SOUND = /^(?:f2fs|hfs|hpfs|lvm|mbr|mdraid|nfs|ntfs|nilfs|rbd|sgi|xfs)/i;
/** Names starting with "u" that sound like "you" ("a UDF filesystem"). */
const U_AS_YOU = /^(?:udf|ufs|uuid|usb|utf)/i;

/** The indefinite article for `word`: "an ext4", "an NTFS", "a vfat", "a btrfs", "a UDF". */
export function article(word: string): 'a' | 'an' {
  if (/^[aeio]/i.test(word) || SPELLED_WITH_VOWEL_SOUND.test(word)) return 'an';
  if (/^u/i.test(word)) return U_AS_YOU.test(word) ? 'a' : 'an';
  return 'a';
}

/** `word` after its indefinite article: withArticle('ext4') is "an ext4". */
export function withArticle(word: string): string {
  return `${article(word)} ${word}`;
}

const REASONS: Record<string, string> = {
  ENOENT: 'no such file or directory',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EEXIST: 'it already exists',
  EISDIR: 'it is a directory',
  ENOTDIR: 'a part of the path is not a directory',
  ENOTEMPTY: 'the directory is not empty',
  ENOSPC: 'no space left on the device',
  EDQUOT: 'the disk quota is used up',
  EFBIG: 'the file is too large for this filesystem',
  EROFS: 'the filesystem is read-only',
  EIO: 'input/output error (the device may be failing)',
  EBUSY: 'it is busy (mounted or in use)',
  ENAMETOOLONG: 'the name is too long',
  ELOOP: 'too many levels of symbolic links',
  EMFILE: 'too many open files',
  ENFILE: 'too many open files in the system',
  EXDEV: 'it is on another filesystem',
  ENOTSUP: 'the filesystem does not support this',
  EOPNOTSUPP: 'the filesystem does not support this',
  ENXIO: 'no such device',
  ENODEV: 'no such device',
};

/**
 * Why a system call failed, as a sentence with the error code after it. Codes not listed
 * keep libuv's own description, without Node's "CODE: " prefix and ", syscall 'path'"
 * suffix (the message around it names the path already). An imgcast error is a sentence
 * already: its message, without its E_ code.
 */
export function systemReason(err: unknown): string {
  if (err instanceof ImgcastError) return err.message;
  const e = err as NodeJS.ErrnoException | undefined;
  const code = typeof e?.code === 'string' ? e.code : undefined;
  const known = code ? REASONS[code] : undefined;
  if (known) return `${known} (${code})`;
  const message = typeof e?.message === 'string' ? e.message : String(err);
  const m = /^[A-Z][A-Z0-9_]*: (.*?)(?:, [a-z_0-9]+(?: '.*')?)?$/s.exec(message);
  const text = m ? m[1]! : message;
  return code && !text.includes(code) ? `${text} (${code})` : text;
}
