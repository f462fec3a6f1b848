/**
 * How messages say a count and an operating-system error, so that what a user reads is
 * a sentence ("1 chunk", "no space left on the device (ENOSPC)") and not Node's raw
 * "ENOSPC: no space left on device, write".
 */

/** `n` and the noun, singular for 1: "1 chunk", "3 chunks", "2 entries" (with `plural`). */
export function count(n: number, noun: string, plural = `${noun}s`): string {
  return `${n} ${n === 1 ? noun : plural}`;
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
 * suffix (the message around it names the path already).
 */
export function systemReason(err: unknown): string {
  const e = err as NodeJS.ErrnoException | undefined;
  const code = typeof e?.code === 'string' ? e.code : undefined;
  const known = code ? REASONS[code] : undefined;
  if (known) return `${known} (${code})`;
  const message = typeof e?.message === 'string' ? e.message : String(err);
  const m = /^[A-Z][A-Z0-9_]*: (.*?)(?:, [a-z_0-9]+(?: '.*')?)?$/s.exec(message);
  const text = m ? m[1]! : message;
  return code && !text.includes(code) ? `${text} (${code})` : text;
}
