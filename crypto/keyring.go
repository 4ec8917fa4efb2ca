package crypto

import (
	"context"
	"fmt"
)

// Column identifies a declared column for the keyring: which cell identity
// its values are bound to and which key class seals them.
type Column struct {
	Table    string // schema-qualified: "public.patients"
	Name     string
	KeyClass string // DefaultKeyClass unless the column declares key_class
}

// Keyring is one tenant's view of the keys: it seals and indexes with the
// tenant's active keys and opens with whichever version a value names. It
// is a small immutable value (the tenant and the shared KeyCache), safe for
// concurrent use; a session holds one and replaces it when its tenant
// changes (SET pgcloak.tenant_token), so no call can mix two tenants. The
// zero Keyring has no tenant and fails every call with ErrNoTenant.
//
// Rotation and shredding never modify a Keyring or a DataKey: they change
// the KeySource and purge the cache, and the next call loads the new state.
type Keyring struct {
	cache  *KeyCache
	tenant string
}

// Tenant is the tenant whose keys the keyring uses.
func (k Keyring) Tenant() string { return k.tenant }

func (k Keyring) check() error {
	if k.cache == nil || k.tenant == "" {
		return ErrNoTenant
	}
	return nil
}

func (k Keyring) valueID(col Column) ValueID {
	return ValueID{Tenant: k.tenant, Table: col.Table, Column: col.Name}
}

// Seal encrypts plaintext, a value's canonical text, for col with the
// tenant's active data key of col's class, creating the key on the tenant's
// first write, and appends the sealed value to dst (see Envelope.Seal).
// A tenant whose keys were shredded gets ErrKeyShredded; any other error
// is an operational fault (keystore or provider unavailable).
//
// When the KeySource is a SealCounter, every seal is counted against the
// data key version's limit (CacheOptions.RotateAfterSeals), and the key is
// rotated when the limit is reached: mostly one atomic decrement, and one
// keystore round trip per reserved block.
func (k Keyring) Seal(ctx context.Context, dst, plaintext []byte, col Column) ([]byte, error) {
	if err := k.check(); err != nil {
		return nil, err
	}
	key, err := k.cache.sealKey(ctx, k.tenant, col.KeyClass)
	if err != nil {
		return nil, err
	}
	return key.Envelope().Seal(dst, plaintext, k.valueID(col)), nil
}

// Open decrypts a value of col sealed for this tenant and appends the
// plaintext to dst. Everything that is about the value - malformed,
// tampered, sealed for another tenant, table or column, naming a key
// version the tenant does not have or has shredded - is ErrDecrypt. Any
// other error is an operational fault (keystore or provider unavailable,
// a master key that does not match: ErrUnwrap) and must not be treated as
// an undecryptable value.
func (k Keyring) Open(ctx context.Context, dst, value []byte, col Column) ([]byte, error) {
	if err := k.check(); err != nil {
		return nil, err
	}
	version, err := KeyVersion(value)
	if err != nil {
		return nil, ErrDecrypt
	}
	key, err := k.dataKey(ctx, version, col)
	if err != nil {
		return nil, err
	}
	return key.Envelope().Open(dst, value, k.valueID(col))
}

// dataKey returns the data key of col's class at version for opening a
// value: a version the tenant does not have or has shredded is ErrDecrypt,
// any other error an operational fault.
func (k Keyring) dataKey(ctx context.Context, version uint32, col Column) (*DataKey, error) {
	key, err := k.cache.Version(ctx, KeyID{k.tenant, col.KeyClass, PurposeData, version})
	if isVerdict(err) {
		return nil, ErrDecrypt
	}
	if err != nil {
		return nil, fmt.Errorf("crypto: open %s.%s: %w", col.Table, col.Name, err)
	}
	return key, nil
}

