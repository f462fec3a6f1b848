/**
 * Network boot over the API's HTTP port: iPXE (from the NIC, or chained by TFTP from the PXE
 * firmware, see pxe.ts) loads /boot/boot.ipxe, which asks /boot/decide what this MAC does; the
 * answer is an iPXE script that boots the imaging environment (/boot/vmlinuz, /boot/initrd.img
 * from the bootenv directory) or the local disk.
 *
 * These routes are public (firmware has no token) and read-only, and take nothing but a MAC,
 * a platform and an architecture, checked strictly. Every URL in a script names the address
 * the workstation reached this server on, so it works on whichever interface the lab is.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';

import type { FastifyReply, FastifyRequest } from 'fastify';
import { Type } from 'typebox';

import { LOCALBOOT_FILE } from '../bootenv/localboot.ts';
import { ImgcastError } from '../errors.ts';
import type { ApiApp, AppContext } from './app.ts';
import { KERNEL_ARGS } from './pxe.ts';

export interface BootRouteOptions {
  /** Where `imgcast bootenv build` wrote vmlinuz, initrd.img and bootenv.json. */
  bootenvDir: string;
  /** Kernel arguments added after the server's own (imgcast.done=poweroff for tests, …). */
  kernelArgs?: string;
}

export const BOOT_FILES = ['vmlinuz', 'initrd.img'] as const;
/** Served like BOOT_FILES, but optional: the environment may be built without it. */
const OPTIONAL_BOOT_FILES = [LOCALBOOT_FILE] as const;

const DecideQuery = Type.Object(
  {
    mac: Type.String({ pattern: '^[0-9a-fA-F]{2}(?:[:-][0-9a-fA-F]{2}){5}$' }),
    platform: Type.Union([Type.Literal('pcbios'), Type.Literal('efi')]),
    buildarch: Type.Optional(Type.String({ pattern: '^[a-z0-9_]{1,16}$' })),
  },
  { additionalProperties: false },
);

