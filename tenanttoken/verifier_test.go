package tenanttoken

import (
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/pgcloak/pgcloak/config"
)

type cfgT = config.JWTTenancy

// smallRSA is a 1024-bit RSA public key, too small to accept.
func smallRSA(t *testing.T) *rsa.PublicKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	return &k.PublicKey
}

// TestVerifyKeys accepts a token under each kind of key: the HS256 secret
// and PEM public keys (RSA, EC P-256 and P-384, Ed25519), and only with the
// algorithms that key verifies.
func TestVerifyKeys(t *testing.T) {
	rsaKey, p256, p384, ed := rsaPair(t), ecPair(t, elliptic.P256()), ecPair(t, elliptic.P384()), edPair(t)
	tests := []struct {
		name     string
		cfg      func(t *testing.T) (cfgFile string)
		method   jwt.SigningMethod
		key      any
		wantAlgs []string
	}{
		{"HS256", nil, jwt.SigningMethodHS256, []byte(testSecret), []string{"HS256"}},
		{"RS256", func(t *testing.T) string { return writePublicKey(t, rsaKey.public) }, jwt.SigningMethodRS256, rsaKey.private, []string{"RS256", "RS384", "RS512", "PS256"}},
		{"RS512", func(t *testing.T) string { return writePublicKey(t, rsaKey.public) }, jwt.SigningMethodRS512, rsaKey.private, []string{"RS256", "RS384", "RS512", "PS256"}},
		{"PS256", func(t *testing.T) string { return writePublicKey(t, rsaKey.public) }, jwt.SigningMethodPS256, rsaKey.private, []string{"RS256", "RS384", "RS512", "PS256"}},
		{"RS256 PKCS1", func(t *testing.T) string {
			return writePEM(t, "RSA PUBLIC KEY", x509.MarshalPKCS1PublicKey(rsaKey.public.(*rsa.PublicKey)))
		}, jwt.SigningMethodRS256, rsaKey.private, []string{"RS256", "RS384", "RS512", "PS256"}},
		{"ES256", func(t *testing.T) string { return writePublicKey(t, p256.public) }, jwt.SigningMethodES256, p256.private, []string{"ES256"}},
		{"ES384", func(t *testing.T) string { return writePublicKey(t, p384.public) }, jwt.SigningMethodES384, p384.private, []string{"ES384"}},
		{"EdDSA", func(t *testing.T) string { return writePublicKey(t, ed.public) }, jwt.SigningMethodEdDSA, ed.private, []string{"EdDSA"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := hsConfig()
			if tt.cfg != nil {
				cfg = pemConfig(tt.cfg(t))
			}
			v := newVerifier(t, cfg, newClock())
			if got := v.Algorithms(); !slices.Equal(got, tt.wantAlgs) {
				t.Errorf("Algorithms: got %v, want %v", got, tt.wantAlgs)
			}
			raw := sign(t, tt.method, tt.key, claims(), "")
			got, err := v.Verify(t.Context(), raw)
			if err != nil {
				t.Fatalf("Verify: got %v, want the claims", err)
			}
			want := Claims{Tenant: "acme", Subject: "user-1", ID: "id-1", Expiry: t0.Add(time.Hour)}
			if got != want {
				t.Errorf("Verify: got %+v, want %+v", got, want)
			}

			// A token signed by another key of the same kind fails.
			var other any
			switch tt.key.(type) {
			case []byte:
				other = []byte(strings.Repeat("x", 40))
			default:
				switch tt.method.Alg() {
				case "ES256":
					other = ecPair(t, elliptic.P256()).private
				case "ES384":
					other = ecPair(t, elliptic.P384()).private
				case "EdDSA":
					other = edPair(t).private
				default:
					return // a second RSA key costs more than it shows
				}
			}
			forged := sign(t, tt.method, other, claims(), "")
			_, err = v.Verify(t.Context(), forged)
			wantRefusal(t, err, ReasonBadSignature, forged)
		})
	}
}

