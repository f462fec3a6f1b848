/**
 * One side of discovery as a process of its own, for tests that put the server and the
 * workstation in different network namespaces (netlab hosts):
 *
 *   node discovery-peer.ts respond GROUP PORT NAME [INTERFACE]
 *     answers with api http://<address on the requester's subnet>:7740; prints "ready" once
 *     listening, then runs until killed; its log goes to stderr
 *   node discovery-peer.ts discover GROUP PORT TIMEOUT_MS [INTERFACE]
 *     prints the server found, or {"error": CODE, "message": …}, as one JSON line
 */
import { discoverServer } from '../../src/client/discover.ts';
import { startDiscoveryResponder } from '../../src/server/discovery.ts';
import { isImgcastError } from '../../src/errors.ts';

const [mode, group = '', port = '', arg = '', iface] = process.argv.slice(2);

if (mode === 'respond') {
  await startDiscoveryResponder({
    group,
    port: Number(port),
    ...(iface ? { interface: iface } : {}),
    log: (line) => process.stderr.write(`${line}\n`),
    answer: (_from, local) => (local ? { api: `http://${local}:7740`, name: arg } : undefined),
  });
  process.stdout.write('ready\n');
} else if (mode === 'discover') {
  try {
    const found = await discoverServer({
      group,
      port: Number(port),
      timeoutMs: Number(arg),
      ...(iface ? { interface: iface } : {}),
    });
    process.stdout.write(`${JSON.stringify(found)}\n`);
  } catch (err) {
    if (!isImgcastError(err)) throw err;
    process.stdout.write(`${JSON.stringify(err.toJSON())}\n`);
  }
} else {
  process.stderr.write('usage: discovery-peer.ts respond|discover GROUP PORT NAME|TIMEOUT_MS [INTERFACE]\n');
  process.exit(2);
}
