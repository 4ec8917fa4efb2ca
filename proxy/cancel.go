package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// cancelKey is what a client's BackendKeyData holds: the upstream backend's
// real process id (so pg_stat_activity and pg_terminate_backend work) and a
// secret of the proxy's own. The upstream secret never leaves the proxy.
type cancelKey struct {
	pid    uint32
	secret uint32
}

// cancelTimeout bounds forwarding one CancelRequest upstream.
const cancelTimeout = 5 * time.Second

// issueCancelKey registers sess under its upstream pid and a fresh random
// secret and returns the key to show the client.
func (s *Server) issueCancelKey(sess *session, pid uint32) cancelKey {
	var b [4]byte
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if _, err := rand.Read(b[:]); err != nil {
			panic(err) // crypto/rand never fails on Linux
		}
		k := cancelKey{pid: pid, secret: binary.BigEndian.Uint32(b[:])}
		if _, taken := s.cancels[k]; !taken && k.secret != 0 {
			s.cancels[k] = sess
			return k
		}
	}
}

// forwardCancel handles a CancelRequest: if it names a live session by the
// key the proxy issued, the upstream backend serving that session gets a
// CancelRequest with its real key. Like PostgreSQL, the proxy answers the
// requester nothing either way; the requester's connection is closed by the
// caller, and dropping it early changes nothing here.
func (s *Server) forwardCancel(req *pgproto3.CancelRequest) {
	if len(req.SecretKey) != 4 {
		return
	}
	k := cancelKey{pid: req.ProcessID, secret: binary.BigEndian.Uint32(req.SecretKey)}
	s.mu.Lock()
	sess := s.cancels[k]
	s.mu.Unlock()
	if sess == nil {
		s.log.Debug().Uint32("pid", req.ProcessID).Msg("cancel request for unknown key ignored")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), cancelTimeout)
	defer cancel()
	conn, err := s.dialUpstream(ctx, s.upstreamTLSFor(false, "", ""))
	if err != nil {
		sess.log.Warn().Err(err).Msg("forward cancel: dial upstream")
		return
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(cancelTimeout))
	msg := &pgproto3.CancelRequest{ProcessID: sess.upstreamPID, SecretKey: sess.upstreamSecret}
	buf, err := msg.Encode(nil)
	if err != nil {
		return
	}
	if _, err := conn.Write(buf); err != nil {
		sess.log.Warn().Err(err).Msg("forward cancel: write")
		return
	}
	// PostgreSQL closes the connection once it has signalled the backend;
	// waiting for that keeps a quick follow-up query from racing the cancel.
	io.Copy(io.Discard, conn)
	sess.log.Debug().Msg("cancel request forwarded")
}

// dialUpstream opens a connection to the upstream server and, unless tc is
// nil, negotiates TLS on it with tc (see upstreamTLSFor).
func (s *Server) dialUpstream(ctx context.Context, tc *tls.Config) (net.Conn, error) {
	conn, err := s.connectUpstream(ctx)
	if err != nil {
		return nil, err
	}
	return s.upstreamHandshake(ctx, conn, tc)
}

// connectUpstream opens a TCP connection to the upstream server.
func (s *Server) connectUpstream(ctx context.Context) (net.Conn, error) {
	d := net.Dialer{Timeout: s.cfg.Upstream.ConnectTimeout, KeepAlive: 30 * time.Second}
	return d.DialContext(ctx, "tcp", s.cfg.Upstream.Address)
}

// upstreamHandshake negotiates TLS with tc on a connection from
// connectUpstream, and returns it as it is when tc is nil. It closes conn
// when it fails.
func (s *Server) upstreamHandshake(ctx context.Context, conn net.Conn, tc *tls.Config) (net.Conn, error) {
	if tc == nil {
		return conn, nil
	}
	deadline := time.Now().Add(s.cfg.Upstream.ConnectTimeout)
	conn.SetDeadline(deadline)
	buf, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	if _, err := conn.Write(buf); err != nil {
		conn.Close()
		return nil, err
	}
	var answer [1]byte
	if _, err := io.ReadFull(conn, answer[:]); err != nil {
		conn.Close()
		return nil, err
	}
	if answer[0] != 'S' {
		conn.Close()
		return nil, errUpstreamNoTLS
	}
	tconn := tls.Client(conn, tc)
	if err := tconn.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	tconn.SetDeadline(time.Time{})
	return tconn, nil
}

var errUpstreamNoTLS = errors.New("upstream server does not support TLS (sslmode requires it)")

// earlyDial is a session's upstream TCP connection, opened while the client
// is still negotiating SSL or GSS encryption: PostgreSQL forks the backend
// as it accepts, so the fork and the TCP handshake overlap the client's
// round trips instead of following them, as they would directly. It is
// opened only once a client sent an SSLRequest or GSSENCRequest, never for
// a CancelRequest.
type earlyDial struct {
	cancel context.CancelFunc
	done   chan struct{}
	conn   net.Conn
	err    error
	taken  bool
}

func (s *Server) dialEarly() *earlyDial {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Upstream.ConnectTimeout)
	d := &earlyDial{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(d.done)
		d.conn, d.err = s.connectUpstream(ctx)
	}()
	return d
}

// take waits for the connection.
func (d *earlyDial) take() (net.Conn, error) {
	<-d.done
	d.taken = true
	d.cancel()
	return d.conn, d.err
}

// discard closes the connection unless it was taken; PostgreSQL logs
// nothing for a connection that sends nothing. It is safe on nil.
func (d *earlyDial) discard() {
	if d == nil || d.taken {
		return
	}
	d.cancel()
	<-d.done
	if d.conn != nil {
		d.conn.Close()
	}
}
