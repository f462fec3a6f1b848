#!/usr/bin/env node
// Thin launcher: the server and admin CLI are TypeScript run through Node's type stripping.
import '../src/cli/imgcast.ts';
