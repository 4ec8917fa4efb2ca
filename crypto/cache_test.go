package crypto

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// newTestCache returns a cache over a fresh MemoryKeySource with a counting
// provider and a fake clock.
func newTestCache(t *testing.T, opts CacheOptions) (*KeyCache, *MemoryKeySource, *countingProvider, *fakeClock) {
	t.Helper()
	src := NewMemoryKeySource()
	p := newCountingProvider(t)
	clock := newFakeClock()
	if opts.Now == nil {
		opts.Now = clock.Now
	}
	c := NewKeyCache(src, p, opts)
	t.Cleanup(c.Close)
	return c, src, p, clock
}

func isZero(b []byte) bool { return bytes.Count(b, []byte{0}) == len(b) }

func TestCacheHitsAndMisses(t *testing.T) {
	ctx := context.Background()
	c, _, p, _ := newTestCache(t, CacheOptions{TTL: time.Minute})

	k1, err := c.Active(ctx, "acme", "", PurposeData)
	if err != nil {
		t.Fatal(err)
	}
	if id := k1.ID(); id != (KeyID{"acme", "", PurposeData, 1}) {
		t.Errorf("first active key: got %v, want version 1 of acme's default data key", id)
	}
	if k1.Envelope() == nil || k1.BlindIndex() != nil {
		t.Error("data key: want an Envelope and no BlindIndex")
	}
	k2, err := c.Active(ctx, "acme", "", PurposeData)
	if err != nil || k2 != k1 {
		t.Fatalf("second Active: got %p, %v, want the cached %p", k2, err, k1)
	}
	k3, err := c.Version(ctx, KeyID{"acme", "", PurposeData, 1})
	if err != nil || k3 != k1 {
		t.Fatalf("Version 1: got %p, %v, want the cached %p", k3, err, k1)
	}
	s := c.Stats()
	if s.Hits != 2 || s.Misses != 1 || s.ProviderCalls != 1 || s.Entries != 1 {
		t.Errorf("stats: got %+v, want 2 hits, 1 miss, 1 provider call, 1 entry", s)
	}
	if p.generates.Load() != 1 || p.unwraps.Load() != 0 {
		t.Errorf("provider: got %d generates, %d unwraps, want 1, 0", p.generates.Load(), p.unwraps.Load())
	}
	ix, err := c.Active(ctx, "acme", "", PurposeIndex)
	if err != nil || ix.BlindIndex() == nil || ix.Envelope() != nil {
		t.Fatalf("index key: got %v, %v; want a BlindIndex and no Envelope", ix, err)
	}
}

func TestCacheTTL(t *testing.T) {
	ctx := context.Background()
	c, _, p, clock := newTestCache(t, CacheOptions{TTL: time.Minute})
	k1, err := c.Active(ctx, "acme", "", PurposeData)
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(59 * time.Second)
	if k, _ := c.Active(ctx, "acme", "", PurposeData); k != k1 {
		t.Fatal("after 59s: got a reload, want the cached key")
	}
	clock.Advance(time.Second)
	k2, err := c.Active(ctx, "acme", "", PurposeData)
	if err != nil {
		t.Fatal(err)
	}
	if k2 == k1 {
		t.Fatal("after 60s: got the cached key, want a reload")
	}
	if !isZero(k1.insecureBytes()) {
		t.Error("expired key: got its bytes intact, want them zeroed")
	}
	if !bytes.Equal(k2.insecureBytes(), mustUnwrapActive(t, c, p, "acme")) {
		t.Error("reloaded key: got different bytes from the stored key")
	}
	if s := c.Stats(); s.Evictions != 1 || p.unwraps.Load() != 1 {
		t.Errorf("got %d evictions, %d unwraps; want 1, 1", s.Evictions, p.unwraps.Load())
	}
}

// mustUnwrapActive unwraps tenant's active default data key from the
// cache's source directly.
func mustUnwrapActive(t *testing.T, c *KeyCache, p *countingProvider, tenant string) []byte {
	t.Helper()
	w, err := c.src.Active(context.Background(), tenant, "", PurposeData)
	if err != nil {
		t.Fatal(err)
	}
	key, err := p.Provider.Unwrap(context.Background(), w.ID.Context(), w.Wrapped)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// TestCacheSweepsIdleEntries checks that an idle cache drops expired keys
// by itself, with the real clock.
func TestCacheSweepsIdleEntries(t *testing.T) {
	src := NewMemoryKeySource()
	c := NewKeyCache(src, newCountingProvider(t), CacheOptions{TTL: 50 * time.Millisecond})
	defer c.Close()
	k, err := c.Active(context.Background(), "acme", "", PurposeData)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return c.Stats().Entries == 0 }) // swept after 50ms
	if !isZero(k.insecureBytes()) {
		t.Error("swept key: got its bytes intact, want them zeroed")
	}
}

