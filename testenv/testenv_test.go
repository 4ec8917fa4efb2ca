package testenv

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// orphanHelperEnv makes the test binary start a server, print its postmaster
// pid, port and directory, and sleep until killed (TestKilledOwner).
const orphanHelperEnv = "TESTENV_ORPHAN_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(orphanHelperEnv) == "1" {
		os.Exit(orphanHelper())
	}
	os.Exit(RunMain(m))
}

func orphanHelper() int {
	p, err := Start(context.Background(), Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Printf("%d %d %s\n", p.serverPID(), p.Port, p.Dir)
	time.Sleep(10 * time.Minute)
	return 3
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// connect opens a pgx connection and closes it when t ends.
func connect(t *testing.T, connString string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(testContext(t), connString)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func queryString(t *testing.T, conn *pgx.Conn, sql string) string {
	t.Helper()
	var s string
	if err := conn.QueryRow(testContext(t), sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

// sqlState returns the SQLSTATE of a PostgreSQL error inside err, or "".
func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// firstAuthMessage sends a StartupMessage for user and returns the type of
// the server's first reply, which names the authentication method pg_hba.conf
// chose.
func firstAuthMessage(t *testing.T, addr, user string) string {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	fe := pgproto3.NewFrontend(conn, conn)
	fe.Send(&pgproto3.StartupMessage{
		ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters:      map[string]string{"user": user, "database": "postgres"},
	})
	if err := fe.Flush(); err != nil {
		t.Fatalf("send startup: %v", err)
	}
	msg, err := fe.Receive()
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	return fmt.Sprintf("%T", msg)
}

func TestShared(t *testing.T) {
	p := Shared(t)
	if again := Shared(t); again != p {
		t.Errorf("second Shared: got %p, want the first server %p", again, p)
	}
	if p.Host != "127.0.0.1" {
		t.Errorf("Host: got %q, want 127.0.0.1", p.Host)
	}
	if want := fmt.Sprintf("127.0.0.1:%d", p.Port); p.Addr() != want {
		t.Errorf("Addr: got %q, want %q", p.Addr(), want)
	}
	if !isExecutable(filepath.Join(p.BinDir, "initdb")) {
		t.Errorf("BinDir %s: got no initdb in it, want one", p.BinDir)
	}
	if _, err := os.Stat(filepath.Join(p.DataDir, "PG_VERSION")); err != nil {
		t.Errorf("DataDir: got %v, want an initialized data directory", err)
	}
	if p.CAFile != "" {
		t.Errorf("CAFile without TLS: got %q, want empty", p.CAFile)
	}
}

func TestAuthentication(t *testing.T) {
	p := Shared(t)
	for _, tc := range []struct {
		name, user, password string
		wantAuth             string
	}{
		{"scram", ScramUser, ScramPassword, "*pgproto3.AuthenticationSASL"},
		{"md5", MD5User, MD5Password, "*pgproto3.AuthenticationMD5Password"},
		{"password", PasswordUser, PasswordPassword, "*pgproto3.AuthenticationCleartextPassword"},
		{"trust", TrustUser, "", "*pgproto3.AuthenticationOk"},
		{"superuser", SuperuserName, SuperuserPassword, "*pgproto3.AuthenticationSASL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := firstAuthMessage(t, p.Addr(), tc.user); got != tc.wantAuth {
				t.Errorf("authentication request: got %s, want %s", got, tc.wantAuth)
			}
			conn := connect(t, p.URL(tc.user, tc.password, "postgres"))
			if got := queryString(t, conn, "SELECT current_user"); got != tc.user {
				t.Errorf("current_user: got %q, want %q", got, tc.user)
			}
		})
	}

	for _, tc := range []struct{ name, user string }{
		{"wrong password/scram", ScramUser},
		{"wrong password/md5", MD5User},
		{"wrong password/password", PasswordUser},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := pgx.Connect(testContext(t), p.URL(tc.user, "not-the-password", "postgres"))
			if err == nil {
				conn.Close(context.Background())
				t.Fatal("connect: got success, want an authentication failure")
			}
			if got := sqlState(err); got != pgerrcode.InvalidPassword {
				t.Errorf("SQLSTATE: got %q (%v), want %q", got, err, pgerrcode.InvalidPassword)
			}
		})
	}

	t.Run("stored password forms", func(t *testing.T) {
		conn := connect(t, p.SuperuserURL("postgres"))
		for user, wantPrefix := range map[string]string{
			ScramUser: "SCRAM-SHA-256$",
			MD5User:   "md5",
		} {
			got := queryString(t, conn, "SELECT rolpassword FROM pg_authid WHERE rolname = '"+user+"'")
			if !strings.HasPrefix(got, wantPrefix) {
				t.Errorf("%s's stored password: got %.16q..., want prefix %q", user, got, wantPrefix)
			}
		}
	})
}

func TestExec(t *testing.T) {
	p := Shared(t)
	ctx := testContext(t)
	db := NewDatabase(t, p)

	t.Run("multiple statements", func(t *testing.T) {
		err := p.Exec(ctx, db, "CREATE TABLE items (n int); INSERT INTO items VALUES (1), (2), (3);")
		if err != nil {
			t.Fatalf("Exec: %v", err)
		}
		conn := connect(t, p.SuperuserURL(db))
		if got := queryString(t, conn, "SELECT sum(n)::text FROM items"); got != "6" {
			t.Errorf("sum: got %s, want 6", got)
		}
	})

	t.Run("error", func(t *testing.T) {
		err := p.Exec(ctx, db, "SELECT 1; SELECT * FROM no_such_table")
		if got := sqlState(err); got != pgerrcode.UndefinedTable {
			t.Errorf("SQLSTATE: got %q (%v), want %q", got, err, pgerrcode.UndefinedTable)
		}
	})
}

func TestDatabases(t *testing.T) {
	p := Shared(t)
	ctx := testContext(t)

	t.Run("create and drop", func(t *testing.T) {
		const name = "testenv Create-Drop" // needs quoting
		if err := p.CreateDatabase(ctx, name); err != nil {
			t.Fatalf("CreateDatabase: %v", err)
		}
		open := connect(t, p.URL(ScramUser, ScramPassword, name))
		if got := queryString(t, open, "SELECT current_database()"); got != name {
			t.Errorf("current_database: got %q, want %q", got, name)
		}
		// The open session must not stop the drop (WITH (FORCE)).
		if err := p.DropDatabase(ctx, name); err != nil {
			t.Fatalf("DropDatabase with a session open: %v", err)
		}
		_, err := pgx.Connect(ctx, p.SuperuserURL(name))
		if got := sqlState(err); got != pgerrcode.InvalidCatalogName {
			t.Errorf("connect after drop: got SQLSTATE %q (%v), want %q", got, err, pgerrcode.InvalidCatalogName)
		}
		if err := p.DropDatabase(ctx, name); err != nil {
			t.Errorf("second DropDatabase: got %v, want nil", err)
		}
	})

	t.Run("NewDatabase", func(t *testing.T) {
		var name string
		t.Run("inner", func(t *testing.T) {
			name = NewDatabase(t, p)
			if !strings.HasPrefix(name, "t_testdatabases_newdatabase_inner_") {
				t.Errorf("name: got %q, want it derived from the test name", name)
			}
			conn := connect(t, p.SuperuserURL(name))
			if got := queryString(t, conn, "SELECT current_database()"); got != name {
				t.Errorf("current_database: got %q, want %q", got, name)
			}
		})
		conn := connect(t, p.SuperuserURL("postgres"))
		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_database WHERE datname = $1", name).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("databases named %q after the test: got %d, want 0", name, n)
		}
	})
}

