/**
 * A lab network-booted from the imaging server, as an administrator sets it up, shared by the
 * end-to-end test (pxe.test.ts) and `npm run bench:pxe`: a LAN namespace (lan.ts) whose only
 * DHCP server is `imgcast server --pxe --pxe-mode dhcp` (the isolated-lab mode), the imaging
 * environment of `imgcast bootenv build` (test/bootenv/cached.ts), and QEMU workstations with
 * blank disks set to boot from the network first, which reboot as real machines do.
 *
 * Every admin step is the bin script with the arguments an administrator types, run inside the
 * namespace; the server's decisions come from its API with the admin token of its data folder.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, open, truncate } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import type { BootDecision } from '../../src/api/schemas.ts';
import { hasCommand } from '../helpers/env.ts';
import { bootenvUnavailable } from '../bootenv/cached.ts';
import { Lan, lanUnavailable, type Vm } from './lan.ts';
import type { Firmware } from './qemu.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const IMG = join(ROOT, 'bin/img.js');
const IMGCAST = join(ROOT, 'bin/imgcast.js');

export interface Done {
  code: number | null;
  out: string;
  err: string;
}

export function collect(child: ChildProcess): Promise<Done> {
  let out = '';
  let err = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (err += d));
  return new Promise((res) => child.on('close', (code) => res({ code, out, err })));
}

/** Why a network-booted lab cannot run here, or undefined (the reference disk is checked apart). */
export function pxeLabUnavailable(): string | undefined {
  if (!hasCommand('dnsmasq')) return 'needs dnsmasq (apt-get install dnsmasq-base)';
  return lanUnavailable() ?? bootenvUnavailable();
}

/** `img make DISK IMAGES/NAME`, as on the administrator's machine; the image's path. */
export async function makeImage(disk: string, images: string, name: string): Promise<string> {
  await mkdir(images, { recursive: true });
  const image = join(images, name);
  const r = await collect(spawn(process.execPath, [IMG, 'make', disk, image, '--json'], { cwd: ROOT }));
  assert.equal(r.code, 0, `img make ${disk} failed:\n${r.err}`);
  return image;
}

export interface Workstation {
  name: string;
  firmware: Firmware;
  mac: string;
  diskBytes: number;
  memoryMiB?: number;
}

export class PxeLab {
  readonly lan: Lan;
  readonly dir: string;
  readonly address: string;
  readonly port: number;
  readonly data: string;
  /** The MAC prefix of this lab's workstations (the rules match on it). */
  readonly macPrefix: string;
  readonly #server: ChildProcess;
  #serverLog = '';

