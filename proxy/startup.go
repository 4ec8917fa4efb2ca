package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgcloak/pgcloak/config"
)

// startupTimeout bounds everything from accept to the first ReadyForQuery,
// like PostgreSQL's authentication_timeout (60s by default).
const startupTimeout = 60 * time.Second

// protocolOptionPrefix marks protocol extension options in a StartupMessage
// ("_pq_." in the PostgreSQL protocol docs, section 55.2.1). pgcloak
// recognises none of them.
const protocolOptionPrefix = "_pq_."

// startup takes a connection from its first byte to the client's first
// ReadyForQuery: SSL/GSS negotiation, the StartupMessage, the upstream
// connection and the relayed authentication. It reports false with a nil
// error when the connection ends normally before a session exists (a
// CancelRequest, a client that gave up, a failed login that PostgreSQL has
// already explained to the client).
func (s *session) startup() (bool, error) {
	s.client.SetDeadline(time.Now().Add(startupTimeout))
	defer s.early.discard()
	startup, err := s.receiveStartup()
	if err != nil || startup == nil {
		return false, err
	}
	if s.srv.clientTLS != nil && s.srv.cfg.Listen.TLS.Require && !s.clientTLS {
		return false, &clientError{
			code:  pgerrcode.InvalidAuthorizationSpecification,
			msg:   "TLS is required; connect with sslmode=require or stronger",
			fatal: true,
		}
	}
	s.user = startup.Parameters["user"]
	s.database = startup.Parameters["database"]
	if s.database == "" {
		s.database = s.user
	}
	s.log = s.log.With().Str("user", s.user).Str("database", s.database).Logger()

	// The proxy speaks 3.0 upstream. A client asking for a newer minor
	// version or for protocol options is answered the way PostgreSQL answers
	// it: NegotiateProtocolVersion with the newest minor version supported
	// and the options not recognised, sent before authentication.
	params := make(map[string]string, len(startup.Parameters))
	var unrecognized []string
	for k, v := range startup.Parameters {
		if strings.HasPrefix(k, protocolOptionPrefix) {
			unrecognized = append(unrecognized, k)
			continue
		}
		params[k] = v
	}
	if s.decl.tenancyCfg.Mode == config.ModeJWT {
		if u := s.srv.cfg.Upstream.User; u != "" && s.user == u {
			return false, &clientError{code: pgerrcode.InvalidAuthorizationSpecification, fatal: true,
				msg: fmt.Sprintf("role %q is the proxy's own upstream.user; no client session may run as it", s.user)}
		}
		if startup.ProtocolVersion != pgproto3.ProtocolVersion30 || len(unrecognized) > 0 {
			if err := s.sendClient(&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: unrecognized}); err != nil {
				return false, err
			}
		}
		return s.startupJWT(params)
	}
	if s.decl.tenancy {
		if err := s.applyTenancy(params); err != nil {
			return false, err
		}
		s.lexGuard = s.scoped || s.decl.catalog != nil
		if s.lexGuard {
			// Refused once PostgreSQL has authenticated the role: whether
			// a role is guarded depends on its tenant.
			s.loginErr = checkLexerParameters(params)
		}
		if u := s.srv.cfg.Upstream.User; u != "" && s.user == u {
			s.loginErr = &clientError{
				code:  pgerrcode.InvalidAuthorizationSpecification,
				msg:   fmt.Sprintf("role %q is the proxy's own upstream.user; no client session may run as it", s.user),
				fatal: true,
			}
		}
	}
	if startup.ProtocolVersion != pgproto3.ProtocolVersion30 || len(unrecognized) > 0 {
		if err := s.sendClient(&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: unrecognized}); err != nil {
			return false, err
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), s.srv.cfg.Upstream.ConnectTimeout)
	defer cancel()
	upTLS := s.srv.upstreamTLSFor(s.clientTLS, s.user, s.clientCertName)
	var up net.Conn
	if s.early != nil {
		if up, err = s.early.take(); err == nil {
			up, err = s.srv.upstreamHandshake(ctx, up, upTLS)
		}
	} else {
		up, err = s.srv.dialUpstream(ctx, upTLS)
	}
	if err != nil {
		return false, upstreamUnavailable(err)
	}
	s.upstream = up
	up.SetDeadline(time.Now().Add(startupTimeout))
	s.upstreamRd = &flushingReader{r: up}
	// Results can be large: read upstream in bigger chunks than
	// pgproto3's own 8 KiB, so a long result costs fewer reads (and fewer
	// flushes to the client, which happen before each read).
	s.upstreamIn = pgproto3.NewFrontend(bufio.NewReaderSize(s.upstreamRd, upstreamReadBuffer), nil)
	s.upstreamIn.SetMaxBodyLen(s.srv.cfg.Listen.MaxMessageSize)
	s.upstreamOut = newOutbox(up)
	if err := s.upstreamOut.send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: params}); err != nil {
		return false, err
	}
	if err := s.upstreamOut.flush(); err != nil {
		return false, upstreamUnavailable(err)
	}

	ok, err := s.relayAuthentication()
	if err != nil || !ok {
		return false, err
	}
	if err := s.relayUntilReady(); err != nil {
		return false, err
	}
	s.client.SetDeadline(time.Time{})
	s.upstream.SetDeadline(time.Time{})
	return true, nil
}

