// Serves the dashboard (public/) and /config.js, which tells the page where Herald is.
//   node serve.mjs [--port 8080] [--herald http://127.0.0.1:6001] [--devices 200] [--backend http://127.0.0.1:6081]
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { extname, join, normalize } from 'node:path';
import { parseArgs } from 'node:util';

const { values: o } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.FLEET_PORT ?? '8080' },
    herald: { type: 'string', default: process.env.HERALD_URL ?? 'http://127.0.0.1:6001' },
    devices: { type: 'string', default: process.env.FLEET_DEVICES ?? '200' },
    backend: { type: 'string', default: `http://127.0.0.1:${process.env.FLEET_BACKEND_PORT ?? '6081'}` },
  },
});
const root = join(import.meta.dirname, 'public');
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.map': 'application/json', '.svg': 'image/svg+xml' };

createServer(async (req, res) => {
  const path = new URL(req.url, 'http://x').pathname;
  if (path === '/config.js') {
    res.writeHead(200, { 'content-type': 'text/javascript', 'cache-control': 'no-store' });
    return res.end(`window.FLEET = ${JSON.stringify({ herald: o.herald, key: 'fleet-key', devices: Number(o.devices), backend: o.backend })};`);
  }
  const file = normalize(join(root, path === '/' ? 'index.html' : path));
  if (!file.startsWith(root)) return res.writeHead(404).end();
  try {
    const body = await readFile(file);
    res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream' });
    res.end(body);
  } catch {
    res.writeHead(404).end('not found');
  }
}).listen(Number(o.port), '127.0.0.1', () => console.log(`dashboard: http://127.0.0.1:${o.port}/`));
