package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/crypto"
	"github.com/pgcloak/pgcloak/metrics"
	"github.com/rs/zerolog"
	"golang.org/x/sync/singleflight"
)

// Timeouts of the admin listener.
const (
	// readyCheckTimeout bounds each /readyz check (upstream, key
	// provider); they run at once, so a probe answers within about this
	// long. Give the probe itself a longer timeout (Kubernetes
	// timeoutSeconds: 3).
	readyCheckTimeout = 2 * time.Second

	// adminStopTimeout is how long Stop lets requests in flight finish.
	adminStopTimeout = 5 * time.Second
)

// adminDeps is what the admin listener reports on. Every field may be nil.
type adminDeps struct {
	// Metrics is served on /metrics; nil leaves /metrics out (404).
	Metrics *metrics.Metrics

	// Pool is the proxy's own upstream pool; /readyz pings it. When nil (a
	// pure passthrough proxy has none) /readyz opens and closes one
	// upstream connection as upstream.user instead.
	Pool *pgxpool.Pool

	// Provider is the key provider; /readyz calls its
	// Ping(context.Context) error when it has one (the AWS KMS provider,
	// or one decorated by metrics.InstrumentProvider). A provider without
	// Ping - the local master key - and nil are always ready.
	Provider crypto.Provider
}

// adminServer serves /metrics, /healthz and /readyz on admin.address. Its
// methods may be called on a nil *adminServer (no admin.address), where
// they do nothing.
//
//   - /healthz is 200 while the process serves HTTP at all: liveness.
//   - /readyz is 200 when upstream answers and the key provider answers,
//     503 with a one-line plain-text reason otherwise, and 503 "draining"
//     once Drain was called: readiness, for a load balancer to stop
//     sending new clients to a replica that cannot serve them.
//
// Reasons never hold addresses, users, SQL or key ids; the full error goes
// to the log (password redacted), once per change of readiness.
type adminServer struct {
	srv  *http.Server
	ln   net.Listener
	base context.Context // startAdmin's ctx
	log  zerolog.Logger
	deps adminDeps
	up   config.Upstream

	served   chan struct{} // closed when Serve has returned
	stopOnce sync.Once
	draining atomic.Bool

	// checks makes concurrent probes share one round of checks.
	checks singleflight.Group
	// lastReason is the reason of the last round ("" when ready), for
	// logging changes only.
	mu         sync.Mutex
	lastReason *string
}

// startAdmin listens on cfg.Admin.Address and serves the admin endpoints
// until Stop. It returns nil, nil when no admin address is configured. ctx
// is the parent of every request's context; cancelling it cancels checks
// in flight but does not stop the server.
func startAdmin(ctx context.Context, cfg *config.Config, log zerolog.Logger, deps adminDeps) (*adminServer, error) {
	if cfg.Admin.Address == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", cfg.Admin.Address)
	if err != nil {
		return nil, err
	}
	a := &adminServer{
		ln:     ln,
		base:   ctx,
		log:    log.With().Str("component", "admin").Logger(),
		deps:   deps,
		up:     cfg.Upstream,
		served: make(chan struct{}),
	}

	mux := http.NewServeMux()
	if deps.Metrics != nil {
		mux.Handle("GET /metrics", deps.Metrics.Handler())
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		plain(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", a.readyz)

	a.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	go func() {
		defer close(a.served)
		if err := a.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error().Err(err).Msg("admin listener failed")
		}
	}()
	a.log.Info().Str("admin", ln.Addr().String()).Bool("metrics", deps.Metrics != nil).Msg("admin endpoints serving")
	return a, nil
}

// Addr returns the address the admin listener is bound to.
func (a *adminServer) Addr() net.Addr {
	if a == nil {
		return nil
	}
	return a.ln.Addr()
}

// Drain makes /readyz answer 503 "draining" from now on. serve calls it
// when shutdown begins, so that load balancers stop sending new clients
// while open sessions finish.
func (a *adminServer) Drain() {
	if a == nil {
		return
	}
	a.draining.Store(true)
}

// Stop closes the listener, lets requests in flight finish for a few
// seconds, and waits for the server to end. It may be called more than
// once.
func (a *adminServer) Stop() {
	if a == nil {
		return
	}
	a.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), adminStopTimeout)
		defer cancel()
		if err := a.srv.Shutdown(ctx); err != nil {
			a.srv.Close()
		}
		<-a.served
	})
}

