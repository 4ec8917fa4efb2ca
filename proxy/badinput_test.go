package proxy

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgcloak/pgcloak/testenv"
)

// rawSession opens a connection through the proxy as the trust user and
// reads until the first ReadyForQuery.
func rawSession(t *testing.T, p *testProxy) (net.Conn, *pgproto3.Frontend) {
	t.Helper()
	conn, err := net.Dial("tcp", p.addr)
	fatalIf(t, err, "dial")
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	fe := pgproto3.NewFrontend(conn, conn)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": testenv.TrustUser, "database": "postgres"}})
	fatalIf(t, fe.Flush(), "startup")
	readUntilReady(t, fe)
	return conn, fe
}

func frame(typ byte, length int32, body []byte) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(length))
	return append(b, body...)
}

func TestBadClientInput(t *testing.T) {
	pg := testenv.Shared(t)
	p := startProxy(t, pg) // MaxMessageSize is 1 MiB in tests
	bystander := connect(t, p.superURL("postgres"))

	checkBystander := func(t *testing.T) {
		t.Helper()
		var n int
		fatalIf(t, bystander.QueryRow(ctxT(t), `select 40 + 2`).Scan(&n), "bystander query")
		mustEqual(t, "bystander result", n, 42)
	}

	afterStartup := []struct {
		name string
		data []byte
	}{
		{"absurd length", frame('Q', 0x7fffffff, nil)},
		{"just over the cap", frame('d', 1<<20+5, nil)},
		{"negative length", frame('Q', -5, nil)},
		{"length below 4", frame('S', 2, nil)},
		{"unknown message type", frame('z', 4, nil)},
		{"malformed Bind", frame('B', 8, []byte{0, 0, 0xff, 0xff})},
		{"malformed Parse", frame('P', 6, []byte{'x', 'y'})},
		{"query without terminator", frame('Q', 7, []byte("abc"))},
		{"garbage", bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 64)},
	}
	for _, tc := range afterStartup {
		t.Run(tc.name, func(t *testing.T) {
			conn, fe := rawSession(t, p)
			_, err := conn.Write(tc.data)
			fatalIf(t, err, "write")
			expectFatal(t, fe, "08P01")
			checkBystander(t)
		})
	}

	startupCases := []struct {
		name string
		data []byte
	}{
		{"startup length too large", []byte{0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0}},
		{"startup length too small", []byte{0, 0, 0, 2}},
		{"unknown startup code", []byte{0, 0, 0, 8, 0x12, 0x34, 0x56, 0x78}},
		{"startup without terminator", append([]byte{0, 0, 0, 16, 0, 3, 0, 0}, []byte("userxxxx")...)},
	}
	for _, tc := range startupCases {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", p.addr)
			fatalIf(t, err, "dial")
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			conn.Write(tc.data)
			expectFatal(t, pgproto3.NewFrontend(conn, conn), "08P01")
			checkBystander(t)
		})
	}

	t.Run("truncated message then close", func(t *testing.T) {
		conn, _ := rawSession(t, p)
		conn.Write(frame('Q', 100, []byte("select")))
		conn.(*net.TCPConn).CloseWrite()
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(conn); err != nil {
			t.Errorf("proxy did not close the truncated session: %v", err)
		}
		checkBystander(t)
	})

	t.Run("unauthenticated client that never finishes", func(t *testing.T) {
		conn, err := net.Dial("tcp", p.addr)
		fatalIf(t, err, "dial")
		defer conn.Close()
		conn.Write([]byte{0, 0})
		checkBystander(t)
	})
}

func TestSlowClientDoesNotHurtOthers(t *testing.T) {
	pg := testenv.Shared(t)
	p := startProxy(t, pg)
	bystander := connect(t, p.superURL("postgres"))

	conn, fe := rawSession(t, p)
	// About 200 MB of results that the client never reads.
	fe.Send(&pgproto3.Query{String: `select repeat('x', 2000) from generate_series(1, 100000)`})
	fatalIf(t, fe.Flush(), "send query")
	for i := range 20 {
		var n int
		fatalIf(t, bystander.QueryRow(ctxT(t), `select $1::int`, i).Scan(&n), "bystander query %d", i)
		mustEqual(t, "bystander result", n, i)
		time.Sleep(10 * time.Millisecond)
	}
	conn.Close()
	// The stuck session must end once its client is gone; startProxy's
	// cleanup checks that no goroutine is left behind.
}

// TestPassthroughAllocs proves the relay path allocates nothing per message
// once warm: a DataRow received by pgproto3 and queued in an outbox.
func TestPassthroughAllocs(t *testing.T) {
	row := &pgproto3.DataRow{Values: [][]byte{[]byte("42"), []byte("hello"), nil}}
	one, err := row.Encode(nil)
	fatalIf(t, err, "encode")
	stream := bytes.Repeat(one, 4096)
	r := bytes.NewReader(stream)
	fr := &flushingReader{r: r}
	fe := pgproto3.NewFrontend(fr, nil)
	out := newOutbox(io.Discard)
	fr.beforeRead = out.flush
	relay := func() {
		msg, err := fe.Receive()
		if err != nil {
			r.Reset(stream)
			return
		}
		out.send(msg)
	}
	for range 200 {
		relay()
	}
	if got := testing.AllocsPerRun(2000, relay); got != 0 {
		t.Errorf("allocations per relayed DataRow: got %v, want 0", got)
	}
}
