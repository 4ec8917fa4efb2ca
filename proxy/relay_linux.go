//go:build linux

package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"golang.org/x/sys/unix"
)

// The relay loop carries the bytes of passthrough sessions (no tenancy, no
// TLS on either side) once their startup is done, the way pgbouncer does:
// one goroutine waits in epoll_wait (a blocking system call, so on a thread
// of its own while it waits) for every such socket, reads a socket only
// once it is readable and writes what it read at once. Go's own network I/O
// costs each direction of a session an extra read that fails with EAGAIN
// before its goroutine parks, and a goroutine wake-up per message; on a
// loaded machine that is 5-10% of pgbench -S throughput (bench/passthrough.sh).
//
// The loop still checks every client message as the goroutine relay does:
// it frames the bytes, and decodes each complete message with pgproto3
// before any of them is forwarded, so a malformed, truncated or oversized
// message ends the session with 08P01 and never reaches PostgreSQL. What
// PostgreSQL sends is forwarded as it came: passthrough changes none of it.

// relayLoop is the process's one relay loop.
type relayLoop struct {
	epfd   int
	mu     sync.Mutex
	ends   map[int32]*relayEnd // by file descriptor
	buf    []byte              // read buffer, loop goroutine only
	row    []byte              // the DataRow or RowDescription being handled, as it came (upstreamMessages)
	events []unix.EpollEvent
}

var (
	theRelaysOnce sync.Once
	theRelays     []*relayLoop
	theRelayErr   error
)

// relayLoops is how many relay loops the process runs: PGCLOAK_RELAY_LOOPS
// when set to a number from 1 to 64, else defaultRelayLoops.
func relayLoops() int {
	if n, err := strconv.Atoi(os.Getenv("PGCLOAK_RELAY_LOOPS")); err == nil && n >= 1 && n <= 64 {
		return n
	}
	return defaultRelayLoops()
}

// relayFor returns the relay loop that carries session id, starting the
// process's loops on first use. A session always goes to the same loop;
// sessions are spread over the loops by id.
func relayFor(id uint64) (*relayLoop, error) {
	theRelaysOnce.Do(func() {
		for range relayLoops() {
			epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
			if err != nil {
				theRelayErr = fmt.Errorf("epoll_create1: %w", err)
				return
			}
			l := &relayLoop{
				epfd:   epfd,
				ends:   make(map[int32]*relayEnd),
				buf:    make([]byte, 64<<10),
				events: make([]unix.EpollEvent, 128),
			}
			theRelays = append(theRelays, l)
			go l.run()
		}
	})
	if len(theRelays) == 0 {
		return nil, theRelayErr
	}
	return theRelays[id%uint64(len(theRelays))], nil
}

// relayEnd is one socket of a relayed session.
type relayEnd struct {
	fd      int
	rs      *relayed
	peer    *relayEnd
	client  bool
	pending []byte // bytes for this socket that a write could not take yet
	paused  bool   // not reading: the peer has pending bytes
	mask    uint32 // the epoll events asked for
}

// relayed is a session the loop carries.
type relayed struct {
	s                *session
	client, upstream relayEnd
	in               *pgproto3.Backend // decodes the client's messages from feed
	feed             feedReader
	maxBody          int
	partial          []byte // the start of an incomplete client message
	draining         bool   // finish once the pending bytes are written
	done             chan error

	// tenancy is set for a session under tenancy, whose messages the
	// loop hands to the session's own handlers (tenantloop_linux.go);
	// served counts the client messages it handled.
	tenancy    bool
	served     int
	terminated bool // the client sent Terminate
	loop       *relayLoop

	mu     sync.Mutex
	closed bool // the loop has closed the descriptors, or given them back
}

// relayable reports whether the session can move to the relay loop: a pure
// passthrough session over plain TCP on both sides, with nothing read from
// either socket that has not been handled yet (pgproto3 buffers what it
// reads; those bytes must not be left behind).
func (s *session) relayable() bool {
	if s.decl.tenancy || s.clientTLS || s.srv.goroutineRelay {
		return false
	}
	_, okc := s.client.(*net.TCPConn)
	_, oku := s.upstream.(*net.TCPConn)
	return okc && oku && s.clientRd.n == s.clientConsumed && s.upstreamRd.n == s.upstreamConsumed &&
		!s.clientOut.pending() && !s.upstreamOut.pending()
}