// receiveStartup reads the client's opening messages until the
// StartupMessage. It returns nil, nil when the connection was a
// CancelRequest.
func (s *session) receiveStartup() (*pgproto3.StartupMessage, error) {
	sslAsked, gssAsked := false, false
	for {
		msg, err := s.clientIn.ReceiveStartupMessage()
		if err != nil {
			if cerr := s.clientRd.connErr(); cerr != nil {
				return nil, cerr
			}
			return nil, protocolViolation("invalid startup packet: %v", err)
		}
		s.clientConsumed += wireLen(msg)
		switch msg.(type) {
		case *pgproto3.SSLRequest, *pgproto3.GSSEncRequest:
			if s.early == nil {
				s.early = s.srv.dialEarly()
			}
		}
		switch msg := msg.(type) {
		case *pgproto3.StartupMessage:
			return msg, nil
		case *pgproto3.CancelRequest:
			s.srv.forwardCancel(msg)
			return nil, nil
		case *pgproto3.GSSEncRequest:
			if gssAsked {
				return nil, protocolViolation("GSSENCRequest sent twice")
			}
			gssAsked = true
			if _, err := s.client.Write([]byte{'N'}); err != nil {
				return nil, err
			}
			// As PostgreSQL (ProcessStartupPacket in postmaster.c): bytes
			// that came with the request, before the client could have
			// read the answer, are refused whatever the answer was.
			if s.clientRd.n != s.clientConsumed {
				return nil, protocolViolation("received unencrypted data after GSSAPI encryption request")
			}
		case *pgproto3.SSLRequest:
			if sslAsked {
				return nil, protocolViolation("SSLRequest sent twice")
			}
			sslAsked = true
			if s.srv.clientTLS == nil {
				if _, err := s.client.Write([]byte{'N'}); err != nil {
					return nil, err
				}
				if s.clientRd.n != s.clientConsumed {
					return nil, protocolViolation("received unencrypted data after SSL request")
				}
				continue
			}
			// Anything read beyond the messages handled so far arrived
			// before the handshake and must not be processed as if it had
			// been encrypted (CVE-2021-23214).
			if s.clientRd.n != s.clientConsumed {
				return nil, protocolViolation("received unencrypted data after SSL request")
			}
			if _, err := s.client.Write([]byte{'S'}); err != nil {
				return nil, err
			}
			tconn := tls.Server(s.client, s.srv.clientTLS)
			if err := tconn.Handshake(); err != nil {
				s.log.Debug().Err(err).Msg("client TLS handshake failed")
				return nil, errDone
			}
			s.client = tconn
			s.clientTLS = true
			if st := tconn.ConnectionState(); len(st.VerifiedChains) > 0 {
				s.clientCertName = certCommonName(st.PeerCertificates[0])
			}
			s.clientRd = &flushingReader{r: tconn}
			s.clientConsumed = 0
			s.clientIn = pgproto3.NewBackend(s.clientRd, nil)
			s.clientIn.SetMaxBodyLen(s.srv.cfg.Listen.MaxMessageSize)
			s.clientOut = newOutbox(tconn)
		default:
			return nil, protocolViolation("unexpected startup message %T", msg)
		}
	}
}

// oidCommonName is the X.509 attribute type of a common name.
var oidCommonName = asn1.ObjectIdentifier{2, 5, 4, 3}

