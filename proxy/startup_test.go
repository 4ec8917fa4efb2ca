package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/testenv"
)

func splitHostPort(t *testing.T, addr string) (string, string) {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	fatalIf(t, err, "split %s", addr)
	return host, port
}

func TestAuthenticationRelay(t *testing.T) {
	pg := testenv.Shared(t)
	p := startProxy(t, pg)
	users := []struct{ method, user, password string }{
		{"scram-sha-256", testenv.ScramUser, testenv.ScramPassword},
		{"md5", testenv.MD5User, testenv.MD5Password},
		{"password", testenv.PasswordUser, testenv.PasswordPassword},
		{"trust", testenv.TrustUser, ""},
	}
	for _, u := range users {
		t.Run(u.method+"/right password", func(t *testing.T) {
			conn := connect(t, p.url(u.user, u.password, "postgres"))
			var who string
			fatalIf(t, conn.QueryRow(ctxT(t), `select current_user`).Scan(&who), "current_user")
			mustEqual(t, "current_user", who, u.user)
		})
		if u.method == "trust" {
			continue
		}
		t.Run(u.method+"/wrong password", func(t *testing.T) {
			direct, directErr := pgx.Connect(ctxT(t), pg.URL(u.user, "wrong", "postgres"))
			if directErr == nil {
				direct.Close(context.Background())
				t.Fatal("direct login with a wrong password succeeded")
			}
			_, err := pgx.Connect(ctxT(t), p.url(u.user, "wrong", "postgres"))
			var pgErr, directPgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || !errors.As(directErr, &directPgErr) {
				t.Fatalf("got %v, want a PgError like direct %v", err, directErr)
			}
			mustEqual(t, "SQLSTATE", pgErr.Code, "28P01")
			mustEqual(t, "message", pgErr.Message, directPgErr.Message)
		})
	}
	t.Run("unknown database", func(t *testing.T) {
		_, err := pgx.Connect(ctxT(t), p.superURL("no_such_db"))
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "3D000" {
			t.Fatalf("got %v, want SQLSTATE 3D000", err)
		}
		mustEqual(t, "message", pgErr.Message, `database "no_such_db" does not exist`)
	})
	t.Run("psql with password", func(t *testing.T) {
		cmd := exec.Command(pg.Bin("psql"), "-X", "-At", "-c", "select current_user", p.url(testenv.ScramUser, testenv.ScramPassword, "postgres"))
		out, err := cmd.CombinedOutput()
		fatalIf(t, err, "psql: %s", out)
		mustEqual(t, "psql output", strings.TrimSpace(string(out)), testenv.ScramUser)
	})
}

// TestFailedLoginRelaysNothingAfter drives the wire by hand: after the
// upstream's 28P01 the proxy must close without relaying anything a client
// sends afterwards.
func TestFailedLoginRelaysNothingAfter(t *testing.T) {
	pg := testenv.Shared(t)
	p := startProxy(t, pg)
	conn, err := net.Dial("tcp", p.addr)
	fatalIf(t, err, "dial")
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fe := pgproto3.NewFrontend(conn, conn)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": testenv.PasswordUser, "database": "postgres"}})
	fatalIf(t, fe.Flush(), "send startup")
	msg, err := fe.Receive()
	fatalIf(t, err, "receive auth request")
	if _, ok := msg.(*pgproto3.AuthenticationCleartextPassword); !ok {
		t.Fatalf("got %T, want AuthenticationCleartextPassword", msg)
	}
	fe.Send(&pgproto3.PasswordMessage{Password: "wrong"})
	fe.Send(&pgproto3.Query{String: "select 1"})
	fatalIf(t, fe.Flush(), "send password")
	msg, err = fe.Receive()
	fatalIf(t, err, "receive error")
	if e, ok := msg.(*pgproto3.ErrorResponse); !ok || e.Code != "28P01" {
		t.Fatalf("got %#v, want ErrorResponse 28P01", msg)
	}
	if msg, err := fe.Receive(); err == nil {
		t.Fatalf("after a failed login got %T, want the connection closed", msg)
	}
}

