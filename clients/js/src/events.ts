// Two kinds of listeners, kept apart so names never collide:
// - `on(name, fn)`: Herald's own lifecycle events (state, subscribed, joined, …), typed;
// - `bind(event, fn)`: the application's events, by name, plus `bindAll` for every one.

/** Where an application event came from. */
export interface EventMeta {
  /** The event name. */
  event: string;
  /** The channel, or null for a message sent to this user or connection alone. */
  channel: string | null;
  /** The message id (the same on every channel of one publish). */
  id: string;
  /** Milliseconds since the epoch when the server created the message. */
  timestamp: number;
  /** The sender, on client events. */
  userId?: string;
  /** The publication's position, on channels with history. */
  offset?: number;
}

/** A listener for application events. */
export type Handler = (data: unknown, meta: EventMeta) => void;

/** Removes the listener it was returned for. */
export type Unbind = () => void;

// A listener's exception must not break the client: it is rethrown on its own, later, where
// the runtime reports it (the console, `uncaughtException`).
function call<A extends unknown[]>(fn: (...args: A) => void, args: A): void {
  try {
    fn(...args);
  } catch (e) {
    setTimeout(() => {
      throw e;
    });
  }
}

/** The listener registry shared by the client (direct messages) and each subscription. */
export class Events<Lifecycle extends object> {
  /** Lifecycle listeners by name. */
  private lifecycle = new Map<keyof Lifecycle, Set<(v: never) => void>>();
  /** Application listeners by event name; `''` holds the catch-all ones. */
  private handlers = new Map<string, Set<Handler>>();

  /** Listen to a lifecycle event; returns the function that stops listening. */
  on<K extends keyof Lifecycle>(name: K, fn: (value: Lifecycle[K]) => void): Unbind {
    return this.add(this.lifecycle, name, fn);
  }

  /** Stop listening to a lifecycle event. */
  off<K extends keyof Lifecycle>(name: K, fn: (value: Lifecycle[K]) => void): void {
    this.remove(this.lifecycle, name, fn);
  }

  /** Listen to the application event `event`; returns the function that unbinds it. */
  bind(event: string, fn: Handler): Unbind {
    return this.add(this.handlers, event, fn);
  }

  /** Listen to every application event. */
  bindAll(fn: Handler): Unbind {
    return this.add(this.handlers, '', fn);
  }

  /** Unbind `fn` from `event`; without `fn`, every listener of `event`; without either, all. */
  unbind(event?: string, fn?: Handler): void {
    if (event === undefined) {
      const had = this.handlers.size > 0;
      this.handlers.clear();
      if (had) this.released();
    } else if (fn) this.remove(this.handlers, event, fn);
    else if (this.handlers.delete(event)) this.released();
  }

  /** How many application listeners are bound. */
  protected listeners(): number {
    let n = 0;
    for (const set of this.handlers.values()) n += set.size;
    return n;
  }

  /** Called after an application listener is unbound (a subscription leaves when none is
   * left). Lifecycle listeners come and go without this: waiting for one event must not
   * leave a channel. */
  protected released(): void {}

  protected emit<K extends keyof Lifecycle>(name: K, value: Lifecycle[K]): void {
    for (const fn of [...(this.lifecycle.get(name) ?? [])]) call(fn as (v: Lifecycle[K]) => void, [value]);
  }

  protected dispatch(data: unknown, meta: EventMeta): void {
    for (const key of [meta.event, '']) {
      for (const fn of [...(this.handlers.get(key) ?? [])]) call(fn, [data, meta]);
    }
  }

  private add<K, F>(map: Map<K, Set<F>>, key: K, fn: F): Unbind {
    let set = map.get(key);
    if (!set) map.set(key, (set = new Set()));
    set.add(fn);
    return () => this.remove(map, key, fn);
  }

  private remove<K, F>(map: Map<K, Set<F>>, key: K, fn: F): void {
    const set = map.get(key);
    if (set?.delete(fn)) {
      if (!set.size) map.delete(key);
      if (map === (this.handlers as unknown)) this.released();
    }
  }
}
