package metrics

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/pgcloak/pgcloak/crypto"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Label values that stand for more than one thing.
const (
	// LabelUnscoped is the tenant label of sessions without a tenant
	// (unscoped roles, and every session of a pure passthrough proxy).
	LabelUnscoped = "unscoped"

	// LabelOther is the label of everything past a label's cap: tenants
	// after the first MaxTenantLabels, malformed SQLSTATEs, values that are
	// not valid UTF-8 or are too long to be a name. A tenant that is really
	// called "other" or "unscoped" shares that series.
	LabelOther = "other"
)

// maxLabelLen bounds a tenant, table or column label value; longer ones
// are counted as LabelOther. PostgreSQL identifiers are at most 63 bytes;
// tenant names (UUIDs, slugs) are far below this.
const maxLabelLen = 128

// maxDecryptLabels bounds the distinct (table, column) pairs of
// pgcloak_decrypt_failures_total. The proxy only reports declared columns,
// so this is a backstop, not a limit anyone should meet.
const maxDecryptLabels = 1000

// Provider operations, the values of the "operation" label.
const (
	OpWrap            = "wrap"
	OpUnwrap          = "unwrap"
	OpGenerateDataKey = "generate_data_key"
	OpPing            = "ping"
)

// Options configures New.
type Options struct {
	// MaxTenantLabels is how many distinct tenants get a label of their
	// own (config admin.max_tenant_labels); later tenants are labelled
	// LabelOther. 0 (or less) labels every tenant LabelOther.
	MaxTenantLabels int

	// Version is reported as pgcloak_build_info{version}.
	Version string
}

// Metrics is one process's set of pgcloak metrics with its own registry.
// It implements proxy.Observer. All methods are safe for concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	tenants *boundedLabels
	columns *boundedLabels

	sessionsActive      *prometheus.GaugeVec
	sessionsTotal       *prometheus.CounterVec
	statementsRewritten prometheus.Counter
	statementsRefused   *prometheus.CounterVec
	decryptFailures     *prometheus.CounterVec
	keyUnwraps          *prometheus.CounterVec
	keysGenerated       *prometheus.CounterVec
	providerCalls       *prometheus.CounterVec
	providerErrors      *prometheus.CounterVec
	providerDuration    *prometheus.HistogramVec
	cache               *cacheCollector
}

// New returns a Metrics with every metric registered on a fresh registry,
// along with the Go runtime and process collectors.
func New(opts Options) *Metrics {
	m := &Metrics{
		reg:     prometheus.NewRegistry(),
		tenants: newBoundedLabels(opts.MaxTenantLabels),
		columns: newBoundedLabels(maxDecryptLabels),

		sessionsActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgcloak_sessions_active",
			Help: "Client sessions now open, by tenant (\"unscoped\" without one, \"other\" past admin.max_tenant_labels).",
		}, []string{"tenant"}),
		sessionsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgcloak_sessions_total",
			Help: "Client sessions started, by tenant (\"unscoped\" without one, \"other\" past admin.max_tenant_labels).",
		}, []string{"tenant"}),
		statementsRewritten: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgcloak_statements_rewritten_total",
			Help: "Statements the proxy rewrote (encrypted writes, blind-index predicates) before forwarding them.",
		}),
		statementsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgcloak_statements_refused_total",
			Help: "Statements and messages the proxy refused with an ErrorResponse of its own, by SQLSTATE.",
		}, []string{"sqlstate"}),
		decryptFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgcloak_decrypt_failures_total",
			Help: "Values of declared columns that could not be decrypted for the session's tenant.",
		}, []string{"table", "column"}),
		keyUnwraps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgcloak_key_unwraps_total",
			Help: "Stored data keys the key cache unwrapped through the key provider, by purpose.",
		}, []string{"purpose"}),
		keysGenerated: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgcloak_keys_generated_total",
			Help: "Data keys the key cache generated as a tenant's first version, by purpose.",
		}, []string{"purpose"}),
		providerCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgcloak_key_provider_calls_total",
			Help: "Calls to the key provider (AWS KMS or the local master key), by operation.",
		}, []string{"operation"}),
		providerErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgcloak_key_provider_errors_total",
			Help: "Key provider calls that returned an error, by operation.",
		}, []string{"operation"}),
		providerDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pgcloak_key_provider_call_duration_seconds",
			Help:    "Time a key provider call took, errors included, by operation.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"operation"}),
		cache: newCacheCollector(),
	}
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pgcloak_build_info",
		Help: "Always 1; the version label is the running pgcloak's.",
	}, []string{"version"})
	buildInfo.WithLabelValues(safeLabel(opts.Version)).Set(1)

	m.reg.MustRegister(
		buildInfo,
		m.sessionsActive, m.sessionsTotal,
		m.statementsRewritten, m.statementsRefused, m.decryptFailures,
		m.keyUnwraps, m.keysGenerated,
		m.providerCalls, m.providerErrors, m.providerDuration,
		m.cache,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)

	// Series that exist from the start, so that dashboards and rate()
	// see zeros rather than nothing.
	for _, op := range []string{OpWrap, OpUnwrap, OpGenerateDataKey} {
		m.providerCalls.WithLabelValues(op)
		m.providerErrors.WithLabelValues(op)
	}
	for _, p := range []crypto.Purpose{crypto.PurposeData, crypto.PurposeIndex} {
		m.keyUnwraps.WithLabelValues(string(p))
		m.keysGenerated.WithLabelValues(string(p))
	}
	return m
}

