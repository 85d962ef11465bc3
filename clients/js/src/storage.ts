// Storage adapters. The client keeps its whole local state (the replica,
// the checkpoints, the mutation queue, queued uploads) in one key-value
// store behind this interface. Every write is one atomic batch, so a crash
// in the middle of a sync leaves either the old state or the new one:
// never a checkpoint ahead of the documents it covers, never a mutation
// without the counter that numbered it.

/** One write of a batch: set key to value, or delete it (value undefined). */
export interface StorageOp {
  key: string;
  value?: unknown;
}

/**
 * A key-value store the client persists to. Values are structured-clonable
 * (plain JSON data). Implement it to use another storage (see the React
 * Native recipe in README.md).
 */
export interface Storage {
  /** Every key and value, read once at startup. */
  load(): Promise<Map<string, unknown>>;
  /** Applies ops atomically, in order. */
  write(ops: StorageOp[]): Promise<void>;
  /** Releases the store. */
  close?(): void;
}

/** A Storage in memory: for tests, and for apps that need no persistence. */
export function memoryStorage(initial?: Map<string, unknown>): Storage & { data: Map<string, unknown> } {
  const data = new Map<string, unknown>(initial);
  return {
    data,
    async load() {
      return new Map(Array.from(data, ([k, v]) => [k, structuredClone(v)]));
    },
    async write(ops) {
      for (const op of ops) {
        if (op.value === undefined) data.delete(op.key);
        else data.set(op.key, structuredClone(op.value));
      }
    },
  };
}

const STORE = 'kv';

function request<T>(r: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

/**
 * A Storage in IndexedDB (browsers): one database named name with one
 * object store; each write batch is one readwrite transaction, durable
 * ("strict") where the browser supports it. factory defaults to the global
 * indexedDB (pass fake-indexeddb's in Node tests).
 */
export function indexedDBStorage(name: string, factory?: IDBFactory): Storage {
  let dbp: Promise<IDBDatabase> | undefined;
  const open = (): Promise<IDBDatabase> => {
    dbp ??= new Promise((resolve, reject) => {
      const idb = factory ?? globalThis.indexedDB;
      if (!idb) {
        reject(new Error('syncgate: indexedDB is not available here; use memoryStorage() or another Storage'));
        return;
      }
      const r = idb.open(name, 1);
      r.onupgradeneeded = () => {
        if (!r.result.objectStoreNames.contains(STORE)) r.result.createObjectStore(STORE);
      };
      r.onsuccess = () => resolve(r.result);
      r.onerror = () => reject(r.error);
      r.onblocked = () => reject(new Error(`syncgate: IndexedDB ${name} is blocked by another tab's open connection`));
    });
    return dbp;
  };
  return {
    async load() {
      const db = await open();
      const tx = db.transaction(STORE, 'readonly');
      const store = tx.objectStore(STORE);
      const [keys, values] = await Promise.all([request(store.getAllKeys()), request(store.getAll())]);
      const out = new Map<string, unknown>();
      keys.forEach((k, i) => out.set(String(k), values[i]));
      return out;
    },
    async write(ops) {
      if (ops.length === 0) return;
      const db = await open();
      await new Promise<void>((resolve, reject) => {
        // durability "strict": the commit is on disk when oncomplete fires
        // (Chromium defaults to "relaxed", which a crash can undo).
        const tx = (db.transaction as (s: string, m: IDBTransactionMode, o?: { durability: string }) => IDBTransaction)
          .call(db, STORE, 'readwrite', { durability: 'strict' });
        const store = tx.objectStore(STORE);
        for (const op of ops) {
          if (op.value === undefined) store.delete(op.key);
          else store.put(op.value, op.key);
        }
        tx.oncomplete = () => resolve();
        tx.onerror = () => reject(tx.error);
        tx.onabort = () => reject(tx.error ?? new Error('syncgate: IndexedDB transaction aborted'));
      });
    },
    close() {
      void dbp?.then((db) => db.close());
      dbp = undefined;
    },
  };
}
