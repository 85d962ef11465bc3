import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { Backoff } from '../../src/backoff.js';

test('backoff: full jitter under an exponential, capped bound', () => {
  const b = new Backoff({ initialMs: 100, maxMs: 1000, random: () => 0.999999 });
  const delays = Array.from({ length: 8 }, () => Math.round(b.next()));
  assert.deepEqual(delays, [100, 200, 400, 800, 1000, 1000, 1000, 1000]);
  b.reset();
  assert.equal(Math.round(b.next()), 100);
  const zero = new Backoff({ random: () => 0 });
  assert.equal(zero.next(), 0, 'full jitter reaches 0');
  assert.throws(() => new Backoff({ initialMs: 0 }), RangeError);
});

test('backoff: 10,000 clients spread over the window, not in step', () => {
  const n = 10_000;
  const buckets = new Array(10).fill(0);
  for (let i = 0; i < n; i++) {
    const b = new Backoff({ initialMs: 1000, maxMs: 1000 });
    buckets[Math.floor(b.next() / 100)]++;
  }
  // Uniform over [0, 1000): each 100 ms bucket holds ~1000 (±20% is > 6 sigma).
  for (const c of buckets) assert.ok(c > 800 && c < 1200, `bucket of ${c}: ${buckets}`);
});