// Registry returns the registry every metric of m is registered on.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus exposition format, for
// /metrics. It also counts its own scrapes
// (promhttp_metric_handler_requests_total).
func (m *Metrics) Handler() http.Handler {
	return promhttp.InstrumentMetricHandler(m.reg, promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		Registry:            m.reg,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	}))
}

// SessionStarted counts a session of tenant ("" when unscoped). It is
// proxy.Observer's.
func (m *Metrics) SessionStarted(tenant string) {
	l := m.tenantLabel(tenant)
	m.sessionsActive.WithLabelValues(l).Inc()
	m.sessionsTotal.WithLabelValues(l).Inc()
}

// SessionEnded counts the end of a session SessionStarted counted, with the
// same tenant. A tenant's label never changes once given, so the gauge
// goes down on the series it went up on.
func (m *Metrics) SessionEnded(tenant string) {
	m.sessionsActive.WithLabelValues(m.tenantLabel(tenant)).Dec()
}

// StatementRewritten counts a statement the proxy rewrote.
func (m *Metrics) StatementRewritten() { m.statementsRewritten.Inc() }

// StatementRefused counts a statement the proxy refused with sqlstate.
func (m *Metrics) StatementRefused(sqlstate string) {
	if !validSQLState(sqlstate) {
		sqlstate = LabelOther
	}
	m.statementsRefused.WithLabelValues(sqlstate).Inc()
}

// DecryptFailed counts a value of table ("schema.table") and column that
// could not be decrypted.
func (m *Metrics) DecryptFailed(table, column string) {
	if !isName(table) || !isName(column) || m.columns.label(table+"\x00"+column) == LabelOther {
		table, column = LabelOther, LabelOther
	}
	m.decryptFailures.WithLabelValues(table, column).Inc()
}

// KeyLoaded counts a key the data-key cache obtained through the provider:
// an unwrap, or a generated first version. Call it from
// crypto.CacheOptions.OnKeyLoad (beside the audit log's hook).
func (m *Metrics) KeyLoaded(ev crypto.KeyEvent) {
	purpose := string(ev.ID.Purpose)
	if !ev.ID.Purpose.Valid() {
		purpose = LabelOther
	}
	if ev.Created {
		m.keysGenerated.WithLabelValues(purpose).Inc()
	} else {
		m.keyUnwraps.WithLabelValues(purpose).Inc()
	}
}

// CacheStatser is what ObserveKeyCache reads; *crypto.KeyCache is one.
type CacheStatser interface {
	Stats() crypto.CacheStats
}

// ObserveKeyCache makes the pgcloak_key_cache_* metrics report c's
// counters, read at every scrape. Until it is called (and after it is
// called with nil) they report zero. A later call replaces the cache
// observed, e.g. after a reload builds a new one.
func (m *Metrics) ObserveKeyCache(c CacheStatser) {
	if c == nil {
		m.cache.src.Store(nil)
		return
	}
	m.cache.src.Store(&c)
}

func (m *Metrics) tenantLabel(tenant string) string {
	switch {
	case tenant == "":
		return LabelUnscoped
	case !isName(tenant):
		return LabelOther
	}
	return m.tenants.label(tenant)
}

// boundedLabels hands out label values for at most max distinct inputs;
// any other input is LabelOther. Inputs are remembered for the life of the
// process, so one input always gets the same label. Callers check that an
// input may be a label value (isName) first.
type boundedLabels struct {
	max  int
	mu   sync.Mutex
	seen map[string]struct{}
}

func newBoundedLabels(max int) *boundedLabels {
	return &boundedLabels{max: max, seen: make(map[string]struct{})}
}

func (b *boundedLabels) label(v string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.seen[v]; ok {
		return v
	}
	if len(b.seen) >= b.max {
		return LabelOther
	}
	b.seen[v] = struct{}{}
	return v
}

// isName reports whether s may be a label value as it is: Prometheus
// requires valid UTF-8, and we keep names short.
func isName(s string) bool {
	return len(s) <= maxLabelLen && utf8.ValidString(s)
}

// safeLabel returns s, or LabelOther when s may not be a label value.
func safeLabel(s string) string {
	if !isName(s) {
		return LabelOther
	}
	return s
}

// validSQLState reports whether s looks like a SQLSTATE: five digits or
// upper-case letters (PostgreSQL docs, Appendix A).
func validSQLState(s string) bool {
	if len(s) != 5 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'A' <= c && c <= 'Z') {
			return false
		}
	}
	return true
}