/** Text for an iPXE `echo`: no `${` expansion, no `#` comment, no `&&`/`||` operators. */
export function ipxeText(text: string): string {
  return text
    .replace(/[^A-Za-z0-9 .,:;()/_=+@'"%*?!<>[\]-]/g, ' ')
    .replace(/\s+/g, ' ')
    .trim()
    .slice(0, 400);
}

/** The script every network boot starts with: it asks the server what this MAC does. */
export function entryScript(base: string): string {
  // iPXE takes "&&" and "||" as operators only as whole words: a single "&" inside the URL is
  // part of it.
  return [
    '#!ipxe',
    `echo imgcast: network boot from ${base}`,
    `chain ${base}/boot/decide?mac=\${net0/mac}&platform=\${platform}&buildarch=\${buildarch} || goto failed`,
    'exit',
    ':failed',
    'echo imgcast: the imaging server did not answer; back to the next boot device',
    'exit',
    '',
  ].join('\n');
}

/** Boots the imaging environment from `base`. */
export function imageScript(base: string, why: string, kernelArgs = ''): string {
  const args = `initrd=initrd.img console=ttyS0 console=tty0 imgcast.server=${base} imgcast.boot=network${kernelArgs ? ` ${kernelArgs}` : ''}`;
  return [
    '#!ipxe',
    `echo imgcast: imaging: ${ipxeText(why)}`,
    `kernel ${base}/boot/vmlinuz ${args}`,
    `initrd ${base}/boot/initrd.img`,
    'boot',
    '',
  ].join('\n');
}

/**
 * Boots the local disk: BIOS by its first hard disk; UEFI through localboot.efi (when the
 * environment has it: src/bootenv/localboot.ts), which starts a local disk's loader whatever the
 * firmware's boot entries, else (or when it finds none) by returning to the firmware's next boot
 * option.
 */
export function localScript(platform: 'pcbios' | 'efi', why: string, localBoot?: string): string {
  return [
    '#!ipxe',
    `echo imgcast: booting the local disk: ${ipxeText(why)}`,
    ...(platform === 'pcbios'
      ? ['sanboot --no-describe --drive 0x80 || echo imgcast: no local disk to boot']
      : localBoot
        ? [`chain ${localBoot} || echo imgcast: no loader found on a local disk`]
        : []),
    'exit',
    '',
  ].join('\n');
}

/** The server's address as this request reached it, as a URL base. */
function baseUrl(req: FastifyRequest): string {
  let host = req.socket.localAddress ?? '127.0.0.1';
  if (host.startsWith('::ffff:')) host = host.slice(7);
  if (host.includes(':')) host = `[${host}]`;
  return `http://${host}:${req.socket.localPort}`;
}

async function present(dir: string): Promise<boolean> {
  for (const f of BOOT_FILES) {
    const s = await stat(join(dir, f)).catch(() => null);
    if (!s?.isFile()) return false;
  }
  return true;
}

function ipxe(reply: FastifyReply, script: string): string {
  void reply.header('content-type', 'text/plain; charset=utf-8').header('cache-control', 'no-store');
  return script;
}

export function bootRoutesWith(o: BootRouteOptions) {
  if (o.kernelArgs !== undefined && o.kernelArgs !== '' && !KERNEL_ARGS.test(o.kernelArgs))
    throw new ImgcastError(
      'E_USAGE',
      `kernel arguments must be plain words: ${JSON.stringify(o.kernelArgs)}`,
    );
  return async function bootRoutes(app: ApiApp, ctx: AppContext): Promise<void> {
    const pub = { access: 'public' as const };
    let warned = false;
    const ready = async () => {
      const ok = await present(o.bootenvDir);
      if (!ok && !warned) {
        ctx.log.error(
          { bootenv: o.bootenvDir },
          'the imaging environment is not built: run imgcast bootenv build (network boots go to the local disk meanwhile)',
        );
      }
      warned = !ok;
      return ok;
    };

    app.get('/boot/boot.ipxe', { config: pub, schema: { hide: true } }, async (req, reply) => {
      // Once per network boot: worth a line, and the first sign of a workstation booting.
      ctx.log.info({ from: req.ip, at: baseUrl(req) }, 'network boot: boot.ipxe');
      return ipxe(reply, entryScript(baseUrl(req)));
    });

    app.get(
      '/boot/decide',
      { config: pub, schema: { hide: true, querystring: DecideQuery } },
      async (req, reply) => {
        const ip = req.ip.startsWith('::ffff:') ? req.ip.slice(7) : req.ip;
        const d = await ctx.netboot.decide(req.query.mac, req.query.platform, ip, await ready());
        return ipxe(
          reply,
          d.action === 'image'
            ? imageScript(baseUrl(req), d.why, o.kernelArgs)
            : localScript(
                req.query.platform,
                d.why,
                (await stat(join(o.bootenvDir, LOCALBOOT_FILE)).catch(() => null))?.isFile()
                  ? `${baseUrl(req)}/boot/${LOCALBOOT_FILE}`
                  : undefined,
              ),
        );
      },
    );

    for (const file of [...BOOT_FILES, ...OPTIONAL_BOOT_FILES]) {
      app.get(`/boot/${file}`, { config: pub, schema: { hide: true } }, async (_req, reply) => {
        const path = join(o.bootenvDir, file);
        const s = await stat(path).catch(() => null);
        if (!s?.isFile()) {
          ctx.log.error(
            { file: path },
            'a network boot asked for a file of the imaging environment, which is not built',
          );
          return reply.status(404).send({
            error: 'E_BOOTENV_MISSING',
            message: `the imaging environment is not built (no ${path}): run imgcast bootenv build`,
          });
        }
        void reply
          .header('content-type', 'application/octet-stream')
          .header('content-length', String(s.size));
        return reply.send(createReadStream(path));
      });
    }
  };
}
