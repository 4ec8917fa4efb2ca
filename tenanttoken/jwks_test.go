package tenanttoken

import (
	"context"
	"crypto"
	"crypto/elliptic"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
	"github.com/pgcloak/pgcloak/config"
)

// jwksServer serves a key set on 127.0.0.1 that a test changes as it
// goes, and counts the fetches.
type jwksServer struct {
	*httptest.Server
	fetches atomic.Int32

	mu     sync.Mutex
	keys   []jwkset.JWKMarshal
	status int
}

func newJWKSServer(t *testing.T) *jwksServer {
	t.Helper()
	s := &jwksServer{status: http.StatusOK}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fetches.Add(1)
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.status != http.StatusOK {
			w.WriteHeader(s.status)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(jwkset.JWKSMarshal{Keys: s.keys})
	}))
	if host, _, _ := net.SplitHostPort(s.Listener.Addr().String()); host != "127.0.0.1" {
		t.Fatalf("httptest listens on %s, want 127.0.0.1", host)
	}
	t.Cleanup(s.Close)
	return s
}

// add publishes pub under kid.
func (s *jwksServer) add(t *testing.T, kid string, alg jwkset.ALG, pub crypto.PublicKey) {
	t.Helper()
	jwk, err := jwkset.NewJWKFromKey(pub, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: kid, ALG: alg, USE: jwkset.UseSig}})
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.keys = append(s.keys, jwk.Marshal())
	s.mu.Unlock()
}

// remove withdraws kid.
func (s *jwksServer) remove(kid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, k := range s.keys {
		if k.KID == kid {
			s.keys = append(s.keys[:i], s.keys[i+1:]...)
			return
		}
	}
}

func (s *jwksServer) setStatus(code int) {
	s.mu.Lock()
	s.status = code
	s.mu.Unlock()
}

func jwksConfig(url string) config.JWTTenancy {
	c := hsConfig()
	c.HS256Secret, c.JWKSURL = "", url
	return c
}

// TestJWKS: keys come from a key set fetched at New; a kid the set lacks
// fetches it again, at most once per JWKSRefetchInterval of the
// Verifier's clock; a rotated-in key is accepted after that fetch.
func TestJWKS(t *testing.T) {
	srv := newJWKSServer(t)
	k1, k2, k3 := rsaPair(t), ecPair(t, elliptic.P256()), edPair(t)
	srv.add(t, "k1", jwkset.AlgRS256, k1.public)

	clk := newClock()
	v := newVerifier(t, jwksConfig(srv.URL+"/.well-known/jwks.json"), clk)
	wantFetches := func(want int32) {
		t.Helper()
		if got := srv.fetches.Load(); got != want {
			t.Errorf("JWKS fetches: got %d, want %d", got, want)
		}
	}
	wantFetches(1)

	verify := func(raw string) error {
		t.Helper()
		_, err := v.Verify(t.Context(), raw)
		return err
	}
	if err := verify(sign(t, jwt.SigningMethodRS256, k1.private, claims(), "k1")); err != nil {
		t.Fatalf("k1: got %v, want accepted", err)
	}
	t.Run("no kid tries every key", func(t *testing.T) {
		if err := verify(sign(t, jwt.SigningMethodRS256, k1.private, with(claims(), "jti", "no-kid"), "")); err != nil {
			t.Errorf("got %v, want accepted", err)
		}
	})
	t.Run("wrong key under a known kid", func(t *testing.T) {
		raw := sign(t, jwt.SigningMethodES256, k2.private, claims(), "k1")
		wantRefusal(t, verify(raw), ReasonBadSignature, raw)
	})
	t.Run("HS256 with a key set", func(t *testing.T) {
		raw := sign(t, jwt.SigningMethodHS256, []byte(testSecret), claims(), "k1")
		wantRefusal(t, verify(raw), ReasonAlgorithm, raw)
	})
	wantFetches(1)

	// k2 is not published yet: the first unknown kid fetches, and fails.
	k2Token := sign(t, jwt.SigningMethodES256, k2.private, claims(), "k2")
	wantRefusal(t, verify(k2Token), ReasonUnknownKID, k2Token)
	wantFetches(2)

	// Published now, but the next fetch must wait 10 s of the clock.
	srv.add(t, "k2", jwkset.AlgES256, k2.public)
	wantRefusal(t, verify(k2Token), ReasonUnknownKID, k2Token)
	madeUp := sign(t, jwt.SigningMethodES256, k2.private, claims(), "made-up")
	for range 20 {
		wantRefusal(t, verify(madeUp), ReasonUnknownKID, madeUp)
	}
	clk.advance(JWKSRefetchInterval - time.Second)
	wantRefusal(t, verify(k2Token), ReasonUnknownKID, k2Token)
	wantFetches(2)

	clk.advance(time.Second)
	if err := verify(k2Token); err != nil {
		t.Fatalf("k2 after the refetch interval: got %v, want accepted", err)
	}
	wantFetches(3)

	// Ed25519 joins the set; k3 is still unknown until the next window.
	srv.add(t, "k3", jwkset.AlgEdDSA, k3.public)
	k3Token := sign(t, jwt.SigningMethodEdDSA, k3.private, claims(), "k3")
	wantRefusal(t, verify(k3Token), ReasonUnknownKID, k3Token)
	wantFetches(3)
	clk.advance(JWKSRefetchInterval)
	if err := verify(k3Token); err != nil {
		t.Fatalf("k3 after the refetch interval: got %v, want accepted", err)
	}
	wantFetches(4)

	// A key withdrawn from the set stops new tokens at the next fetch.
	srv.remove("k1")
	clk.advance(JWKSRefetchInterval)
	_ = verify(madeUp) // an unknown kid fetches the set again
	wantFetches(5)
	fresh := sign(t, jwt.SigningMethodRS256, k1.private, with(claims(), "jti", "fresh"), "k1")
	wantRefusal(t, verify(fresh), ReasonUnknownKID, fresh)
}

