#!/usr/bin/env node
// Thin launcher: the server and admin CLI are TypeScript run through Node's type stripping (Node >= 24).
import process from 'node:process';
import { main } from '../src/cli/imgcast.ts';

await main(process.argv);
