import { strict as assert } from 'node:assert';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { createServer, type Server as HTTPServer } from 'node:http';
import { extname, join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type Page } from 'playwright-core';
import { startServer, type Server } from '../integration/server.js';

// Two pages of the demo app (clients/js/demo) in Debian's Chromium act as
// two devices, of alice and bob, sharing the space "home", against a real
// `syncgate serve`. One goes offline
// (context.setOffline), both edit, the offline one reloads while still
// offline (its service worker serves the app, IndexedDB its data), comes
// back, and both converge. Presence avatars and typing cross over.

const pkg = resolve(fileURLToPath(import.meta.url), '../../../..'); // dist/test/browser -> clients/js
const demoDir = join(pkg, 'demo');
const artifacts = join(pkg, 'test-artifacts');
const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';

let srv: Server;
let web: HTTPServer;
let webURL: string;
let browser: Browser;

const types: Record<string, string> = { '.html': 'text/html', '.js': 'text/javascript', '.map': 'application/json' };

before(async () => {
  if (!existsSync(executablePath)) {
    throw new Error(`Chromium not found at ${executablePath}: make test installs it (apt-get install chromium), or set CHROMIUM`);
  }
  if (!existsSync(join(demoDir, 'syncgate.js'))) throw new Error('demo/syncgate.js is missing: run npm run build first');
  srv = await startServer();
  web = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    const file = join(demoDir, path === '/' ? 'index.html' : path);
    if (!file.startsWith(demoDir) || !existsSync(file)) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'Content-Type': types[extname(file)] ?? 'application/octet-stream', 'Cache-Control': 'no-store' });
    res.end(readFileSync(file));
  });
  await new Promise<void>((r) => web.listen(0, '127.0.0.1', r));
  webURL = `http://127.0.0.1:${(web.address() as { port: number }).port}/`;
  browser = await chromium.launch({ executablePath, headless: true, args: ['--no-sandbox', '--disable-background-networking'] });
});

after(async () => {
  await browser?.close();
  web?.close();
  await srv?.stop();
});

async function open(user: string, device: string): Promise<{ page: Page; ctx: Awaited<ReturnType<Browser['newContext']>> }> {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  page.on('pageerror', (e) => console.error(`[${device}] page error:`, e));
  const token = srv.token(user, { device, spaces: ['home'] });
  await page.goto(`${webURL}?ws=${encodeURIComponent(srv.ws)}&token=${token}&device=${device}&scope=space:home&maxBackoff=1000`);
  await page.waitForSelector('#status[data-state="synced"]');
  // The service worker has cached the app shell (it loads offline).
  await page.evaluate(() => navigator.serviceWorker.ready.then(() => undefined));
  return { page, ctx };
}

const titles = (page: Page) => page.$$eval('#list li span', (els) => els.map((e) => e.textContent ?? '').sort());
const doneTitles = (page: Page) => page.$$eval('#list li.done span', (els) => els.map((e) => e.textContent ?? '').sort());

async function add(page: Page, title: string) {
  await page.fill('#title', title);
  await page.press('#title', 'Enter');
}

async function eventually<T>(what: string, f: () => Promise<T>, ok: (v: T) => boolean, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (ok(v)) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: last ${JSON.stringify(v)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('two browser devices: offline edits survive a reload and converge; presence crosses over', async () => {
  const a = await open('alice', 'laptop');
  const b = await open('bob', 'phone');

  await add(a.page, 'milk');
  await eventually('milk on the phone', () => titles(b.page), (t) => t.includes('milk'));

  // Presence: each page shows the other's avatar.
  await eventually('the laptop sees the phone', () => a.page.$$eval('#avatars .avatar', (els) => els.map((e) => (e as HTMLElement).dataset.device)), (d) => d.includes('phone'));

  // Typing on the phone shows on the laptop.
  await b.page.type('#title', 'eg', { delay: 30 });
  await eventually('the typing indicator', () => a.page.textContent('#typing'), (t) => (t ?? '').includes('phone typing'));
  await b.page.fill('#title', '');

  // The phone goes offline; both edit.
  await b.ctx.setOffline(true);
  await b.page.waitForSelector('#status[data-state="offline"]', { timeout: 10_000 });
  await add(a.page, 'bread');
  await add(b.page, 'eggs');
  await b.page.click('#list li:has-text("milk") input[type=checkbox]');
  assert.deepEqual(await doneTitles(b.page), ['milk'], 'the offline edit applies at once');

  // Reload while still offline: the app and its unsent edits are still there.
  await b.page.reload();
  await b.page.waitForSelector('#list li');
  assert.deepEqual(await titles(b.page), ['eggs', 'milk']);
  assert.deepEqual(await doneTitles(b.page), ['milk']);
  assert.match((await b.page.textContent('#status')) ?? '', /pending/);
  assert.ok(!(await titles(b.page)).includes('bread'), 'the offline phone has not seen bread');

  // Back online: both converge.
  await b.ctx.setOffline(false);
  const want = ['bread', 'eggs', 'milk'];
  await eventually('the phone converges', () => titles(b.page), (t) => JSON.stringify(t) === JSON.stringify(want));
  await eventually('the laptop converges', () => titles(a.page), (t) => JSON.stringify(t) === JSON.stringify(want));
  await eventually('milk done everywhere', () => doneTitles(a.page), (t) => JSON.stringify(t) === '["milk"]');
  await b.page.waitForSelector('#status[data-state="synced"]');
  await eventually('the phone is back in the room', () => a.page.$$eval('#avatars .avatar', (els) => els.length), (n) => n === 2);

  mkdirSync(artifacts, { recursive: true });
  await a.page.screenshot({ path: join(artifacts, 'converged-laptop.png') });
  await b.page.screenshot({ path: join(artifacts, 'converged-phone.png') });
  await a.ctx.close();
  await b.ctx.close();
});