// serveRelayed hands the session's sockets to the relay loop and waits until
// the session ends. ok is false when the hand-over could not be made and
// nothing was moved: the caller then serves the session itself.
func (s *session) serveRelayed() (ok bool, err error) {
	l, err := relayFor(s.id)
	if err != nil {
		s.log.Debug().Err(err).Msg("relay loop unavailable")
		return false, nil
	}
	cfd, err := dupFD(s.client)
	if err != nil {
		return false, nil
	}
	ufd, err := dupFD(s.upstream)
	if err != nil {
		unix.Close(cfd)
		return false, nil
	}
	rs := &relayed{s: s, maxBody: s.srv.cfg.Listen.MaxMessageSize, done: make(chan error, 1)}
	rs.client = relayEnd{fd: cfd, rs: rs, peer: &rs.upstream, client: true}
	rs.upstream = relayEnd{fd: ufd, rs: rs, peer: &rs.client}
	rs.in = pgproto3.NewBackend(&rs.feed, nil)
	rs.in.SetMaxBodyLen(rs.maxBody)
	// From here on the duplicates are the sockets: closing the net.Conns
	// takes them out of Go's poller without closing the connections.
	s.relayed.Store(rs)
	s.client.Close()
	s.upstream.Close()
	if s.closed.Load() {
		rs.shutdown() // close raced the hand-over: end at once
	}
	if err := l.add(rs); err != nil {
		rs.closeFDs()
		return true, fmt.Errorf("relay: %w", err)
	}
	return true, <-rs.done
}

// dupFD duplicates the socket of conn.
func dupFD(conn net.Conn) (int, error) {
	sc, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	cerr := sc.Control(func(raw uintptr) {
		fd, err = unix.FcntlInt(raw, unix.F_DUPFD_CLOEXEC, 0)
	})
	if cerr != nil {
		return -1, cerr
	}
	return fd, err
}

// add registers both sockets of rs. Everything the loop reads of rs is set
// before the loop can find it in ends.
//
// It holds l.mu until both are registered, so the loop cannot serve (and
// finish) the session while it is half registered: an event that arrives
// meanwhile waits for the lock.
func (l *relayLoop) add(rs *relayed) error {
	rs.client.mask, rs.upstream.mask = unix.EPOLLIN, unix.EPOLLIN
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, e := range []*relayEnd{&rs.client, &rs.upstream} {
		ev := unix.EpollEvent{Events: e.mask, Fd: int32(e.fd)}
		if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, e.fd, &ev); err != nil {
			if i == 1 {
				unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, rs.client.fd, nil)
			}
			return err
		}
	}
	l.ends[int32(rs.client.fd)] = &rs.client
	l.ends[int32(rs.upstream.fd)] = &rs.upstream
	return nil
}

// shutdown ends a relayed session from outside the loop: the loop sees
// both sockets shut down and finishes the session.
func (rs *relayed) shutdown() {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if !rs.closed {
		unix.Shutdown(rs.client.fd, unix.SHUT_RDWR)
		unix.Shutdown(rs.upstream.fd, unix.SHUT_RDWR)
	}
}

// closeFDs closes both sockets, once.
func (rs *relayed) closeFDs() {
	rs.mu.Lock()
	was := rs.closed
	rs.closed = true
	rs.mu.Unlock()
	if !was {
		unix.Close(rs.client.fd)
		unix.Close(rs.upstream.fd)
	}
}

// yieldEvery bounds how long the loop runs without passing through the
// scheduler. Its system calls do not count as being scheduled, so under
// steady load the runtime's monitor (sysmon) soon sees a goroutine that has
// run for over 10 ms, and from then on takes its P away at every epoll_wait
// and wakes every 20 µs to do so. Yielding a little more often keeps the
// monitor idle: 7-10% more pgbench -S throughput through the loop, measured
// alternated against a loop that does not yield (and against one locked to
// its thread, which was no better).
const yieldEvery = 8 * time.Millisecond

