// The same app as vue-app.js, with @herald/client/react.
import { createElement as h, useState } from 'react';
import { createRoot } from 'react-dom/client';
import { Herald } from '@herald/client';
import { HeraldProvider, useConnectionStatus, usePresence, useRealTimeData } from '@herald/client/react';

const params = new URLSearchParams(location.search);
const client = new Herald({ url: params.get('herald'), key: 'app-key', token: params.get('token') ?? undefined });
window.herald = client;

function Device({ id }) {
  const { data } = useRealTimeData(`devices.${id}`, 'status');
  return h('li', { 'data-device': id }, `${id}: ${data?.state ?? '-'}`);
}
function Room() {
  const { members } = usePresence('presence-room');
  return h('ul', { id: 'members' }, members.map((m) => h('li', { key: m.userId }, m.userId)));
}
function Status() {
  const { status } = useConnectionStatus();
  return h('span', { id: 'status' }, status);
}
function App() {
  const [shown, setShown] = useState(true);
  window.unmountAll = () => setShown(false);
  return h('div', null, h(Status), shown && h('ul', { id: 'devices' }, h(Device, { id: '1' }), h(Device, { id: '2' })), shown && h(Room));
}
createRoot(document.getElementById('app')).render(h(HeraldProvider, { client }, h(App)));
