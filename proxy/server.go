package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pgcloak/pgcloak/audit"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/keystore"
	"github.com/pgcloak/pgcloak/rewrite"
	"github.com/rs/zerolog"
)

// Config is the part of the pgcloak configuration the proxy needs.
type Config struct {
	Listen   config.Listen
	Upstream config.Upstream
	Tenancy  config.Tenancy
	Encrypt  config.Encrypt
}

// ConfigFrom picks the proxy's part out of a loaded configuration.
func ConfigFrom(c *config.Config) Config {
	return Config{Listen: c.Listen, Upstream: c.Upstream, Tenancy: c.Tenancy, Encrypt: c.Encrypt}
}

// Deps are the shared parts a Server uses and does not own.
type Deps struct {
	// Pool connects upstream as upstream.user, for catalog lookups.
	// Required when tables are declared.
	Pool *pgxpool.Pool
	// Keys encrypts, indexes and decrypts. Required when tables are declared.
	Keys Keys
	// Audit receives audit events; nil discards them.
	Audit *audit.Logger
	// Observer counts sessions, rewrites, refusals and decrypt failures
	// (package metrics); nil counts nothing.
	Observer Observer
	// Pinner makes the MACs pgcloak.pin() verifies (keystore.EnsurePin).
	// Without it a session's tenant is pinned as the bare setting only,
	// and pgcloak.current_tenant() is NULL in every session.
	Pinner *keystore.Pinner
	// Tokens verifies the tenant tokens of token roles (tenancy.token_roles).
	// Without it a token is refused.
	Tokens TokenVerifier
}

// planCacheSize bounds the statement analyses kept per configuration.
const planCacheSize = 4096

// Server accepts client connections and runs a session for each.
//
// Serve may be called for several listeners; Shutdown and Close stop all of
// them. A Server must not be copied after first use.
type Server struct {
	cfg         Config
	log         zerolog.Logger
	clientTLS   *tls.Config // nil: SSLRequest is answered 'N'
	listenCert  []byte      // DER of the certificate clientTLS presents
	upstreamTLS *tls.Config // nil: upstream sslmode disable
	// clientCerts is upstreamTLS presenting each upstream.client_certs
	// entry's certificate; see upstreamTLSFor.
	clientCerts map[config.ClientCert]*tls.Config
	// goroutineRelay keeps passthrough sessions off the relay loop
	// (PGCLOAK_RELAY=goroutines), for benchmarks that compare the two.
	goroutineRelay bool

	// decl is what Reload replaces: the declared tables and the tenancy.
	// A session keeps the declarations it started with.
	decl   atomic.Pointer[declarations]
	pool   *pgxpool.Pool
	keys   Keys
	pinner *keystore.Pinner
	tokens TokenVerifier
	audit  auditor

	nextID atomic.Uint64

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	sessions  map[*session]struct{}
	cancels   map[cancelKey]*session
	closing   bool
	wg        sync.WaitGroup // one per connection being served
}

// NewServer validates what it can without touching the network (TLS files)
// and returns a Server ready to Serve.
func NewServer(cfg Config, log zerolog.Logger, deps Deps) (*Server, error) {
	if cfg.Listen.MaxMessageSize <= 0 {
		cfg.Listen.MaxMessageSize = config.DefaultMaxMessageSize
	}
	if cfg.Upstream.ConnectTimeout <= 0 {
		cfg.Upstream.ConnectTimeout = config.DefaultConnectTimeout
	}
	s := &Server{
		cfg:       cfg,
		log:       log,
		listeners: make(map[net.Listener]struct{}),
		sessions:  make(map[*session]struct{}),
		cancels:   make(map[cancelKey]*session),
		audit:     auditor{l: deps.Audit, obs: observerOr(deps.Observer)},
	}
	s.pool, s.keys, s.pinner, s.tokens = deps.Pool, deps.Keys, deps.Pinner, deps.Tokens
	if s.tokens == nil {
		s.tokens = noTokens{}
	}
	s.goroutineRelay = os.Getenv("PGCLOAK_RELAY") == "goroutines"
	d, err := s.newDeclarations(cfg.Tenancy, cfg.Encrypt)
	if err != nil {
		return nil, err
	}
	s.decl.Store(d)
	if t := cfg.Listen.TLS; t != nil {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("listen.tls: %w", err)
		}
		s.clientTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		s.listenCert = cert.Certificate[0]
		if t.ClientCAFile != "" {
			// As PostgreSQL with ssl_ca_file: ask for a certificate, fail
			// the handshake when one is given and does not verify.
			if s.clientTLS.ClientCAs, err = LoadCertPool("listen.tls.client_ca_file", t.ClientCAFile); err != nil {
				return nil, err
			}
			s.clientTLS.ClientAuth = tls.VerifyClientCertIfGiven
		}
	}
	upTLS, err := UpstreamTLSConfig(cfg.Upstream)
	if err != nil {
		return nil, err
	}
	s.upstreamTLS = upTLS
	if len(cfg.Upstream.ClientCerts) > 0 {
		if upTLS == nil {
			return nil, errors.New("upstream.client_certs needs TLS upstream, but sslmode is disable")
		}
		s.clientCerts = make(map[config.ClientCert]*tls.Config, len(cfg.Upstream.ClientCerts))
		for i, c := range cfg.Upstream.ClientCerts {
			cert, err := LoadClientCert(i, c)
			if err != nil {
				return nil, err
			}
			tc := upTLS.Clone()
			tc.Certificates = []tls.Certificate{cert}
			s.clientCerts[c] = tc
		}
	}
	return s, nil
}

