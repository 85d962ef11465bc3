import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { IDBFactory } from 'fake-indexeddb';
import { indexedDBStorage, memoryStorage, type Storage } from '../../src/storage.js';
import { Replica } from '../../src/replica.js';

const adapters: [string, () => { open: () => Storage }][] = [
  ['memory', () => { const s = memoryStorage(); return { open: () => s }; }],
  ['indexedDB', () => { const f = new IDBFactory(); return { open: () => indexedDBStorage('t', f) }; }],
];

for (const [name, make] of adapters) {
  test(`${name}: writes are batches; a reopened store has them`, async () => {
    const env = make();
    const s = env.open();
    await s.write([{ key: 'a', value: { x: 1 } }, { key: 'b', value: [1, 2] }, { key: 'c', value: 3 }]);
    await s.write([{ key: 'c' }, { key: 'a', value: { x: 2 } }]);
    s.close?.();
    const all = await env.open().load();
    assert.deepEqual(Object.fromEntries(all), { a: { x: 2 }, b: [1, 2] });
  });

  test(`${name}: the replica and queue survive a reload`, async () => {
    const env = make();
    const r = await Replica.open(env.open(), 'phone');
    r.applyChanges({ type: 'changes', scope: 'user:a', from: 0, to: 1, head: 1,
      entries: [{ seq: 1, col: 'c', id: 'x', version: 1, op: 'put', state: { a: 1 } }] });
    r.enqueue({ scope: 'user:a', col: 'c', id: 'y', op: 'put', data: { b: 2 } });
    await r.flush();
    const again = await Replica.open(env.open(), 'phone');
    assert.equal(again.checkpoint('user:a'), 1);
    assert.deepEqual(again.view('user:a', 'c', 'x')?.state, { a: 1 });
    assert.deepEqual(again.view('user:a', 'c', 'y')?.state, { b: 2 });
    assert.equal(again.unacked().length, 1);
  });
}

test('memory: values are copies, not shared references', async () => {
  const s = memoryStorage();
  const v = { a: [1] };
  await s.write([{ key: 'k', value: v }]);
  v.a.push(2);
  assert.deepEqual((await s.load()).get('k'), { a: [1] });
});
