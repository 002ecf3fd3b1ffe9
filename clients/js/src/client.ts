// The client: one connection, on the best transport that works, carrying every subscription.
//
// The loop is docs/protocol.md's "Reconnecting", plus fallback:
// 1. Open the current transport. On `connected`: reset the backoff, remember the transport,
//    and join every subscription, with `since` where a position is known.
// 2. On a close, the close code decides: give up, reconnect now, or back off. A transport that
//    never reached `connected` and failed without a code (refused, cut, silent for
//    `connectTimeout`) makes the client try the next transport at once.
// 3. Silent for `ping_interval` + `pongTimeout`: ping; no answer within `pongTimeout` more:
//    the connection is dead, go to 2.
// 4. On a transport other than the first, try the first again every `upgradeInterval`, and
//    move over when it answers.

import { HeraldError, backoffDelay, closeAdvice, isTransportFailure } from './errors.js';
import { Events, type EventMeta } from './events.js';
import { Subscription, type SubscriptionOwner } from './subscription.js';
import type { ServerMessage, Transport, TransportFactory, TransportName, WebSocketConstructor } from './transport.js';
import { polling } from './transports/polling.js';
import { sse } from './transports/sse.js';
import { websocket } from './transports/websocket.js';

/** Where the connection is. */
export type ConnectionState = 'disconnected' | 'connecting' | 'connected' | 'reconnecting' | 'failed';

/** The state as a UI shows it: which transport is live, or why nothing is. */
export type ConnectionStatus =
  | 'connected-live' | 'connected-sse' | 'connected-poll'
  | 'connecting' | 'reconnecting' | 'offline' | 'failed' | 'disconnected';

export interface HeraldOptions {
  /** The server, `http(s)://host:port` (WebSocket URLs are derived from it). */
  url: string;
  /** The app key. */
  key: string;
  /** A fixed connection token. */
  token?: string;
  /** Fetches a connection token: on connect when none is held or it has expired, and when
   * the server refuses a subscribe because it expired. */
  getToken?: () => string | Promise<string>;
  /** Fetches a subscription token for a private or presence channel (or undefined: none). */
  getSubscriptionToken?: (channel: string) => string | undefined | Promise<string | undefined>;
  /** Transports in order of preference. Default: websocket, sse, polling. */
  transports?: TransportName[];
  /** Where there is no global WebSocket (Node 20): a constructor such as `ws`'s. */
  WebSocket?: WebSocketConstructor | undefined;
  /** A `fetch` to use instead of the global one. */
  fetch?: typeof fetch;
  /** Milliseconds a transport has to deliver `connected` before the next one is tried. Default 5000. */
  connectTimeout?: number;
  /** Reconnect backoff: the first delay and the cap, in milliseconds. Default 500 and 30000. */
  minDelay?: number;
  maxDelay?: number;
  /** Milliseconds to wait for any answer to a ping. Default 10000. */
  pongTimeout?: number;
  /** On a fallback transport, how often (ms) to try the first one again. Default 60000; 0: never. */
  upgradeInterval?: number;
  /** Where to remember the transport that worked: this tab's session (default), localStorage, or nowhere. */
  rememberTransport?: 'session' | 'local' | 'none';
}

export interface ClientEvents {
  /** The connection state changed. */
  state: { current: ConnectionState; previous: ConnectionState };
  /** The status a UI shows changed. */
  status: ConnectionStatus;
  /** A session opened (again) on `transport`. */
  connected: { socketId: string; userId: string | null; transport: TransportName };
  /** Something failed: a refusal not about one channel, a close that ends retrying, a token callback. */
  error: HeraldError;
}

const TRANSPORTS: Record<TransportName, TransportFactory> = { websocket, sse, polling };
const STATUS: Record<TransportName, ConnectionStatus> = { websocket: 'connected-live', sse: 'connected-sse', polling: 'connected-poll' };

type Timer = ReturnType<typeof setTimeout> | undefined;

/** Seconds since the epoch at which a JWT expires, or undefined if it does not say. */
function expiry(token: string | undefined): number | undefined {
  try {
    const part = token?.split('.')[1];
    if (!part) return undefined;
    const exp = (JSON.parse(atob(part.replace(/-/g, '+').replace(/_/g, '/'))) as { exp?: unknown }).exp;
    return typeof exp === 'number' ? exp : undefined;
  } catch {
    return undefined;
  }
}
const expired = (token: string | undefined) => (expiry(token) ?? Infinity) * 1000 <= Date.now() + 1000;

