import { strict as assert } from 'node:assert';
import { after, afterEach, before, test } from 'node:test';
import { SyncClient, memoryStorage, type Conflict, type Status } from '../../src/index.js';
import { startServer, until, type Server } from './server.js';

// The real client against a real `syncgate serve` (embedded store), over
// real sockets. Collections: todos and counters merge per field (LWW,
// counters by increment); notes is manual (conflicts wait for a person).

const config = `
collections:
  notes: { resolver: manual }
  "*": { resolver: lww }
media:
  part_bytes: 65536
auth:
  leeway: 1s # so the short-lived tokens of the refresh test expire soon
presence: # confirmed checkpoints reach the support API at each heartbeat
  heartbeat: 1s
  ttl: 5s
`;

let srv: Server;
before(async () => {
  srv = await startServer({ config });
});
after(async () => {
  await srv?.stop();
});

const scope = 'user:alice';

// Every client a test made is disconnected after it, passed or failed: a
// client left running reconnects forever and keeps the test process alive.
const clients = new Set<SyncClient>();
afterEach(async () => {
  await Promise.all([...clients].map((c) => c.disconnect()));
  clients.clear();
});

async function client(device: string, o: Partial<ConstructorParameters<typeof SyncClient>[0]> = {}): Promise<SyncClient> {
  const c = new SyncClient({ url: srv.ws, token: () => srv.token('alice', { device }), deviceId: device, scope, backoff: { initialMs: 50, maxMs: 500 }, ...o });
  clients.add(c);
  await c.ready;
  return c;
}

const synced = (c: SyncClient) => until(`${c.deviceId} synced`, () => c.getStatus().state === 'synced' && c.getStatus().pending === 0);

/** The server's state of a scope, read over the HTTP fallback by a fresh device. */
async function serverDocs(col: string, device = 'reader'): Promise<Map<string, Record<string, unknown>>> {
  const out = new Map<string, Record<string, unknown>>();
  let since = 0;
  for (;;) {
    const res = await fetch(srv.url + '/v1/sync/pull', {
      method: 'POST',
      headers: { Authorization: `Bearer ${srv.token('alice', { device })}` },
      body: JSON.stringify({ device, scope, since }),
    });
    const ch = (await res.json()) as { entries: { col: string; id: string; state?: Record<string, unknown>; deleted?: boolean }[]; to: number; more?: boolean };
    for (const e of ch.entries) {
      if (e.col !== col) continue;
      if (e.deleted) out.delete(e.id);
      else out.set(e.id, e.state!);
    }
    since = ch.to;
    if (!ch.more) return out;
  }
}

test('two clients go offline, edit, reconnect and converge', async () => {
  const a = await client('phone');
  const b = await client('laptop');
  const ta = a.collection<{ title: string; done?: boolean; views?: number }>('todos');
  const tb = b.collection<{ title: string; done?: boolean; views?: number }>('todos');
  ta.put('t1', { title: 'milk', views: 0 });
  await synced(a);
  await until('b sees t1', () => tb.get('t1')?.title === 'milk');
  await Promise.all([a.disconnect(), b.disconnect()]);
  assert.equal(a.getStatus().state, 'offline');

  // Offline on both: edits apply locally at once.
  ta.patch('t1', { set: { done: true }, inc: { views: 1 } });
  tb.patch('t1', { set: { title: 'oat milk' }, inc: { views: 1 } });
  ta.put('a-only', { title: 'from the phone' });
  tb.put('b-only', { title: 'from the laptop' });
  assert.equal(ta.get('t1')?.done, true);
  assert.equal(tb.get('t1')?.title, 'oat milk');
  assert.equal(a.getStatus().pending, 2);

  const statesA: Status['state'][] = [];
  a.on('status', (s) => statesA.push(s.state));
  a.connect();
  b.connect();
  await Promise.all([synced(a), synced(b)]);
  await until('convergence', () => JSON.stringify([...ta.all()].sort()) === JSON.stringify([...tb.all()].sort()));
  assert.deepEqual(ta.get('t1'), { title: 'oat milk', done: true, views: 2 }, 'field-level merge; increments count once each');
  assert.ok(ta.get('a-only') && tb.get('b-only'));
  assert.ok(statesA.includes('connecting') && statesA.includes('synced'), `status went ${statesA}`);
});

