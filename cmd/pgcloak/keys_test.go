package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgcloak/pgcloak/crypto"
)

func TestKeysInitLocal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "master.key")
	r := pgcloak(t, "keys", "init-local", "-o", path)
	if r.code != 0 {
		t.Fatalf("exit code: got %d, want 0", r.code)
	}
	if !strings.Contains(r.stdout, "Wrote a new master key to "+path) || !strings.Contains(r.stdout, "master_key_file: "+path) {
		t.Errorf("stdout: want it to say where the key is and how to configure it")
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode: got %04o, want 0600", fi.Mode().Perm())
	}
	first, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(r.output(), strings.TrimSpace(string(first))) {
		t.Error("output contains the master key")
	}
	if _, err := crypto.LoadLocalProvider(path); err != nil {
		t.Errorf("the key does not load: %v", err)
	}

	r = pgcloak(t, "keys", "init-local", "-o", path)
	if r.code != 1 {
		t.Errorf("second run: exit code %d, want 1", r.code)
	}
	if !strings.Contains(r.stderr, "already exists") {
		t.Errorf("second run: stderr %q, want it to refuse to overwrite", r.stderr)
	}
	if again, _ := os.ReadFile(path); string(again) != string(first) {
		t.Error("second run changed the key file")
	}
}

func TestKeysUsage(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"keys"}, "keys needs a command: create, init-local, list, rewrap, rotate, shred"},
		{[]string{"keys", "frob"}, `unknown keys command "frob"`},
		{[]string{"keys", "init-local"}, `required flag(s) "output" not set`},
		{[]string{"keys", "rotate", "-c", "x.yaml"}, `required flag(s) "tenant" not set`},
		{[]string{"keys", "rotate", "-c", "x.yaml", "--tenant", "acme", "--purpose", "mac"}, `--purpose must be data or index, got "mac"`},
		{[]string{"keys", "shred", "-c", "x.yaml", "--tenant", "acme"}, "add --yes to confirm"},
		{[]string{"keys", "create", "--tenant", "acme"}, `required flag(s) "config" not set`},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			r := pgcloak(t, tt.args...)
			if r.code != 2 {
				t.Errorf("exit code: got %d, want 2", r.code)
			}
			if !strings.Contains(r.stderr, tt.want) {
				t.Errorf("stderr: got %q, want %q", r.stderr, tt.want)
			}
		})
	}
}
