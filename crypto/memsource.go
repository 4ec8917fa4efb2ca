package crypto

import (
	"bytes"
	"context"
	"fmt"
	"sync"
)

// MemoryKeySource is a KeySource that keeps wrapped keys in process memory,
// for tests and in-process experiments: its keys, and so every value sealed
// with them, are gone when the process exits. Servers use package keystore.
// It is safe for concurrent use.
type MemoryKeySource struct {
	mu   sync.Mutex
	keys map[activeID][]memKey // index i holds version i+1
}

type memKey struct {
	w        WrappedKey
	shredded bool
}

// NewMemoryKeySource returns an empty MemoryKeySource.
func NewMemoryKeySource() *MemoryKeySource {
	return &MemoryKeySource{keys: make(map[activeID][]memKey)}
}

// Active implements KeySource.
func (s *MemoryKeySource) Active(ctx context.Context, tenant, keyClass string, purpose Purpose) (WrappedKey, error) {
	if err := ctx.Err(); err != nil {
		return WrappedKey{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.activeLocked(activeID{tenant, keyClass, purpose})
}

func (s *MemoryKeySource) activeLocked(aid activeID) (WrappedKey, error) {
	versions := s.keys[aid]
	if len(versions) == 0 {
		return WrappedKey{}, ErrKeyNotFound
	}
	for i := len(versions) - 1; i >= 0; i-- {
		if !versions[i].shredded {
			return copyWrapped(versions[i].w), nil
		}
	}
	return WrappedKey{}, ErrKeyShredded
}

// Version implements KeySource.
func (s *MemoryKeySource) Version(ctx context.Context, id KeyID) (WrappedKey, error) {
	if err := ctx.Err(); err != nil {
		return WrappedKey{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	versions := s.keys[activeID{id.Tenant, id.KeyClass, id.Purpose}]
	if id.Version == 0 || int(id.Version) > len(versions) {
		return WrappedKey{}, ErrKeyNotFound
	}
	k := versions[id.Version-1]
	if k.shredded {
		return WrappedKey{}, ErrKeyShredded
	}
	return copyWrapped(k.w), nil
}

// CreateIfMissing implements KeySource.
func (s *MemoryKeySource) CreateIfMissing(ctx context.Context, w WrappedKey) (WrappedKey, error) {
	if err := ctx.Err(); err != nil {
		return WrappedKey{}, err
	}
	if w.ID.Version != 1 {
		return WrappedKey{}, fmt.Errorf("crypto: create key %s: only version 1 is created just in time", w.ID)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	aid := activeID{w.ID.Tenant, w.ID.KeyClass, w.ID.Purpose}
	if len(s.keys[aid]) == 0 {
		s.keys[aid] = []memKey{{w: copyWrapped(w)}}
	}
	return s.activeLocked(aid)
}

// Rotate makes a new active version of the (tenant, keyClass, purpose) key
// with p and returns its id.
func (s *MemoryKeySource) Rotate(ctx context.Context, p Provider, tenant, keyClass string, purpose Purpose) (KeyID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	aid := activeID{tenant, keyClass, purpose}
	id := KeyID{tenant, keyClass, purpose, uint32(len(s.keys[aid]) + 1)}
	plaintext, wrapped, kekID, err := p.GenerateDataKey(ctx, id.Context())
	if err != nil {
		return KeyID{}, err
	}
	clear(plaintext)
	s.keys[aid] = append(s.keys[aid], memKey{w: WrappedKey{ID: id, Wrapped: wrapped, KEKID: kekID}})
	return id, nil
}

// Shred destroys every version of every key of tenant and returns how many
// it destroyed. Purge the tenant from every KeyCache afterwards.
func (s *MemoryKeySource) Shred(tenant string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for aid, versions := range s.keys {
		if aid.tenant != tenant {
			continue
		}
		for i := range versions {
			if !versions[i].shredded {
				clear(versions[i].w.Wrapped)
				versions[i] = memKey{w: WrappedKey{ID: versions[i].w.ID}, shredded: true}
				n++
			}
		}
	}
	return n
}

func copyWrapped(w WrappedKey) WrappedKey {
	w.Wrapped = bytes.Clone(w.Wrapped)
	return w
}
