// Bundles the dashboard (src/main.js, Vue + @herald/client/vue) into public/app.js.
import { resolve } from 'node:path';
import { build } from 'esbuild';

await build({
  entryPoints: ['src/main.js'],
  outfile: 'public/app.js',
  bundle: true,
  format: 'esm',
  minify: true,
  sourcemap: true,
  define: { __VUE_OPTIONS_API__: 'false', __VUE_PROD_DEVTOOLS__: 'false', __VUE_PROD_HYDRATION_MISMATCH_DETAILS__: 'false' },
  // @herald/client is a `file:` dependency (a symlink into clients/js, which has its own Vue
  // for its tests): its `vue` must be this app's, as it would be for a package installed from
  // the registry, so the page has one Vue.
  alias: { vue: resolve('node_modules/vue') },
  logLevel: 'warning',
});
