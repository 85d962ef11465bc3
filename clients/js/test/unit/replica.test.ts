import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { Replica } from '../../src/replica.js';
import { memoryStorage } from '../../src/storage.js';
import type { ChangesMsg, Mutation } from '../../src/types.js';

const S = 'user:alice';

function changes(from: number, to: number, entries: ChangesMsg['entries']): ChangesMsg {
  return { type: 'changes', scope: S, from, to, head: to, entries };
}

test('queue: mids strictly increase and survive a reload', async () => {
  const st = memoryStorage();
  const r = await Replica.open(st, 'phone');
  const mids = [1, 2, 3].map((i) => r.enqueue({ scope: S, col: 'todos', id: `t${i}`, op: 'put', data: { i } }).mid);
  assert.deepEqual(mids, [1, 2, 3]);
  await r.flush();
  const again = await Replica.open(st, 'other-id');
  assert.equal(again.deviceId, 'phone', 'the stored device id wins');
  assert.deepEqual(again.unacked().map((m) => m.mid), [1, 2, 3]);
  assert.equal(again.enqueue({ scope: S, col: 'todos', id: 'x', op: 'delete' }).mid, 4);
  again.raiseMid(10);
  assert.equal(again.enqueue({ scope: S, col: 'todos', id: 'y', op: 'delete' }).mid, 11, 'mids continue above the server\'s last');
});

test('rebase: server changes land under pending edits', async () => {
  const r = await Replica.open(memoryStorage(), 'phone');
  r.applyChanges(changes(0, 1, [{ seq: 1, col: 'todos', id: 't1', version: 1, op: 'put', state: { title: 'milk', done: false, n: 1 } }]));
  r.enqueue({ scope: S, col: 'todos', id: 't1', op: 'patch', set: { done: true }, inc: { n: 2 } });
  assert.deepEqual(r.view(S, 'todos', 't1')?.state, { title: 'milk', done: true, n: 3 });
  // Another device renames it: the pending patch stays on top.
  r.applyChanges(changes(1, 2, [{ seq: 2, col: 'todos', id: 't1', version: 2, op: 'put', state: { title: 'oat milk', done: false, n: 1 } }]));
  assert.deepEqual(r.view(S, 'todos', 't1')?.state, { title: 'oat milk', done: true, n: 3 });
  assert.equal(r.view(S, 'todos', 't1')?.version, 2);
});

test('ack: applied stays in the view until its entry arrives; merged state replaces the guess', async () => {
  const r = await Replica.open(memoryStorage(), 'phone');
  const a = r.enqueue({ scope: S, col: 'todos', id: 'a', op: 'put', data: { v: 1 } });
  const b = r.enqueue({ scope: S, col: 'todos', id: 'b', op: 'patch', inc: { n: 1 } });
  const failed = r.ack(
    [
      { mid: a.mid, outcome: 'applied', version: 1, seq: 5 },
      { mid: b.mid, outcome: 'merged', version: 3, seq: 6, state: { n: 42 } },
    ],
    () => false,
  );
  assert.deepEqual(failed, []);
  assert.equal(r.unacked().length, 0);
  assert.equal(r.pendingCount(), 2, 'acked but not yet in the server state');
  assert.deepEqual(r.view(S, 'todos', 'a')?.state, { v: 1 });
  assert.deepEqual(r.view(S, 'todos', 'b')?.state, { n: 42 }, 'the resolved state, not the local guess (n: 1)');
  r.applyChanges(changes(0, 6, [
    { seq: 5, col: 'todos', id: 'a', version: 1, op: 'put', state: { v: 1 } },
    { seq: 6, col: 'todos', id: 'b', version: 3, op: 'patch', state: { n: 42 } },
  ]));
  assert.equal(r.pendingCount(), 0);
  assert.deepEqual(r.view(S, 'todos', 'b')?.state, { n: 42 });
});