func TestProtocolNegotiation(t *testing.T) {
	pg := testenv.Shared(t)
	p := startProxy(t, pg)

	t.Run("pgx asking for 3.2", func(t *testing.T) {
		conn := connect(t, p.superURL("postgres", "max_protocol_version=3.2"))
		var one int
		fatalIf(t, conn.QueryRow(ctxT(t), `select 1`).Scan(&one), "query")
		mustEqual(t, "result", one, 1)
	})
	t.Run("wire", func(t *testing.T) {
		conn, err := net.Dial("tcp", p.addr)
		fatalIf(t, err, "dial")
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		fe := pgproto3.NewFrontend(conn, conn)
		fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion32, Parameters: map[string]string{
			"user": testenv.TrustUser, "database": "postgres", "_pq_.test_option": "on",
		}})
		fatalIf(t, fe.Flush(), "send startup")
		msg, err := fe.Receive()
		fatalIf(t, err, "receive")
		npv, ok := msg.(*pgproto3.NegotiateProtocolVersion)
		if !ok {
			t.Fatalf("got %T, want NegotiateProtocolVersion", msg)
		}
		mustEqual(t, "newest minor", npv.NewestMinorProtocol, uint32(0))
		mustEqual(t, "unrecognized", strings.Join(npv.UnrecognizedOptions, ","), "_pq_.test_option")
		msg, err = fe.Receive()
		fatalIf(t, err, "receive")
		if _, ok := msg.(*pgproto3.AuthenticationOk); !ok {
			t.Fatalf("got %T, want AuthenticationOk", msg)
		}
	})
	t.Run("second startup message is a protocol violation", func(t *testing.T) {
		conn, err := net.Dial("tcp", p.addr)
		fatalIf(t, err, "dial")
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		fe := pgproto3.NewFrontend(conn, conn)
		startup := &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": testenv.TrustUser, "database": "postgres"}}
		fe.Send(startup)
		fatalIf(t, fe.Flush(), "send startup")
		readUntilReady(t, fe)
		fe.Send(startup)
		fatalIf(t, fe.Flush(), "send second startup")
		expectFatal(t, fe, "08P01")
	})
}

// readUntilReady reads until ReadyForQuery and returns the BackendKeyData.
func readUntilReady(t *testing.T, fe *pgproto3.Frontend) pgproto3.BackendKeyData {
	t.Helper()
	var key pgproto3.BackendKeyData
	for {
		msg, err := fe.Receive()
		fatalIf(t, err, "receive")
		switch m := msg.(type) {
		case *pgproto3.BackendKeyData:
			key = pgproto3.BackendKeyData{ProcessID: m.ProcessID, SecretKey: append([]byte(nil), m.SecretKey...)}
		case *pgproto3.ErrorResponse:
			t.Fatalf("error before ReadyForQuery: %s %s", m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			return key
		}
	}
}

// expectFatal reads until an ErrorResponse with code arrives (its message
// must start with "pgcloak:") and then expects the connection to close.
func expectFatal(t *testing.T, fe *pgproto3.Frontend, code string) {
	t.Helper()
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("connection ended (%v) before ErrorResponse %s", err, code)
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			mustEqual(t, "SQLSTATE", e.Code, code)
			if !strings.HasPrefix(e.Message, "pgcloak: ") {
				t.Errorf("message %q does not start with pgcloak:", e.Message)
			}
			break
		}
	}
	if msg, err := fe.Receive(); err == nil {
		t.Errorf("after the fatal error got %T, want the connection closed", msg)
	}
}

