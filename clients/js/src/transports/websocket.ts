// The WebSocket transport: `ws(s)://host/ws/{key}?token=…`, one JSON message per text frame.

import { type TransportFactory, endpoint, parse, tokenQuery } from '../transport.js';

export const websocket: TransportFactory = (ctx, hooks) => {
  if (!ctx.WebSocket) throw new Error('no WebSocket: pass one (for example `ws`) as the WebSocket option');
  const ws = new ctx.WebSocket(endpoint(ctx, 'ws').replace(/^http/, 'ws') + tokenQuery(ctx.token));
  let ended = false;
  ws.onmessage = (e) => {
    if (ended) return;
    hooks.alive();
    const msg = typeof e.data === 'string' ? parse(e.data) : undefined;
    if (msg) hooks.message(msg);
  };
  ws.onclose = (e) => {
    if (ended) return;
    ended = true;
    hooks.closed(e.code || 1006, e.reason);
  };
  // An error is always followed by `close`, which carries what the client acts on.
  ws.onerror = () => {};
  return {
    send(msg) {
      if (ended || ws.readyState !== 1) return false;
      ws.send(JSON.stringify(msg));
      return true;
    },
    close() {
      ended = true;
      try {
        ws.close(1000);
      } catch {
        // Closing a socket that never opened may throw in some runtimes; it is gone either way.
      }
    },
  };
};