// cacheCollector reports a KeyCache's counters at scrape time. The cache
// keeps its own counters (crypto.CacheStats), so they are read, not
// mirrored.
type cacheCollector struct {
	src atomic.Pointer[CacheStatser]

	hits, misses, evictions, purged, entries *prometheus.Desc
}

func newCacheCollector() *cacheCollector {
	return &cacheCollector{
		hits: prometheus.NewDesc("pgcloak_key_cache_hits_total",
			"Data-key lookups answered from the cache.", nil, nil),
		misses: prometheus.NewDesc("pgcloak_key_cache_misses_total",
			"Data-key lookups that had to load the key (or wait for a load).", nil, nil),
		evictions: prometheus.NewDesc("pgcloak_key_cache_evictions_total",
			"Cached data keys removed because they expired (keys.cache_ttl) or to make room (keys.cache_max_entries).", nil, nil),
		purged: prometheus.NewDesc("pgcloak_key_cache_purged_total",
			"Cached data keys removed by a purge (shred, rotation notice, shutdown).", nil, nil),
		entries: prometheus.NewDesc("pgcloak_key_cache_entries",
			"Data keys (and remembered missing keys) now cached.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *cacheCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.hits
	ch <- c.misses
	ch <- c.evictions
	ch <- c.purged
	ch <- c.entries
}

// Collect implements prometheus.Collector.
func (c *cacheCollector) Collect(ch chan<- prometheus.Metric) {
	var s crypto.CacheStats
	if p := c.src.Load(); p != nil {
		s = (*p).Stats()
	}
	ch <- prometheus.MustNewConstMetric(c.hits, prometheus.CounterValue, float64(s.Hits))
	ch <- prometheus.MustNewConstMetric(c.misses, prometheus.CounterValue, float64(s.Misses))
	ch <- prometheus.MustNewConstMetric(c.evictions, prometheus.CounterValue, float64(s.Evictions))
	ch <- prometheus.MustNewConstMetric(c.purged, prometheus.CounterValue, float64(s.Purged))
	ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(s.Entries))
}

// InstrumentProvider returns p with every call counted and timed under
// pgcloak_key_provider_*. The result also has Ping(ctx) error: p's own
// Ping when it has one (counted as "ping"), else nil at once; a local
// master key is always ready. It has none of p's other optional methods.
//
// Wrapping an instrumented provider again returns it unchanged.
func (m *Metrics) InstrumentProvider(p crypto.Provider) crypto.Provider {
	if ip, ok := p.(*instrumentedProvider); ok && ip.m == m {
		return p
	}
	return &instrumentedProvider{p: p, m: m}
}

// instrumentedProvider is InstrumentProvider's decorator.
type instrumentedProvider struct {
	p crypto.Provider
	m *Metrics
}

// observe counts one call of op that started at start and ended with err.
func (ip *instrumentedProvider) observe(op string, start time.Time, err error) {
	ip.m.providerCalls.WithLabelValues(op).Inc()
	ip.m.providerDuration.WithLabelValues(op).Observe(time.Since(start).Seconds())
	// The error series exists once the call series does, so that error
	// ratios are 0, not missing.
	errs := ip.m.providerErrors.WithLabelValues(op)
	if err != nil {
		errs.Inc()
	}
}

// Wrap implements crypto.Provider.
func (ip *instrumentedProvider) Wrap(ctx context.Context, kc crypto.KeyContext, plaintextKey []byte) ([]byte, string, error) {
	start := time.Now()
	wrapped, kekID, err := ip.p.Wrap(ctx, kc, plaintextKey)
	ip.observe(OpWrap, start, err)
	return wrapped, kekID, err
}

// Unwrap implements crypto.Provider.
func (ip *instrumentedProvider) Unwrap(ctx context.Context, kc crypto.KeyContext, wrapped []byte) ([]byte, error) {
	start := time.Now()
	key, err := ip.p.Unwrap(ctx, kc, wrapped)
	ip.observe(OpUnwrap, start, err)
	return key, err
}

// GenerateDataKey implements crypto.Provider.
func (ip *instrumentedProvider) GenerateDataKey(ctx context.Context, kc crypto.KeyContext) ([]byte, []byte, string, error) {
	start := time.Now()
	plaintext, wrapped, kekID, err := ip.p.GenerateDataKey(ctx, kc)
	ip.observe(OpGenerateDataKey, start, err)
	return plaintext, wrapped, kekID, err
}

// Ping checks that the provider answers, when it can tell: the wrapped
// provider's Ping, or nil for one without (a local master key).
func (ip *instrumentedProvider) Ping(ctx context.Context) error {
	pinger, ok := ip.p.(interface{ Ping(context.Context) error })
	if !ok {
		return nil
	}
	start := time.Now()
	err := pinger.Ping(ctx)
	ip.observe(OpPing, start, err)
	return err
}