// BlindIndex computes the blind index of value, a value's canonical text,
// for col with the tenant's active index key of col's class, creating the
// key on first use, and appends it to dst (see BlindIndex.Sum). Errors are
// as for Seal.
//
// The index key's version is not recorded in the index value, so rotating
// a tenant's index key makes existing index values unmatchable until they
// are recomputed; rotate the data purpose only, unless re-indexing.
func (k Keyring) BlindIndex(ctx context.Context, dst, value []byte, col Column, norm Normalization) ([]byte, error) {
	if err := k.check(); err != nil {
		return nil, err
	}
	switch norm {
	case NormalizeNone, NormalizeLower, "":
	default:
		return nil, fmt.Errorf("crypto: unknown normalization %q", string(norm))
	}
	key, err := k.cache.Active(ctx, k.tenant, col.KeyClass, PurposeIndex)
	if err != nil {
		return nil, err
	}
	return key.BlindIndex().Sum(dst, value, k.valueID(col), norm), nil
}

// Opener is Keyring.Open for one goroutine that opens many values, such as
// the rows of a result, through a ColumnOpener per column: it remembers the
// last few data keys its column openers used (a row often holds columns of
// several key classes) and skips the cache lookup while the cache has
// removed nothing since (no expiry, eviction, purge or shred). It is not
// safe for concurrent use.
type Opener struct {
	ring     Keyring
	removals uint64
	keys     [4]*DataKey
	nextKey  int // the slot the next key miss fills
}

// Opener returns an Opener over the keyring.
func (k Keyring) Opener() *Opener { return &Opener{ring: k} }

// key returns the data key of col's class at version, from the Opener's
// memory when the cache has removed nothing since it was remembered.
func (o *Opener) key(ctx context.Context, version uint32, col Column) (*DataKey, error) {
	k := o.ring
	if err := k.check(); err != nil {
		return nil, err
	}
	if removals := k.cache.removals.Load(); removals != o.removals {
		o.keys, o.removals = [4]*DataKey{}, removals
	}
	for _, c := range o.keys {
		// The tenant and purpose are the Opener's own.
		if c != nil && c.id.Version == version && c.id.KeyClass == col.KeyClass {
			return c, nil
		}
	}
	removals := k.cache.removals.Load() // before the lookup: a removal after it invalidates
	key, err := k.dataKey(ctx, version, col)
	if err != nil {
		return nil, err
	}
	if removals == o.removals {
		o.keys[o.nextKey] = key
		o.nextKey = (o.nextKey + 1) % len(o.keys)
	}
	return key, nil
}

// ColumnOpener opens the values of one column for an Opener's goroutine.
// It keeps the data key and associated data of the key version it opened
// last, so a column's values, nearly all of one version, cost one header
// check and the AES-GCM open each. Like the Opener, it drops what it keeps
// as soon as the cache removes any key (expiry, eviction, purge, shred).
type ColumnOpener struct {
	o        *Opener
	col      Column
	env      *Envelope // of the key version opened last; nil: nothing kept
	removals uint64
	aad      []byte
}

// Column returns a ColumnOpener for col's values.
func (o *Opener) Column(col Column) *ColumnOpener { return &ColumnOpener{o: o, col: col} }

// Open is Keyring.Open for the column.
func (c *ColumnOpener) Open(ctx context.Context, dst, value []byte) ([]byte, error) {
	version, err := KeyVersion(value)
	if err != nil {
		return nil, ErrDecrypt
	}
	if c.env == nil || version != c.env.version || c.o.ring.cache.removals.Load() != c.removals {
		c.env = nil
		if err := c.o.ring.check(); err != nil {
			return nil, err
		}
		removals := c.o.ring.cache.removals.Load() // before the lookup: a removal after it invalidates
		key, err := c.o.key(ctx, version, c.col)
		if err != nil {
			return nil, err
		}
		c.aad = appendAAD(c.aad[:0], version, c.o.ring.valueID(c.col))
		c.env, c.removals = key.Envelope(), removals
	}
	out, err := c.env.aead.Open(dst, value[5:headerSize], value[headerSize:], c.aad)
	if err != nil {
		return nil, ErrDecrypt
	}
	return out, nil
}