func TestClientTLS(t *testing.T) {
	pg := testenv.Shared(t)
	dir := t.TempDir()
	caFile, certFile, keyFile, err := testenv.WriteTLSCerts(dir)
	fatalIf(t, err, "certs")

	withTLS := func(require bool) func(*Config) {
		return func(c *Config) {
			c.Listen.TLS = &config.ListenTLS{CertFile: certFile, KeyFile: keyFile, Require: require}
		}
	}
	t.Run("verify-full", func(t *testing.T) {
		p := startProxy(t, pg, withTLS(false))
		conn := connect(t, p.superURL("postgres", "sslmode=verify-full", "sslrootcert="+caFile))
		if !conn.PgConn().Conn().(*tls.Conn).ConnectionState().HandshakeComplete {
			t.Error("TLS handshake not complete")
		}
		var one int
		fatalIf(t, conn.QueryRow(ctxT(t), "select 1").Scan(&one), "query")
	})
	t.Run("psql over TLS with scram", func(t *testing.T) {
		p := startProxy(t, pg, withTLS(false))
		cmd := exec.Command(pg.Bin("psql"), "-X", "-At", "-c", "select 'tls ok'",
			p.url(testenv.ScramUser, testenv.ScramPassword, "postgres", "sslmode=verify-full", "sslrootcert="+caFile))
		out, err := cmd.CombinedOutput()
		fatalIf(t, err, "psql: %s", out)
		mustEqual(t, "psql", strings.TrimSpace(string(out)), "tls ok")
	})
	t.Run("require refuses plaintext", func(t *testing.T) {
		p := startProxy(t, pg, withTLS(true))
		_, err := pgx.Connect(ctxT(t), p.superURL("postgres", "sslmode=disable"))
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "28000" || !strings.HasPrefix(pgErr.Message, "pgcloak: ") {
			t.Fatalf("got %v, want pgcloak error 28000", err)
		}
	})
	t.Run("no TLS configured answers N", func(t *testing.T) {
		p := startProxy(t, pg)
		_, err := pgx.Connect(ctxT(t), p.superURL("postgres", "sslmode=require"))
		if err == nil || !strings.Contains(err.Error(), "server refused TLS") {
			t.Fatalf("got %v, want server refused TLS", err)
		}
		conn := connect(t, p.superURL("postgres", "sslmode=prefer"))
		if _, ok := conn.PgConn().Conn().(*tls.Conn); ok {
			t.Error("sslmode=prefer: got a TLS connection from a proxy without TLS")
		}
	})
	t.Run("bytes after SSLRequest are not processed", func(t *testing.T) {
		p := startProxy(t, pg, withTLS(false))
		conn, err := net.Dial("tcp", p.addr)
		fatalIf(t, err, "dial")
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		ssl, _ := (&pgproto3.SSLRequest{}).Encode(nil)
		startup, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": testenv.TrustUser}}).Encode(nil)
		_, err = conn.Write(append(ssl, startup...)) // one write: injected before the handshake
		fatalIf(t, err, "write")
		b, err := io.ReadAll(conn)
		if len(b) > 0 && b[0] == 'S' {
			t.Fatalf("proxy answered S to an SSLRequest followed by plaintext (read %q, %v)", b, err)
		}
		if strings.Contains(string(b), "AuthenticationOk") || len(b) > 200 {
			t.Fatalf("proxy processed injected bytes: %q", b)
		}
	})
}

