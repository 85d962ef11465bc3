import { strict as assert } from 'node:assert';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { gzipSync } from 'node:zlib';

// The browser bundle's budget: minified and gzipped, the whole client
// (sync, presence, media) stays at or under 25 KB. npm run build makes it.
const BUDGET = 25 * 1024;

test('bundle size is within budget', () => {
  const raw = readFileSync(new URL('../../syncgate.min.js', import.meta.url));
  const gz = gzipSync(raw, { level: 9 }).length;
  assert.ok(gz <= BUDGET, `dist/syncgate.min.js is ${gz} bytes gzipped; the budget is ${BUDGET}`);
  assert.ok(raw.length > 10_000, 'the bundle looks empty');
});