// TestJWKSBackgroundRefresh: the set is fetched again on its own, so a
// rotated-in key verifies without waiting for an unknown kid's fetch.
func TestJWKSBackgroundRefresh(t *testing.T) {
	srv := newJWKSServer(t)
	k1, k2 := edPair(t), edPair(t)
	srv.add(t, "k1", jwkset.AlgEdDSA, k1.public)
	clk := newClock()
	v := newVerifier(t, jwksConfig(srv.URL), clk, withJWKSRefresh(20*time.Millisecond))

	// Use up the unknown-kid fetch, so that only the refresh can help.
	other := sign(t, jwt.SigningMethodEdDSA, k2.private, claims(), "nope")
	_, err := v.Verify(t.Context(), other)
	wantRefusal(t, err, ReasonUnknownKID, other)

	srv.add(t, "k2", jwkset.AlgEdDSA, k2.public)
	before := srv.fetches.Load()
	deadline := time.Now().Add(10 * time.Second)
	for srv.fetches.Load() < before+2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := srv.fetches.Load(); got < before+2 {
		t.Fatalf("JWKS fetches: got %d after waiting, want at least %d from the background refresh", got, before+2)
	}
	raw := sign(t, jwt.SigningMethodEdDSA, k2.private, claims(), "k2")
	if _, err := v.Verify(t.Context(), raw); err != nil {
		t.Errorf("k2 after a background refresh: got %v, want accepted", err)
	}
}