func TestCacheMaxEntriesEvictsOldest(t *testing.T) {
	ctx := context.Background()
	c, _, _, clock := newTestCache(t, CacheOptions{TTL: time.Hour, MaxEntries: 3})
	var keys []*DataKey
	for _, tenant := range []string{"t1", "t2", "t3", "t4"} {
		k, err := c.Active(ctx, tenant, "", PurposeData)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
		clock.Advance(time.Second)
	}
	if s := c.Stats(); s.Entries != 3 || s.Evictions != 1 {
		t.Errorf("stats: got %+v, want 3 entries, 1 eviction", s)
	}
	if !isZero(keys[0].insecureBytes()) {
		t.Error("evicted (oldest) key: got its bytes intact, want them zeroed")
	}
	for i, k := range keys[1:] {
		if isZero(k.insecureBytes()) {
			t.Errorf("key %d: got zeroed, want intact", i+1)
		}
	}
	// The evicted tenant reloads; its Envelope still opens what it sealed.
	id := ValueID{"t1", "public.t", "c"}
	sealed := keys[0].Envelope().Seal(nil, []byte("v"), id)
	k, err := c.Active(ctx, "t1", "", PurposeData)
	if err != nil {
		t.Fatal(err)
	}
	if k == keys[0] {
		t.Fatal("evicted key: got it from the cache, want a reload")
	}
	if pt, err := k.Envelope().Open(nil, sealed, id); err != nil || string(pt) != "v" {
		t.Errorf("reloaded key opens: got %q, %v, want %q, nil", pt, err, "v")
	}
}

// TestCacheSingleflight makes N concurrent misses for one key and checks
// that they share one provider call.
func TestCacheSingleflight(t *testing.T) {
	const n = 16
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		get  func(c *KeyCache) (*DataKey, error)
	}{
		{"active", func(c *KeyCache) (*DataKey, error) { return c.Active(ctx, "acme", "phi", PurposeData) }},
		{"version", func(c *KeyCache) (*DataKey, error) {
			return c.Version(ctx, KeyID{"acme", "phi", PurposeData, 1})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := NewMemoryKeySource()
			p := newCountingProvider(t)
			if tc.name == "version" { // the key exists: misses unwrap it
				if _, err := src.Rotate(ctx, p.Provider, "acme", "phi", PurposeData); err != nil {
					t.Fatal(err)
				}
			}
			p.gate = make(chan struct{})
			c := NewKeyCache(src, p, CacheOptions{})
			defer c.Close()

			var wg sync.WaitGroup
			results := make([]*DataKey, n)
			for i := range n {
				wg.Go(func() {
					k, err := tc.get(c)
					if err != nil {
						t.Errorf("goroutine %d: %v", i, err)
					}
					results[i] = k
				})
			}
			waitFor(t, func() bool { return c.Stats().Misses == n })
			close(p.gate)
			wg.Wait()
			if got := p.calls(); got != 1 {
				t.Errorf("provider calls: got %d, want 1", got)
			}
			if s := c.Stats(); s.ProviderCalls != 1 {
				t.Errorf("stats provider calls: got %d, want 1", s.ProviderCalls)
			}
			for i, k := range results {
				if k != results[0] {
					t.Errorf("goroutine %d: got key %p, want the shared %p", i, k, results[0])
				}
			}
		})
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestCacheWaiterCancellation: a caller whose context ends stops waiting,
// while the shared load goes on and serves the others.
func TestCacheWaiterCancellation(t *testing.T) {
	p := newCountingProvider(t)
	p.gate = make(chan struct{})
	c := NewKeyCache(NewMemoryKeySource(), p, CacheOptions{})
	defer c.Close()

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := c.Active(ctx, "acme", "", PurposeData)
		errc <- err
	}()
	waitFor(t, func() bool { return p.generates.Load() == 1 })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter: got %v, want context.Canceled", err)
	}
	close(p.gate)
	k, err := c.Active(context.Background(), "acme", "", PurposeData)
	if err != nil || k == nil {
		t.Fatalf("after the load: got %v, %v, want the key", k, err)
	}
	if got := p.calls(); got != 1 {
		t.Errorf("provider calls: got %d, want 1 (the abandoned load was kept)", got)
	}
}