func TestDatabaseName(t *testing.T) {
	for _, tc := range []struct {
		test string
		seq  int64
		want string
	}{
		{"TestFoo", 1, "t_testfoo_1"},
		{"TestFoo/bar_Baz", 7, "t_testfoo_bar_baz_7"},
		{"TestX/#00/ünïcode--", 12, "t_testx_00_n_code_12"},
		{strings.Repeat("TestLong", 20), 123456, "t_testlongtestlongtestlongtestlongtestlo_123456"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			got := databaseName(tc.test, tc.seq)
			if got != tc.want {
				t.Errorf("databaseName(%q, %d): got %q, want %q", tc.test, tc.seq, got, tc.want)
			}
			if len(got) > 63 {
				t.Errorf("length: got %d, want at most 63", len(got))
			}
		})
	}
}

func TestBin(t *testing.T) {
	p := Shared(t)

	t.Run("psql", func(t *testing.T) {
		psql := p.Bin("psql")
		if !filepath.IsAbs(psql) {
			t.Fatalf("Bin(psql): got %q, want an absolute path", psql)
		}
		out, err := exec.CommandContext(testContext(t), psql, "-X", "-At", "-c", "SELECT 6 * 7", p.SuperuserURL("postgres")).CombinedOutput()
		if err != nil {
			t.Fatalf("psql: %v\n%s", err, out)
		}
		if got := strings.TrimSpace(string(out)); got != "42" {
			t.Errorf("psql output: got %q, want 42", got)
		}
	})

	t.Run("missing", func(t *testing.T) {
		if got := p.Bin("no-such-pg-tool"); got != "no-such-pg-tool" {
			t.Errorf("Bin(no-such-pg-tool): got %q, want the bare name", got)
		}
	})
}

