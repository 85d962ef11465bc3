// npm run bench: the local replica's speed, in one run.
//   1. apply 10,000 incoming changes (100 pages of 100) to the replica, with
//      20 pending local edits to rebase under, persisting to IndexedDB
//      (fake-indexeddb in Node) — against the same pages written straight
//      to the storage, the floor any replica must pay;
//   2. start up from IndexedDB holding 10,000 documents: Replica.open plus
//      the first full read of the collection.
import { IDBFactory } from 'fake-indexeddb';
import { Replica } from '../../src/replica.js';
import { indexedDBStorage } from '../../src/storage.js';
import type { ChangesMsg } from '../../src/types.js';

const N = 10_000;
const PAGE = 100;
const scope = 'user:bench';

function page(p: number): ChangesMsg {
  const entries = Array.from({ length: PAGE }, (_, i) => {
    const seq = p * PAGE + i + 1;
    return { seq, col: 'todos', id: `t${seq}`, version: 1, op: 'put' as const, state: { title: `todo ${seq}`, done: seq % 2 === 0, n: seq } };
  });
  return { type: 'changes', scope, from: p * PAGE, to: (p + 1) * PAGE, head: N, entries };
}

async function main() {
  const pages = Array.from({ length: N / PAGE }, (_, p) => page(p));

  // Baseline: the same documents written to storage, one batch per page.
  const raw = indexedDBStorage('raw', new IDBFactory());
  let t = performance.now();
  for (const pg of pages) await raw.write(pg.entries.map((e) => ({ key: `d\u0000${scope}\u0000todos\u0000${e.id}`, value: { version: e.version, state: e.state } })));
  const rawMs = performance.now() - t;

  const factory = new IDBFactory();
  const r = await Replica.open(indexedDBStorage('bench', factory), 'bench');
  for (let i = 0; i < 20; i++) r.enqueue({ scope, col: 'todos', id: `t${i * 7}`, op: 'patch', set: { done: true } });
  t = performance.now();
  for (const pg of pages) r.applyChanges(pg);
  const memMs = performance.now() - t;
  await r.flush();
  const applyMs = performance.now() - t;

  t = performance.now();
  const again = await Replica.open(indexedDBStorage('bench', factory), 'bench');
  const openMs = performance.now() - t;
  let live = 0;
  for (const id of again.ids(scope, 'todos')) if (again.view(scope, 'todos', id)?.state) live++;
  const startupMs = performance.now() - t;

  const fmt = (n: number) => Math.round(n).toLocaleString('en');
  console.log(`apply ${N} changes (with 20 pending edits): ${fmt(N / (applyMs / 1000))} changes/s persisted (${fmt(applyMs)} ms; in memory ${fmt(N / (memMs / 1000))}/s)`);
  console.log(`baseline, the same pages written straight to storage: ${fmt(N / (rawMs / 1000))} docs/s (${fmt(rawMs)} ms) -> replica/raw ${(rawMs / applyMs).toFixed(2)}`);
  console.log(`startup from IndexedDB with ${again.size(scope)} documents: open ${fmt(openMs)} ms, first full read of ${live} docs ${fmt(startupMs)} ms total`);
}

await main();