func TestUpstreamTLS(t *testing.T) {
	pg, err := testenv.Start(context.Background(), testenv.Options{TLS: true})
	fatalIf(t, err, "start TLS postgres")
	t.Cleanup(func() { pg.Stop() })
	for _, mode := range []config.SSLMode{config.SSLRequire, config.SSLVerifyFull} {
		t.Run(string(mode), func(t *testing.T) {
			p := startProxy(t, pg, func(c *Config) {
				c.Upstream.SSLMode = mode
				c.Upstream.RootCertFile = pg.CAFile
			})
			conn := connect(t, p.superURL("postgres"))
			var ssl bool
			fatalIf(t, conn.QueryRow(ctxT(t), `select ssl from pg_stat_ssl where pid = pg_backend_pid()`).Scan(&ssl), "pg_stat_ssl")
			mustEqual(t, "upstream session uses TLS", ssl, true)
		})
	}
	t.Run("follow", func(t *testing.T) {
		_, certFile, keyFile, err := testenv.WriteTLSCerts(t.TempDir())
		fatalIf(t, err, "certs")
		p := startProxy(t, pg, func(c *Config) {
			c.Upstream.SSLMode = config.SSLFollow
			c.Listen.TLS = &config.ListenTLS{CertFile: certFile, KeyFile: keyFile}
		})
		for _, tc := range []struct {
			sslmode string
			want    bool
		}{{"disable", false}, {"require", true}} {
			conn := connect(t, p.superURL("postgres", "sslmode="+tc.sslmode, "channel_binding=disable"))
			var ssl bool
			fatalIf(t, conn.QueryRow(ctxT(t), `select ssl from pg_stat_ssl where pid = pg_backend_pid()`).Scan(&ssl), "pg_stat_ssl")
			mustEqual(t, "client sslmode="+tc.sslmode+": upstream session uses TLS", ssl, tc.want)
		}
	})
	t.Run("channel binding", func(t *testing.T) {
		upstreamSSL := func(t *testing.T, conn *pgx.Conn) {
			t.Helper()
			var ssl bool
			fatalIf(t, conn.QueryRow(ctxT(t), `select ssl from pg_stat_ssl where pid = pg_backend_pid()`).Scan(&ssl), "pg_stat_ssl")
			mustEqual(t, "upstream session uses TLS", ssl, true)
		}
		// pgcloak presents PostgreSQL's own certificate: the client's
		// binding is to that certificate, so SCRAM-SHA-256-PLUS passes.
		same := startProxy(t, pg, func(c *Config) {
			c.Upstream.SSLMode = config.SSLFollow
			c.Listen.TLS = &config.ListenTLS{CertFile: pg.CertFile, KeyFile: pg.KeyFile}
		})
		for _, cb := range []string{"require", "prefer"} {
			upstreamSSL(t, connect(t, same.superURL("postgres", "sslmode=require", "channel_binding="+cb)))
		}
		// libpq's default is channel_binding=prefer: with -PLUS stripped it
		// would send the gs2 flag "y", which PostgreSQL rejects.
		out, err := exec.Command(pg.Bin("psql"), "-X", "-At", "-c", "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
			same.url(testenv.ScramUser, testenv.ScramPassword, "postgres", "sslmode=require")).CombinedOutput()
		fatalIf(t, err, "psql with channel_binding=prefer: %s", out)
		mustEqual(t, "psql: upstream session uses TLS", strings.TrimSpace(string(out)), "t")

		// Another certificate: the binding could not verify, so -PLUS is
		// not offered.
		_, certFile, keyFile, err := testenv.WriteTLSCerts(t.TempDir())
		fatalIf(t, err, "certs")
		other := startProxy(t, pg, func(c *Config) {
			c.Upstream.SSLMode = config.SSLFollow
			c.Listen.TLS = &config.ListenTLS{CertFile: certFile, KeyFile: keyFile}
		})
		if conn, err := pgx.Connect(ctxT(t), other.superURL("postgres", "sslmode=require", "channel_binding=require")); err == nil {
			conn.Close(ctxT(t))
			t.Fatal("channel_binding=require passed through a proxy presenting another certificate")
		}
		upstreamSSL(t, connect(t, other.superURL("postgres", "sslmode=require", "channel_binding=disable")))
	})
	t.Run("client certificates", func(t *testing.T) {
		own := pg.Clients[testenv.CertUser]
		p := startProxy(t, pg, func(c *Config) {
			c.Upstream.SSLMode = config.SSLFollow
			c.Listen.TLS = &config.ListenTLS{CertFile: pg.CertFile, KeyFile: pg.KeyFile, ClientCAFile: pg.CAFile}
			c.Upstream.ClientCerts = []config.ClientCert{{User: testenv.CertUser, CertFile: own.CertFile, KeyFile: own.KeyFile}}
		})
		certURL := func(c testenv.ClientFiles) string {
			params := []string{"sslmode=verify-full", "sslrootcert=" + pg.CAFile}
			if c.CertFile != "" {
				params = append(params, "sslcert="+c.CertFile, "sslkey="+c.KeyFile)
			}
			return p.url(testenv.CertUser, "", "postgres", params...)
		}

		// The client's own certificate: PostgreSQL's cert method sees the
		// one pgcloak presents for the same role.
		conn := connect(t, certURL(own))
		var user, dn string
		fatalIf(t, conn.QueryRow(ctxT(t), `select current_user, client_dn from pg_stat_ssl where pid = pg_backend_pid()`).Scan(&user, &dn), "pg_stat_ssl")
		mustEqual(t, "user", user, testenv.CertUser)
		mustEqual(t, "client certificate upstream", dn, "/CN="+testenv.CertUser)
		out, err := exec.Command(pg.Bin("psql"), "-X", "-At", "-c", "select current_user", certURL(own)).CombinedOutput()
		fatalIf(t, err, "psql with a client certificate: %s", out)
		mustEqual(t, "psql: user", strings.TrimSpace(string(out)), testenv.CertUser)

		// No certificate, a valid one for another name, or one naming
		// another name first and the user second (Go's CommonName is the
		// last, PostgreSQL's the first): pgcloak presents nothing, and
		// PostgreSQL refuses the login with its own error.
		for name, c := range map[string]testenv.ClientFiles{
			"no certificate":             {},
			"another name's certificate": pg.Clients[testenv.CertStranger],
			"two common names":           pg.Clients[testenv.CertTwoNames],
		} {
			_, err := pgx.Connect(ctxT(t), certURL(c))
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != pgerrcode.InvalidAuthorizationSpecification {
				t.Errorf("%s: got %v, want SQLSTATE 28000", name, err)
			}
		}

		// A certificate from a CA pgcloak does not trust fails the
		// handshake, as it does with PostgreSQL.
		other, err := testenv.WriteTLSFiles(t.TempDir(), testenv.CertUser)
		fatalIf(t, err, "certs")
		_, err = pgx.Connect(ctxT(t), certURL(other.Clients[testenv.CertUser]))
		if err == nil || !strings.Contains(err.Error(), "unknown certificate authority") {
			t.Errorf("certificate from an unknown CA: got %v, want a TLS alert: unknown certificate authority", err)
		}
	})
	t.Run("verify-full with the wrong CA fails", func(t *testing.T) {
		otherCA, _, _, err := testenv.WriteTLSCerts(t.TempDir())
		fatalIf(t, err, "certs")
		p := startProxy(t, pg, func(c *Config) {
			c.Upstream.SSLMode = config.SSLVerifyFull
			c.Upstream.RootCertFile = otherCA
		})
		_, err = pgx.Connect(ctxT(t), p.superURL("postgres"))
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "08001" {
			t.Fatalf("got %v, want 08001", err)
		}
	})
}

