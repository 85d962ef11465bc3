import type { DocData, JSONValue, Mutation } from './types.js';

// The optimistic local application of a mutation: what the document looks
// like if the server applies it as sent. The server's answer (an ack's
// resolved state, or the change in the log) replaces this guess.

/** A document as the client holds it. */
export interface DocState {
  version: number;
  state?: DocData;
  deleted?: boolean;
}

export function jsonEqual(a: JSONValue | undefined, b: JSONValue | undefined): boolean {
  if (a === b) return true;
  if (a === null || b === null || typeof a !== 'object' || typeof b !== 'object') return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) {
    const bb = b as JSONValue[];
    return a.length === bb.length && a.every((v, i) => jsonEqual(v, bb[i]));
  }
  const ao = a as { [k: string]: JSONValue };
  const bo = b as { [k: string]: JSONValue };
  const ak = Object.keys(ao);
  return ak.length === Object.keys(bo).length && ak.every((k) => k in bo && jsonEqual(ao[k], bo[k]));
}

/** Applies m to doc and returns the new document (doc is not modified). */
export function applyMutation(doc: DocState | undefined, m: Mutation): DocState {
  const version = doc?.version ?? 0;
  switch (m.op) {
    case 'put':
      return { version, state: structuredClone(m.data ?? {}) };
    case 'delete':
      return { version, deleted: true };
    case 'patch': {
      const state: DocData = doc && !doc.deleted && doc.state ? structuredClone(doc.state) : {};
      for (const [f, v] of Object.entries(m.set ?? {})) state[f] = structuredClone(v);
      for (const f of m.unset ?? []) delete state[f];
      for (const [f, n] of Object.entries(m.inc ?? {})) {
        const cur = state[f];
        state[f] = (typeof cur === 'number' ? cur : 0) + n;
      }
      for (const [f, els] of Object.entries(m.add ?? {})) {
        const cur = Array.isArray(state[f]) ? [...(state[f] as JSONValue[])] : [];
        for (const e of els) if (!cur.some((x) => jsonEqual(x, e))) cur.push(structuredClone(e));
        state[f] = cur;
      }
      for (const [f, els] of Object.entries(m.remove ?? {})) {
        const cur = state[f];
        if (Array.isArray(cur)) state[f] = cur.filter((x) => !els.some((e) => jsonEqual(x, e)));
      }
      return { version, state };
    }
  }
}

/**
 * Checks a document the way the server does (docs/protocol.md, "Concepts"):
 * field names must not be empty, start with '$' (except a {"$media": id}
 * reference) or contain '.', and top-level names _id, _sync and * are
 * reserved. Throws a TypeError naming the field.
 */
export function validateDoc(data: unknown, top = true, path = ''): void {
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    if (top) throw new TypeError('syncgate: a document must be a JSON object');
    return;
  }
  const keys = Object.keys(data);
  if (!top && keys.length === 1 && keys[0] === '$media') return;
  for (const k of keys) {
    if (k === '' || k.startsWith('$') || k.includes('.') || (top && (k === '_id' || k === '_sync' || k === '*'))) {
      throw new TypeError(`syncgate: invalid field name ${JSON.stringify(path + k)}: names must not be empty, start with $ or contain '.'`);
    }
    const v = (data as Record<string, unknown>)[k];
    if (Array.isArray(v)) v.forEach((e) => validateDoc(e, false, `${path}${k}.`));
    else validateDoc(v, false, `${path}${k}.`);
  }
}
