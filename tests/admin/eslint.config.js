// Lint: ESLint's recommended rules on the admin UI's script (a browser ES module, no build
// step) and on its test (Node). Run from the repository root, as scripts/test-admin does:
//   tests/admin/node_modules/.bin/eslint -c tests/admin/eslint.config.js tests/admin crates/herald-server/assets/admin/app.js
import js from '@eslint/js';
import globals from 'globals';

export default [
  { ignores: ['**/node_modules/', '**/screenshots/', '**/vendor/'] },
  {
    files: ['**/assets/admin/app.js'],
    ...js.configs.recommended,
    languageOptions: { ecmaVersion: 2023, sourceType: 'module', globals: { ...globals.browser } },
    rules: {
      ...js.configs.recommended.rules,
      'no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
      // Server data reaches the page as text only.
      'no-eval': 'error',
      'no-implied-eval': 'error',
      'no-new-func': 'error',
      'no-restricted-properties': ['error',
        { property: 'innerHTML', message: 'build DOM with createElement/textContent' },
        { property: 'outerHTML', message: 'build DOM with createElement/textContent' },
        { property: 'insertAdjacentHTML', message: 'build DOM with createElement/textContent' },
        { property: 'createContextualFragment', message: 'build DOM with createElement/textContent' },
        { object: 'document', property: 'write', message: 'build DOM with createElement/textContent' },
        { object: 'document', property: 'writeln', message: 'build DOM with createElement/textContent' },
      ],
    },
  },
  {
    files: ['**/*.mjs', '**/eslint.config.js'],
    ...js.configs.recommended,
    // The test runs in Node; page callbacks run in the browser.
    languageOptions: { ecmaVersion: 2023, sourceType: 'module', globals: { ...globals.node, ...globals.browser } },
    rules: {
      ...js.configs.recommended.rules,
      'no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
    },
  },
];
