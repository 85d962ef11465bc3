import { SyncError } from './types.js';

// The HTTP side of the gateway: the push/pull fallback (POST /v1/sync/*)
// and the media API. Same bearer token as the socket's hello.

export type FetchLike = typeof fetch;

/** The http(s) base of a ws(s)://host[:port]/v1/ws URL (or of an http URL). */
export function httpBase(url: string): string {
  const u = new URL(url);
  if (u.protocol === 'ws:') u.protocol = 'http:';
  else if (u.protocol === 'wss:') u.protocol = 'https:';
  return u.origin;
}

/** The ws(s) URL of the gateway's socket for a ws or http URL. */
export function wsURL(url: string): string {
  const u = new URL(url);
  if (u.protocol === 'http:') u.protocol = 'ws:';
  else if (u.protocol === 'https:') u.protocol = 'wss:';
  if (u.pathname === '/' || u.pathname === '') u.pathname = '/v1/ws';
  return u.toString();
}

export class HTTP {
  constructor(
    readonly base: string,
    private readonly token: () => Promise<string>,
    private readonly fetchFn: FetchLike,
  ) {}

  /** Sends a request with the token and returns the response; error bodies become a SyncError. */
  async do(method: string, path: string, init: { body?: BodyInit; headers?: Record<string, string> } = {}): Promise<Response> {
    const res = await this.fetchFn(this.base + path, {
      method,
      body: init.body,
      headers: { Authorization: `Bearer ${await this.token()}`, ...init.headers },
    });
    if (!res.ok) {
      let code = `http_${res.status}`;
      let message = res.statusText;
      let retryable = res.status >= 500;
      try {
        const e = (await res.json()) as { code?: string; message?: string; retryable?: boolean };
        if (e.code) code = e.code;
        if (e.message) message = e.message;
        if (e.retryable !== undefined) retryable = e.retryable;
      } catch {
        // not an error object
      }
      throw Object.assign(new SyncError(code, message, retryable), { status: res.status });
    }
    return res;
  }

  async json<T>(method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<T> {
    const res = await this.do(method, path, {
      body: body === undefined ? undefined : JSON.stringify(body),
      headers: body === undefined ? headers : { 'Content-Type': 'application/json', ...headers },
    });
    return (await res.json()) as T;
  }
}

/** The status of a failed HTTP request (0 for a network failure). */
export function httpStatus(err: unknown): number {
  return (err as { status?: number }).status ?? 0;
}
