// The long-polling transport: `POST /poll/{key}` opens a session, `GET …/{session}?cursor=N`
// reads what came after N (waiting when nothing has), requests are POSTed to the session, and
// `DELETE` ends it.

import { type ServerMessage, type TransportFactory, endpoint, tokenQuery } from '../transport.js';
import { poster, refusal } from './http.js';

interface PollAnswer {
  cursor?: number;
  messages?: ServerMessage[];
  resync?: string[];
  closed?: { code?: number; reason?: string };
}

export const polling: TransportFactory = (ctx, hooks) => {
  const abort = new AbortController();
  let session: string | undefined;
  let ended = false;
  const url = () => session && `${endpoint(ctx, 'poll')}/${session}`;
  const end = (code: number, reason: string) => {
    if (ended) return;
    ended = true;
    out.stop();
    abort.abort();
    hooks.closed(code, reason);
  };
  const out = poster(ctx, url, end);

  void (async () => {
    try {
      const opened = await ctx.fetch(endpoint(ctx, 'poll') + tokenQuery(ctx.token), { method: 'POST', signal: abort.signal });
      if (!opened.ok) return end(...(await refusal(opened)));
      session = ((await opened.json()) as { session?: string }).session;
      if (typeof session !== 'string') return end(1006, 'no session');
      out.flush();
      let cursor = 0;
      while (!ended) {
        const res = await ctx.fetch(`${url()}?cursor=${cursor}`, { cache: 'no-store', signal: abort.signal });
        // The session expired between polls (the tab slept): open a new one and recover.
        if (res.status === 404) return end(4201, 'session expired');
        if (!res.ok) return end(...(await refusal(res)));
        const answer = (await res.json()) as PollAnswer;
        if (ended) return;
        hooks.alive();
        if (typeof answer.cursor === 'number') cursor = answer.cursor;
        for (const msg of Array.isArray(answer.messages) ? answer.messages : []) {
          if (ended) return;
          if (msg && typeof msg.type === 'string') hooks.message(msg);
        }
        if (Array.isArray(answer.resync)) hooks.message({ type: 'resync', data: answer.resync });
        if (answer.closed) return end(answer.closed.code ?? 1006, answer.closed.reason ?? '');
      }
    } catch {
      end(1006, 'poll failed');
    }
  })();

  return {
    send: (msg) => out.send(msg),
    close() {
      if (ended) return;
      ended = true;
      out.stop();
      abort.abort();
      const target = url();
      // Ends the session (and its presence) now rather than at its expiry.
      if (target) ctx.fetch(target, { method: 'DELETE', keepalive: true }).catch(() => {});
    },
  };
};
