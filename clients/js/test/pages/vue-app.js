// A Vue app built on @herald/client/vue: device tiles (useRealTimeData), a presence list
// (usePresence), a status badge (useConnectionStatus). `window.unmountAll()` unmounts all but
// the badge, so the test can check that no subscription is left behind.
import { createApp, defineComponent, h, ref } from 'vue';
import { createHerald, useConnectionStatus, usePresence, useRealTimeData } from '@herald/client/vue';

const params = new URLSearchParams(location.search);
const plugin = createHerald({ url: params.get('herald'), key: 'app-key', token: params.get('token') ?? undefined });
window.herald = plugin.client;

const Device = defineComponent({
  props: { id: { type: String, required: true } },
  setup(props) {
    const { data } = useRealTimeData(() => `devices.${props.id}`, 'status');
    return () => h('li', { 'data-device': props.id }, `${props.id}: ${data.value?.state ?? '-'}`);
  },
});
const Room = defineComponent({
  setup() {
    const { members } = usePresence('presence-room');
    return () => h('ul', { id: 'members' }, members.value.map((m) => h('li', m.userId)));
  },
});
const Status = defineComponent({
  setup() {
    const { status } = useConnectionStatus();
    return () => h('span', { id: 'status' }, status.value);
  },
});
const App = defineComponent({
  setup() {
    const shown = ref(true);
    window.unmountAll = () => { shown.value = false; };
    return () => h('div', [h(Status), ...(shown.value ? [h('ul', { id: 'devices' }, [h(Device, { id: '1' }), h(Device, { id: '2' })]), h(Room)] : [])]);
  },
});
createApp(App).use(plugin).mount('#app');