func TestCachePurge(t *testing.T) {
	ctx := context.Background()
	c, src, p, _ := newTestCache(t, CacheOptions{})
	acme, _ := c.Active(ctx, "acme", "", PurposeData)
	acmeIdx, _ := c.Active(ctx, "acme", "", PurposeIndex)
	globex, _ := c.Active(ctx, "globex", "", PurposeData)

	if n := c.Purge("acme"); n != 2 {
		t.Errorf("Purge: got %d, want 2", n)
	}
	if !isZero(acme.insecureBytes()) || !isZero(acmeIdx.insecureBytes()) {
		t.Error("purged keys: got bytes intact, want zeroed")
	}
	if isZero(globex.insecureBytes()) {
		t.Error("other tenant's key: got zeroed, want intact")
	}
	if s := c.Stats(); s.Entries != 1 || s.Purged != 2 {
		t.Errorf("stats: got %+v, want 1 entry, 2 purged", s)
	}

	// After shredding and purging, the tenant neither writes nor reads.
	src.Shred("acme")
	c.Purge("acme")
	if _, err := c.Active(ctx, "acme", "", PurposeData); !errors.Is(err, ErrKeyShredded) {
		t.Errorf("Active after shred: got %v, want ErrKeyShredded", err)
	}
	if _, err := c.Version(ctx, KeyID{"acme", "", PurposeData, 1}); !errors.Is(err, ErrKeyShredded) {
		t.Errorf("Version after shred: got %v, want ErrKeyShredded", err)
	}
	calls := p.calls()
	if _, err := c.Active(ctx, "acme", "", PurposeData); !errors.Is(err, ErrKeyShredded) {
		t.Errorf("Active after shred, again: got %v, want ErrKeyShredded", err)
	}
	if p.calls() != calls {
		t.Error("a remembered shred: got another provider call")
	}
}