// TestRefusals walks every refusal reason with the tokens that earn it.
func TestRefusals(t *testing.T) {
	clk := newClock()
	cfg := hsConfig()
	cfg.Issuer, cfg.Audience = "https://auth.example.com", "pgcloak"
	v := newVerifier(t, cfg, clk)
	ok := with(claims(), "iss", "https://auth.example.com", "aud", "pgcloak")
	sec := func(d time.Duration) int64 { return t0.Add(d).Unix() }
	good := hs(t, ok)

	rsaKey := rsaPair(t)
	pemV := newVerifier(t, pemConfig(writePublicKey(t, rsaKey.public)), clk)

	type tc struct {
		name  string
		v     *Verifier // default: v
		token string
	}
	cases := map[string][]tc{
		ReasonExpired: {
			{name: "beyond the leeway", token: hs(t, with(ok, "exp", sec(-31*time.Second)))},
			{name: "long ago", token: hs(t, with(ok, "iat", sec(-48*time.Hour), "nbf", nil, "exp", sec(-47*time.Hour)))},
		},
		ReasonNotYetValid: {
			{name: "nbf beyond the leeway", token: hs(t, with(ok, "nbf", sec(31*time.Second)))},
		},
		ReasonIssuedInFuture: {
			{name: "iat beyond the leeway", token: hs(t, with(ok, "iat", sec(time.Minute), "nbf", nil))},
		},
		ReasonBadSignature: {
			{name: "another secret", token: sign(t, jwt.SigningMethodHS256, []byte(strings.Repeat("k", 32)), ok, "")},
			{name: "claims changed", token: swapClaims(t, hs(t, ok), with(ok, "tenant_id", "globex"))},
			// 43 signature characters less 11 still decode, to 24 bytes.
			{name: "signature cut", token: good[:len(good)-11]},
		},
		ReasonWrongIssuer: {
			{name: "another issuer", token: hs(t, with(ok, "iss", "https://evil.example.com"))},
			{name: "no issuer", token: hs(t, with(ok, "iss", nil))},
			{name: "issuer not a string", token: hs(t, with(ok, "iss", 7))},
		},
		ReasonWrongAudience: {
			{name: "another audience", token: hs(t, with(ok, "aud", "other"))},
			{name: "list without ours", token: hs(t, with(ok, "aud", []string{"a", "b"}))},
			{name: "no audience", token: hs(t, with(ok, "aud", nil))},
		},
		ReasonNoTenant: {
			{name: "missing", token: hs(t, with(ok, "tenant_id", nil))},
			{name: "empty", token: hs(t, with(ok, "tenant_id", ""))},
			{name: "an object", token: hs(t, with(ok, "tenant_id", map[string]any{"id": "acme"}))},
			{name: "a boolean", token: hs(t, with(ok, "tenant_id", true))},
			{name: "a fraction", token: hs(t, with(ok, "tenant_id", 1.5))},
			{name: "null", token: hs(t, with(ok, "tenant_id", json.RawMessage("null")))},
		},
		ReasonUnknownKID: {
			// JWKS verifiers refuse an unknown kid; TestJWKS covers them.
		},
		ReasonMalformed: {
			{name: "not a token", token: "not-a-token"},
			{name: "two segments", token: "eyJhbGciOiJIUzI1NiJ9.e30"},
			{name: "bad base64", token: "eyJhbGciOiJIUzI1NiJ9.!!!.sig"},
			{name: "header not JSON", token: b64("nope") + "." + b64("{}") + ".c2ln"},
			{name: "no alg", token: b64(`{"typ":"JWT"}`) + "." + b64("{}") + ".c2ln"},
			{name: "alg not a string", token: b64(`{"alg":256}`) + "." + b64("{}") + ".c2ln"},
			{name: "too long", token: hs(t, with(ok, "pad", strings.Repeat("x", MaxTokenSize)))},
			{name: "exp a string", token: hs(t, with(ok, "exp", "tomorrow"))},
			{name: "exp negative", token: hs(t, with(ok, "exp", -5))},
			{name: "iat absurd", token: hs(t, with(ok, "iat", 1e300))},
			{name: "sub not a string", token: hs(t, with(ok, "sub", 5))},
			{name: "jti not a string", token: hs(t, with(ok, "jti", []int{1}))},
			{name: "tenant with NUL", token: hs(t, with(ok, "tenant_id", "ac\x00me"))},
			{name: "tenant too long", token: hs(t, with(ok, "tenant_id", strings.Repeat("t", 257)))},
		},
		ReasonAlgorithm: {
			{name: "HS384 with the secret", token: sign(t, jwt.SigningMethodHS384, []byte(testSecret), ok, "")},
			{name: "none", token: sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, ok, "")},
			{name: "none to a public key", v: pemV, token: sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, ok, "")},
			{name: "RS256 to the secret", token: sign(t, jwt.SigningMethodRS256, rsaKey.private, ok, "")},
			{name: "HS256 to a public key", v: pemV, token: hs(t, ok)},
			{name: "unknown alg", token: b64(`{"alg":"XX999"}`) + "." + b64(`{}`) + ".c2ln"},
		},
		ReasonNoExpiry: {
			{name: "no exp", token: hs(t, with(ok, "exp", nil))},
		},
		ReasonLifetime: {
			{name: "exp - iat", token: hs(t, with(ok, "iat", sec(-time.Hour), "exp", sec(23*time.Hour+time.Second)))},
			{name: "exp - now without iat", token: hs(t, with(ok, "iat", nil, "exp", sec(24*time.Hour+time.Second)))},
		},
	}
	for _, reason := range Reasons {
		if _, listed := cases[reason]; !listed {
			t.Errorf("reason %q has no test cases", reason)
		}
	}
	for reason, list := range cases {
		if !slices.Contains(Reasons, reason) {
			t.Errorf("cases for %q, which is not in Reasons", reason)
		}
		for _, c := range list {
			t.Run(reason+"/"+c.name, func(t *testing.T) {
				vv := v
				if c.v != nil {
					vv = c.v
				}
				got, err := vv.Verify(t.Context(), c.token)
				if err == nil {
					t.Fatalf("Verify: got %+v, want refusal %q", got, reason)
				}
				wantRefusal(t, err, reason, c.token)
			})
		}
	}

	// The edges: inside the leeway, at the lifetime, a list audience.
	for _, c := range []struct {
		name  string
		token string
	}{
		{"expired within the leeway", hs(t, with(ok, "exp", sec(-29*time.Second)))},
		{"nbf within the leeway", hs(t, with(ok, "nbf", sec(29*time.Second)))},
		{"iat within the leeway", hs(t, with(ok, "iat", sec(29*time.Second), "nbf", nil))},
		{"lifetime exactly max_lifetime", hs(t, with(ok, "iat", sec(-time.Hour), "exp", sec(23*time.Hour)))},
		{"no iat, nbf or jti", hs(t, with(ok, "iat", nil, "nbf", nil, "jti", nil))},
		{"audience in a list", hs(t, with(ok, "aud", []string{"other", "pgcloak"}))},
		{"fractional dates", hs(t, with(ok, "exp", float64(sec(time.Hour))+0.5, "iat", float64(t0.Unix())-0.25))},
	} {
		t.Run("accepted/"+c.name, func(t *testing.T) {
			if _, err := v.Verify(t.Context(), c.token); err != nil {
				t.Errorf("Verify: got %v, want it accepted", err)
			}
		})
	}
}

