package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/testenv"
)

// checkConfig is a minimal valid configuration for upstream at addr.
func checkConfig(addr, sslmode, rootCert, user, password, database string) string {
	s := fmt.Sprintf(`listen:
  address: 127.0.0.1:6432
upstream:
  address: %s
  sslmode: %s
  user: %s
  password: %q
  database: %s
  connect_timeout: 10s
keys:
  local:
    master_key_file: master.key
log:
  level: warn
`, addr, sslmode, user, password, database)
	if rootCert != "" {
		s = strings.Replace(s, "  user:", "  root_cert_file: "+rootCert+"\n  user:", 1)
	}
	return s
}

func TestCheck(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)

	t.Run("ok", func(t *testing.T) {
		path := writeFile(t, "pgcloak.yaml", checkConfig(pg.Addr(), "disable", "", testenv.ScramUser, testenv.ScramPassword, db))
		r := pgcloak(t, "check", "-c", path)
		if r.code != 0 {
			t.Fatalf("exit code: got %d, want 0", r.code)
		}
		for _, want := range []string{
			"ok    config: " + path + " is valid",
			"ok    upstream: connected to " + pg.Addr() + " user=" + testenv.ScramUser + " database=" + db + " sslmode=disable",
			"ok    upstream server: PostgreSQL ",
			"encrypted tables: 0 declared (checks not yet implemented)",
			"check passed",
		} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("stdout: missing %q", want)
			}
		}
		if strings.Contains(r.output(), testenv.ScramPassword) {
			t.Errorf("output contains the upstream password")
		}
	})

	t.Run("wrong password", func(t *testing.T) {
		const wrong = "not-the-password-7c1f"
		path := writeFile(t, "pgcloak.yaml", checkConfig(pg.Addr(), "disable", "", testenv.ScramUser, wrong, db))
		r := pgcloak(t, "check", "-c", path)
		if r.code != 1 {
			t.Errorf("exit code: got %d, want 1", r.code)
		}
		for _, want := range []string{"FAIL  upstream:", "28P01", "check FAILED"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("stdout: missing %q", want)
			}
		}
		if strings.Contains(r.output(), wrong) {
			t.Errorf("output contains the password from the configuration")
		}
	})

	t.Run("unreachable", func(t *testing.T) {
		path := writeFile(t, "pgcloak.yaml", checkConfig(freeAddr(t), "disable", "", testenv.ScramUser, testenv.ScramPassword, db))
		r := pgcloak(t, "check", "-c", path)
		if r.code != 1 {
			t.Errorf("exit code: got %d, want 1", r.code)
		}
		if !strings.Contains(r.stdout, "FAIL  upstream:") {
			t.Errorf("stdout: missing the upstream failure")
		}
	})

	t.Run("listen tls", func(t *testing.T) {
		_, certFile, keyFile, err := testenv.WriteTLSCerts(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		cfg := checkConfig(pg.Addr(), "disable", "", testenv.ScramUser, testenv.ScramPassword, db)
		cfg = strings.Replace(cfg, "listen:\n", "listen:\n  tls:\n    cert_file: "+certFile+"\n    key_file: "+keyFile+"\n", 1)
		r := pgcloak(t, "check", "-c", writeFile(t, "pgcloak.yaml", cfg))
		if r.code != 0 {
			t.Errorf("exit code: got %d, want 0", r.code)
		}
		if want := "ok    listen: 127.0.0.1:6432, TLS certificate " + certFile + " loads"; !strings.Contains(r.stdout, want) {
			t.Errorf("stdout: missing %q", want)
		}
	})

	t.Run("listen tls files missing", func(t *testing.T) {
		cfg := checkConfig(pg.Addr(), "disable", "", testenv.ScramUser, testenv.ScramPassword, db)
		cfg = strings.Replace(cfg, "listen:\n", "listen:\n  tls:\n    cert_file: /nonexistent/server.crt\n    key_file: /nonexistent/server.key\n", 1)
		r := pgcloak(t, "check", "-c", writeFile(t, "pgcloak.yaml", cfg))
		if r.code != 1 {
			t.Errorf("exit code: got %d, want 1", r.code)
		}
		if !strings.Contains(r.stdout, "FAIL  listen: listen.tls: open /nonexistent/server.crt") {
			t.Errorf("stdout: missing the listen.tls failure")
		}
	})
}

// TestCheckUpstreamTLS runs check against a server with TLS, verifying its
// certificate (verify-full) and not (require).
func TestCheckUpstreamTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	pg, err := testenv.Start(ctx, testenv.Options{TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pg.Stop(); err != nil {
			t.Error(err)
		}
	})

	for _, tt := range []struct{ sslmode, rootCert string }{
		{"require", ""},
		{"verify-full", pg.CAFile},
	} {
		t.Run(tt.sslmode, func(t *testing.T) {
			path := writeFile(t, "pgcloak.yaml", checkConfig(pg.Addr(), tt.sslmode, tt.rootCert, testenv.ScramUser, testenv.ScramPassword, "postgres"))
			r := pgcloak(t, "check", "-c", path)
			if r.code != 0 {
				t.Fatalf("exit code: got %d, want 0", r.code)
			}
		})
	}

	t.Run("verify-full wrong CA", func(t *testing.T) {
		caFile, _, _, err := testenv.WriteTLSCerts(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		path := writeFile(t, "pgcloak.yaml", checkConfig(pg.Addr(), "verify-full", caFile, testenv.ScramUser, testenv.ScramPassword, "postgres"))
		r := pgcloak(t, "check", "-c", path)
		if r.code != 1 {
			t.Errorf("exit code: got %d, want 1", r.code)
		}
		if !strings.Contains(r.stdout, "certificate") {
			t.Errorf("stdout: want a certificate verification failure")
		}
	})
}

// TestConfigErrors checks that serve and check print config's own error,
// which names the file and line, unchanged, and exit 1.
func TestConfigErrors(t *testing.T) {
	const bad = `listen:
  address: 127.0.0.1:6432
upstream:
  adress: 127.0.0.1:5432
  password: hunter2-secret
log:
  level: loud
`
	path := writeFile(t, "bad.yaml", bad)
	_, loadErr := config.Load(path)
	var verr *config.ValidationError
	if !errors.As(loadErr, &verr) {
		t.Fatalf("config.Load: got %v, want a *config.ValidationError", loadErr)
	}

	for _, cmd := range []string{"check", "serve"} {
		t.Run(cmd, func(t *testing.T) {
			r := pgcloak(t, cmd, "-c", path)
			if r.code != 1 {
				t.Errorf("exit code: got %d, want 1", r.code)
			}
			if want := loadErr.Error() + "\n"; r.stderr != want {
				t.Errorf("stderr: got %q, want config's error %q", r.stderr, want)
			}
			if want := path + ":4: upstream.adress"; !strings.Contains(r.stderr, want) {
				t.Errorf("stderr: want it to name %q", want)
			}
			if strings.Contains(r.output(), "hunter2-secret") {
				t.Errorf("output contains the password")
			}
		})
	}

	t.Run("missing file", func(t *testing.T) {
		r := pgcloak(t, "check", "-c", "/nonexistent/pgcloak.yaml")
		if r.code != 1 {
			t.Errorf("exit code: got %d, want 1", r.code)
		}
		if !strings.Contains(r.stderr, "/nonexistent/pgcloak.yaml") {
			t.Errorf("stderr: got %q, want it to name the file", r.stderr)
		}
	})
}
