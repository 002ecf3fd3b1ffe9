// The SSE transport: `GET /sse/{key}` (the token in `Authorization`) read as a stream with `fetch` (not
// `EventSource`, which cannot say why a stream was refused and reconnects on its own), and
// requests POSTed to `/sse/{key}/{session}`.

import { type TransportFactory, endpoint, parse, tokenHeader } from '../transport.js';
import { httpSession, refusal } from './http.js';

/** A stream that sends more than this without an event boundary is not Herald's. */
const MAX_EVENT = 1 << 20;

export const sse: TransportFactory = (ctx, hooks) => {
  const session = httpSession(ctx, 'sse', hooks);

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
      return session.end(typeof code === 'number' ? code : 1006, String(reason ?? ''));
    }
    if (msg.type === 'connected') {
      session.id = (msg.data as { session?: string } | undefined)?.session;
      session.flush();
    }
    hooks.message(msg);
  };

  void (async () => {
    try {
      const res = await ctx.fetch(endpoint(ctx, 'sse'), {
        headers: { accept: 'text/event-stream', ...tokenHeader(ctx.token) },
        cache: 'no-store',
        signal: session.signal,
      });
      if (!res.ok || !res.body) return session.end(...(await refusal(res)));
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done || session.ended) break;
        hooks.alive();
        buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
        let at: number;
        while (!session.ended && (at = buf.indexOf('\n\n')) >= 0) {
          block(buf.slice(0, at));
          buf = buf.slice(at + 2);
        }
        if (buf.length > MAX_EVENT) return session.end(1009, 'event too large');
      }
      // The stream ended without a close event: cut by the network or a proxy.
      session.end(1006, 'stream ended');
    } catch {
      session.end(1006, 'stream failed');
    }
  })();

  // Aborting the stream ends the session on the server at once.
  return session.transport();
};
