/**
 * npm run bench:server [-- --size 256M --rounds 3 --workstations 500 --seconds 30 --only overhead,load]
 *
 * overhead  A namespace lab (bench/multicast.ts's: MTU 1500, one server, 3 workstations). One
 *           image made by `img make` of a folder holding SIZE of random data. Each round sends it
 *           to the three workstations twice, in alternating order: a plain `imgcast send` with
 *           three `img receive`, and a session of a running `imgcast server` (`imgcast mcast
 *           -c 3`) with three `img session --server`. Each is timed from starting the workstation
 *           commands to the last one's exit, verified (every file compared by SHA-256). The
 *           session's own delay from its trigger to its first data comes from its status
 *           (startedAt → firstDataAt, 200 ms resolution). Needs root.
 * load      The server on loopback in its own process (bench/lib/load-server.ts: the real server,
 *           with a stand-in multicast send), and WORKSTATIONS simulated workstations in this
 *           process: each registers, joins one session, and then reports its progress every
 *           second for SECONDS (paced as `img session` paces its reports, src/client/report-pace.ts:
 *           each at its own point of the second), while an admin polls `GET /api/status` every
 *           second. Latency of every request (p50, p99, max), errors, and the server's peak RSS
 *           (VmHWM). The session they join is made first and not counted (the server's first
 *           request warms it up).
 * Writes BENCHMARKS.md between `<!-- bench:server -->` markers.
 */
import { execFileSync, spawn } from 'node:child_process';
import http from 'node:http';
import { createHash, randomFillSync } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { reportPace } from '../src/client/report-pace.ts';
import { NetLab } from '../test/helpers/netlab.ts';
import { machineLine, median, writeSection } from './report.ts';

const ROOT = resolve(import.meta.dirname, '..');
const { values: args } = parseArgs({
  options: {
    size: { type: 'string', default: '256M' },
    rounds: { type: 'string', default: '3' },
    workstations: { type: 'string', default: '500' },
    seconds: { type: 'string', default: '30' },
    only: { type: 'string', default: 'overhead,load' },
  },
});
const only = new Set(args.only.split(','));
const WORK = '/var/tmp/imgcast-bench/server';
const bytes = (s: string) =>
  Number(/^(\d+)/.exec(s)![1]) * ({ K: 1024, M: 1 << 20, G: 1 << 30 }[s.slice(-1)] ?? 1);

interface Done {
  code: number | null;
  stdout: string;
  stderr: string;
}

function finished(child: ReturnType<NetLab['exec']>): Promise<Done> {
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-8000)));
  return new Promise((res) => child.on('close', (code) => res({ code, stdout, stderr })));
}

function treeHash(dir: string): string {
  const h = createHash('sha256');
  const walk = (d: string, rel: string) => {
    for (const e of readdirSync(d, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p, `${rel}/${e.name}`);
      else {
        h.update(`${rel}/${e.name}\0`);
        h.update(readFileSync(p));
      }
    }
  };
  walk(dir, '');
  return h.digest('hex');
}