func (l *relayLoop) run() {
	last := time.Now()
	for {
		if now := time.Now(); now.Sub(last) > yieldEvery {
			last = now
			runtime.Gosched()
		}
		n, err := unix.EpollWait(l.epfd, l.events, -1)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			// Cannot happen with a valid epfd and buffer; without a loop no
			// relayed session could make progress, so say so loudly.
			panic(fmt.Sprintf("pgcloak relay: epoll_wait: %v", err))
		}
		for _, ev := range l.events[:n] {
			l.mu.Lock()
			e := l.ends[ev.Fd]
			l.mu.Unlock()
			if e != nil {
				l.handle(e, ev.Events)
			}
		}
	}
}

// handle serves one event of one socket. A panic ends that session only.
func (l *relayLoop) handle(e *relayEnd, events uint32) {
	rs := e.rs
	defer func() {
		if r := recover(); r != nil {
			rs.s.log.Error().Interface("panic", r).Str("stack", stack()).Msg("relay panicked")
			l.refuse(rs, fmt.Errorf("panic: %v", r))
		}
	}()
	if events&unix.EPOLLOUT != 0 && len(e.pending) > 0 {
		if err := l.writePending(e); err != nil {
			l.finish(rs, nil) // the peer is gone
			return
		}
		if len(e.pending) == 0 && rs.draining {
			l.finish(rs, nil)
			return
		}
	}
	if events&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR) == 0 || e.paused && events&(unix.EPOLLHUP|unix.EPOLLERR) == 0 {
		return
	}
	if rs.tenancy {
		l.readTenancy(e)
		return
	}
	n, err := unix.Read(e.fd, l.buf)
	if l.readEnded(e, n, err) {
		return
	}
	if !e.client {
		if err := l.write(e.peer, l.buf[:n]); err != nil {
			l.finish(rs, nil)
		}
		return
	}
	l.fromClient(rs, l.buf[:n])
}

// readEnded reports whether a read of e's socket gave nothing to relay: it
// would block (the event was stale), or the stream ended or was reset, a
// disconnect, not a fault, which ends the session once the bytes still
// owed to the client are out.
func (l *relayLoop) readEnded(e *relayEnd, n int, err error) bool {
	if err == unix.EAGAIN || err == unix.EINTR {
		return true
	}
	if n > 0 && err == nil {
		return false
	}
	rs := e.rs
	if !e.client && len(rs.client.pending) > 0 && err == nil {
		rs.draining = true
		l.forget(e)
		return true
	}
	l.finish(rs, nil)
	return true
}

// frontendTypes are the message types pgproto3's Backend decodes; it
// refuses any other type as soon as it has read the header.
const frontendTypes = "BCDEFfdcHPpQSX"

// fromClient frames and checks what the client sent and forwards every
// complete message; an incomplete one waits in rs.partial.
func (l *relayLoop) fromClient(rs *relayed, data []byte) {
	src := data
	if len(rs.partial) > 0 {
		rs.partial = append(rs.partial, data...)
		src = rs.partial
	}
	off, count, bad := 0, 0, false
	for len(src)-off >= 5 {
		size := int(int32(binary.BigEndian.Uint32(src[off+1:])))
		if size < 4 || size-4 > rs.maxBody || !strings.ContainsRune(frontendTypes, rune(src[off])) {
			// pgproto3 refuses the header on its own, before the body.
			bad = true
			break
		}
		if len(src)-off < 1+size {
			break
		}
		off += 1 + size
		count++
	}
	rs.feed.b = src[:off]
	if bad {
		rs.feed.b = src[:off+5]
		count++
	}
	terminated := false
	for i, end := 0, 0; i < count; i++ {
		msg, err := rs.in.Receive()
		if err != nil {
			l.refuse(rs, protocolViolation("invalid message from client: %v", err))
			return
		}
		end += 1 + int(binary.BigEndian.Uint32(src[end+1:]))
		if _, ok := msg.(*pgproto3.Terminate); ok {
			// What follows a Terminate is never forwarded.
			off, terminated = end, true
			break
		}
	}
	if len(rs.feed.b) != 0 && !terminated {
		l.refuse(rs, errors.New("relay: framing and decoding disagree"))
		return
	}
	rs.feed.b = nil
	if err := l.write(&rs.upstream, src[:off]); err != nil {
		l.finish(rs, nil)
		return
	}
	if terminated {
		l.afterTerminate(rs)
		return
	}
	rest := src[off:]
	switch {
	case cap(rs.partial) > 1<<20:
		// After a large message: do not keep its buffer for the session.
		rs.partial = append([]byte(nil), rest...)
	default:
		rs.partial = append(rs.partial[:0], rest...) // may overlap: copy is a memmove
	}
}

