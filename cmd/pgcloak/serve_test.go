package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgcloak/pgcloak/testenv"
)

// serving is a `pgcloak serve` running in-process.
type serving struct {
	path           string // the configuration file
	listen         string
	stop           context.CancelFunc
	exited         chan int
	stdout, stderr *syncBuffer
}

// startServe runs serve with a configuration for database db on the shared
// server; edit may change the YAML. The test's cleanup stops it if the test
// did not.
func startServe(t *testing.T, pg *testenv.Postgres, db string, edit func(string) string) *serving {
	t.Helper()
	s := &serving{listen: freeAddr(t), exited: make(chan int, 1), stdout: new(syncBuffer), stderr: new(syncBuffer)}
	cfg := checkConfig(pg.Addr(), "disable", "", testenv.ScramUser, testenv.ScramPassword, db)
	cfg = strings.Replace(cfg, "address: 127.0.0.1:6432", "address: "+s.listen+"\n  shutdown_timeout: 5s", 1)
	cfg = strings.Replace(cfg, "level: warn", "level: info", 1)
	if edit != nil {
		cfg = edit(cfg)
	}
	path := writeFile(t, "pgcloak.yaml", cfg)
	s.path = path

	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	go func() { s.exited <- run(ctx, []string{"serve", "-c", path}, s.stdout, s.stderr) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-s.exited:
		case <-time.After(15 * time.Second):
			t.Error("serve did not stop within 15s")
		}
		t.Logf("serve stderr:\n%s", s.stderr.String())
	})
	return s
}

// connect connects through the proxy as the testenv SCRAM role; params is
// appended to the connection URL's query.
func (s *serving) connect(t *testing.T, db, params string) *pgx.Conn {
	t.Helper()
	return s.dial(t, testenv.ScramUser, testenv.ScramPassword, db, params)
}

// connectAs connects through the proxy as a tenant's login role, without
// TLS and with the simple protocol.
func (s *serving) connectAs(t *testing.T, role, password, db string) *pgx.Conn {
	t.Helper()
	return s.dial(t, role, password, db, "sslmode=disable&default_query_exec_mode=simple_protocol")
}

