/**
 * The image explorer over HTTP, for the console: what an image holds (img info), a folder's
 * entries with the file sets that leave each out (img ls), excluding and including paths in a
 * file set (img exclude / include), adding a file or a whole folder (img add), verify and
 * compact, on images of the image directory.
 *
 * Verify, compact and adds answer when they are over, with their result; meanwhile each is a
 * job in the status (jobs.ts), whose progress the live status stream carries to the console.
 *
 * Edits and compaction of one image run one at a time, and never while a waiting or sending
 * session uses it (E_IMAGE_IN_USE, as for removing it): a session reads the image it sends,
 * and compaction rewrites the file. Verify only reads, and runs at any time.
 */
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import type { IncomingMessage } from 'node:http';
import { dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Type } from 'typebox';

import {
  ErrorBody,
  Fileset,
  ImageFilesAdded,
  ImageCompacted,
  ImageDetails,
  ImageExclude,
  ImageTree,
  ImageVerifyReport,
} from '../api/schemas.ts';
import { addToImage, describeImage, listPath, setExcluded } from '../engine/explorer.ts';
import { compactImage } from '../image/compact.ts';
import { ImageReader } from '../image/reader.ts';
import { verifyImage } from '../image/verify.ts';
import type { ApiApp, AppContext } from './app.ts';
import { ServerError } from './errors.ts';
import { FILES_CONTENT_TYPE, receiveFiles } from './folder-upload.ts';

const errors = {
  400: ErrorBody,
  401: ErrorBody,
  403: ErrorBody,
  404: ErrorBody,
  409: ErrorBody,
  422: ErrorBody,
};
const ImagePath = Type.String({ minLength: 1, maxLength: 4096 });
/** The most added from the browser at once (a file, or a folder's files); more is for `img add` on the server. */
const MAX_ADDED_BYTES = 8 * 1024 ** 3;
/** Files in one folder added from the browser. */
const MAX_ADDED_FILES = 100_000;

/** The request's body as the stream its content type's parser handed on; any other type is refused. */
function streamOf(body: unknown, type: string): IncomingMessage {
  if (typeof (body as IncomingMessage | undefined)?.pipe !== 'function')
    throw new ServerError('E_UNSUPPORTED_MEDIA', `send the body as ${type}`);
  return body as IncomingMessage;
}

