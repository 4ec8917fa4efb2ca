package proxy

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
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
	// boundFor is, in a token session, what each portal's Binds sealed or
	// indexed values for (parameters, or literals sealed at Parse): an
	// Execute that may run them under another tenant is refused
	// (handleExecute, portalSeal).
	boundFor map[string]*portalSeal
	// fixedNames are, in a token session, the names of the statements
	// prepared through the protocol, with their text: no other text may
	// take such a name (query.go, errNameFixed). Not even DISCARD ALL
	// frees one.
	fixedNames map[string]string
	// plainNamed are, in a token session, the named statements whose
	// parameters pass through, as sent upstream (reprepare).
	plainNamed map[string]*upstreamParse

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
	// relayed is set while the relay loop carries the session.
	relayed atomic.Pointer[relayed]

	// clientFrames and upstreamFrames, once set (serve, useFrames), are
	// what the decoders read through: every byte not yet decoded is in
	// them, so the session can move between its goroutines and the relay
	// loop (tenantloop_linux.go) between any two messages. clientNext is a
	// message the loop decoded and handed back undone: the client
	// goroutine handles it before receiving another.
	clientFrames, upstreamFrames *frames
	clientNext                   pgproto3.FrontendMessage
	// upstreamNext is upstream's message the loop decoded and handed back
	// undone; onLoop is set while the loop's thread runs the upstream
	// handler (shapeOf then refuses to wait for pg_catalog).
	upstreamNext pgproto3.BackendMessage
	onLoop       bool
	// loopAudits are the audit events of the message the loop's thread is
	// handling (auditEvent).
	loopAudits []func()
	// handoff is set when the goroutines are to stop at their next read
	// and give the session to the relay loop; rounds counts the
	// ReadyForQuery messages relayed by the goroutines since they last
	// took the session, and handbackAt is how many make them hand it back
	// (see noteRound).
	handoff    atomic.Bool
	rounds     int
	handbackAt int
	// loopTurns counts the times the relay loop took the session.
	loopTurns atomic.Int64
	// connMu guards client and upstream, which change when the relay loop
	// hands the session back, against close.
	connMu sync.Mutex

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
		s.connMu.Lock()
		defer s.connMu.Unlock()
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

// sendClientRaw queues a whole message, as upstream sent it, for the
// client.
func (s *session) sendClientRaw(msg []byte) error {
	s.clientMu.Lock()
	defer s.clientMu.Unlock()
	return s.clientOut.sendRaw(msg)
}

// flushClient writes what is queued for the client.
func (s *session) flushClient() error {
	s.clientMu.Lock()
	defer s.clientMu.Unlock()
	return s.clientOut.flush()
}

// serve serves the session after its startup until it ends, and returns
// nil for a normal end. A passthrough session goes to the relay loop for
// good. A session under tenancy moves between the relay loop, which runs the
// statements that need nothing but relaying (tenantloop_linux.go), and its
// own two goroutines, which run everything.
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

	looped := s.useFrames() && s.loopable()
	for {
		if looped {
			back, err := s.serveLooped()
			if !back {
				if err != nil && !isDisconnect(err) {
					s.logFailure(err) // the loop has told the client
					return err
				}
				return nil
			}
		}
		handoff, err := s.serveGoroutines()
		if !handoff {
			return err
		}
		looped = true
	}
}

// useFrames makes the decoders read through frames, when startup left no
// byte in their buffers, and reports whether it did.
func (s *session) useFrames() bool {
	if s.clientRd.n != s.clientConsumed || s.upstreamRd.n != s.upstreamConsumed {
		return false
	}
	max := s.srv.cfg.Listen.MaxMessageSize
	s.clientFrames = newFrames(s.clientRd, max, frontendTypes, clientFrameRead)
	s.clientIn = pgproto3.NewBackend(&s.clientFrames.feed, nil)
	s.clientIn.SetMaxBodyLen(max)
	s.upstreamFrames = newFrames(s.upstreamRd, max, "", upstreamFrameRead)
	s.upstreamIn = pgproto3.NewFrontend(&s.upstreamFrames.feed, nil)
	s.upstreamIn.SetMaxBodyLen(max)
	return true
}

// receiveClient returns the client's next message. An error with the
// client's connection is also in s.clientRd.connErr.
func (s *session) receiveClient() (pgproto3.FrontendMessage, error) {
	if m := s.clientNext; m != nil {
		s.clientNext = nil
		return m, nil
	}
	if s.clientFrames != nil {
		if err := s.clientFrames.next(); err != nil {
			return nil, err
		}
	}
	return s.clientIn.Receive()
}

// receiveUpstream returns upstream's next message. An error with the
// connection is also in s.upstreamRd.connErr.
func (s *session) receiveUpstream() (pgproto3.BackendMessage, error) {
	if m := s.upstreamNext; m != nil {
		s.upstreamNext = nil
		return m, nil
	}
	if s.upstreamFrames != nil {
		if err := s.upstreamFrames.next(); err != nil {
			return nil, err
		}
	}
	return s.upstreamIn.Receive()
}