function storage(kind: HeraldOptions['rememberTransport']): Storage | undefined {
  try {
    return kind === 'none' ? undefined : kind === 'local' ? globalThis.localStorage : globalThis.sessionStorage;
  } catch {
    return undefined;
  }
}

export class Herald extends Events<ClientEvents> implements SubscriptionOwner {
  /** Where the connection is. */
  state: ConnectionState = 'disconnected';
  /** The transport of the open session, or null. */
  transport: TransportName | null = null;
  /** This connection's id for the HTTP API (`socket_id`), while connected. */
  socketId: string | null = null;
  /** The connection's user, from its token. */
  userId: string | null = null;

  private readonly o: Required<Omit<HeraldOptions, 'token' | 'getToken' | 'getSubscriptionToken' | 'WebSocket'>> & HeraldOptions;
  private readonly subs = new Map<string, Subscription>();
  /** Subscribes awaiting their reply, by `ref`, and whether each is a retry after an expired
   * subscription token. Cleared when the session ends. */
  private readonly pending = new Map<number, [Subscription, boolean]>();
  private ref = 0;
  /** The id of the session whose hooks are live; every other session's calls are ignored. */
  private live = 0;
  /** The id of an upgrade probe, while one runs. */
  private probing = 0;
  private ids = 0;
  private session: Transport | undefined;
  private probe: Transport | undefined;
  /** Index into `transports` of the one in use or being tried. */
  private index = 0;
  /** Reconnect attempts since the last `connected`. */
  private attempt = 0;
  private token: string | undefined;
  /** Whether this session's token was fetched after a 4005, so a second 4005 gives up. */
  private freshToken = false;
  private pingInterval = 25;
  private offline = false;
  private lastStatus: ConnectionStatus = 'disconnected';
  /** The `error` a server sent before `connected`: why the close that follows refused us. */
  private refusal: HeraldError | undefined;
  private timer: Timer;
  private idle: Timer;
  private upgrade: Timer;
  private readonly store: Storage | undefined;
  private readonly storeKey: string;

  constructor(options: HeraldOptions) {
    super();
    const g = globalThis as { WebSocket?: WebSocketConstructor };
    this.o = {
      transports: ['websocket', 'sse', 'polling'],
      fetch: (...args) => globalThis.fetch(...args),
      connectTimeout: 5000,
      minDelay: 500,
      maxDelay: 30_000,
      pongTimeout: 10_000,
      upgradeInterval: 60_000,
      rememberTransport: 'session',
      ...options,
      url: options.url.replace(/\/+$/, ''),
      WebSocket: options.WebSocket ?? g.WebSocket,
    };
    this.token = options.token;
    this.store = storage(this.o.rememberTransport);
    this.storeKey = `herald:transport:${options.key}`;
  }

  /** The status a UI shows. */
  get status(): ConnectionStatus {
    if (this.state === 'connected' && this.transport) return STATUS[this.transport];
    // Connected but the transport is not set: only between a drop and the next `connected`.
    if (this.state === 'connected') return 'reconnecting';
    return this.offline && this.state === 'reconnecting' ? 'offline' : this.state;
  }

  /** Open the connection (and keep it open) until `disconnect()`. */
  connect(): void {
    if (this.state !== 'disconnected' && this.state !== 'failed') return;
    let remembered: string | null | undefined;
    try {
      remembered = this.store?.getItem(this.storeKey);
    } catch {
      // Storage forbidden (a privacy mode): start from the first transport.
    }
    this.index = Math.max(0, this.o.transports.indexOf(remembered as TransportName));
    this.attempt = 0;
    this.watch(true);
    this.setState('connecting');
    this.open();
  }

  /** Close the connection and stop reconnecting. Subscriptions are kept and rejoined, with
   * recovery, on the next `connect()`. */
  disconnect(): void {
    this.drop();
    this.endProbe();
    clearTimeout(this.upgrade);
    this.watch(false);
    this.setState('disconnected');
  }

  /** The subscription to `channel`, joining it if it is not joined yet. */
  subscribe(channel: string): Subscription {
    let sub = this.subs.get(channel);
    if (!sub) {
      this.subs.set(channel, (sub = new Subscription(channel, this)));
      this.join(sub);
    }
    return sub;
  }

  /** The subscription to `channel`, if there is one. */
  channel(channel: string): Subscription | undefined {
    return this.subs.get(channel);
  }

  /** Leave `channel`. */
  unsubscribe(channel: string): void {
    const sub = this.subs.get(channel);
    if (sub) this.leave(sub);
  }

