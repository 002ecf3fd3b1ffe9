// The fleet dashboard: one tile per device, each a component holding its channel with
// useRealTimeData; a header with the connection badge, the updates received, and the
// publish-to-screen latency measured on every update after the DOM has changed.
import { computed, createApp, defineComponent, h, reactive, watch } from 'vue';
import { createHerald, useConnectionStatus, useRealTimeData } from '@herald/client/vue';

const { herald: url, key, devices, backend } = window.FLEET;
const plugin = createHerald({ url, key });
window.herald = plugin.client;

// What the header shows, fed by every tile.
const fleet = reactive({ updates: 0, states: {}, latencies: [] });
function record(latency) {
  fleet.updates++;
  fleet.latencies.push(latency);
  if (fleet.latencies.length > 500) fleet.latencies.shift();
}
const percentile = (xs, p) => {
  if (!xs.length) return null;
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
};

// Every device's current state from the backend, in one request shared by all tiles: loaded
// at start, and again (at most once a second) if a tile ever misses events it cannot recover.
let snapshot = null;
function loadDevice(id) {
  if (!snapshot) {
    snapshot = fetch(`${backend}/fleet`).then((r) => r.json());
    setTimeout(() => { snapshot = null; }, 1000);
  }
  return snapshot.then((s) => s.devices[id]);
}

const Tile = defineComponent({
  props: { id: { type: Number, required: true } },
  setup(props) {
    const { data, meta } = useRealTimeData(() => `devices.${props.id}`, 'status', { load: () => loadDevice(props.id) });
    // After the DOM shows the new state: the server's timestamp to now is publish-to-screen.
    watch(data, (d) => { fleet.states[props.id] = d?.state; });
    watch(meta, (m) => m && record(Date.now() - m.timestamp), { flush: 'post' });
    return () => {
      const d = data.value;
      return h('div', {
        class: ['tile', d?.state ?? 'unknown'],
        'data-device': props.id,
        'data-offset': meta.value?.offset ?? 0,
        title: d ? `device ${props.id}: ${d.state}, battery ${d.battery}%` : `device ${props.id}: no report yet`,
      }, [h('b', String(props.id)), h('span', d ? d.state : '…'), h('small', d ? `${d.battery}%` : '')]);
    };
  },
});

const Badge = defineComponent({
  setup() {
    const { status } = useConnectionStatus();
    return () => h('span', { id: 'status', class: ['badge', status.value] }, status.value);
  },
});

const App = defineComponent({
  setup() {
    const counts = computed(() => {
      const c = {};
      for (const s of Object.values(fleet.states)) c[s] = (c[s] ?? 0) + 1;
      return c;
    });
    const p50 = computed(() => percentile(fleet.latencies, 50));
    const p99 = computed(() => percentile(fleet.latencies, 99));
    return () => h('main', [
      h('header', [
        h('h1', 'Device fleet'),
        h(Badge),
        h('span', { class: 'stat' }, [h('b', { id: 'devices' }, String(devices)), ' devices']),
        h('span', { class: 'stat' }, [h('b', { id: 'updates' }, String(fleet.updates)), ' updates']),
        h('span', { class: 'stat' }, ['publish → screen ', h('b', { id: 'latency' }, p50.value === null ? '–' : `${p50.value} ms`), ' p50, ',
          h('b', p99.value === null ? '–' : `${p99.value} ms`), ' p99']),
        h('span', { class: 'states' }, Object.entries(counts.value).sort().map(([s, n]) => h('span', { class: ['pill', s] }, `${s} ${n}`))),
      ]),
      h('section', { id: 'grid' }, Array.from({ length: devices }, (_, id) => h(Tile, { id, key: id }))),
    ]);
  },
});

createApp(App).use(plugin).mount('#app');
