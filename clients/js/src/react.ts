// React hooks, the same shape as the Vue composables: one client per app (a provider), and
// hooks that hold a channel while the component using them is mounted.
// See docs/client-js.md, "React".
//
//   <HeraldProvider client={herald}><App /></HeraldProvider>
//   const { status, isConnected } = useConnectionStatus()
//   const { data } = useRealTimeData(`devices.${id}`, 'status')

import {
  type ReactNode, createContext, createElement, useContext, useEffect, useRef, useState, useSyncExternalStore,
} from 'react';
import type {
  ConnectionState, ConnectionStatus, EventMeta, Handler, Herald, HeraldError, Member, Subscription,
  SubscriptionState, TransportName,
} from '@herald/client';

const HeraldContext = createContext<Herald | null>(null);

/** Provides `client` to every component below, and connects it. */
export function HeraldProvider({ client, children }: { client: Herald; children?: ReactNode }): ReactNode {
  useEffect(() => {
    client.connect();
  }, [client]);
  return createElement(HeraldContext.Provider, { value: client }, children);
}

/** The shared client (from `<HeraldProvider>`). */
export function useHerald(): Herald {
  const client = useContext(HeraldContext);
  if (!client) throw new Error('no Herald client: wrap the app in <HeraldProvider client={…}>');
  return client;
}

/** The connection as a UI shows it; `isConnected` on any transport. */
export function useConnectionStatus(): {
  status: ConnectionStatus; state: ConnectionState; transport: TransportName | null; isConnected: boolean; error: HeraldError | null;
} {
  const client = useHerald();
  const status = useSyncExternalStore((fn) => client.on('status', fn), () => client.status);
  const [error, setError] = useState<HeraldError | null>(null);
  useEffect(() => {
    const offs = [client.on('error', setError), client.on('connected', () => setError(null))];
    return () => offs.forEach((off) => off());
  }, [client]);
  return { status, state: client.state, transport: client.transport, isConnected: client.state === 'connected', error };
}

/**
 * Hold `channel` while the component is mounted (or until the name changes), with `handlers`
 * by event name (`'*'`: every event). The channel is left when no component holds it. The
 * latest `handlers` are called, so they may be inline functions.
 */
export function useChannel(
  channel: string | null | undefined,
  handlers: Record<string, Handler> = {},
  watchSubscription?: (sub: Subscription) => (() => void)[],
): { subscription: Subscription | null; state: SubscriptionState; error: HeraldError | null } {
  const client = useHerald();
  const latest = useRef({ handlers, watchSubscription });
  latest.current = { handlers, watchSubscription };
  const [subscription, setSubscription] = useState<Subscription | null>(null);
  const [state, setState] = useState<SubscriptionState>('unsubscribed');
  const [error, setError] = useState<HeraldError | null>(null);
  useEffect(() => {
    if (!channel) return;
    const sub = client.subscribe(channel);
    setSubscription(sub);
    setState(sub.state);
    const dispatch = (data: unknown, meta: EventMeta) => {
      const h = latest.current.handlers;
      h[meta.event]?.(data, meta);
      h['*']?.(data, meta);
    };
    // bindAll holds the channel even with no handlers; unbinding it on unmount releases it.
    const offs = [sub.bindAll(dispatch), sub.on('state', setState), sub.on('error', setError), ...(latest.current.watchSubscription?.(sub) ?? [])];
    return () => {
      offs.forEach((off) => off());
      setSubscription(null);
    };
  }, [client, channel]);
  return { subscription, state, error };
}

/** A presence channel's members, kept current while the component is mounted. */
export function usePresence(channel: string | null | undefined): {
  members: Member[]; count: number; state: SubscriptionState; error: HeraldError | null;
} {
  const [members, setMembers] = useState<Member[]>([]);
  const { state, error } = useChannel(channel, {}, (sub) => {
    const update = () => setMembers([...sub.members].map(([userId, info]) => ({ userId, info })));
    update();
    return [sub.on('members', update), sub.on('joined', update), sub.on('left', update)];
  });
  return { members, count: members.length, state, error };
}

/** Options of `useRealTimeData`. */
export interface RealTimeDataOptions<T> {
  /** The value before the first event. */
  initial?: T;
  /** Loads the current value (from your backend): at mount, and when publications were
   * missed and cannot be recovered, so the value is never stale. */
  load?: () => Promise<T>;
}

/**
 * The latest value of `event` on `channel`, for dashboards: `data` updates on every event,
 * `meta` says which (its id, server timestamp, offset), `updatedAt` is when it arrived. With
 * `load`, the value is loaded at mount and again whenever events were lost; a loaded value
 * never replaces an event that arrived while it was loading.
 */
export function useRealTimeData<T = unknown>(channel: string | null | undefined, event: string, options: RealTimeDataOptions<T> = {}): {
  data: T | undefined; meta: EventMeta | null; updatedAt: number | null; isConnected: boolean; status: ConnectionStatus; error: HeraldError | null;
} {
  const [value, setValue] = useState<{ data: T | undefined; meta: EventMeta | null; at: number | null }>({ data: options.initial, meta: null, at: null });
  const connection = useConnectionStatus();
  const loader = useRef(options.load);
  loader.current = options.load;
  const set = (data: T, meta: EventMeta | null) => setValue({ data, meta, at: Date.now() });
  // A loaded value never replaces an event that arrived while it was loading.
  const events = useRef(0);
  const load = () => {
    const before = events.current;
    void loader.current?.().then((data) => events.current === before && set(data, null), () => {});
  };
  const { error } = useChannel(channel, {
    [event]: (data, meta) => {
      events.current++;
      set(data as T, meta);
    },
  }, (sub) => [sub.on('unrecovered', load)]);
  useEffect(load, [channel]);
  return { data: value.data, meta: value.meta, updatedAt: value.at, isConnected: connection.isConnected, status: connection.status, error: error ?? connection.error };
}
