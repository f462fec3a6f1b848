/**
 * The image store: image files (*.imgc) under one directory. Every path the API is given
 * is resolved (symlinks too) and must land inside that directory; images are named by their
 * path relative to it.
 */
import { lstat, mkdir, readdir, realpath, rm, stat } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';

import { ImageReader } from '../image/index.ts';
import type { Image } from '../api/schemas.ts';
import { ServerError } from './errors.ts';

export const IMAGE_SUFFIX = '.imgc';
/** list() looks this many folders deep. */
const MAX_DEPTH = 8;
/** Leaves room in a 255-byte file name for the temporary names an upload gives the file. */
const MAX_NAME_BYTES = 200;

export class ImageStore {
  readonly dir: string;
  #real = '';

  private constructor(dir: string) {
    this.dir = dir;
  }

  static async open(dir: string): Promise<ImageStore> {
    const store = new ImageStore(resolve(dir));
    await mkdir(store.dir, { recursive: true });
    store.#real = await realpath(store.dir);
    return store;
  }

  /**
   * The image a user named, as { name (relative to the store), path }: an absolute path, or one
   * relative to the image directory. Anything resolving outside the directory is refused, as is
   * a name that does not exist or is not a regular file.
   */
  async resolve(given: string): Promise<{ name: string; path: string }> {
    if (given.includes('\0')) throw new ServerError('E_BAD_REQUEST', 'the image path contains a NUL byte');
    const full = isAbsolute(given) ? resolve(given) : resolve(this.dir, given);
    const outside = () =>
      new ServerError('E_IMAGE_OUTSIDE', `${given} is outside the image directory ${this.dir}`, {
        path: given,
        imageDir: this.dir,
      });
    if (!this.#inside(full, this.dir) && !this.#inside(full, this.#real)) throw outside();
    let real: string;
    try {
      real = await realpath(full);
    } catch {
      throw new ServerError('E_IMAGE_UNKNOWN', `no image ${given} in ${this.dir}`, { path: given });
    }
    if (!this.#inside(real, this.#real)) throw outside();
    const s = await stat(real);
    if (!s.isFile())
      throw new ServerError('E_IMAGE_UNKNOWN', `${given} is not an image file`, { path: given });
    return { name: relative(this.#real, real), path: real };
  }

  /**
   * Where a new image named `given` goes (relative to the image directory, or an absolute
   * path inside it; `.imgc` appended when missing), its folders made. Refused: a place
   * outside the directory (symlinks too), a name the listing would hide (a part starting
   * with a dot), and a name that exists already (E_IMAGE_EXISTS).
   */
  async place(given: string): Promise<{ name: string; path: string }> {
    if (given.includes('\0')) throw new ServerError('E_BAD_REQUEST', 'the image name contains a NUL byte');
    const named = given.endsWith(IMAGE_SUFFIX) ? given : `${given}${IMAGE_SUFFIX}`;
    const full = isAbsolute(named) ? resolve(named) : resolve(this.dir, named);
    const outside = () =>
      new ServerError('E_IMAGE_OUTSIDE', `${given} is outside the image directory ${this.dir}`, {
        path: given,
        imageDir: this.dir,
      });
    const base = this.#inside(full, this.dir) ? this.dir : this.#inside(full, this.#real) ? this.#real : null;
    if (base === null) throw outside();
    const parts = relative(base, full).split(sep);
    const bad = parts.find((p) => p.startsWith('.') || Buffer.byteLength(p) > MAX_NAME_BYTES);
    if (bad !== undefined || parts.length - 1 > MAX_DEPTH) {
      throw new ServerError(
        'E_BAD_REQUEST',
        bad === undefined
          ? `${given} is more than ${MAX_DEPTH} folders deep`
          : bad.startsWith('.')
            ? `${given}: a name starting with a dot would be hidden from the image list`
            : `${given}: "${bad}" is longer than ${MAX_NAME_BYTES} bytes`,
        { path: given },
      );
    }
    // The nearest folder that exists decides where the new ones land: a symlink may lead outside.
    let existing = dirname(full);
    while (!(await lstat(existing).catch(() => null))) existing = dirname(existing);
    const insideReal = async (dir: string) => {
      const real = await realpath(dir).catch(() => null);
      return real !== null && (real === this.#real || this.#inside(real, this.#real));
    };
    if (!(await insideReal(existing))) throw outside();
    try {
      await mkdir(dirname(full), { recursive: true });
    } catch (err) {
      throw new ServerError(
        'E_BAD_REQUEST',
        `cannot make the folder for ${given}: ${(err as Error).message}`,
        {
          path: given,
        },
      );
    }
    const parent = await realpath(dirname(full));
    if (parent !== this.#real && !this.#inside(parent, this.#real)) throw outside();
    const path = join(parent, basename(full));
    if (await lstat(path).catch(() => null)) {
      throw new ServerError('E_IMAGE_EXISTS', `${relative(this.#real, path)} already exists on the server`, {
        path: relative(this.#real, path),
      });
    }
    return { name: relative(this.#real, path), path };
  }

  #inside(path: string, dir: string): boolean {
    const rel = relative(dir, path);
    return rel !== '' && !rel.startsWith('..') && !isAbsolute(rel) && !rel.split(sep).includes('..');
  }

  async list(): Promise<Image[]> {
    const out: Image[] = [];
    const walk = async (dir: string, depth: number): Promise<void> => {
      const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
      for (const e of entries) {
        if (e.name.startsWith('.')) continue;
        const full = join(dir, e.name);
        if (e.isDirectory() && depth < MAX_DEPTH) await walk(full, depth + 1);
        else if (e.isFile() && e.name.endsWith(IMAGE_SUFFIX)) out.push(await this.describe(full));
      }
    };
    await walk(this.#real, 0);
    return out.sort((a, b) => a.name.localeCompare(b.name));
  }

  async info(given: string): Promise<Image> {
    return this.describe((await this.resolve(given)).path);
  }

  /** What the file is; an unreadable one is listed with its problem rather than hidden. */
  async describe(path: string): Promise<Image> {
    const s = await stat(path);
    const base: Image = {
      name: relative(this.#real, path),
      sizeBytes: s.size,
      modifiedAt: Math.round(s.mtimeMs),
      imageId: null,
      source: null,
      volumes: null,
      rawBytes: null,
      problem: null,
    };
    let reader: ImageReader | undefined;
    try {
      reader = await ImageReader.open(path);
      const m = reader.manifest;
      base.imageId = m.imageId;
      base.source = `${m.source.kind} ${m.source.path}${m.source.hostname ? ` on ${m.source.hostname}` : ''}`;
      base.volumes = m.volumes.length;
      base.rawBytes = m.disk?.sizeBytes ?? null;
    } catch (err) {
      base.problem = err instanceof Error ? err.message : String(err);
    } finally {
      await reader?.close().catch(() => {});
    }
    return base;
  }

  async remove(given: string): Promise<string> {
    const { name, path } = await this.resolve(given);
    await rm(path);
    return name;
  }
}
