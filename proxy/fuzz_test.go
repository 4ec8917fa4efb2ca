package proxy

import (
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgcloak/pgcloak/config"
	"github.com/rs/zerolog"
)

// fakeUpstream is a minimal in-memory-speed server for fuzzing the client
// loop: it accepts any login and answers each Query and Sync with
// ReadyForQuery. Real behaviour is tested against PostgreSQL; this only
// keeps fuzz iterations cheap.
type fakeUpstream struct {
	ln net.Listener
	wg sync.WaitGroup
}

func startFakeUpstream(tb testing.TB) *fakeUpstream {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	u := &fakeUpstream{ln: ln}
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.wg.Add(1)
			go func() {
				defer u.wg.Done()
				u.serve(c)
			}()
		}
	}()
	tb.Cleanup(func() { ln.Close(); u.wg.Wait() })
	return u
}

func (u *fakeUpstream) serve(c net.Conn) {
	defer c.Close()
	be := pgproto3.NewBackend(c, c)
	msg, err := be.ReceiveStartupMessage()
	if err != nil {
		return
	}
	if _, ok := msg.(*pgproto3.StartupMessage); !ok {
		return
	}
	be.Send(&pgproto3.AuthenticationOk{})
	be.Send(&pgproto3.ParameterStatus{Name: "server_version", Value: "15.0"})
	be.Send(&pgproto3.BackendKeyData{ProcessID: 4242, SecretKey: []byte{9, 9, 9, 9}})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if be.Flush() != nil {
		return
	}
	for {
		msg, err := be.Receive()
		if err != nil {
			return
		}
		switch msg.(type) {
		case *pgproto3.Query:
			be.Send(&pgproto3.EmptyQueryResponse{})
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		case *pgproto3.Sync:
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		case *pgproto3.Terminate:
			return
		default:
			continue
		}
		if be.Flush() != nil {
			return
		}
	}
}

func fuzzSession(tb testing.TB, addr string) (net.Conn, *pgproto3.Frontend, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	fe := pgproto3.NewFrontend(conn, conn)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "fuzz"}})
	if err := fe.Flush(); err != nil {
		conn.Close()
		return nil, nil, err
	}
	for {
		msg, err := fe.Receive()
		if err != nil {
			conn.Close()
			return nil, nil, err
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			return conn, fe, nil
		}
	}
}

// FuzzClientLoop feeds arbitrary bytes into one session after startup. The
// proxy must not panic, must answer only with relayed messages or a
// pgcloak ErrorResponse, and must leave a second session working.
func FuzzClientLoop(f *testing.F) {
	up := startFakeUpstream(f)
	srv, err := NewServer(Config{
		Listen:   config.Listen{MaxMessageSize: 1 << 16},
		Upstream: config.Upstream{Address: up.ln.Addr().String(), ConnectTimeout: time.Second},
	}, zerolog.Nop(), Deps{})
	if err != nil {
		f.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	go srv.Serve(ln)
	f.Cleanup(func() { srv.Close() })
	addr := ln.Addr().String()

	bystander, bfe, err := fuzzSession(f, addr)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { bystander.Close() })

	seed := func(msgs ...pgproto3.FrontendMessage) []byte {
		var b []byte
		for _, m := range msgs {
			b, _ = m.Encode(b)
		}
		return b
	}
	f.Add(seed(&pgproto3.Query{String: "select 1"}))
	f.Add(seed(&pgproto3.Parse{Name: "s", Query: "select $1"}, &pgproto3.Bind{PreparedStatement: "s", Parameters: [][]byte{[]byte("1")}}, &pgproto3.Execute{}, &pgproto3.Sync{}))
	f.Add(seed(&pgproto3.CopyData{Data: []byte("1\t2\n")}, &pgproto3.CopyDone{}, &pgproto3.Flush{}))
	f.Add(seed(&pgproto3.FunctionCall{Function: 764, Arguments: [][]byte{{0, 0, 0, 1}}}))
	f.Add(frame('Q', 0x7fffffff, nil))
	f.Add(frame('B', 8, []byte{0, 0, 0xff, 0xff}))
	f.Add([]byte{0})

	f.Fuzz(func(t *testing.T, data []byte) {
		conn, fe, err := fuzzSession(t, addr)
		if err != nil {
			t.Fatalf("startup: %v", err)
		}
		defer conn.Close()
		conn.Write(data)
		conn.(*net.TCPConn).CloseWrite()
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		for {
			msg, err := fe.Receive()
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Fatalf("session neither answered nor closed within 2s")
				}
				break
			}
			if e, ok := msg.(*pgproto3.ErrorResponse); ok && !strings.HasPrefix(e.Message, "pgcloak: ") {
				t.Fatalf("error not from pgcloak: %q", e.Message)
			}
		}
		bystander.SetDeadline(time.Now().Add(5 * time.Second))
		bfe.Send(&pgproto3.Query{String: "select 1"})
		if err := bfe.Flush(); err != nil {
			t.Fatalf("bystander write: %v", err)
		}
		for {
			msg, err := bfe.Receive()
			if err != nil {
				t.Fatalf("bystander disturbed: %v", err)
			}
			if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
				break
			}
		}
	})
}
