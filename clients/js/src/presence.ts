import { Emitter } from './events.js';
import type { JSONValue, Member, RoomEventMsg, RoomMsg } from './types.js';

// Presence (docs/protocol.md, "Presence and rooms"): the app's foreground
// state, and rooms whose members see each other's awareness state (cursor,
// selection) and typing. Rooms are re-joined after every reconnect, with
// the last state set, so an app joins once.

/** The part of SyncClient presence uses. */
interface Host {
  readonly _socket: { send(m: object): void; request<T>(m: object, timeoutMs: number): Promise<T> } | undefined;
  readonly _timeout: number;
}

export type AppState = 'active' | 'background';

export interface RoomEvents extends Record<string, unknown> {
  /** The members changed (joined, left, new state, typing started or stopped). */
  change: Member[];
}

/** Client-side pacing of typing signals: the server throttles to 1/s per user and room anyway. */
const TYPING_EVERY_MS = 1000;

export class Room extends Emitter<RoomEvents> {
  /** This connection's member id while joined (changes at each reconnect). */
  you: string | undefined;
  private readonly byId = new Map<string, Member>();
  private readonly typingTimers = new Map<string, ReturnType<typeof setTimeout>>();
  private state: JSONValue | undefined;
  private lastTyping = 0;
  /**
   * Events that arrived while the join was unanswered. The server
   * subscribes the connection before it reads the member list, so an
   * event can overtake the list; it is applied again on top of the list.
   */
  private early: RoomEventMsg[] | undefined;
  left = false;

  constructor(
    private readonly presence: Presence,
    readonly scope: string,
    readonly name: string,
    state?: JSONValue,
  ) {
    super();
    this.state = state;
  }

  /** The members, this connection included, by join time. */
  members(): Member[] {
    return [...this.byId.values()].sort((a, b) => (a.joinedAt ?? 0) - (b.joinedAt ?? 0) || a.id.localeCompare(b.id));
  }

  /** The other members (not this connection). */
  others(): Member[] {
    return this.members().filter((m) => m.id !== this.you);
  }

  /** Sets this connection's awareness state (at most 1 KiB of JSON by default; the server coalesces to 10/s). */
  setState(state: JSONValue): void {
    this.state = state;
    // Before the join is answered the state goes with the (re-)join.
    if (this.you) this.presence._send({ type: 'room_state', scope: this.scope, room: this.name, state });
  }

  /** Signals typing; call it on every keystroke, it is paced. */
  typing(): void {
    if (!this.you) return;
    const now = Date.now();
    if (now - this.lastTyping < TYPING_EVERY_MS) return;
    this.lastTyping = now;
    this.presence._send({ type: 'typing', scope: this.scope, room: this.name });
  }

  /** Leaves the room. */
  leave(): void {
    if (this.left) return;
    this.left = true;
    this.presence._leave(this);
    this.clear();
  }

  /** @internal */
  _joinMsg(): object {
    return { type: 'join', scope: this.scope, room: this.name, ...(this.state !== undefined ? { state: this.state } : {}) };
  }

  /** @internal A join was sent: hold events until its answer. */
  _joining(): void {
    this.early = [];
  }

  /** @internal The answer to a join: the full member list, then the events that overtook it. */
  _joined(r: RoomMsg): void {
    const early = this.early ?? [];
    this.early = undefined;
    this.you = r.you;
    this.clear(false);
    for (const m of r.members) this.byId.set(m.id, m);
    for (const ev of early) this.apply(ev);
    this.emit('change', this.members());
  }

  /** @internal The connection ended: members are unknown until the re-join. */
  clear(emit = true): void {
    this.early = undefined;
    for (const t of this.typingTimers.values()) clearTimeout(t);
    this.typingTimers.clear();
    const had = this.byId.size > 0;
    this.byId.clear();
    if (emit && had) this.emit('change', []);
  }

  /** @internal */
  _event(ev: RoomEventMsg): void {
    if (this.early) {
      this.early.push(ev);
      return;
    }
    this.apply(ev);
    this.emit('change', this.members());
  }

  private apply(ev: RoomEventMsg): void {
    const m = ev.member;
    switch (ev.event) {
      case 'leave':
        this.byId.delete(m.id);
        clearTimeout(this.typingTimers.get(m.id));
        this.typingTimers.delete(m.id);
        break;
      case 'typing': {
        this.byId.set(m.id, { ...this.byId.get(m.id), ...m, typing: true });
        clearTimeout(this.typingTimers.get(m.id));
        this.typingTimers.set(
          m.id,
          setTimeout(() => {
            const cur = this.byId.get(m.id);
            if (cur) this.byId.set(m.id, { ...cur, typing: false });
            this.typingTimers.delete(m.id);
            this.emit('change', this.members());
          }, ev.expiresIn ?? 3000),
        );
        break;
      }
      default: // join, state
        this.byId.set(m.id, { ...m, typing: this.byId.get(m.id)?.typing ?? false });
    }
  }
}

export class Presence {
  private appState: AppState = 'active';
  private readonly rooms = new Map<string, Room>();
  /**
   * Welcomed and past the catch-up (set by _rejoin, cleared by _offline).
   * A room joined before that is joined by _rejoin: joining it at once as
   * well would answer the second join with "already in room" after
   * _rejoin had cleared the first join's members.
   */
  private live = false;

  constructor(
    private readonly host: Host,
    private readonly defaultScope: string | undefined,
  ) {}

  /** Tells the server (and support staff) whether the app is in the foreground. */
  setState(state: AppState): void {
    this.appState = state;
    this._send({ type: 'app_state', state });
  }

  /** Joins a room (re-joined after each reconnect until left). */
  join(name: string, o: { scope?: string; state?: JSONValue } = {}): Room {
    const scope = o.scope ?? this.defaultScope;
    if (!scope) throw new TypeError('syncgate: presence.join() needs a scope (or SyncClient options.scope)');
    const key = `${scope}\u0000${name}`;
    let room = this.rooms.get(key);
    if (!room) {
      room = new Room(this, scope, name, o.state);
      this.rooms.set(key, room);
      if (this.live) void this.sendJoin(room);
    }
    return room;
  }

  /** @internal */
  _send(m: object): void {
    try {
      this.host._socket?.send(m);
    } catch {
      // offline: state is re-sent with the next join
    }
  }

  private async sendJoin(room: Room): Promise<void> {
    const sock = this.host._socket;
    if (!sock || room.left) return;
    room._joining();
    try {
      room._joined(await sock.request<RoomMsg>(room._joinMsg(), this.host._timeout));
    } catch {
      room.clear(false); // retried at the next connect
    }
  }

  /** @internal */
  _leave(room: Room): void {
    this.rooms.delete(`${room.scope}\u0000${room.name}`);
    this._send({ type: 'leave', scope: room.scope, room: room.name });
  }

  /** @internal The connection ended: every room's members are unknown. */
  _offline(): void {
    this.live = false;
    for (const room of this.rooms.values()) {
      room.you = undefined;
      room.clear();
    }
  }

  /** @internal After each welcome: the app state and every room. */
  _rejoin(): void {
    this.live = true;
    if (this.appState !== 'active') this._send({ type: 'app_state', state: this.appState });
    for (const room of this.rooms.values()) {
      room.clear();
      void this.sendJoin(room);
    }
  }

  /** @internal */
  _event(ev: RoomEventMsg): void {
    this.rooms.get(`${ev.scope}\u0000${ev.room}`)?._event(ev);
  }
}