async function overhead(): Promise<string> {
  const size = bytes(args.size);
  const rounds = Number(args.rounds);
  rmSync(WORK, { recursive: true, force: true });
  const src = join(WORK, 'src');
  const data = join(WORK, 'data');
  mkdirSync(src, { recursive: true });
  mkdirSync(join(data, 'images'), { recursive: true });
  const buf = Buffer.alloc(16 << 20);
  const parts: Buffer[] = [];
  for (let done = 0; done < size; done += buf.length)
    parts.push(randomFillSync(Buffer.from(buf)).subarray(0, Math.min(buf.length, size - done)));
  writeFileSync(join(src, 'payload.bin'), Buffer.concat(parts));
  const image = join(data, 'images', 'bench.imgc');
  execFileSync('node', ['bin/img.js', 'make', src, image, '--level', 'none'], { cwd: ROOT, stdio: 'ignore' });
  const want = treeHash(src);

  const lab = NetLab.create(3);
  const apiPort = 47000 + Math.floor(Math.random() * 1000);
  const sendPort = 48000 + 2 * Math.floor(Math.random() * 400);
  const group = `239.77.${1 + Math.floor(Math.random() * 200)}.1`;
  const server = lab.exec(
    0,
    'node',
    [
      'bin/imgcast.js',
      'server',
      '--data',
      data,
      '--listen',
      `198.18.0.1:${apiPort}`,
      '--interface',
      '198.18.0.1',
      '--ports',
      `${sendPort + 100}-${sendPort + 119}`,
      '--groups',
      group,
      '--discovery',
      'off',
    ],
    { cwd: ROOT, env: { ...process.env, IMGCAST_LOG_LEVEL: 'warn' } },
  );
  const serverOut = finished(server);
  const admin = (...a: string[]) =>
    lab.runSync(0, 'env', [
      `IMGCAST_DATA=${data}`,
      'node',
      join(ROOT, 'bin/imgcast.js'),
      ...a,
      '-i',
      `198.18.0.1:${apiPort}`,
    ]);
  for (let i = 0; i < 50; i++) {
    try {
      admin('list');
      break;
    } catch {
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  const targets = [1, 2, 3].map((i) => join(WORK, `t${i}`));
  const clean = () => {
    for (const t of targets) {
      rmSync(t, { recursive: true, force: true });
      rmSync(`${t}.imgcast-journal`, { force: true });
    }
  };
  const verify = (what: string) => {
    for (const t of targets)
      if (treeHash(t) !== want) throw new Error(`${what}: ${t} differs from the source`);
  };
  const plain = async (): Promise<number> => {
    clean();
    process.stderr.write('plain send…\n');
    const t0 = performance.now();
    const sender = lab.exec(
      0,
      'node',
      [
        'bin/imgcast.js',
        'send',
        image,
        '--clients',
        '3',
        '--interface',
        '198.18.0.1',
        '--group',
        `239.77.250.${1 + (sendPort % 200)}`,
        '--port',
        String(sendPort),
      ],
      { cwd: ROOT },
    );
    // Listened to from the start: the sender may exit before the last receiver's exit is seen.
    const sent = finished(sender);
    const rx = [1, 2, 3].map((i) =>
      finished(
        lab.exec(
          i,
          'node',
          ['bin/img.js', 'receive', '--from', `198.18.0.1:${sendPort}`, '--to', targets[i - 1]!],
          { cwd: ROOT },
        ),
      ),
    );
    const results = await Promise.all(rx);
    const s = performance.now() - t0;
    for (const r of [...results, await sent])
      if (r.code !== 0) throw new Error(`plain send failed: ${r.stderr}`);
    verify('plain send');
    return s / 1000;
  };
  let n = 0;
  const firstData: number[] = [];
  const session = async (): Promise<number> => {
    clean();
    process.stderr.write('server session…\n');
    const name = `bench${++n}`;
    admin('mcast', name, '-p', 'bench.imgc', '-c', '3', '-t', '10');
    const t0 = performance.now();
    const wall0 = Date.now();
    const rx = [1, 2, 3].map((i) =>
      finished(
        lab.exec(
          i,
          'node',
          ['bin/img.js', 'session', name, '--server', `198.18.0.1:${apiPort}`, '--disk', targets[i - 1]!],
          { cwd: ROOT },
        ),
      ),
    );
    const results = await Promise.all(rx);
    const s = performance.now() - t0;
    for (const r of results) if (r.code !== 0) throw new Error(`session failed: ${r.stderr}`);
    verify('session');
    const view = JSON.parse(admin('session', 'show', name, '--json')) as {
      state: string;
      startedAt: number;
      firstDataAt: number;
      clients: Array<{ joinedAt: number; finishedAt: number }>;
    };
    const at = (t: number) => `${((t - wall0) / 1000).toFixed(2)} s`;
    process.stderr.write(
      `  joins at ${view.clients.map((c) => at(c.joinedAt)).join(', ')}; trigger ${at(view.startedAt)}; ` +
        `first data ${at(view.firstDataAt)}; results ${view.clients.map((c) => at(c.finishedAt)).join(', ')}\n`,
    );
    if (view.state !== 'done') throw new Error(`session ${name} ended ${view.state}`);
    firstData.push((view.firstDataAt - view.startedAt) / 1000);
    return s / 1000;
  };
  const rows: Array<{ plain: number; session: number }> = [];
  try {
    for (let r = 0; r < rounds; r++) {
      // Alternating order: neither kind always runs on a cache the other warmed.
      const row =
        r % 2 === 0
          ? { plain: await plain(), session: await session() }
          : { session: await session(), plain: await plain() };
      rows.push(row);
      process.stderr.write(
        `round ${r + 1}: plain ${row.plain.toFixed(2)} s, session ${row.session.toFixed(2)} s, first data ${firstData.at(-1)!.toFixed(2)} s after the trigger\n`,
      );
    }
  } finally {
    server.kill('SIGTERM');
    await serverOut;
    lab.destroy();
    clean();
  }
  const ratios = rows.map((r) => r.session / r.plain);
  return [
    `### Session overhead: ${args.size} image, 3 workstations, ${rounds} rounds`,
    '',
    '| round | plain imgcast send + 3 img receive | server session + 3 img session | ratio | trigger → first data |',
    '|---|---|---|---|---|',
    ...rows.map(
      (r, i) =>
        `| ${i + 1} | ${r.plain.toFixed(2)} s | ${r.session.toFixed(2)} s | ${(r.session / r.plain).toFixed(3)}× | ${firstData[i]!.toFixed(2)} s |`,
    ),
    '',
    `Median ratio **${median(ratios).toFixed(3)}×** (target ≤ 1.05×); trigger → first data at most **${Math.max(...firstData).toFixed(2)} s** (target ≤ 1 s).`,
  ].join('\n');
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

async function load(): Promise<string> {
  const count = Number(args.workstations);
  const seconds = Number(args.seconds);
  const dir = join(WORK, 'load');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(join(dir, 'images'), { recursive: true });
  // A tiny real image: the server refuses a session of a file that is no image (the load send never reads it).
  mkdirSync(join(dir, 'src'));
  writeFileSync(join(dir, 'src', 'hostname'), 'load\n');
  execFileSync('node', ['bin/img.js', 'make', join(dir, 'src'), join(dir, 'images', 'load.imgc')], {
    cwd: ROOT,
    stdio: 'ignore',
  });
  // The same V8 setting as bin/imgcast.js, which runs the real server.
  const child = spawn('node', ['--max-semi-space-size=8', join(ROOT, 'bench/lib/load-server.ts'), dir], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const info = await new Promise<{ url: string; token: string; pid: number }>((res, rej) => {
    child.stdout.setEncoding('utf8').once('data', (d: string) => res(JSON.parse(d) as never));
    child.once('exit', (code) => rej(new Error(`load server exited ${code}`)));
  });
  const lat: Record<string, number[]> = {
    setup: [],
    register: [],
    join: [],
    report: [],
    status: [],
    wait: [],
  };
  let errors = 0;
  // node:http with keep-alive rather than fetch: a workstation holds one connection, and fetch's own
  // cost per request on these two shared cores would be measured as the server's latency.
  const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });
  const url = new URL(info.url);
  const request = (method: string, path: string, token: string, body?: string) =>
    new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = http.request(
        {
          agent,
          host: url.hostname,
          port: url.port,
          method,
          path,
          headers: {
            authorization: `Bearer ${token}`,
            ...(body
              ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }
              : {}),
          },
        },
        (res) => {
          let text = '';
          res.setEncoding('utf8').on('data', (d: string) => (text += d));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
          res.on('error', reject);
        },
      );
      req.on('error', reject);
      req.end(body);
    });
  const call = async (kind: string, method: string, path: string, token: string, body?: unknown) => {
    const t0 = performance.now();
    try {
      const r = await request(method, path, token, body ? JSON.stringify(body) : undefined);
      if (r.status >= 400) {
        errors++;
        if (errors < 5) process.stderr.write(`${kind}: ${r.status} ${r.text}\n`);
      }
      lat[kind]!.push(performance.now() - t0);
      return r.text;
    } catch (err) {
      errors++;
      if (errors < 5) process.stderr.write(`${kind}: ${(err as Error).message}\n`);
      return '';
    }
  };
  // The session they join; made before the measured part (the server's first request warms it up).
  await call('setup', 'POST', '/api/sessions', info.token, {
    name: 'load',
    image: 'load.imgc',
    clientCount: count,
    waitSeconds: 3600,
  });
  const hex = (n: number) => n.toString(16).padStart(4, '0');
  // The lab boots over BOOT_SECONDS: each workstation registers, joins, then reports every second.
  const bootMs = 5000;
  const end = performance.now() + bootMs + seconds * 1000;
  const rssPeak = () => Number(/VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${info.pid}/status`, 'utf8'))![1]);
  const total = 64 << 30;
  const loops = Array.from({ length: count }, async (_, k) => {
    await new Promise((r) => setTimeout(r, (k * bootMs) / count));
    const text = await call('register', 'POST', '/api/workstations/register', '', {
      hostname: `pc${k}`,
      mac: `02:00:00:00:${hex(k).slice(0, 2)}:${hex(k).slice(2)}`,
      addresses: [`198.18.${k >> 8}.${k & 255}`],
      disks: [{ path: '/dev/sda', sizeBytes: 256e9, model: 'SSD' }],
      memoryBytes: 16e9,
      cpu: { model: 'bench', cores: 8 },
      dmi: { vendor: 'Bench', product: 'PC' },
    });
    const token = (JSON.parse(text || '{}') as { token: string }).token;
    let view = JSON.parse((await call('join', 'POST', '/api/sessions/load/join', token)) || '{}') as {
      version?: number;
      receiver?: unknown;
    };
    // As img session does: a long poll until the session sends (not timed: it waits on purpose).
    while (!view.receiver && view.version !== undefined && performance.now() < end) {
      view = JSON.parse(
        (await call('wait', 'GET', `/api/sessions/load/wait?since=${view.version}&timeoutMs=20000`, token)) ||
          '{}',
      ) as typeof view;
    }
    let bytes = 0;
    // Paced as img session paces its reports (each at its own point of the interval), once a second.
    const pace = reportPace(performance.now(), 1000);
    while (performance.now() < end) {
      if (pace.due(performance.now())) {
        bytes += 50 << 20;
        await call('report', 'POST', '/api/sessions/load/report', token, {
          run: 1,
          state: 'receiving',
          bytes,
          totalBytes: total,
        });
      }
      await new Promise((r) => setTimeout(r, Math.max(0, pace.nextAt - performance.now())));
    }
  });
  const poller = (async () => {
    while (performance.now() < end) {
      const next = performance.now() + 1000;
      await call('status', 'GET', '/api/status', info.token);
      await new Promise((r) => setTimeout(r, Math.max(0, next - performance.now())));
    }
  })();
  await Promise.all([...loops, poller]);
  const peakKiB = rssPeak();
  let tail = '';
  child.stdout.on('data', (d: string) => (tail += d));
  child.kill('SIGTERM');
  await new Promise((r) => child.once('close', r));
  const report = JSON.parse(tail.trim().split('\n').at(-1) ?? '{}') as {
    serverSide?: { count: number; p50: number; p99: number };
    loopDelayMs?: { p99: number; max: number };
  };
  const inServer = report.serverSide ?? { count: 0, p50: NaN, p99: NaN };
  const loop = report.loopDelayMs ?? { p99: NaN, max: NaN };
  const rows = Object.entries(lat)
    .filter(([kind]) => kind !== 'wait' && kind !== 'setup')
    .map(([kind, v]) => {
      const s = [...v].sort((a, b) => a - b);
      return `| ${kind} | ${s.length} | ${percentile(s, 50).toFixed(1)} ms | ${percentile(s, 99).toFixed(1)} ms | ${(s.at(-1) ?? NaN).toFixed(1)} ms |`;
    });
  const all = Object.entries(lat)
    .filter(([kind]) => kind !== 'wait' && kind !== 'setup')
    .flatMap(([, v]) => v)
    .sort((a, b) => a - b);
  return [
    `### Load: ${count} simulated workstations on loopback, reports every second for ${seconds} s, status polled every second`,
    '',
    '| request | count | p50 | p99 | max |',
    '|---|---|---|---|---|',
    ...rows,
    '',
    `All requests as the workstations saw them: p99 **${percentile(all, 99).toFixed(1)} ms** (target < 50 ms); errors **${errors}**; server peak RSS **${(peakKiB / 1024).toFixed(0)} MiB** (target < 200 MiB).`,
    `Inside the server (arrival to reply; long polls left out): p50 ${inServer.p50.toFixed(2)} ms, p99 ${inServer.p99.toFixed(2)} ms over ${inServer.count} requests; the server's event loop was late by ${loop.p99.toFixed(1)} ms at p99 (${loop.max.toFixed(1)} ms at most). The rest of the p99 above is the simulating process itself, which shares the two cores.`,
  ].join('\n');
}

const sections: string[] = [];
if (only.has('overhead')) sections.push(await overhead());
if (only.has('load')) sections.push(await load());
const body = [
  '## Imaging server (`bench/server.ts`)',
  '',
  `Command: \`npm run bench:server -- ${process.argv.slice(2).join(' ')}\`  `,
  `Date: ${new Date().toISOString()}  `,
  `Machine: ${machineLine()}`,
  '',
  ...sections.flatMap((s) => [s, '']),
].join('\n');
process.stdout.write(`${body}\n`);
writeSection(ROOT, 'server', body);