// TestStartStop starts a private server with TLS and extra settings, after
// making it lose a race for its first port, and stops it.
func TestStartStop(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	takenPort := taken.Addr().(*net.TCPAddr).Port
	realFreePort := freePort
	picks := 0
	freePort = func() (int, error) {
		picks++
		if picks == 1 {
			return takenPort, nil
		}
		return realFreePort()
	}
	p, err := Start(testContext(t), Options{
		TLS:       true,
		ExtraConf: map[string]string{"work_mem": "7MB", "application_name": "it's quoted"},
	})
	freePort = realFreePort
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { p.Stop() })

	t.Run("port retry", func(t *testing.T) {
		if picks != 2 {
			t.Errorf("ports picked: got %d, want 2", picks)
		}
		if p.Port == takenPort {
			t.Errorf("Port: got the taken port %d, want another", p.Port)
		}
	})

	t.Run("TLS verify-full", func(t *testing.T) {
		conn := connect(t, p.TLSURL(ScramUser, ScramPassword, "postgres"))
		if got := queryString(t, conn, "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()"); got != "true" {
			t.Errorf("pg_stat_ssl.ssl: got %s, want true", got)
		}
	})

	t.Run("TLS with another CA", func(t *testing.T) {
		otherCA, _, _, err := WriteTLSCerts(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		connString := p.url(ScramUser, ScramPassword, "postgres", url.Values{"sslmode": {"verify-full"}, "sslrootcert": {otherCA}})
		conn, err := pgx.Connect(testContext(t), connString)
		if err == nil {
			conn.Close(context.Background())
			t.Fatal("connect: got success, want a certificate verification error")
		}
		var unknownAuthority x509.UnknownAuthorityError
		if !errors.As(err, &unknownAuthority) {
			t.Errorf("connect: got %v, want x509.UnknownAuthorityError", err)
		}
	})

	t.Run("plain connection still works", func(t *testing.T) {
		conn := connect(t, p.URL(ScramUser, ScramPassword, "postgres"))
		if got := queryString(t, conn, "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()"); got != "false" {
			t.Errorf("pg_stat_ssl.ssl: got %s, want false", got)
		}
	})

	t.Run("extra conf", func(t *testing.T) {
		conn := connect(t, p.SuperuserURL("postgres"))
		if got := queryString(t, conn, "SHOW work_mem"); got != "7MB" {
			t.Errorf("work_mem: got %s, want 7MB", got)
		}
		if got := queryString(t, conn, "SELECT reset_val FROM pg_settings WHERE name = 'application_name'"); got != "it's quoted" {
			t.Errorf("application_name: got %q, want %q", got, "it's quoted")
		}
		if got := queryString(t, conn, "SHOW fsync"); got != "off" {
			t.Errorf("fsync: got %s, want off", got)
		}
	})

	t.Run("stop", func(t *testing.T) {
		pid := p.serverPID()
		if pid == 0 {
			t.Fatal("server pid: got 0, want a running postmaster")
		}
		if err := p.Stop(); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		if _, err := os.Stat(p.Dir); !os.IsNotExist(err) {
			t.Errorf("Dir after Stop: got %v, want it removed", err)
		}
		if processAlive(pid) {
			t.Errorf("postmaster %d after Stop: got alive, want gone", pid)
		}
		if conn, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
			conn.Close()
			t.Errorf("dial %s after Stop: got a connection, want the port closed", p.Addr())
		}
		if err := p.Stop(); err != nil {
			t.Errorf("second Stop: got %v, want nil", err)
		}
	})
}

