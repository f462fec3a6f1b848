import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';

const poolUrl = new URL('../src/image/pool.ts', import.meta.url).href;
const outUrl = new URL('../src/transport/datagram-out.ts', import.meta.url).href;

test('worker threads from files start in a process run as node --input-type=module -e, V8 flags and all', () => {
  // The compression pool's worker and a sending thread, each asked for a result.
  const script = `
    const { CompressPool } = await import(${JSON.stringify(poolUrl)});
    const { openDatagramOut } = await import(${JSON.stringify(outUrl)});
    const pool = new CompressPool(1);
    const r = await pool.compress(new SharedArrayBuffer(4096), 0, 4096, 'balanced', { hash: true });
    await pool.close();
    const out = await openDatagramOut({ interface: '127.0.0.1', ttl: 1, group: '239.255.77.43', port: 47743, maxDatagram: 1400 }, 1, () => {});
    await out.close();
    process.stdout.write(JSON.stringify({ storedLength: r.storedLength, id: r.id }));
  `;
  for (const flags of [['--input-type=module'], ['--max-semi-space-size=8', '--input-type', 'module']]) {
    const res = spawnSync(process.execPath, [...flags, '-e', script], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(res.status, 0, `${flags.join(' ')}: ${res.stderr}`);
    const r = JSON.parse(res.stdout) as { storedLength: number; id: string };
    assert.ok(r.storedLength > 0 && r.storedLength < 4096, res.stdout);
    // SHA-256 of 4096 zero bytes.
    assert.equal(r.id, 'ad7facb2586fc6e966c004d7d1d16b024f5805ff7cb47c7a85dabd8b48892ca7');
  }
});
