package main

import (
	"bytes"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pgcloak/pgcloak/config"
	"github.com/spf13/cobra"
)

func TestVersion(t *testing.T) {
	r := pgcloak(t, "version")
	if r.code != 0 {
		t.Fatalf("exit code: got %d, want 0", r.code)
	}
	want := "pgcloak dev\n" + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH + "\n"
	if r.stdout != want {
		t.Errorf("stdout: got %q, want %q", r.stdout, want)
	}
	if r.stderr != "" {
		t.Errorf("stderr: got %q, want nothing", r.stderr)
	}
}

func TestVersionFlag(t *testing.T) {
	r := pgcloak(t, "--version")
	want := "pgcloak dev\n" + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH + "\n"
	if r.code != 0 || r.stdout != want {
		t.Errorf("got exit %d, stdout %q; want 0 and %q", r.code, r.stdout, want)
	}
}

// TestConfigEnv: $PGCLOAK_CONFIG is the default of -c in every command
// that takes one; -c still wins.
func TestConfigEnv(t *testing.T) {
	path := writeFile(t, "pgcloak.yaml", tokenConfig("    hs256_secret: "+tokenSecret+"\n"))
	t.Setenv("PGCLOAK_CONFIG", path)

	var walk func(c *cobra.Command) int
	walk = func(c *cobra.Command) int {
		n := 0
		if f := c.Flags().Lookup("config"); f != nil {
			n++
			if f.DefValue != path {
				t.Errorf("%s: -c defaults to %q, want $PGCLOAK_CONFIG %q", c.CommandPath(), f.DefValue, path)
			}
		}
		for _, sub := range c.Commands() {
			n += walk(sub)
		}
		return n
	}
	// serve, check, schema, token, reencrypt, encrypt-existing and the five
	// keys commands that read the configuration.
	if n := walk(newRootCmd()); n != 11 {
		t.Errorf("got %d commands with -c, want 11", n)
	}

	r := pgcloak(t, "token", "--tenant", "acme")
	if r.code != 0 || strings.Count(r.stdout, ".") != 2 {
		t.Errorf("token without -c: exit %d, stdout %q; want a token", r.code, r.stdout)
	}
	r = pgcloak(t, "schema", "-c", writeFile(t, "other.yaml", "upstream: {address: db:5432}\nencrypt: {tables: [{name: other_table, columns: [{name: c, type: text}]}]}\nkeys: {local: {master_key_file: m.key}}\n"))
	if r.code != 0 || !strings.Contains(r.stdout, "other_table") {
		t.Errorf("schema -c other.yaml with $PGCLOAK_CONFIG set: exit %d; want -c to win", r.code)
	}
}

// TestLogDurations: durations in log lines carry their unit.
func TestLogDurations(t *testing.T) {
	var buf bytes.Buffer
	log, err := newLogger(config.Log{Level: "info", Format: "json"}, &buf)
	if err != nil {
		t.Fatal(err)
	}
	log.Info().Dur("timeout", 30*time.Second).Dur("retry_in", 1500*time.Millisecond).Msg("x")
	for _, want := range []string{`"timeout":"30s"`, `"retry_in":"1.5s"`} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("log line %q: missing %s", buf.String(), want)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	if os.Getenv("PGCLOAK_CONFIG") != "" {
		t.Fatal("PGCLOAK_CONFIG is set; unset it to run this test")
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"unknown flag", []string{"version", "--frob"}, "unknown flag: --frob"},
		{"missing config", []string{"check"}, `required flag(s) "config" not set`},
		{"extra argument", []string{"serve", "-c", "x.yaml", "extra"}, "takes no arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := pgcloak(t, tt.args...)
			if r.code != 2 {
				t.Errorf("exit code: got %d, want 2", r.code)
			}
			if !strings.Contains(r.stderr, tt.want) {
				t.Errorf("stderr: got %q, want it to contain %q", r.stderr, tt.want)
			}
		})
	}
}
