import js from '@eslint/js';
import tseslint from 'typescript-eslint';

/**
 * Layers: a lower part never imports an upper one. The transport knows nothing of images,
 * disks, the engine or the CLI (the glue that turns an image into a send and a receive into a
 * restore lives in src/engine/multicast.ts and src/cli/transfer.ts); the image format knows
 * nothing above it; disks and volumes may name the engine's types but not call it; only the
 * CLI sits above the engine. The imaging server and the workstation client never import each
 * other; what they share (the discovery contract) is in src/api, which imports neither.
 * src/bootenv builds the environment workstations boot; the CLI runs it and the server serves it.
 */
const layer = (files, groups, typesFrom = []) => ({
  files,
  rules: {
    '@typescript-eslint/no-restricted-imports': [
      'error',
      {
        patterns: [
          ...groups.map((group) => ({ group: [group], message: LAYER_MESSAGE })),
          ...typesFrom.map((group) => ({ group: [group], allowTypeImports: true, message: LAYER_MESSAGE })),
        ],
      },
    ],
  },
});
const LAYER_MESSAGE = 'a lower layer must not import an upper one (see eslint.config.js)';

export default tseslint.config(
  { ignores: ['node_modules/**', 'coverage/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-constant-condition': ['error', { checkLoops: false }],
      // A worker started from a string (new Worker(source, { eval: true })) is code neither tsc nor
      // this linter reads: its constants are pasted in and its messages go unchecked.
      'no-restricted-syntax': [
        'error',
        {
          selector: "Property:matches([key.name='eval'], [key.value='eval'])[value.value=true]",
          message:
            'Worker code lives in real files the type checker and linter read, never in strings: ' +
            "start it with new Worker(new URL('./x-worker.ts', import.meta.url)).",
        },
      ],
    },
  },
  // The web console: plain ES modules the browser runs as they are (src/server/console.ts serves them).
  {
    files: ['src/console/**/*.js'],
    languageOptions: {
      sourceType: 'module',
      globals: Object.fromEntries(
        [
          'window',
          'document',
          'location',
          'sessionStorage',
          'fetch',
          'AbortController',
          'TextDecoderStream',
          'XMLHttpRequest',
          'Blob',
          'setTimeout',
          'clearTimeout',
          'setInterval',
          'clearInterval',
          'addEventListener',
          'removeEventListener',
          'confirm',
          'console',
        ].map((name) => [name, 'readonly']),
      ),
    },
  },
  layer(
    ['src/transport/**'],
    [
      '**/engine/*',
      '**/cli/*',
      '**/image/*',
      '**/disk/*',
      '**/volume/**',
      '**/server/*',
      '**/client/*',
      '**/api/*',
    ],
  ),
  layer(['src/image/**'], ['**/engine/*', '**/cli/*', '**/transport/*', '**/disk/*', '**/volume/**']),
  layer(['src/disk/**', 'src/volume/**'], ['**/cli/*', '**/transport/*'], ['**/engine/*']),
  layer(['src/engine/**'], ['**/cli/*', '**/server/*', '**/client/*', '**/api/*']),
  // The server and the workstation client meet only in src/api (the contract between them).
  layer(['src/server/**'], ['**/cli/*', '**/client/*']),
  layer(['src/client/**'], ['**/cli/*', '**/server/*']),
  // The imaging environment's build: below the CLI, beside the server (which serves what it built).
  layer(['src/bootenv/**'], ['**/cli/*', '**/server/*', '**/client/*']),
  layer(
    ['src/api/**'],
    [
      '**/cli/*',
      '**/server/*',
      '**/client/*',
      '**/engine/*',
      '**/transport/*',
      '**/image/*',
      '**/disk/*',
      '**/volume/**',
    ],
  ),
);
