#!/usr/bin/env -S node --max-semi-space-size=8
// Thin launcher: the engine is TypeScript run through Node's type stripping (Node >= 24).
// The compile cache keeps the stripped sources on disk, so later runs skip loading the
// type stripper: about 30 MiB less memory and 0.15 s less start-up per command.
// A smaller young generation than V8's default (which grows to 3 x 16 MiB): a capture's
// or restore's heap is mostly long-lived file entries, so the larger nursery only added
// ~40-90 MiB of peak memory, for no measurable speed (see BENCHMARKS.md).
import * as nodeModule from 'node:module';
import process from 'node:process';

// Started with an older system Node (./bin/... instead of npx or npm start): say so plainly
// rather than fail on TypeScript syntax.
if (Number(process.versions.node.split('.')[0]) < 24) {
  process.stderr.write(
    `imgcast needs Node.js 24 or newer; this is ${process.version}. Run it through npm ` +
      '(npx img ..., npx imgcast ..., npm start), which uses the Node that npm ci installed.\n',
  );
  process.exit(2);
}
nodeModule.enableCompileCache?.();
const { main } = await import('../src/cli/imgcast.ts');
await main(process.argv);
