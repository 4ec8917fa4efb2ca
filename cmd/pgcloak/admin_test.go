package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/crypto"
	"github.com/pgcloak/pgcloak/metrics"
	"github.com/pgcloak/pgcloak/testenv"
	"github.com/rs/zerolog"
)

// adminConfig is a configuration with the admin listener on a free port
// and upstream at addr as the testenv SCRAM role.
func adminConfig(addr, password, db string) *config.Config {
	return &config.Config{
		Admin: config.Admin{Address: "127.0.0.1:0", MaxTenantLabels: 3},
		Upstream: config.Upstream{
			Address:        addr,
			SSLMode:        config.SSLDisable,
			User:           testenv.ScramUser,
			Password:       config.Secret(password),
			Database:       db,
			ConnectTimeout: 5 * time.Second,
		},
	}
}

// startTestAdmin starts the admin listener and stops it when the test ends.
// The log goes to the test's output and to the returned buffer.
func startTestAdmin(t *testing.T, cfg *config.Config, deps adminDeps) (*adminServer, *syncBuffer) {
	t.Helper()
	logs := new(syncBuffer)
	log := zerolog.New(io.MultiWriter(logs, zerolog.NewTestWriter(t)))
	a, err := startAdmin(t.Context(), cfg, log, deps)
	if err != nil {
		t.Fatalf("startAdmin: %v", err)
	}
	t.Cleanup(a.Stop)
	return a, logs
}

// get fetches path from the admin listener and returns status and body.
func get(t *testing.T, a *adminServer, path string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + a.Addr().String() + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, string(body)
}

// closedAddr returns a 127.0.0.1 address nothing listens on.
func closedAddr(t *testing.T) string { return freeAddr(t) }

func TestAdminMetrics(t *testing.T) {
	cfg := adminConfig(closedAddr(t), "pw", "app")
	m := metrics.New(metrics.Options{MaxTenantLabels: cfg.Admin.MaxTenantLabels, Version: version})
	a, _ := startTestAdmin(t, cfg, adminDeps{Metrics: m})

	var obs interface {
		SessionStarted(string)
		StatementRefused(string)
		DecryptFailed(string, string)
	} = m
	for _, tenant := range []string{"t1", "t2", "t3", "t4", "t5", "", "t1"} {
		obs.SessionStarted(tenant)
	}
	obs.StatementRefused("0A000")
	obs.DecryptFailed("public.patients", "ssn")

	code, body := get(t, a, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: got %d, want 200\n%s", code, body)
	}
	for _, name := range []string{
		"pgcloak_build_info", "pgcloak_sessions_active", "pgcloak_sessions_total",
		"pgcloak_statements_rewritten_total", "pgcloak_statements_refused_total",
		"pgcloak_decrypt_failures_total", "pgcloak_key_unwraps_total",
		"pgcloak_key_cache_hits_total", "pgcloak_key_cache_misses_total",
		"pgcloak_key_cache_evictions_total", "pgcloak_key_provider_calls_total",
		"pgcloak_key_provider_errors_total",
	} {
		if !strings.Contains(body, "# TYPE "+name+" ") {
			t.Errorf("/metrics has no %s", name)
		}
	}

	// Three tenants of their own (the cap), the rest "other", unscoped apart.
	got := regexp.MustCompile(`(?m)^pgcloak_sessions_total\{tenant="([^"]*)"\} (\d+)$`).FindAllStringSubmatch(body, -1)
	seen := make(map[string]string)
	for _, g := range got {
		seen[g[1]] = g[2]
	}
	want := map[string]string{"t1": "2", "t2": "1", "t3": "1", "other": "2", "unscoped": "1"}
	if len(seen) != len(want) {
		t.Errorf("pgcloak_sessions_total series: got %v, want %v", seen, want)
	}
	for k, v := range want {
		if seen[k] != v {
			t.Errorf("pgcloak_sessions_total{tenant=%q}: got %q, want %s", k, seen[k], v)
		}
	}

	if code, body := get(t, a, "/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("GET /healthz: got %d %q, want 200 \"ok\\n\"", code, body)
	}
	if code, _ := get(t, a, "/"); code != http.StatusNotFound {
		t.Errorf("GET /: got %d, want 404", code)
	}
	resp, err := http.Post("http://"+a.Addr().String()+"/healthz", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /healthz: got %d, want 405", resp.StatusCode)
	}
}

func TestAdminWithoutMetrics(t *testing.T) {
	a, _ := startTestAdmin(t, adminConfig(closedAddr(t), "pw", "app"), adminDeps{})
	if code, _ := get(t, a, "/metrics"); code != http.StatusNotFound {
		t.Errorf("GET /metrics without metrics: got %d, want 404", code)
	}
}