  /** @internal */
  leave(sub: Subscription): void {
    if (this.subs.get(sub.channel) !== sub) return;
    this.subs.delete(sub.channel);
    if (sub.state !== 'unsubscribed') this.send({ type: 'unsubscribe', channel: sub.channel });
    sub.setState('unsubscribed');
    sub.unbind();
  }

  /** Send a request on the open session; false when there is none. */
  send(msg: object): boolean {
    return this.state === 'connected' && !!this.session?.send(msg);
  }

  private setState(state: ConnectionState): void {
    const previous = this.state;
    if (state !== previous) {
      this.state = state;
      this.emit('state', { current: state, previous });
    }
    const status = this.status;
    if (status !== this.lastStatus) this.emit('status', (this.lastStatus = status));
  }

  /** Open a session on the current transport (at once, unless a token must be fetched). */
  private open(): void {
    const id = (this.live = ++this.ids);
    clearTimeout(this.timer);
    if (this.offline) return;
    this.withToken(
      () => id === this.live,
      (token) => {
        this.session = this.start(this.o.transports[this.index] ?? 'websocket', token, id);
        this.timer = setTimeout(() => this.closed(1006, 'no connected message in time'), this.o.connectTimeout);
      },
      (e) => {
        this.emit('error', new HeraldError('token', 0, 'getToken failed', undefined, undefined, e));
        this.retry(false);
      },
    );
  }

  /** Run `then` with the connection token: the one held, or a fresh one from `getToken`
   * when there is none or it has expired. `current` says whether the caller still wants it. */
  private withToken(current: () => boolean, then: (token: string | undefined) => void, failed: (e: unknown) => void): void {
    const get = this.o.getToken;
    if (!get || (this.token && !expired(this.token))) return then(this.token);
    Promise.resolve()
      .then(get)
      .then(
        (token) => current() && then((this.token = token)),
        (e: unknown) => current() && failed(e),
      );
  }

  /** Start a transport whose hooks act only while `id` is live (or is the probe). */
  private start(name: TransportName, token: string | undefined, id: number): Transport {
    const ctx = { url: this.o.url, key: this.o.key, token, WebSocket: this.o.WebSocket, fetch: this.o.fetch };
    const hooks = {
      message: (m: ServerMessage) => (id === this.live ? this.message(m) : id === this.probing && this.probed(m)),
      alive: () => id === this.live && this.alive(),
      closed: (code: number, reason: string) => (id === this.live ? this.closed(code, reason) : id === this.probing && this.endProbe(true)),
    };
    try {
      return TRANSPORTS[name](ctx, hooks);
    } catch {
      // Unusable here (no WebSocket): fail like a refused connection, after this call returns.
      setTimeout(() => hooks.closed(1006, `${name} unavailable`));
      return { send: () => false, close() {} };
    }
  }

  /** End the live session, if any: its hooks go quiet, subscriptions wait to rejoin. */
  private drop(): void {
    this.live = 0;
    clearTimeout(this.timer);
    clearTimeout(this.idle);
    this.session?.close();
    this.session = undefined;
    this.transport = this.socketId = null;
    this.pending.clear();
    for (const sub of this.subs.values()) sub.setState('unsubscribed');
  }

  private closed(code: number, reason: string): void {
    const wasConnected = this.state === 'connected';
    this.drop();
    clearTimeout(this.upgrade);
    this.endProbe();
    if (code === 4005 && this.o.getToken && !this.freshToken) {
      // The token expired before it was used: fetch a fresh one and try once more.
      this.token = undefined;
      this.freshToken = true;
      return this.retry(true);
    }
    const refusal = this.refusal;
    this.refusal = undefined;
    if (closeAdvice(code) === 'stop') {
      this.setState('failed');
      this.emit('error', new HeraldError('closed', code, refusal?.message ?? (reason || `closed with ${code}`), refusal?.reason));
      return;
    }
    if (!wasConnected && isTransportFailure(code)) {
      // This transport does not get through: the next one, at once; after the last, wait.
      if (++this.index < this.o.transports.length) return this.open();
      this.index = 0;
      return this.retry(false);
    }
    this.retry(closeAdvice(code) === 'now');
  }

