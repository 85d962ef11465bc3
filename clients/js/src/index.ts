// @syncgate/client: the offline-first client of the syncgate gateway.
export { SyncClient, Collection } from './client.js';
export type { SyncClientOptions, Status, ConnectionState, Rejection, ClientEvents, Subscriber } from './client.js';
export { memoryStorage, indexedDBStorage } from './storage.js';
export type { Storage, StorageOp } from './storage.js';
export { Backoff } from './backoff.js';
export type { BackoffOptions } from './backoff.js';
export { Room, Presence } from './presence.js';
export type { AppState, RoomEvents } from './presence.js';
export { Media } from './media.js';
export type { MediaRef, MediaInfo, Upload, UploadOptions } from './media.js';
export { SyncError, Close } from './types.js';
export type { DocData, JSONValue, PatchOps, Mutation, MutationResult, Conflict, Member } from './types.js';
export type { WebSocketConstructor, WebSocketLike } from './socket.js';
