package metrics_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pgcloak/pgcloak/crypto"
	"github.com/pgcloak/pgcloak/metrics"
	"github.com/pgcloak/pgcloak/proxy"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The proxy reports its events to a *Metrics.
var _ proxy.Observer = (*metrics.Metrics)(nil)

// scrape returns m's exposition as /metrics serves it.
func scrape(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics: got status %d, want 200", rec.Code)
	}
	return rec.Body.String()
}

// compare checks the named metrics of m against want, in the text
// exposition format (HELP and TYPE lines included).
func compare(t *testing.T, m *metrics.Metrics, want string, names ...string) {
	t.Helper()
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
}

func TestSessionsTenantLabelCap(t *testing.T) {
	m := metrics.New(metrics.Options{MaxTenantLabels: 2})
	for _, tenant := range []string{"acme", "globex", "acme", "initech", "umbrella", "", "globex"} {
		m.SessionStarted(tenant)
	}
	// initech arrived third, so it is "other" for the life of the process,
	// even after acme's sessions end.
	m.SessionEnded("acme")
	m.SessionEnded("acme")
	m.SessionEnded("initech")
	m.SessionStarted("initech")

	compare(t, m, `
# HELP pgcloak_sessions_active Client sessions now open, by tenant ("unscoped" without one, "other" past admin.max_tenant_labels).
# TYPE pgcloak_sessions_active gauge
pgcloak_sessions_active{tenant="acme"} 0
pgcloak_sessions_active{tenant="globex"} 2
pgcloak_sessions_active{tenant="other"} 2
pgcloak_sessions_active{tenant="unscoped"} 1
# HELP pgcloak_sessions_total Client sessions started, by tenant ("unscoped" without one, "other" past admin.max_tenant_labels).
# TYPE pgcloak_sessions_total counter
pgcloak_sessions_total{tenant="acme"} 2
pgcloak_sessions_total{tenant="globex"} 2
pgcloak_sessions_total{tenant="other"} 3
pgcloak_sessions_total{tenant="unscoped"} 1
`, "pgcloak_sessions_active", "pgcloak_sessions_total")
}

func TestSessionsManyTenants(t *testing.T) {
	const max = 100
	m := metrics.New(metrics.Options{MaxTenantLabels: max})
	for i := range 5000 {
		tenant := "tenant-" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + time.Duration(i).String()
		m.SessionStarted(tenant)
	}
	if got, want := testutil.CollectAndCount(m.Registry(), "pgcloak_sessions_total"), max+1; got != want {
		t.Errorf("got %d pgcloak_sessions_total series for 5000 tenants, want %d (the cap plus other)", got, want)
	}
}

func TestSessionsNoTenantLabels(t *testing.T) {
	m := metrics.New(metrics.Options{MaxTenantLabels: 0})
	m.SessionStarted("acme")
	m.SessionStarted("")
	compare(t, m, `
# HELP pgcloak_sessions_total Client sessions started, by tenant ("unscoped" without one, "other" past admin.max_tenant_labels).
# TYPE pgcloak_sessions_total counter
pgcloak_sessions_total{tenant="other"} 1
pgcloak_sessions_total{tenant="unscoped"} 1
`, "pgcloak_sessions_total")
}

func TestUnsafeLabelValues(t *testing.T) {
	m := metrics.New(metrics.Options{MaxTenantLabels: 10, Version: "v1\xff"})
	// None of these may panic (Prometheus rejects invalid UTF-8) or make a
	// series of its own.
	m.SessionStarted("acme\xff")
	m.SessionStarted(strings.Repeat("t", 1000))
	m.StatementRefused("0A000")
	m.StatementRefused("0A000")
	m.StatementRefused("42501")
	m.StatementRefused("not a sqlstate")
	m.StatementRefused("0a000")
	m.DecryptFailed("public.patients", "ssn")
	m.DecryptFailed("public.patients", "ssn\xff")
	m.StatementRewritten()

	compare(t, m, `
# HELP pgcloak_build_info Always 1; the version label is the running pgcloak's.
# TYPE pgcloak_build_info gauge
pgcloak_build_info{version="other"} 1
# HELP pgcloak_decrypt_failures_total Values of declared columns that could not be decrypted for the session's tenant.
# TYPE pgcloak_decrypt_failures_total counter
pgcloak_decrypt_failures_total{column="other",table="other"} 1
pgcloak_decrypt_failures_total{column="ssn",table="public.patients"} 1
# HELP pgcloak_sessions_total Client sessions started, by tenant ("unscoped" without one, "other" past admin.max_tenant_labels).
# TYPE pgcloak_sessions_total counter
pgcloak_sessions_total{tenant="other"} 2
# HELP pgcloak_statements_refused_total Statements and messages the proxy refused with an ErrorResponse of its own, by SQLSTATE.
# TYPE pgcloak_statements_refused_total counter
pgcloak_statements_refused_total{sqlstate="0A000"} 2
pgcloak_statements_refused_total{sqlstate="42501"} 1
pgcloak_statements_refused_total{sqlstate="other"} 2
# HELP pgcloak_statements_rewritten_total Statements the proxy rewrote (encrypted writes, blind-index predicates) before forwarding them.
# TYPE pgcloak_statements_rewritten_total counter
pgcloak_statements_rewritten_total 1
`, "pgcloak_build_info", "pgcloak_decrypt_failures_total", "pgcloak_sessions_total",
		"pgcloak_statements_refused_total", "pgcloak_statements_rewritten_total")
}