// afterTerminate ends a session whose client sent Terminate, once what is
// owed upstream is written; the client is no longer read.
func (l *relayLoop) afterTerminate(rs *relayed) {
	if len(rs.upstream.pending) == 0 {
		l.finish(rs, nil)
		return
	}
	rs.draining = true
	l.forget(&rs.client)
}

// refuse reports err to the client, as the goroutine relay's fail does, and
// ends the session; nothing of the batch that held the bad message is
// forwarded.
func (l *relayLoop) refuse(rs *relayed, err error) {
	if buf, eerr := errorResponse(err, rs.s.id).Encode(nil); eerr == nil && len(rs.client.pending) == 0 {
		unix.Write(rs.client.fd, buf) // best effort, as fail's is
	}
	l.finish(rs, err)
}

// write sends data to e's socket. What the socket cannot take now waits in
// e.pending, and the peer is not read until it is written.
func (l *relayLoop) write(e *relayEnd, data []byte) error {
	if len(e.pending) > 0 {
		e.pending = append(e.pending, data...)
		return nil
	}
	n, err := writeAll(e.fd, data)
	if err == unix.EAGAIN {
		e.pending = append(e.pending[:0], data[n:]...)
		l.setMask(e, e.mask|unix.EPOLLOUT)
		e.peer.paused = true
		l.setMask(e.peer, e.peer.mask&^unix.EPOLLIN)
		return nil
	}
	return err
}

// writeAll writes data to fd until it is all written, the socket would
// block (EAGAIN) or fails, and says how much it wrote.
func writeAll(fd int, data []byte) (int, error) {
	done := 0
	for done < len(data) {
		n, err := unix.Write(fd, data[done:])
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return done, err
		}
		done += n
	}
	return done, nil
}

// writePending writes what waits for e's socket; once all of it is
// written, the peer is read again.
func (l *relayLoop) writePending(e *relayEnd) error {
	n, err := writeAll(e.fd, e.pending)
	e.pending = e.pending[n:]
	if err == unix.EAGAIN {
		return nil
	}
	if err != nil {
		return err
	}
	e.pending = nil
	l.setMask(e, e.mask&^unix.EPOLLOUT)
	if !e.rs.draining {
		e.peer.paused = false
		l.setMask(e.peer, e.peer.mask|unix.EPOLLIN)
	}
	return nil
}

// forget stops watching e's socket, whose peer is done with it: a socket
// at end of stream or reset stays readable (EPOLLHUP, EPOLLERR cannot be
// masked), and watching it would spin.
func (l *relayLoop) forget(e *relayEnd) {
	e.mask = 0
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, e.fd, nil)
}

func (l *relayLoop) setMask(e *relayEnd, mask uint32) {
	if mask == e.mask {
		return
	}
	e.mask = mask
	ev := unix.EpollEvent{Events: mask, Fd: int32(e.fd)}
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, e.fd, &ev)
}

// finish ends a relayed session: both sockets are closed (PostgreSQL sees
// the client go, as with the goroutine relay) and the session's goroutine
// gets err.
func (l *relayLoop) finish(rs *relayed, err error) {
	l.mu.Lock()
	_, live := l.ends[int32(rs.client.fd)]
	if live {
		delete(l.ends, int32(rs.client.fd))
		delete(l.ends, int32(rs.upstream.fd))
	}
	l.mu.Unlock()
	if !live {
		return
	}
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, rs.client.fd, nil)
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, rs.upstream.fd, nil)
	rs.closeFDs()
	rs.done <- err
}

// defaultRelayLoops is one relay loop per four cores the process may use,
// at least one (doc.go, "Relay loops and cores").
func defaultRelayLoops() int { return max(1, runtime.GOMAXPROCS(0)/4) }
