/**
 * The image explorer over HTTP, for the console: what an image holds (img info), a folder's
 * entries with the file sets that leave each out (img ls), excluding and including paths in a
 * file set (img exclude / include), verify and compact, on images of the image directory.
 *
 * Edits and compaction of one image run one at a time, and never while a waiting or sending
 * session uses it (E_IMAGE_IN_USE, as for removing it): a session reads the image it sends,
 * and compaction rewrites the file. Verify only reads, and runs at any time.
 */
import { Type } from 'typebox';

import {
  ErrorBody,
  Fileset,
  ImageCompacted,
  ImageDetails,
  ImageExclude,
  ImageTree,
  ImageVerifyReport,
} from '../api/schemas.ts';
import { describeImage, listPath, setExcluded } from '../engine/explorer.ts';
import { compactImage } from '../image/compact.ts';
import { ImageReader } from '../image/reader.ts';
import { verifyImage } from '../image/verify.ts';
import type { ApiApp, AppContext } from './app.ts';
import { ServerError } from './errors.ts';

const errors = {
  400: ErrorBody,
  401: ErrorBody,
  403: ErrorBody,
  404: ErrorBody,
  409: ErrorBody,
  422: ErrorBody,
};
const ImagePath = Type.String({ minLength: 1, maxLength: 4096 });

export function imageRoutes(app: ApiApp, ctx: AppContext): void {
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
      const { path: _p, imageId: _i, ...report } = await verifyImage(path);
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
      return { name, ...(await change(name, () => compactImage(path))) };
    },
  );
}