func TestAdminDisabled(t *testing.T) {
	cfg := adminConfig(closedAddr(t), "pw", "app")
	cfg.Admin.Address = ""
	a, err := startAdmin(t.Context(), cfg, zerolog.Nop(), adminDeps{})
	if a != nil || err != nil {
		t.Fatalf("startAdmin without admin.address: got %v, %v; want nil, nil", a, err)
	}
	// A nil server's methods do nothing.
	a.Drain()
	a.Stop()
	if a.Addr() != nil {
		t.Errorf("Addr of a nil server: got %v, want nil", a.Addr())
	}
}

func TestAdminAddressInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := adminConfig(closedAddr(t), "pw", "app")
	cfg.Admin.Address = ln.Addr().String()
	if a, err := startAdmin(t.Context(), cfg, zerolog.Nop(), adminDeps{}); err == nil {
		a.Stop()
		t.Fatal("startAdmin on an address in use: got nil error")
	}
}

// pinger is a key provider whose Ping fails with err.
type pinger struct {
	crypto.Provider
	err error
}

func (p pinger) Ping(ctx context.Context) error { return p.err }

// slowPinger is a key provider whose Ping never answers on its own.
type slowPinger struct{ crypto.Provider }

func (slowPinger) Ping(ctx context.Context) error {
	<-ctx.Done()
	return ctx.Err()
}

