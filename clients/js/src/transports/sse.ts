// The SSE transport: `GET /sse/{key}?token=…` read as a stream with `fetch` (not
// `EventSource`, which cannot say why a stream was refused and reconnects on its own), and
// requests POSTed to `/sse/{key}/{session}`.

import { type TransportFactory, endpoint, parse, tokenQuery } from '../transport.js';
import { poster, refusal } from './http.js';

/** A stream that sends more than this without an event boundary is not Herald's. */
const MAX_EVENT = 1 << 20;

export const sse: TransportFactory = (ctx, hooks) => {
  const abort = new AbortController();
  let session: string | undefined;
  let ended = false;
  const end = (code: number, reason: string) => {
    if (ended) return;
    ended = true;
    out.stop();
    abort.abort();
    hooks.closed(code, reason);
  };
  const out = poster(ctx, () => session && `${endpoint(ctx, 'sse')}/${session}`, end);

  // One event block: `event:` and `data:` lines (comments and `id:` are not needed: the
  // client recovers with `since`, whatever the transport).
  const block = (text: string) => {
    let event = '';
    const data: string[] = [];
    for (const line of text.split('\n')) {
      const field = line.slice(0, line.indexOf(':'));
      const value = line.slice(field.length + 1).replace(/^ /, '');
      if (field === 'data') data.push(value);
      else if (field === 'event') event = value;
    }
    const msg = data.length ? parse(data.join('\n')) : undefined;
    if (!msg) return;
    if (event === 'close') {
      const { code, reason } = msg as unknown as { code?: number; reason?: string };
      return end(typeof code === 'number' ? code : 1006, String(reason ?? ''));
    }
    if (msg.type === 'connected') {
      session = (msg.data as { session?: string } | undefined)?.session;
      out.flush();
    }
    hooks.message(msg);
  };

  void (async () => {
    try {
      const res = await ctx.fetch(endpoint(ctx, 'sse') + tokenQuery(ctx.token), {
        headers: { accept: 'text/event-stream' },
        cache: 'no-store',
        signal: abort.signal,
      });
      if (!res.ok || !res.body) return end(...(await refusal(res)));
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done || ended) break;
        hooks.alive();
        buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
        let at: number;
        while (!ended && (at = buf.indexOf('\n\n')) >= 0) {
          block(buf.slice(0, at));
          buf = buf.slice(at + 2);
        }
        if (buf.length > MAX_EVENT) return end(1009, 'event too large');
      }
      // The stream ended without a close event: cut by the network or a proxy.
      end(1006, 'stream ended');
    } catch {
      end(1006, 'stream failed');
    }
  })();

  return {
    send: (msg) => out.send(msg),
    close() {
      if (ended) return;
      ended = true;
      out.stop();
      abort.abort();
    },
  };
};
