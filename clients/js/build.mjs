// Builds dist/: ESM and CommonJS for each entry point, `.d.ts` types (tsc), and the
// single-file browser build `herald.iife.js` (global `Herald`). Prints the core's size,
// minified and gzipped, and fails above the budget (docs/client-js.md, "Size").
import { execFileSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { build } from 'esbuild';

/** The core browser bundle's budget, minified and gzipped. */
export const BUDGET = 8 * 1024;
const entries = ['src/index.ts', 'src/vue.ts', 'src/react.ts'];

rmSync('dist', { recursive: true, force: true });
const common = { bundle: true, target: 'es2022', sourcemap: true, logLevel: 'warning' };
// The framework bindings import the core from the package itself, so an app that uses both
// gets one client module, not two copies.
const external = ['vue', 'react', '@herald/client'];
await build({ ...common, entryPoints: entries, outdir: 'dist', format: 'esm', external, platform: 'neutral' });
await build({ ...common, entryPoints: entries, outdir: 'dist', format: 'cjs', external, platform: 'neutral', outExtension: { '.js': '.cjs' } });
await build({
  ...common,
  entryPoints: ['src/index.ts'],
  outfile: 'dist/herald.iife.js',
  format: 'iife',
  globalName: 'HeraldClient',
  minify: true,
  // `new Herald({...})` on a page, with everything else on it: `Herald.HeraldError`, …
  footer: { js: 'var Herald=Object.assign(HeraldClient.Herald,HeraldClient);' },
});
execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', '.'], { stdio: 'inherit' });

const gz = gzipSync(readFileSync('dist/herald.iife.js'), { level: 9 }).length;
console.log(`core browser bundle: ${(gz / 1024).toFixed(2)} KiB minified+gzipped (budget ${BUDGET / 1024} KiB)`);
if (gz > BUDGET) {
  console.error('over the size budget');
  process.exit(1);
}