// certCommonName is the common name PostgreSQL's cert method would compare
// with the user name, or "" when pgcloak cannot be sure of it. Go's
// Subject.CommonName keeps the last of several common names, PostgreSQL the
// first, and Go decodes BMPString names that PostgreSQL compares as raw
// bytes; so a subject must hold exactly one common name, as UTF8String,
// PrintableString or IA5String, with no NUL byte.
func certCommonName(cert *x509.Certificate) string {
	type attribute struct {
		Type  asn1.ObjectIdentifier
		Value asn1.RawValue
	}
	type rdnSET []attribute // a type named ...SET is decoded as an ASN.1 SET
	var subject []rdnSET
	if rest, err := asn1.Unmarshal(cert.RawSubject, &subject); err != nil || len(rest) > 0 {
		return ""
	}
	var name []byte
	n := 0
	for _, rdn := range subject {
		for _, a := range rdn {
			if a.Type.Equal(oidCommonName) {
				name = a.Value.Bytes
				n++
				switch a.Value.Tag {
				case asn1.TagUTF8String, asn1.TagPrintableString, asn1.TagIA5String:
				default:
					return ""
				}
			}
		}
	}
	if n != 1 || bytes.IndexByte(name, 0) >= 0 || !utf8.Valid(name) {
		return ""
	}
	return string(name)
}

// wireLen is the length msg has on the wire, as pgproto3 encodes it: the
// length it arrived with unless the sender encoded it in some other valid
// way, in which case relayable sees a mismatch and the session stays on the
// goroutine relay. -1 when it cannot be encoded.
func wireLen(msg encoder) int64 {
	buf, err := msg.Encode(nil)
	if err != nil {
		return -1
	}
	return int64(len(buf))
}

// channelBindingPasses reports whether SCRAM channel binding
// (SCRAM-SHA-256-PLUS) can be relayed. The proxy terminates the client's
// TLS, and PostgreSQL checks the binding (tls-server-end-point: a hash of
// the server's certificate) against its own certificate. The client binds
// to the certificate pgcloak presents, so the two agree only when both
// sides use TLS and pgcloak presents the very certificate PostgreSQL
// presented upstream. Otherwise -PLUS is taken out of the mechanisms the
// client is offered.
func (s *session) channelBindingPasses() bool {
	up, ok := s.upstream.(*tls.Conn)
	if !s.clientTLS || !ok {
		return false
	}
	peer := up.ConnectionState().PeerCertificates
	return len(peer) > 0 && bytes.Equal(peer[0].Raw, s.srv.listenCert)
}

// relayAuthentication relays the authentication exchange between upstream
// and the client until upstream says AuthenticationOk (true) or refuses the
// login (false: its ErrorResponse has been relayed and the session ends;
// nothing that follows a failed login is ever relayed).
func (s *session) relayAuthentication() (bool, error) {
	for {
		msg, err := s.upstreamIn.Receive()
		if err != nil {
			return false, upstreamUnavailable(fmt.Errorf("during authentication: %w", err))
		}
		s.upstreamConsumed += wireLen(msg)
		var authType uint32
		switch m := msg.(type) {
		case *pgproto3.AuthenticationOk:
			if s.tenantErr != nil {
				// PostgreSQL accepted the role; pgcloak does not.
				s.srv.audit.l.AuthRefused(s.auditIdentity(), pgerrcode.InvalidAuthorizationSpecification, "role not mapped to a tenant")
				return false, s.tenantErr
			}
			if s.loginErr != nil {
				var ce *clientError
				if errors.As(s.loginErr, &ce) {
					s.srv.audit.l.AuthRefused(s.auditIdentity(), ce.code, ce.msg)
				}
				return false, s.loginErr
			}
			if err := s.sendClient(m); err != nil {
				return false, err
			}
			return true, nil
		case *pgproto3.ErrorResponse:
			s.log.Info().Str("sqlstate", m.Code).Msg("upstream refused login")
			if s.decl.tenancy {
				s.srv.audit.l.AuthRefused(s.auditIdentity(), m.Code, "refused by upstream")
			}
			s.sendClient(m)
			s.flushClient()
			return false, nil
		case *pgproto3.NoticeResponse:
			if err := s.sendClient(m); err != nil {
				return false, err
			}
			continue
		case *pgproto3.AuthenticationCleartextPassword:
			authType = pgproto3.AuthTypeCleartextPassword
		case *pgproto3.AuthenticationMD5Password:
			authType = pgproto3.AuthTypeMD5Password
		case *pgproto3.AuthenticationSASL:
			if !s.channelBindingPasses() {
				mechs := make([]string, 0, len(m.AuthMechanisms))
				for _, mech := range m.AuthMechanisms {
					if !strings.HasSuffix(mech, "-PLUS") {
						mechs = append(mechs, mech)
					}
				}
				if len(mechs) == 0 {
					return false, &clientError{code: pgerrcode.InvalidAuthorizationSpecification, msg: "upstream offers only SASL channel binding, which the proxy cannot relay", fatal: true}
				}
				m.AuthMechanisms = mechs
			}
			authType = pgproto3.AuthTypeSASL
		case *pgproto3.AuthenticationSASLContinue:
			authType = pgproto3.AuthTypeSASLContinue
		case *pgproto3.AuthenticationSASLFinal:
			// No client response follows; AuthenticationOk or an error does.
			if err := s.sendClient(m); err != nil {
				return false, err
			}
			continue
		default:
			return false, &clientError{
				code:  pgerrcode.FeatureNotSupported,
				msg:   fmt.Sprintf("upstream asked for an authentication method the proxy cannot relay (%T)", msg),
				fatal: true,
			}
		}

		if err := s.sendClient(msg); err != nil {
			return false, err
		}
		if err := s.flushClient(); err != nil {
			return false, err
		}
		if err := s.clientIn.SetAuthType(authType); err != nil {
			return false, err
		}
		resp, err := s.clientIn.Receive()
		if err != nil {
			if cerr := s.clientRd.connErr(); cerr != nil {
				return false, cerr
			}
			return false, protocolViolation("invalid authentication message: %v", err)
		}
		s.clientConsumed += wireLen(resp)
		switch resp.(type) {
		case *pgproto3.PasswordMessage, *pgproto3.SASLInitialResponse, *pgproto3.SASLResponse:
		default:
			return false, protocolViolation("expected an authentication response, got %T", resp)
		}
		if err := s.upstreamOut.send(resp); err != nil {
			return false, err
		}
		if err := s.upstreamOut.flush(); err != nil {
			return false, upstreamUnavailable(err)
		}
	}
}