// errHandoff ends the goroutines of a session that moves to the relay loop.
var errHandoff = errors.New("session handed to the relay loop")

// handedOff reports whether err is a read that stopped because the
// session moves to the relay loop (requestHandoff set a past deadline).
func (s *session) handedOff(err error) bool {
	return s.handoff.Load() && errors.Is(err, os.ErrDeadlineExceeded)
}

// requestHandoff stops the goroutines at their next read: the client
// goroutine first, which then stops the upstream goroutine (see
// clientLoop). Called by the upstream goroutine.
func (s *session) requestHandoff() {
	if s.handoff.CompareAndSwap(false, true) {
		s.client.SetReadDeadline(aLongTimeAgo)
	}
}

// aLongTimeAgo is a deadline that has passed: a read with it returns at once.
var aLongTimeAgo = time.Unix(1, 0)

// Hand-back from the goroutines to the relay loop: after handbackMin
// rounds, doubled (up to handbackMax) each time the loop gave the session
// back after fewer than loopStayed messages, so a session whose statements
// keep needing the goroutines stays with them.
const (
	handbackMin = 4
	handbackMax = 1024
	loopStayed  = 64
)

// noteRound counts a ReadyForQuery the upstream goroutine relayed and asks
// for the relay loop once enough rounds went by with nothing outstanding.
func (s *session) noteRound() {
	s.rounds++
	if s.rounds >= s.handbackAt && s.pending.empty() && s.loopable() {
		s.requestHandoff()
	}
}

// serveGoroutines runs the two relay goroutines until either ends, or both
// stop to hand the session to the relay loop (handoff true). The first to
// end otherwise reports its error to the client (when there is one to
// report) and closes both connections, which ends the other. It returns nil
// for a normal end.
func (s *session) serveGoroutines() (handoff bool, err error) {
	s.handoff.Store(false)
	s.rounds = 0
	s.clientRd.err, s.upstreamRd.err = nil, nil
	var (
		g      errgroup.Group
		once   sync.Once
		first  error
		passed atomic.Int32
	)
	run := func(loop func() error) func() error {
		return func() error {
			err := s.guard(loop)
			if err == errHandoff {
				passed.Add(1)
				return nil
			}
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
	if passed.Load() == 2 && !s.closed.Load() {
		s.client.SetReadDeadline(time.Time{})
		s.upstream.SetReadDeadline(time.Time{})
		return true, nil
	}
	if first == nil || isDisconnect(first) {
		return false, nil
	}
	return false, first
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
		msg, err := s.receiveClient()
		if err != nil {
			if s.handedOff(err) {
				s.upstream.SetReadDeadline(aLongTimeAgo) // the upstream goroutine stops next
				return errHandoff
			}
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
		if err := s.clientMessage(msg); err != nil {
			return err
		}
	}
}

// clientMessage handles one client message other than Terminate.
func (s *session) clientMessage(msg pgproto3.FrontendMessage) error {
	var err error
	if !s.decl.tenancy {
		err = s.upstreamOut.send(msg)
	} else {
		err = s.handleClientMessage(msg)
	}
	if err != nil {
		return fmt.Errorf("upstream write: %w", err)
	}
	return s.afterClientMessage(msg)
}

// handleClientMessage forwards one message of a session under tenancy.
func (s *session) handleClientMessage(msg pgproto3.FrontendMessage) error {
	if s.tokens {
		s.tok.afterParse, s.tok.justParsed = s.tok.justParsed, nil
	}
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
		switch msg.(type) {
		case *pgproto3.Query, *pgproto3.FunctionCall:
			if s.tok.midRound {
				return errQueryInRound
			}
		}
		if err := s.beforeTokenMessage(); err != nil {
			return err
		}
		if s.tok.clearOwed && s.tok.clearBlocked || s.tok.burnBlocked {
			if refused, err := s.refuseUntilCleared(msg); refused {
				return err
			}
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
		msg, err := s.receiveUpstream()
		if err != nil {
			if s.handedOff(err) {
				return errHandoff
			}
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
		if err := s.upstreamMessage(msg); err != nil {
			return err
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok && s.clientFrames != nil {
			s.noteRound()
		}
	}
}

// upstreamMessage handles one message from upstream.
func (s *session) upstreamMessage(msg pgproto3.BackendMessage) (err error) {
	{
		if (s.repinsAfterDiscard() || s.tokens) && s.takeInternal(msg) {
			if _, ok := msg.(*pgproto3.ReadyForQuery); ok && s.tokens {
				s.tokUp.answer()
			}
			return nil // the answer to a statement of the proxy's own
		}
		if s.tokens {
			if msg, err = s.tokenResponse(msg); err != nil {
				return fmt.Errorf("client write: %w", err)
			}
			if msg == nil {
				return nil
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
				return nil
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
	return nil
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