func TestCancel(t *testing.T) {
	pg := testenv.Shared(t)
	p := startProxy(t, pg)
	victim := connect(t, p.superURL("postgres"))
	bystander := connect(t, p.superURL("postgres"))
	ctx := ctxT(t)

	t.Run("BackendKeyData shows the real pid", func(t *testing.T) {
		var pid uint32
		fatalIf(t, victim.QueryRow(ctx, `select pg_backend_pid()`).Scan(&pid), "pid")
		mustEqual(t, "pid", victim.PgConn().PID(), pid)
	})

	t.Run("cancel reaches exactly one backend", func(t *testing.T) {
		bystanderDone := make(chan error, 1)
		go func() {
			_, err := bystander.Exec(ctx, `select pg_sleep(1.5)`)
			bystanderDone <- err
		}()
		qctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := victim.Exec(qctx, `select pg_sleep(30)`)
		if err == nil {
			t.Fatal("pg_sleep(30) was not cancelled")
		}
		if el := time.Since(start); el > 10*time.Second {
			t.Fatalf("cancel took %v", el)
		}
		if err := <-bystanderDone; err != nil {
			t.Fatalf("the other session's query was disturbed: %v", err)
		}
	})

	t.Run("wrong secret cancels nothing", func(t *testing.T) {
		done := make(chan error, 1)
		go func() {
			_, err := bystander.Exec(ctx, `select pg_sleep(1)`)
			done <- err
		}()
		time.Sleep(200 * time.Millisecond)
		conn, err := net.Dial("tcp", p.addr)
		fatalIf(t, err, "dial")
		buf, _ := (&pgproto3.CancelRequest{ProcessID: bystander.PgConn().PID(), SecretKey: []byte{1, 2, 3, 4}}).Encode(nil)
		conn.Write(buf)
		conn.Close() // dropped early, without waiting
		if err := <-done; err != nil {
			t.Fatalf("a cancel with a wrong secret disturbed the session: %v", err)
		}
	})
}

func TestShutdownDrains(t *testing.T) {
	pg := testenv.Shared(t)
	p := startProxy(t, pg)
	conn := connect(t, p.superURL("postgres"))
	ctx := ctxT(t)
	result := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, `select pg_sleep(0.5)`)
		result <- err
	}()
	time.Sleep(100 * time.Millisecond)
	sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	shutdownErr := make(chan error, 1)
	go func() { shutdownErr <- p.srv.Shutdown(sctx) }()
	if err := <-result; err != nil {
		t.Fatalf("in-flight query during shutdown: %v", err)
	}
	time.Sleep(100 * time.Millisecond)
	if _, err := pgx.Connect(ctx, p.superURL("postgres")); err == nil {
		t.Error("new connection accepted during shutdown")
	}
	conn.Close(ctx) // the session ends; Shutdown returns without closing it
	if err := <-shutdownErr; err != nil {
		t.Errorf("Shutdown: got %v, want nil", err)
	}
}

func TestShutdownDeadlineClosesSessions(t *testing.T) {
	pg := testenv.Shared(t)
	p := startProxy(t, pg)
	conn := connect(t, p.superURL("postgres"))
	sctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := p.srv.Shutdown(sctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown with an idle session: got %v, want deadline exceeded", err)
	}
	if _, err := conn.Exec(context.Background(), "select 1"); err == nil {
		t.Error("session still usable after shutdown deadline")
	}
}

