//go:build linux

package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// FuzzRelayFraming checks the relay loop's client side against pgproto3
// reading the same bytes in one piece: whatever the bytes and however they
// are split into reads, the loop forwards exactly the complete, valid
// messages up to a Terminate and nothing after it; and when pgproto3 finds
// a bad message, the loop refuses the session and forwards nothing from the
// batch that held it, nor anything later.
func FuzzRelayFraming(f *testing.F) {
	enc := func(msgs ...encoder) []byte {
		var b []byte
		for _, m := range msgs {
			b, _ = m.Encode(b)
		}
		return b
	}
	f.Add(enc(&pgproto3.Query{String: "select 1"}, &pgproto3.Sync{}), uint8(3))
	f.Add(enc(&pgproto3.Parse{Query: "select $1"}, &pgproto3.Bind{Parameters: [][]byte{[]byte("x")}},
		&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{}), uint8(7))
	f.Add(enc(&pgproto3.Query{String: "select 1"}, &pgproto3.Terminate{}, &pgproto3.Query{String: "after"}), uint8(0))
	f.Add(append(enc(&pgproto3.Query{String: "ok"}), frame('B', 8, []byte{0, 0, 0xff, 0xff})...), uint8(1))
	f.Add(frame('Q', 0x7fffffff, nil), uint8(2))
	f.Add(frame('z', 4, nil), uint8(5))
	f.Add(enc(&pgproto3.CopyData{Data: bytes.Repeat([]byte("d"), 300)}, &pgproto3.CopyDone{}), uint8(11))

	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		const maxBody = 4096
		want, wantErr, terminated := decodeAll(data, maxBody)

		l, rs, upstreamPeer := relayForTest(t, maxBody)
		size := int(chunk)%64 + 1
		for off := 0; off < len(data) && !rs.finished(l); off += size {
			l.fromClient(rs, data[off:min(off+size, len(data))])
		}
		got := drain(t, upstreamPeer)

		switch {
		case wantErr:
			if !bytes.HasPrefix(want, got) {
				t.Fatalf("bad input: forwarded %q, not a prefix of the valid messages %q", got, want)
			}
			if !rs.finished(l) {
				t.Fatal("bad input: session not ended")
			}
			var ce *clientError
			if err := <-rs.done; !errors.As(err, &ce) || ce.code != "08P01" {
				t.Fatalf("bad input: session ended with %v, want 08P01", err)
			}
		default:
			if !bytes.Equal(got, want) {
				t.Fatalf("forwarded %q, want %q", got, want)
			}
			if rs.finished(l) != terminated {
				t.Fatalf("session ended: %v, want %v (Terminate seen)", rs.finished(l), terminated)
			}
		}
	})
}

// decodeAll reads data with pgproto3 as the goroutine relay does, and
// returns the bytes of the complete messages up to and including a
// Terminate; bad is set when pgproto3 refuses a message before the data
// runs out.
func decodeAll(data []byte, maxBody int) (valid []byte, bad, terminated bool) {
	var feed feedReader
	feed.b = data
	be := pgproto3.NewBackend(&feed, nil)
	be.SetMaxBodyLen(maxBody)
	end := 0
	for {
		msg, err := be.Receive()
		if errors.Is(err, errFeedEmpty) {
			return data[:end], false, false // waits for more
		}
		if err != nil {
			return data[:end], true, false
		}
		end += 1 + int(binary.BigEndian.Uint32(data[end+1:]))
		if _, ok := msg.(*pgproto3.Terminate); ok {
			return data[:end], false, true
		}
	}
}

// relayForTest is a relayed session whose client side the test feeds
// directly; what it forwards arrives at the returned socket.
func relayForTest(t *testing.T, maxBody int) (*relayLoop, *relayed, int) {
	t.Helper()
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(epfd) })
	pair := func() (int, int) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fds[1]) })
		return fds[0], fds[1]
	}
	clientFD, _ := pair()
	upstreamFD, upstreamPeer := pair()
	l := &relayLoop{epfd: epfd, ends: make(map[int32]*relayEnd), buf: make([]byte, 64<<10)}
	s := &session{id: 1, log: zerolog.Nop()}
	rs := &relayed{s: s, maxBody: maxBody, done: make(chan error, 1)}
	rs.client = relayEnd{fd: clientFD, rs: rs, peer: &rs.upstream, client: true}
	rs.upstream = relayEnd{fd: upstreamFD, rs: rs, peer: &rs.client}
	rs.in = pgproto3.NewBackend(&rs.feed, nil)
	rs.in.SetMaxBodyLen(maxBody)
	if err := l.add(rs); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.finish(rs, nil) }) // closes both ends unless the loop did
	return l, rs, upstreamPeer
}

// finished reports whether the loop has ended rs.
func (rs *relayed) finished(l *relayLoop) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, live := l.ends[int32(rs.client.fd)]
	return !live
}

// drain reads what is waiting on fd.
func drain(t *testing.T, fd int) []byte {
	t.Helper()
	var out []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(fd, buf)
		if n > 0 {
			out = append(out, buf[:n]...)
			continue
		}
		if err == nil || err == unix.EAGAIN {
			return out
		}
		t.Fatalf("read: %v", err)
	}
}
