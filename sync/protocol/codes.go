package protocol

import "fmt"

// Code is an error code from the closed table below. Codes are stable API:
// clients switch on them. docs/protocol.md lists each with its meaning.
type Code string

const (
	// Request errors (the connection stays open).
	CodeMalformed         Code = "malformed"              // not valid JSON, or a field has the wrong type
	CodeUnknownType       Code = "unknown_type"           // the type field names no client message
	CodeBadRequest        Code = "bad_request"            // a required field is missing or out of range
	CodeInvalidField      Code = "invalid_field_name"     // a field name starts with $, contains '.', is empty or reserved
	CodeInvalidName       Code = "invalid_name"           // a scope, collection or document id is malformed
	CodeForbiddenScope    Code = "forbidden_scope"        // the token does not grant this scope
	CodeUnknownCollection Code = "unknown_collection"     // the collection is not configured (strict collections)
	CodeTooLarge          Code = "too_large"              // a document, batch or awareness state exceeds a limit, or too many rooms
	CodeTooDeep           Code = "too_deep"               // a document nests deeper than the limit
	CodeStaleMutation     Code = "stale_mutation"         // mutation id not above the device's last one, and no receipt is kept
	CodeBadOp             Code = "bad_op"                 // the op cannot apply (e.g. inc on a non-number)
	CodeNotReady          Code = "not_ready"              // a message other than hello before the session is open
	CodeNotFound          Code = "not_found"              // the named conflict, session, media, upload or device (HTTP APIs) does not exist, or the room was not joined
	CodeForbidden         Code = "forbidden"              // the token may not act on this resource (HTTP API: another user's session)
	CodeInternal          Code = "internal"               // server fault; retry later
	CodeUnavailable       Code = "unavailable"            // storage is unavailable; retry with backoff
	CodeMediaNotFound     Code = "media_not_found"        // a {"$media": id} ref names no media of the mutation's scope
	CodeUnsupportedMedia  Code = "unsupported_media_type" // media upload: the MIME type is not allowed (HTTP 415)
	CodeDigestMismatch    Code = "digest_mismatch"        // media upload: content does not match the SHA-256 announced
	CodeUploadConflict    Code = "upload_conflict"        // media upload: the part was stored with other content, or the upload is complete (HTTP 409)
	CodeUploadIncomplete  Code = "upload_incomplete"      // media upload: complete was asked with parts missing (HTTP 409)

	// Fatal errors: sent just before the matching close code.
	CodeUnauthorized Code = "unauthorized"     // token missing, malformed, bad signature, wrong iss/aud, not yet valid
	CodeTokenExpired Code = "token_expired"    // the token expired and no auth refresh arrived
	CodeProtocol     Code = "protocol_version" // unsupported protocol version
	CodeHelloTimeout Code = "hello_timeout"    // no hello within HelloTimeout
	CodeSlowConsumer Code = "slow_consumer"    // the outbound queue overflowed
	CodeShutdown     Code = "shutdown"         // the node is draining
	// CodeSessionRevoked: the session was revoked (by its user or an
	// admin) or evicted (the user began more sessions than allowed), or
	// hello asked to resume such a session.
	CodeSessionRevoked Code = "session_revoked"
	// CodeSessionExpired: the open session's record expired or vanished
	// from the store (the store was unreachable for longer than the TTL).
	CodeSessionExpired Code = "session_expired"
	// CodeDisconnected: support staff disconnected the device
	// (POST /v1/support/devices/{id}/disconnect); it may reconnect.
	CodeDisconnected Code = "disconnected"
)

// Retryable reports whether a request that failed with c may succeed if sent
// again unchanged.
func (c Code) Retryable() bool {
	return c == CodeInternal || c == CodeUnavailable
}

// Error is a protocol error: a code plus a human message.
type Error struct {
	Code    Code
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("protocol: %s: %s", e.Code, e.Message) }

// Errorf builds a protocol error.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// WebSocket close codes. 1000-2999 are the RFC's; 4000-4999 are ours.
// A client reconnects (with backoff and jitter) after every code except the
// ones marked "do not reconnect".
const (
	CloseNormal        = 1000 // the client closed, or the server finished a clean close
	CloseMessageTooBig = 1009 // a frame exceeded MaxMessageBytes (do not resend it)
	CloseInternal      = 1011 // unexpected server fault

	CloseProtocolError  = 4000 // malformed or out-of-order hello, bad protocol version (do not reconnect unchanged)
	CloseUnauthorized   = 4001 // bad token (do not reconnect without a new token)
	CloseTokenExpired   = 4002 // token expired without refresh (get a new token, then reconnect)
	CloseHelloTimeout   = 4003 // no hello within HelloTimeout
	ClosePingTimeout    = 4004 // no pong (or any frame) within PongTimeout
	CloseSlowConsumer   = 4008 // outbound queue overflowed; reconnect and resume from the checkpoint
	CloseShutdown       = 4010 // the node is draining; reconnect (any node) after jitter
	CloseSessionRevoked = 4011 // the session was revoked or evicted (forget its id; do not reconnect with this token)
	CloseSessionExpired = 4012 // the session expired while connected (reconnect without its id: a new one begins)
	CloseDisconnected   = 4013 // support staff disconnected the device; reconnect after backoff
)
