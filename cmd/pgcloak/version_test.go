package main

import (
	"runtime"
	"strings"
	"testing"
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

func TestUsageErrors(t *testing.T) {
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
