// Starts a real `syncgate serve` for the integration and browser tests:
// the binary make builds (bin/syncgate, or SYNCGATE_BIN), an embedded
// store in a fresh directory, a free loopback port.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(fileURLToPath(import.meta.url), '../../../../../..'); // clients/js/dist/test/integration -> repo
export const binary = process.env.SYNCGATE_BIN ?? join(root, 'bin', 'syncgate');

export interface Server {
  url: string; // http://127.0.0.1:port
  ws: string; // ws://127.0.0.1:port/v1/ws
  dataDir: string;
  token(user: string, o?: { device?: string; spaces?: string[]; roles?: string[]; ttl?: string }): string;
  stop(): Promise<void>;
  logs(): string;
}

async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => res(port));
    });
    s.on('error', rej);
  });
}

export async function startServer(o: { config?: string; env?: Record<string, string>; args?: string[] } = {}): Promise<Server> {
  if (!existsSync(binary)) {
    throw new Error(`syncgate binary not found at ${binary}: run the tests through make test (or set SYNCGATE_BIN)`);
  }
  const dataDir = mkdtempSync(join(tmpdir(), 'syncgate-js-'));
  const port = await freePort();
  const args = ['serve', '--listen', `127.0.0.1:${port}`, '--data-dir', dataDir, ...(o.args ?? [])];
  if (o.config) {
    const file = join(dataDir, 'syncgate.yaml');
    writeFileSync(file, o.config);
    args.push('--config', file);
  }
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('SYNCGATE_')) env[k] = v;
  Object.assign(env, o.env);
  const proc: ChildProcess = spawn(binary, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (out += d));
  const exited = new Promise<void>((res) => proc.on('exit', () => res()));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 15_000;
  for (;;) {
    try {
      const r = await fetch(url + '/readyz');
      if (r.ok) break;
    } catch {
      // not up yet
    }
    if (proc.exitCode !== null || Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`syncgate did not start:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url,
    ws: `ws://127.0.0.1:${port}/v1/ws`,
    dataDir,
    token(user, t = {}) {
      const a = ['token', '--data-dir', dataDir, '--user', user];
      if (t.device) a.push('--device', t.device);
      if (t.spaces) a.push('--spaces', t.spaces.join(','));
      if (t.roles) a.push('--roles', t.roles.join(','));
      a.push('--ttl', t.ttl ?? '1h');
      return execFileSync(binary, a, { env }).toString().trim();
    },
    async stop() {
      if (proc.exitCode === null) {
        proc.kill('SIGTERM');
        await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
        if (proc.exitCode === null) proc.kill('SIGKILL');
      }
    },
    logs: () => out,
  };
}

/** Polls cond until it holds, or fails with what after timeoutMs. */
export async function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
