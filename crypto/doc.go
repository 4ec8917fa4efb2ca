// Package crypto is pgcloak's cryptography: the format of an encrypted
// value, the blind index, the key hierarchy, the data-key cache and the key
// providers.
//
// # Layer
//
// crypto knows bytes and identities - a tenant, a "schema.table", a column,
// a key class - as plain strings, and nothing else: it never imports
// pg_query, pgproto3, pgx, net, config or any other pgcloak package
// (TestDeps enforces this). What a value's bytes are is decided above it:
// package coltype turns a value into its canonical text, and that text is
// what gets sealed and indexed. Where wrapped keys are stored is decided
// beside it: package keystore implements KeySource over the upstream
// database.
//
// # Key hierarchy
//
//	KEK (Provider: local master key file, or AWS KMS)
//	 └─ wraps data keys, one per (tenant, key class, purpose, version)
//	     ├─ purpose "data":  AES-256-GCM, one cipher.AEAD per version (Envelope)
//	     └─ purpose "index": HMAC-SHA256 (BlindIndex)
//
// Only wrapped data keys are stored (KeySource), bound to their KeyContext
// (tenant, class, purpose), so every replica can unwrap them and no row can
// be moved to another tenant's key. A tenant's version 1 is generated just
// in time on its first write; if several replicas race, the KeySource keeps
// one and the others unwrap it. Rotation adds a higher version, which new
// values use; old versions stay readable because every value names its key
// version (see Envelope.Seal for the format). Shredding destroys the wrapped
// keys and purges them from every cache, after which the tenant's values -
// backups included - read as ErrDecrypt.
//
// # What a session sees
//
// A session holds a Keyring, an immutable value naming its tenant and the
// process-wide KeyCache. Writes seal with the tenant's active key;
// reads open with the version the value names; equality predicates use the
// blind index of the normalised canonical text. The KeyCache is shared by
// all sessions and keyed by key id, never by connection; concurrent misses
// for one key make one provider call (singleflight), entries live at most
// their TTL, and evicted keys are zeroed, best effort (see DataKey.Destroy).
//
// # Failures
//
// Everything that is a property of one value - malformed, tampered, for
// another tenant, table or column, under an unknown or shredded key
// version - is the single opaque ErrDecrypt, so no error is an oracle.
// Failures to reach the keystore or the KMS, and a master key that does not
// unwrap the stored keys (ErrUnwrap), are returned as other errors: they are
// faults to fix, never values to hide behind on_decrypt_error: null.
// No error, log field or String method in this package holds key material
// or plaintext.
package crypto