// dial connects through the proxy as user until it works, failing if serve
// exits first. params is the connection URL's query. The connection is
// closed when the test ends.
func (s *serving) dial(t *testing.T, user, password, db, params string) *pgx.Conn {
	t.Helper()
	url := fmt.Sprintf("postgres://%s:%s@%s/%s?%s", user, password, s.listen, db, params)
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		conn, err := pgx.Connect(ctx, url)
		cancel()
		if err == nil {
			t.Cleanup(func() { conn.Close(context.Background()) })
			return conn
		}
		select {
		case code := <-s.exited:
			s.exited <- code
			t.Fatalf("serve exited with %d before accepting connections", code)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("connect through the proxy as %s: %v", user, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// shutdown stops serve the way SIGTERM does and returns its exit code.
func (s *serving) shutdown(t *testing.T) int {
	t.Helper()
	s.stop()
	select {
	case code := <-s.exited:
		s.exited <- code // for the cleanup
		return code
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not stop within 15s of shutdown")
		return -1
	}
}

// TestServe runs serve in-process, queries through it, sends it SIGHUP, and
// stops it the way a signal would (by cancelling its context).
func TestServe(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	s := startServe(t, pg, db, nil)
	conn := s.connect(t, db, "sslmode=disable")

	var one int
	if err := conn.QueryRow(t.Context(), "select 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("select 1 through the proxy: got %d, %v; want 1, nil", one, err)
	}

	if err := syscall.Kill(syscall.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the SIGHUP log line", func() bool { return strings.Contains(s.stderr.String(), "SIGHUP: configuration reloaded") })
	if err := conn.QueryRow(t.Context(), "select 1").Scan(&one); err != nil {
		t.Fatalf("query after SIGHUP: %v", err)
	}
	conn.Close(context.Background())

	if code := s.shutdown(t); code != 0 {
		t.Errorf("exit code: got %d, want 0", code)
	}
	if !strings.Contains(s.stderr.String(), `"message":"pgcloak stopped"`) {
		t.Errorf("log: want a JSON line saying pgcloak stopped")
	}
	if strings.Contains(s.stdout.String()+s.stderr.String(), testenv.ScramPassword) {
		t.Errorf("output contains the upstream password")
	}
}

// TestServeTLS runs serve with listen.tls required and checks that a client
// gets TLS and that a plaintext client is refused.
func TestServeTLS(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	_, certFile, keyFile, err := testenv.WriteTLSCerts(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s := startServe(t, pg, db, func(cfg string) string {
		return strings.Replace(cfg, "listen:\n", "listen:\n  tls:\n    cert_file: "+certFile+"\n    key_file: "+keyFile+"\n    require: true\n", 1)
	})

	conn := s.connect(t, db, "sslmode=require")
	if _, ok := conn.PgConn().Conn().(*tls.Conn); !ok {
		t.Errorf("client connection: got %T, want *tls.Conn", conn.PgConn().Conn())
	}
	var one int
	if err := conn.QueryRow(t.Context(), "select 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("select 1 over TLS: got %d, %v; want 1, nil", one, err)
	}

	url := fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", testenv.ScramUser, testenv.ScramPassword, s.listen, db)
	if c, err := pgx.Connect(t.Context(), url); err == nil {
		c.Close(context.Background())
		t.Error("plaintext client: got a connection, want it refused")
	} else if !strings.Contains(err.Error(), "TLS is required") {
		t.Errorf("plaintext client: got %v, want the proxy's TLS-required error", err)
	}
}

// waitFor polls cond for up to 10 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestServeReload: SIGHUP applies a changed tenancy section to new
// sessions, while an open session keeps its tenant.
func TestServeReload(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	tenancy := "tenancy:\n  login:\n    roles:\n      " + testenv.ScramUser + ": acme\n"
	// The tenant role is not upstream.user, which installs the verified
	// tenant pin in schema pgcloak.
	if err := pg.Exec(t.Context(), db, "grant create on database "+db+" to "+testenv.TrustUser); err != nil {
		t.Fatal(err)
	}
	s := startServe(t, pg, db, func(cfg string) string {
		return strings.Replace(cfg, "  user: "+testenv.ScramUser+"\n", "  user: "+testenv.TrustUser+"\n", 1) + tenancy
	})
	tenantOf := func(conn *pgx.Conn) string {
		var tenant string
		if err := conn.QueryRow(t.Context(), "select pgcloak.current_tenant()").Scan(&tenant); err != nil {
			t.Fatalf("tenant: %v", err)
		}
		return tenant
	}
	before := s.connect(t, db, "sslmode=disable")
	if got := tenantOf(before); got != "acme" {
		t.Fatalf("tenant before the reload: got %q, want acme", got)
	}
	cfg, err := os.ReadFile(s.path)
	if err != nil {
		t.Fatal(err)
	}
	changed := strings.Replace(string(cfg), ": acme", ": globex", 1)
	changed = strings.Replace(changed, "shutdown_timeout: 5s", "shutdown_timeout: 6s", 1)
	if err := os.WriteFile(s.path, []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the reload log line", func() bool { return strings.Contains(s.stderr.String(), "SIGHUP: configuration reloaded") })
	if !strings.Contains(s.stderr.String(), `"section":"listen"`) {
		t.Errorf("log: want a warning that the listen section needs a restart")
	}
	after := s.connect(t, db, "sslmode=disable")
	if got := tenantOf(after); got != "globex" {
		t.Errorf("tenant of a new session: got %q, want globex", got)
	}
	if got := tenantOf(before); got != "acme" {
		t.Errorf("tenant of the open session: got %q, want acme", got)
	}

	// An invalid file changes nothing.
	if err := os.WriteFile(s.path, []byte("listen: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(syscall.Getpid(), syscall.SIGHUP)
	waitFor(t, "the failed reload log line", func() bool { return strings.Contains(s.stderr.String(), "SIGHUP: configuration not reloaded") })
	if got := tenantOf(s.connect(t, db, "sslmode=disable")); got != "globex" {
		t.Errorf("tenant after an invalid reload: got %q, want globex", got)
	}
}
