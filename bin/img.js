#!/usr/bin/env node
// Thin launcher: the engine is TypeScript run through Node's type stripping.
import '../src/cli/img.ts';
