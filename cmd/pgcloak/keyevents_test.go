package main

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestKeyEventsTwoReplicas runs two serve replicas on one database. A
// rotation reaches the second replica's next write at once; a shred makes
// both replicas fail closed on the tenant's values within a second,
// including a value restored from a copy taken before the shred, leaves
// another tenant alone, refuses the tenant's new writes until keys create,
// and is audited.
func TestKeyEventsTwoReplicas(t *testing.T) {
	f := newKeysFixture(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	s1 := startServe(t, f.pg, f.db, f.edit)
	s2 := startServe(t, f.pg, f.db, f.edit)
	replicas := []*serving{s1, s2}
	acme := []*pgx.Conn{s1.connectAs(t, keysAcmeRole, keysRolePass, f.db), s2.connectAs(t, keysAcmeRole, keysRolePass, f.db)}
	globex := []*pgx.Conn{s1.connectAs(t, keysGlobexRole, keysRolePass, f.db), s2.connectAs(t, keysGlobexRole, keysRolePass, f.db)}

	if _, err := acme[0].Exec(ctx, "insert into patients (name, ssn) values ('alice', '123-45-6789')"); err != nil {
		t.Fatal(err)
	}
	if _, err := globex[1].Exec(ctx, "insert into patients (name, ssn) values ('carol', '555-12-3456')"); err != nil {
		t.Fatal(err)
	}
	readSSN := func(c *pgx.Conn, name string) (string, error) {
		var ssn string
		err := c.QueryRow(ctx, "select ssn from patients where name = $1", name).Scan(&ssn)
		return ssn, err
	}
	for i := range replicas { // both replicas have acme's key cached
		if ssn, err := readSSN(acme[i], "alice"); err != nil || ssn != "123-45-6789" {
			t.Fatalf("replica %d reads alice: got %q, %v", i+1, ssn, err)
		}
	}

	// Rotation: replica 2's next write uses version 2. The command returns
	// after its commit; the event reaches the replica a moment later.
	r := f.keys(t, 0, "rotate", "--tenant", "acme")
	if !strings.Contains(r.stdout, "version 2 is active") {
		t.Fatalf("keys rotate: stdout %q", r.stdout)
	}
	rotated := time.Now()
	purged := regexp.MustCompile(`"event":"key_purge_received".*"kind":"rotate".*"tenant":"acme"`)
	waitFor(t, "replica 2 to receive the rotation", func() bool { return purged.MatchString(s2.stdout.String()) })
	t.Logf("rotation reached replica 2 after %v", time.Since(rotated))
	if _, err := acme[1].Exec(ctx, "insert into patients (name, ssn) values ('bob', '987-65-4321')"); err != nil {
		t.Fatal(err)
	}
	if v := storedVersion(t, f.stored(t, "ssn", "bob")); v != 2 {
		t.Errorf("write through replica 2 after rotate: version %d, want 2", v)
	}
	if ssn, err := readSSN(acme[1], "alice"); err != nil || ssn != "123-45-6789" {
		t.Errorf("version 1 value after rotate: got %q, %v", ssn, err)
	}

	// A copy of acme's ciphertext taken before the shred (a backup).
	if _, err := f.direct.Exec(ctx, "insert into backup select id, ssn from patients where name = 'alice'"); err != nil {
		t.Fatal(err)
	}

	f.keys(t, 2, "shred", "--tenant", "acme")
	r = f.keys(t, 0, "shred", "--tenant", "acme", "--yes")
	shredded := time.Now()
	if !strings.Contains(r.stdout, "Shredded tenant acme (all key classes): 3 key versions destroyed") {
		t.Errorf("keys shred: stdout %q", r.stdout)
	}
	if !strings.Contains(r.stdout, `"event":"tenant_shredded"`) || !strings.Contains(r.stdout, "backups of pgcloak.data_keys") {
		t.Errorf("keys shred: want a tenant_shredded event and the note on backups; stdout %q", r.stdout)
	}
	for i := range replicas {
		for {
			_, err := readSSN(acme[i], "alice")
			if sqlstate(err) == "39000" {
				break
			}
			if time.Since(shredded) > time.Second {
				t.Fatalf("replica %d: alice's ssn still reads (%v) %v after the shred, want 39000 within 1s", i+1, err, time.Since(shredded))
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Logf("replica %d failed closed %v after the shred", i+1, time.Since(shredded))
	}

	// Restore the copy as a new row: it does not open either.
	if _, err := f.direct.Exec(ctx, "insert into patients (tenant_id, name, ssn) select 'acme', 'restored', ssn from backup"); err != nil {
		t.Fatal(err)
	}
	for i := range replicas {
		if _, err := readSSN(acme[i], "restored"); sqlstate(err) != "39000" {
			t.Errorf("replica %d reads the restored copy: got %v, want 39000", i+1, err)
		}
		if _, err := readSSN(acme[i], "bob"); sqlstate(err) != "39000" {
			t.Errorf("replica %d reads a version 2 value: got %v, want 39000", i+1, err)
		}
		if ssn, err := readSSN(globex[i], "carol"); err != nil || ssn != "555-12-3456" {
			t.Errorf("replica %d, globex after acme's shred: got %q, %v", i+1, ssn, err)
		}
		if _, err := globex[i].Exec(ctx, fmt.Sprintf("insert into patients (name, ssn) values ('globex-%d', '000-00-000%d')", i, i)); err != nil {
			t.Errorf("replica %d, globex writes after acme's shred: %v", i+1, err)
		}
		_, err := acme[i].Exec(ctx, "insert into patients (name, ssn) values ('after-shred', '111-11-1111')")
		if err == nil {
			t.Errorf("replica %d: acme's write after the shred succeeded", i+1)
		}
		if sqlstate(err) != "55000" || !strings.Contains(err.Error(), "pgcloak keys create --tenant acme") {
			t.Errorf("replica %d, write for a shredded tenant: got %v, want SQLSTATE 55000 naming keys create", i+1, err)
		}
	}
	var n int
	if err := f.direct.QueryRow(ctx, "select count(*) from patients where name = 'after-shred'").Scan(&n); err != nil || n != 0 {
		t.Errorf("refused writes: %d rows stored, %v", n, err)
	}

	// keys create lets acme write again, on both replicas; old values stay
	// unreadable.
	r = f.keys(t, 0, "create", "--tenant", "acme")
	if !strings.Contains(r.stdout, "purpose data: version 3 is active") {
		t.Errorf("keys create: stdout %q, want data version 3", r.stdout)
	}
	for i := range replicas {
		name := fmt.Sprintf("new-%d", i)
		waitFor(t, fmt.Sprintf("replica %d to accept acme's writes", i+1), func() bool {
			_, err := acme[i].Exec(ctx, fmt.Sprintf("insert into patients (name, ssn) values ('%s', '222-33-444%d')", name, i))
			return err == nil
		})
		if ssn, err := readSSN(acme[i], name); err != nil || ssn != fmt.Sprintf("222-33-444%d", i) {
			t.Errorf("replica %d reads acme's new value: got %q, %v", i+1, ssn, err)
		}
		if v := storedVersion(t, f.stored(t, "ssn", name)); v != 3 {
			t.Errorf("replica %d: acme's new value has version %d, want 3", i+1, v)
		}
		if _, err := readSSN(acme[i], "alice"); sqlstate(err) != "39000" {
			t.Errorf("replica %d reads a shredded value after create: got %v, want 39000", i+1, err)
		}
	}

	for _, c := range append(acme, globex...) {
		c.Close(context.Background())
	}
	for i, s := range replicas {
		if code := s.shutdown(t); code != 0 {
			t.Errorf("replica %d exit code: got %d, want 0", i+1, code)
		}
		audit := s.stdout.String()
		containsAll(t, fmt.Sprintf("replica %d audit (key_purge_received)", i+1), audit, `"kind":"rotate"`, `"kind":"shred"`)
		if strings.Contains(audit+s.stderr.String(), "123-45-6789") {
			t.Errorf("replica %d audit or log contains a plaintext value", i+1)
		}
	}
}

// TestKeyEventsReconnect kills the listener's connection: serve reconnects
// and, since events may have been missed meanwhile, purges every cached
// key, and events reach it again afterwards.
func TestKeyEventsReconnect(t *testing.T) {
	f := newKeysFixture(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	s := startServe(t, f.pg, f.db, f.edit)
	acme := s.connectAs(t, keysAcmeRole, keysRolePass, f.db)
	if _, err := acme.Exec(ctx, "insert into patients (name, ssn) values ('alice', '123-45-6789')"); err != nil {
		t.Fatal(err)
	}
	var killed int
	waitFor(t, "the listener's session", func() bool {
		err := f.direct.QueryRow(ctx, `select count(pg_terminate_backend(pid)) from pg_stat_activity
			where application_name = 'pgcloak key events' and datname = $1`, f.db).Scan(&killed)
		return err == nil && killed > 0
	})
	reconnect := regexp.MustCompile(`"event":"key_purge_received".*"kind":"reconnect"`)
	waitFor(t, "the reconnect purge", func() bool { return reconnect.MatchString(s.stdout.String()) })
	if !strings.Contains(s.stderr.String(), "key events: connection lost") {
		t.Error("log: no line about the lost key-event connection")
	}
	var ssn string
	if err := acme.QueryRow(ctx, "select ssn from patients where name = 'alice'").Scan(&ssn); err != nil || ssn != "123-45-6789" {
		t.Errorf("read after the purge: got %q, %v", ssn, err)
	}
	f.keys(t, 0, "rotate", "--tenant", "acme")
	rotate := regexp.MustCompile(`"event":"key_purge_received".*"kind":"rotate"`)
	waitFor(t, "a rotation after the reconnect", func() bool { return rotate.MatchString(s.stdout.String()) })
}