// upstreamTLSFor is the TLS configuration of a session's upstream
// connection, nil for plain TCP. clientTLS says whether the client uses TLS,
// which sslmode follow follows. certName is the common name of the
// certificate the client logged in to pgcloak with, verified against
// listen.tls.client_ca_file, or "". When it is the very role the client asks
// for (what PostgreSQL's cert method checks) and upstream.client_certs has
// an entry for that role, pgcloak presents that entry's certificate
// upstream; a certificate for another role gets nothing presented, so
// PostgreSQL refuses a cert login as it would have refused the client's.
func (s *Server) upstreamTLSFor(clientTLS bool, user, certName string) *tls.Config {
	if s.upstreamTLS == nil || s.cfg.Upstream.SSLMode == config.SSLFollow && !clientTLS {
		return nil
	}
	if certName != "" && certName == user {
		if c, ok := s.cfg.Upstream.ClientCertFor(user); ok {
			if tc := s.clientCerts[c]; tc != nil {
				return tc
			}
		}
	}
	return s.upstreamTLS
}

// LoadClientCert loads entry i of upstream.client_certs.
func LoadClientCert(i int, c config.ClientCert) (tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return cert, fmt.Errorf("upstream.client_certs[%d] (%s, %s): %w", i, c.CertFile, c.KeyFile, err)
	}
	return cert, nil
}

// LoadCertPool reads the PEM certificates of file; key is the
// configuration key that names it, for the error.
func LoadCertPool(key, file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s %s: no PEM certificates found", key, file)
	}
	return pool, nil
}

// declarations are the parts of the configuration that Reload replaces:
// the tenancy and the declared tables, with what is derived from them.
type declarations struct {
	tenancyCfg config.Tenancy
	encrypt    config.Encrypt
	// tenancy is on when the configuration maps roles or declares tables;
	// without it pgcloak is a pure passthrough proxy.
	tenancy bool
	schema  *rewrite.Schema // nil when tenancy is off
	plans   *rewrite.Cache
	catalog *catalog // nil without declared tables
	// views show tenant sessions the declared schema in the catalog; nil
	// without declared tables.
	views *catalogViews
}

func (s *Server) newDeclarations(t config.Tenancy, enc config.Encrypt) (*declarations, error) {
	if t.Setting == "" {
		t.Setting = config.DefaultTenantSetting
	}
	d := &declarations{tenancyCfg: t, encrypt: enc}
	// Token roles and mode jwt are tenancy too, with or without declared
	// tables: their sessions get a tenant by token, and their SQL the
	// checks of any tenant session.
	d.tenancy = len(t.Login.Roles) > 0 || len(t.UnscopedRoles) > 0 || len(t.TokenRoles) > 0 ||
		t.Mode == config.ModeJWT || len(enc.Tables) > 0
	if d.tenancy {
		d.schema = rewrite.NewSchema(enc, t.Setting)
		d.plans = rewrite.NewCache(planCacheSize)
	}
	if len(enc.Tables) > 0 {
		if s.pool == nil || s.keys == nil {
			return nil, errors.New("proxy: declared tables need an upstream pool and a key layer")
		}
		d.catalog = newCatalog(s.pool, enc)
		d.views = newCatalogViews(s.pool, enc)
	}
	return d, nil
}