// b64 is base64url without padding, as JWS segments are.
func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// swapClaims replaces the claims segment of token, keeping its header and
// signature.
func swapClaims(t *testing.T, token string, c jwt.MapClaims) string {
	t.Helper()
	body, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(token, ".")
	parts[1] = base64.RawURLEncoding.EncodeToString(body)
	return strings.Join(parts, ".")
}

// TestAlgorithmConfusion: with an RSA public key configured, a token
// "signed" with HS256 using the public key's own bytes (PEM or DER) as the
// HMAC secret is refused, as is a token without a signature.
func TestAlgorithmConfusion(t *testing.T) {
	rsaKey := rsaPair(t)
	file := writePublicKey(t, rsaKey.public)
	pemBytes, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(rsaKey.public)
	if err != nil {
		t.Fatal(err)
	}
	v := newVerifier(t, pemConfig(file), newClock())
	for name, secret := range map[string][]byte{"PEM": pemBytes, "DER": der} {
		t.Run("HS256 with the "+name+" bytes", func(t *testing.T) {
			raw := sign(t, jwt.SigningMethodHS256, secret, claims(), "")
			_, err := v.Verify(t.Context(), raw)
			wantRefusal(t, err, ReasonAlgorithm, raw)
		})
	}
	t.Run("none", func(t *testing.T) {
		raw := sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claims(), "")
		_, err := v.Verify(t.Context(), raw)
		wantRefusal(t, err, ReasonAlgorithm, raw)
	})
	t.Run("HS256 not configurable with a public key", func(t *testing.T) {
		cfg := pemConfig(file)
		cfg.Algorithms = []string{"RS256", "HS256"}
		if _, err := New(t.Context(), cfg); err == nil || !strings.Contains(err.Error(), "HS256 does not fit the RSA key") {
			t.Errorf("New: got %v, want HS256 refused for the RSA key", err)
		}
	})
	t.Run("none not configurable", func(t *testing.T) {
		cfg := hsConfig()
		cfg.Algorithms = []string{"none"}
		if _, err := New(t.Context(), cfg); err == nil || !strings.Contains(err.Error(), `"none" is never allowed`) {
			t.Errorf("New: got %v, want none refused", err)
		}
	})
	t.Run("allow-list narrows", func(t *testing.T) {
		cfg := pemConfig(file)
		cfg.Algorithms = []string{"PS256"}
		v := newVerifier(t, cfg, newClock())
		raw := sign(t, jwt.SigningMethodRS256, rsaKey.private, claims(), "")
		_, err := v.Verify(t.Context(), raw)
		wantRefusal(t, err, ReasonAlgorithm, raw)
		if _, err := v.Verify(t.Context(), sign(t, jwt.SigningMethodPS256, rsaKey.private, claims(), "")); err != nil {
			t.Errorf("PS256: got %v, want it accepted", err)
		}
	})
}

