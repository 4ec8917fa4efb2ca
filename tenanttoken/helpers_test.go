package tenanttoken

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/pgcloak/pgcloak/config"
)

const testSecret = "0123456789abcdef0123456789abcdef-tenanttoken"

// t0 is the tests' "now": a fixed instant, so that every date in a case is
// an offset from it.
var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// clock is a settable time source for WithClock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: t0} }

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// hsConfig is a tenancy.jwt with the HS256 secret and the defaults config
// gives.
func hsConfig() config.JWTTenancy {
	return config.JWTTenancy{
		Claim:       config.DefaultJWTClaim,
		HS256Secret: testSecret,
		Leeway:      config.DefaultJWTLeeway,
		MaxLifetime: config.DefaultJWTMaxLifetime,
	}
}

// pemConfig is hsConfig with a public key file instead of the secret.
func pemConfig(file string) config.JWTTenancy {
	c := hsConfig()
	c.HS256Secret, c.PublicKeyFile = "", file
	return c
}

// newVerifier builds a Verifier on clk, closed at the end of the test.
func newVerifier(t testing.TB, cfg config.JWTTenancy, clk *clock, opts ...Option) *Verifier {
	t.Helper()
	v, err := New(t.Context(), cfg, append([]Option{WithClock(clk.now)}, opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(v.Close)
	return v
}

// withCacheSize sets the cache's bound; 0 turns the cache off.
func withCacheSize(n int) Option { return func(o *options) { o.cacheSize = n } }

// withJWKSRefresh sets the background refresh interval.
func withJWKSRefresh(d time.Duration) Option { return func(o *options) { o.jwksRefresh = d } }

// claims is a valid claim set for tenant acme at t0, one hour long.
func claims() jwt.MapClaims {
	return jwt.MapClaims{
		"tenant_id": "acme",
		"sub":       "user-1",
		"jti":       "id-1",
		"iat":       t0.Unix(),
		"nbf":       t0.Unix(),
		"exp":       t0.Add(time.Hour).Unix(),
	}
}

// with returns a copy of c with the given claims set, or removed when the
// value is nil.
func with(c jwt.MapClaims, kv ...any) jwt.MapClaims {
	out := jwt.MapClaims{}
	for k, v := range c {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(out, kv[i].(string))
		} else {
			out[kv[i].(string)] = kv[i+1]
		}
	}
	return out
}

// sign makes a token with method and key; kid, when not empty, goes into
// the header.
func sign(t testing.TB, method jwt.SigningMethod, key any, c jwt.MapClaims, kid string) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatalf("signing with %s: %v", method.Alg(), err)
	}
	return s
}

func hs(t testing.TB, c jwt.MapClaims) string {
	t.Helper()
	return sign(t, jwt.SigningMethodHS256, []byte(testSecret), c, "")
}

// keyPair is a signing key and its public half.
type keyPair struct {
	private crypto.Signer
	public  crypto.PublicKey
}

var (
	rsaOnce sync.Once
	rsaKey  *rsa.PrivateKey
)

// rsaPair returns one 2048-bit RSA key for the whole run: generating one
// takes a while.
func rsaPair(t testing.TB) keyPair {
	t.Helper()
	rsaOnce.Do(func() {
		var err error
		if rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
	})
	return keyPair{rsaKey, &rsaKey.PublicKey}
}

func ecPair(t testing.TB, curve elliptic.Curve) keyPair {
	t.Helper()
	k, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{k, &k.PublicKey}
}

func edPair(t testing.TB) keyPair {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{priv, pub}
}

// writePEM writes blocks of type typ holding der to a file in a fresh
// temporary directory and returns its path.
func writePEM(t testing.TB, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "jwt.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// writePublicKey writes pub as a PEM "PUBLIC KEY" file.
func writePublicKey(t testing.TB, pub crypto.PublicKey) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return writePEM(t, "PUBLIC KEY", der)
}

// wantRefusal checks that err is a *Refusal with reason and that it says
// nothing of the token.
func wantRefusal(t *testing.T, err error, reason, token string) {
	t.Helper()
	var r *Refusal
	if !errors.As(err, &r) {
		t.Fatalf("got error %v (%T), want a *Refusal %q", err, err, reason)
	}
	if r.Reason != reason {
		t.Errorf("got refusal %q, want %q", r.Reason, reason)
	}
	if got, want := err.Error(), "tenant token refused: "+reason; got != want {
		t.Errorf("got message %q, want %q", got, want)
	}
	for _, part := range strings.Split(token, ".") {
		if len(part) >= 4 && strings.Contains(err.Error(), part) {
			t.Errorf("refusal %q quotes part of the token", err.Error())
		}
	}
}
