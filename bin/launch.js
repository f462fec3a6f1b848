// Shared by the launchers (bin/img.js, bin/imgcast.js). Plain JavaScript on purpose: it must
// run on any Node, to tell a user on an older one what to do instead of failing on TypeScript.
// The compile cache keeps the stripped sources on disk, so later runs skip loading the type
// stripper: about 30 MiB less memory and 0.15 s less start-up per command.
import * as nodeModule from 'node:module';
import process from 'node:process';
import { URL, fileURLToPath } from 'node:url';

/** Runs `main(argv)` of the TypeScript CLI module at `entry` (a URL) as command `name`. */
export async function launch(name, entry) {
  // Started with an older system Node (./bin/... instead of npx or npm start): say so plainly.
  if (Number(process.versions.node.split('.')[0]) < 24) {
    // Installed with npm link (or npm install --global from the checkout), the command runs on
    // the first node on PATH: say where the checkout's own Node 24 is.
    const bin = fileURLToPath(new URL('../node_modules/.bin', import.meta.url));
    process.stderr.write(
      `${name} needs Node.js 24 or newer; this is ${process.version}. In the imgcast checkout, run it ` +
        'through npm (npx img ..., npx imgcast ..., npm start), which uses the Node that npm ci installed; ' +
        `elsewhere, put that Node first on PATH (export PATH=${bin}:$PATH) or install Node.js 24.\n`,
    );
    process.exit(2);
  }
  nodeModule.enableCompileCache?.();
  // Enabled here, the cache serves this thread only: worker threads (the compression pool's,
  // the sending and receiving threads) read its folder from the environment. Without it each
  // of them loads the type stripper again (measured: a pool worker's first result in ~55 ms
  // instead of ~30 ms).
  const cacheDir = nodeModule.getCompileCacheDir?.();
  if (cacheDir) process.env.NODE_COMPILE_CACHE ??= cacheDir;
  const { main } = await import(entry);
  await main(process.argv);
}
