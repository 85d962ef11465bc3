import { Backoff, type BackoffOptions } from './backoff.js';
import { Emitter } from './events.js';
import { HTTP, httpBase, wsURL, type FetchLike } from './http.js';
import { Media } from './media.js';
import { validateDoc } from './patch.js';
import { Presence } from './presence.js';
import { Replica } from './replica.js';
import { Socket, webSocketConstructor, type CloseInfo, type WebSocketConstructor } from './socket.js';
import { memoryStorage, type Storage } from './storage.js';
import {
  Close,
  SyncError,
  type ChangesMsg,
  type Conflict,
  type DocData,
  type Mutation,
  type MutationResult,
  type PatchOps,
  type ResetMsg,
  type ServerMsg,
  type WelcomeMsg,
} from './types.js';

/** Where the client stands. */
export type ConnectionState = 'offline' | 'connecting' | 'syncing' | 'synced';

export interface Status {
  state: ConnectionState;
  /** Local edits the server has not confirmed yet. */
  pending: number;
  /** During an initial (or catch-up) download: how far it got. */
  progress?: { scope: string; received: number; total: number };
  /** True while syncing over the HTTP fallback (the socket cannot connect). */
  http?: boolean;
  /** Why the last connection ended, when it did. */
  lastClose?: CloseInfo;
}

/** A mutation the server refused for good (not retryable). */
export interface Rejection {
  mutation: Mutation;
  code: string;
  message: string;
}

export interface ClientEvents extends Record<string, unknown> {
  status: Status;
  conflict: Conflict;
  rejected: Rejection;
  error: SyncError;
}

export interface SyncClientOptions {
  /** The gateway: ws(s)://host/v1/ws, or http(s)://host. */
  url: string;
  /** The JWT, or a function returning a fresh one (called at each connect and before expiry). */
  token: string | (() => string | Promise<string>);
  /** This device's id. Default: the one in storage, else a new random id (kept in storage). */
  deviceId?: string;
  /** Where the replica and queue live. Default: memoryStorage() (nothing survives a reload). */
  storage?: Storage;
  /** The scope of collection() and presence.join() calls that name none. */
  scope?: string;
  /** Reconnect delays. Default: 500 ms doubling to 30 s, full jitter. */
  backoff?: BackoffOptions;
  /** The WebSocket to use. Default: the global one, or the ws package in Node. */
  WebSocket?: WebSocketConstructor;
  /** The fetch to use. Default: the global one. */
  fetch?: FetchLike;
  /** Sent in hello, shown to support staff. */
  client?: { platform?: string; appVersion?: string };
  /** After this many failed socket attempts in a row, sync over HTTP meanwhile (0: never). Default 3. */
  httpFallbackAfter?: number;
  /** Timeout of one request (hello, push, pull), ms. Default 15000. */
  requestTimeoutMs?: number;
  /** Connect on construction. Default true. */
  autoConnect?: boolean;
  /**
   * How long after applying changes the client confirms its checkpoints to
   * the server (the `checkpoint` message, which support staff see as sync
   * lag), ms. Default 5000; 0 never confirms.
   */
  checkpointDelayMs?: number;
}

interface CollectionOptions {
  scope?: string;
}

/**
 * The offline-first client: a local replica that answers reads at once, a
 * persistent queue of writes, and a connection that keeps both in sync
 * with the gateway, reconnecting with backoff.
 */
export class SyncClient extends Emitter<ClientEvents> {
  readonly presence: Presence;
  readonly media: Media;
  /** Resolves when the replica has loaded from storage. */
  readonly ready: Promise<void>;

