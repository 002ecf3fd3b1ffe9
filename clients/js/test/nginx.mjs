// A real nginx (Debian's package) in front of Herald, run from a temporary prefix, in one of
// three shapes a network puts between a browser and a server:
// - 'upgrade': a proxy configured for WebSockets (passes `Upgrade`);
// - 'no-upgrade': a corporate proxy that does not pass the upgrade, but streams responses;
// - 'buffering': one that also holds responses back (ignoring `X-Accel-Buffering`, and
//   compressing, which buffers a stream until the compressor's buffer fills).
// It also serves `root` (the test pages and the client's browser build), so pages are same-origin.

import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, sleep } from './helpers.mjs';

export const NGINX = process.env.NGINX_BIN ?? '/usr/sbin/nginx';
export const nginxInstalled = () => existsSync(NGINX);

function config({ dir, port, upstream, root, mode }) {
  const proxy = {
    upgrade: 'proxy_set_header Upgrade $http_upgrade;\n      proxy_set_header Connection "upgrade";',
    'no-upgrade': 'proxy_set_header Connection "";',
    // Compressing the stream holds it back until the compressor's buffer fills: what an
    // antivirus or compressing corporate proxy does to a streaming response.
    buffering: 'proxy_set_header Connection "";\n      proxy_buffering on;\n      proxy_ignore_headers X-Accel-Buffering;\n'
      + '      gzip on;\n      gzip_types text/event-stream application/json;\n      gzip_min_length 0;\n      gzip_buffers 16 64k;',
  }[mode];
  return `
${process.getuid?.() === 0 ? 'user root;' : ''}
worker_processes 1;
# One process: killing it drops every connection through it, as a crashed proxy would.
master_process off;
daemon off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 1024; }
http {
  access_log ${process.env.NGINX_ACCESS_LOG ?? "off"};
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  types { text/html html; text/javascript js mjs; text/css css; application/json json; image/svg+xml svg; }
  server {
    listen 127.0.0.1:${port};
    root ${root};
    location ~ ^/(ws|sse|poll|api|app|apps|pusher)/ {
      proxy_pass http://127.0.0.1:${upstream};
      proxy_http_version 1.1;
      proxy_read_timeout 120s;
      ${proxy}
    }
  }
}
`;
}

/** Start nginx on a free port proxying to Herald on `upstream`; resolves once it answers. */
export async function startNginx({ upstream, root, mode }) {
  const dir = mkdtempSync(join(tmpdir(), 'herald-nginx-'));
  mkdirSync(join(dir, 'logs'));
  const port = await freePort();
  const file = join(dir, 'nginx.conf');
  let proc;
  const launch = async () => {
    writeFileSync(file, config({ dir, port, upstream, root, mode }));
    proc = spawn(NGINX, ['-p', dir, '-c', file], { stdio: ['ignore', 'ignore', 'pipe'] });
    const me = proc;
    process.once('exit', () => me.kill('SIGKILL'));
    let stderr = '';
    proc.stderr.on('data', (d) => { stderr += d; });
    const deadline = Date.now() + 10_000;
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`nginx exited ${proc.exitCode}: ${stderr}`);
      try {
        await fetch(`http://127.0.0.1:${port}/`);
        return;
      } catch { /* not yet */ }
      if (Date.now() > deadline) throw new Error(`nginx did not start: ${stderr}`);
      await sleep(25);
    }
  };
  const kill = async () => {
    if (proc && proc.exitCode === null) {
      proc.kill('SIGKILL');
      await new Promise((r) => proc.once('exit', r));
      // The workers die with the master's listening socket closed; wait until the port is free.
      await sleep(100);
    }
  };
  await launch();
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    /** Kill it outright (every connection through it drops), as a crashed proxy. */
    kill,
    /** Start it again on the same port, optionally in another shape. */
    async start(newMode = mode) {
      mode = newMode;
      await launch();
    },
    stop: kill,
  };
}
