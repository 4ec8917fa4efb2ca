//go:build linux

package proxy

import (
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/testenv"
)

// relayedCount counts the proxy's registered sessions, and those the relay
// loop carries.
func relayedCount(p *testProxy) (relayed, total int) {
	p.srv.mu.Lock()
	defer p.srv.mu.Unlock()
	for s := range p.srv.sessions {
		total++
		if s.relayed.Load() != nil {
			relayed++
		}
	}
	return relayed, total
}

// waitRelayed waits until want sessions are registered and all of them
// are carried by the relay loop.
func waitRelayed(t *testing.T, p *testProxy, want int) {
	t.Helper()
	waitSessions(t, p, want, want)
}

// waitSessions waits until total sessions are registered, relayed of them
// carried by the relay loop.
func waitSessions(t *testing.T, p *testProxy, relayed, total int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r, n := relayedCount(p)
		if r == relayed && n == total {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("relayed sessions: got %d of %d, want %d of %d", r, n, relayed, total)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRelayLoop drives passthrough sessions carried by the relay loop:
// messages and results larger than its read buffer, a message that arrives
// one byte at a time, a pipeline, COPY in both directions, a bad message
// in a batch, a backend terminated under the client, and Close.
func TestRelayLoop(t *testing.T) {
	pg := testenv.Shared(t)
	p := startProxy(t, pg)
	conn := connect(t, p.superURL("postgres"))
	waitRelayed(t, p, 1)

	t.Run("large query and result", func(t *testing.T) {
		big := strings.Repeat("x", 300<<10) // several reads of 64 KiB each way
		var got string
		fatalIf(t, conn.QueryRow(ctxT(t), `select $1::text || '`+big+`'`, "y").Scan(&got), "query")
		mustEqual(t, "result", got, "y"+big)
		var n int
		fatalIf(t, conn.QueryRow(ctxT(t), `select count(*) from (select repeat('z', 1000) from generate_series(1, 5000)) s`).Scan(&n), "count")
		mustEqual(t, "rows", n, 5000)
		rows, err := conn.Query(ctxT(t), `select repeat('z', 1000) from generate_series(1, 5000)`)
		fatalIf(t, err, "query rows")
		n = 0
		for rows.Next() {
			n++
		}
		fatalIf(t, rows.Err(), "rows")
		mustEqual(t, "rows read", n, 5000)
	})

	t.Run("pipeline and copy", func(t *testing.T) {
		b := &pgx.Batch{}
		for i := range 200 {
			b.Queue(`select $1::int`, i)
		}
		br := conn.SendBatch(ctxT(t), b)
		for i := range 200 {
			var n int
			fatalIf(t, br.QueryRow().Scan(&n), "batch %d", i)
			mustEqual(t, "batch result", n, i)
		}
		fatalIf(t, br.Close(), "batch close")

		_, err := conn.Exec(ctxT(t), `create temp table relay_copy (n int, s text)`)
		fatalIf(t, err, "create")
		src := make([][]any, 20000)
		for i := range src {
			src[i] = []any{i, strings.Repeat("c", i%100)}
		}
		n, err := conn.CopyFrom(ctxT(t), pgx.Identifier{"relay_copy"}, []string{"n", "s"}, pgx.CopyFromRows(src))
		fatalIf(t, err, "copy from")
		mustEqual(t, "copied", n, int64(len(src)))
		var buf strings.Builder
		tag, err := conn.PgConn().CopyTo(ctxT(t), &buf, `copy relay_copy to stdout`)
		fatalIf(t, err, "copy to")
		mustEqual(t, "copied out", tag.RowsAffected(), int64(len(src)))
		mustEqual(t, "lines", strings.Count(buf.String(), "\n"), len(src))
	})

	t.Run("one byte at a time", func(t *testing.T) {
		raw, fe := rawSession(t, p)
		waitRelayed(t, p, 2)
		q, err := (&pgproto3.Query{String: "select 'split' || 42"}).Encode(nil)
		fatalIf(t, err, "encode")
		for _, c := range q {
			_, err := raw.Write([]byte{c})
			fatalIf(t, err, "write")
			time.Sleep(time.Millisecond)
		}
		var got string
		for {
			msg, err := fe.Receive()
			fatalIf(t, err, "receive")
			if dr, ok := msg.(*pgproto3.DataRow); ok {
				got = string(dr.Values[0])
			}
			if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
				break
			}
		}
		mustEqual(t, "result", got, "split42")
		raw.Close()
		waitRelayed(t, p, 1)
	})

	t.Run("bad message after good ones", func(t *testing.T) {
		raw, fe := rawSession(t, p)
		waitRelayed(t, p, 2)
		var batch []byte
		for range 3 {
			q, _ := (&pgproto3.Query{String: "select 1"}).Encode(nil)
			batch = append(batch, q...)
		}
		batch = append(batch, frame('B', 8, []byte{0, 0, 0xff, 0xff})...)
		_, err := raw.Write(batch)
		fatalIf(t, err, "write")
		for {
			msg, err := fe.Receive()
			fatalIf(t, err, "receive")
			if e, ok := msg.(*pgproto3.ErrorResponse); ok {
				mustEqual(t, "code", e.Code, "08P01")
				if !strings.HasPrefix(e.Message, "pgcloak: ") {
					t.Errorf("message %q: want the pgcloak: prefix", e.Message)
				}
				break
			}
		}
		waitRelayed(t, p, 1)
	})

	t.Run("backend terminated", func(t *testing.T) {
		victim := connect(t, p.superURL("postgres"))
		waitRelayed(t, p, 2)
		_, err := conn.Exec(ctxT(t), `select pg_terminate_backend($1)`, victim.PgConn().PID())
		fatalIf(t, err, "terminate")
		_, err = victim.Exec(ctxT(t), `select 1`)
		var pgErr *pgconn.PgError
		if err == nil || errors.As(err, &pgErr) && pgErr.Code != "57P01" {
			t.Errorf("query on a terminated backend: got %v, want 57P01 or a closed connection", err)
		}
		waitRelayed(t, p, 1)
	})

	t.Run("a client that stops reading, then reads", func(t *testing.T) {
		raw, fe := rawSession(t, p)
		waitRelayed(t, p, 2)
		// About 20 MB: far more than the sockets buffer, so the loop keeps
		// bytes pending and stops reading PostgreSQL until they are written.
		fe.Send(&pgproto3.Query{String: `select repeat('r', 2000) from generate_series(1, 10000)`})
		fatalIf(t, fe.Flush(), "send")
		time.Sleep(300 * time.Millisecond)
		rows, size := 0, 0
		for {
			msg, err := fe.Receive()
			fatalIf(t, err, "receive after %d rows", rows)
			if dr, ok := msg.(*pgproto3.DataRow); ok {
				rows++
				size += len(dr.Values[0])
			}
			if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
				break
			}
		}
		mustEqual(t, "rows", rows, 10000)
		mustEqual(t, "bytes", size, 2000*10000)
		// Meanwhile and after, the bystander is served.
		var n int
		fatalIf(t, conn.QueryRow(ctxT(t), `select 7`).Scan(&n), "bystander")
		mustEqual(t, "bystander", n, 7)
		raw.Close()
		waitRelayed(t, p, 1)
	})

	t.Run("clients that leave at once", func(t *testing.T) {
		// Health checks log in and send Terminate right after
		// ReadyForQuery, racing the hand-over to the loop.
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 25 {
					c, err := net.Dial("tcp", p.addr)
					if err != nil {
						t.Errorf("worker %d, %d: dial: %v", w, i, err)
						return
					}
					c.SetDeadline(time.Now().Add(10 * time.Second))
					fe := pgproto3.NewFrontend(c, c)
					fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": testenv.TrustUser, "database": "postgres"}})
					fe.Flush()
					for {
						msg, err := fe.Receive()
						if err != nil {
							t.Errorf("worker %d, %d: %v", w, i, err)
							break
						}
						if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
							break
						}
					}
					fe.Send(&pgproto3.Terminate{})
					fe.Flush()
					c.Close()
				}
			}()
		}
		wg.Wait()
		waitRelayed(t, p, 1)
		var n int
		fatalIf(t, conn.QueryRow(ctxT(t), `select 8`).Scan(&n), "bystander")
		mustEqual(t, "bystander", n, 8)
	})

	t.Run("close ends relayed sessions", func(t *testing.T) {
		q := startProxy(t, pg)
		c := connect(t, q.superURL("postgres"))
		waitRelayed(t, q, 1)
		done := make(chan struct{})
		go func() { q.srv.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not end a relayed session within 5s")
		}
		if err := c.Ping(ctxT(t)); err == nil {
			t.Error("ping after Close: got nil, want an error")
		}
	})

	// The bystander is still fine.
	var n int
	fatalIf(t, conn.QueryRow(ctxT(t), `select 40 + 2`).Scan(&n), "final query")
	mustEqual(t, "final", n, 42)
}