  private replica!: Replica;
  private readonly opts: SyncClientOptions;
  private readonly http: HTTP;
  private readonly scopes = new Set<string>();
  private readonly backoff: Backoff;
  private readonly conflicts = new Map<string, Conflict>();
  private socket: Socket | undefined;
  private welcome: WelcomeMsg | undefined;
  private status: Status = { state: 'offline', pending: 0 };
  private stopped = true;
  private wake: (() => void) | undefined;
  private pushing = false;
  private pushAgain = false;
  /** Scopes being pulled; true when another pull was asked for meanwhile (a live gap). */
  private pulling = new Map<string, boolean>();
  private failures = 0;
  private tokenTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly collections = new Map<string, Collection<DocData>>();
  private loop: Promise<void> | undefined;
  private readonly onOnline = () => this.kick();
  // The browser says the network went away: a hint, not the truth. The
  // socket gets a quick ping; if it does not answer, it is abandoned (a
  // dead network leaves a WebSocket open but silent for a long time).
  private readonly onOffline = () => void this.socket?.probe(PROBE_MS);
  private confirmTimer: ReturnType<typeof setTimeout> | undefined;
  private early: (Omit<Mutation, 'mid' | 'hlc' | 'base'> & { base?: number })[] = [];

  constructor(opts: SyncClientOptions) {
    super();
    this.opts = opts;
    this.backoff = new Backoff(opts.backoff);
    if (opts.scope) this.scopes.add(opts.scope);
    const fetchFn = opts.fetch ?? globalThis.fetch?.bind(globalThis);
    this.http = new HTTP(httpBase(opts.url), () => this.token(), fetchFn);
    this.presence = new Presence(this, opts.scope);
    const media = (this.media = new Media(this, this.http, opts.scope));
    this.ready = (async () => {
      const storage = opts.storage ?? memoryStorage();
      this.replica = await Replica.open(storage, opts.deviceId ?? randomId());
      this.replica.onWriteError = (err) =>
        this.emit('error', new SyncError('storage', `saving local state failed: ${(err as Error)?.message ?? err}`, true));
      this.replica.onChange((scope, col) => {
        this.collections.get(`${scope}\u0000${col}`)?.invalidate();
        this.setStatus({});
      });
      await media.load();
      for (const m of this.early.splice(0)) this.replica.enqueue(m);
      this.setStatus({});
    })();
    if (opts.autoConnect !== false) this.connect();
  }

  /** This device's id. */
  get deviceId(): string {
    return this.replica.deviceId;
  }

  /** The current status (also sent to 'status' listeners). */
  getStatus(): Status {
    return this.status;
  }

  /** Open manual conflict records this device knows of. */
  openConflicts(): Conflict[] {
    return [...this.conflicts.values()];
  }

  /** Starts (or resumes) connecting. */
  connect(): void {
    if (!this.stopped) return;
    this.stopped = false;
    const g = globalThis as { addEventListener?: (t: string, f: () => void) => void };
    g.addEventListener?.('online', this.onOnline);
    g.addEventListener?.('offline', this.onOffline);
    this.loop = this.run();
  }

  /** Closes the connection and stops reconnecting; local reads and writes keep working. */
  async disconnect(): Promise<void> {
    this.stopped = true;
    const g = globalThis as { removeEventListener?: (t: string, f: () => void) => void };
    g.removeEventListener?.('online', this.onOnline);
    g.removeEventListener?.('offline', this.onOffline);
    this.socket?.close(1000, 'client disconnect');
    this.kick();
    await this.loop;
    clearTimeout(this.tokenTimer);
    clearTimeout(this.confirmTimer);
    this.confirmTimer = undefined;
  }

  /** Waits until every write so far is in storage. */
  async flush(): Promise<void> {
    await this.ready;
    await this.replica.flush();
  }

  /** A collection of documents in a scope. */
  collection<T extends DocData = DocData>(name: string, o: CollectionOptions = {}): Collection<T> {
    const scope = o.scope ?? this.opts.scope;
    if (!scope) throw new TypeError('syncgate: collection() needs a scope (or SyncClient options.scope)');
    const key = `${scope}\u0000${name}`;
    let c = this.collections.get(key);
    if (!c) {
      c = new Collection<DocData>(this, scope, name);
      this.collections.set(key, c);
      this.subscribe(scope);
    }
    return c as unknown as Collection<T>;
  }

