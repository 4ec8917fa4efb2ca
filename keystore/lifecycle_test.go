package keystore

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/pgcloak/pgcloak/crypto"
)

// TestEnsureSchemaAddsSealedReserved: a table made before encryptions were
// counted gets the column, and its keys keep working.
func TestEnsureSchemaAddsSealedReserved(t *testing.T) {
	db := newTestDB(t)
	ctx := context.Background()
	pool := db.pool(t)
	old := bytes.Replace([]byte(Schema), []byte("    sealed_reserved bigint NOT NULL DEFAULT 0 CHECK (sealed_reserved >= 0),\n"), nil, 1)
	if bytes.Equal(old, []byte(Schema)) {
		t.Fatal("test is stale: Schema has no sealed_reserved line to remove")
	}
	if _, err := pool.Exec(ctx, string(old)); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO pgcloak.data_keys (tenant, purpose, version, wrapped, kek_id) VALUES ('acme', 'data', 1, '\x00', 'k')`); err != nil {
		t.Fatal(err)
	}
	for i := range 2 { // the second run finds the column
		if err := EnsureSchema(ctx, pool); err != nil {
			t.Fatalf("EnsureSchema run %d: %v", i+1, err)
		}
	}
	var n int64
	if err := pool.QueryRow(ctx, `SELECT sealed_reserved FROM pgcloak.data_keys WHERE tenant = 'acme'`).Scan(&n); err != nil || n != 0 {
		t.Errorf("sealed_reserved of an old row: got %d, %v; want 0", n, err)
	}
}

// TestShredKeyClass shreds one class: both purposes of it go, the
// tenant's default class and other tenants stay, and the event names the
// class.
func TestShredKeyClass(t *testing.T) {
	db := newTestDB(t)
	ctx := context.Background()
	store := db.store(t)
	p := testProvider(t)
	cache := crypto.NewKeyCache(store, p, crypto.CacheOptions{})
	defer cache.Close()
	for _, k := range []struct{ tenant, class string }{{"acme", ""}, {"acme", "phi"}, {"globex", "phi"}} {
		for _, purpose := range []crypto.Purpose{crypto.PurposeData, crypto.PurposeIndex} {
			if _, err := cache.Active(ctx, k.tenant, k.class, purpose); err != nil {
				t.Fatal(err)
			}
		}
	}
	n, err := store.ShredKeyClass(ctx, "acme", "phi")
	if err != nil || n != 2 {
		t.Fatalf("ShredKeyClass: got %d, %v; want 2 versions", n, err)
	}
	for _, tt := range []struct {
		tenant, class string
		want          error
	}{{"acme", "phi", crypto.ErrKeyShredded}, {"acme", "", nil}, {"globex", "phi", nil}} {
		for _, purpose := range []crypto.Purpose{crypto.PurposeData, crypto.PurposeIndex} {
			if _, err := store.Active(ctx, tt.tenant, tt.class, purpose); !errors.Is(err, tt.want) {
				t.Errorf("Active(%s, %q, %s): got %v, want %v", tt.tenant, tt.class, purpose, err, tt.want)
			}
		}
	}
	// Rotating the shredded class starts it afresh, above the old versions.
	id, err := store.Rotate(ctx, p, "acme", "phi", crypto.PurposeData)
	if err != nil || id.Version != 2 {
		t.Errorf("Rotate after ShredKeyClass: got %v, %v; want version 2", id, err)
	}
}

// migratingProvider wraps with to and unwraps with to or, failing that,
// with from: a tenant moving from one KEK to another.
type migratingProvider struct{ from, to *crypto.LocalProvider }

func (m migratingProvider) Wrap(ctx context.Context, kc crypto.KeyContext, key []byte) ([]byte, string, error) {
	return m.to.Wrap(ctx, kc, key)
}

func (m migratingProvider) Unwrap(ctx context.Context, kc crypto.KeyContext, wrapped []byte) ([]byte, error) {
	if k, err := m.to.Unwrap(ctx, kc, wrapped); err == nil {
		return k, nil
	}
	return m.from.Unwrap(ctx, kc, wrapped)
}

func (m migratingProvider) GenerateDataKey(ctx context.Context, kc crypto.KeyContext) ([]byte, []byte, string, error) {
	return m.to.GenerateDataKey(ctx, kc)
}

// TestRewrap moves a tenant's keys to another KEK: every version that is
// not shredded is rewrapped, values sealed before open with the new KEK
// alone, and another tenant is untouched.
func TestRewrap(t *testing.T) {
	db := newTestDB(t)
	ctx := context.Background()
	store := db.store(t)
	pool := store.pool
	oldKEK := testProvider(t)
	newKey := make([]byte, crypto.KeySize)
	newKey[0] = 0x42
	newKEK, err := crypto.NewLocalProvider(newKey)
	if err != nil {
		t.Fatal(err)
	}
	if oldKEK.KEKID() == newKEK.KEKID() {
		t.Fatal("test providers share a KEK id")
	}

	before := crypto.NewKeyCache(store, oldKEK, crypto.CacheOptions{})
	col := crypto.Column{Table: "public.patients", Name: "ssn"}
	v1, err := before.Keyring("acme").Seal(ctx, nil, []byte("one"), col)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := before.Keyring("globex").Seal(ctx, nil, []byte("other"), col); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Rotate(ctx, oldKEK, "acme", "", crypto.PurposeData); err != nil {
		t.Fatal(err)
	}
	before.Purge("acme")
	v2, err := before.Keyring("acme").Seal(ctx, nil, []byte("two"), col)
	if err != nil {
		t.Fatal(err)
	}
	before.Close()

	done, err := store.Rewrap(ctx, migratingProvider{from: oldKEK, to: newKEK}, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if len(done) != 2 { // data versions 1 and 2; no index key was made
		t.Errorf("rewrapped: got %d versions, want 2", len(done))
	}
	for _, r := range done {
		if r.OldKEK != oldKEK.KEKID() || r.NewKEK != newKEK.KEKID() {
			t.Errorf("rewrapped %s: got kek %s -> %s, want %s -> %s", r.ID, r.OldKEK, r.NewKEK, oldKEK.KEKID(), newKEK.KEKID())
		}
	}
	if n := countRows(t, pool, "tenant = 'acme' AND kek_id = $1", newKEK.KEKID()); n != 2 {
		t.Errorf("acme rows under the new KEK: got %d, want 2", n)
	}
	if n := countRows(t, pool, "tenant = 'globex' AND kek_id = $1", oldKEK.KEKID()); n != 1 {
		t.Errorf("globex rows under the old KEK: got %d, want 1", n)
	}

	after := crypto.NewKeyCache(store, newKEK, crypto.CacheOptions{})
	defer after.Close()
	for _, v := range []struct {
		sealed []byte
		want   string
	}{{v1, "one"}, {v2, "two"}} {
		if pt, err := after.Keyring("acme").Open(ctx, nil, v.sealed, col); err != nil || string(pt) != v.want {
			t.Errorf("open with the new KEK only: got %q, %v; want %q", pt, err, v.want)
		}
	}

	// A provider that cannot unwrap leaves everything as it was.
	if _, err := store.Rewrap(ctx, oldKEK, "acme"); err == nil {
		t.Error("rewrap with a KEK that cannot unwrap: got nil error")
	}
	if n := countRows(t, pool, "tenant = 'acme' AND kek_id = $1", newKEK.KEKID()); n != 2 {
		t.Errorf("after a failed rewrap: got %d rows under the new KEK, want 2", n)
	}
}

// TestReserveSeals has replicas reserve at once: together they never get
// more than the limit, and a shredded version reserves nothing.
func TestReserveSeals(t *testing.T) {
	db := newTestDB(t)
	ctx := context.Background()
	store := db.store(t)
	id, err := store.Rotate(ctx, testProvider(t), "acme", "", crypto.PurposeData)
	if err != nil {
		t.Fatal(err)
	}
	const limit = 1000
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		total uint64
	)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := New(db.pool(t))
			for {
				n, err := s.ReserveSeals(ctx, id, 7, limit)
				if err != nil {
					t.Error(err)
					return
				}
				if n == 0 {
					return
				}
				mu.Lock()
				total += n
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if total != limit {
		t.Errorf("reserved together: got %d, want %d", total, limit)
	}
	infos, err := store.List(ctx, "acme")
	if err != nil || len(infos) != 1 || infos[0].SealsReserved != limit {
		t.Errorf("List: got %+v, %v; want SealsReserved %d", infos, err, limit)
	}
	if _, err := store.Shred(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := store.ReserveSeals(ctx, id, 7, 2*limit); !errors.Is(err, crypto.ErrKeyShredded) {
		t.Errorf("reserve under a shredded version: got %v, want ErrKeyShredded", err)
	}
	if _, err := store.ReserveSeals(ctx, crypto.KeyID{Tenant: "nobody", Purpose: crypto.PurposeData, Version: 1}, 1, 10); !errors.Is(err, crypto.ErrKeyNotFound) {
		t.Errorf("reserve under a missing version: got %v, want ErrKeyNotFound", err)
	}
}

// TestSealLimitRotates runs two replicas' caches with a limit of 10
// encryptions per key: each version seals at most 10 values between them,
// the keys rotate on their own (once per limit, however many replicas hit
// it), events carry the reason, and every value still opens.
func TestSealLimitRotates(t *testing.T) {
	db := newTestDB(t)
	ctx := context.Background()
	store := db.store(t)
	p := testProvider(t)
	var (
		mu        sync.Mutex
		rotations []crypto.KeyID
	)
	opts := crypto.CacheOptions{
		RotateAfterSeals: 10,
		SealBlock:        4,
		OnSealLimitRotate: func(from, to crypto.KeyID) {
			mu.Lock()
			defer mu.Unlock()
			if to.Version != from.Version+1 {
				t.Errorf("rotated from %s to %s", from, to)
			}
			rotations = append(rotations, to)
		},
	}
	r1 := crypto.NewKeyCache(store, p, opts)
	defer r1.Close()
	r2 := crypto.NewKeyCache(New(db.pool(t)), p, opts)
	defer r2.Close()

	col := crypto.Column{Table: "public.patients", Name: "ssn"}
	const seals = 50
	sealed := make([][]byte, 0, seals)
	perVersion := map[uint32]int{}
	var wg sync.WaitGroup
	for i := range seals {
		r := r1
		if i%3 == 0 {
			r = r2
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := r.Keyring("acme").Seal(ctx, nil, []byte("value"), col)
			if err != nil {
				t.Error(err)
				return
			}
			version, _ := crypto.KeyVersion(v)
			mu.Lock()
			sealed = append(sealed, v)
			perVersion[version]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	sum := 0
	for v, n := range perVersion {
		if n > 10 {
			t.Errorf("version %d sealed %d values, want at most 10", v, n)
		}
		sum += n
	}
	if sum != seals {
		t.Errorf("sealed %d values, want %d", sum, seals)
	}
	if len(perVersion) < seals/10 {
		t.Errorf("versions used: got %d, want at least %d", len(perVersion), seals/10)
	}
	infos, err := store.List(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if len(rotations) != len(infos)-1 {
		t.Errorf("rotations reported: got %d, want one per version after the first (%d)", len(rotations), len(infos)-1)
	}
	for _, k := range infos {
		if k.SealsReserved > 10 {
			t.Errorf("version %d: %d encryptions reserved, want at most 10", k.ID.Version, k.SealsReserved)
		}
	}
	for _, v := range sealed {
		if pt, err := r2.Keyring("acme").Open(ctx, nil, v, col); err != nil || string(pt) != "value" {
			t.Fatalf("open a value of an older version: got %q, %v", pt, err)
		}
	}
	// Other tenants count on their own.
	if _, err := r1.Keyring("globex").Seal(ctx, nil, []byte("value"), col); err != nil {
		t.Errorf("another tenant seals: %v", err)
	}
}

// TestSealAfterShredCounting: a cached key whose version gets shredded
// stops sealing when the cache next reserves, even before any purge.
func TestSealAfterShredCounting(t *testing.T) {
	db := newTestDB(t)
	ctx := context.Background()
	store := db.store(t)
	cache := crypto.NewKeyCache(store, testProvider(t), crypto.CacheOptions{SealBlock: 1})
	defer cache.Close()
	col := crypto.Column{Table: "public.patients", Name: "ssn"}
	if _, err := cache.Keyring("acme").Seal(ctx, nil, []byte("x"), col); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Shred(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := cache.Keyring("acme").Seal(ctx, nil, []byte("x"), col); !errors.Is(err, crypto.ErrKeyShredded) {
		t.Errorf("seal after shred, no purge: got %v, want ErrKeyShredded", err)
	}
}