test('1,000 queued mutations are replayed in order, exactly once, after a crash', async () => {
  const storage = memoryStorage();
  const a = await client('tablet', { storage, autoConnect: false });
  const counters = a.collection<{ n: number; last: number }>('counters');
  counters.put('c', { n: 0, last: -1 });
  for (let i = 0; i < 1000; i++) counters.patch('c', { inc: { n: 1 }, set: { last: i } });
  assert.deepEqual(counters.get('c'), { n: 1000, last: 999 });
  await a.flush();
  assert.equal(a.getStatus().pending, 1001);
  // What a crash right after the push (before any ack was saved) leaves.
  const crashed = memoryStorage(new Map(storage.data));
  a.connect();
  await synced(a);
  await a.disconnect();
  // The "restarted" device sends the same 1,001 mids again: answered from
  // receipts, applied nothing twice.
  const again = await client('tablet', { storage: crashed });
  const rejected: string[] = [];
  again.on('rejected', (r) => rejected.push(r.code));
  await synced(again);
  await again.disconnect();
  assert.deepEqual(rejected, []);
  const docs = await serverDocs('counters');
  assert.deepEqual(docs.get('c'), { n: 1000, last: 999 });
});

test('a manual conflict is raised and resolved', async () => {
  const a = await client('desk');
  const b = await client('pad');
  const na = a.collection<{ text: string }>('notes');
  const nb = b.collection<{ text: string }>('notes');
  na.put('n1', { text: 'v1' });
  await synced(a);
  await until('b has n1', () => nb.get('n1')?.text === 'v1');
  await b.disconnect();
  na.put('n1', { text: 'from the desk' });
  await synced(a);
  nb.put('n1', { text: 'from the pad' }); // made offline, on v1
  const conflicts: Conflict[] = [];
  b.on('conflict', (c) => conflicts.push(c));
  b.connect();
  await until('the conflict', () => conflicts.length > 0);
  const c = conflicts[0]!;
  assert.equal(c.docId, 'n1');
  assert.deepEqual(c.theirs, { text: 'from the desk' });
  assert.equal(c.mine.data?.text, 'from the pad');
  await until('b shows the server version while the conflict is open', () => nb.get('n1')?.text === 'from the desk');
  await b.resolveConflict(c.id, { text: 'from the desk + from the pad' });
  await Promise.all([synced(a), synced(b)]);
  await until('both show the resolution', () => na.get('n1')?.text === 'from the desk + from the pad' && nb.get('n1')?.text === na.get('n1')?.text);
  await until('the record is closed', () => b.openConflicts().length === 0);
});

