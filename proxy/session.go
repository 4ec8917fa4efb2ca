package proxy

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"
)

// session is one client connection and its upstream connection.
//
// Ownership: the client goroutine (clientLoop) owns clientIn and upstreamOut
// and is the only writer upstream. The upstream goroutine (upstreamLoop) owns
// upstreamIn. Both write to the client, so clientOut is guarded by clientMu;
// a message is always encoded whole under the lock, so messages from the two
// goroutines never interleave inside each other.
type session struct {
	srv  *Server
	decl *declarations // as they were when the session started
	id   uint64
	log  zerolog.Logger

	client net.Conn
	// clientAddr is the client's address as accepted (host:port), for the
	// audit.
	clientAddr string
	clientRd   *flushingReader
	clientIn   *pgproto3.Backend

	clientMu  sync.Mutex
	clientOut *outbox

	// repin renews the verified pin after DISCARD (repin.go).
	repin repinState

	upstream    net.Conn
	early       *earlyDial // opened during SSL/GSS negotiation (startup only)
	upstreamRd  *flushingReader
	upstreamIn  *pgproto3.Frontend
	upstreamOut *outbox

	user, database string
	clientTLS      bool
	clientCertName string // common name of the client's verified certificate, or ""

	// tenant is the session's tenant; scoped is false for unscoped roles.
	// Both are fixed once authentication succeeds.
	tenant    string
	scoped    bool
	proof     string // the pin's proof (pinParams), with a Pinner
	tenantErr error  // a login that authenticates but maps to no tenant
	// tokens is set for a token role's session: its tenant comes from
	// tenant tokens and changes (token.go); tok is the client goroutine's
	// side of it, tokUp the upstream goroutine's.
	tokens bool
	tok    tokenState
	tokUp  tokenUpstream
	// loginErr refuses a login once PostgreSQL has authenticated it: the
	// proxy's own role, or a startup parameter the lexer guard refuses.
	loginErr error
	// lexGuard is set for sessions with a tenant, and for every session
	// when tables are declared; unlexable is then the reason once
	// upstream has reported a client_encoding or
	// standard_conforming_strings pgcloak cannot lex by (lexguard.go).
	lexGuard  bool
	unlexable atomic.Pointer[string]
	// tracks is set when tables are declared: the session keeps its
	// pending queue and statement state in step with PostgreSQL (relay).
	// decrypts is set for scoped sessions among them: only they decrypt
	// rows and rewrite Binds.
	tracks   bool
	decrypts bool
	pending  pendingQueue
	results  resultState
	// statements are the client's statements whose Binds are rewritten,
	// by the client's name; stmtSeq numbers their upstream names. Only the
	// client goroutine touches them. See extended.go.
	statements map[string]*preparedStatement
	stmtSeq    uint64
	// copyIn is the COPY FROM whose rows the client goroutine transforms;
	// dropCopy drops COPY data that follows a refused statement.
	copyIn   *copyIn
	dropCopy bool
	// stmtGen and genSeq number the generations of statement names (client
	// goroutine); shapes is where described row shapes are posted.
	stmtGen map[string]uint64
	genSeq  uint64
	shapes  shapeBoard
	// deallocs are the prepared statements and bound portals whose text
	// deallocates statements (client goroutine; deallocate.go).
	deallocs preparedDeallocations
	// unshaped are the portals bound since their statement's row shape
	// was last known, and not described since (client goroutine): an
	// Execute of one is preceded by a Describe of the proxy's own.
	unshaped map[string]bool
	// sealedFor is, in a token session, the tenant under which a
	// statement's literals for encrypted columns were sealed at Parse: a
	// Bind under another tenant is refused (see handleParse).
	sealedFor map[string]string

	// raised are the refusals raised upstream, awaiting their errors
	// (errors.go).
	raised raisedRefusals

	// upstreamPID and upstreamSecret are the upstream backend's real
	// BackendKeyData; cancelKey is what the client was given instead.
	upstreamPID    uint32
	upstreamSecret []byte
	cancelKey      cancelKey

	// clientConsumed and upstreamConsumed count the bytes of the messages
	// received during startup, which relayable compares with the bytes
	// read: equal, nothing read is waiting in a buffer.
	clientConsumed, upstreamConsumed int64
	// relayed is set once the relay loop carries the session.
	relayed atomic.Pointer[relayed]

	closeOnce sync.Once
	closed    atomic.Bool
}

func newSession(srv *Server, id uint64, conn net.Conn, log zerolog.Logger) *session {
	s := &session{srv: srv, id: id, log: log, client: conn, clientAddr: conn.RemoteAddr().String(), decl: srv.decl.Load()}
	s.clientRd = &flushingReader{r: conn}
	s.clientIn = pgproto3.NewBackend(s.clientRd, nil)
	s.clientIn.SetMaxBodyLen(srv.cfg.Listen.MaxMessageSize)
	s.clientOut = newOutbox(conn)
	return s
}