export async function imageRoutes(app: ApiApp, ctx: AppContext): Promise<void> {
  const admin = { access: 'admin' as const };
  const queue = new Map<string, Promise<unknown>>();

  /** One change of an image at a time, and none while a session uses it. */
  const change = async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
    const before = queue.get(name) ?? Promise.resolve();
    const run = before.then(() => {
      const user = ctx.sessions.imageInUse(name);
      if (user) {
        throw new ServerError(
          'E_IMAGE_IN_USE',
          `${name} is used by session ${user}, which waits or sends; change the image once it has finished, or stop it`,
          { session: user },
        );
      }
      return fn();
    });
    const settled = run.catch(() => {});
    queue.set(name, settled);
    void settled.then(() => {
      if (queue.get(name) === settled) queue.delete(name);
    });
    return run;
  };

  app.get(
    '/api/images/details',
    {
      config: admin,
      schema: { querystring: Type.Object({ path: ImagePath }), response: { 200: ImageDetails, ...errors } },
    },
    async (req) => {
      const { name, path } = await ctx.images.resolve(req.query.path);
      const reader = await ImageReader.open(path);
      try {
        const { path: _p, ...d } = describeImage(reader);
        return { name, ...d };
      } finally {
        await reader.close();
      }
    },
  );

  app.get(
    '/api/images/tree',
    {
      config: admin,
      schema: {
        querystring: Type.Object({
          path: ImagePath,
          dir: Type.Optional(Type.String({ maxLength: 4096 })),
          fileset: Type.Optional(Fileset),
        }),
        response: { 200: ImageTree, ...errors },
      },
    },
    async (req) => {
      const { path } = await ctx.images.resolve(req.query.path);
      const reader = await ImageReader.open(path);
      try {
        const dir = req.query.dir || '.';
        return { dir, entries: listPath(reader.manifest, dir, req.query.fileset) };
      } finally {
        await reader.close();
      }
    },
  );

  app.post(
    '/api/images/exclude',
    {
      config: admin,
      schema: {
        body: ImageExclude,
        response: { 200: Type.Object({ changed: Type.Integer() }), ...errors },
      },
    },
    async (req) => {
      const { name, path } = await ctx.images.resolve(req.body.path);
      return change(name, () => setExcluded(path, req.body.fileset, req.body.paths, req.body.excluded));
    },
  );

  app.post(
    '/api/images/verify',
    {
      config: admin,
      schema: {
        body: Type.Object({ path: ImagePath }, { additionalProperties: false }),
        response: { 200: ImageVerifyReport, ...errors },
      },
    },
    async (req) => {
      const { name, path } = await ctx.images.resolve(req.body.path);
      const {
        path: _p,
        imageId: _i,
        ...report
      } = await ctx.jobs.run('verify', name, 'chunks', (job) =>
        verifyImage(path, { onProgress: (done, total) => job.progress(done, total) }),
      );
      return { name, ...report };
    },
  );

  app.post(
    '/api/images/compact',
    {
      config: admin,
      schema: {
        body: Type.Object({ path: ImagePath }, { additionalProperties: false }),
        response: { 200: ImageCompacted, ...errors },
      },
    },
    async (req) => {
      const { name, path } = await ctx.images.resolve(req.body.path);
      const result = await change(name, () =>
        ctx.jobs.run('compact', name, 'chunks', (job) =>
          compactImage(path, { onProgress: (done, total) => job.progress(done, total) }),
        ),
      );
      return { name, ...result };
    },
  );

  /** `img add FILE --at AT`, listed as a job with its progress in bytes of `bytes`. */
  const addWithProgress = (
    name: string,
    path: string,
    source: string,
    bytes: number,
    at: string | undefined,
    replace: boolean | undefined,
  ) =>
    ctx.jobs.run('add', name, 'bytes', (job) => {
      job.progress(0, bytes);
      return addToImage(path, source, {
        at: at || '.',
        replace: replace === true,
        onProgress: (p) => job.progress(Math.min(p.bytes, bytes), bytes),
      });
    });

  // A file added from the browser: its body streams to a folder beside the image (the image
  // directory's own disk, hidden from the image list by its dot) under the name it is to have,
  // and is added from there as `img add FILE --at DIR` would, then removed.
  await app.register(async (scope: ApiApp) => {
    scope.addContentTypeParser('application/octet-stream', (_req, payload, done) => done(null, payload));
    scope.put(
      '/api/images/files',
      {
        config: admin,
        schema: {
          querystring: Type.Object({
            path: ImagePath,
            at: Type.Optional(Type.String({ maxLength: 4096 })),
            name: Type.String({ minLength: 1, maxLength: 255, pattern: '^(?!\\.\\.?$)[^/\\u0000]+$' }),
            replace: Type.Optional(Type.Boolean()),
          }),
          response: {
            200: Type.Object({ added: Type.Integer(), bytes: Type.Number(), path: Type.String() }),
            ...errors,
            413: ErrorBody,
          },
        },
      },
      async (req) => {
        const body = streamOf(req.body, 'application/octet-stream');
        const { name, path } = await ctx.images.resolve(req.query.path);
        const length = Number(req.headers['content-length'] ?? NaN);
        if (length > MAX_ADDED_BYTES) {
          throw new ServerError(
            'E_TOO_LARGE',
            `a file added from the console may have ${MAX_ADDED_BYTES} bytes at most; add bigger ones with img add on the server`,
          );
        }
        return change(name, async () => {
          const dir = await mkdtemp(join(dirname(path), '.add-'));
          try {
            const file = join(dir, req.query.name);
            let seen = 0;
            body.on('data', (b: Buffer) => {
              seen += b.length;
              if (seen > MAX_ADDED_BYTES)
                body.destroy(new ServerError('E_TOO_LARGE', 'the file is too large'));
            });
            await pipeline(body, createWriteStream(file, { flags: 'wx' }));
            return await addWithProgress(name, path, file, seen, req.query.at, req.query.replace);
          } finally {
            await rm(dir, { recursive: true, force: true });
          }
        });
      },
    );

    // A folder added from the browser: its files (folder-upload.ts says how they come, and
    // what keeps them inside it) are received into a private folder beside the image, then
    // added in one change of the image, as `img add FOLDER --at DIR` would.
    scope.addContentTypeParser(FILES_CONTENT_TYPE, (_req, payload, done) => done(null, payload));
    scope.post(
      '/api/images/folder',
      {
        config: admin,
        schema: {
          querystring: Type.Object({
            path: ImagePath,
            at: Type.Optional(Type.String({ maxLength: 4096 })),
            replace: Type.Optional(Type.Boolean()),
          }),
          response: { 200: ImageFilesAdded, ...errors, 413: ErrorBody },
        },
      },
      async (req) => {
        const body = streamOf(req.body, FILES_CONTENT_TYPE);
        const { name, path } = await ctx.images.resolve(req.query.path);
        const length = Number(req.headers['content-length'] ?? NaN);
        if (length > MAX_ADDED_BYTES + MAX_ADDED_FILES * 4096) {
          throw new ServerError(
            'E_TOO_LARGE',
            `a folder added from the console may have ${MAX_ADDED_BYTES} bytes at most; add bigger ones with img add on the server`,
          );
        }
        return change(name, async () => {
          // 0700: nobody else on the server can put a link in it while the files come.
          const dir = await mkdtemp(join(dirname(path), '.add-'));
          try {
            const got = await receiveFiles(body, dir, {
              maxBytes: MAX_ADDED_BYTES,
              maxFiles: MAX_ADDED_FILES,
            });
            const added = await addWithProgress(
              name,
              path,
              join(dir, got.top),
              got.bytes,
              req.query.at,
              req.query.replace,
            );
            return { ...added, files: got.files };
          } finally {
            await rm(dir, { recursive: true, force: true });
          }
        });
      },
    );
  });
}
