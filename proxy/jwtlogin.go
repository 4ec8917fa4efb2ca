package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgcloak/pgcloak/keystore"
)

// Tenancy mode jwt (SPEC §5.1): the proxy authenticates the client itself.
// The client's password is a tenant token, asked for with the cleartext
// exchange only over TLS or from loopback; the tenant is its claim.
// Upstream the proxy logs in as tenancy.jwt.upstream_user (pgconn does the
// authentication, whatever method pg_hba asks), then pins the tenant as a
// session-level token before the client's first ReadyForQuery. The session
// is then a token session: it may switch tenant with tokens.

// startupJWT authenticates a client of mode jwt and opens its upstream
// session. params are the client's startup parameters (user, database and
// settings).
func (s *session) startupJWT(params map[string]string) (bool, error) {
	t := s.decl.tenancyCfg
	if err := checkStartupParameters(t, params); err != nil {
		s.srv.audit.tenantChangeRefused(s, "startup parameter")
		return false, err
	}
	if err := checkLexerParameters(params); err != nil {
		return false, err
	}
	if !s.clientTLS && !loopbackPeer(s.client.RemoteAddr()) {
		s.srv.audit.l.AuthRefused(s.auditIdentity(), pgerrcode.InvalidAuthorizationSpecification, "tenant token over plaintext from a remote client")
		return false, &clientError{code: pgerrcode.InvalidAuthorizationSpecification, fatal: true,
			msg: "tenancy mode jwt takes the token as a password only over TLS or from loopback; connect with sslmode=require"}
	}
	if err := s.sendClient(&pgproto3.AuthenticationCleartextPassword{}); err != nil {
		return false, err
	}
	if err := s.flushClient(); err != nil {
		return false, err
	}
	s.clientIn.SetAuthType(pgproto3.AuthTypeCleartextPassword)
	msg, err := s.clientIn.Receive()
	if err != nil {
		return false, &clientGone{err}
	}
	pw, ok := msg.(*pgproto3.PasswordMessage)
	if !ok {
		return false, protocolViolation("expected a password message, got %T", msg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.srv.cfg.Upstream.ConnectTimeout)
	defer cancel()
	claims, err := s.srv.tokens.VerifyToken(ctx, pw.Password)
	if err != nil {
		reason := trimRefusal(err)
		s.srv.audit.l.TenantTokenRefused(s.auditIdentity(), reason)
		s.log.Info().Str("reason", reason).Msg("tenant token refused at login")
		// PostgreSQL's own shape for a failed password.
		return false, &clientError{code: pgerrcode.InvalidPassword, fatal: true,
			msg: fmt.Sprintf("password authentication failed for user %q", s.user)}
	}
	id := s.auditIdentity()
	id.Tenant = claims.Tenant
	s.srv.audit.l.TenantTokenAccepted(id, claims.Subject, claims.ID, claims.Expiry, false)

	proof, err := keystore.NewProof(claims.Expiry.Unix())
	if err != nil {
		return false, err
	}
	// As startup parameters, the login tenant and its proof are what
	// RESET ALL and DISCARD ALL restore (the marker is pinned again).
	params[t.Setting], params[keystore.ProofSetting] = claims.Tenant, proof
	hc, err := s.connectJWTUpstream(ctx, params)
	if err != nil {
		return false, err
	}
	s.upstream = hc.Conn
	s.upstreamRd = &flushingReader{r: hc.Conn}
	s.upstreamIn = pgproto3.NewFrontend(bufio.NewReaderSize(s.upstreamRd, upstreamReadBuffer), nil)
	s.upstreamIn.SetMaxBodyLen(s.srv.cfg.Listen.MaxMessageSize)
	s.upstreamOut = newOutbox(hc.Conn)
	s.upstreamPID, s.upstreamSecret = hc.PID, hc.SecretKey

	// A token session, pinned to the login token's tenant.
	s.scoped, s.tokens, s.lexGuard = true, true, true
	s.tracks = s.decl.catalog != nil
	s.decrypts = s.tracks
	s.statements = make(map[string]*preparedStatement)
	s.stmtGen = make(map[string]uint64)
	s.unshaped = make(map[string]bool)
	s.results = resultState{portals: make(map[string]*portal)}
	s.log = s.log.With().Str("tenant", claims.Tenant).Logger()

	if err := s.sendClient(&pgproto3.AuthenticationOk{}); err != nil {
		return false, err
	}
	for k, v := range hc.ParameterStatuses {
		ps := &pgproto3.ParameterStatus{Name: k, Value: v}
		s.noteParameterStatus(ps)
		if err := s.sendClient(ps); err != nil {
			return false, err
		}
	}
	s.cancelKey = s.srv.issueCancelKey(s, hc.PID)
	k := s.cancelKey.secret
	if err := s.sendClient(&pgproto3.BackendKeyData{ProcessID: hc.PID, SecretKey: []byte{byte(k >> 24), byte(k >> 16), byte(k >> 8), byte(k)}}); err != nil {
		return false, err
	}
	if err := s.startTokens(); err != nil {
		return false, err
	}
	if err := s.pinLoginToken(claims, proof); err != nil {
		return false, err
	}
	if err := s.sendClient(&pgproto3.ReadyForQuery{TxStatus: 'I'}); err != nil {
		return false, err
	}
	if err := s.flushClient(); err != nil {
		return false, err
	}
	s.client.SetDeadline(time.Time{})
	s.upstream.SetDeadline(time.Time{})
	return true, nil
}

// pinLoginToken pins the login token's tenant as the session's token.
func (s *session) pinLoginToken(claims TokenClaims, proof string) error {
	args := s.nextPinArgs(claims.Tenant, proof, false)
	if _, err := s.internalQuery(keystore.NextStatement(false, s.tok.quotedAlias()), args...); err != nil {
		return err
	}
	s.tenant, s.tok.session, s.tok.proof = claims.Tenant, claims.Tenant, proof
	s.tok.base, s.tok.baseProof = claims.Tenant, proof
	s.tokUp.session = claims.Tenant
	s.results.tenant = claims.Tenant
	return nil
}

// connectJWTUpstream logs in upstream as tenancy.jwt.upstream_user, with
// the client's database and settings, over a connection dialled (and TLS
// negotiated) as for any session. Nothing comes from PG* environment
// variables.
func (s *session) connectJWTUpstream(ctx context.Context, params map[string]string) (*pgconn.HijackedConn, error) {
	j := s.decl.tenancyCfg.JWT
	cfg, err := pgconn.ParseConfig("sslmode=disable")
	if err != nil {
		return nil, err
	}
	host, port, _ := net.SplitHostPort(s.srv.cfg.Upstream.Address)
	p, _ := strconv.ParseUint(port, 10, 16)
	cfg.Host, cfg.Port = host, uint16(p)
	cfg.User, cfg.Password, cfg.Database = j.UpstreamUser, j.UpstreamPassword.Reveal(), s.database
	cfg.TLSConfig, cfg.Fallbacks = nil, nil
	cfg.ConnectTimeout = s.srv.cfg.Upstream.ConnectTimeout
	cfg.RuntimeParams = map[string]string{}
	for k, v := range params {
		if k != "user" && k != "database" {
			cfg.RuntimeParams[k] = v
		}
	}
	upTLS := s.srv.upstreamTLSFor(s.clientTLS, j.UpstreamUser, "")
	cfg.DialFunc = func(ctx context.Context, _, _ string) (net.Conn, error) { return s.srv.dialUpstream(ctx, upTLS) }
	cfg.LookupFunc = func(_ context.Context, host string) ([]string, error) { return []string{host}, nil }
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			// e.g. 3D000 database does not exist: the client's to see.
			return nil, &clientError{code: pe.Code, msg: pe.Message, fatal: true}
		}
		return nil, upstreamUnavailable(fmt.Errorf("logging in as tenancy.jwt.upstream_user: %w", err))
	}
	return conn.Hijack()
}

// loopbackPeer reports whether addr is a loopback address or a Unix socket.
func loopbackPeer(addr net.Addr) bool {
	switch a := addr.(type) {
	case *net.TCPAddr:
		return a.IP.IsLoopback()
	case *net.UnixAddr:
		return true
	}
	return false
}