test('ack: final rejections and conflicts leave the queue, retryable ones stay', async () => {
  const r = await Replica.open(memoryStorage(), 'phone');
  const ms: Mutation[] = [1, 2, 3].map((i) => r.enqueue({ scope: S, col: 'c', id: `d${i}`, op: 'put', data: { i } }));
  const failed = r.ack(
    [
      { mid: ms[0]!.mid, outcome: 'rejected', code: 'bad_op', message: 'x' },
      { mid: ms[1]!.mid, outcome: 'rejected', code: 'unavailable' },
      { mid: ms[2]!.mid, outcome: 'conflict', conflict: 'c1' },
    ],
    (code) => code === 'unavailable',
  );
  assert.deepEqual(failed.map((f) => f.mid), [ms[0]!.mid, ms[2]!.mid]);
  assert.deepEqual(r.unacked().map((m) => m.mid), [ms[1]!.mid]);
  assert.equal(r.view(S, 'c', 'd1'), undefined, 'a rejected put is gone from the view');
});

test('changes: the checkpoint rule (gap, stale, overlap)', async () => {
  const r = await Replica.open(memoryStorage(), 'phone');
  assert.equal(r.applyChanges(changes(3, 5, [])), 'gap');
  assert.equal(r.applyChanges(changes(0, 2, [{ seq: 1, col: 'c', id: 'x', version: 1, op: 'put', state: { a: 1 } }])), 'applied');
  assert.equal(r.applyChanges(changes(0, 2, [])), 'stale');
  // Overlapping page: entries at or below the checkpoint are skipped.
  assert.equal(r.applyChanges(changes(1, 3, [
    { seq: 1, col: 'c', id: 'x', version: 1, op: 'put', state: { a: 'old' } },
    { seq: 3, col: 'c', id: 'y', version: 1, op: 'put', state: { b: 1 } },
  ])), 'applied');
  assert.deepEqual(r.view(S, 'c', 'x')?.state, { a: 1 });
  assert.equal(r.checkpoint(S), 3);
  r.applyChanges(changes(3, 4, [{ seq: 4, col: 'c', id: 'x', version: 2, op: 'delete', deleted: true }]));
  assert.equal(r.view(S, 'c', 'x')?.deleted, true);
});

test('reset drops the replica and keeps pending mutations', async () => {
  const st = memoryStorage();
  const r = await Replica.open(st, 'phone');
  r.applyChanges(changes(0, 2, [{ seq: 2, col: 'c', id: 'x', version: 1, op: 'put', state: { a: 1 } }]));
  const m = r.enqueue({ scope: S, col: 'c', id: 'y', op: 'put', data: { b: 1 } });
  r.reset(S);
  assert.equal(r.checkpoint(S), 0);
  assert.equal(r.view(S, 'c', 'x'), undefined);
  assert.deepEqual(r.unacked().map((q) => q.mid), [m.mid]);
  await r.flush();
  const again = await Replica.open(st, 'phone');
  assert.equal(again.size(S), 0, 'the reset is durable');
  assert.equal(again.unacked().length, 1);
});

test('a crash mid-sync: storage holds either the old or the new state', async () => {
  // A storage that fails the second write, as a crash would cut it.
  const st = memoryStorage();
  let writes = 0;
  const flaky = { ...st, async write(ops: Parameters<typeof st.write>[0]) { if (++writes === 3) throw new Error('crash'); return st.write(ops); } };
  const r = await Replica.open(flaky, 'phone'); // write 1: meta
  r.applyChanges(changes(0, 1, [{ seq: 1, col: 'c', id: 'a', version: 1, op: 'put', state: { a: 1 } }])); // write 2
  r.applyChanges(changes(1, 2, [{ seq: 2, col: 'c', id: 'b', version: 1, op: 'put', state: { b: 1 } }])); // write 3: lost
  await assert.rejects(r.flush(), /crash/, 'flush reports the failed write');
  const after = await Replica.open(st, 'phone');
  assert.equal(after.checkpoint(S), 1, 'the checkpoint did not move past the documents it covers');
  assert.deepEqual(after.view(S, 'c', 'a')?.state, { a: 1 });
  assert.equal(after.view(S, 'c', 'b'), undefined);
});