// TestCachePurgeDuringLoad: a load that began before Purge serves its
// caller but leaves nothing in the cache.
func TestCachePurgeDuringLoad(t *testing.T) {
	src := NewMemoryKeySource()
	p := newCountingProvider(t)
	p.gate = make(chan struct{})
	c := NewKeyCache(src, p, CacheOptions{})
	defer c.Close()
	done := make(chan error, 1)
	go func() {
		_, err := c.Active(context.Background(), "acme", "", PurposeData)
		done <- err
	}()
	waitFor(t, func() bool { return p.generates.Load() == 1 })
	c.Purge("acme")
	close(p.gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := c.Stats().Entries; n != 0 {
		t.Errorf("entries after a purged load: got %d, want 0", n)
	}
}

func TestCacheRemembersMissingVersions(t *testing.T) {
	ctx := context.Background()
	src := &countingSource{KeySource: NewMemoryKeySource()}
	c := NewKeyCache(src, newCountingProvider(t), CacheOptions{})
	defer c.Close()
	id := KeyID{"acme", "", PurposeData, 42}
	for range 3 {
		if _, err := c.Version(ctx, id); !errors.Is(err, ErrKeyNotFound) {
			t.Fatalf("got %v, want ErrKeyNotFound", err)
		}
	}
	if n := src.versions.Load(); n != 1 {
		t.Errorf("key source lookups: got %d, want 1", n)
	}
}

func TestCacheRotationSeenAfterTTL(t *testing.T) {
	ctx := context.Background()
	c, src, p, clock := newTestCache(t, CacheOptions{TTL: time.Minute})
	if _, err := c.Active(ctx, "acme", "", PurposeData); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Rotate(ctx, p.Provider, "acme", "", PurposeData); err != nil {
		t.Fatal(err)
	}
	if k, _ := c.Active(ctx, "acme", "", PurposeData); k.ID().Version != 1 {
		t.Errorf("before the TTL: got version %d, want the cached 1", k.ID().Version)
	}
	clock.Advance(time.Minute)
	if k, _ := c.Active(ctx, "acme", "", PurposeData); k.ID().Version != 2 {
		t.Errorf("after the TTL: got version %d, want 2", k.ID().Version)
	}
}

// TestCacheCreateRace has several caches (replicas) race to create a new
// tenant's key: one version 1 is stored and every cache gets it.
func TestCacheCreateRace(t *testing.T) {
	ctx := context.Background()
	src := NewMemoryKeySource()
	p := newCountingProvider(t)
	const replicas = 8
	keys := make([]*DataKey, replicas)
	var wg sync.WaitGroup
	for i := range replicas {
		c := NewKeyCache(src, p, CacheOptions{})
		defer c.Close()
		wg.Go(func() {
			k, err := c.Active(ctx, "new-tenant", "", PurposeData)
			if err != nil {
				t.Errorf("replica %d: %v", i, err)
				return
			}
			keys[i] = k
		})
	}
	wg.Wait()
	for i, k := range keys {
		if k == nil {
			continue
		}
		if k.ID().Version != 1 || !bytes.Equal(k.insecureBytes(), keys[0].insecureBytes()) {
			t.Errorf("replica %d: got version %d and different bytes, want version 1 and replica 0's key", i, k.ID().Version)
		}
	}
	if _, err := src.Version(ctx, KeyID{"new-tenant", "", PurposeData, 2}); !errors.Is(err, ErrKeyNotFound) {
		t.Errorf("version 2: got %v, want ErrKeyNotFound", err)
	}
}

func TestCacheOperationalErrors(t *testing.T) {
	ctx := context.Background()
	down := errors.New("connection refused")
	c := NewKeyCache(failingSource{down}, newCountingProvider(t), CacheOptions{})
	defer c.Close()
	if _, err := c.Active(ctx, "acme", "", PurposeData); !errors.Is(err, down) || isVerdict(err) {
		t.Errorf("Active: got %v, want the source's error", err)
	}
	if _, err := c.Version(ctx, KeyID{"acme", "", PurposeData, 1}); !errors.Is(err, down) {
		t.Errorf("Version: got %v, want the source's error", err)
	}
	if s := c.Stats(); s.Entries != 0 {
		t.Errorf("entries: got %d, want 0 (failures are not cached)", s.Entries)
	}
	if _, err := c.Active(ctx, "acme", "", "bogus"); err == nil {
		t.Error("unknown purpose: got nil error")
	}
}

func TestCacheOnKeyLoad(t *testing.T) {
	ctx := context.Background()
	src := NewMemoryKeySource()
	p := newCountingProvider(t)
	var mu sync.Mutex
	var events []KeyEvent
	opts := CacheOptions{OnKeyLoad: func(e KeyEvent) { mu.Lock(); events = append(events, e); mu.Unlock() }}
	c1 := NewKeyCache(src, p, opts)
	defer c1.Close()
	c2 := NewKeyCache(src, p, opts)
	defer c2.Close()
	c1.Active(ctx, "acme", "", PurposeData)
	c2.Active(ctx, "acme", "", PurposeData)
	want := []KeyEvent{
		{ID: KeyID{"acme", "", PurposeData, 1}, KEKID: p.Provider.(*LocalProvider).KEKID(), Created: true},
		{ID: KeyID{"acme", "", PurposeData, 1}, KEKID: p.Provider.(*LocalProvider).KEKID()},
	}
	if len(events) != 2 || events[0] != want[0] || events[1] != want[1] {
		t.Errorf("events: got %+v, want %+v", events, want)
	}
}

func TestCacheClose(t *testing.T) {
	ctx := context.Background()
	c, _, _, _ := newTestCache(t, CacheOptions{})
	k, _ := c.Active(ctx, "acme", "", PurposeData)
	c.Close()
	if !isZero(k.insecureBytes()) {
		t.Error("after Close: got key bytes intact, want zeroed")
	}
	if _, err := c.Active(ctx, "acme", "", PurposeData); err == nil {
		t.Error("Active after Close: got nil error, want one")
	}
}

// TestActiveAndVersionShareOneUnwrap: after the cache lost a key, a write
// (Active) and a read (Version) of the same version that miss at once make
// one provider call between them, not one each.
func TestActiveAndVersionShareOneUnwrap(t *testing.T) {
	ctx := context.Background()
	c, _, p, _ := newTestCache(t, CacheOptions{TTL: time.Minute})
	k, err := c.Active(ctx, "acme", "", PurposeData)
	if err != nil {
		t.Fatal(err)
	}
	id := k.ID()
	c.Purge("acme")
	p.gate = make(chan struct{})
	before := p.unwraps.Load()
	errs := make(chan error, 2)
	go func() { _, err := c.Active(ctx, "acme", "", PurposeData); errs <- err }()
	go func() { _, err := c.Version(ctx, id); errs <- err }()
	waitFor(t, func() bool { return p.unwraps.Load() != before })
	time.Sleep(20 * time.Millisecond) // let the second lookup join or start its own call
	close(p.gate)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := p.unwraps.Load() - before; got != 1 {
		t.Errorf("unwraps: got %d, want 1", got)
	}
}