func TestStartWithoutBinaries(t *testing.T) {
	t.Setenv("PATH", "")
	realGlob := serverBinGlob
	serverBinGlob = filepath.Join(t.TempDir(), "postgresql", "*", "bin")
	t.Cleanup(func() { serverBinGlob = realGlob })

	p, err := Start(testContext(t), Options{})
	if err == nil {
		p.Stop()
		t.Fatal("Start: got a server, want an error")
	}
	if !errors.Is(err, ErrServerBinariesNotFound) {
		t.Errorf("Start: got %v, want ErrServerBinariesNotFound", err)
	}
	const want = "testenv: PostgreSQL server binaries (initdb, postgres) not found on PATH or under /usr/lib/postgresql/*/bin; install them with: apt-get install -y postgresql"
	if err.Error() != want {
		t.Errorf("message: got %q, want %q", err.Error(), want)
	}
}

func TestWriteTLSCerts(t *testing.T) {
	dir := t.TempDir()
	caFile, certFile, keyFile, err := WriteTLSCerts(dir)
	if err != nil {
		t.Fatalf("WriteTLSCerts: %v", err)
	}

	t.Run("modes", func(t *testing.T) {
		for path, want := range map[string]os.FileMode{caFile: 0o644, certFile: 0o644, keyFile: 0o600} {
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if got := fi.Mode().Perm(); got != want {
				t.Errorf("%s mode: got %v, want %v", filepath.Base(path), got, want)
			}
		}
	})

	t.Run("chain", func(t *testing.T) {
		roots := x509.NewCertPool()
		caPEM, err := os.ReadFile(caFile)
		if err != nil {
			t.Fatal(err)
		}
		if !roots.AppendCertsFromPEM(caPEM) {
			t.Fatal("ca.crt: got no certificate, want one")
		}
		certPEM, err := os.ReadFile(certFile)
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(certPEM)
		if block == nil {
			t.Fatal("server.crt: got no PEM block, want one")
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		for _, host := range []string{"127.0.0.1", "localhost", "::1"} {
			if _, err := cert.Verify(x509.VerifyOptions{DNSName: host, Roots: roots}); err != nil {
				t.Errorf("verify for %s: got %v, want nil", host, err)
			}
		}
		if _, err := cert.Verify(x509.VerifyOptions{DNSName: "example.com", Roots: roots}); err == nil {
			t.Error("verify for example.com: got nil, want a hostname error")
		}
	})

	t.Run("key", func(t *testing.T) {
		keyPEM, err := os.ReadFile(keyFile)
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(keyPEM)
		if block == nil || block.Type != "PRIVATE KEY" {
			t.Fatalf("server.key: got %v, want a PRIVATE KEY block", block)
		}
		if _, err := x509.ParsePKCS8PrivateKey(block.Bytes); err != nil {
			t.Errorf("server.key: got %v, want a PKCS #8 key", err)
		}
	})
}

func TestClientCertificateLogin(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, err := Start(ctx, Options{TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop() })

	login := func(certName string) error {
		u := p.TLSURL(CertUser, "", "postgres")
		if certName != "" {
			c := p.Clients[certName]
			u += "&" + url.Values{"sslcert": {c.CertFile}, "sslkey": {c.KeyFile}}.Encode()
		}
		conn, err := pgx.Connect(ctx, u)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		var user string
		if err := conn.QueryRow(ctx, "select current_user").Scan(&user); err != nil {
			return err
		}
		if user != CertUser {
			return fmt.Errorf("logged in as %q", user)
		}
		return nil
	}
	if err := login(CertUser); err != nil {
		t.Fatalf("login with %s's certificate: %v", CertUser, err)
	}
	for _, name := range []string{"", CertStranger, CertTwoNames} {
		var pgErr *pgconn.PgError
		if err := login(name); !errors.As(err, &pgErr) || pgErr.Code != pgerrcode.InvalidAuthorizationSpecification {
			t.Errorf("login as %s with certificate %q: got %v, want SQLSTATE 28000", CertUser, name, err)
		}
	}
}
