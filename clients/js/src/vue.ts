// Vue 3 composables: one client per app (provide/inject), and composables that hold a channel
// while the component using them is mounted. See docs/client-js.md, "Vue".
//
//   app.use(createHerald({ url, key, getToken }))
//   const { status, isConnected } = useConnectionStatus()
//   const { data } = useRealTimeData(() => `devices.${props.id}`, 'status')

import {
  type App, type InjectionKey, type MaybeRefOrGetter, type Ref, type ShallowRef,
  computed, inject, onScopeDispose, ref, shallowRef, toValue, watch,
} from 'vue';
import {
  type ConnectionState, type ConnectionStatus, type EventMeta, type Handler, Herald, type HeraldError, type HeraldOptions,
  type Member, type Subscription, type SubscriptionState, type TransportName,
} from '@herald/client';

/** The injection key of the shared client. */
export const HeraldKey: InjectionKey<Herald> = Symbol('herald');

/** A Vue plugin that provides one client to every component and connects it. */
export function createHerald(options: HeraldOptions | Herald): { client: Herald; install(app: App): void } {
  const client = options instanceof Herald ? options : new Herald(options);
  return {
    client,
    install(app) {
      app.provide(HeraldKey, client);
      client.connect();
    },
  };
}

/** The shared client (from `app.use(createHerald(…))`). */
export function useHerald(): Herald {
  const client = inject(HeraldKey, null);
  if (!client) throw new Error('no Herald client: install it with app.use(createHerald(options))');
  return client;
}

/** The connection as a UI shows it; `isConnected` on any transport. */
export function useConnectionStatus(): {
  status: Ref<ConnectionStatus>; state: Ref<ConnectionState>; transport: Ref<TransportName | null>;
  isConnected: Ref<boolean>; error: ShallowRef<HeraldError | null>;
} {
  const client = useHerald();
  const status = ref(client.status);
  const state = ref(client.state);
  const transport = ref(client.transport);
  const error = shallowRef<HeraldError | null>(null);
  const offs = [
    client.on('status', (s) => {
      status.value = s;
      transport.value = client.transport;
    }),
    client.on('state', (s) => {
      state.value = s.current;
      if (s.current === 'connected') error.value = null;
    }),
    client.on('error', (e) => (error.value = e)),
  ];
  onScopeDispose(() => offs.forEach((off) => off()));
  return { status, state, transport, isConnected: computed(() => state.value === 'connected'), error };
}

/**
 * Hold `channel` while the component is mounted (or until the name changes), with `handlers`
 * by event name (`'*'`: every event). The channel is left when no component holds it.
 */
export function useChannel(
  channel: MaybeRefOrGetter<string | null | undefined>,
  handlers: Record<string, Handler> = {},
  watchSubscription?: (sub: Subscription) => (() => void)[],
): { subscription: ShallowRef<Subscription | null>; state: Ref<SubscriptionState>; error: ShallowRef<HeraldError | null> } {
  const client = useHerald();
  const subscription = shallowRef<Subscription | null>(null);
  const state = ref<SubscriptionState>('unsubscribed');
  const error = shallowRef<HeraldError | null>(null);
  watch(
    () => toValue(channel),
    (name, _, onCleanup) => {
      subscription.value = null;
      state.value = 'unsubscribed';
      if (!name) return;
      const sub = client.subscribe(name);
      subscription.value = sub;
      state.value = sub.state;
      const offs = [
        // Holds the channel even with no handlers; unbinding it on unmount releases it.
        sub.bindAll((data, meta) => {
          handlers[meta.event]?.(data, meta);
          handlers['*']?.(data, meta);
        }),
        sub.on('state', (s) => (state.value = s)),
        sub.on('error', (e) => (error.value = e)),
        ...(watchSubscription?.(sub) ?? []),
      ];
      onCleanup(() => offs.forEach((off) => off()));
    },
    { immediate: true },
  );
  return { subscription, state, error };
}

/** A presence channel's members, kept current while the component is mounted. */
export function usePresence(channel: MaybeRefOrGetter<string | null | undefined>): {
  members: ShallowRef<Member[]>; count: Ref<number>; state: Ref<SubscriptionState>; error: ShallowRef<HeraldError | null>;
} {
  const members = shallowRef<Member[]>([]);
  const { state, error } = useChannel(channel, {}, (sub) => {
    const update = () => (members.value = [...sub.members].map(([userId, info]) => ({ userId, info })));
    update();
    return [sub.on('members', update), sub.on('joined', update), sub.on('left', update)];
  });
  return { members, count: computed(() => members.value.length), state, error };
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
export function useRealTimeData<T = unknown>(
  channel: MaybeRefOrGetter<string | null | undefined>,
  event: string,
  options: RealTimeDataOptions<T> = {},
): {
  data: ShallowRef<T | undefined>; meta: ShallowRef<EventMeta | null>; updatedAt: Ref<number | null>; isConnected: Ref<boolean>;
  status: Ref<ConnectionStatus>; error: ShallowRef<HeraldError | null>;
} {
  const data = shallowRef<T | undefined>(options.initial);
  const meta = shallowRef<EventMeta | null>(null);
  const updatedAt = ref<number | null>(null);
  const connection = useConnectionStatus();
  const set = (value: T, from: EventMeta | null) => {
    data.value = value;
    meta.value = from;
    updatedAt.value = Date.now();
  };
  // A loaded value never replaces an event that arrived while it was loading.
  let events = 0;
  const load = () => {
    const before = events;
    void options.load?.().then((value) => events === before && set(value, null), () => {});
  };
  const { error } = useChannel(channel, { [event]: (value, from) => {
    events++;
    set(value as T, from);
  } }, (sub) => [sub.on('unrecovered', load)]);
  load();
  return { data, meta, updatedAt, isConnected: connection.isConnected, status: connection.status, error: computed(() => error.value ?? connection.error.value) };
}