// TestTenantClaim reads the tenant from dot paths, numbers and claims
// whose own name has dots.
func TestTenantClaim(t *testing.T) {
	tests := []struct {
		claim  string
		claims jwt.MapClaims
		want   string // "" for "no tenant claim"
	}{
		{"app_metadata.tenant_id", with(claims(), "app_metadata", map[string]any{"tenant_id": "globex"}), "globex"},
		{"a.b.c", with(claims(), "a", map[string]any{"b": map[string]any{"c": "deep"}}), "deep"},
		{"app_metadata.tenant_id", with(claims(), "app_metadata", map[string]any{"tenant": "globex"}), ""},
		{"app_metadata.tenant_id", with(claims(), "app_metadata", "globex"), ""},
		{"app_metadata.tenant_id", with(claims(), "app_metadata", nil), ""},
		{"tenant_id", with(claims(), "tenant_id", 42), "42"},
		{"tenant_id", with(claims(), "tenant_id", json.Number("12345678901234567890123")), "12345678901234567890123"},
		{"tenant_id", with(claims(), "tenant_id", -7), "-7"},
		{"tenant_id", with(claims(), "tenant_id", 4.2e1), "42"},
		{"tenant_id", with(claims(), "tenant_id", json.Number("1e3")), ""},
		{"https://example.com/tenant", with(claims(), "https://example.com/tenant", "initech"), "initech"},
		{"org", with(claims(), "org", []string{"acme"}), ""},
	}
	// A tenant holding the word that marks a pin's MAC in pgcloak's text.
	for _, tenant := range []string{"a/*pgcloak.pin:00*/", "PGCLOAK.PIN"} {
		v := newVerifier(t, hsConfig(), newClock())
		raw := hs(t, with(claims(), "tenant_id", tenant))
		_, err := v.Verify(t.Context(), raw)
		wantRefusal(t, err, ReasonMalformed, raw)
	}
	for _, tt := range tests {
		t.Run(tt.claim+"="+string(mustJSON(t, tt.claims)), func(t *testing.T) {
			cfg := hsConfig()
			cfg.Claim = tt.claim
			v := newVerifier(t, cfg, newClock())
			raw := hs(t, tt.claims)
			got, err := v.Verify(t.Context(), raw)
			if tt.want == "" {
				wantRefusal(t, err, ReasonNoTenant, raw)
				return
			}
			if err != nil || got.Tenant != tt.want {
				t.Errorf("Verify: got tenant %q, %v; want %q", got.Tenant, err, tt.want)
			}
		})
	}
}

func mustJSON(t *testing.T, c jwt.MapClaims) []byte {
	t.Helper()
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCache: a verified token is answered from the cache, without another
// signature check, until exp plus leeway; then it is refused as expired.
// The cache holds hashes, is bounded, and does not keep refusals.
func TestCache(t *testing.T) {
	clk := newClock()
	v := newVerifier(t, hsConfig(), clk)
	raw := hs(t, claims())
	first, err := v.Verify(t.Context(), raw)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}

	// Replace the key: only a cached answer can still accept the token.
	v.key = []byte(strings.Repeat("z", 32))
	if _, err := v.Verify(t.Context(), hs(t, with(claims(), "jti", "id-2"))); err == nil {
		t.Fatalf("a new token after the key changed: got accepted, want a bad signature (the test relies on it)")
	}
	again, err := v.Verify(t.Context(), raw)
	if err != nil || again != first {
		t.Fatalf("cached Verify: got %+v, %v; want %+v from the cache", again, err, first)
	}
	if _, ok := v.cache.get(sha256.Sum256([]byte(raw))); !ok {
		t.Errorf("cache: no entry under the token's SHA-256")
	}

	// Within the leeway after exp it is still good; then it expires.
	clk.advance(time.Hour + 29*time.Second)
	if _, err := v.Verify(t.Context(), raw); err != nil {
		t.Errorf("cached Verify 29s after exp: got %v, want accepted (leeway 30s)", err)
	}
	clk.advance(time.Second)
	_, err = v.Verify(t.Context(), raw)
	wantRefusal(t, err, ReasonExpired, raw)
	if n := v.cache.len(); n != 0 {
		t.Errorf("cache: got %d entries after the token expired, want 0", n)
	}

	t.Run("refusals are not cached", func(t *testing.T) {
		v := newVerifier(t, hsConfig(), newClock())
		bad := hs(t, with(claims(), "tenant_id", nil))
		for range 2 {
			_, err := v.Verify(t.Context(), bad)
			wantRefusal(t, err, ReasonNoTenant, bad)
		}
		if n := v.cache.len(); n != 0 {
			t.Errorf("cache: got %d entries, want 0", n)
		}
	})

	t.Run("bounded", func(t *testing.T) {
		const size = 16
		clk := newClock()
		v := newVerifier(t, hsConfig(), clk, withCacheSize(size))
		for i := range 200 {
			if i == 100 {
				clk.advance(2 * time.Hour) // the first hundred expire
			}
			c := with(claims(), "jti", fmt.Sprintf("id-%d", i), "iat", clk.now().Unix(), "exp", clk.now().Add(time.Hour).Unix())
			if _, err := v.Verify(t.Context(), hs(t, c)); err != nil {
				t.Fatalf("Verify #%d: %v", i, err)
			}
			if n := v.cache.len(); n > size {
				t.Fatalf("cache: got %d entries after %d tokens, want at most %d", n, i+1, size)
			}
		}
	})
}