  /** Reconnect after the backoff delay (a short random one when `now`, the first time). */
  private retry(now: boolean): void {
    if (this.state !== 'connecting') this.setState('reconnecting');
    const delay = now && this.attempt === 0 ? Math.random() * 250 : backoffDelay(this.attempt, this.o.minDelay, this.o.maxDelay);
    this.attempt++;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.open(), delay);
  }

  private message(msg: ServerMessage): void {
    const sub = msg.channel ? this.subs.get(msg.channel) : undefined;
    switch (msg.type) {
      case 'connected':
        return this.connected(msg);
      case 'ping':
        this.send({ type: 'pong' });
        return;
      case 'subscribe': {
        const joining = this.reply(msg)?.[0] ?? sub;
        if (joining?.state === 'subscribing') joining.joined(msg.data as Parameters<Subscription['joined']>[0]);
        return;
      }
      case 'unsubscribe':
        this.reply(msg);
        return;
      case 'event':
        if (!msg.channel) {
          const meta: EventMeta = { event: msg.event ?? '', channel: null, id: msg.id ?? '', timestamp: msg.timestamp ?? 0 };
          return this.dispatch(msg.data, meta);
        }
        return sub?.receive(msg);
      case 'presence':
        return sub?.presence(msg.event, msg.data);
      case 'error':
        return this.refused(msg, sub);
      case 'refresh':
        // The server enforces token expiry: fetch a fresh token and hand it over before the
        // grace period ends (the connection stays open meanwhile).
        if (msg.event === 'required') this.refreshToken();
        return;
      case 'resync':
        // Long-polling dropped its buffer and these channels: join them again, recovering.
        for (const name of Array.isArray(msg.data) ? msg.data : []) {
          const s = this.subs.get(String(name));
          if (s) {
            s.setState('unsubscribed');
            this.join(s);
          }
        }
    }
  }

  /** Answer a `refresh` hint: a fresh token from `getToken`, sent on this connection. */
  private refreshToken(): void {
    const get = this.o.getToken;
    if (!get) return;
    Promise.resolve()
      .then(() => get())
      .then(
        (token) => {
          this.token = token;
          this.send({ type: 'refresh', token });
        },
        (e: unknown) => this.emit('error', new HeraldError('token', 0, 'getToken failed', undefined, undefined, e)),
      );
  }

  /** The subscribe a reply's `ref` answers (if its subscription is still wanted), forgetting the ref. */
  private reply(msg: ServerMessage): [Subscription, boolean] | undefined {
    const entry = typeof msg.ref === 'number' ? this.pending.get(msg.ref) : undefined;
    if (typeof msg.ref === 'number') this.pending.delete(msg.ref);
    return entry && this.subs.get(entry[0].channel) === entry[0] ? entry : undefined;
  }

  private connected(msg: ServerMessage): void {
    clearTimeout(this.timer);
    const data = (msg.data ?? {}) as { socket_id?: string; user_id?: string | null; ping_interval?: number };
    const transport = this.o.transports[this.index] ?? 'websocket';
    this.transport = transport;
    this.socketId = data.socket_id ?? null;
    this.userId = data.user_id ?? null;
    if (typeof data.ping_interval === 'number') this.pingInterval = data.ping_interval;
    this.attempt = 0;
    this.freshToken = false;
    try {
      this.store?.setItem(this.storeKey, transport);
    } catch {
      // Storage full or forbidden: the transport is remembered for this client only.
    }
    this.setState('connected');
    this.emit('connected', { socketId: this.socketId ?? '', userId: this.userId, transport });
    for (const sub of this.subs.values()) this.join(sub);
    this.alive();
    clearTimeout(this.upgrade);
    if (this.index > 0 && this.o.upgradeInterval > 0) this.upgrade = setTimeout(() => this.tryUpgrade(), this.o.upgradeInterval);
  }

  /** Join `sub` on the open session, with its position and, for private and presence
   * channels, a subscription token from `getSubscriptionToken`. */
  private join(sub: Subscription, retried = false): void {
    if (this.state !== 'connected' || sub.state !== 'unsubscribed') return;
    sub.setState('subscribing');
    const live = this.live;
    const go = (token?: string) => {
      if (live !== this.live || this.subs.get(sub.channel) !== sub || sub.state !== 'subscribing') return;
      this.pending.set(++this.ref, [sub, retried]);
      this.send({ type: 'subscribe', channel: sub.channel, ref: this.ref, ...(sub.position && { since: sub.position }), ...(token && { token }) });
    };
    const getToken = this.o.getSubscriptionToken;
    if (!getToken || !/^(private|presence)-/.test(sub.channel)) return go();
    Promise.resolve()
      .then(() => getToken(sub.channel))
      .then(go, (e: unknown) => {
        if (live !== this.live) return;
        sub.failed(new HeraldError('token', 0, 'getSubscriptionToken failed', undefined, sub.channel, e), true);
      });
  }

  private refused(msg: ServerMessage, sub: Subscription | undefined): void {
    const d = (msg.data ?? {}) as { code?: number; message?: string };
    const error = new HeraldError('server', d.code ?? 0, d.message ?? String(msg.event), msg.event ?? undefined, msg.channel ?? undefined);
    const [joining, retried] = this.reply(msg) ?? [];
    if (joining && d.code === 202) {
      if (this.o.getToken && expired(this.token)) {
        // The connection token expired: reconnect with a fresh one; every subscription rejoins.
        this.token = undefined;
        this.drop();
        return this.retry(true);
      }
      if (!retried) {
        // The subscription token expired: ask for another, once.
        joining.setState('unsubscribed');
        return this.join(joining, true);
      }
    }
    if (joining) return joining.failed(error, true);
    if (sub) return sub.failed(error, false);
    if (this.state === 'connected') this.emit('error', error);
    else this.refusal = error;
  }

  /** Something arrived: the connection is alive. Restart the dead-connection watch. */
  private alive(): void {
    clearTimeout(this.idle);
    if (this.state !== 'connected') return;
    this.idle = setTimeout(() => this.ping(), this.pingInterval * 1000 + this.o.pongTimeout);
  }

  /** Ask the server for any answer; none within `pongTimeout` means the connection is dead. */
  private ping(): void {
    clearTimeout(this.idle);
    if (!this.send({ type: 'ping' })) return;
    this.idle = setTimeout(() => this.closed(1006, 'no answer to ping'), this.o.pongTimeout);
  }

  /** On a fallback transport: open the first one beside it; if it answers, move over. */
  private tryUpgrade(): void {
    if (this.state !== 'connected' || this.index === 0 || this.probing) return;
    const id = (this.probing = ++this.ids);
    this.withToken(
      () => id === this.probing,
      (token) => {
        this.probe = this.start(this.o.transports[0] ?? 'websocket', token, id);
        this.upgrade = setTimeout(() => this.endProbe(true), this.o.connectTimeout);
      },
      () => this.endProbe(true),
    );
  }

  /** A message on the probe: its `connected` makes it the session. */
  private probed(msg: ServerMessage): void {
    if (msg.type !== 'connected' || !this.probe) return;
    const probe = this.probe;
    const id = this.probing;
    this.probe = undefined;
    this.probing = 0;
    clearTimeout(this.upgrade);
    this.drop();
    this.session = probe;
    this.live = id;
    this.index = 0;
    this.connected(msg);
  }

  /** Stop the probe; with `again`, try later. */
  private endProbe(again = false): void {
    this.probe?.close();
    this.probe = undefined;
    this.probing = 0;
    clearTimeout(this.upgrade);
    if (again && this.state === 'connected' && this.o.upgradeInterval > 0) {
      this.upgrade = setTimeout(() => this.tryUpgrade(), this.o.upgradeInterval);
    }
  }

  // Browsers: wait for the network instead of burning retries while offline, and check the
  // connection at once when a tab comes back (timers are throttled in background tabs).
  private readonly onOffline = () => {
    this.offline = true;
    if (this.state === 'connected' || this.state === 'connecting' || this.state === 'reconnecting') {
      this.drop();
      this.setState('reconnecting');
    }
  };
  private readonly onOnline = () => {
    this.offline = false;
    if (this.state === 'reconnecting') {
      this.attempt = 0;
      this.open();
    }
  };
  private readonly onVisible = () => {
    if (globalThis.document?.visibilityState !== 'visible') return;
    if (this.state === 'connected') this.ping();
    else if (this.state === 'reconnecting' && !this.offline) this.open();
  };

  // A tab closing ends its session at once (a long-polling session would otherwise hold its
  // presence until it expired); a tab restored from the back/forward cache reconnects.
  private readonly onHide = () => {
    if (this.state === 'disconnected' || this.state === 'failed') return;
    this.drop();
    this.endProbe();
    this.setState('reconnecting');
  };
  private readonly onShow = (e: Event) => {
    if ((e as PageTransitionEvent).persisted && this.state === 'reconnecting') this.open();
  };

  private watch(on: boolean): void {
    const w = globalThis as Partial<Pick<Window, 'addEventListener' | 'removeEventListener'>>;
    const method = on ? 'addEventListener' : 'removeEventListener';
    if (typeof w[method] !== 'function') return;
    w[method]('offline', this.onOffline);
    w[method]('online', this.onOnline);
    w[method]('pagehide', this.onHide);
    w[method]('pageshow', this.onShow);
    globalThis.document?.[method]('visibilitychange', this.onVisible);
    if (on) this.offline = globalThis.navigator?.onLine === false;
  }
}
