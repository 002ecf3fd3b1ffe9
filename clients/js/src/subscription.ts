// One channel as the application sees it: its events, its presence members, its position in
// the channel's history, and whether it is joined now. The client owns the connection and
// (re)joins every subscription on it; a subscription only keeps its channel's state.

import type { HeraldError } from './errors.js';
import { Events, type EventMeta } from './events.js';
import type { ServerMessage } from './transport.js';

/** Where a subscription is: joined, being joined, or not joined (disconnected, failed, left). */
export type SubscriptionState = 'unsubscribed' | 'subscribing' | 'subscribed';

/** A position in a channel's history (docs/protocol.md, "History and recovery"). */
export interface StreamPosition {
  offset: number;
  epoch: string;
}

/** A presence member: a user, whatever number of connections they have. */
export interface Member {
  userId: string;
  info: unknown;
}

/** Why publications could not be recovered: the server's `reason`. */
export type UnrecoveredReason = 'too_old' | 'too_many' | 'epoch_changed' | 'invalid_position' | (string & {});

export interface SubscriptionEvents {
  /** The state changed. */
  state: SubscriptionState;
  /** Joined (again). `recovered: true` means everything missed follows, in order. */
  subscribed: { recovered?: boolean; replayed?: number };
  /**
   * Publications were missed and cannot be replayed: reload the channel's state (from your
   * backend or the history API). Delivery continues from `offset`/`epoch`.
   */
  unrecovered: { reason: UnrecoveredReason } & StreamPosition;
  /** The server refused something about this channel (the subscribe, a client event). */
  error: HeraldError;
  /** The whole member list (on every join of a presence channel). */
  members: ReadonlyMap<string, unknown>;
  /** A user joined the presence channel. */
  joined: Member;
  /** A user's last connection left the presence channel. */
  left: Member;
}

/** What a subscription needs from its client. */
export interface SubscriptionOwner {
  leave(sub: Subscription): void;
  send(msg: object): boolean;
}

export class Subscription extends Events<SubscriptionEvents> {
  /** Where the subscription is. */
  state: SubscriptionState = 'unsubscribed';
  /** Presence channels: the members now, by user id. */
  readonly members = new Map<string, unknown>();
  /** The last publication processed, on channels with history; the next join resumes here. */
  position: StreamPosition | undefined;

  constructor(
    /** The channel name. */
    readonly channel: string,
    private readonly owner: SubscriptionOwner,
  ) {
    super();
  }

  /**
   * Send a client event to the channel's other subscribers (private and presence channels of
   * apps with client events). Returns false when not joined, so nothing was sent.
   */
  trigger(event: string, data: unknown): boolean {
    return this.state === 'subscribed' && this.owner.send({ type: 'event', channel: this.channel, event, data });
  }

  /** `trigger` with the `client-` prefix added, as Laravel Echo's `whisper`. */
  whisper(event: string, data: unknown): boolean {
    return this.trigger(event.startsWith('client-') ? event : `client-${event}`, data);
  }

  /** Leave the channel now and drop every listener. */
  unsubscribe(): void {
    this.owner.leave(this);
  }

  /** Unbinding the last application listener leaves the channel (once the current task has run, so that
   * a component re-binding at once does not leave and join again). */
  protected override released(): void {
    if (!this.listeners()) setTimeout(() => this.listeners() || this.owner.leave(this));
  }

  /** @internal */
  setState(state: SubscriptionState): void {
    if (state !== this.state) this.emit('state', (this.state = state));
  }

  /** @internal The reply to a subscribe. */
  joined(data: { offset?: number; epoch?: string; recovered?: boolean; replayed?: number; reason?: string } | undefined): void {
    const d = data ?? {};
    const pos = typeof d.offset === 'number' && typeof d.epoch === 'string' ? { offset: d.offset, epoch: d.epoch } : undefined;
    // After `recovered: true` the replay follows and moves the position itself.
    if (pos && d.recovered !== true) this.position = pos;
    this.setState('subscribed');
    if (pos && d.recovered === false) this.emit('unrecovered', { reason: d.reason ?? 'unknown', ...pos });
    this.emit('subscribed', { ...(d.recovered === undefined ? {} : { recovered: d.recovered }), ...(d.replayed === undefined ? {} : { replayed: d.replayed }) });
  }

  /** @internal A failed subscribe or client event. */
  failed(error: HeraldError, joining: boolean): void {
    if (joining) this.setState('unsubscribed');
    this.emit('error', error);
  }

  /** @internal A publication or client event: delivered once, in order. */
  receive(msg: ServerMessage): void {
    const { offset, epoch } = msg;
    if (typeof offset === 'number' && typeof epoch === 'string') {
      const at = this.position;
      // Already delivered: a replay overlapping what arrived before a reconnect.
      if (at && at.epoch === epoch && offset <= at.offset) return;
      this.position = { offset, epoch };
    }
    const meta: EventMeta = { event: msg.event ?? '', channel: this.channel, id: msg.id ?? '', timestamp: msg.timestamp ?? 0 };
    if (msg.user_id !== undefined) meta.userId = msg.user_id;
    if (typeof offset === 'number') meta.offset = offset;
    this.dispatch(msg.data, meta);
  }

  /** @internal A presence change, applied idempotently. */
  presence(event: string | null | undefined, data: unknown): void {
    const d = (data ?? {}) as { members?: { user_id: unknown; info?: unknown }[]; user_id?: unknown; info?: unknown };
    if (event === 'sync' && Array.isArray(d.members)) {
      this.members.clear();
      for (const m of d.members) this.members.set(String(m.user_id), m.info ?? null);
      this.emit('members', this.members);
      return;
    }
    const userId = String(d.user_id);
    if (event === 'joined' && !this.members.has(userId)) {
      this.members.set(userId, d.info ?? null);
      this.emit('joined', { userId, info: d.info ?? null });
    } else if (event === 'left' && this.members.has(userId)) {
      const info = this.members.get(userId);
      this.members.delete(userId);
      this.emit('left', { userId, info });
    }
  }
}
