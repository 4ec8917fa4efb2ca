package proxy

import (
	"context"
	"errors"

	"github.com/pgcloak/pgcloak/crypto"
)

// CacheKeys is the production Keys: a shared crypto.KeyCache, from which
// each call takes the tenant's immutable Keyring.
type CacheKeys struct {
	Cache *crypto.KeyCache
}

func column(ref ValueRef) crypto.Column {
	return crypto.Column{Table: ref.Table, Name: ref.Column, KeyClass: ref.KeyClass}
}

// Seal encrypts plaintext for the tenant's column.
func (k CacheKeys) Seal(ctx context.Context, tenant string, ref ValueRef, plaintext []byte) ([]byte, error) {
	return k.Cache.Keyring(tenant).Seal(ctx, nil, plaintext, column(ref))
}

// BlindIndex computes the tenant's index value of a canonical value.
func (k CacheKeys) BlindIndex(ctx context.Context, tenant string, ref ValueRef, value []byte) ([]byte, error) {
	return k.Cache.Keyring(tenant).BlindIndex(ctx, nil, value, column(ref), crypto.Normalization(ref.Normalize))
}

// NewOpener returns an Opener that remembers the data key it last used.
func (k CacheKeys) NewOpener(tenant string) Opener {
	return cacheOpener{k.Cache.Keyring(tenant).Opener()}
}

type cacheOpener struct{ o *crypto.Opener }

func (c cacheOpener) Column(ref ValueRef) ColumnOpener { return c.o.Column(column(ref)) }

// isDecryptFailure reports whether err is about the value (another tenant's,
// tampered, a shredded or unknown key version) rather than about the key
// service being unreachable.
func isDecryptFailure(err error) bool {
	return errors.Is(err, crypto.ErrDecrypt)
}

// loopKeys is the context of key calls made on the relay loop's thread:
// the cache answers from what it holds or says crypto.ErrWouldWait, which
// keyError turns into errLoopWouldWait.
var loopKeys = crypto.NoWait(context.Background())

// auditEvent writes an audit event (f) at once, or, on the relay loop's
// thread, once the message being handled is done: a handler that gives up
// there (errLoopWouldWait) runs again on the goroutines, which write the
// event then, so the loop drops it (relayLoop.settleAudits).
func (s *session) auditEvent(f func()) {
	if s.onLoop {
		s.loopAudits = append(s.loopAudits, f)
		return
	}
	f()
}

// keyCtx is the context of the session's key and catalog calls: on the
// relay loop's thread, one under which neither waits for the key store,
// the provider or pg_catalog.
func (s *session) keyCtx() context.Context {
	if s.onLoop {
		return loopKeys
	}
	return context.Background()
}