  /** Subscribes to a scope (collection() does it for its scope). */
  subscribe(scope: string): void {
    if (this.scopes.has(scope)) return;
    this.scopes.add(scope);
    // A new scope is part of hello: reconnect to add it.
    if (this.socket?.open) this.socket.close(1000, 'new scope');
  }

  /** Settles a manual conflict with the chosen state (null deletes the document). */
  async resolveConflict(id: string, chosen: DocData | null): Promise<void> {
    await this.ready;
    const c = this.conflicts.get(id);
    if (!c) throw new SyncError('not_found', `no open conflict ${id}`);
    if (chosen) validateDoc(chosen);
    this.write({
      scope: c.scope, col: c.col, id: c.docId, base: c.theirsVersion, resolves: id,
      ...(chosen ? { op: 'put', data: chosen } : { op: 'delete' }),
    });
  }

  // ---- internals used by Collection, Presence and Media ----

  /** @internal */
  get _replica(): Replica {
    return this.replica;
  }

  /** @internal The open socket, if any. */
  get _socket(): Socket | undefined {
    return this.socket?.open ? this.socket : undefined;
  }

  /** @internal */
  get _timeout(): number {
    return this.opts.requestTimeoutMs ?? 15_000;
  }

  /**
   * @internal Queues a mutation and schedules a push. Writes made before
   * storage has loaded wait in memory and are queued, in order, once it
   * has (their mids come from the stored counter).
   */
  write(m: Omit<Mutation, 'mid' | 'hlc' | 'base'> & { base?: number }): void {
    if (!this.replica) {
      this.early.push(m);
      return;
    }
    this.replica.enqueue(m);
    this.schedulePush();
  }

  /** @internal Wakes the push loop (after a media upload completed, for one). */
  schedulePush(): void {
    if (this.socket?.open) void this.pushQueue();
  }

  private async token(): Promise<string> {
    const t = this.opts.token;
    return typeof t === 'string' ? t : await t();
  }

  private setStatus(s: Partial<Status>): void {
    if (!this.replica) return;
    const next: Status = { ...this.status, ...s, pending: this.replica.pendingCount() };
    if (!('progress' in s) && next.state !== 'syncing') delete next.progress;
    const changed = JSON.stringify(next) !== JSON.stringify(this.status);
    this.status = next;
    if (changed) this.emit('status', next);
  }