func (a *adminServer) readyz(w http.ResponseWriter, r *http.Request) {
	if a.draining.Load() {
		plain(w, http.StatusServiceUnavailable, "draining")
		return
	}
	ch := a.checks.DoChan("ready", func() (any, error) {
		// Not under r's context: the round is shared by every probe
		// waiting for it, and one probe going away must not fail the rest.
		return a.ready(a.base), nil
	})
	select {
	case res := <-ch:
		if reason := res.Val.(string); reason != "" {
			plain(w, http.StatusServiceUnavailable, reason)
			return
		}
		plain(w, http.StatusOK, "ok")
	case <-r.Context().Done():
	}
}

// ready runs the readiness checks at once, each under readyCheckTimeout,
// and returns "" or the reasons for not being ready, one per failed check.
func (a *adminServer) ready(ctx context.Context) string {
	checks := []struct {
		what string
		fn   func(context.Context) error
	}{
		{"upstream", a.checkUpstream},
		{"key provider", a.checkProvider},
	}
	results := make([]checkResult, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, readyCheckTimeout)
			defer cancel()
			results[i] = checkResult{c.what, c.fn(cctx)}
		})
	}
	wg.Wait()

	var reasons []string
	for _, r := range results {
		if r.err != nil {
			reasons = append(reasons, r.what+": "+publicReason(r.err))
		}
	}
	reason := strings.Join(reasons, "; ")
	a.logChange(reason, results)
	return reason
}

// checkResult is how one readiness check ended.
type checkResult struct {
	what string // "upstream", "key provider"
	err  error
}

// logChange logs the checks' errors when readiness changes, so that a
// probe every few seconds does not repeat the same lines.
func (a *adminServer) logChange(reason string, results []checkResult) {
	a.mu.Lock()
	changed := a.lastReason == nil || *a.lastReason != reason
	a.lastReason = &reason
	a.mu.Unlock()
	if !changed {
		return
	}
	if reason == "" {
		a.log.Info().Msg("ready")
		return
	}
	for _, r := range results {
		if r.err != nil {
			a.log.Warn().Str("check", r.what).Err(redact(r.err, a.up.Password)).Msg("not ready")
		}
	}
}

// checkUpstream pings the pool, or, without one, connects upstream as
// upstream.user and disconnects. Without a pool the proxy needs no login
// of its own (clients authenticate themselves), so a server that answers
// the login with an authentication error or an unknown database still
// counts as up; one that is starting up, shutting down or full does not.
func (a *adminServer) checkUpstream(ctx context.Context) error {
	if a.deps.Pool != nil {
		return a.deps.Pool.Ping(ctx)
	}
	cc, err := upstreamConnConfig(a.up, readyCheckTimeout, "pgcloak-readyz")
	if err != nil {
		return err
	}
	conn, err := pgconn.ConnectConfig(ctx, &cc.Config)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && (pgerrcode.IsInvalidAuthorizationSpecification(pgErr.Code) || pgErr.Code == pgerrcode.InvalidPassword || pgErr.Code == pgerrcode.InvalidCatalogName) {
			return nil
		}
		return err
	}
	return conn.Close(ctx)
}

// checkProvider pings the key provider when it can be pinged.
func (a *adminServer) checkProvider(ctx context.Context) error {
	if p, ok := a.deps.Provider.(interface{ Ping(context.Context) error }); ok {
		return p.Ping(ctx)
	}
	return nil
}

// publicReason is what /readyz says about a failed check: a fixed phrase,
// plus the SQLSTATE when PostgreSQL refused. The error itself can name
// hosts, users and key ids, so it goes to the log only.
func publicReason(err error) string {
	var pgErr *pgconn.PgError
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "timed out"
	case errors.As(err, &pgErr):
		return "refused (SQLSTATE " + pgErr.Code + ")"
	}
	return "not reachable"
}

// plain writes a one-line text/plain response that no cache keeps.
func plain(w http.ResponseWriter, code int, body string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	w.Write([]byte(body + "\n"))
}
