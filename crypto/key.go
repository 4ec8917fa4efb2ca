package crypto

import (
	"errors"
	"fmt"
	"strconv"
)

// Purpose says what a data key is for. The values are persisted (in the
// keystore and in KMS encryption contexts): never change them.
type Purpose string

// Purposes.
const (
	PurposeData  Purpose = "data"  // seals values (Envelope)
	PurposeIndex Purpose = "index" // computes blind indexes (BlindIndex)
)

// Valid reports whether p is one of the purposes.
func (p Purpose) Valid() bool { return p == PurposeData || p == PurposeIndex }

// DefaultKeyClass is the key class of columns that do not name one.
const DefaultKeyClass = ""

// KeyID names one version of one data key. It is how the cache, the
// keystore and the audit log refer to keys, and is safe to log.
type KeyID struct {
	Tenant   string
	KeyClass string // DefaultKeyClass or a column's key_class
	Purpose  Purpose
	Version  uint32 // from 1
}

// String formats the id for logs, e.g. tenant="acme" class="phi" purpose=data version=3.
func (id KeyID) String() string {
	return "tenant=" + strconv.Quote(id.Tenant) + " class=" + strconv.Quote(id.KeyClass) +
		" purpose=" + string(id.Purpose) + " version=" + strconv.FormatUint(uint64(id.Version), 10)
}

// Context is the key context the id's key is wrapped under.
func (id KeyID) Context() KeyContext {
	return KeyContext{Tenant: id.Tenant, KeyClass: id.KeyClass, Purpose: id.Purpose}
}

// KeyContext is what a wrapped data key is bound to. A Provider must refuse
// to unwrap a key under any other context; for AWS KMS it is the
// EncryptionContext.
type KeyContext struct {
	Tenant   string
	KeyClass string
	Purpose  Purpose
}

// Encryption context keys (SPEC §6). Persisted inside every wrapped key.
const (
	ContextTenant   = "pgcloak:tenant"
	ContextPurpose  = "pgcloak:purpose"
	ContextKeyClass = "pgcloak:key_class" // only present for a non-default class
)

// EncryptionContext returns the context as AWS KMS's EncryptionContext:
// {"pgcloak:tenant": T, "pgcloak:purpose": P} and "pgcloak:key_class" when
// the class is not the default.
func (kc KeyContext) EncryptionContext() map[string]string {
	m := map[string]string{ContextTenant: kc.Tenant, ContextPurpose: string(kc.Purpose)}
	if kc.KeyClass != DefaultKeyClass {
		m[ContextKeyClass] = kc.KeyClass
	}
	return m
}

// DataKey is one version of one tenant's data or index key in plaintext,
// with the primitive built from it once: an Envelope for PurposeData, a
// BlindIndex for PurposeIndex. A DataKey is immutable apart from Destroy and
// safe for concurrent use.
//
// Lifetime: a DataKey handed out by a KeyCache is good for the operation at
// hand. Do not keep it across statements; ask the cache again, so that its
// TTL, eviction and Purge take effect.
type DataKey struct {
	id    KeyID
	kekID string
	key   [KeySize]byte // zeroed by Destroy
	env   *Envelope
	idx   *BlindIndex
}

// NewDataKey builds the DataKey for id from 32 plaintext key bytes, which it
// copies; the caller should clear its own copy when done. kekID names the
// key-encryption key the key was wrapped under, for audit.
func NewDataKey(id KeyID, kekID string, key []byte) (*DataKey, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("crypto: data key %s: want %d bytes, got %d", id, KeySize, len(key))
	}
	if id.Version == 0 {
		return nil, fmt.Errorf("crypto: data key %s: versions start at 1", id)
	}
	k := &DataKey{id: id, kekID: kekID}
	var err error
	switch id.Purpose {
	case PurposeData:
		k.env, err = newEnvelope(key, id.Version)
	case PurposeIndex:
		k.idx, err = newBlindIndex(key)
	default:
		err = errors.New("unknown purpose")
	}
	if err != nil {
		return nil, fmt.Errorf("crypto: data key %s: %w", id, err)
	}
	copy(k.key[:], key)
	return k, nil
}

// ID names the key.
func (k *DataKey) ID() KeyID { return k.id }

// KEKID names the key-encryption key the key was wrapped under.
func (k *DataKey) KEKID() string { return k.kekID }

// Envelope seals and opens values with the key. It is nil unless the key's
// purpose is PurposeData.
func (k *DataKey) Envelope() *Envelope { return k.env }

// BlindIndex computes index values with the key. It is nil unless the key's
// purpose is PurposeIndex.
func (k *DataKey) BlindIndex() *BlindIndex { return k.idx }

// Destroy zeroes the DataKey's copy of the raw key bytes. The KeyCache calls
// it on eviction and Purge.
//
// Zeroing is best effort, and this is what it is worth: copies of the
// bytes may exist that pgcloak does not own (the provider's response
// buffers, a goroutine stack the runtime grew and copied), and the expanded
// AES key schedule inside the cipher.AEAD and the keyed HMAC states cannot
// be zeroed at all - they stay in memory until the garbage collector
// reclaims them, and a goroutine that fetched the key before its eviction
// may still be using them. Destroy only shortens how long the plainest
// copy lives.
func (k *DataKey) Destroy() { clear(k.key[:]) }

// insecureBytes returns the raw key. Tests only: nothing in pgcloak needs
// plaintext key bytes after NewDataKey.
func (k *DataKey) insecureBytes() []byte { return k.key[:] }