// TestRelayLoopEligibility: sessions over TLS, or with
// PGCLOAK_RELAY=goroutines, stay on the goroutine relay; plain sessions,
// under tenancy or not, reach the relay loop.
func TestRelayLoopEligibility(t *testing.T) {
	pg := testenv.Shared(t)
	check := func(t *testing.T, p *testProxy, url string, want int) {
		t.Helper()
		c := connect(t, url)
		var n int
		fatalIf(t, c.QueryRow(ctxT(t), `select 1`).Scan(&n), "query")
		relayed, total := relayedCount(p)
		mustEqual(t, "sessions", total, 1)
		mustEqual(t, "relayed", relayed, want)
	}
	// Every authentication method leaves nothing buffered, so every login
	// reaches the loop.
	for _, u := range []struct{ user, password string }{
		{testenv.ScramUser, testenv.ScramPassword},
		{testenv.MD5User, testenv.MD5Password},
		{testenv.PasswordUser, testenv.PasswordPassword},
		{testenv.TrustUser, ""},
	} {
		t.Run("relayed after "+u.user, func(t *testing.T) {
			p := startProxy(t, pg)
			check(t, p, p.url(u.user, u.password, "postgres"), 1)
		})
	}
	t.Run("relayed after SSLRequest answered N", func(t *testing.T) {
		// What libpq's default sslmode=prefer does against a proxy
		// without TLS: SSLRequest, 'N', then the StartupMessage on the
		// same connection.
		p := startProxy(t, pg)
		c, err := net.Dial("tcp", p.addr)
		fatalIf(t, err, "dial")
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		ssl, _ := (&pgproto3.SSLRequest{}).Encode(nil)
		_, err = c.Write(ssl)
		fatalIf(t, err, "SSLRequest")
		answer := make([]byte, 1)
		_, err = io.ReadFull(c, answer)
		fatalIf(t, err, "answer")
		mustEqual(t, "answer", string(answer), "N")
		fe := pgproto3.NewFrontend(c, c)
		fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": testenv.TrustUser, "database": "postgres"}})
		fatalIf(t, fe.Flush(), "startup")
		readUntilReady(t, fe)
		waitRelayed(t, p, 1)
	})
	t.Run("goroutines by request", func(t *testing.T) {
		t.Setenv("PGCLOAK_RELAY", "goroutines")
		p := startProxy(t, pg)
		check(t, p, p.superURL("postgres"), 0)
	})
	t.Run("tenancy", func(t *testing.T) {
		// Sessions under tenancy are carried by the loop too, for as
		// long as their statements need nothing but relaying
		// (tenantloop_linux.go).
		p := startProxy(t, pg, func(c *Config) { c.Tenancy.UnscopedRoles = []string{"*"} })
		check(t, p, p.superURL("postgres"), 1)
	})
	t.Run("tls", func(t *testing.T) {
		_, certFile, keyFile, err := testenv.WriteTLSCerts(t.TempDir())
		fatalIf(t, err, "certs")
		p := startProxy(t, pg, func(c *Config) {
			c.Listen.TLS = &config.ListenTLS{CertFile: certFile, KeyFile: keyFile}
		})
		check(t, p, p.superURL("postgres", "sslmode=require"), 0)
		// The same proxy puts a plain session on the loop.
		connect(t, p.superURL("postgres"))
		waitSessions(t, p, 1, 2)
	})
}