  /** Ends a backoff wait early. */
  private kick(): void {
    this.wake?.();
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    });
  }

  /** The connection loop: connect, sync, wait for the close, back off, again. */
  private async run(): Promise<void> {
    await this.ready;
    while (!this.stopped) {
      this.setStatus({ state: 'connecting' });
      let info: CloseInfo | undefined;
      try {
        info = await this.session();
        this.failures = 0;
      } catch (err) {
        this.failures++;
        if (err instanceof SyncError && !err.retryable && err.code !== 'closed' && err.code !== 'timeout') {
          this.emit('error', err);
        }
      }
      this.socket = undefined;
      this.presence._offline();
      clearTimeout(this.tokenTimer);
      this.setStatus({ state: 'offline', lastClose: info ?? this.status.lastClose, http: false });
      if (this.stopped) break;
      if (info) this.afterClose(info);
      const fallbackAfter = this.opts.httpFallbackAfter ?? 3;
      if (fallbackAfter > 0 && this.failures >= fallbackAfter) await this.httpSync();
      await this.sleep(this.backoff.next());
    }
  }

  /** What a close code asks of the client before it reconnects. */
  private afterClose(info: CloseInfo): void {
    // Every other code (slow consumer, shutdown, disconnected, …) only
    // means: reconnect after the backoff, resuming from the checkpoints.
    if (info.code === Close.sessionRevoked || info.code === Close.sessionExpired) {
      this.replica.setSession(undefined); // sign in again; a new session begins
    }
    if (info.code === Close.unauthorized || info.code === Close.protocolError) {
      this.emit('error', new SyncError(info.code === Close.unauthorized ? 'unauthorized' : 'protocol', info.reason || 'refused'));
    }
  }

  /** One connection: hello, catch up, push, then serve until it closes. */
  private async session(): Promise<CloseInfo> {
    const Ctor = await webSocketConstructor(this.opts.WebSocket);
    const sock = await Socket.open(wsURL(this.opts.url), Ctor, this._timeout);
    this.socket = sock;
    sock.onMessage((m) => this.onMessage(m));
    const scopes = [...this.scopes].map((scope) => ({ scope, since: this.replica.checkpoint(scope) }));
    const welcome = await sock.request<WelcomeMsg>(
      {
        type: 'hello', protocol: 1, token: await this.token(), device: this.replica.deviceId, scopes,
        session: this.replica.session, client: this.opts.client,
      },
      this._timeout,
    );
    this.welcome = welcome;
    this.backoff.reset();
    this.replica.setSession(welcome.session);
    this.replica.raiseMid(welcome.lastMutation);
    this.armTokenRefresh(welcome.expiresAt);
    for (const c of welcome.conflicts ?? []) this.onConflict(c);
    this.setStatus({ state: 'syncing' });
    const heads = new Map(welcome.scopes.map((s) => [s.scope, s.head]));
    // Resets arrive as their own messages right after the welcome and are
    // handled by onMessage (drop the scope, pull from 0); the catch-up
    // below pulls every scope up to its head.
    await Promise.all([...heads].map(([scope, head]) => this.pull(scope, head, welcome.scopes.find((s) => s.scope === scope)?.reset)));
    this.presence._rejoin();
    await this.pushQueue();
    this.maybeSynced();
    this.media._resume();
    // A silent socket is found within KEEPALIVE_MS + PROBE_MS.
    const keepalive = setInterval(() => void sock.probe(PROBE_MS * 2), KEEPALIVE_MS);
    try {
      return await sock.closed;
    } finally {
      clearInterval(keepalive);
    }
  }

  private maybeSynced(): void {
    if (!this.socket?.open) return;
    const busy = this.pulling.size > 0 || this.pushing || this.replica.unacked().length > 0;
    this.setStatus({ state: busy ? 'syncing' : 'synced' });
  }

  private armTokenRefresh(expiresAt: number | undefined): void {
    clearTimeout(this.tokenTimer);
    if (!expiresAt || typeof this.opts.token === 'string') return;
    // Refresh at 80% of the remaining lifetime, at least 5 s before expiry.
    const left = expiresAt - Date.now();
    const at = Math.max(1000, Math.min(left * 0.8, left - 5000));
    this.tokenTimer = setTimeout(() => void this.refreshToken(), at);
  }

  private async refreshToken(): Promise<void> {
    const sock = this._socket;
    if (!sock) return;
    try {
      const ok = await sock.request<{ type: 'auth_ok'; expiresAt: number }>({ type: 'auth', token: await this.token() }, this._timeout);
      this.armTokenRefresh(ok.expiresAt);
    } catch (err) {
      if (err instanceof SyncError && err.code !== 'closed') this.emit('error', err);
    }
  }

  /** Pulls scope from its checkpoint until the server says no more. */
  private async pull(scope: string, total?: number, reset?: boolean): Promise<void> {
    if (this.pulling.has(scope)) {
      // A gap seen while a pull is in flight may lie beyond that pull's
      // answer: pull once more when it ends, never drop it.
      this.pulling.set(scope, true);
      return;
    }
    const sock = this._socket;
    if (!sock) return;
    this.pulling.set(scope, false);
    try {
      if (reset) this.replica.reset(scope);
      for (;;) {
        const since = this.replica.checkpoint(scope);
        if (total !== undefined) this.setStatus({ state: 'syncing', progress: { scope, received: since, total } });
        const ans = await sock.request<ChangesMsg | ResetMsg>({ type: 'pull', scope, since }, this._timeout);
        if (ans.type === 'reset') {
          this.replica.reset(scope);
          continue;
        }
        this.replica.applyChanges(ans);
        total = ans.head;
        if (ans.more) continue;
        if (!this.pulling.get(scope)) break;
        this.pulling.set(scope, false);
      }
    } catch (err) {
      if (err instanceof SyncError && !err.retryable && err.code !== 'closed') this.emit('error', err);
    } finally {
      this.pulling.delete(scope);
      this.scheduleConfirm();
      this.maybeSynced();
    }
  }

  /** Confirms the checkpoints once changes have settled for checkpointDelayMs. */
  private scheduleConfirm(): void {
    const delay = this.opts.checkpointDelayMs ?? 5_000;
    if (delay <= 0 || this.confirmTimer) return;
    this.confirmTimer = setTimeout(() => {
      this.confirmTimer = undefined;
      const scopes: Record<string, number> = {};
      for (const scope of this.scopes) scopes[scope] = this.replica.checkpoint(scope);
      try {
        this._socket?.send({ type: 'checkpoint', scopes });
      } catch {
        // offline: the next hello carries the checkpoints anyway
      }
    }, delay);
  }

  /** Pushes unacknowledged mutations in mid order, one batch at a time. */
  private async pushQueue(): Promise<void> {
    if (this.pushing) {
      this.pushAgain = true;
      return;
    }
    this.pushing = true;
    try {
      do {
        this.pushAgain = false;
        const sock = this._socket;
        if (!sock) return;
        const batch = this.sendable(this.welcome?.maxBatch ?? 500);
        if (batch.length === 0) break;
        this.setStatus({ state: 'syncing' });
        const ack = await sock.request<{ type: 'ack'; results: MutationResult[] }>({ type: 'push', mutations: batch }, this._timeout);
        this.onAck(batch, ack.results);
        if (ack.results.some((r) => r.outcome === 'rejected' && (r.code === 'unavailable' || r.code === 'internal'))) {
          await this.sleep(this.backoff.next()); // the server asked for a retry: not at once
        } else {
          this.pushAgain = true;
        }
      } while (this.pushAgain && !this.stopped);
    } catch (err) {
      if (err instanceof SyncError && !err.retryable && err.code !== 'closed') this.emit('error', err);
    } finally {
      this.pushing = false;
      this.maybeSynced();
    }
  }

  /**
   * The next mutations to send: unacked, in order, stopping at one that
   * references an upload still in progress (mids must reach the server in
   * order, so the ones after it wait too).
   */
  private sendable(max: number): Mutation[] {
    const out: Mutation[] = [];
    for (const m of this.replica.unacked()) {
      if (out.length >= max || this.media._holds(m)) break;
      out.push(m);
    }
    return out;
  }

  private onAck(batch: Mutation[], results: MutationResult[]): void {
    const failed = this.replica.ack(results, (code) => code === 'unavailable' || code === 'internal');
    for (const r of failed) {
      const m = batch.find((b) => b.mid === r.mid);
      if (m && r.outcome === 'rejected') this.emit('rejected', { mutation: m, code: r.code ?? 'rejected', message: r.message ?? '' });
    }
    this.setStatus({});
  }

  private onConflict(c: Conflict): void {
    if (c.status === 'open') {
      this.conflicts.set(c.id, c);
      this.emit('conflict', c);
    } else {
      this.conflicts.delete(c.id);
    }
  }

  private onMessage(m: ServerMsg): void {
    switch (m.type) {
      case 'changes': {
        const ch = m as unknown as ChangesMsg;
        const applied = this.replica.applyChanges(ch);
        if (applied === 'gap') void this.pull(ch.scope);
        else if (applied === 'applied') this.scheduleConfirm();
        this.maybeSynced();
        break;
      }
      case 'reset': {
        const r = m as unknown as ResetMsg;
        this.replica.reset(r.scope);
        void this.pull(r.scope, r.head).then(() => this.pushQueue());
        break;
      }
      case 'conflict':
        this.onConflict((m as unknown as { conflict: Conflict }).conflict);
        break;
      case 'room_event':
        this.presence._event(m as never);
        break;
      case 'error': {
        const e = m as unknown as { code: string; message: string; retryable?: boolean };
        this.emit('error', new SyncError(e.code, e.message, !!e.retryable));
        break;
      }
    }
  }

  /** One round of sync over HTTP while the socket cannot connect. */
  private async httpSync(): Promise<void> {
    if (!this.opts.fetch && !globalThis.fetch) return;
    try {
      this.setStatus({ state: 'syncing', http: true });
      const device = this.replica.deviceId;
      for (;;) {
        const batch = this.sendable(500);
        if (batch.length === 0) break;
        const ack = await this.http.json<{ results: MutationResult[] }>('POST', '/v1/sync/push', { device, mutations: batch });
        this.onAck(batch, ack.results);
        if (ack.results.some((r) => r.outcome === 'rejected' && (r.code === 'unavailable' || r.code === 'internal'))) break;
      }
      for (const scope of this.scopes) {
        for (;;) {
          const since = this.replica.checkpoint(scope);
          const ans = await this.http.json<ChangesMsg | ResetMsg>('POST', '/v1/sync/pull', { device, scope, since });
          if (ans.type === 'reset') {
            this.replica.reset(scope);
            continue;
          }
          this.replica.applyChanges(ans);
          if (!ans.more) break;
        }
      }
      this.setStatus({ state: 'offline', http: true });
    } catch {
      this.setStatus({ state: 'offline', http: false });
    }
  }
}