test('a reset (support resync) re-downloads and keeps pending edits', async () => {
  const a = await client('watch');
  const todos = a.collection<{ title: string }>('todos');
  for (let i = 0; i < 20; i++) todos.put(`r${i}`, { title: `r${i}` });
  await synced(a);
  const before = todos.all().size;
  const progress: number[] = [];
  a.on('status', (s) => s.progress && progress.push(s.progress.received));
  const res = await fetch(`${srv.url}/v1/support/devices/watch/resync?user=alice`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${srv.token('root', { roles: ['admin'] })}` },
  });
  assert.equal(res.status, 200, await res.text());
  todos.put('during', { title: 'made during the resync' });
  await until('re-downloaded', () => todos.all().size === before + 1 && a.getStatus().state === 'synced');
  assert.equal(todos.get('during')?.title, 'made during the resync');
  assert.ok(progress.includes(0), `the re-download started from 0: ${progress}`);
  await a.disconnect();
  assert.equal((await serverDocs('todos')).get('during')?.title, 'made during the resync');
});

test('media: a resumable upload queued offline; the document is pushed after it completes', async () => {
  const a = await client('camera', { autoConnect: false });
  const photos = a.collection<{ caption: string; photo: { $media: string } }>('photos');
  const bytes = new Uint8Array(200_000).map((_, i) => (i * 31) % 251);
  const progress: number[] = [];
  const up = await a.media.upload(new Blob([bytes], { type: 'image/png' }), { onProgress: (sent) => progress.push(sent) });
  photos.put('p1', { caption: 'sunset', photo: up.ref });
  assert.ok(up.ref.$media.startsWith('local:'));
  a.connect();
  const info = await up.done;
  assert.equal(info.size, bytes.length);
  assert.deepEqual(progress.at(-1), bytes.length);
  assert.ok(progress.length >= 4, `progress after each 64 KiB part: ${progress}`);
  await synced(a);
  assert.equal(photos.get('p1')?.photo.$media, info.id, 'the ref was rewritten to the server id');
  const stored = await serverDocs('photos');
  assert.deepEqual(stored.get('p1'), { caption: 'sunset', photo: { $media: info.id } });
  const back = new Uint8Array(await (await a.media.download(info.id)).arrayBuffer());
  assert.deepEqual(back, bytes);
});

test('token refresh: a connection outlives several short-lived tokens without a reconnect', async () => {
  // Tokens live 8 s (9 s with the leeway); the client refreshes 5 s before
  // the end, so over 13 s it sends auth at least twice. Without a refresh
  // the server closes at 9 s with token_expired.
  let minted = 0;
  const c = await client('refresher', {
    token: () => {
      minted++;
      return srv.token('alice', { device: 'refresher', ttl: '8s' });
    },
  });
  const todos = c.collection<{ title: string }>('todos');
  let closes = 0;
  c.on('status', (s) => s.state === 'offline' && closes++);
  await synced(c);
  await new Promise((r) => setTimeout(r, 13_000));
  todos.put('after-refresh', { title: 'written on the refreshed connection' });
  await synced(c);
  assert.equal(closes, 0, `the connection closed: ${JSON.stringify(c.getStatus().lastClose)}`);
  assert.ok(minted >= 3, `tokens minted: ${minted} (hello and two refreshes at least)`);
  assert.equal((await serverDocs('todos')).get('after-refresh')?.title, 'written on the refreshed connection');
});

test('HTTP fallback: with WebSocket blocked, push and pull go over HTTP', async () => {
  class Blocked {
    readyState = 3;
    onopen = null;
    onmessage = null;
    onclose: ((e: { code: number; reason: string }) => void) | null = null;
    onerror = null;
    constructor() {
      setTimeout(() => this.onclose?.({ code: 1006, reason: 'blocked' }), 5);
    }
    send() {}
    close() {}
  }
  const a = await client('kiosk', { WebSocket: Blocked as never, httpFallbackAfter: 1 });
  const todos = a.collection<{ title: string }>('todos');
  todos.put('via-http', { title: 'no socket' });
  await until('pushed over HTTP', () => a.getStatus().pending === 0 && a.getStatus().http === true);
  const b = await client('reader2');
  const tb = b.collection<{ title: string }>('todos');
  await until('a socket client sees it', () => tb.get('via-http')?.title === 'no socket');
  // And the other way: a change made elsewhere reaches the HTTP client.
  tb.put('to-http', { title: 'from a socket' });
  await until('pulled over HTTP', () => todos.get('to-http')?.title === 'from a socket', 15_000);
});

test('presence: rooms, awareness state and typing between two clients', async () => {
  const a = await client('p-a');
  const b = await client('p-b');
  const ra = a.presence.join('doc:1', { state: { cursor: 1 } });
  const rb = b.presence.join('doc:1');
  await until('a sees b', () => ra.others().length === 1);
  await until('b sees a with its state', () => JSON.stringify(rb.others()[0]?.state) === '{"cursor":1}');
  ra.setState({ cursor: 7 });
  await until('b sees the new state', () => JSON.stringify(rb.others()[0]?.state) === '{"cursor":7}');
  ra.typing();
  await until('b sees a typing', () => rb.others()[0]?.typing === true);
  a.presence.setState('background');
  await b.disconnect();
  await until('a sees b leave', () => ra.others().length === 0);
  b.connect();
  await until('b is back (re-joined by itself)', () => ra.others().length === 1);
});

test('checkpoints: a device that only receives live changes confirms them (support sync lag)', async () => {
  const w = await client('writer9');
  const r = await client('reader9', { checkpointDelayMs: 100 });
  const tw = w.collection<{ n: number }>('lag');
  const tr = r.collection<{ n: number }>('lag');
  await synced(r);
  for (let i = 0; i < 5; i++) tw.put(`l${i}`, { n: i });
  await until('live delivery', () => tr.all().size === 5);
  const staff = srv.token('staff', { roles: ['support'] });
  await until('the reader shows no lag', async () => {
    const res = await fetch(`${srv.url}/v1/support/users/alice`, { headers: { Authorization: `Bearer ${staff}` } });
    const u = (await res.json()) as { devices: { device: string; scopes: { scope: string; lagEntries: number; head: number }[] }[] };
    const d = u.devices.find((x) => x.device === 'reader9');
    const sc = d?.scopes.find((x) => x.scope === scope);
    return !!sc && sc.head > 0 && sc.lagEntries === 0;
  }, 15_000);
});
