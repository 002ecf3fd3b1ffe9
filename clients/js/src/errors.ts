// The server's error catalogue (docs/protocol.md, "Error codes") and close-code advice
// ("Close codes"), as the client uses them.

/** An error name from the server's catalogue. */
export type ErrorName =
  | 'internal' | 'invalid_json' | 'unknown_type' | 'invalid_channel' | 'invalid_request'
  | 'already_subscribed' | 'not_subscribed' | 'client_events_disabled' | 'invalid_event_name'
  | 'not_found' | 'method_not_allowed' | 'request_timeout' | 'unauthorized' | 'unknown_app'
  | 'token_expired' | 'bad_signature' | 'token_invalid' | 'channel_not_allowed'
  | 'permission_denied' | 'origin_not_allowed' | 'app_disabled' | 'ip_denied'
  | 'too_many_subscriptions' | 'rate_limited' | 'payload_too_large' | 'too_many_connections'
  | 'too_many_channels' | 'presence_full' | 'overloaded';

/**
 * What went wrong, typed:
 * - `kind: 'server'`: the server refused a request; `code` and `name` are from its catalogue
 *   (`205`, `channel_not_allowed`);
 * - `kind: 'closed'`: the connection was closed with `code` (a close code, `4004`) and the
 *   client will not retry by itself;
 * - `kind: 'token'`: `getToken` or `getSubscriptionToken` failed; `cause` is what it threw.
 */
export class HeraldError extends Error {
  override name = 'HeraldError';
  constructor(
    readonly kind: 'server' | 'closed' | 'token',
    /** The catalogue code (`kind: 'server'`) or the close code (`kind: 'closed'`); 0 otherwise. */
    readonly code: number,
    message: string,
    /** The catalogue name, for `kind: 'server'`. */
    readonly reason?: ErrorName | (string & {}),
    /** The channel the error is about, when there is one. */
    readonly channel?: string,
    override readonly cause?: unknown,
  ) {
    super(message);
  }
}

/** What a close code tells the client to do next. */
export type CloseAdvice = 'stop' | 'now' | 'backoff';

/**
 * The advice for a close code: give up on 1000, 1002, 1003, 1007, 1009 and 4000–4099;
 * reconnect now on 1001 and 4200–4299; otherwise (4100–4199, 1006, 1011, …) back off.
 */
export function closeAdvice(code: number): CloseAdvice {
  if (code === 1001 || (code >= 4200 && code < 4300)) return 'now';
  if ([1000, 1002, 1003, 1007, 1009].includes(code) || (code >= 4000 && code < 4100)) return 'stop';
  return 'backoff';
}

/** Close codes that mean "the network did not carry it", not "the server said no". */
export function isTransportFailure(code: number): boolean {
  return code === 1005 || code === 1006 || code === 1015;
}

/**
 * The close code a WebSocket would have given for an HTTP transport's refusal, from the
 * error body's catalogue code, so the decision is the same whatever the transport. An answer
 * that is not Herald's (a proxy's page) or a route the server does not serve (the transport
 * is disabled) counts as a transport failure: try the next transport.
 */
export function refusalCloseCode(code: number | undefined): number {
  switch (code) {
    case undefined: case 109: case 110: return 1006;
    case 201: return 4001;
    case 208: return 4003;
    case 202: return 4005;
    case 207: return 4006;
  }
  if (code >= 200 && code < 300) return 4004;
  return code >= 300 ? 4100 : 1011;
}

/**
 * The delay before reconnect attempt `attempt` (0-based): `min × 2^attempt`, capped at `max`,
 * with ±50 % jitter (`random` in [0, 1)) so that many clients do not return together.
 */
export function backoffDelay(attempt: number, min: number, max: number, random = Math.random()): number {
  const base = Math.min(max, min * 2 ** Math.min(attempt, 30));
  return Math.round(base * (0.5 + random));
}
