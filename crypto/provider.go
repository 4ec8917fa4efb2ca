package crypto

import "context"

// Provider holds the key-encryption key (KEK) and wraps and unwraps data
// keys with it: LocalProvider with a master key file, or AWS KMS. Plaintext
// data keys never leave the process; only wrapped ones are stored.
//
// Implementations must be safe for concurrent use, must honour ctx, and must
// refuse to unwrap a key under any KeyContext other than the one it was
// wrapped with. An unwrap that fails authentication is ErrUnwrap; a KEK that
// was destroyed (a shredded tenant's own KMS key) is ErrKeyShredded; other
// errors (network, permissions) are returned wrapped. No error may contain
// key material.
type Provider interface {
	// Wrap encrypts a plaintext data key under the KEK for kc and returns the
	// wrapped key and the id of the KEK used.
	Wrap(ctx context.Context, kc KeyContext, plaintextKey []byte) (wrapped []byte, kekID string, err error)

	// Unwrap decrypts a key wrapped by Wrap or GenerateDataKey for the same
	// kc. The caller clears the returned plaintext when done with it.
	Unwrap(ctx context.Context, kc KeyContext, wrapped []byte) ([]byte, error)

	// GenerateDataKey makes a new random 32-byte data key for kc and returns
	// it both in plaintext and wrapped.
	GenerateDataKey(ctx context.Context, kc KeyContext) (plaintext, wrapped []byte, kekID string, err error)
}

// WrappedKey is a data key as stored: its id, its wrapped bytes and the KEK
// that wrapped it.
type WrappedKey struct {
	ID      KeyID
	Wrapped []byte
	KEKID   string
}

// KeySource is where wrapped data keys are kept; package keystore
// implements it over the upstream database. Every replica shares it.
//
// Versions of one (tenant, key class, purpose) count from 1; the active
// version, the one new values use, is the highest version that is not
// shredded.
type KeySource interface {
	// Active returns the active version of the (tenant, keyClass, purpose)
	// key: ErrKeyNotFound when there is no version yet, ErrKeyShredded when
	// every version is shredded.
	Active(ctx context.Context, tenant, keyClass string, purpose Purpose) (WrappedKey, error)

	// Version returns one version: ErrKeyNotFound when it does not exist,
	// ErrKeyShredded when it was shredded.
	Version(ctx context.Context, id KeyID) (WrappedKey, error)

	// CreateIfMissing stores w, whose ID.Version is 1, unless its (tenant,
	// key class, purpose) already has a version, and then returns the active
	// version: w itself, or the key another caller (another replica) stored
	// first. Concurrent calls for one key store exactly one version 1. It is
	// ErrKeyShredded when every version is shredded.
	CreateIfMissing(ctx context.Context, w WrappedKey) (WrappedKey, error)
}
