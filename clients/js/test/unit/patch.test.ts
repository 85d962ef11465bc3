import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { applyMutation, validateDoc } from '../../src/patch.js';
import type { Mutation } from '../../src/types.js';

const m = (o: Partial<Mutation>): Mutation => ({ mid: 1, scope: 's', col: 'c', id: 'i', op: 'patch', base: 0, hlc: '', ...o });

test('patch ops: set, unset, inc, add, remove', () => {
  const cases: [string, Mutation, object][] = [
    ['set and unset', m({ set: { a: 1 }, unset: ['b'] }), { a: 1, c: [1] }],
    ['inc on missing', m({ inc: { n: 2, z: 1 } }), { b: 2, c: [1], n: 2, z: 1 }],
    ['add is a set union', m({ add: { c: [1, 2, { x: 1 }, 2] } }), { b: 2, c: [1, 2, { x: 1 }] }],
    ['remove by deep equality', m({ remove: { c: [1] } }), { b: 2, c: [] }],
  ];
  for (const [name, mut, want] of cases) {
    const got = applyMutation({ version: 3, state: { b: 2, c: [1] } }, mut);
    assert.deepEqual(got.state, want, name);
    assert.equal(got.version, 3, name);
  }
  assert.deepEqual(applyMutation({ version: 1, deleted: true }, m({ set: { a: 1 } })).state, { a: 1 }, 'a patch recreates a deleted doc');
  assert.equal(applyMutation(undefined, m({ op: 'delete' })).deleted, true);
});

test('validateDoc refuses what the server refuses', () => {
  for (const bad of [{ $x: 1 }, { 'a.b': 1 }, { '': 1 }, { _id: 1 }, { a: { $set: 1 } }, { a: [{ 'x.y': 1 }] }]) {
    assert.throws(() => validateDoc(bad), TypeError, JSON.stringify(bad));
  }
  validateDoc({ photo: { $media: 'abc' }, list: [{ a: 1 }], n: null });
  assert.throws(() => validateDoc([1] as never), TypeError);
});