// TestJWKSStart: New fails when the set cannot be fetched or holds no
// usable key, and Close ends the refresh goroutine.
func TestJWKSStart(t *testing.T) {
	t.Run("unreachable", func(t *testing.T) {
		srv := newJWKSServer(t)
		url := srv.URL
		srv.Close()
		v, err := New(t.Context(), jwksConfig(url))
		if err == nil {
			v.Close()
			t.Fatal("New: got a Verifier, want an error for an unreachable JWKS")
		}
		if !strings.Contains(err.Error(), "tenancy.jwt.jwks_url "+url) {
			t.Errorf("New: got %q, want it to name tenancy.jwt.jwks_url and the URL", err)
		}
	})
	t.Run("server error", func(t *testing.T) {
		srv := newJWKSServer(t)
		srv.setStatus(http.StatusInternalServerError)
		if v, err := New(t.Context(), jwksConfig(srv.URL)); err == nil {
			v.Close()
			t.Fatal("New: got a Verifier, want an error for HTTP 500")
		}
	})
	t.Run("empty set", func(t *testing.T) {
		srv := newJWKSServer(t)
		v, err := New(t.Context(), jwksConfig(srv.URL))
		if err == nil {
			v.Close()
			t.Fatal("New: got a Verifier, want an error for an empty key set")
		}
		if !strings.Contains(err.Error(), "holds no key") {
			t.Errorf("New: got %q, want it to say the set holds no key", err)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		srv := newJWKSServer(t)
		srv.add(t, "k1", jwkset.AlgEdDSA, edPair(t).public)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if v, err := New(ctx, jwksConfig(srv.URL)); err == nil {
			v.Close()
			t.Fatal("New: got a Verifier, want an error from a cancelled context")
		}
	})
	t.Run("redirect to plain http off loopback", func(t *testing.T) {
		srv := httptest.NewServer(http.RedirectHandler("http://jwks.invalid/keys", http.StatusFound))
		defer srv.Close()
		v, err := New(t.Context(), jwksConfig(srv.URL))
		if err == nil {
			v.Close()
			t.Fatal("New: got a Verifier, want the redirect refused")
		}
		if !strings.Contains(err.Error(), "neither https nor loopback") {
			t.Errorf("New: got %q, want the redirect refused", err)
		}
	})
	t.Run("close ends the refresh", func(t *testing.T) {
		srv := newJWKSServer(t)
		srv.add(t, "k1", jwkset.AlgEdDSA, edPair(t).public)
		before := runtime.NumGoroutine()
		v, err := New(t.Context(), jwksConfig(srv.URL), withJWKSRefresh(time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		v.Close()
		v.Close() // twice is fine
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<16)
			t.Errorf("goroutines: got %d after Close, want at most %d\n%s", n, before, buf[:runtime.Stack(buf, true)])
		}
		n := srv.fetches.Load()
		time.Sleep(20 * time.Millisecond)
		if got := srv.fetches.Load(); got != n {
			t.Errorf("JWKS fetches after Close: got %d more, want none", got-n)
		}
	})
	t.Run("refresh errors are reported", func(t *testing.T) {
		srv := newJWKSServer(t)
		srv.add(t, "k1", jwkset.AlgEdDSA, edPair(t).public)
		errs := make(chan error, 100)
		v := newVerifier(t, jwksConfig(srv.URL), newClock(), WithRefreshErrors(func(err error) {
			select {
			case errs <- err:
			default:
			}
		}))
		srv.setStatus(http.StatusBadGateway)
		raw := sign(t, jwt.SigningMethodEdDSA, edPair(t).private, claims(), "secret-kid-value")
		_, err := v.Verify(t.Context(), raw)
		wantRefusal(t, err, ReasonUnknownKID, raw)
		select {
		case err := <-errs:
			if !strings.Contains(err.Error(), "tenancy.jwt.jwks_url") || !strings.Contains(err.Error(), "502") {
				t.Errorf("reported %q, want the key and the status", err)
			}
			if strings.Contains(err.Error(), "secret-kid-value") {
				t.Errorf("reported %q, which quotes the token's kid", err)
			}
		default:
			t.Errorf("no refresh error reported for a failed fetch")
		}
	})
}

// TestVerifyAtOnce: with a key set, VerifyAtOnce answers only from the
// cache (ok false for a token not verified before, and no fetch), the
// cached claims after Verify, and an expired cached token's refusal;
// without a key set it is Verify.
func TestVerifyAtOnce(t *testing.T) {
	srv := newJWKSServer(t)
	k1 := rsaPair(t)
	srv.add(t, "k1", jwkset.AlgRS256, k1.public)
	clk := newClock()
	v := newVerifier(t, jwksConfig(srv.URL+"/.well-known/jwks.json"), clk)
	raw := sign(t, jwt.SigningMethodRS256, k1.private, claims(), "k1")
	unknown := sign(t, jwt.SigningMethodRS256, k1.private, claims(), "unknown-kid")
	for _, tok := range []string{raw, unknown} {
		if _, err, ok := v.VerifyAtOnce(tok); ok {
			t.Errorf("a token not verified before: ok with %v, want not ok", err)
		}
	}
	if got := srv.fetches.Load(); got != 1 {
		t.Errorf("JWKS fetches: got %d, want only New's", got)
	}
	want, err := v.Verify(t.Context(), raw)
	if err != nil {
		t.Fatal(err)
	}
	if c, err, ok := v.VerifyAtOnce(raw); !ok || err != nil || c != want {
		t.Errorf("a cached token: got %+v, %v, %v; want %+v", c, err, ok, want)
	}
	clk.advance(2 * time.Hour)
	if _, err, ok := v.VerifyAtOnce(raw); !ok {
		t.Error("an expired cached token: not ok, want its refusal")
	} else {
		wantRefusal(t, err, ReasonExpired, raw)
	}

	hs := newVerifier(t, hsConfig(), newClock())
	tok := sign(t, jwt.SigningMethodHS256, []byte(testSecret), claims(), "")
	if c, err, ok := hs.VerifyAtOnce(tok); !ok || err != nil || c.Tenant == "" {
		t.Errorf("HS256 without a key set: got %+v, %v, %v; want verified", c, err, ok)
	}
}
