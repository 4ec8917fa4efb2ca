package crypto

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"
)

var (
	ssnColumn   = Column{Table: "public.patients", Name: "ssn"}
	phiColumn   = Column{Table: "public.patients", Name: "diagnosis", KeyClass: "phi"}
	emailColumn = Column{Table: "public.patients", Name: "email"}
)

func TestKeyringRoundTrip(t *testing.T) {
	ctx := context.Background()
	c, _, _, _ := newTestCache(t, CacheOptions{})
	acme := c.Keyring("acme")
	if acme.Tenant() != "acme" {
		t.Errorf("Tenant: got %q, want acme", acme.Tenant())
	}
	for _, col := range []Column{ssnColumn, phiColumn} {
		sealed, err := acme.Seal(ctx, nil, []byte("secret"), col)
		if err != nil {
			t.Fatal(err)
		}
		pt, err := acme.Open(ctx, nil, sealed, col)
		if err != nil || string(pt) != "secret" {
			t.Errorf("%s: got %q, %v, want %q, nil", col.Name, pt, err, "secret")
		}
	}
	// The key class selects a separate key.
	a, _ := c.Active(ctx, "acme", "", PurposeData)
	b, _ := c.Active(ctx, "acme", "phi", PurposeData)
	if bytes.Equal(a.insecureBytes(), b.insecureBytes()) {
		t.Error("default and phi class: got the same key, want separate ones")
	}
}