// close closes both connections, which ends both goroutines of a running
// session. It is safe to call more than once and from any goroutine.
func (s *session) close() {
	s.closed.Store(true)
	s.closeOnce.Do(func() {
		s.client.Close()
		if s.upstream != nil {
			s.upstream.Close()
		}
	})
	if rs := s.relayed.Load(); rs != nil {
		rs.shutdown()
	}
	if s.tokUp.cond != nil {
		s.tokUp.mu.Lock()
		s.tokUp.cond.Broadcast() // wakes settleTenant
		s.tokUp.mu.Unlock()
	}
}

// run serves the connection from its first byte to its end.
func (s *session) run() {
	defer s.close()
	defer s.srv.unregister(s) // also drops a cancel key issued during startup
	ok, err := s.startup()
	if err != nil {
		s.fail(err)
		return
	}
	if !ok {
		return
	}
	if !s.srv.register(s) {
		s.fail(&clientError{code: "57P01", msg: "the proxy is shutting down", fatal: true})
		return
	}
	s.log.Info().Msg("session started")
	tenant := s.tenant
	s.srv.audit.obs.SessionStarted(tenant)
	defer s.srv.audit.obs.SessionEnded(tenant)
	if s.decl.tenancy {
		s.srv.audit.l.SessionStarted(s.auditIdentity())
		defer s.srv.audit.l.SessionEnded(s.auditIdentity())
	}

	if err := s.serve(); err != nil {
		s.log.Info().Msg("session ended with an error")
		return
	}
	s.log.Info().Msg("session ended")
}

// fail reports err to the client as an ErrorResponse (best effort) and logs
// it. The connection is closed by run.
func (s *session) fail(err error) {
	if !s.logFailure(err) {
		return
	}
	s.sendClient(errorResponse(err, s.id))
	if s.flushClient() == nil {
		lingerAfterError(s.client, s.srv.cfg.Listen.MaxMessageSize)
	}
}

// lingerAfterError half-closes c and discards what the peer still sends (at
// most limit bytes, for at most a second) before the caller closes it. A
// socket closed with unread data answers with a reset, and a reset can
// destroy the error just written before the client reads it: a client still
// writing an oversized message would see "connection reset" instead of the
// refusal.
func lingerAfterError(c net.Conn, limit int) {
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	io.CopyN(io.Discard, c, int64(limit)+1<<20)
}

// logFailure logs err and reports whether the client is to be told.
func (s *session) logFailure(err error) bool {
	var ce *clientError
	switch {
	case errors.As(err, &ce):
		s.log.Info().Err(err).Msg("session refused")
	case isDisconnect(err):
		s.log.Debug().Err(err).Msg("session ended by disconnect")
		return false
	default:
		s.log.Error().Err(err).Msg("session failed")
	}
	return true
}

// sendClient queues msg for the client.
func (s *session) sendClient(msg pgproto3.BackendMessage) error {
	s.clientMu.Lock()
	defer s.clientMu.Unlock()
	return s.clientOut.send(msg)
}

// flushClient writes what is queued for the client.
func (s *session) flushClient() error {
	s.clientMu.Lock()
	defer s.clientMu.Unlock()
	return s.clientOut.flush()
}

// serve runs the two relay goroutines until either ends. The first to end
// reports its error to the client (when there is one to report) and closes
// both connections, which ends the other. serve returns nil for a normal end.
func (s *session) serve() error {
	if s.relayable() {
		if ok, err := s.serveRelayed(); ok {
			if err != nil && !isDisconnect(err) {
				s.logFailure(err) // the loop has told the client
				return err
			}
			return nil
		}
	}
	// From here on every ReadyForQuery answers a message the loops sent.
	s.upstreamOut.syncs = 0
	// Each direction flushes the other just before blocking on its socket.
	s.clientRd.beforeRead = s.upstreamOut.flush
	s.upstreamRd.beforeRead = s.flushClient

	var (
		g     errgroup.Group
		once  sync.Once
		first error
	)
	run := func(loop func() error) func() error {
		return func() error {
			err := s.guard(loop)
			once.Do(func() {
				first = err
				if err != nil && !isDisconnect(err) {
					s.fail(err)
				}
				s.close()
			})
			return nil
		}
	}
	g.Go(run(s.clientLoop))
	g.Go(run(s.upstreamLoop))
	g.Wait()
	if first == nil || isDisconnect(first) {
		return nil
	}
	return first
}

func stack() string { return string(debug.Stack()) }

// guard turns a panic in one session goroutine into an error for that
// session, so it never takes the process down.
func (s *session) guard(loop func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error().Interface("panic", r).Str("stack", stack()).Msg("session goroutine panicked")
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return loop()
}

