import { SyncError, type JSONValue, type Mutation } from './types.js';
import { httpStatus, type HTTP } from './http.js';
import type { Replica } from './replica.js';

// Media (docs/protocol.md, "Media API"). An upload is queued in storage
// with its bytes and sent as a resumable upload in the server's parts
// (5 MiB by default), each with its SHA-256, whenever the device is
// online; after a reload it resumes from the parts the server has. A
// document may reference the upload at once with its ref; a mutation
// holding a ref to an unfinished upload is not pushed (nor are the ones
// after it: mids reach the server in order) until the upload completes and
// the ref is rewritten to the server's media id.

/** A reference a document holds: {"$media": id}. */
export interface MediaRef {
  $media: string;
}

/** A stored media. */
export interface MediaInfo {
  scope: string;
  id: string;
  size: number;
  mime: string;
  sha256: string;
  created: number;
  deduped?: boolean;
}

/** An upload, queued or running. */
export interface Upload {
  /** The local id (local:…), valid in refs until the upload completes. */
  readonly id: string;
  /** Put this in a document: it is rewritten to the server id before the document is pushed. */
  readonly ref: MediaRef;
  /** Resolves with the stored media once the upload completes (after a reload too, if the app asks again). */
  readonly done: Promise<MediaInfo>;
}

export interface UploadOptions {
  scope?: string;
  /** The MIME type. Default: the blob's type, else application/octet-stream. */
  mime?: string;
  /** Bytes sent so far and the total, after each part. */
  onProgress?: (sent: number, total: number) => void;
}

interface Record_ {
  local: string;
  scope: string;
  mime: string;
  size: number;
  blob: Blob;
  upload?: string; // the server's upload id
  media?: MediaInfo; // set once complete
  failed?: { code: string; message: string };
}

/** The part of SyncClient media uses. */
interface Host {
  readonly _replica: Replica;
  readonly ready: Promise<void>;
  schedulePush(): void;
}

const KEY = 'u\u0000';
const LOCAL = 'local:';

export class Media {
  private readonly records = new Map<string, Record_>();
  private readonly waiters = new Map<string, { resolve: (m: MediaInfo) => void; reject: (e: Error) => void; p: Promise<MediaInfo> }>();
  private readonly progress = new Map<string, UploadOptions['onProgress']>();
  private readonly running = new Set<string>();

  constructor(
    private readonly host: Host,
    private readonly http: HTTP,
    private readonly defaultScope: string | undefined,
  ) {}

  /** @internal Loads queued uploads from storage. */
  async load(): Promise<void> {
    for (const [, v] of this.host._replica.extras(KEY)) {
      const r = v as Record_;
      this.records.set(r.local, r);
    }
  }

  /**
   * Queues blob for upload and returns at once (once it is in storage),
   * online or not. Reference it in documents with upload.ref.
   */
  async upload(blob: Blob, o: UploadOptions = {}): Promise<Upload> {
    await this.host.ready;
    const scope = o.scope ?? this.defaultScope;
    if (!scope) throw new TypeError('syncgate: media.upload() needs a scope (or SyncClient options.scope)');
    const local = LOCAL + randomHex(16);
    const r: Record_ = { local, scope, mime: o.mime || blob.type || 'application/octet-stream', size: blob.size, blob };
    this.records.set(local, r);
    if (o.onProgress) this.progress.set(local, o.onProgress);
    this.host._replica.putExtra(KEY + local, r);
    await this.host._replica.flush();
    const upload = { id: local, ref: { $media: local }, done: this.wait(local) };
    this._resume();
    return upload;
  }

  /** Uploads queued (unfinished) on this device, after a reload too. */
  pending(): { id: string; scope: string; size: number; mime: string }[] {
    return [...this.records.values()].filter((r) => !r.media && !r.failed).map((r) => ({ id: r.local, scope: r.scope, size: r.size, mime: r.mime }));
  }

  /** Resolves when the upload with local id completes (rejects if the server refused it). */
  wait(local: string): Promise<MediaInfo> {
    const r = this.records.get(local);
    if (r?.media) return Promise.resolve(r.media);
    if (r?.failed) return Promise.reject(new SyncError(r.failed.code, r.failed.message));
    let w = this.waiters.get(local);
    if (!w) {
      let resolve!: (m: MediaInfo) => void, reject!: (e: Error) => void;
      const p = new Promise<MediaInfo>((res, rej) => ((resolve = res), (reject = rej)));
      p.catch(() => {}); // a rejection nobody awaits is not unhandled
      w = { resolve, reject, p };
      this.waiters.set(local, w);
    }
    return w.p;
  }

  /** Downloads a media (by server id). */
  async download(id: string, o: { scope?: string } = {}): Promise<Blob> {
    const scope = o.scope ?? this.defaultScope;
    if (!scope) throw new TypeError('syncgate: media.download() needs a scope');
    const res = await this.http.do('GET', `/v1/media/${encodeURIComponent(scope)}/${encodeURIComponent(id)}`);
    return await res.blob();
  }

