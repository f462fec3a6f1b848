#!/usr/bin/env node
// Thin launcher: the engine is TypeScript run through Node's type stripping (Node >= 24).
import process from 'node:process';
import { main } from '../src/cli/img.ts';

await main(process.argv);
