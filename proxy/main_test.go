package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/testenv"
	"github.com/rs/zerolog"
)

func TestMain(m *testing.M) {
	os.Exit(testenv.RunMain(m))
}

// testProxy is a Server listening on a loopback port for one test.
type testProxy struct {
	srv  *Server
	addr string
	pg   *testenv.Postgres
}

// startProxy starts a proxy in front of pg; mutate adjusts its config. The
// proxy is closed when the test ends, and the test fails if any session
// goroutine outlives it.
func startProxy(t testing.TB, pg *testenv.Postgres, mutate ...func(*Config)) *testProxy {
	t.Helper()
	return startProxyDeps(t, pg, Deps{}, nil, mutate...)
}

// startProxyDeps is startProxy with dependencies; when logs is non-nil the
// proxy's log is copied into it as well as into the test log.
func startProxyDeps(t testing.TB, pg *testenv.Postgres, deps Deps, logs io.Writer, mutate ...func(*Config)) *testProxy {
	t.Helper()
	before := runtime.NumGoroutine()
	cfg := Config{
		Listen: config.Listen{
			Address:         "127.0.0.1:0",
			MaxMessageSize:  1 << 20,
			ShutdownTimeout: time.Second,
		},
		Upstream: config.Upstream{
			Address:        pg.Addr(),
			SSLMode:        config.SSLDisable,
			ConnectTimeout: 5 * time.Second,
		},
	}
	for _, m := range mutate {
		m(&cfg)
	}
	var w io.Writer = zerolog.NewTestWriter(t)
	if logs != nil {
		sb, ok := logs.(*syncBuffer)
		if !ok {
			sb = &syncBuffer{b: logs.(*bytes.Buffer)}
		}
		w = io.MultiWriter(w, sb)
	}
	srv, err := NewServer(cfg, zerolog.New(w).Level(zerolog.DebugLevel), deps)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	if err := srv.LoadCatalog(context.Background()); err != nil {
		t.Fatalf("LoadCatalog: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; err != ErrServerClosed {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
		waitGoroutines(t, before)
	})
	return &testProxy{srv: srv, addr: ln.Addr().String(), pg: pg}
}

// waitGoroutines fails the test if the goroutine count does not return to
// at most want within a few seconds (lingering client libraries get a small
// allowance).
func waitGoroutines(t testing.TB, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := runtime.NumGoroutine()
		if got <= want+2 {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Errorf("goroutines: got %d, want at most %d after the proxy closed:\n%s", got, want+2, buf[:n])
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// url returns a connection URL through the proxy.
func (p *testProxy) url(user, password, database string, params ...string) string {
	u := url.URL{
		Scheme: "postgres",
		User:   url.UserPassword(user, password),
		Host:   p.addr,
		Path:   "/" + database,
	}
	q := "sslmode=disable"
	if len(params) > 0 {
		q = strings.Join(params, "&")
		if !strings.Contains(q, "sslmode=") {
			q += "&sslmode=disable"
		}
	}
	u.RawQuery = q
	return u.String()
}

// superURL connects through the proxy as the testenv superuser.
func (p *testProxy) superURL(database string, params ...string) string {
	return p.url("postgres", testenv.SuperuserPassword, database, params...)
}

func ctxT(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func connect(t testing.TB, connString string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctxT(t), connString)
	if err != nil {
		t.Fatalf("connect through proxy: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func mustExec(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(ctxT(t), sql, args...); err != nil {
		t.Fatalf("exec %q: %v", sql, err)
	}
}

func mustEqual[T comparable](t testing.TB, what string, got, want T) {
	t.Helper()
	if got != want {
		t.Errorf("%s: got %v, want %v", what, got, want)
	}
}

func fatalIf(t testing.TB, err error, format string, args ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(format, args...), err)
	}
}
