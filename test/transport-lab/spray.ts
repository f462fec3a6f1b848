/**
 * Hostile host for the lab tests (run inside its own namespace, not a test file):
 * learns the session nonce by listening to the group like any host on the LAN can,
 * then sprays the data port with junk and forgeries and opens junk control
 * connections, until SIGTERM. Prints `SPRAYED {json}` with what it sent.
 *
 *   node spray.ts '{"group":"239.x.y.z","dataPort":N,"controlHost":"a.b.c.d","controlPort":M,"iface":"a.b.c.d"}'
 */
import { randomBytes, randomInt } from 'node:crypto';
import dgram from 'node:dgram';
import net from 'node:net';

interface Args {
  group: string;
  dataPort: number;
  controlHost: string;
  controlPort: number;
  iface: string;
  /** Cap on right-nonce random-payload forgeries (default 300): see the note at burst(). */
  forgeLimit?: number;
}
const a = JSON.parse(process.argv[2] ?? '{}') as Args;
const HEADER = 28;
const FRAG = 1444;
const sent = { random: 0, truncated: 0, wrongNonce: 0, wrongPayload: 0, wrongLength: 0, control: 0 };

const listen = dgram.createSocket({ type: 'udp4', reuseAddr: true });
const tx = dgram.createSocket('udp4');
let sample: Buffer | null = null;
listen.on('message', (m) => {
  if (!sample && m.length > HEADER && m.readUInt16BE(0) === 0x4943) sample = Buffer.from(m);
});
listen.bind(a.dataPort, () => listen.addMembership(a.group, a.iface));
tx.bind(0, a.iface, () => tx.setMulticastInterface(a.iface));

function send(b: Buffer): void {
  tx.send(b, a.dataPort, a.group);
}

function forgeFrom(real: Buffer): Buffer {
  const b = Buffer.from(real);
  // A forger does not know the real serials: pick plausible ones near the sample's.
  b.writeUInt32BE(real.readUInt32BE(24) + randomInt(0, 5000), 24);
  return b;
}

let stop = false;
/** Control connections under way (not yet connected or refused). */
let controlPending = 0;
/*
 * Right-nonce, right-length forgeries are capped: each one that lands before the real
 * fragment poisons that chunk (its hash fails, the receiver drops and re-requests it),
 * so an unlimited stream of them aimed at the chunks in flight starves the session
 * (seen in this lab: chunks kept failing their hash at ~10 000 forgeries/s and the 128 MiB transfer did not finish in 2 minutes). That is a
 * liveness limit of unauthenticated data packets, reported to the transport's author;
 * this sprayer checks integrity and counting, so it stops forging payloads after the cap.
 */
const forgeLimit = a.forgeLimit ?? 300;
function burst(): void {
  if (stop) return;
  for (let k = 0; k < 5; k++) {
    send(randomBytes(randomInt(1, 1473)));
    sent.random++;
    send(randomBytes(randomInt(0, HEADER)));
    sent.truncated++;
    if (!sample) continue;
    const s = sample as Buffer;
    const seqs = randomInt(0, 64);
    // Valid-looking header, other nonce.
    const wn = forgeFrom(s);
    randomBytes(8).copy(wn, 4);
    send(wn);
    sent.wrongNonce++;
    // Right nonce, fragment of a real chunk at the right length, random payload: only the chunk hash can tell.
    if (sent.wrongPayload >= forgeLimit || randomInt(0, 20) !== 0) continue;
    const wp = forgeFrom(s);
    wp.writeUInt32BE(s.readUInt32BE(12) + seqs, 12);
    randomBytes(wp.length - HEADER).copy(wp, HEADER);
    send(wp);
    sent.wrongPayload++;
  }
  for (let k = 0; sample && k < 5; k++) {
    const s = sample as Buffer;
    // Right nonce, impossible length for that fragment.
    const wl = Buffer.concat([forgeFrom(s).subarray(0, HEADER), randomBytes(randomInt(1, FRAG))]);
    wl.writeUInt16BE(s.readUInt16BE(18), 18);
    wl.writeUInt16BE(0, 16);
    send(wl);
    sent.wrongLength++;
  }
  // Counted once connected: the sender opens its control port only after it has read (and, for
  // a plain file, hashed) its source, and this sprayer often starts first. Attempts refused
  // before that are tried again, so the junk reaches the sender whenever its port opens.
  if (sent.control + controlPending < 40 && randomInt(0, 4) === 0) {
    controlPending++;
    const c = net.connect({ host: a.controlHost, port: a.controlPort, localAddress: a.iface });
    c.on('error', () => {});
    c.on('close', () => controlPending--);
    c.on('connect', () => {
      sent.control++;
      c.write(randomBytes(randomInt(1, 4096)));
      c.end(randomBytes(16));
    });
  }
  setTimeout(burst, 5);
}
burst();
process.on('SIGTERM', () => {
  stop = true;
  process.stdout.write(`SPRAYED ${JSON.stringify({ ...sent, learnedNonce: sample !== null })}\n`);
  listen.close();
  tx.close();
});
