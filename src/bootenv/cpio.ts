/**
 * The initramfs archive: the "newc" cpio format the kernel unpacks into its root (see the
 * kernel's Documentation/driver-api/early-userspace/buffer-format.rst). Written here rather than
 * by the cpio tool, which Debian does not install by default, and because the archive also needs
 * a /dev/console node that an unprivileged file tree cannot hold.
 *
 * Each entry: a 110-byte ASCII header ("070701" and 13 eight-digit hex fields), the name with
 * its NUL, padding to 4 bytes, the data, padding to 4 bytes. The archive ends with TRAILER!!!.
 */
import { createReadStream } from 'node:fs';
import type { Writable } from 'node:stream';

export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
export const S_IFCHR = 0o020000;

export type CpioEntry =
  | { kind: 'dir'; name: string; mode: number }
  | { kind: 'file'; name: string; mode: number; size: number; source: string | Buffer }
  | { kind: 'symlink'; name: string; target: string }
  | { kind: 'char'; name: string; mode: number; major: number; minor: number };

const hex8 = (n: number) => {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new RangeError(`cpio field out of range: ${n}`);
  return n.toString(16).padStart(8, '0');
};

/** The header and name of one entry, padded so its data starts on a 4-byte boundary. */
export function newcHeader(o: {
  ino: number;
  mode: number;
  nlink: number;
  mtime: number;
  size: number;
  rdevMajor?: number;
  rdevMinor?: number;
  name: string;
}): Buffer {
  const name = Buffer.from(`${o.name}\0`);
  const fields = [
    o.ino,
    o.mode,
    0, // uid: root
    0, // gid: root
    o.nlink,
    o.mtime,
    o.size,
    0, // devmajor
    0, // devminor
    o.rdevMajor ?? 0,
    o.rdevMinor ?? 0,
    name.length,
    0, // check: unused by newc
  ];
  const head = Buffer.from(`070701${fields.map(hex8).join('')}`, 'ascii');
  return Buffer.concat([head, name, Buffer.alloc(pad4(head.length + name.length))]);
}

const pad4 = (n: number) => (4 - (n % 4)) % 4;

/**
 * Writes entries to `out` in order (a directory must come before what is in it). Names are
 * relative to the archive's root, without a leading slash. Resolves once the trailer is written;
 * the stream is left open for the caller to end.
 */
export class CpioWriter {
  readonly #out: Writable;
  #ino = 1;
  #bytes = 0;
  readonly #mtime: number;

  /** `mtime`: one time for every entry, so the same inputs make the same archive. */
  constructor(out: Writable, mtime = 0) {
    this.#out = out;
    this.#mtime = mtime;
  }

  /** Bytes written so far (uncompressed). */
  get bytes(): number {
    return this.#bytes;
  }

  async add(e: CpioEntry): Promise<void> {
    const base = { ino: this.#ino++, mtime: this.#mtime, name: e.name };
    switch (e.kind) {
      case 'dir':
        return this.#write(newcHeader({ ...base, mode: S_IFDIR | e.mode, nlink: 2, size: 0 }));
      case 'char':
        return this.#write(
          newcHeader({
            ...base,
            mode: S_IFCHR | e.mode,
            nlink: 1,
            size: 0,
            rdevMajor: e.major,
            rdevMinor: e.minor,
          }),
        );
      case 'symlink': {
        const target = Buffer.from(e.target);
        await this.#write(newcHeader({ ...base, mode: S_IFLNK | 0o777, nlink: 1, size: target.length }));
        return this.#write(Buffer.concat([target, Buffer.alloc(pad4(target.length))]));
      }
      case 'file': {
        await this.#write(newcHeader({ ...base, mode: S_IFREG | e.mode, nlink: 1, size: e.size }));
        let written = 0;
        if (Buffer.isBuffer(e.source)) {
          await this.#write(e.source);
          written = e.source.length;
        } else {
          for await (const chunk of createReadStream(e.source)) {
            await this.#write(chunk as Buffer);
            written += (chunk as Buffer).length;
          }
        }
        if (written !== e.size)
          throw new Error(
            `${e.name}: ${written} bytes read where ${e.size} were announced (changed meanwhile?)`,
          );
        return this.#write(Buffer.alloc(pad4(written)));
      }
    }
  }

  /** The end-of-archive entry. */
  async finish(): Promise<void> {
    await this.#write(newcHeader({ ino: 0, mode: 0, nlink: 1, mtime: 0, size: 0, name: 'TRAILER!!!' }));
  }

  #write(buf: Buffer): Promise<void> {
    if (buf.length === 0) return Promise.resolve();
    this.#bytes += buf.length;
    if (this.#out.write(buf)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const done = (err?: Error) => {
        this.#out.off('drain', done);
        this.#out.off('error', done);
        if (err) reject(err);
        else resolve();
      };
      this.#out.on('drain', done);
      this.#out.on('error', done);
    });
  }
}