func TestRegistriesAreSeparate(t *testing.T) {
	a := metrics.New(metrics.Options{MaxTenantLabels: 1})
	b := metrics.New(metrics.Options{MaxTenantLabels: 1})
	a.StatementRewritten()
	if got := scrape(t, a); !strings.Contains(got, "\npgcloak_statements_rewritten_total 1\n") {
		t.Errorf("a's statement is not in a's registry:\n%s", got)
	}
	if got := scrape(t, b); strings.Contains(got, "pgcloak_statements_rewritten_total 1") {
		t.Errorf("a's statement shows in b's registry:\n%s", got)
	}
}

// pingProvider is a crypto.Provider with the Ping method a KMS provider
// has.
type pingProvider struct {
	*crypto.LocalProvider
	pingErr error
}

func (p *pingProvider) Ping(context.Context) error { return p.pingErr }

func newLocal(t *testing.T) *crypto.LocalProvider {
	t.Helper()
	p, err := crypto.NewLocalProvider(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestInstrumentProvider(t *testing.T) {
	ctx := t.Context()
	m := metrics.New(metrics.Options{})
	base := &pingProvider{LocalProvider: newLocal(t), pingErr: errors.New("kms: connection refused")}
	p := m.InstrumentProvider(base)
	if again := m.InstrumentProvider(p); again != p {
		t.Errorf("InstrumentProvider of an instrumented provider: got a new decorator, want it unchanged")
	}

	kc := crypto.KeyContext{Tenant: "acme", Purpose: crypto.PurposeData}
	plain, wrapped, _, err := p.GenerateDataKey(ctx, kc)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := p.Wrap(ctx, kc, plain); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Unwrap(ctx, kc, wrapped); err != nil {
		t.Fatal(err)
	}
	other := crypto.KeyContext{Tenant: "globex", Purpose: crypto.PurposeData}
	if _, err := p.Unwrap(ctx, other, wrapped); err == nil {
		t.Fatal("unwrap under another tenant's context: got nil error, want a failure")
	}

	pinger, ok := p.(interface{ Ping(context.Context) error })
	if !ok {
		t.Fatal("the instrumented provider has no Ping method")
	}
	if err := pinger.Ping(ctx); err == nil || err.Error() != "kms: connection refused" {
		t.Errorf("Ping: got %v, want the wrapped provider's error", err)
	}

	compare(t, m, `
# HELP pgcloak_key_provider_calls_total Calls to the key provider (AWS KMS or the local master key), by operation.
# TYPE pgcloak_key_provider_calls_total counter
pgcloak_key_provider_calls_total{operation="generate_data_key"} 1
pgcloak_key_provider_calls_total{operation="ping"} 1
pgcloak_key_provider_calls_total{operation="unwrap"} 2
pgcloak_key_provider_calls_total{operation="wrap"} 1
# HELP pgcloak_key_provider_errors_total Key provider calls that returned an error, by operation.
# TYPE pgcloak_key_provider_errors_total counter
pgcloak_key_provider_errors_total{operation="generate_data_key"} 0
pgcloak_key_provider_errors_total{operation="ping"} 1
pgcloak_key_provider_errors_total{operation="unwrap"} 1
pgcloak_key_provider_errors_total{operation="wrap"} 0
`, "pgcloak_key_provider_calls_total", "pgcloak_key_provider_errors_total")
	if got, want := testutil.CollectAndCount(m.Registry(), "pgcloak_key_provider_call_duration_seconds"), 4; got != want {
		t.Errorf("got %d duration histograms, want %d (one per operation called)", got, want)
	}
}

func TestInstrumentProviderWithoutPing(t *testing.T) {
	m := metrics.New(metrics.Options{})
	p := m.InstrumentProvider(newLocal(t))
	if err := p.(interface{ Ping(context.Context) error }).Ping(t.Context()); err != nil {
		t.Errorf("Ping of a local provider: got %v, want nil (always ready)", err)
	}
	if out := scrape(t, m); strings.Contains(out, `operation="ping"`) {
		t.Errorf("a provider without Ping was counted as pinged:\n%s", out)
	}
}

// TestKeyCache runs a real KeyCache over an instrumented provider: the
// first replica generates the tenant's keys, a second one unwraps them.
func TestKeyCache(t *testing.T) {
	ctx := t.Context()
	m := metrics.New(metrics.Options{})
	src := crypto.NewMemoryKeySource()
	provider := m.InstrumentProvider(newLocal(t))
	newCache := func() *crypto.KeyCache {
		c := crypto.NewKeyCache(src, provider, crypto.CacheOptions{TTL: time.Minute, MaxEntries: 100, OnKeyLoad: m.KeyLoaded})
		t.Cleanup(c.Close)
		return c
	}

	compare(t, m, `
# HELP pgcloak_key_cache_hits_total Data-key lookups answered from the cache.
# TYPE pgcloak_key_cache_hits_total counter
pgcloak_key_cache_hits_total 0
`, "pgcloak_key_cache_hits_total")

	first := newCache()
	m.ObserveKeyCache(first)
	for range 3 {
		if _, err := first.Active(ctx, "acme", crypto.DefaultKeyClass, crypto.PurposeData); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := first.Active(ctx, "acme", crypto.DefaultKeyClass, crypto.PurposeIndex); err != nil {
		t.Fatal(err)
	}
	compare(t, m, `
# HELP pgcloak_key_cache_entries Data keys (and remembered missing keys) now cached.
# TYPE pgcloak_key_cache_entries gauge
pgcloak_key_cache_entries 2
# HELP pgcloak_key_cache_hits_total Data-key lookups answered from the cache.
# TYPE pgcloak_key_cache_hits_total counter
pgcloak_key_cache_hits_total 2
# HELP pgcloak_key_cache_misses_total Data-key lookups that had to load the key (or wait for a load).
# TYPE pgcloak_key_cache_misses_total counter
pgcloak_key_cache_misses_total 2
# HELP pgcloak_keys_generated_total Data keys the key cache generated as a tenant's first version, by purpose.
# TYPE pgcloak_keys_generated_total counter
pgcloak_keys_generated_total{purpose="data"} 1
pgcloak_keys_generated_total{purpose="index"} 1
`, "pgcloak_key_cache_entries", "pgcloak_key_cache_hits_total", "pgcloak_key_cache_misses_total", "pgcloak_keys_generated_total")

	if n := first.Purge("acme"); n != 2 {
		t.Fatalf("Purge: got %d keys, want 2", n)
	}
	second := newCache()
	m.ObserveKeyCache(second)
	if _, err := second.Active(ctx, "acme", crypto.DefaultKeyClass, crypto.PurposeData); err != nil {
		t.Fatal(err)
	}
	compare(t, m, `
# HELP pgcloak_key_cache_misses_total Data-key lookups that had to load the key (or wait for a load).
# TYPE pgcloak_key_cache_misses_total counter
pgcloak_key_cache_misses_total 1
# HELP pgcloak_key_unwraps_total Stored data keys the key cache unwrapped through the key provider, by purpose.
# TYPE pgcloak_key_unwraps_total counter
pgcloak_key_unwraps_total{purpose="data"} 1
pgcloak_key_unwraps_total{purpose="index"} 0
# HELP pgcloak_key_provider_calls_total Calls to the key provider (AWS KMS or the local master key), by operation.
# TYPE pgcloak_key_provider_calls_total counter
pgcloak_key_provider_calls_total{operation="generate_data_key"} 2
pgcloak_key_provider_calls_total{operation="unwrap"} 1
pgcloak_key_provider_calls_total{operation="wrap"} 0
`, "pgcloak_key_cache_misses_total", "pgcloak_key_unwraps_total", "pgcloak_key_provider_calls_total")
}

// TestExposition checks that every metric name an operator's dashboard uses
// is served after only a session, a refused statement and a decryption
// failure were recorded: no key loaded, no provider called.
func TestExposition(t *testing.T) {
	m := metrics.New(metrics.Options{MaxTenantLabels: 100, Version: "v0.1.0"})
	m.SessionStarted("acme")
	m.StatementRefused("0A000")
	m.DecryptFailed("public.patients", "ssn")
	out := scrape(t, m)
	for _, name := range []string{
		"pgcloak_build_info",
		"pgcloak_sessions_active",
		"pgcloak_sessions_total",
		"pgcloak_statements_rewritten_total",
		"pgcloak_statements_refused_total",
		"pgcloak_decrypt_failures_total",
		"pgcloak_key_unwraps_total",
		"pgcloak_keys_generated_total",
		"pgcloak_key_cache_hits_total",
		"pgcloak_key_cache_misses_total",
		"pgcloak_key_cache_evictions_total",
		"pgcloak_key_cache_purged_total",
		"pgcloak_key_cache_entries",
		"pgcloak_key_provider_calls_total",
		"pgcloak_key_provider_errors_total",
		"go_goroutines",
		"promhttp_metric_handler_requests_total",
	} {
		if !strings.Contains(out, "\n# TYPE "+name+" ") {
			t.Errorf("/metrics has no %s", name)
		}
	}
	probs, err := testutil.GatherAndLint(m.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range probs {
		if strings.HasPrefix(p.Metric, "pgcloak_") {
			t.Errorf("lint %s: %s", p.Metric, p.Text)
		}
	}
}