// relayUntilReady relays what upstream sends between AuthenticationOk and
// the first ReadyForQuery (ParameterStatus, BackendKeyData, notices), with
// BackendKeyData's secret replaced by the proxy's own.
func (s *session) relayUntilReady() error {
	for {
		msg, err := s.upstreamIn.Receive()
		if err != nil {
			return upstreamUnavailable(fmt.Errorf("after authentication: %w", err))
		}
		s.upstreamConsumed += wireLen(msg)
		switch m := msg.(type) {
		case *pgproto3.BackendKeyData:
			s.upstreamPID = m.ProcessID
			s.upstreamSecret = append([]byte(nil), m.SecretKey...)
			s.cancelKey = s.srv.issueCancelKey(s, m.ProcessID)
			var secret [4]byte
			secret[0] = byte(s.cancelKey.secret >> 24)
			secret[1] = byte(s.cancelKey.secret >> 16)
			secret[2] = byte(s.cancelKey.secret >> 8)
			secret[3] = byte(s.cancelKey.secret)
			msg = &pgproto3.BackendKeyData{ProcessID: m.ProcessID, SecretKey: secret[:]}
		case *pgproto3.ErrorResponse:
			// e.g. 3D000 database does not exist, 53300 too many clients.
			s.sendClient(m)
			s.flushClient()
			return errDone
		case *pgproto3.ParameterStatus:
			s.noteParameterStatus(m) // role and database defaults arrive here
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok && s.scoped {
			pin := s.pinTenant
			if s.tokens {
				pin = func(context.Context) error { return s.startTokens() }
			}
			if err := pin(context.Background()); err != nil {
				return err
			}
		}
		if err := s.sendClient(msg); err != nil {
			return err
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			return s.flushClient()
		}
	}
}

// applyTenancy checks the startup parameters, resolves the tenant of the
// login role, and pins the tenant as a startup parameter of the upstream
// session. As a startup parameter the setting is what RESET ALL and DISCARD
// ALL restore, so no client statement can leave the session without it.
// A role that maps to no tenant is refused only once PostgreSQL has
// authenticated it, so the refusal reveals nothing to a stranger.
func (s *session) applyTenancy(params map[string]string) error {
	t := s.decl.tenancyCfg
	if err := checkStartupParameters(t, params); err != nil {
		s.srv.audit.tenantChangeRefused(s, "startup parameter")
		return err
	}
	tenant, scoped, err := resolveTenant(t, s.user)
	if err != nil {
		s.tenantErr = err
		return nil
	}
	s.tenant, s.scoped = tenant, scoped
	s.tokens = scoped && tenant == ""
	s.tracks = s.decl.catalog != nil
	s.decrypts = scoped && s.tracks
	s.statements = make(map[string]*preparedStatement)
	s.stmtGen = make(map[string]uint64)
	s.unshaped = make(map[string]bool)
	s.results = resultState{portals: make(map[string]*portal), tenant: tenant}
	if scoped && !s.tokens {
		if err := s.pinParams(params); err != nil {
			return err
		}
		s.log = s.log.With().Str("tenant", tenant).Logger()
	}
	return nil
}
