#!/usr/bin/env -S node --max-semi-space-size=8
// Thin launcher: the engine is TypeScript run through Node's type stripping (Node >= 24).
// A smaller young generation than V8's default (which grows to 3 x 16 MiB): a capture's
// or restore's heap is mostly long-lived file entries, so the larger nursery only added
// ~40-90 MiB of peak memory, for no measurable speed (see BENCHMARKS.md).
import { URL } from 'node:url';
import { launch } from './launch.js';

await launch('imgcast', new URL('../src/cli/imgcast.ts', import.meta.url).href);
