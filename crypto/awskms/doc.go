// Package awskms is the AWS KMS key provider: a crypto.Provider whose
// key-encryption keys (KEKs) live in AWS KMS and never leave it.
//
// # Layer
//
// awskms sits beside crypto, not inside it, because it opens sockets and
// crypto must not (crypto's TestDeps). It imports crypto for the Provider
// contract and the aws-sdk-go-v2 KMS client; it knows nothing of SQL,
// sessions, configuration files or the keystore. cmd/pgcloak builds a
// Provider from keys.aws and keys.tenants and hands it to crypto.KeyCache,
// which calls it only on a cache miss.
//
// # Calls
//
//	GenerateDataKey  a tenant's first key of a (key class, purpose)
//	Encrypt          Wrap: a key made elsewhere
//	Decrypt          Unwrap: a cache miss
//	DescribeKey      Ping (readiness), and to confirm a shredded tenant key
//	ScheduleKeyDeletion  `pgcloak keys shred` of a tenant with its own key
//
// Every data key is bound to its crypto.KeyContext through the KMS
// EncryptionContext ({"pgcloak:tenant": T, "pgcloak:purpose": P} and
// "pgcloak:key_class" for a non-default class), so KMS itself refuses to
// unwrap a key under another tenant's context (InvalidCiphertextException,
// crypto.ErrUnwrap here).
//
// A tenant listed in keys.tenants has a KEK of its own (bring your own
// key); every other tenant uses the default KEK. A tenant's own key is
// named in Decrypt too, so KMS unwraps that tenant's data keys with that
// key only, and scheduling its deletion shreds the tenant for good. Data
// keys of the default KEK are decrypted without naming it: the wrapped key
// names its KEK, which lets an operator move the default alias to a new
// key without making the old wrapped keys unreadable.
//
// # Failures
//
// Each operation is bounded by Options.CallTimeout, retries included; the
// SDK's standard retryer retries throttling, 5xx answers and connection
// errors with jittered exponential backoff, at most Options.MaxAttempts
// attempts. Nothing waits longer than the timeout.
//
//   - a wrapped key that does not authenticate (another context, another
//     KEK, a corrupted row) is crypto.ErrUnwrap;
//   - a tenant's own key that is pending deletion or gone is
//     crypto.ErrKeyShredded, confirmed with DescribeKey so that a transient
//     state is never taken for a shredded tenant;
//   - everything else (network, throttling, a disabled key, permissions, a
//     timeout) is ErrUnavailable, wrapped with the operation, the tenant
//     and the key id.
//
// Errors name key ids, ARNs and tenants, never key material. Plaintext data
// keys returned by the SDK are handed to the caller, who clears them;
// zeroing is best effort (see crypto.DataKey.Destroy), and the SDK's own
// response buffers are out of our reach.
package awskms
