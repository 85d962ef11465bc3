import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { Presence } from '../../src/presence.js';
import type { Member, RoomEventMsg, RoomMsg } from '../../src/types.js';

// A socket whose requests the test answers by hand, in the order it likes.
class FakeSocket {
  sent: { type: string; room?: string }[] = [];
  private waiting: { resolve: (m: unknown) => void; reject: (e: Error) => void }[] = [];
  send(m: object): void {
    this.sent.push(m as { type: string });
  }
  request<T>(m: object): Promise<T> {
    this.send(m);
    return new Promise<T>((resolve, reject) => this.waiting.push({ resolve: resolve as (m: unknown) => void, reject }));
  }
  answer(m: unknown): void {
    this.waiting.shift()!.resolve(m);
  }
  fail(): void {
    this.waiting.shift()!.reject(new Error('closed'));
  }
  get pending(): number {
    return this.waiting.length;
  }
}

const member = (id: string, state?: unknown): Member => ({ id, user: 'u', device: id, joinedAt: 1, updatedAt: 1, ...(state !== undefined ? { state: state as never } : {}) });
const ev = (event: RoomEventMsg['event'], m: Member): RoomEventMsg => ({ type: 'room_event', scope: 's', room: 'r', event, member: m });
const reply = (you: string, members: Member[]): RoomMsg => ({ type: 'room', scope: 's', room: 'r', you, members });
const tick = () => new Promise((r) => setImmediate(r));

function setup() {
  const sock = new FakeSocket();
  const host = { _socket: sock as FakeSocket | undefined, _timeout: 1000 };
  return { sock, host, presence: new Presence(host, 's') };
}

test('presence: room events that overtake the join answer are applied on top of its member list', async () => {
  const { sock, presence } = setup();
  presence._rejoin();
  const room = presence.join('r');
  assert.equal(sock.pending, 1);
  // b joined and set its state after the server read the list for a,
  // and both events reached a before the list did.
  presence._event(ev('join', member('b', 1)));
  presence._event(ev('state', member('b', 2)));
  presence._event(ev('join', member('c')));
  presence._event(ev('leave', member('c')));
  assert.deepEqual(room.others(), [], 'nothing is shown before the answer');
  sock.answer(reply('a', [member('a')]));
  await tick();
  assert.deepEqual(
    room.others().map((m) => [m.id, m.state]),
    [['b', 2]],
  );
  // After the answer, events apply at once.
  presence._event(ev('leave', member('b')));
  assert.deepEqual(room.others(), []);
});

test('presence: a room joined before the catch-up is joined once, by the rejoin', async () => {
  const { sock, presence } = setup();
  const room = presence.join('r'); // welcomed, still pulling
  assert.equal(sock.sent.length, 0, 'no join before the rejoin');
  presence._rejoin();
  assert.deepEqual(sock.sent.map((m) => m.type), ['join']);
  sock.answer(reply('a', [member('a'), member('b')]));
  await tick();
  assert.deepEqual(room.others().map((m) => m.id), ['b']);
  // A reconnect clears the members and joins again.
  presence._offline();
  assert.deepEqual(room.others(), []);
  presence._rejoin();
  assert.equal(sock.sent.filter((m) => m.type === 'join').length, 2);
  sock.answer(reply('a2', [member('b'), member('a2')]));
  await tick();
  assert.deepEqual(room.others().map((m) => m.id), ['b']);
});
