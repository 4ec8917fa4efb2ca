// Package tenanttoken verifies and mints signed tenant tokens: the JWTs a
// token role presents with SET [LOCAL] pgcloak.tenant_token, and the
// password of a session in tenancy mode jwt (SPEC §5.1, §5.2).
//
// It sits beside config and below proxy: it takes a config.JWTTenancy and
// a token's text and returns the tenant, the subject, the token id and the
// expiry, or a *Refusal. It opens no socket to a client and knows nothing
// of sessions, SQL, data keys or the tenant pin; proxy decides what a
// verified tenant switches and writes the audit. The only network access is
// the JWKS fetch, to the URL the configuration names.
//
// A Verifier is built once per configuration (New) and is safe for
// concurrent use by every session. It holds one verification key, chosen by
// tenancy.jwt: the HS256 secret, a PEM public key (RSA, EC P-256/P-384,
// Ed25519) read at New, or a JSON Web Key Set fetched at New (an unreachable
// set is an error), refreshed in the background and fetched again when a
// token names a kid the set lacks, at most once per 10 s, so that a stream
// of made-up kids cannot turn into a stream of requests. Close stops the
// refresh.
//
// Verify checks, in this order: the token's size and shape, its alg
// against an allow-list that fits the key (never "none"; HS256 only with the
// secret, so a token "signed" with the public key's own bytes is refused),
// the signature, then the claims: exp (required), nbf and iat with the
// configured leeway, the lifetime (exp - iat, or exp - now without iat, at
// most max_lifetime), iss and aud when configured, and the tenant at the
// claim's dot path. Every refusal is a *Refusal whose Reason is one of
// Reasons; it never carries the token or any part of it (header, claims,
// kid), and neither does anything this package logs.
//
// Verified tokens are cached, keyed by the SHA-256 of the token text (the
// text itself is not kept), until exp plus leeway, in a bounded map, so a
// token an application sends with every transaction costs a hash and a map
// lookup after the first time. A cached token is not checked against the
// key again: a key removed from the JWKS stops new tokens, not those already
// verified, which live at most until their expiry (and at most
// max_lifetime).
//
// Mint makes HS256 tokens from tenancy.jwt.hs256_secret for development and
// tests (`pgcloak token`); with a public key pgcloak holds no signing key.
package tenanttoken