/** How long a ping may take before a socket counts as dead, ms. */
const PROBE_MS = 2_000;
/** The period of keepalive pings on an open socket, ms. */
const KEEPALIVE_MS = 20_000;

/** A live query callback: the collection's documents, by id. */
export type Subscriber<T> = (docs: Map<string, T>) => void;

/** Documents of one collection in one scope. Reads are local and synchronous. */
export class Collection<T extends DocData = DocData> {
  private cache: Map<string, T> | undefined;
  private readonly subs = new Set<Subscriber<T>>();
  private scheduled = false;

  constructor(
    private readonly client: SyncClient,
    readonly scope: string,
    readonly name: string,
  ) {}

  /** Creates or replaces a document. */
  put(id: string, doc: T): void {
    validateDoc(doc);
    this.client.write({ scope: this.scope, col: this.name, id, op: 'put', data: doc });
  }

  /** Changes fields: set, unset, inc (counters), add/remove (sets). */
  patch(id: string, ops: PatchOps): void {
    if (ops.set) validateDoc(ops.set);
    this.client.write({ scope: this.scope, col: this.name, id, op: 'patch', ...ops });
  }

  /** Deletes a document. */
  delete(id: string): void {
    this.client.write({ scope: this.scope, col: this.name, id, op: 'delete' });
  }

  /** A document as the device sees it now (pending edits included), or undefined. */
  get(id: string): T | undefined {
    return this.all().get(id);
  }

  /** Every live document, by id. */
  all(): Map<string, T> {
    if (this.cache) return this.cache;
    const r = this.client._replica;
    const out = new Map<string, T>();
    if (!r) return out;
    for (const id of r.ids(this.scope, this.name)) {
      const d = r.view(this.scope, this.name, id);
      if (d && !d.deleted && d.state) out.set(id, d.state as T);
    }
    this.cache = out;
    return out;
  }

  /** Calls fn now and after every change; returns the unsubscribe function. */
  subscribe(fn: Subscriber<T>): () => void {
    this.subs.add(fn);
    void this.client.ready.then(() => {
      if (this.subs.has(fn)) fn(this.all());
    });
    return () => this.subs.delete(fn);
  }

  /** @internal The replica changed: recompute on next read, notify once per tick. */
  invalidate(): void {
    this.cache = undefined;
    if (this.scheduled || this.subs.size === 0) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      const docs = this.all();
      for (const fn of this.subs) fn(docs);
    });
  }
}

function randomId(): string {
  const b = new Uint8Array(12);
  globalThis.crypto.getRandomValues(b);
  return 'd' + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

