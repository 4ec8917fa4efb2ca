package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgcloak/pgcloak/testenv"
)

// TestShredBackup answers "backups included" (SPEC §6, crypto-shredding)
// with a real backup: pg_dump of the whole database, pgcloak schema
// included, taken while acme's keys are alive, restored after
// `keys shred` into a new database that a fresh serve then proxies.
//
// What makes the restored wrapped keys useless is the provider:
//
//   - keys.provider aws with a KEK of acme's own (keys.tenants): shred
//     schedules the deletion of that KMS key, which KMS makes unusable at
//     once, so the restored pgcloak.data_keys rows - still holding acme's
//     wrapped keys - can no longer be unwrapped. acme's values fail closed
//     (39000), its writes are refused (55000), other tenants are untouched.
//     This is the subtest "aws tenant KEK".
//   - keys.provider local (or a KEK shared between tenants): shred only
//     destroys the wrapped keys stored in pgcloak.data_keys. The master key
//     still opens the wrapped keys in a backup taken before the shred, so
//     restoring that backup brings acme's values back, as `keys shred`
//     warns. Making such a backup useless takes a new master key (keys
//     rewrap of the other tenants, then destroying the old key file) or a
//     per-tenant KEK. The subtest "local master key" pins that behaviour,
//     so that the warning and this comment change if it ever does.
func TestShredBackup(t *testing.T) {
	t.Run("aws tenant KEK", testShredBackupAWS)
	t.Run("local master key", testShredBackupLocal)
}

