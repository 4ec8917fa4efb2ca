package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgcloak/pgcloak/testenv"
)

// TestServeEncrypted runs serve with a declared table: a tenant's writes
// are stored as ciphertext, read back as plaintext by that tenant only, key
// events reach the audit stream, and an unmapped role is refused.
func TestServeEncrypted(t *testing.T) {
	f := newKeysFixture(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	s := startServe(t, f.pg, f.db, f.edit)

	acme := s.connectAs(t, keysAcmeRole, keysRolePass, f.db)
	globex := s.connectAs(t, keysGlobexRole, keysRolePass, f.db)
	for _, w := range []struct {
		conn      *pgx.Conn
		name, ssn string
	}{{acme, "alice", "123-45-6789"}, {globex, "carol", "555-12-3456"}} {
		if _, err := w.conn.Exec(ctx, fmt.Sprintf("insert into patients (name, ssn) values ('%s', '%s')", w.name, w.ssn)); err != nil {
			t.Fatalf("insert %s: %v", w.name, err)
		}
	}

	var name, ssn string
	if err := acme.QueryRow(ctx, "select name, ssn from patients where ssn = '123-45-6789'").Scan(&name, &ssn); err != nil || name != "alice" || ssn != "123-45-6789" {
		t.Errorf("acme's search: got %q %q, %v; want alice 123-45-6789", name, ssn, err)
	}
	var n int
	if err := globex.QueryRow(ctx, "select count(*) from patients where ssn = '123-45-6789'").Scan(&n); err != nil || n != 0 {
		t.Errorf("globex searching acme's SSN: got %d rows, %v; want 0", n, err)
	}

	var stored, bidx []byte
	if err := f.direct.QueryRow(ctx, "select ssn, ssn_bidx from patients where name = 'alice'").Scan(&stored, &bidx); err != nil {
		t.Fatal(err)
	}
	if len(stored) < 33 || stored[0] != 1 || strings.Contains(string(stored), "123-45-6789") || len(bidx) != 16 {
		t.Errorf("stored: ssn %x, ssn_bidx %x; want pgcloak's format and a 16-byte index", stored, bidx)
	}

	// A role that is neither mapped nor unscoped is refused.
	url := fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", testenv.ScramUser, testenv.ScramPassword, s.listen, f.db)
	if c, err := pgx.Connect(ctx, url); err == nil {
		c.Close(context.Background())
		t.Error("unmapped role: got a session, want 28000")
	} else if sqlstate(err) != "28000" {
		t.Errorf("unmapped role: got %v, want 28000", err)
	}

	acme.Close(context.Background())
	globex.Close(context.Background())
	if code := s.shutdown(t); code != 0 {
		t.Errorf("exit code: got %d, want 0", code)
	}
	audit := s.stdout.String()
	containsAll(t, "audit (stdout)", audit, `"event":"key_created"`, `"tenant":"acme"`, `"tenant":"globex"`, `"event":"session_start"`, `"event":"auth_refused"`)
	logs := s.stderr.String()
	if strings.Contains(logs, "not implemented") {
		t.Errorf("log: still says encryption is not implemented")
	}
	containsNone(t, "audit or log", audit+logs, "123-45-6789", "555-12-3456", keysRolePass, testenv.ScramPassword)
}