func TestAdminReadyz(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)

	t.Run("postgres up, no pool", func(t *testing.T) {
		a, _ := startTestAdmin(t, adminConfig(pg.Addr(), testenv.ScramPassword, db), adminDeps{})
		if code, body := get(t, a, "/readyz"); code != http.StatusOK || body != "ok\n" {
			t.Errorf("GET /readyz: got %d %q, want 200 \"ok\\n\"", code, body)
		}
	})

	t.Run("postgres up, pool", func(t *testing.T) {
		cfg := adminConfig(pg.Addr(), testenv.ScramPassword, db)
		pool, err := upstreamPool(cfg.Upstream, "pgcloak", upstreamPoolMaxConns)
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Close()
		local, err := crypto.NewLocalProvider(make([]byte, 32))
		if err != nil {
			t.Fatal(err)
		}
		m := metrics.New(metrics.Options{})
		a, _ := startTestAdmin(t, cfg, adminDeps{Metrics: m, Pool: pool, Provider: m.InstrumentProvider(local)})
		if code, body := get(t, a, "/readyz"); code != http.StatusOK || body != "ok\n" {
			t.Errorf("GET /readyz: got %d %q, want 200", code, body)
		}
		// Draining turns readiness off for good.
		a.Drain()
		if code, body := get(t, a, "/readyz"); code != http.StatusServiceUnavailable || body != "draining\n" {
			t.Errorf("GET /readyz while draining: got %d %q, want 503 \"draining\\n\"", code, body)
		}
		if code, _ := get(t, a, "/healthz"); code != http.StatusOK {
			t.Errorf("GET /healthz while draining: got %d, want 200", code)
		}
	})

	t.Run("postgres up, wrong password, no pool", func(t *testing.T) {
		// Without a pool the proxy needs no login of its own: a server
		// that says "wrong password" is up.
		a, _ := startTestAdmin(t, adminConfig(pg.Addr(), "not-the-password", db), adminDeps{})
		if code, body := get(t, a, "/readyz"); code != http.StatusOK {
			t.Errorf("GET /readyz: got %d %q, want 200", code, body)
		}
	})

	t.Run("postgres up, wrong password, pool", func(t *testing.T) {
		// With a pool the proxy's own login is needed (keys, catalog).
		cfg := adminConfig(pg.Addr(), "not-the-password", db)
		pool, err := upstreamPool(cfg.Upstream, "pgcloak", upstreamPoolMaxConns)
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Close()
		a, logs := startTestAdmin(t, cfg, adminDeps{Pool: pool})
		code, body := get(t, a, "/readyz")
		if code != http.StatusServiceUnavailable || body != "upstream: refused (SQLSTATE 28P01)\n" {
			t.Errorf("GET /readyz: got %d %q, want 503 \"upstream: refused (SQLSTATE 28P01)\\n\"", code, body)
		}
		if strings.Contains(logs.String(), "not-the-password") {
			t.Errorf("the log holds the upstream password:\n%s", logs)
		}
	})

	t.Run("upstream down", func(t *testing.T) {
		addr := closedAddr(t)
		a, logs := startTestAdmin(t, adminConfig(addr, testenv.ScramPassword, db), adminDeps{})
		for i := range 3 {
			code, body := get(t, a, "/readyz")
			if code != http.StatusServiceUnavailable || body != "upstream: not reachable\n" {
				t.Errorf("GET /readyz #%d: got %d %q, want 503 \"upstream: not reachable\\n\"", i, code, body)
			}
		}
		// Logged once, not per probe.
		if n := strings.Count(logs.String(), `"check":"upstream"`); n != 1 {
			t.Errorf("got %d log lines about the upstream check, want 1:\n%s", n, logs)
		}
		if !strings.Contains(logs.String(), addr) {
			t.Errorf("the log does not say which upstream failed:\n%s", logs)
		}
		if code, _ := get(t, a, "/healthz"); code != http.StatusOK {
			t.Errorf("GET /healthz with upstream down: got %d, want 200", code)
		}
	})

	t.Run("upstream silent", func(t *testing.T) {
		// A server that accepts TCP and never answers: the check times out.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var held sync.WaitGroup
		defer held.Wait()
		defer ln.Close()
		held.Go(func() {
			var conns []net.Conn
			defer func() {
				for _, c := range conns {
					c.Close()
				}
			}()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				conns = append(conns, c)
			}
		})
		a, _ := startTestAdmin(t, adminConfig(ln.Addr().String(), testenv.ScramPassword, db), adminDeps{})
		start := time.Now()
		code, body := get(t, a, "/readyz")
		if code != http.StatusServiceUnavailable || body != "upstream: timed out\n" {
			t.Errorf("GET /readyz: got %d %q, want 503 \"upstream: timed out\\n\"", code, body)
		}
		if d := time.Since(start); d > readyCheckTimeout+3*time.Second {
			t.Errorf("GET /readyz took %s, want about %s", d, readyCheckTimeout)
		}
	})

	t.Run("key provider down", func(t *testing.T) {
		p := pinger{err: errors.New("kms https://kms.internal:443: dial tcp 10.0.0.7:443: connection refused")}
		a, logs := startTestAdmin(t, adminConfig(pg.Addr(), testenv.ScramPassword, db), adminDeps{Provider: p})
		code, body := get(t, a, "/readyz")
		if code != http.StatusServiceUnavailable || body != "key provider: not reachable\n" {
			t.Errorf("GET /readyz: got %d %q, want 503 \"key provider: not reachable\\n\"", code, body)
		}
		if !strings.Contains(logs.String(), `"check":"key provider"`) {
			t.Errorf("the failed check is not logged:\n%s", logs)
		}
	})

	t.Run("key provider silent and upstream down", func(t *testing.T) {
		m := metrics.New(metrics.Options{})
		p := m.InstrumentProvider(slowPinger{})
		a, _ := startTestAdmin(t, adminConfig(closedAddr(t), testenv.ScramPassword, db), adminDeps{Metrics: m, Provider: p})
		code, body := get(t, a, "/readyz")
		if want := "upstream: not reachable; key provider: timed out\n"; code != http.StatusServiceUnavailable || body != want {
			t.Errorf("GET /readyz: got %d %q, want 503 %q", code, body, want)
		}
		_, scraped := get(t, a, "/metrics")
		if !strings.Contains(scraped, `pgcloak_key_provider_errors_total{operation="ping"} 1`) {
			t.Errorf("the failed ping is not counted:\n%s", scraped)
		}
	})

	t.Run("concurrent probes", func(t *testing.T) {
		a, _ := startTestAdmin(t, adminConfig(pg.Addr(), testenv.ScramPassword, db), adminDeps{})
		var wg sync.WaitGroup
		for range 20 {
			wg.Go(func() {
				// Not get: t.Fatal must not run outside the test goroutine.
				resp, err := http.Get("http://" + a.Addr().String() + "/readyz")
				if err != nil {
					t.Errorf("GET /readyz: %v", err)
					return
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Errorf("GET /readyz: got %d, want 200", resp.StatusCode)
				}
			})
		}
		wg.Wait()
	})
}

// TestServeAdmin runs serve with admin.address set: the endpoints answer
// while it serves and are gone once it has shut down.
func TestServeAdmin(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	admin := freeAddr(t)
	s := startServe(t, pg, db, func(cfg string) string {
		return cfg + "admin:\n  address: " + admin + "\n"
	})
	s.connect(t, db, "sslmode=disable")

	client := &http.Client{Timeout: 10 * time.Second}
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := client.Get("http://" + admin + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != "ok\n" {
			t.Errorf("GET %s: got %d %q, want 200 \"ok\\n\"", path, resp.StatusCode, body)
		}
	}

	if code := s.shutdown(t); code != 0 {
		t.Fatalf("serve exit code: got %d, want 0", code)
	}
	if resp, err := client.Get("http://" + admin + "/healthz"); err == nil {
		resp.Body.Close()
		t.Errorf("GET /healthz after shutdown: got %d, want the listener closed", resp.StatusCode)
	}
}