  /** @internal Whether m references an upload that has not completed. */
  _holds(m: Mutation): boolean {
    if (this.records.size === 0) return false;
    let held = false;
    visitRefs(m, (id) => {
      const r = this.records.get(id);
      if (id.startsWith(LOCAL) && r && !r.media) held = true;
    });
    return held;
  }

  /** @internal Starts every unfinished upload that is not running. */
  _resume(): void {
    for (const r of this.records.values()) {
      if (r.media || r.failed || this.running.has(r.local)) continue;
      this.running.add(r.local);
      void this.run(r).finally(() => this.running.delete(r.local));
    }
  }

  private async run(r: Record_): Promise<void> {
    for (let attempt = 0; attempt < 8; attempt++) {
      try {
        const info = await this.send(r);
        r.media = info;
        r.blob = new Blob([]); // the bytes are on the server now
        this.host._replica.rewriteMedia(r.local, info.id);
        this.host._replica.putExtra(KEY + r.local, r);
        this.waiters.get(r.local)?.resolve(info);
        this.host.schedulePush();
        return;
      } catch (err) {
        const e = err as SyncError;
        const status = httpStatus(err);
        if (status === 404 && r.upload) {
          r.upload = undefined; // expired: start over
          continue;
        }
        if (status >= 400 && status < 500 && status !== 408 && status !== 429) {
          r.failed = { code: e.code ?? 'bad_request', message: e.message };
          this.host._replica.rewriteMedia(r.local, null);
          this.host._replica.putExtra(KEY + r.local, { ...r, blob: new Blob([]) });
          this.waiters.get(r.local)?.reject(e);
          this.host.schedulePush();
          return;
        }
        // Offline or a server fault: try again later (the next connect resumes it).
        await new Promise((res) => setTimeout(res, Math.min(30_000, 500 * 2 ** attempt) * Math.random()));
      }
    }
  }

  private async send(r: Record_): Promise<MediaInfo> {
    const base = `/v1/media/${encodeURIComponent(r.scope)}/uploads`;
    type Up = { id: string; partBytes: number; parts: number; received?: number[]; media?: string };
    let up: Up;
    if (r.upload) {
      up = await this.http.json<Up>('GET', `${base}/${r.upload}`);
    } else {
      up = await this.http.json<Up>('POST', base, { size: r.size, mime: r.mime });
      r.upload = up.id;
      this.host._replica.putExtra(KEY + r.local, r);
    }
    const have = new Set(up.received ?? []);
    const onProgress = this.progress.get(r.local);
    let sent = [...have].reduce((n, p) => n + Math.min(up.partBytes, r.size - (p - 1) * up.partBytes), 0);
    onProgress?.(sent, r.size);
    for (let n = 1; n <= up.parts; n++) {
      if (have.has(n)) continue;
      const part = r.blob.slice((n - 1) * up.partBytes, Math.min(r.size, n * up.partBytes));
      const bytes = new Uint8Array(await part.arrayBuffer()) as Uint8Array<ArrayBuffer>;
      await this.http.do('PUT', `${base}/${up.id}/parts/${n}`, {
        body: bytes,
        headers: { 'Content-Type': 'application/octet-stream', 'X-Part-SHA256': await sha256Hex(bytes) },
      });
      sent += bytes.length;
      onProgress?.(sent, r.size);
    }
    return await this.http.json<MediaInfo>('POST', `${base}/${up.id}/complete`);
  }
}

/** Calls fn with every $media id in a mutation's values. */
export function visitRefs(m: Mutation, fn: (id: string) => void): void {
  const walk = (v: JSONValue | undefined): void => {
    if (v === null || typeof v !== 'object') return;
    if (Array.isArray(v)) {
      v.forEach(walk);
      return;
    }
    const keys = Object.keys(v);
    if (keys.length === 1 && keys[0] === '$media' && typeof v.$media === 'string') {
      fn(v.$media);
      return;
    }
    for (const k of keys) walk(v[k]);
  };
  walk(m.data);
  walk(m.set);
  for (const els of Object.values(m.add ?? {})) walk(els);
}

/** Replaces {"$media": from} in v with {"$media": to}, or with null when to is null. Returns whether it changed. */
export function replaceRef(v: JSONValue | undefined, from: string, to: string | null): JSONValue | undefined {
  if (v === null || typeof v !== 'object') return v;
  if (Array.isArray(v)) return v.map((e) => replaceRef(e, from, to) as JSONValue);
  const keys = Object.keys(v);
  if (keys.length === 1 && keys[0] === '$media' && v.$media === from) return to === null ? null : { $media: to };
  const out: { [k: string]: JSONValue } = {};
  for (const k of keys) out[k] = replaceRef(v[k], from, to) as JSONValue;
  return out;
}

async function sha256Hex(b: Uint8Array<ArrayBuffer>): Promise<string> {
  const d = await globalThis.crypto.subtle.digest('SHA-256', b);
  return Array.from(new Uint8Array(d), (x) => x.toString(16).padStart(2, '0')).join('');
}

function randomHex(n: number): string {
  const b = new Uint8Array(n);
  globalThis.crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}
