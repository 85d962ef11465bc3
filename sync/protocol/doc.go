// Package protocol defines wire protocol v1: the JSON messages exchanged over
// WebSocket (and the HTTP fallback), the closed table of error codes and the
// WebSocket close codes. docs/protocol.md is the prose form of this package;
// keep the two in step.
//
// Everything here is a plain value type; Decode is goroutine-safe and never
// panics on any input (it is fuzzed).
package protocol