  private constructor(lan: Lan, dir: string, o: { images: string; bootenv: string }) {
    this.lan = lan;
    this.dir = dir;
    this.address = lan.address(1);
    this.port = 20_000 + Math.floor(Math.random() * 20_000);
    this.data = join(dir, 'data');
    this.macPrefix = `52:54:00:${lan.subnet.toString(16).padStart(2, '0')}`;
    this.#server = lan.exec(process.execPath, [
      IMGCAST,
      'server',
      '--data',
      this.data,
      '--images',
      o.images,
      '--listen',
      `${this.address}:${this.port}`,
      '--interface',
      this.address,
      '--ports',
      `${this.port + 10}-${this.port + 29}`,
      '--groups',
      `239.77.${lan.subnet}.1`,
      '--discovery',
      'off',
      '--pxe',
      '--pxe-mode',
      'dhcp',
      '--pxe-range',
      `${lan.address(100)},${lan.address(199)}`,
      '--pxe-interface',
      lan.bridge,
      '--bootenv',
      o.bootenv,
    ]);
    const keep = (d: Buffer) => (this.#serverLog = (this.#serverLog + d.toString()).slice(-60_000));
    this.#server.stdout!.on('data', keep);
    this.#server.stderr!.on('data', keep);
    this.serverEnded = new Promise<never>((_, reject) =>
      this.#server.once('exit', (code, signal) =>
        reject(
          new Error(`the server ended (${signal ?? `exit ${code}`}):\n${this.serverLog().slice(-6000)}`),
        ),
      ),
    );
    // Only raced against: an ending nobody waits for is no unhandled rejection.
    this.serverEnded.catch(() => {});
  }

  /** Rejects when the server process ends, with its last log lines: race a wait against it. */
  readonly serverEnded: Promise<never>;

  /** Whether the server sends IPv6 router advertisements (radvd), read from its startup lines. */
  routerAdvertisements = false;

  /** A new LAN with the server up and answering; close() takes it all down. */
  static async start(o: { dir: string; images: string; bootenv: string }): Promise<PxeLab> {
    const lan = Lan.create({ subnet: 30 + Math.floor(Math.random() * 200) });
    const lab = new PxeLab(lan, o.dir, o);
    try {
      for (let i = 0; ; i++) {
        const r = await lab.#run(['session', 'list']);
        // The API comes up first; network boots are answered once dnsmasq (and radvd) started.
        if (r.code === 0 && /answering network boots/.test(lab.serverLog())) {
          lab.routerAdvertisements = /router advertisements that configure nothing/.test(lab.serverLog());
          break;
        }
        if (i > 150 || lab.#server.exitCode !== null)
          throw new Error(`the server did not come up:\n${lab.serverLog()}`);
        await sleep(200);
      }
    } catch (err) {
      lab.close();
      throw err;
    }
    return lab;
  }

  #run(args: string[]): Promise<Done> {
    return collect(
      this.lan.exec(process.execPath, [
        IMGCAST,
        ...args,
        '-i',
        `${this.address}:${this.port}`,
        '--data',
        this.data,
      ]),
    );
  }

  /** An admin command with --json, which must succeed; its document. */
  async imgcast<T>(...args: string[]): Promise<T> {
    const r = await this.#run([...args, '--json']);
    assert.equal(r.code, 0, `imgcast ${args.join(' ')} failed (exit ${r.code}):\n${r.err}${r.out}`);
    return JSON.parse(r.out) as T;
  }

  /**
   * The automatic session `lab1` with IMAGE for `clients` workstations, named lab1-{nn}, taking
   * the MACs that start with `macPrefix`.
   */
  async labSession(image: string, clients: number, macPrefix: string): Promise<void> {
    await this.imgcast(
      'session',
      'add',
      'lab1',
      '--image',
      image,
      '-c',
      String(clients),
      '--names',
      'lab1-{nn}',
    );
    await this.imgcast('session', 'rule', 'add', 'lab1', `mac = ${macPrefix}`);
  }

  /** The server's answers to network boots, oldest first. */
  async decisions(): Promise<BootDecision[]> {
    const script =
      'const [u, f] = process.argv.slice(1);' +
      "const token = require('node:fs').readFileSync(f, 'utf8').trim();" +
      'fetch(u, { headers: { authorization: `Bearer ${token}` } }).then(async (r) => {' +
      '  const body = await r.text(); if (!r.ok) { console.error(r.status, body); process.exit(1); }' +
      '  process.stdout.write(body); });';
    const r = await collect(
      this.lan.exec(process.execPath, [
        '--input-type=commonjs',
        '-e',
        script,
        `http://${this.address}:${this.port}/api/boot/decisions?limit=1000`,
        join(this.data, 'admin-token'),
      ]),
    );
    assert.equal(r.code, 0, `GET /api/boot/decisions: ${r.err}`);
    return (JSON.parse(r.out) as BootDecision[]).sort((a, b) => a.at - b.at);
  }

  /** User and system CPU seconds of the server process so far. */
  serverCpuSeconds(): number {
    const fields = readFileSync(`/proc/${this.#server.pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    // utime and stime: fields 14 and 15 of stat(5), here counted after the command's name.
    return (Number(fields[11]) + Number(fields[12])) / 100;
  }

  serverLog(): string {
    return this.#serverLog;
  }

  /**
   * Powers on a workstation with a blank disk, network first; it reboots as a real one does.
   * With `cdrom`, that ISO (the imaging environment's boot medium) boots first.
   */
  async powerOn(w: Workstation, media?: { cdrom: string }): Promise<Vm> {
    const disk = join(this.dir, `${w.name}.img`);
    await (await open(disk, 'w')).close();
    await truncate(disk, w.diskBytes);
    return this.lan.startVm({
      name: w.name,
      firmware: w.firmware,
      mac: w.mac,
      disk,
      boot: 'network',
      cdrom: media?.cdrom,
      noReboot: false,
      memoryMiB: w.memoryMiB ?? 768,
      logFile: join(this.dir, `${w.name}-console.log`),
    });
  }

  close(): void {
    this.lan.close();
  }
}
