// The demo: a todo list and presence on @syncgate/client. Parameters come
// from the URL: ?ws=ws://host/v1/ws&token=<jwt>&device=<id>[&scope=user:alice]
import { SyncClient, indexedDBStorage } from './syncgate.js';

const q = new URLSearchParams(location.search);
const device = q.get('device') ?? 'browser';
const scope = q.get('scope') ?? 'user:alice';
const $ = (id) => document.getElementById(id);

if ('serviceWorker' in navigator) navigator.serviceWorker.register('./sw.js'); // the app loads offline too

const client = new SyncClient({
  url: q.get('ws') ?? `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/ws`,
  token: q.get('token') ?? '',
  deviceId: device,
  scope,
  storage: indexedDBStorage(`syncgate-demo-${device}`),
  backoff: { initialMs: 200, maxMs: Number(q.get('maxBackoff') ?? 5000) },
  client: { platform: 'web', appVersion: 'demo-1' },
});
window.syncgate = client; // for the tests

const todos = client.collection('todos');
todos.subscribe((docs) => {
  const list = $('list');
  list.replaceChildren(
    ...[...docs]
      .sort(([, a], [, b]) => (a.created ?? 0) - (b.created ?? 0))
      .map(([id, t]) => {
        const li = document.createElement('li');
        li.dataset.id = id;
        li.className = t.done ? 'done' : '';
        const box = document.createElement('input');
        box.type = 'checkbox';
        box.checked = !!t.done;
        box.onchange = () => todos.patch(id, { set: { done: box.checked } });
        const span = document.createElement('span');
        span.textContent = t.title;
        li.append(box, span);
        return li;
      }),
  );
});

client.on('status', (s) => {
  const el = $('status');
  el.dataset.state = s.state;
  el.textContent = s.state + (s.pending ? ` · ${s.pending} pending` : '');
});

$('add').onsubmit = (e) => {
  e.preventDefault();
  const title = $('title').value.trim();
  if (!title) return;
  todos.put(`${device}-${Date.now().toString(36)}`, { title, done: false, created: Date.now() });
  $('title').value = '';
};

const room = client.presence.join('todos', { state: { name: device } });
$('title').addEventListener('input', () => room.typing());
room.on('change', (members) => {
  $('avatars').replaceChildren(
    ...members.map((m) => {
      const a = document.createElement('div');
      a.className = 'avatar' + (m.typing ? ' typing' : '');
      a.dataset.device = m.device;
      a.title = m.device + (m.id === room.you ? ' (you)' : '');
      a.textContent = m.device.slice(0, 2).toUpperCase();
      return a;
    }),
  );
  const typing = members.filter((m) => m.typing && m.id !== room.you).map((m) => m.device);
  $('typing').textContent = typing.length ? `${typing.join(', ')} typing…` : '';
});
document.addEventListener('visibilitychange', () => client.presence.setState(document.hidden ? 'background' : 'active'));
