package main

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pgcloak/pgcloak/testenv"
)

// TestKeysShredKMS shreds with keys.provider aws against testenv's KMS
// emulator: a tenant with a KEK of its own (keys.tenants) gets that key
// scheduled for deletion and the event says so; a tenant on the shared
// default key leaves it alone and is told that backups still open its
// values. Rewrap goes through KMS as well.
func TestKeysShredKMS(t *testing.T) {
	f := newKeysFixture(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	emu, defaultKey, acmeKey := f.useKMS(t)

	s := startServe(t, f.pg, f.db, f.edit)
	acme := s.connectAs(t, keysAcmeRole, keysRolePass, f.db)
	globex := s.connectAs(t, keysGlobexRole, keysRolePass, f.db)
	if _, err := acme.Exec(ctx, "insert into patients (name, ssn) values ('alice', '123-45-6789')"); err != nil {
		t.Fatal(err)
	}
	if _, err := globex.Exec(ctx, "insert into patients (name, ssn) values ('carol', '555-12-3456')"); err != nil {
		t.Fatal(err)
	}

	r := f.keys(t, 0, "rewrap", "--tenant", "globex")
	if !strings.Contains(r.stdout, "Rewrapped 2 key versions of tenant globex under KEK "+defaultKey.ARN) {
		t.Errorf("keys rewrap through KMS: stdout %q", r.stdout)
	}
	var ssn string
	if err := globex.QueryRow(ctx, "select ssn from patients where name = 'carol'").Scan(&ssn); err != nil || ssn != "555-12-3456" {
		t.Errorf("globex after rewrap: got %q, %v", ssn, err)
	}

	r = f.keys(t, 0, "shred", "--tenant", "acme", "--yes")
	if !strings.Contains(r.stdout, "Scheduled the deletion of the tenant's KMS key "+acmeKey.ARN) {
		t.Errorf("keys shred acme: stdout %q, want the scheduled deletion of %s", r.stdout, acmeKey.ARN)
	}
	if !regexp.MustCompile(`"event":"tenant_shredded".*"kek_id":"` + regexp.QuoteMeta(acmeKey.ARN) + `","kek_deletion_scheduled":true`).MatchString(r.stdout) {
		t.Errorf("keys shred acme: no tenant_shredded event naming the scheduled KEK")
	}
	if st, err := emu.KeyState(acmeKey.ID); err != nil || st != testenv.KMSKeyPendingDeletion {
		t.Errorf("acme's KMS key: state %q, %v; want %s", st, err, testenv.KMSKeyPendingDeletion)
	}
	waitFor(t, "acme's values to fail closed", func() bool {
		err := acme.QueryRow(ctx, "select ssn from patients where name = 'alice'").Scan(&ssn)
		return sqlstate(err) == "39000"
	})

	r = f.keys(t, 0, "shred", "--tenant", "globex", "--yes")
	if !strings.Contains(r.stdout, "no KEK of its own") {
		t.Errorf("keys shred globex: stdout %q, want the note on the shared KEK", r.stdout)
	}
	if st, err := emu.KeyState(defaultKey.ID); err != nil || st != testenv.KMSKeyEnabled {
		t.Errorf("default KMS key after shredding globex: state %q, %v; want %s", st, err, testenv.KMSKeyEnabled)
	}
}
