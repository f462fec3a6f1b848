/**
 * Credentials. Administration needs the admin token (made on first start, kept in the data
 * directory readable by its owner only) or a login token from an admin account (scrypt-hashed
 * password, for the web console). A workstation gets its own token when it registers; with it,
 * it may join sessions, report and upload, nothing else. Tokens are stored only as hashes.
 */
import { createHash, randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import { chmod, open, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

const scryptAsync = promisify(scrypt) as (
  pw: string,
  salt: Buffer,
  len: number,
  o: object,
) => Promise<Buffer>;

export const ADMIN_TOKEN_FILE = 'admin-token';
const SCRYPT = { N: 16384, r: 8, p: 1, maxmem: 64 * 1024 * 1024 };

export function newToken(): string {
  return randomBytes(32).toString('base64url');
}

export function tokenHash(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

export function sameSecret(a: string, b: string): boolean {
  const x = Buffer.from(tokenHash(a), 'hex');
  const y = Buffer.from(tokenHash(b), 'hex');
  return timingSafeEqual(x, y);
}

/**
 * The admin token: read from DATA/admin-token, or made there (mode 0600) on first start. A
 * file others can read is narrowed back to its owner, since anyone holding it runs the server.
 */
export async function adminToken(
  dataDir: string,
): Promise<{ token: string; file: string; created: boolean }> {
  const file = join(dataDir, ADMIN_TOKEN_FILE);
  try {
    const token = (await readFile(file, 'utf8')).trim();
    if (token.length >= 16) {
      if (((await stat(file)).mode & 0o077) !== 0) await chmod(file, 0o600);
      return { token, file, created: false };
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const token = newToken();
  const fh = await open(file, 'w', 0o600);
  try {
    await fh.writeFile(`${token}\n`);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await chmod(file, 0o600);
  return { token, file, created: true };
}

export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const key = await scryptAsync(password, salt, 32, SCRYPT);
  return `scrypt$${SCRYPT.N}$${SCRYPT.r}$${SCRYPT.p}$${salt.toString('base64')}$${key.toString('base64')}`;
}

export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const parts = stored.split('$');
  if (parts.length !== 6 || parts[0] !== 'scrypt') return false;
  const [N, r, p] = parts.slice(1, 4).map(Number) as [number, number, number];
  const salt = Buffer.from(parts[4]!, 'base64');
  const want = Buffer.from(parts[5]!, 'base64');
  const got = await scryptAsync(password, salt, want.length, { N, r, p, maxmem: SCRYPT.maxmem });
  return got.length === want.length && timingSafeEqual(got, want);
}