// errDone marks a normal end of session (Terminate or upstream EOF after it).
var errDone = errors.New("session done")

// clientLoop reads client messages and forwards them upstream, analysing
// those that may touch declared tables or the tenant.
func (s *session) clientLoop() error {
	for {
		msg, err := s.clientIn.Receive()
		if err != nil {
			if cerr := s.clientRd.connErr(); cerr != nil {
				// The client's connection itself failed (closed, reset, a
				// broken TLS record): the client is gone, not a fault.
				return &clientGone{cerr}
			}
			return protocolViolation("invalid message from client: %v", err)
		}
		if _, ok := msg.(*pgproto3.Terminate); ok {
			s.upstreamOut.send(msg)
			s.upstreamOut.flush()
			return errDone
		}
		if !s.decl.tenancy {
			err = s.upstreamOut.send(msg)
		} else {
			err = s.handleClientMessage(msg)
		}
		if err != nil {
			return fmt.Errorf("upstream write: %w", err)
		}
		if err := s.afterClientMessage(msg); err != nil {
			return err
		}
	}
}

// handleClientMessage forwards one message of a session under tenancy.
func (s *session) handleClientMessage(msg pgproto3.FrontendMessage) error {
	if s.lexGuard {
		if refused, err := s.refuseUnlexable(msg); refused {
			return err
		}
	}
	if s.tokens && s.tok.awaitExec != nil {
		if taken, err := s.checkTokenPortal(msg); taken || err != nil {
			return err
		}
	}
	if s.tokens && !isCopyData(msg) {
		if err := s.beforeTokenMessage(); err != nil {
			return err
		}
	} else if err := s.beforeClientMessage(msg); err != nil {
		return err
	}
	switch m := msg.(type) {
	case *pgproto3.Query:
		return s.handleQuery(m)
	case *pgproto3.Parse:
		return s.handleParse(m)
	case *pgproto3.FunctionCall:
		return s.handleFunctionCall(m)
	case *pgproto3.CopyData, *pgproto3.CopyDone, *pgproto3.CopyFail:
		if s.copyIn != nil {
			return s.handleCopyMessage(m)
		}
		if s.dropCopy {
			return nil
		}
	}
	if s.decrypts {
		switch m := msg.(type) {
		case *pgproto3.Bind:
			return s.handleBind(m)
		case *pgproto3.Describe:
			return s.handleDescribe(m)
		case *pgproto3.Close:
			return s.handleClose(m)
		case *pgproto3.Execute:
			return s.handleExecute(m)
		}
	}
	s.track(msg)
	return s.upstreamOut.send(msg)
}

// upstreamLoop reads upstream messages and forwards them to the client.
func (s *session) upstreamLoop() error {
	for {
		msg, err := s.upstreamIn.Receive()
		if err != nil {
			cerr := s.upstreamRd.connErr()
			if cerr != nil && isDisconnect(cerr) {
				s.flushClient()
				return errDone
			}
			if cerr == nil {
				return fmt.Errorf("invalid message from upstream: %w", err)
			}
			return fmt.Errorf("upstream read: %w", err)
		}
		if (s.repinsAfterDiscard() || s.tokens) && s.takeInternal(msg) {
			if _, ok := msg.(*pgproto3.ReadyForQuery); ok && s.tokens {
				s.tokUp.answer()
			}
			continue // the answer to a statement of the proxy's own
		}
		if s.tokens {
			if msg, err = s.tokenResponse(msg); err != nil {
				return fmt.Errorf("client write: %w", err)
			}
			if msg == nil {
				continue
			}
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			if s.decl.tenancy {
				s.substituteRefusal(m) // a refusal raised by the proxy's own DO statement
			}
		case *pgproto3.ParameterStatus:
			s.noteParameterStatus(m)
		}
		if s.tracks {
			keep, err := s.relay(msg)
			if err != nil {
				return err
			}
			if !keep {
				continue
			}
		}
		// pgproto3 cannot encode it; see wideParameterDescription.
		if pd, ok := msg.(*pgproto3.ParameterDescription); ok && len(pd.ParameterOIDs) > math.MaxUint16 {
			msg = wideParameterDescription{pd}
		}
		if err := s.sendClient(msg); err != nil {
			return fmt.Errorf("client write: %w", err)
		}
	}
}

// clientGone wraps an error of the client's connection. Vitess's
// go/mysql/server.go notes why these are not logged as errors: clients drop
// connections all the time.
type clientGone struct{ err error }

func (e *clientGone) Error() string { return "client connection: " + e.err.Error() }
func (e *clientGone) Unwrap() error { return e.err }

// isDisconnect reports whether err is a peer going away rather than a fault.
func isDisconnect(err error) bool {
	var gone *clientGone
	if errors.As(err, &gone) {
		return true
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, errDone) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
