import { SyncError, type ServerMsg } from './types.js';

// One WebSocket connection speaking protocol v1: JSON text frames, possibly
// several newline-separated messages per frame (the server coalesces), and
// requests matched to answers by rid.

/** The part of the WebSocket API the client uses (browsers' WebSocket and the ws package both have it). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** How a connection ended. */
export interface CloseInfo {
  code: number;
  reason: string;
}

const OPEN = 1;

/** Finds a WebSocket: the given one, the global (browsers, Node 22+), or the ws package (Node). */
export async function webSocketConstructor(given?: WebSocketConstructor): Promise<WebSocketConstructor> {
  if (given) return given;
  const g = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (g) return g;
  try {
    const mod = (await import('ws')) as unknown as { WebSocket?: WebSocketConstructor; default?: WebSocketConstructor };
    const ctor = mod.WebSocket ?? mod.default;
    if (ctor) return ctor;
  } catch {
    // fall through
  }
  throw new Error('syncgate: no WebSocket here: install the ws package (npm i ws) or pass options.WebSocket');
}

export class Socket {
  private rid = 0;
  private readonly waiting = new Map<number, { resolve: (m: ServerMsg) => void; reject: (e: Error) => void }>();
  private handler: (m: ServerMsg) => void = () => {};
  readonly closed: Promise<CloseInfo>;
  private closeInfo: CloseInfo | undefined;

  private ended: (ev: CloseInfo) => void = () => {};

  private constructor(private readonly ws: WebSocketLike) {
    this.closed = new Promise((resolve) => {
      this.ended = (ev) => {
        if (this.closeInfo) return;
        this.closeInfo = { code: ev.code, reason: ev.reason };
        const err = new SyncError('closed', `the connection closed (${ev.code}${ev.reason ? ' ' + ev.reason : ''})`, true);
        for (const w of this.waiting.values()) w.reject(err);
        this.waiting.clear();
        resolve(this.closeInfo);
      };
      ws.onclose = (ev) => this.ended(ev);
    });
    ws.onmessage = (ev) => {
      const text = typeof ev.data === 'string' ? ev.data : String(ev.data);
      for (const line of text.split('\n')) {
        if (!line) continue;
        let msg: ServerMsg;
        try {
          msg = JSON.parse(line) as ServerMsg;
        } catch {
          continue; // the server never sends invalid JSON; ignore rather than crash
        }
        const w = msg.rid !== undefined ? this.waiting.get(msg.rid) : undefined;
        if (w) {
          this.waiting.delete(msg.rid!);
          w.resolve(msg);
        } else {
          this.handler(msg);
        }
      }
    };
  }

  /** Opens a socket; rejects if it does not open within timeoutMs. */
  static open(url: string, Ctor: WebSocketConstructor, timeoutMs: number): Promise<Socket> {
    return new Promise((resolve, reject) => {
      let ws: WebSocketLike;
      try {
        ws = new Ctor(url);
      } catch (err) {
        reject(err);
        return;
      }
      const timer = setTimeout(() => {
        ws.onopen = ws.onerror = ws.onclose = null;
        try {
          ws.close();
        } catch {
          // ignore
        }
        reject(new SyncError('timeout', `no connection to ${url} within ${timeoutMs} ms`, true));
      }, timeoutMs);
      ws.onerror = () => {}; // the close that follows carries the code
      ws.onclose = (ev) => {
        clearTimeout(timer);
        reject(new SyncError('closed', `could not connect to ${url} (${ev.code})`, true));
      };
      ws.onopen = () => {
        clearTimeout(timer);
        ws.onopen = null;
        resolve(new Socket(ws));
      };
    });
  }

  /** Sets the handler of messages that answer no request. */
  onMessage(fn: (m: ServerMsg) => void): void {
    this.handler = fn;
  }

  get open(): boolean {
    return this.closeInfo === undefined && this.ws.readyState === OPEN;
  }

  /** Sends a ping and abandons the socket unless its pong comes within timeoutMs. */
  async probe(timeoutMs: number): Promise<boolean> {
    try {
      await this.request({ type: 'ping' }, timeoutMs);
      return true;
    } catch {
      if (this.open) this.abandon('no answer to a ping');
      return false;
    }
  }

  send(msg: object): void {
    if (!this.open) throw new SyncError('closed', 'the connection is closed', true);
    this.ws.send(JSON.stringify(msg));
  }

  /**
   * Sends msg with a fresh rid and resolves with its answer. An error
   * answer rejects with a SyncError; so do a close and the timeout.
   */
  request<T = ServerMsg>(msg: object, timeoutMs: number): Promise<T> {
    const rid = ++this.rid;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(rid);
        reject(new SyncError('timeout', `no answer to ${(msg as { type?: string }).type} within ${timeoutMs} ms`, true));
      }, timeoutMs);
      this.waiting.set(rid, {
        resolve: (m) => {
          clearTimeout(timer);
          if (m.type === 'error') {
            const e = m as unknown as { code: string; message: string; retryable?: boolean };
            reject(new SyncError(e.code, e.message, !!e.retryable));
          } else {
            resolve(m as unknown as T);
          }
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      try {
        this.send({ ...msg, rid });
      } catch (err) {
        clearTimeout(timer);
        this.waiting.delete(rid);
        reject(err as Error);
      }
    });
  }

  /**
   * Gives up on a connection that stopped answering (a network that went
   * away leaves the socket open but silent): it counts as closed at once,
   * with code 1006, while the browser finishes closing it in the background.
   */
  abandon(reason: string): void {
    this.ended({ code: 1006, reason });
    this.close(4000, reason);
  }

  close(code = 1000, reason = ''): void {
    try {
      this.ws.close(code, reason);
    } catch {
      // already closing
    }
  }
}
