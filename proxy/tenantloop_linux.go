//go:build linux

package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/jackc/pgx/v5/pgproto3"
	"golang.org/x/sys/unix"
)

// The relay loop also carries sessions under tenancy (a tenant, an unscoped
// role, declared tables). Each message the loop reads it decodes and hands
// to the same handlers the session's goroutines use (handleClientMessage,
// upstreamMessage), on the loop's thread, unless a cheap test says the
// handler would wait for upstream: COPY, the catalog as declared, a
// statement that may redefine or deallocate prepared statements, a pin to
// renew, a message other than its Describe or Execute while a token
// statement's portal is bound. Token statements run there too, in a simple
// Query or as Parse, Bind and Execute, when the verifier answers at once
// (no JWKS fetch: atOnceVerifier); handleTokenQuery restores the session's
// token state if it gives up, and audit events raised on the loop wait
// until the message is done (auditEvent).
//
// The handlers run the whole encrypted path on the loop too: a statement
// on a declared table is rewritten from the shape or plan cache, its
// values sealed or indexed, its Bind transformed, its rows decrypted.
// Where that would wait (a text whose plan is not cached, which pg_query
// would parse; a key the cache does not hold, or a block of seals to
// reserve: crypto.NoWait; a table the catalog has not placed), the
// handler gives up with errLoopWouldWait before it changes anything, and
// the loop gives the session back to its goroutines at that message: the
// loop stops watching its sockets, and the goroutines start again where
// the loop stopped, with every byte not yet decoded in the session's
// frames and the message the loop had just decoded in clientNext or
// upstreamNext (a row as it came: decrypting changes it in place). Both
// sides run the same code on the same session state, so the hand-over can
// happen between any two messages. The goroutines hand the session to the
// loop again once they have relayed a few rounds with nothing outstanding
// (noteRound); by then the plan and keys are cached.
//
// Statements a session sends most therefore cost what pure passthrough
// costs in system calls: a read and a write per direction, no goroutine
// wake-up, no extra read that fails with EAGAIN (see relay_linux.go).

// loopable reports whether the session may be carried by the relay loop:
// under tenancy, over plain TCP on both sides, and when the loop is
// allowed. Sessions of token roles too: a token that needs a JWKS fetch
// goes to the goroutines.
func (s *session) loopable() bool {
	if !s.decl.tenancy || s.clientTLS || s.srv.goroutineRelay || s.clientFrames == nil {
		return false
	}
	_, okc := s.client.(*net.TCPConn)
	_, oku := s.upstream.(*net.TCPConn)
	return okc && oku
}

// errHandBack is what the loop reports when it gives a session back to its
// goroutines.
var errHandBack = errors.New("relay loop: session handed back")

// serveLooped hands the session's sockets to the relay loop and waits until
// the loop ends the session (back false, and the error that ended it) or
// gives it back to the goroutines (back true). While the loop carries the
// session, only the loop's thread touches its state.
func (s *session) serveLooped() (back bool, err error) {
	if s.closed.Load() {
		return false, nil
	}
	if s.repin.pending || s.tokens && s.tok.clearOwed {
		// Statements of the proxy's own are owed (the client goroutine's
		// state, read here once it has stopped): the loop would give the
		// session back at its next message.
		s.handbackAt = min(max(2*s.handbackAt, handbackMin), handbackMax)
		return true, nil
	}
	l, err := relayFor(s.id)
	if err != nil {
		s.log.Debug().Err(err).Msg("relay loop unavailable")
		s.handbackAt = handbackMax
		return true, nil
	}
	cfd, err := dupFD(s.client)
	if err != nil {
		s.handbackAt = handbackMax
		return true, nil
	}
	ufd, err := dupFD(s.upstream)
	if err != nil {
		unix.Close(cfd)
		s.handbackAt = handbackMax
		return true, nil
	}
	rs := &relayed{s: s, tenancy: true, loop: l, done: make(chan error, 1)}
	rs.client = relayEnd{fd: cfd, rs: rs, peer: &rs.upstream, client: true}
	rs.upstream = relayEnd{fd: ufd, rs: rs, peer: &rs.client}
	// From here on the duplicates are the sockets: closing the net.Conns
	// takes them out of Go's poller without closing the connections.
	s.relayed.Store(rs)
	s.connMu.Lock()
	s.client.Close()
	s.upstream.Close()
	s.connMu.Unlock()
	s.clientOut.w, s.upstreamOut.w = &rs.client, &rs.upstream
	if s.closed.Load() {
		rs.shutdown() // close raced the hand-over: end at once
	}
	if err := l.add(rs); err != nil {
		s.relayed.Store(nil)
		rs.closeFDs()
		return false, fmt.Errorf("relay: %w", err)
	}
	s.loopTurns.Add(1)
	err = <-rs.done
	s.relayed.Store(nil)
	if err != errHandBack {
		return false, err
	}
	if rs.served < loopStayed {
		s.handbackAt = min(max(2*s.handbackAt, handbackMin), handbackMax)
	} else {
		s.handbackAt = handbackMin
	}
	return s.takeBack(rs)
}

