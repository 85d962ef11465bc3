// Package auth verifies client JWTs and mints development tokens.
//
// Contract:
//
//   - A Verifier holds one or more keys (HS256 secret, RS256 or ES256 public
//     key). The token's kid header picks the key; a token without kid uses
//     the only key when exactly one is configured. The algorithm is pinned
//     per key: a token whose alg is not its key's is rejected, so an HS256
//     token "signed" with an RSA public key never verifies, and alg "none"
//     never does.
//   - Verify requires a valid signature, exp and sub; it checks nbf when
//     present, and iss and aud when the verifier has them configured, with
//     the configured leeway on exp and nbf. sub must be a valid user id and
//     every spaces entry a valid space id (as sync/protocol.ValidateScope
//     defines them), so a verified token never names a scope the engine
//     would reject.
//   - Every Verify error matches exactly one sentinel: ErrExpired (the token
//     is otherwise valid but too old: close code token_expired) or ErrInvalid
//     (anything else: unauthorized). Error text is safe to log: it never
//     holds key material, and token-supplied text in it is clipped.
//   - Claims: sub, spaces (space ids without the "space:" prefix), device
//     (optional: binds the token to one device id), roles, remember, jti,
//     exp, iat.
//   - Mint signs HS256 development tokens that a Verifier with the same
//     secret accepts. LoadOrCreateSecret creates the data-directory secret
//     exactly once, even under racing processes.
//   - FromConfig turns internal/config settings into a VerifierConfig.
//   - Verifier is immutable and safe for concurrent use; Verify does no I/O.
//     The package holds no mutable state.
package auth
