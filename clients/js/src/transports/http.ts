// What the two HTTP transports share: reading a refusal, and the request path (POSTs,
// one at a time so requests stay in order, each carrying everything queued meanwhile).

import { refusalCloseCode } from '../errors.js';
import { type Transport, type TransportContext, type TransportHooks, endpoint } from '../transport.js';

/** The server's batch limit per POST (`MAX_BATCH`), and a size well under `max_message_size`. */
const BATCH_COUNT = 100;
const BATCH_BYTES = 16_000;
/** Requests waiting for their POST at most; beyond, `send` refuses (a client event, say). */
const MAX_QUEUED = 1000;

/** The close code and reason for a response that is not a success. */
export async function refusal(res: Response): Promise<[number, string]> {
  let code: number | undefined;
  let reason = `HTTP ${res.status}`;
  try {
    const body = (await res.json()) as { error?: { code?: number; name?: string; message?: string } };
    code = body.error?.code;
    reason = body.error?.message ?? body.error?.name ?? reason;
  } catch {
    // Not Herald's JSON (a proxy's page): a transport failure.
  }
  return [refusalCloseCode(code), reason];
}

/**
 * A sender of requests to `url()` (undefined until the session id is known). `failed` is
 * called when the session is gone (404) or the network fails.
 */
export function poster(ctx: TransportContext, url: () => string | undefined, failed: (code: number, reason: string) => void) {
  let queue: string[] = [];
  let busy = false;
  let stopped = false;
  async function flush(): Promise<void> {
    const target = url();
    if (busy || stopped || !queue.length || !target) return;
    busy = true;
    let n = 0;
    let size = 2;
    while (n < queue.length && n < BATCH_COUNT && (n === 0 || size + queue[n]!.length < BATCH_BYTES)) size += queue[n++]!.length + 1;
    const batch = queue.slice(0, n);
    try {
      // text/plain keeps this a "simple" request: no CORS preflight before each POST.
      const res = await ctx.fetch(target, { method: 'POST', body: `[${batch.join(',')}]`, headers: { 'content-type': 'text/plain' } });
      if (res.status === 429) await new Promise((r) => setTimeout(r, 100));
      else if (res.status === 404) return failed(4201, 'session ended');
      else queue = queue.slice(n);
    } catch {
      if (!stopped) failed(1006, 'request failed');
      return;
    } finally {
      busy = false;
    }
    void flush();
  }
  return {
    send(msg: object): boolean {
      if (stopped || queue.length >= MAX_QUEUED) return false;
      queue.push(JSON.stringify(msg));
      // Everything sent in this tick goes in one POST.
      queueMicrotask(() => void flush());
      return true;
    },
    flush: () => void flush(),
    stop() {
      stopped = true;
      queue = [];
    },
  };
}

/**
 * What an HTTP session is made of: its id (once known), its request path, and its end. `end`
 * reports the close to the client once; `close` ends it quietly (the client asked), with
 * `after` to tell the server.
 */
export function httpSession(ctx: TransportContext, prefix: string, hooks: TransportHooks) {
  const abort = new AbortController();
  const s = {
    id: undefined as string | undefined,
    ended: false,
    signal: abort.signal,
    url: () => s.id && `${endpoint(ctx, prefix)}/${s.id}`,
    end: (code: number, reason: string) => {
      if (s.ended) return;
      stop();
      hooks.closed(code, reason);
    },
    transport(after?: (url: string) => void): Transport {
      return {
        send: (msg) => out.send(msg),
        close() {
          if (s.ended) return;
          const url = s.url();
          stop();
          if (url) after?.(url);
        },
      };
    },
  };
  const out = poster(ctx, s.url, s.end);
  const stop = () => {
    s.ended = true;
    out.stop();
    abort.abort();
  };
  return Object.assign(s, { flush: out.flush });
}
