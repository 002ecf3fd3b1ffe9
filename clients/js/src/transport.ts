// What every transport is to the client: something that opens a session, delivers the
// server's messages, sends requests, and says once, with a close code, that it has ended.
// Transports only move bytes; every decision (fallback, retry, recovery) is the client's.

/** The transports, in the default order of preference. */
export type TransportName = 'websocket' | 'sse' | 'polling';

/** A server message (docs/protocol.md, "Server messages"); unknown fields are kept. */
export interface ServerMessage {
  type: string;
  id?: string;
  channel?: string | null;
  event?: string | null;
  data?: unknown;
  timestamp?: number;
  ref?: string | number;
  user_id?: string;
  offset?: number;
  epoch?: string;
}

/** A constructor compatible with the browser's `WebSocket` (the `ws` package's is). */
export interface WebSocketLike {
  readonly readyState: number;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** What a transport needs to open a session. */
export interface TransportContext {
  /** The server's base URL, `http(s)://host:port` (no trailing slash). */
  url: string;
  /** The app key. */
  key: string;
  /** The connection token, if any. */
  token: string | undefined;
  WebSocket: WebSocketConstructor | undefined;
  fetch: typeof fetch;
}

/** How a transport reports to the client. No call comes after `closed`, or after `close()`. */
export interface TransportHooks {
  /** A message arrived. `resync` is synthesised by long-polling (its `data` lists channels). */
  message(msg: ServerMessage): void;
  /** Bytes arrived (a message, a heartbeat, an empty poll): the connection is alive. */
  alive(): void;
  /** The session ended, with the close code a WebSocket would have given. */
  closed(code: number, reason: string): void;
}

/** An open (or opening) session on one transport. */
export interface Transport {
  /** Send a request, in order; false if it could not be queued. HTTP transports batch what is
   * sent in one tick into one POST. */
  send(msg: object): boolean;
  /** End the session; no hook is called after this. */
  close(): void;
}

export type TransportFactory = (ctx: TransportContext, hooks: TransportHooks) => Transport;

/** Parse one message; anything that is not a JSON object with a string `type` is dropped. */
export function parse(text: string): ServerMessage | undefined {
  try {
    const v: unknown = JSON.parse(text);
    return v && typeof v === 'object' && typeof (v as ServerMessage).type === 'string' ? (v as ServerMessage) : undefined;
  } catch {
    return undefined;
  }
}

/** `?token=…` when there is a token. */
export function tokenQuery(token: string | undefined): string {
  return token ? `?token=${encodeURIComponent(token)}` : '';
}

/** The token as a header, for HTTP transports: kept out of URLs, so out of proxies' logs.
 * (A browser WebSocket cannot send headers, so it carries the token in the query.) */
export function tokenHeader(token: string | undefined): Record<string, string> {
  return token ? { authorization: `Bearer ${token}` } : {};
}

/** `{base}/{prefix}/{key}`. */
export function endpoint(ctx: TransportContext, prefix: string): string {
  return `${ctx.url}/${prefix}/${encodeURIComponent(ctx.key)}`;
}
