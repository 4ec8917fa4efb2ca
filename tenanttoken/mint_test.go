package tenanttoken

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TestMint: a minted token verifies under the same configuration, with
// the tenant at the claim's dot path, and carries the claims Mint
// promises.
func TestMint(t *testing.T) {
	cfg := hsConfig()
	cfg.Claim = "app_metadata.tenant_id"
	cfg.Issuer, cfg.Audience = "https://auth.example.com", "pgcloak"
	clk := newClock()
	v := newVerifier(t, cfg, clk)

	raw, err := Mint(cfg, "acme", 10*time.Minute, t0)
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	got, err := v.Verify(t.Context(), raw)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if got.Tenant != "acme" || got.Subject != MintSubject || got.ID == "" || !got.Expiry.Equal(t0.Add(10*time.Minute)) {
		t.Errorf("Verify: got %+v, want tenant acme, sub %s, a jti, expiry %s", got, MintSubject, t0.Add(10*time.Minute))
	}

	m := jwt.MapClaims{}
	if _, _, err := jwt.NewParser().ParseUnverified(raw, m); err != nil {
		t.Fatal(err)
	}
	for claim, want := range map[string]any{
		"iss": "https://auth.example.com", "aud": "pgcloak", "sub": MintSubject,
		"iat": float64(t0.Unix()), "nbf": float64(t0.Unix()), "exp": float64(t0.Add(10 * time.Minute).Unix()),
	} {
		if m[claim] != want {
			t.Errorf("claim %s: got %v, want %v", claim, m[claim], want)
		}
	}
	if meta, _ := m["app_metadata"].(map[string]any); meta["tenant_id"] != "acme" {
		t.Errorf("claim app_metadata: got %v, want {tenant_id: acme}", m["app_metadata"])
	}

	other, err := Mint(cfg, "acme", 10*time.Minute, t0)
	if err != nil {
		t.Fatal(err)
	}
	o := jwt.MapClaims{}
	if _, _, err := jwt.NewParser().ParseUnverified(other, o); err != nil {
		t.Fatal(err)
	}
	if o["jti"] == m["jti"] {
		t.Errorf("two tokens share jti %v, want a random one each", o["jti"])
	}

	clk.advance(10*time.Minute + cfg.Leeway)
	_, err = v.Verify(t.Context(), other)
	wantRefusal(t, err, ReasonExpired, other)
}

// TestMintRefuses: Mint needs the secret, a tenant and a lifetime the
// verifier accepts.
func TestMintRefuses(t *testing.T) {
	rsaFile := writePublicKey(t, edPair(t).public)
	tests := []struct {
		name   string
		cfg    cfgT
		tenant string
		ttl    time.Duration
		want   string
	}{
		{"no secret", pemConfig(rsaFile), "acme", time.Minute, "tenancy.jwt.hs256_secret is not set"},
		{"empty tenant", hsConfig(), "", time.Minute, "the tenant must not be empty"},
		{"zero ttl", hsConfig(), "acme", 0, "the lifetime must be positive"},
		{"ttl beyond max_lifetime", hsConfig(), "acme", 25 * time.Hour, "at most tenancy.jwt.max_lifetime (24h0m0s)"},
		{"claim over exp", func() cfgT { c := hsConfig(); c.Claim = "exp"; return c }(), "acme", time.Minute, "would overwrite the registered claim exp"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw, err := Mint(tt.cfg, tt.tenant, tt.ttl, t0)
			if err == nil {
				t.Fatalf("Mint: got a token, want an error containing %q", tt.want)
			}
			if raw != "" || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Mint: got %q, %q; want no token and an error containing %q", raw, err, tt.want)
			}
		})
	}
	if _, err := Mint(pemConfig(rsaFile), "acme", time.Minute, t0); !errors.Is(err, ErrNoSecret) {
		t.Errorf("Mint without a secret: got %v, want ErrNoSecret", err)
	}
}
