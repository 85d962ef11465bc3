// Package presence tracks who is online and who is in which room: the
// state behind the support-staff APIs (/v1/support) and the room events
// apps show as avatars, cursors and typing indicators.
//
// A Tracker stores three things:
//
//   - Online entries, one per open connection: user, device, session, node,
//     platform, app version, app state, checkpoints and the last error sent.
//     The gateway node holding the connection Connects it at hello,
//     Refreshes its entries every heartbeat (25 s by default) and
//     Disconnects it at a clean close. An entry not refreshed within the TTL
//     (60 s) expires: every read hides it, and the next Sweep removes it.
//   - Node records: each node process (an instance: name plus a random
//     suffix, so two processes never share one) renews its record every
//     heartbeat. When a node dies, Sweep removes all of its entries once
//     the record expires, even entries refreshed after the record was last
//     renewed.
//   - Room memberships, which live and die with their connection's entry:
//     removing an entry (Disconnect or Sweep) removes its memberships and
//     reports the rooms, so the gateway announces the leave. No ghost
//     cursors outlive the TTL.
//
// A device's last record (Recent) keeps the entry as it was when the
// device's latest connection ended, so support staff can see the last
// error and last seen time of an offline device.
//
// The tracker only stores. Events (online, offline, join, leave, state,
// typing) are the gateway's: it publishes them through its broker, so they
// reach every node.
//
// # Implementations
//
// MemoryTracker serves one process (the embedded default). RedisTracker
// serves a cluster (tracker_redis.go has its key layout). Both pass the
// suite in conformance_test.go.
//
// # Contract
//
// Every method is goroutine-safe. MemoryTracker's methods never block on
// anything but a short mutex; RedisTracker's do Redis round trips (one
// script per write, a pipeline per read), so callers must not call them
// under locks that a broadcaster needs. Expiry is computed from the
// tracker's clock (Options.Now) on the calling node: the nodes of a
// cluster need clocks in step to well within the TTL, which NTP gives.
package presence
