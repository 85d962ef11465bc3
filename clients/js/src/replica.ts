import { replaceRef } from './media.js';
import { applyMutation, type DocState } from './patch.js';
import type { Storage, StorageOp } from './storage.js';
import type { ChangesMsg, DocData, Mutation, MutationResult } from './types.js';

// The local replica: the server's state of every subscribed scope (what
// `changes` said, up to each scope's checkpoint) and the queue of the
// device's own mutations. What the app sees is the view: the server state
// with the queued mutations re-applied on top, in order. Incoming changes
// therefore land *under* pending edits (a rebase), so the UI never flickers
// back to an older value while an edit is in flight.
//
// Persistence: every change to this state is one atomic Storage batch, so
// the replica and queue survive a reload or a crash mid-sync.

/** A queued mutation and what the server has said about it so far. */
export interface Queued {
  m: Mutation;
  /** Set once acked: the seq of the log entry it produced. The mutation stays in the view until the checkpoint reaches it. */
  seq?: number;
  /** The resolved state from a `merged` ack: replaces the local guess. */
  resolved?: { version: number; state?: DocData; deleted?: boolean };
}

const META = 'meta';
const docKey = (scope: string, col: string, id: string) => `d\u0000${scope}\u0000${col}\u0000${id}`;
const cpKey = (scope: string) => `c\u0000${scope}`;
const mutKey = (mid: number) => `m\u0000${String(mid).padStart(16, '0')}`;

/** Identifies one document within the replica. */
export const refKey = (col: string, id: string) => `${col}\u0000${id}`;

interface Meta {
  deviceId: string;
  nextMid: number;
  session?: string;
}

export type ApplyResult = 'applied' | 'gap' | 'stale';

/** Listener of replica changes: the documents (scope, col, id) whose view may have changed. */
export type ChangeListener = (scope: string, col: string, ids: Set<string>) => void;

export class Replica {
  private readonly docs = new Map<string, Map<string, DocState>>(); // scope -> refKey -> server doc
  private readonly cps = new Map<string, number>();
  private readonly queue: Queued[] = []; // ascending mid
  private readonly extra = new Map<string, unknown>(); // other parts' records (queued uploads)
  private meta: Meta;
  private readonly listeners = new Set<ChangeListener>();
  private writes: Promise<void> = Promise.resolve(); // storage writes, in order
  private wall = 0;
  private logical = 0;

  private constructor(
    private readonly storage: Storage,
    meta: Meta,
  ) {
    this.meta = meta;
  }

  /** Loads the replica from storage. deviceId is used when storage holds none (a new device). */
  static async open(storage: Storage, deviceId: string): Promise<Replica> {
    const all = await storage.load();
    const meta = (all.get(META) as Meta | undefined) ?? { deviceId, nextMid: 1 };
    const r = new Replica(storage, meta);
    for (const [k, v] of all) {
      const parts = k.split('\u0000');
      if (parts[0] === 'd' && parts.length === 4) {
        const [, scope, col, id] = parts as [string, string, string, string];
        r.scopeDocs(scope).set(refKey(col, id), v as DocState);
      } else if (parts[0] === 'c' && parts.length === 2) {
        r.cps.set(parts[1]!, v as number);
      } else if (parts[0] === 'm') {
        r.queue.push(v as Queued);
      } else if (k !== META) {
        r.extra.set(k, v);
      }
    }
    r.queue.sort((a, b) => a.m.mid - b.m.mid);
    if (!all.has(META)) r.persist([{ key: META, value: meta }]);
    return r;
  }

  get deviceId(): string {
    return this.meta.deviceId;
  }

  get session(): string | undefined {
    return this.meta.session;
  }

  setSession(id: string | undefined): void {
    if (this.meta.session === id) return;
    this.meta = { ...this.meta, session: id };
    this.persist([{ key: META, value: this.meta }]);
  }

  /** Makes later mids exceed the server's last processed one (a device that lost its queue). */
  raiseMid(lastMutation: number): void {
    if (this.meta.nextMid <= lastMutation) {
      this.meta = { ...this.meta, nextMid: lastMutation + 1 };
      this.persist([{ key: META, value: this.meta }]);
    }
  }

