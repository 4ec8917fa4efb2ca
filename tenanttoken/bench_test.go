package tenanttoken

import (
	"testing"
	"time"
)

// BenchmarkVerifyCached is the cost of a token an application presents
// with every transaction: a hash and a map lookup.
func BenchmarkVerifyCached(b *testing.B) {
	clk := newClock()
	v := newVerifier(b, hsConfig(), clk)
	raw, err := Mint(hsConfig(), "acme", time.Hour, t0)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := v.Verify(b.Context(), raw); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(b.Context(), raw); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyHS256 is a token's first verification: parse, HMAC and
// the claim checks (the cache is off).
func BenchmarkVerifyHS256(b *testing.B) {
	v := newVerifier(b, hsConfig(), newClock(), withCacheSize(0))
	raw, err := Mint(hsConfig(), "acme", time.Hour, t0)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(b.Context(), raw); err != nil {
			b.Fatal(err)
		}
	}
}

// TestVerifyCachedAllocs holds the cached path to no allocation.
func TestVerifyCachedAllocs(t *testing.T) {
	v := newVerifier(t, hsConfig(), newClock())
	raw, err := Mint(hsConfig(), "acme", time.Hour, t0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(t.Context(), raw); err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if n := testing.AllocsPerRun(100, func() { v.Verify(ctx, raw) }); n != 0 {
		t.Errorf("cached Verify: got %v allocations, want 0", n)
	}
}
