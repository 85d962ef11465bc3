// Bundles the package for browsers: one minified ESM file (dist/syncgate.min.js),
// also copied into demo/ for the demo app, and prints its gzipped size.
import { build } from 'esbuild';
import { copyFileSync, readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';

const out = 'dist/syncgate.min.js';
await build({
  entryPoints: ['src/index.ts'],
  bundle: true,
  minify: true,
  format: 'esm',
  target: 'es2022',
  platform: 'neutral',
  external: ['ws'], // Node only: browsers have WebSocket
  outfile: out,
  sourcemap: true,
  legalComments: 'none',
});
copyFileSync(out, 'demo/syncgate.js');
const raw = readFileSync(out);
console.log(`bundle: ${out} ${raw.length} bytes, ${gzipSync(raw, { level: 9 }).length} bytes gzipped`);
