// The long-polling transport: `POST /poll/{key}` opens a session, `GET …/{session}?cursor=N`
// reads what came after N (waiting when nothing has), requests are POSTed to the session, and
// `DELETE` ends it.

import { type ServerMessage, type TransportFactory, endpoint, tokenHeader } from '../transport.js';
import { httpSession, refusal } from './http.js';

interface PollAnswer {
  cursor?: number;
  messages?: ServerMessage[];
  resync?: string[];
  closed?: { code?: number; reason?: string };
}

export const polling: TransportFactory = (ctx, hooks) => {
  const session = httpSession(ctx, 'poll', hooks);

  void (async () => {
    try {
      const opened = await ctx.fetch(endpoint(ctx, 'poll'), { method: 'POST', headers: tokenHeader(ctx.token), signal: session.signal });
      if (!opened.ok) return session.end(...(await refusal(opened)));
      session.id = ((await opened.json()) as { session?: string }).session;
      if (typeof session.id !== 'string') return session.end(1006, 'no session');
      session.flush();
      let cursor = 0;
      while (!session.ended) {
        const res = await ctx.fetch(`${session.url() ?? ''}?cursor=${cursor}`, { cache: 'no-store', signal: session.signal });
        // The session expired between polls (the tab slept): open a new one and recover.
        if (res.status === 404) return session.end(4201, 'session expired');
        if (!res.ok) return session.end(...(await refusal(res)));
        const answer = (await res.json()) as PollAnswer;
        if (session.ended) return;
        hooks.alive();
        if (typeof answer.cursor === 'number') cursor = answer.cursor;
        for (const msg of Array.isArray(answer.messages) ? answer.messages : []) {
          if (session.ended) return;
          if (typeof msg.type === 'string') hooks.message(msg);
        }
        if (Array.isArray(answer.resync)) hooks.message({ type: 'resync', data: answer.resync });
        if (answer.closed) return session.end(answer.closed.code ?? 1006, answer.closed.reason ?? '');
      }
    } catch {
      session.end(1006, 'poll failed');
    }
  })();

  // Ends the session (and its presence) now rather than at its expiry.
  return session.transport((url) => void ctx.fetch(url, { method: 'DELETE', keepalive: true }).catch(() => {}));
};
