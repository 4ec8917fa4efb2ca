package crypto

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testKey returns 32 bytes that differ per seed.
func testKey(seed byte) []byte {
	k := make([]byte, KeySize)
	for i := range k {
		k[i] = seed + byte(i)*7
	}
	return k
}

func mustEnvelope(t testing.TB, key []byte, version uint32) *Envelope {
	t.Helper()
	e, err := newEnvelope(key, version)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("hex %q: %v", s, err)
	}
	return b
}

// readVectors decodes testdata/name, rejecting unknown fields.
func readVectors(t *testing.T, name string, into any) {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := json.NewDecoder(f)
	dec.DisallowUnknownFields()
	var file struct {
		Comment string          `json:"comment"`
		Vectors json.RawMessage `json:"vectors"`
	}
	if err := dec.Decode(&file); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	vdec := json.NewDecoder(bytes.NewReader(file.Vectors))
	vdec.DisallowUnknownFields()
	if err := vdec.Decode(into); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// fakeClock is a settable clock for KeyCache.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// countingProvider wraps a Provider, counts its calls and can hold them
// until released.
type countingProvider struct {
	Provider
	unwraps, generates atomic.Int64
	gate               chan struct{} // when non-nil, calls wait for it to be closed
	fail               error         // when non-nil, Unwrap returns it
}

func newCountingProvider(t testing.TB) *countingProvider {
	t.Helper()
	p, err := NewLocalProvider(testKey(200))
	if err != nil {
		t.Fatal(err)
	}
	return &countingProvider{Provider: p}
}

func (p *countingProvider) wait(ctx context.Context) error {
	if p.gate == nil {
		return nil
	}
	select {
	case <-p.gate:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *countingProvider) Unwrap(ctx context.Context, kc KeyContext, wrapped []byte) ([]byte, error) {
	p.unwraps.Add(1)
	if err := p.wait(ctx); err != nil {
		return nil, err
	}
	if p.fail != nil {
		return nil, p.fail
	}
	return p.Provider.Unwrap(ctx, kc, wrapped)
}

func (p *countingProvider) GenerateDataKey(ctx context.Context, kc KeyContext) ([]byte, []byte, string, error) {
	p.generates.Add(1)
	if err := p.wait(ctx); err != nil {
		return nil, nil, "", err
	}
	return p.Provider.GenerateDataKey(ctx, kc)
}

func (p *countingProvider) calls() int64 { return p.unwraps.Load() + p.generates.Load() }

// failingSource is a KeySource whose every call fails like an unreachable
// database.
type failingSource struct{ err error }

func (s failingSource) Active(context.Context, string, string, Purpose) (WrappedKey, error) {
	return WrappedKey{}, s.err
}
func (s failingSource) Version(context.Context, KeyID) (WrappedKey, error) {
	return WrappedKey{}, s.err
}
func (s failingSource) CreateIfMissing(context.Context, WrappedKey) (WrappedKey, error) {
	return WrappedKey{}, s.err
}

// countingSource counts Version calls of a KeySource.
type countingSource struct {
	KeySource
	versions atomic.Int64
}

func (s *countingSource) Version(ctx context.Context, id KeyID) (WrappedKey, error) {
	s.versions.Add(1)
	return s.KeySource.Version(ctx, id)
}
