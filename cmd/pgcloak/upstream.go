package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pgcloak/pgcloak/audit"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/crypto"
	"github.com/pgcloak/pgcloak/keystore"
	"github.com/pgcloak/pgcloak/metrics"
	"github.com/pgcloak/pgcloak/proxy"
	"github.com/pgcloak/pgcloak/tenanttoken"
	"github.com/rs/zerolog"
)

// upstreamConnConfig builds a pgx configuration for upstream.user. TLS
// follows upstream.sslmode exactly as the proxy applies it: require
// encrypts without verifying, verify-full checks the chain against
// root_cert_file and the host name of upstream.address. Nothing is taken
// from PG* environment variables or a service file. appName becomes the
// session's application_name, so that DBAs can tell pgcloak's own
// sessions apart in pg_stat_activity.
func upstreamConnConfig(u config.Upstream, timeout time.Duration, appName string) (*pgx.ConnConfig, error) {
	host, portStr, err := net.SplitHostPort(u.Address)
	if err != nil {
		return nil, fmt.Errorf("upstream.address: %w", err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("upstream.address: bad port %q", portStr)
	}
	cc, err := pgx.ParseConfig("sslmode=disable")
	if err != nil {
		return nil, err
	}
	cc.Host = host
	cc.Port = uint16(port)
	cc.User = u.User
	cc.Password = u.Password.Reveal()
	cc.Database = u.Database
	cc.ConnectTimeout = timeout
	cc.Fallbacks = nil
	cc.RuntimeParams = map[string]string{"application_name": appName}

	tlsConfig, err := proxy.UpstreamTLSConfig(u)
	if err != nil {
		return nil, err
	}
	cc.TLSConfig = tlsConfig
	return cc, nil
}

// upstreamPoolMaxConns bounds the proxy's own upstream sessions (keystore
// and catalog lookups). Client sessions do not use the pool.
const upstreamPoolMaxConns = 4

// connectTimeout is upstream.connect_timeout, or its default.
func connectTimeout(u config.Upstream) time.Duration {
	if u.ConnectTimeout <= 0 {
		return defaultConnectTimeout
	}
	return u.ConnectTimeout
}

// upstreamPool returns a pool of at most maxConns upstream.user sessions
// named appName, configured as upstreamConnConfig says. It connects lazily.
func upstreamPool(u config.Upstream, appName string, maxConns int32) (*pgxpool.Pool, error) {
	cc, err := upstreamConnConfig(u, connectTimeout(u), appName)
	if err != nil {
		return nil, err
	}
	pc, err := pgxpool.ParseConfig("")
	if err != nil {
		return nil, err
	}
	pc.ConnConfig = cc
	pc.MaxConns = maxConns
	pc.MinConns = 0
	return pgxpool.NewWithConfig(context.Background(), pc)
}

// openKeyStore opens the key store over pool, creating its schema when it
// is missing, within upstream.connect_timeout.
func openKeyStore(ctx context.Context, u config.Upstream, pool *pgxpool.Pool) (*keystore.Store, error) {
	kctx, cancel := context.WithTimeout(ctx, connectTimeout(u))
	defer cancel()
	store, err := keystore.Open(kctx, pool)
	if err != nil {
		return nil, redact(fmt.Errorf("key store (upstream %s as %s): %w", u.Address, u.User, err), u.Password)
	}
	return store, nil
}

// pinsTenants reports whether serve pins tenants and so needs the verified
// tenant pin: when a role maps to a tenant or tables are declared.
func pinsTenants(cfg *config.Config) bool {
	return len(cfg.Encrypt.Tables) > 0 || len(cfg.Tenancy.Login.Roles) > 0 || len(cfg.Tenancy.TokenRoles) > 0 ||
		cfg.Tenancy.Mode == config.ModeJWT
}

// tokenVerifier adapts tenanttoken.Verifier to the proxy's TokenVerifier.
type tokenVerifier struct{ v *tenanttoken.Verifier }

// VerifyTokenAtOnce verifies raw without waiting (no JWKS fetch), or says
// it cannot (ok false): the relay loop verifies tokens so.
func (t tokenVerifier) VerifyTokenAtOnce(raw string) (proxy.TokenClaims, error, bool) {
	c, err, ok := t.v.VerifyAtOnce(raw)
	return tokenClaims(c), err, ok
}

func (t tokenVerifier) VerifyToken(ctx context.Context, raw string) (proxy.TokenClaims, error) {
	c, err := t.v.Verify(ctx, raw)
	return tokenClaims(c), err
}

func tokenClaims(c tenanttoken.Claims) proxy.TokenClaims {
	return proxy.TokenClaims{Tenant: c.Tenant, Subject: c.Subject, ID: c.ID, Expiry: c.Expiry}
}

// openPinner installs the verified tenant pin (keystore.EnsurePin) as
// upstream.user, within upstream.connect_timeout.
func openPinner(ctx context.Context, cfg *config.Config, pool *pgxpool.Pool) (*keystore.Pinner, error) {
	u := cfg.Upstream
	kctx, cancel := context.WithTimeout(ctx, connectTimeout(u))
	defer cancel()
	pinner, err := keystore.EnsurePin(kctx, pool, cfg.Tenancy.Setting)
	if err != nil {
		return nil, redact(fmt.Errorf("verified tenant pin (upstream %s as %s): %w", u.Address, u.User, err), u.Password)
	}
	return pinner, nil
}

// auditKeyLoad is the KeyCache's OnKeyLoad for the audit log: key_created
// or key_unwrapped.
func auditKeyLoad(auditLog *audit.Logger) func(crypto.KeyEvent) {
	return func(ev crypto.KeyEvent) {
		if ev.Created {
			auditLog.KeyCreated(ev.ID.Tenant, ev.ID.KeyClass, string(ev.ID.Purpose), int(ev.ID.Version), ev.KEKID)
		} else {
			auditLog.KeyUnwrapped(ev.ID.Tenant, ev.ID.KeyClass, string(ev.ID.Purpose), int(ev.ID.Version), ev.KEKID)
		}
	}
}

// keyCacheOptions are the key cache options of serve and of the
// migrations: the keys section's cache size, TTL and encryption limit; each
// key load goes to observe (when not nil) and the audit stream; a rotation
// at the encryption limit goes to the audit stream and log.
func keyCacheOptions(k config.Keys, auditLog *audit.Logger, log zerolog.Logger, observe func(crypto.KeyEvent)) crypto.CacheOptions {
	audited := auditKeyLoad(auditLog)
	return crypto.CacheOptions{
		TTL:              k.CacheTTL,
		MaxEntries:       k.CacheMaxEntries,
		RotateAfterSeals: k.RotateAfterEncryptions,
		OnKeyLoad: func(ev crypto.KeyEvent) {
			if observe != nil {
				observe(ev)
			}
			audited(ev)
		},
		OnSealLimitRotate: sealLimitAudit(auditLog, log),
	}
}

// closers are the Close functions of what a command opened, in the order
// it opened them.
type closers []func() error

// close calls the Close functions, last opened first, and joins their
// errors. A second call does nothing.
func (c *closers) close() error {
	var errs []error
	for i := len(*c) - 1; i >= 0; i-- {
		errs = append(errs, (*c)[i]())
	}
	*c = nil
	return errors.Join(errs...)
}

// proxyRuntime is a proxy.Server with what it depends on: the upstream pool,
// the key cache and the audit stream. close releases them, last opened
// first, after the server has stopped.
type proxyRuntime struct {
	srv      *proxy.Server
	metrics  *metrics.Metrics
	pool     *pgxpool.Pool   // nil when serve pins no tenant (pinsTenants)
	provider crypto.Provider // nil without declared tables
	closers
}

// newProxyRuntime builds the server for cfg. With tables declared it
// connects upstream as upstream.user, creates the key store's schema when
// missing, loads the key provider and reads the declared tables from the
// catalog; a catalog failure is logged, not fatal (the catalog also fills
// itself on demand). Audit events go to audit.output; stdout and stderr are
// the command's streams. On error everything opened is closed again.
func newProxyRuntime(ctx context.Context, cfg *config.Config, log zerolog.Logger, stdout, stderr io.Writer) (_ *proxyRuntime, err error) {
	r := &proxyRuntime{}
	defer func() {
		if err != nil {
			r.close()
		}
	}()

	auditLog, auditCloser, err := audit.Open(cfg.Audit.Output, stdout, stderr)
	if err != nil {
		return nil, err
	}
	r.closers = append(r.closers, auditCloser.Close)
	r.metrics = metrics.New(metrics.Options{MaxTenantLabels: cfg.Admin.MaxTenantLabels, Version: version})
	deps := proxy.Deps{Audit: auditLog, Observer: r.metrics}

	if pinsTenants(cfg) {
		pool, err := upstreamPool(cfg.Upstream, "pgcloak", upstreamPoolMaxConns)
		if err != nil {
			return nil, err
		}
		r.closers = append(r.closers, func() error { pool.Close(); return nil })
		r.pool, deps.Pool = pool, pool
		pinner, err := openPinner(ctx, cfg, pool)
		if err != nil {
			return nil, err
		}
		r.closers = append(r.closers, func() error { pinner.Close(); return nil })
		deps.Pinner = pinner
	}
	if len(cfg.Tenancy.TokenRoles) > 0 || cfg.Tenancy.Mode == config.ModeJWT {
		v, err := tenanttoken.New(ctx, cfg.Tenancy.JWT)
		if err != nil {
			return nil, fmt.Errorf("tenancy.jwt: %w", err)
		}
		r.closers = append(r.closers, func() error { v.Close(); return nil })
		deps.Tokens = tokenVerifier{v}
	}
	if len(cfg.Encrypt.Tables) > 0 {
		provider, err := servingKeyProvider(ctx, cfg.Keys)
		if err != nil {
			return nil, err
		}
		provider = r.metrics.InstrumentProvider(provider)
		r.provider = provider
		store, err := openKeyStore(ctx, cfg.Upstream, r.pool)
		if err != nil {
			return nil, err
		}
		cache := crypto.NewKeyCache(store, provider, keyCacheOptions(cfg.Keys, auditLog, log, r.metrics.KeyLoaded))
		r.closers = append(r.closers, func() error { cache.Close(); return nil })
		r.metrics.ObserveKeyCache(cache)
		// Key events from other processes purge the cache; stopped before
		// the cache closes.
		stopKeyEvents, err := startKeyEvents(cfg.Upstream, cache, auditLog, log)
		if err != nil {
			return nil, err
		}
		r.closers = append(r.closers, stopKeyEvents)
		deps.Keys = proxy.CacheKeys{Cache: cache}
	}

	r.srv, err = proxy.NewServer(proxy.ConfigFrom(cfg), log, deps)
	if err != nil {
		return nil, err
	}
	if len(cfg.Encrypt.Tables) > 0 {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := r.srv.LoadCatalog(cctx); err != nil {
			log.Warn().Err(redact(err, cfg.Upstream.Password)).Msg("could not read the declared tables from the catalog; will retry when results name them")
		}
		cancel()
	}
	return r, nil
}