// TestKeyringIsolation: another tenant, table, column or key class cannot
// open a value, and the failure is ErrDecrypt.
func TestKeyringIsolation(t *testing.T) {
	ctx := context.Background()
	c, _, _, _ := newTestCache(t, CacheOptions{})
	acme, globex := c.Keyring("acme"), c.Keyring("globex")
	sealed, err := acme.Seal(ctx, nil, []byte("123-45-6789"), ssnColumn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := globex.Seal(ctx, nil, []byte("x"), ssnColumn); err != nil {
		t.Fatal(err) // globex has keys of its own, version 1 like acme's
	}
	cases := map[string]struct {
		ring Keyring
		col  Column
	}{
		"other tenant":    {globex, ssnColumn},
		"tenant w/o keys": {c.Keyring("initech"), ssnColumn},
		"other table":     {acme, Column{Table: "public.people", Name: "ssn"}},
		"other column":    {acme, emailColumn},
		"other key class": {acme, Column{Table: ssnColumn.Table, Name: ssnColumn.Name, KeyClass: "phi"}},
	}
	for name, tc := range cases {
		if pt, err := tc.ring.Open(ctx, nil, sealed, tc.col); err != ErrDecrypt {
			t.Errorf("%s: got %q, %v, want ErrDecrypt", name, pt, err)
		}
	}
	if _, err := acme.Open(ctx, nil, []byte("plaintext, not sealed"), ssnColumn); err != ErrDecrypt {
		t.Errorf("garbage: got %v, want ErrDecrypt", err)
	}
}

func TestKeyringRotation(t *testing.T) {
	ctx := context.Background()
	c, src, p, _ := newTestCache(t, CacheOptions{})
	acme := c.Keyring("acme")
	old, err := acme.Seal(ctx, nil, []byte("old"), ssnColumn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.Rotate(ctx, p.Provider, "acme", "", PurposeData); err != nil {
		t.Fatal(err)
	}
	c.Purge("acme") // what the rotation notice does on every replica
	newer, err := acme.Seal(ctx, nil, []byte("new"), ssnColumn)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := KeyVersion(newer); v != 2 {
		t.Errorf("after rotation: sealed with version %d, want 2", v)
	}
	for name, v := range map[string][]byte{"old": old, "new": newer} {
		if pt, err := acme.Open(ctx, nil, v, ssnColumn); err != nil || string(pt) != name {
			t.Errorf("%s value: got %q, %v, want %q, nil", name, pt, err, name)
		}
	}
}

func TestKeyringShred(t *testing.T) {
	ctx := context.Background()
	c, src, _, _ := newTestCache(t, CacheOptions{})
	acme := c.Keyring("acme")
	sealed, err := acme.Seal(ctx, nil, []byte("secret"), ssnColumn)
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	idx, err := acme.BlindIndex(ctx, nil, []byte("secret"), ssnColumn, NormalizeNone)
	if err != nil {
		t.Fatalf("BlindIndex: %v", err)
	}
	if len(idx) != BlindIndexSize {
		t.Fatalf("index: got %d bytes, want %d", len(idx), BlindIndexSize)
	}
	src.Shred("acme")
	c.Purge("acme")
	if pt, err := acme.Open(ctx, nil, sealed, ssnColumn); err != ErrDecrypt {
		t.Errorf("Open after shred: got %q, %v, want ErrDecrypt", pt, err)
	}
	if _, err := acme.Seal(ctx, nil, []byte("x"), ssnColumn); !errors.Is(err, ErrKeyShredded) {
		t.Errorf("Seal after shred: got %v, want ErrKeyShredded", err)
	}
	if _, err := acme.BlindIndex(ctx, nil, []byte("x"), ssnColumn, NormalizeNone); !errors.Is(err, ErrKeyShredded) {
		t.Errorf("BlindIndex after shred: got %v, want ErrKeyShredded", err)
	}
}

func TestKeyringBlindIndex(t *testing.T) {
	ctx := context.Background()
	c, _, _, _ := newTestCache(t, CacheOptions{})
	acme, globex := c.Keyring("acme"), c.Keyring("globex")
	index := func(ring Keyring, value string) []byte {
		t.Helper()
		idx, err := ring.BlindIndex(ctx, nil, []byte(value), emailColumn, NormalizeLower)
		if err != nil {
			t.Fatalf("BlindIndex of %q: %v", value, err)
		}
		return idx
	}
	a1 := index(acme, "Alice@Example.com")
	a2 := index(acme, "alice@example.COM")
	g1 := index(globex, "alice@example.com")
	if !bytes.Equal(a1, a2) {
		t.Error("lower-normalised equal values: got different indexes")
	}
	if bytes.Equal(a1, g1) {
		t.Error("same value, other tenant: got equal indexes")
	}
	if _, err := acme.BlindIndex(ctx, nil, []byte("x"), emailColumn, "upper"); err == nil {
		t.Error("unknown normalization: got nil error")
	}
}

// TestKeyringOperationalErrors: a keystore that cannot be reached is not a
// decryption failure, so on_decrypt_error: null cannot hide it.
func TestKeyringOperationalErrors(t *testing.T) {
	ctx := context.Background()
	good, _, p, _ := newTestCache(t, CacheOptions{})
	sealed, _ := good.Keyring("acme").Seal(ctx, nil, []byte("x"), ssnColumn)

	down := errors.New("connection refused")
	bad := NewKeyCache(failingSource{down}, p, CacheOptions{})
	defer bad.Close()
	if _, err := bad.Keyring("acme").Open(ctx, nil, sealed, ssnColumn); errors.Is(err, ErrDecrypt) || !errors.Is(err, down) {
		t.Errorf("Open with the keystore down: got %v, want the keystore error, not ErrDecrypt", err)
	}

	// A master key that does not unwrap the stored keys is ErrUnwrap.
	wrongKEK := NewKeyCache(good.src, mustLocalProvider(t, testKey(99)), CacheOptions{})
	defer wrongKEK.Close()
	if _, err := wrongKEK.Keyring("acme").Open(ctx, nil, sealed, ssnColumn); !errors.Is(err, ErrUnwrap) || errors.Is(err, ErrDecrypt) {
		t.Errorf("Open with the wrong master key: got %v, want ErrUnwrap, not ErrDecrypt", err)
	}
}

func TestKeyringWithoutTenant(t *testing.T) {
	ctx := context.Background()
	c, _, _, _ := newTestCache(t, CacheOptions{})
	for name, ring := range map[string]Keyring{"zero": {}, "empty tenant": c.Keyring("")} {
		if _, err := ring.Seal(ctx, nil, []byte("x"), ssnColumn); !errors.Is(err, ErrNoTenant) {
			t.Errorf("%s Seal: got %v, want ErrNoTenant", name, err)
		}
		if _, err := ring.Open(ctx, nil, []byte("x"), ssnColumn); !errors.Is(err, ErrNoTenant) {
			t.Errorf("%s Open: got %v, want ErrNoTenant", name, err)
		}
		if _, err := ring.BlindIndex(ctx, nil, []byte("x"), ssnColumn, NormalizeNone); !errors.Is(err, ErrNoTenant) {
			t.Errorf("%s BlindIndex: got %v, want ErrNoTenant", name, err)
		}
	}
}

// TestOpenerForgetsPurgedKeys: the data keys an Opener remembers serve all
// of its column openers without going to the cache, and are dropped as soon
// as the cache removes anything, so a shred reaches them at once.
func TestOpenerForgetsPurgedKeys(t *testing.T) {
	ctx := context.Background()
	c, src, _, _ := newTestCache(t, CacheOptions{})
	acme := c.Keyring("acme")
	sealed, err := acme.Seal(ctx, nil, []byte("secret"), ssnColumn)
	if err != nil {
		t.Fatal(err)
	}
	mail, err := acme.Seal(ctx, nil, []byte("a@b"), emailColumn)
	if err != nil {
		t.Fatal(err)
	}
	o := acme.Opener()
	ssn := o.Column(ssnColumn)
	for i := range 3 {
		if pt, err := ssn.Open(ctx, nil, sealed); err != nil || string(pt) != "secret" {
			t.Fatalf("Open %d: got %q, %v", i, pt, err)
		}
	}
	hits := c.Stats().Hits
	email := o.Column(emailColumn)
	if pt, err := email.Open(ctx, nil, mail); err != nil || string(pt) != "a@b" {
		t.Fatalf("another column: got %q, %v", pt, err)
	}
	if got := c.Stats().Hits; got != hits {
		t.Errorf("a remembered key still went to the cache: hits %d -> %d", hits, got)
	}
	if _, err := email.Open(ctx, nil, sealed); err != ErrDecrypt {
		t.Errorf("value of another column: got %v, want ErrDecrypt", err)
	}
	src.Shred("acme")
	c.Purge("acme")
	if pt, err := ssn.Open(ctx, nil, sealed); err != ErrDecrypt {
		t.Errorf("Open after shred: got %q, %v, want ErrDecrypt", pt, err)
	}
}

// TestColumnOpener: a ColumnOpener opens its column's values of every key
// version, refuses another column's, skips the cache while it keeps a key,
// and drops the key as soon as the cache removes one.
func TestColumnOpener(t *testing.T) {
	ctx := context.Background()
	c, src, p, _ := newTestCache(t, CacheOptions{})
	acme := c.Keyring("acme")
	seal := func(plain string, col Column) []byte {
		t.Helper()
		v, err := acme.Seal(ctx, nil, []byte(plain), col)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	v1 := seal("one", ssnColumn)
	other := seal("other column", emailColumn)
	if _, err := src.Rotate(ctx, p.Provider, "acme", "", PurposeData); err != nil {
		t.Fatal(err)
	}
	c.Purge("acme")
	v2 := seal("two", ssnColumn)
	if mustVersion(t, v1) == mustVersion(t, v2) {
		t.Fatalf("rotation kept version %d", mustVersion(t, v1))
	}

	col := acme.Opener().Column(ssnColumn)
	for i := range 3 { // alternating versions
		for _, tc := range []struct {
			v    []byte
			want string
		}{{v1, "one"}, {v2, "two"}, {v2, "two"}} {
			if pt, err := col.Open(ctx, nil, tc.v); err != nil || string(pt) != tc.want {
				t.Fatalf("round %d: got %q, %v, want %q", i, pt, err, tc.want)
			}
		}
	}
	hits := c.Stats().Hits
	col.Open(ctx, nil, v2)
	if got := c.Stats().Hits; got != hits {
		t.Errorf("a kept key still went to the cache: hits %d -> %d", hits, got)
	}
	if _, err := col.Open(ctx, nil, other); err != ErrDecrypt {
		t.Errorf("value of another column: got %v, want ErrDecrypt", err)
	}
	tampered := append([]byte(nil), v2...)
	tampered[len(tampered)-1] ^= 1
	if _, err := col.Open(ctx, nil, tampered); err != ErrDecrypt {
		t.Errorf("tampered value: got %v, want ErrDecrypt", err)
	}
	src.Shred("acme")
	c.Purge("acme")
	if pt, err := col.Open(ctx, nil, v2); err != ErrDecrypt {
		t.Errorf("Open after shred: got %q, %v, want ErrDecrypt", pt, err)
	}
}

func mustVersion(t *testing.T, v []byte) uint32 {
	t.Helper()
	n, err := KeyVersion(v)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestNoWait: under NoWait the cache answers from what it holds and
// otherwise says ErrWouldWait at once, without asking the provider; the
// same calls then succeed where the caller may wait, and under NoWait once
// the keys are cached.
func TestNoWait(t *testing.T) {
	ctx := context.Background()
	nowait := NoWait(ctx)
	c, _, p, _ := newTestCache(t, CacheOptions{})
	acme := c.Keyring("acme")
	if _, err := acme.Seal(nowait, nil, []byte("secret"), ssnColumn); !errors.Is(err, ErrWouldWait) {
		t.Fatalf("Seal with nothing cached: got %v, want ErrWouldWait", err)
	}
	if _, err := acme.BlindIndex(nowait, nil, []byte("secret"), ssnColumn, ""); !errors.Is(err, ErrWouldWait) {
		t.Fatalf("BlindIndex with nothing cached: got %v, want ErrWouldWait", err)
	}
	if g, u := p.generates.Load(), p.unwraps.Load(); g != 0 || u != 0 {
		t.Fatalf("provider calls under NoWait: %d generates, %d unwraps, want none", g, u)
	}
	sealed, err := acme.Seal(ctx, nil, []byte("secret"), ssnColumn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := acme.BlindIndex(ctx, nil, []byte("secret"), ssnColumn, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := acme.Seal(nowait, nil, []byte("secret"), ssnColumn); err != nil {
		t.Errorf("Seal with the key cached: %v", err)
	}
	if _, err := acme.BlindIndex(nowait, nil, []byte("secret"), ssnColumn, ""); err != nil {
		t.Errorf("BlindIndex with the key cached: %v", err)
	}
	col := acme.Opener().Column(ssnColumn)
	if pt, err := col.Open(nowait, nil, sealed); err != nil || string(pt) != "secret" {
		t.Errorf("Open with the key cached: got %q, %v", pt, err)
	}
	// Once the cache forgets the key, opening under NoWait must not load
	// it, and must not be taken for an undecryptable value.
	c.PurgeAll()
	col = acme.Opener().Column(ssnColumn)
	if _, err := col.Open(nowait, nil, sealed); !errors.Is(err, ErrWouldWait) || errors.Is(err, ErrDecrypt) {
		t.Errorf("Open after a purge under NoWait: got %v, want ErrWouldWait", err)
	}
	if pt, err := col.Open(ctx, nil, sealed); err != nil || string(pt) != "secret" {
		t.Errorf("Open after a purge: got %q, %v", pt, err)
	}
}

// blockingSealer is a MemoryKeySource that counts seals and holds every
// reservation until release is closed.
type blockingSealer struct {
	*MemoryKeySource
	reserving chan struct{}
	release   chan struct{}
}

func (b *blockingSealer) ReserveSeals(ctx context.Context, id KeyID, n, limit uint64) (uint64, error) {
	b.reserving <- struct{}{}
	<-b.release
	return n, nil
}

func (b *blockingSealer) RotateFrom(ctx context.Context, p Provider, from KeyID, reason string) (KeyID, bool, error) {
	return KeyID{}, false, errors.New("not rotated")
}

// TestNoWaitSealDuringReservation: while one caller reserves a block of
// seals (a key store round trip), a seal under NoWait neither waits for it
// nor counts: it says ErrWouldWait at once.
func TestNoWaitSealDuringReservation(t *testing.T) {
	src := &blockingSealer{NewMemoryKeySource(), make(chan struct{}), make(chan struct{})}
	c := NewKeyCache(src, newCountingProvider(t), CacheOptions{SealBlock: 1})
	t.Cleanup(c.Close)
	acme := c.Keyring("acme")
	ctx := context.Background()
	if _, err := c.Active(ctx, "acme", "", PurposeData); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := acme.Seal(ctx, nil, []byte("secret"), ssnColumn)
		done <- err
	}()
	<-src.reserving // the waiting caller holds the reservation
	result := make(chan error, 1)
	go func() {
		_, err := acme.Seal(NoWait(ctx), nil, []byte("secret"), ssnColumn)
		result <- err
	}()
	select {
	case err := <-result:
		if !errors.Is(err, ErrWouldWait) {
			t.Errorf("Seal under NoWait during a reservation: got %v, want ErrWouldWait", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("Seal under NoWait waited for another caller's reservation")
	}
	close(src.release)
	if err := <-done; err != nil {
		t.Errorf("the waiting Seal: %v", err)
	}
}