  onChange(l: ChangeListener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  /** Resolves once every write issued so far is durable. */
  async flush(): Promise<void> {
    await this.writes;
    const err = this.writeError;
    this.writeError = undefined;
    if (err !== undefined) throw err;
  }

  /** Called when a storage write fails (the client emits it as an 'error'). */
  onWriteError: (err: unknown) => void = () => {};
  private writeError: unknown;

  private persist(ops: StorageOp[]): void {
    const batch = ops;
    // Writes run one after another, in the order the state changed. A
    // failed write is reported (onWriteError, and the next flush rejects);
    // later writes still run.
    this.writes = this.writes
      .then(() => this.storage.write(batch))
      .catch((err) => {
        this.writeError = err;
        this.onWriteError(err);
      });
  }

  private scopeDocs(scope: string): Map<string, DocState> {
    let m = this.docs.get(scope);
    if (!m) this.docs.set(scope, (m = new Map()));
    return m;
  }

  private emit(scope: string, byCol: Map<string, Set<string>>): void {
    for (const [col, ids] of byCol) for (const l of this.listeners) l(scope, col, ids);
  }

  checkpoint(scope: string): number {
    return this.cps.get(scope) ?? 0;
  }

  /** The server's state of a document, without the device's pending edits. */
  serverDoc(scope: string, col: string, id: string): DocState | undefined {
    return this.docs.get(scope)?.get(refKey(col, id));
  }

  /** A document as the app sees it: the server state with the queue applied. */
  view(scope: string, col: string, id: string): DocState | undefined {
    let doc = this.serverDoc(scope, col, id);
    const cp = this.checkpoint(scope);
    for (const q of this.queue) {
      const m = q.m;
      if (m.scope !== scope || m.col !== col || m.id !== id) continue;
      if (q.seq !== undefined && q.seq <= cp) continue; // already in the server state
      if (q.resolved && (doc === undefined || q.resolved.version >= doc.version)) {
        doc = { version: q.resolved.version, state: q.resolved.state, deleted: q.resolved.deleted };
      } else {
        doc = applyMutation(doc, m);
      }
    }
    return doc;
  }

  /** The ids of documents of scope/col that exist in the server state or the queue. */
  ids(scope: string, col: string): Set<string> {
    const out = new Set<string>();
    const prefix = col + '\u0000';
    for (const k of this.docs.get(scope)?.keys() ?? []) if (k.startsWith(prefix)) out.add(k.slice(prefix.length));
    for (const q of this.queue) if (q.m.scope === scope && q.m.col === col) out.add(q.m.id);
    return out;
  }

  private hlc(): string {
    const now = Date.now();
    if (now > this.wall) {
      this.wall = now;
      this.logical = 0;
    } else {
      this.logical++;
    }
    return `${String(this.wall).padStart(13, '0')}-${String(this.logical).padStart(6, '0')}-c`;
  }

  /** Queues a local mutation: it gets the next mid and shows in the view at once. */
  enqueue(m: Omit<Mutation, 'mid' | 'hlc' | 'base'> & { base?: number }): Mutation {
    const mid = this.meta.nextMid;
    const full: Mutation = {
      ...m,
      mid,
      hlc: this.hlc(),
      base: m.base ?? this.view(m.scope, m.col, m.id)?.version ?? 0,
    };
    this.meta = { ...this.meta, nextMid: mid + 1 };
    const q: Queued = { m: full };
    this.queue.push(q);
    this.persist([
      { key: META, value: this.meta },
      { key: mutKey(mid), value: q },
    ]);
    this.emit(full.scope, new Map([[full.col, new Set([full.id])]]));
    return full;
  }

  /** Mutations not acknowledged yet, in mid order. */
  unacked(): Mutation[] {
    return this.queue.filter((q) => q.seq === undefined).map((q) => q.m);
  }

  /** How many local edits the server has not confirmed (not acked, or acked but not yet pulled). */
  pendingCount(): number {
    return this.queue.length;
  }

  queued(): readonly Queued[] {
    return this.queue;
  }

  /**
   * Folds an ack's results in. Returns the results that are final failures
   * (rejected, not retryable) and conflicts, for the caller to report.
   */
  ack(results: MutationResult[], retryable: (code: string | undefined) => boolean): MutationResult[] {
    const ops: StorageOp[] = [];
    const failed: MutationResult[] = [];
    const touched = new Map<string, Map<string, Set<string>>>();
    const touch = (m: Mutation) => {
      let byCol = touched.get(m.scope);
      if (!byCol) touched.set(m.scope, (byCol = new Map()));
      let ids = byCol.get(m.col);
      if (!ids) byCol.set(m.col, (ids = new Set()));
      ids.add(m.id);
    };
    for (const r of results) {
      const i = this.queue.findIndex((q) => q.m.mid === r.mid);
      if (i < 0) continue;
      const q = this.queue[i]!;
      const drop = () => {
        this.queue.splice(i, 1);
        ops.push({ key: mutKey(q.m.mid) });
        touch(q.m);
      };
      switch (r.outcome) {
        case 'applied':
        case 'merged':
          if (r.seq === undefined || r.seq <= this.checkpoint(q.m.scope)) {
            drop(); // nothing changed, or the change is already in the server state
            break;
          }
          q.seq = r.seq;
          if (r.state !== undefined || r.deleted) {
            q.resolved = { version: r.version ?? 0, state: r.state, deleted: r.deleted };
            touch(q.m);
          }
          ops.push({ key: mutKey(q.m.mid), value: q });
          break;
        case 'conflict':
          drop();
          failed.push(r);
          break;
        case 'rejected':
          if (!retryable(r.code)) {
            drop();
            failed.push(r);
          }
          break;
      }
    }
    if (ops.length) this.persist(ops);
    for (const [scope, byCol] of touched) this.emit(scope, byCol);
    return failed;
  }

  /**
   * Applies a changes message under the checkpoint rule (docs/protocol.md):
   * with checkpoint c, applies it if from <= c < to, skipping seq <= c;
   * reports a gap if from > c (pull from c), stale if to <= c.
   */
  applyChanges(ch: ChangesMsg): ApplyResult {
    const cp = this.checkpoint(ch.scope);
    if (ch.from > cp) return 'gap';
    if (ch.to <= cp) return 'stale';
    const docs = this.scopeDocs(ch.scope);
    const ops: StorageOp[] = [];
    const byCol = new Map<string, Set<string>>();
    for (const e of ch.entries) {
      if (e.seq <= cp) continue;
      const k = refKey(e.col, e.id);
      const cur = docs.get(k);
      if (cur && cur.version > e.version) continue;
      const doc: DocState = e.deleted ? { version: e.version, deleted: true } : { version: e.version, state: e.state };
      docs.set(k, doc);
      ops.push({ key: docKey(ch.scope, e.col, e.id), value: doc });
      let ids = byCol.get(e.col);
      if (!ids) byCol.set(e.col, (ids = new Set()));
      ids.add(e.id);
    }
    this.cps.set(ch.scope, ch.to);
    ops.push({ key: cpKey(ch.scope), value: ch.to });
    // Acked mutations now in the server state leave the queue.
    for (let i = this.queue.length - 1; i >= 0; i--) {
      const q = this.queue[i]!;
      if (q.m.scope === ch.scope && q.seq !== undefined && q.seq <= ch.to) {
        this.queue.splice(i, 1);
        ops.push({ key: mutKey(q.m.mid) });
        let ids = byCol.get(q.m.col);
        if (!ids) byCol.set(q.m.col, (ids = new Set()));
        ids.add(q.m.id);
      }
    }
    this.persist(ops);
    this.emit(ch.scope, byCol);
    return 'applied';
  }

  /** Drops the replica of scope (a reset); the queue is kept and re-sent. */
  reset(scope: string): void {
    const docs = this.docs.get(scope);
    const ops: StorageOp[] = [{ key: cpKey(scope) }];
    const byCol = new Map<string, Set<string>>();
    for (const k of docs?.keys() ?? []) {
      const [col, id] = k.split('\u0000') as [string, string];
      ops.push({ key: docKey(scope, col, id) });
      let ids = byCol.get(col);
      if (!ids) byCol.set(col, (ids = new Set()));
      ids.add(id);
    }
    this.docs.delete(scope);
    this.cps.delete(scope);
    // Acked mutations of the scope come back with the re-download; those
    // whose entry was lost are sent again.
    for (const q of this.queue) {
      if (q.m.scope === scope && q.seq !== undefined) {
        q.seq = undefined;
        q.resolved = undefined;
        ops.push({ key: mutKey(q.m.mid), value: q });
      }
    }
    this.persist(ops);
    this.emit(scope, byCol);
  }

  /** Records of other parts whose keys start with prefix. */
  extras(prefix: string): [string, unknown][] {
    return [...this.extra].filter(([k]) => k.startsWith(prefix));
  }

  /** Stores (or, with undefined, deletes) another part's record. */
  putExtra(key: string, value: unknown): void {
    if (value === undefined) this.extra.delete(key);
    else this.extra.set(key, value);
    this.persist([{ key, value }]);
  }

  /**
   * Rewrites {"$media": from} to {"$media": to} (null: to null) in every
   * unacked mutation: an upload finished (or failed) and its local id
   * gives way to the server's.
   */
  rewriteMedia(from: string, to: string | null): void {
    const ops: StorageOp[] = [];
    for (const q of this.queue) {
      if (q.seq !== undefined) continue;
      const m = q.m;
      const before = JSON.stringify([m.data, m.set, m.add]);
      if (!before.includes(from)) continue;
      if (m.data) m.data = replaceRef(m.data, from, to) as DocData;
      if (m.set) m.set = replaceRef(m.set, from, to) as DocData;
      if (m.add) m.add = replaceRef(m.add as never, from, to) as never;
      ops.push({ key: mutKey(m.mid), value: q });
      this.emit(m.scope, new Map([[m.col, new Set([m.id])]]));
    }
    if (ops.length) this.persist(ops);
  }

  /** Number of documents held for scope (server state). */
  size(scope: string): number {
    return this.docs.get(scope)?.size ?? 0;
  }
}