func testShredBackupAWS(t *testing.T) {
	f := newKeysFixture(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	// keys.provider aws: acme has a KEK of its own, globex uses the
	// default one.
	emu, defaultKey, acmeKey := f.useKMS(t)

	// Two replicas write: acme through both, globex through the second.
	s1 := startServe(t, f.pg, f.db, f.edit)
	s2 := startServe(t, f.pg, f.db, f.edit)
	replicas := []*serving{s1, s2}
	acme := []*pgx.Conn{s1.connectAs(t, keysAcmeRole, keysRolePass, f.db), s2.connectAs(t, keysAcmeRole, keysRolePass, f.db)}
	globex := s2.connectAs(t, keysGlobexRole, keysRolePass, f.db)
	writes := []struct {
		conn                 *pgx.Conn
		name, ssn, diagnosis string
	}{
		{acme[0], "alice", "123-45-6789", "acme-diagnosis-alice"},
		{acme[1], "bob", "987-65-4321", "acme-diagnosis-bob"},
		{globex, "carol", "555-12-3456", "globex-diagnosis-carol"},
	}
	for _, w := range writes {
		if _, err := w.conn.Exec(ctx, "insert into patients (name, ssn, diagnosis) values ($1, $2, $3)", w.name, w.ssn, w.diagnosis); err != nil {
			t.Fatalf("insert %s: %v", w.name, err)
		}
	}
	for i, c := range acme {
		for _, w := range writes[:2] {
			if ssn, diagnosis, err := readPatient(ctx, c, w.name); err != nil || ssn != w.ssn || diagnosis != w.diagnosis {
				t.Fatalf("replica %d, acme reads %s before the shred: got %q %q, %v", i+1, w.name, ssn, diagnosis, err)
			}
		}
	}

	// The backup: taken while acme's keys are alive.
	dump := dumpDatabase(ctx, t, f.pg, f.db)

	r := f.keys(t, 0, "shred", "--tenant", "acme", "--yes")
	if want := "Scheduled the deletion of the tenant's KMS key " + acmeKey.ARN; !strings.Contains(r.stdout, want) {
		t.Errorf("keys shred: stdout %q, want %q", r.stdout, want)
	}
	if state, err := emu.KeyState(acmeKey.ID); err != nil || state != testenv.KMSKeyPendingDeletion {
		t.Errorf("acme's KMS key after the shred: got %q, %v; want %s", state, err, testenv.KMSKeyPendingDeletion)
	}
	if state, err := emu.KeyState(defaultKey.ID); err != nil || state != testenv.KMSKeyEnabled {
		t.Errorf("the default KMS key after acme's shred: got %q, %v; want %s", state, err, testenv.KMSKeyEnabled)
	}
	for i, c := range acme {
		waitFor(t, fmt.Sprintf("replica %d to fail closed on alice", i+1), func() bool {
			_, _, err := readPatient(ctx, c, "alice")
			return sqlstate(err) == "39000"
		})
	}

	// Restore the backup into a new database and proxy it with a new serve:
	// its cache starts empty, so every key comes from the restored rows.
	restored := restoreDatabase(ctx, t, f.pg, dump)
	restoredConn, err := pgx.Connect(ctx, f.pg.SuperuserURL(restored))
	if err != nil {
		t.Fatal(err)
	}
	defer restoredConn.Close(context.Background())
	var wrapped int
	if err := restoredConn.QueryRow(ctx, `select count(*) from pgcloak.data_keys
		where tenant = 'acme' and state <> 'shredded' and wrapped is not null`).Scan(&wrapped); err != nil {
		t.Fatal(err)
	}
	if wrapped == 0 {
		t.Fatal("the restored pgcloak.data_keys holds no wrapped key of acme: the backup does not test anything")
	}
	t.Logf("the restored database holds %d wrapped key versions of acme", wrapped)

	emu.ResetCalls()
	s3 := startServe(t, f.pg, restored, f.edit)
	restoredAcme := s3.connectAs(t, keysAcmeRole, keysRolePass, restored)
	restoredGlobex := s3.connectAs(t, keysGlobexRole, keysRolePass, restored)
	for _, w := range writes[:2] {
		if ssn, diagnosis, err := readPatient(ctx, restoredAcme, w.name); sqlstate(err) != "39000" {
			t.Errorf("restored database, acme reads %s: got %q %q, %v; want SQLSTATE 39000", w.name, ssn, diagnosis, err)
		}
	}
	if got := emu.KeyCalls("Decrypt", acmeKey.ID); got < 1 {
		t.Errorf("Decrypt calls on acme's KMS key from the restored database: got %d, want at least 1 (the wrapped keys were tried)", got)
	}
	_, err = restoredAcme.Exec(ctx, "insert into patients (name, ssn) values ('after-restore', '111-11-1111')")
	if sqlstate(err) != "55000" {
		t.Errorf("restored database, acme writes: got %v, want SQLSTATE 55000", err)
	}
	if ssn, diagnosis, err := readPatient(ctx, restoredGlobex, "carol"); err != nil || ssn != writes[2].ssn || diagnosis != writes[2].diagnosis {
		t.Errorf("restored database, globex reads carol: got %q %q, %v; want %s %s", ssn, diagnosis, err, writes[2].ssn, writes[2].diagnosis)
	}

	restoredAcme.Close(ctx)
	restoredGlobex.Close(ctx)
	for _, c := range append(acme, globex) {
		c.Close(ctx)
	}
	for i, s := range append(replicas, s3) {
		if code := s.shutdown(t); code != 0 {
			t.Errorf("serve %d: exit code %d, want 0", i+1, code)
		}
		for _, w := range writes {
			if out := s.stdout.String() + s.stderr.String(); strings.Contains(out, w.ssn) || strings.Contains(out, w.diagnosis) {
				t.Errorf("serve %d: audit or log contains %s's plaintext", i+1, w.name)
			}
		}
	}
}

func testShredBackupLocal(t *testing.T) {
	f := newKeysFixture(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	s := startServe(t, f.pg, f.db, f.edit)
	acme := s.connectAs(t, keysAcmeRole, keysRolePass, f.db)
	if _, err := acme.Exec(ctx, "insert into patients (name, ssn, diagnosis) values ('alice', '123-45-6789', 'flu')"); err != nil {
		t.Fatal(err)
	}
	dump := dumpDatabase(ctx, t, f.pg, f.db)

	r := f.keys(t, 0, "shred", "--tenant", "acme", "--yes")
	if !strings.Contains(r.stdout, "backups of pgcloak.data_keys taken before now still open the tenant's values with the master key") {
		t.Errorf("keys shred: stdout %q, want the warning about backups", r.stdout)
	}
	waitFor(t, "the live database to fail closed", func() bool {
		_, _, err := readPatient(ctx, acme, "alice")
		return sqlstate(err) == "39000"
	})

	restored := restoreDatabase(ctx, t, f.pg, dump)
	s2 := startServe(t, f.pg, restored, f.edit)
	restoredAcme := s2.connectAs(t, keysAcmeRole, keysRolePass, restored)
	ssn, diagnosis, err := readPatient(ctx, restoredAcme, "alice")
	if err != nil || ssn != "123-45-6789" || diagnosis != "flu" {
		t.Errorf("restored backup with the local master key: got %q %q, %v; want the values back, as keys shred warns", ssn, diagnosis, err)
	}
}

// readPatient reads the ssn and diagnosis of the row named name through
// conn.
func readPatient(ctx context.Context, conn *pgx.Conn, name string) (ssn, diagnosis string, err error) {
	err = conn.QueryRow(ctx, "select ssn, diagnosis from patients where name = $1", name).Scan(&ssn, &diagnosis)
	return ssn, diagnosis, err
}

// dumpDatabase takes a pg_dump (custom format) of db, the pgcloak schema
// included, and returns the file's path.
func dumpDatabase(ctx context.Context, t *testing.T, pg *testenv.Postgres, db string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), db+".dump")
	runPGTool(ctx, t, pg, "pg_dump", "--format=custom", "--file="+path, "--dbname="+pg.SuperuserURL(db))
	return path
}

// restoreDatabase restores a dump into a new database of the test and
// returns its name. upstream.user gets CREATE on it as on the original
// (a database-level grant, which pg_dump leaves out), so that serve may
// check its key store schema.
func restoreDatabase(ctx context.Context, t *testing.T, pg *testenv.Postgres, dump string) string {
	t.Helper()
	db := testenv.NewDatabase(t, pg)
	runPGTool(ctx, t, pg, "pg_restore", "--exit-on-error", "--dbname="+pg.SuperuserURL(db), dump)
	if err := pg.Exec(ctx, db, fmt.Sprintf("grant create on database %s to %s", pgx.Identifier{db}.Sanitize(), testenv.ScramUser)); err != nil {
		t.Fatal(err)
	}
	return db
}

// runPGTool runs one of the server's client programs. The command line
// holds the superuser's password, so only the program's name and output
// are reported.
func runPGTool(ctx context.Context, t *testing.T, pg *testenv.Postgres, name string, args ...string) {
	t.Helper()
	cmd := exec.CommandContext(ctx, pg.Bin(name), args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", name, err, out)
	}
}