func TestPsqlCopyLargeStream(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	p := startProxy(t, pg)
	dir := t.TempDir()
	f := filepath.Join(dir, "big.txt")
	var b strings.Builder
	for i := range 200000 {
		b.WriteString(strings.Repeat("y", 40))
		b.WriteString("\t")
		b.WriteString(string(rune('a' + i%26)))
		b.WriteString("\n")
	}
	fatalIf(t, os.WriteFile(f, []byte(b.String()), 0o644), "write")
	cmd := exec.Command(pg.Bin("psql"), "-X", "-v", "ON_ERROR_STOP=1", "-At",
		"-c", "create table big (a text, b text)",
		"-c", `\copy big from '`+f+`'`,
		"-c", "select count(*) from big",
		p.superURL(db))
	out, err := cmd.CombinedOutput()
	fatalIf(t, err, "psql: %s", out)
	if !strings.Contains(string(out), "200000") {
		t.Errorf("psql output: got %q, want a count of 200000", out)
	}
}

// TestUnencryptedDataAfterRequest: plaintext pipelined after an SSLRequest
// or GSSENCRequest, in the same write, before the client could have read
// the answer, is refused as PostgreSQL refuses it (08P01) and never acted
// on, whatever the answer.
func TestUnencryptedDataAfterRequest(t *testing.T) {
	pg := testenv.Shared(t)
	_, certFile, keyFile, err := testenv.WriteTLSCerts(t.TempDir())
	fatalIf(t, err, "certs")
	plain := startProxy(t, pg)
	withTLS := startProxy(t, pg, func(c *Config) {
		c.Listen.TLS = &config.ListenTLS{CertFile: certFile, KeyFile: keyFile}
	})
	ssl, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	gss, _ := (&pgproto3.GSSEncRequest{}).Encode(nil)
	startup, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": testenv.TrustUser, "database": "postgres"}}).Encode(nil)
	const sslMsg = "received unencrypted data after SSL request"
	const gssMsg = "received unencrypted data after GSSAPI encryption request"
	cases := []struct {
		name    string
		addr    string
		request []byte
		answer  byte // 0: no answer byte before the error
		message string
		prefix  string // "pgcloak: " through the proxy
	}{
		// PostgreSQL itself, to show the proxy answers as it does.
		{"PostgreSQL, SSL answered N", pg.Addr(), ssl, 'N', sslMsg, ""},
		{"proxy, SSL answered N", plain.addr, ssl, 'N', sslMsg, "pgcloak: "},
		{"proxy, GSS answered N", plain.addr, gss, 'N', gssMsg, "pgcloak: "},
		{"proxy with TLS, GSS answered N", withTLS.addr, gss, 'N', gssMsg, "pgcloak: "},
		// With TLS the proxy refuses before it answers S: nothing that
		// came in plaintext is taken into the handshake.
		{"proxy with TLS, SSL", withTLS.addr, ssl, 0, sslMsg, "pgcloak: "},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", c.addr)
			fatalIf(t, err, "dial")
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			_, err = conn.Write(append(append([]byte(nil), c.request...), startup...))
			fatalIf(t, err, "write")
			b, err := io.ReadAll(conn)
			if err != nil && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("read: %v (got %q)", err, b)
			}
			if c.answer != 0 {
				if len(b) == 0 || b[0] != c.answer {
					t.Fatalf("answer: got %q, want %q first", b, c.answer)
				}
				b = b[1:]
			}
			fe := pgproto3.NewFrontend(bytes.NewReader(b), io.Discard)
			msg, err := fe.Receive()
			fatalIf(t, err, "decode the answer %q", b)
			e, ok := msg.(*pgproto3.ErrorResponse)
			if !ok {
				t.Fatalf("got %T, want an ErrorResponse", msg)
			}
			mustEqual(t, "SQLSTATE", e.Code, pgerrcode.ProtocolViolation)
			mustEqual(t, "severity", e.Severity, "FATAL")
			mustEqual(t, "message", e.Message, c.prefix+c.message)
			if msg, err := fe.Receive(); err == nil {
				t.Errorf("after the error got %T, want nothing (the startup message was acted on)", msg)
			}
		})
	}
}
