// Wire types of syncgate protocol v1 (docs/protocol.md), as far as the
// client uses them.

/** A JSON value as documents hold it. */
export type JSONValue = null | boolean | number | string | JSONValue[] | { [key: string]: JSONValue };
/** A document: a JSON object. */
export type DocData = { [key: string]: JSONValue };

/** Field operations of a patch. A field may appear in only one of set, unset, inc and add (remove may pair with add). */
export interface PatchOps {
  set?: DocData;
  unset?: string[];
  inc?: { [field: string]: number };
  add?: { [field: string]: JSONValue[] };
  remove?: { [field: string]: JSONValue[] };
}

export type OpKind = 'put' | 'patch' | 'delete';

/** A mutation as pushed. */
export interface Mutation extends PatchOps {
  mid: number;
  scope: string;
  col: string;
  id: string;
  op: OpKind;
  base: number;
  hlc: string;
  data?: DocData;
  resolves?: string;
}

export type Outcome = 'applied' | 'merged' | 'conflict' | 'rejected';

export interface MutationResult {
  mid: number;
  outcome: Outcome;
  conflict?: string;
  version?: number;
  seq?: number;
  state?: DocData;
  deleted?: boolean;
  code?: string;
  message?: string;
  replayed?: boolean;
}

export interface ChangeEntry {
  seq: number;
  col: string;
  id: string;
  version: number;
  op: OpKind;
  state?: DocData;
  deleted?: boolean;
  user?: string;
  device?: string;
  mid?: number;
}

export interface ChangesMsg {
  type: 'changes';
  rid?: number;
  scope: string;
  from: number;
  to: number;
  head: number;
  more?: boolean;
  entries: ChangeEntry[];
}

export interface ResetMsg {
  type: 'reset';
  rid?: number;
  scope: string;
  reason: string;
  horizon: number;
  head: number;
}

export interface ScopeState {
  scope: string;
  head: number;
  horizon: number;
  reset?: boolean;
}

/** A manual conflict record (docs/protocol.md, "conflict"). */
export interface Conflict {
  id: string;
  scope: string;
  col: string;
  docId: string;
  base: number;
  baseState?: DocData;
  mine: Mutation;
  theirs?: DocData;
  theirsVersion: number;
  theirsDeleted?: boolean;
  user: string;
  device: string;
  mid: number;
  status: 'open' | 'resolved' | 'abandoned';
  created: number;
  closed?: number;
}

export interface WelcomeMsg {
  type: 'welcome';
  rid?: number;
  protocol: number;
  session: string;
  node: string;
  user: string;
  device: string;
  lastMutation: number;
  scopes: ScopeState[];
  expiresAt?: number;
  sessionExpiresAt?: number;
  conflicts?: Conflict[];
  maxMessageBytes: number;
  maxBatch: number;
  pullLimit: number;
}

export interface ErrorMsg {
  type: 'error';
  rid?: number;
  code: string;
  message: string;
  retryable?: boolean;
}

/** A room member (docs/protocol.md, "Rooms"). id is the member's connection. */
export interface Member {
  id: string;
  user: string;
  device: string;
  state?: JSONValue;
  joinedAt: number;
  updatedAt: number;
  typing?: boolean;
}

export interface RoomMsg {
  type: 'room';
  rid?: number;
  scope: string;
  room: string;
  you: string;
  members: Member[];
}

export interface RoomEventMsg {
  type: 'room_event';
  scope: string;
  room: string;
  event: 'join' | 'leave' | 'state' | 'typing';
  member: Member;
  expiresIn?: number;
}

/** Any server message, by its type field. */
export type ServerMsg = { type: string; rid?: number; [k: string]: unknown };

/** A protocol error from the server. */
export class SyncError extends Error {
  readonly code: string;
  readonly retryable: boolean;
  constructor(code: string, message: string, retryable = false) {
    super(`${code}: ${message}`);
    this.name = 'SyncError';
    this.code = code;
    this.retryable = retryable;
  }
}

/** Close codes the client treats specially (docs/protocol.md, "Close codes"). */
export const Close = {
  protocolError: 4000,
  unauthorized: 4001,
  tokenExpired: 4002,
  slowConsumer: 4008,
  shutdown: 4010,
  sessionRevoked: 4011,
  sessionExpired: 4012,
  disconnected: 4013,
} as const;