// TestNewErrors: New refuses what serve could not use, naming the key.
func TestNewErrors(t *testing.T) {
	rsaKey := rsaPair(t)
	rsaFile := writePublicKey(t, rsaKey.public)
	p521 := writePublicKey(t, ecPair(t, elliptic.P521()).public)
	privDER, err := x509.MarshalPKCS8PrivateKey(edPair(t).private)
	if err != nil {
		t.Fatal(err)
	}
	private := writePEM(t, "PRIVATE KEY", privDER)
	small := writePEM(t, "RSA PUBLIC KEY", x509.MarshalPKCS1PublicKey(smallRSA(t)))
	notPEM := writePEM(t, "PUBLIC KEY", []byte("garbage"))
	empty := writePEM(t, "NOTHING", nil)

	tests := []struct {
		name string
		cfg  func() (c cfgT)
		want string
	}{
		{"no key", func() cfgT { c := hsConfig(); c.HS256Secret = ""; return c }, "no verification key"},
		{"two keys", func() cfgT { c := hsConfig(); c.PublicKeyFile = rsaFile; return c }, "hs256_secret, public_key_file are all set"},
		{"short secret", func() cfgT { c := hsConfig(); c.HS256Secret = "short"; return c }, "shorter than 32 bytes"},
		{"missing file", func() cfgT { return pemConfig(rsaFile + ".absent") }, "tenancy.jwt.public_key_file: open "},
		{"private key", func() cfgT { return pemConfig(private) }, "holds a private key"},
		{"small RSA key", func() cfgT { return pemConfig(small) }, "RSA key of 1024 bits; want at least 2048"},
		{"P-521", func() cfgT { return pemConfig(p521) }, "curve P-521"},
		{"not DER", func() cfgT { return pemConfig(notPEM) }, "PUBLIC KEY block"},
		{"no PEM block", func() cfgT { return pemConfig(empty) }, "no PEM public key"},
		{"alg does not fit", func() cfgT { c := pemConfig(rsaFile); c.Algorithms = []string{"ES256"}; return c }, "ES256 does not fit the RSA key in " + rsaFile},
		{"RS256 with the secret", func() cfgT { c := hsConfig(); c.Algorithms = []string{"RS256"}; return c }, "RS256 does not fit hs256_secret"},
		{"bad claim path", func() cfgT { c := hsConfig(); c.Claim = "a..b"; return c }, "not a dot path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := New(t.Context(), tt.cfg())
			if err == nil {
				v.Close()
				t.Fatalf("New: got a Verifier, want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New: got %q, want it to contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), testSecret) {
				t.Errorf("New: error %q contains the secret", err)
			}
		})
	}
}

// TestRefusalWrapping: callers find the reason with errors.As.
func TestRefusalWrapping(t *testing.T) {
	r := refuse(ReasonExpired)
	if got, want := r.Error(), "tenant token refused: expired"; got != want {
		t.Errorf("Error: got %q, want %q", got, want)
	}
	seen := map[string]bool{}
	for _, reason := range Reasons {
		if seen[reason] {
			t.Errorf("Reasons lists %q twice", reason)
		}
		seen[reason] = true
	}
	if len(Reasons) != 12 {
		t.Errorf("got %d reasons, want the 12 of SPEC §5.2 and the brief", len(Reasons))
	}
}