// takeBack makes net.Conns of the sockets the loop gave back (registering
// them with Go's poller again) and points the session's readers and
// writers at them.
func (s *session) takeBack(rs *relayed) (bool, error) {
	client, err := fdConn(rs.client.fd, "client")
	if err != nil {
		unix.Close(rs.upstream.fd)
		return false, fmt.Errorf("relay: taking the session back: %w", err)
	}
	upstream, err := fdConn(rs.upstream.fd, "upstream")
	if err != nil {
		client.Close()
		return false, fmt.Errorf("relay: taking the session back: %w", err)
	}
	s.connMu.Lock()
	s.client, s.upstream = client, upstream
	s.connMu.Unlock()
	s.clientRd.r, s.upstreamRd.r = client, upstream
	s.clientOut.w, s.upstreamOut.w = client, upstream
	if s.closed.Load() {
		client.Close()
		upstream.Close()
		return false, nil
	}
	return true, nil
}

// fdConn turns a socket descriptor into a net.Conn, which holds a
// duplicate of it; fd itself is closed.
func fdConn(fd int, name string) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	return net.FileConn(f)
}

// Write makes a relayEnd of a tenancy session the writer of the session's
// outbox for its socket while the loop carries the session: what the
// socket cannot take now waits in pending (relayLoop.write).
func (e *relayEnd) Write(p []byte) (int, error) {
	if err := e.rs.loop.write(e, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// readTenancy reads what a tenancy session's socket has into its frames
// and handles the whole messages.
func (l *relayLoop) readTenancy(e *relayEnd) {
	rs, s := e.rs, e.rs.s
	f := s.upstreamFrames
	if e.client {
		f = s.clientFrames
	}
	space := f.space()
	n, err := unix.Read(e.fd, space)
	if l.readEnded(e, n, err) {
		return
	}
	f.buf = f.buf[:len(f.buf)+n]
	if e.client {
		l.clientMessages(rs)
	} else {
		l.upstreamMessages(rs)
	}
}

// clientMessages handles the client's whole messages in the session's
// frames, then writes what they sent upstream.
func (l *relayLoop) clientMessages(rs *relayed) {
	s := rs.s
	for {
		if s.clientFrames.firstSize() > inlineClientMax {
			// Scanning and copying a large text would hold every
			// other session on this loop up: the goroutines take it.
			l.handBack(rs)
			return
		}
		n := s.clientFrames.whole()
		if n == 0 {
			break
		}
		s.clientFrames.take(n)
		msg, err := s.clientIn.Receive()
		if err != nil {
			l.refuse(rs, protocolViolation("invalid message from client: %v", err))
			return
		}
		if _, ok := msg.(*pgproto3.Terminate); ok {
			// What follows a Terminate is never forwarded, nor is
			// anything upstream still sends (upstreamMessages).
			rs.terminated = true
			s.upstreamOut.send(msg)
			s.upstreamOut.flush()
			l.afterTerminate(rs)
			return
		}
		if !s.inlineClient(msg) {
			s.clientNext = msg
			l.handBack(rs)
			return
		}
		s.onLoop = true
		err = s.clientMessage(msg)
		s.onLoop = false
		l.settleAudits(s, err)
		if errors.Is(err, errLoopWouldWait) {
			s.clientNext = msg // the handler changed nothing yet
			l.handBack(rs)
			return
		}
		if err != nil {
			l.end(rs, err)
			return
		}
		rs.served++
	}
	if err := s.upstreamOut.flush(); err != nil {
		l.finish(rs, nil) // upstream is gone
	}
}

// upstreamMessages handles upstream's whole messages in the session's
// frames, then writes what they sent the client.
func (l *relayLoop) upstreamMessages(rs *relayed) {
	s := rs.s
	if rs.terminated {
		// The client said Terminate: as on the goroutines, nothing more
		// reaches it.
		s.upstreamFrames.off = len(s.upstreamFrames.buf)
		return
	}
	for {
		if s.upstreamFrames.firstSize() > inlineUpstreamMax {
			l.handBack(rs)
			return
		}
		raw := s.upstreamFrames.peek()
		if raw == nil {
			break
		}
		if !s.inlineUpstream(raw) {
			l.handBack(rs)
			return
		}
		if raw[0] == 'D' && s.rawRow() {
			// A row of a result without declared columns: what the
			// handler would decode and encode again, forwarded as it came.
			s.upstreamFrames.off += len(raw)
			if !s.results.suppress {
				if err := s.sendClientRaw(raw); err != nil {
					l.finish(rs, nil) // the client is gone
					return
				}
			}
			continue
		}
		if raw[0] == 'D' || raw[0] == 'T' {
			// Decrypting works in the row's buffer, and shapeOf
			// rewrites declared fields in place: keep the message as it
			// came for the goroutines, should a key or a table not be
			// known yet.
			l.row = append(l.row[:0], raw...)
		}
		s.upstreamFrames.take(len(raw))
		msg, err := s.upstreamIn.Receive()
		if err != nil {
			l.refuse(rs, fmt.Errorf("invalid message from upstream: %w", err))
			return
		}
		s.onLoop = true
		err = s.upstreamMessage(msg)
		s.onLoop = false
		l.settleAudits(s, err)
		if errors.Is(err, errLoopWouldWait) {
			// The handler changed nothing yet (shapeOf, a row's key).
			if msg, err = l.undone(msg); err != nil {
				l.refuse(rs, err)
				return
			}
			s.upstreamNext = msg
			l.handBack(rs)
			return
		}
		if err != nil {
			l.end(rs, err)
			return
		}
	}
	if err := s.flushClient(); err != nil {
		l.finish(rs, nil) // the client is gone
	}
}

// settleAudits writes the audit events of the message the loop's thread
// just handled, unless its handler gave up: the goroutines, which handle
// the message again, write them.
func (l *relayLoop) settleAudits(s *session, err error) {
	if len(s.loopAudits) == 0 {
		return
	}
	if !errors.Is(err, errLoopWouldWait) {
		for _, f := range s.loopAudits {
			f()
		}
	}
	clear(s.loopAudits)
	s.loopAudits = s.loopAudits[:0]
}

// undone returns upstream's message as it came, for the goroutines to
// handle again: a DataRow or RowDescription decoded again from the loop's
// copy, since the handler may have changed it in place before it gave up.
func (l *relayLoop) undone(msg pgproto3.BackendMessage) (pgproto3.BackendMessage, error) {
	var fresh pgproto3.BackendMessage
	switch msg.(type) {
	case *pgproto3.DataRow:
		fresh = new(pgproto3.DataRow)
	case *pgproto3.RowDescription:
		fresh = new(pgproto3.RowDescription)
	default:
		return msg, nil
	}
	if err := fresh.Decode(bytes.Clone(l.row[5:])); err != nil {
		return nil, fmt.Errorf("invalid message from upstream: %w", err)
	}
	return fresh, nil
}

// Messages larger than these go to the goroutines: the loop's handlers
// scan a statement's text several times and every message is copied a few
// times, which for a large one would hold up every other session on the
// loop.
const (
	inlineClientMax   = 64 << 10
	inlineUpstreamMax = 1 << 20
)

// end finishes a session whose handler failed, telling the client as the
// goroutines' fail does, unless the failure is a peer going away.
func (l *relayLoop) end(rs *relayed, err error) {
	if isDisconnect(err) {
		l.finish(rs, nil)
		return
	}
	l.refuse(rs, err)
}

// handBack stops watching a tenancy session's sockets and gives the
// session back to its goroutines. Bytes the sockets could not take yet go
// first in the outboxes, ahead of what is queued after them.
func (l *relayLoop) handBack(rs *relayed) {
	l.mu.Lock()
	delete(l.ends, int32(rs.client.fd))
	delete(l.ends, int32(rs.upstream.fd))
	l.mu.Unlock()
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, rs.client.fd, nil)
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, rs.upstream.fd, nil)
	rs.mu.Lock()
	rs.closed = true // the descriptors are the session's again
	rs.mu.Unlock()
	s := rs.s
	for _, e := range []*relayEnd{&rs.client, &rs.upstream} {
		o := s.upstreamOut
		if e.client {
			o = s.clientOut
		}
		if len(e.pending) > 0 {
			o.buf = append(e.pending, o.buf...)
			e.pending = nil
		}
	}
	rs.done <- errHandBack
}