// Reload replaces the tenancy and the declared tables (SIGHUP). Sessions
// that are open keep the declarations they started with; new sessions use
// these. Listen, upstream and keys settings are not reloaded. Declaring
// tables for the first time needs a server built with a pool and a key
// layer (a restart when it started without tables).
func (s *Server) Reload(ctx context.Context, t config.Tenancy, enc config.Encrypt) error {
	d, err := s.newDeclarations(t, enc)
	if err != nil {
		return err
	}
	if d.catalog != nil {
		if err := d.catalog.load(ctx); err != nil {
			s.log.Warn().Err(err).Msg("reload: could not read the declared tables from the catalog; lookups fill it on demand")
		}
	}
	s.decl.Store(d)
	return nil
}

// UpstreamTLSConfig is the TLS configuration upstream.sslmode asks for:
// nil for disable, encryption without verification for require (as libpq's
// sslmode=require), and certificate and host name verification against
// root_cert_file for verify-full. Every upstream connection pgcloak makes
// uses it, the client sessions' and its own.
func UpstreamTLSConfig(u config.Upstream) (*tls.Config, error) {
	host, _, err := net.SplitHostPort(u.Address)
	if err != nil {
		return nil, fmt.Errorf("upstream.address: %w", err)
	}
	switch u.SSLMode {
	case config.SSLRequire, config.SSLFollow:
		// Like libpq's sslmode=require: encrypt, do not verify.
		return &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}, nil
	case config.SSLVerifyFull:
		pool, err := LoadCertPool("upstream.root_cert_file", u.RootCertFile)
		if err != nil {
			return nil, err
		}
		return &tls.Config{RootCAs: pool, ServerName: host, MinVersion: tls.VersionTLS12}, nil
	default:
		return nil, nil
	}
}

// LoadCatalog reads the declared tables' OIDs and attribute numbers from
// upstream. Serve works without it (the catalog fills itself on demand), but
// calling it at start surfaces connectivity problems early.
func (s *Server) LoadCatalog(ctx context.Context) error {
	c := s.decl.Load().catalog
	if c == nil {
		return nil
	}
	return c.load(ctx)
}

// RefreshCatalog forgets the declared tables' OIDs and attribute numbers
// and reads them again, for SIGHUP: a column added or renumbered since start
// is then decrypted. Sessions keep working meanwhile; a lookup racing the
// refresh reads pg_catalog itself.
func (s *Server) RefreshCatalog(ctx context.Context) error {
	c := s.decl.Load().catalog
	if c == nil {
		return nil
	}
	c.reset()
	return c.load(ctx)
}

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("pgcloak: server closed")

// Serve accepts connections on ln until Shutdown or Close, running each
// session in its own goroutine. It closes ln before returning.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()

	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn().Err(err).Dur("retry_in", backoff).Msg("accept")
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			conn.Close()
			return ErrServerClosed
		}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(conn)
	}
}

// serveConn runs one client connection to its end. A panic ends this
// connection only.
func (s *Server) serveConn(conn net.Conn) {
	defer s.wg.Done()
	id := s.nextID.Add(1)
	log := s.log.With().Uint64("session", id).Logger()
	defer func() {
		if r := recover(); r != nil {
			log.Error().Interface("panic", r).Str("stack", stack()).Msg("session panicked; connection closed")
			conn.Close()
		}
	}()
	sess := newSession(s, id, conn, log)
	sess.run()
}

// register makes a session visible to Shutdown and to CancelRequests. It
// reports false when the server is shutting down.
func (s *Server) register(sess *session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.sessions[sess] = struct{}{}
	return true
}

func (s *Server) unregister(sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.sessions, sess)
	if sess.cancelKey != (cancelKey{}) {
		delete(s.cancels, sess.cancelKey)
	}
}

// Shutdown stops accepting connections, lets live sessions finish until ctx
// is done, then closes the rest and waits for them to end. It returns
// ctx.Err() when sessions had to be closed.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.closeSessions()
		<-done
		return ctx.Err()
	}
}

// Close stops accepting and closes every session at once.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closing = true
	for ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()
	s.closeSessions()
	s.wg.Wait()
	return nil
}

func (s *Server) closeSessions() {
	s.mu.Lock()
	live := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		live = append(live, sess)
	}
	s.mu.Unlock()
	for _, sess := range live {
		sess.close()
	}
}

// ActiveSessions returns the number of sessions past startup.
func (s *Server) ActiveSessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}
