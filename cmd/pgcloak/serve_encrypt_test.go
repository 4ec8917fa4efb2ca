package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
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

// Tenant role of TestServeFormatChecks (roles are cluster-wide).
const (
	fmtAcmeRole = "cmd_fmt_acme"
	fmtRolePass = "cmd-fmt-tenant-pw"
)

// exit waits for serve to exit on its own and returns its exit code.
func (s *serving) exit(t *testing.T) int {
	t.Helper()
	select {
	case code := <-s.exited:
		s.exited <- code // for the cleanup
		return code
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not exit within 30s")
		return -1
	}
}

// TestServeFormatChecks: serve refuses to start while a declared column or
// index column lacks its format CHECK, naming each and the command that
// adds them; with encrypt.require_format_checks false it warns per column
// and serves; it serves with the earlier, looser CHECK, warning; and a
// SIGHUP that declares a column without its CHECK is refused while the
// previous declarations keep being served.
func TestServeFormatChecks(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	setup := tenantRolesSQL(fmtRolePass, fmtAcmeRole) +
		rlsTableSQL("patients", `id int primary key,
	tenant_id text not null default pgcloak.current_tenant(),
	ssn bytea, ssn_bidx bytea, diagnosis bytea`) +
		fmt.Sprintf(`grant select, insert on patients to %[1]s;
grant create on database %[2]s to %[3]s;`, fmtAcmeRole, db, testenv.ScramUser)
	if err := pg.Exec(ctx, db, setup); err != nil {
		t.Fatal(err)
	}
	direct, err := pgx.Connect(ctx, pg.SuperuserURL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(context.Background())
	keyFile := initLocalKey(t)
	const diagnosisDecl = `        - name: diagnosis
          type: text
`
	edit := func(extra string) func(string) string {
		return func(cfg string) string {
			decl := strings.Replace(patientsSSNDecl, "encrypt:\n", "encrypt:\n"+extra, 1)
			return useKeyFile(cfg, keyFile) + "tenancy:\n  login:\n    roles:\n      " + fmtAcmeRole + ": acme\n" + decl
		}
	}
	missingLine := func(logs, column string) bool {
		for _, l := range strings.Split(logs, "\n") {
			if strings.Contains(l, "format CHECK missing") && strings.Contains(l, `"column":"`+column+`"`) {
				return true
			}
		}
		return false
	}

	t.Run("refused", func(t *testing.T) {
		s := startServe(t, pg, db, edit(""))
		if code := s.exit(t); code != 1 {
			t.Fatalf("exit code: got %d, want 1", code)
		}
		logs := s.stderr.String()
		containsAll(t, "log", logs,
			"public.patients.ssn (constraint patients_ssn_pgcloak_format: no CHECK with pgcloak's format definition)",
			"public.patients.ssn_bidx (constraint patients_ssn_bidx_pgcloak_format: no CHECK with pgcloak's format definition)",
			"pgcloak schema -c "+s.path+` | psql \"$DATABASE_URL\"`,
			"encrypt.require_format_checks: false",
		)
		for _, col := range []string{"ssn", "ssn_bidx"} {
			if !missingLine(logs, col) {
				t.Errorf("log: no error line for column %s", col)
			}
		}
	})

	t.Run("not required", func(t *testing.T) {
		s := startServe(t, pg, db, edit("  require_format_checks: false\n"))
		acme := s.connectAs(t, fmtAcmeRole, fmtRolePass, db)
		if _, err := acme.Exec(ctx, "insert into patients (id, ssn) values (1, '123-45-6789')"); err != nil {
			t.Fatalf("insert through the proxy: %v", err)
		}
		logs := s.stderr.String()
		for _, col := range []string{"ssn", "ssn_bidx"} {
			if !missingLine(logs, col) {
				t.Errorf("log: no warning for column %s", col)
			}
		}
		if !strings.Contains(logs, `"level":"warn"`) || strings.Contains(logs, `"level":"error"`) {
			t.Errorf("log: want warnings and no error")
		}
		// Nothing stops plaintext written around the proxy.
		if _, err := direct.Exec(ctx, "insert into patients (id, tenant_id, ssn) values (2, 'acme', 'plaintext')"); err != nil {
			t.Errorf("plaintext without the CHECK: got %v, want it stored", err)
		}
		if _, err := direct.Exec(ctx, "delete from patients where id = 2"); err != nil {
			t.Fatal(err)
		}
	})

	// The CHECKs of earlier versions: served, with a warning that names
	// the command that tightens them.
	if _, err := direct.Exec(ctx, `alter table patients add constraint patients_ssn_pgcloak_format
			check (ssn IS NULL OR (length(ssn) >= 33 AND get_byte(ssn, 0) = 1));
		alter table patients add constraint patients_ssn_bidx_pgcloak_format
			check (ssn_bidx IS NULL OR length(ssn_bidx) = 16)`); err != nil {
		t.Fatal(err)
	}
	s := startServe(t, pg, db, edit(""))
	acme := s.connectAs(t, fmtAcmeRole, fmtRolePass, db)
	if _, err := acme.Exec(ctx, "insert into patients (id, ssn) values (5, '123-45-6789')"); err != nil {
		t.Fatalf("insert through the proxy: %v", err)
	}
	var ssn string
	if err := acme.QueryRow(ctx, "select ssn from patients where id = 5").Scan(&ssn); err != nil || ssn != "123-45-6789" {
		t.Errorf("read through the proxy: got %q, %v", ssn, err)
	}
	logs := s.stderr.String()
	if !strings.Contains(logs, "format CHECK has the earlier definition") || !strings.Contains(logs, `"column":"ssn"`) ||
		!strings.Contains(logs, "pgcloak schema -c "+s.path) {
		t.Errorf("log: want a warning about ssn's earlier CHECK naming pgcloak schema")
	}
	if missingLine(logs, "ssn") || missingLine(logs, "ssn_bidx") {
		t.Errorf("log: a CHECK reported missing")
	}

	// SIGHUP declaring diagnosis, which has no CHECK: refused; the
	// previous declarations are still served.
	cfg, err := os.ReadFile(s.path)
	if err != nil {
		t.Fatal(err)
	}
	withDiagnosis := strings.Replace(string(cfg), "          search: equality\n", "          search: equality\n"+diagnosisDecl, 1)
	if err := os.WriteFile(s.path, []byte(withDiagnosis), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the refused reload", func() bool { return strings.Contains(s.stderr.String(), "SIGHUP: configuration not reloaded") })
	logs = s.stderr.String()
	containsAll(t, "log", logs, "public.patients.diagnosis (constraint patients_diagnosis_pgcloak_format", "serving the previous declarations")
	if !missingLine(logs, "diagnosis") {
		t.Errorf("log: no error line for column diagnosis")
	}
	if _, err := s.connectAs(t, fmtAcmeRole, fmtRolePass, db).Exec(ctx, "insert into patients (id, ssn) values (3, '555-12-3456')"); err != nil {
		t.Errorf("insert after the refused reload: %v", err)
	}

	// With the CHECK added, the same file reloads and diagnosis is
	// encrypted.
	applySchema(t, pg, db, withDiagnosis)
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the reload", func() bool { return strings.Contains(s.stderr.String(), "SIGHUP: configuration reloaded") })
	if _, err := s.connectAs(t, fmtAcmeRole, fmtRolePass, db).Exec(ctx, "insert into patients (id, diagnosis) values (4, 'flu')"); err != nil {
		t.Fatalf("insert of diagnosis after the reload: %v", err)
	}
	var stored []byte
	if err := direct.QueryRow(ctx, "select diagnosis from patients where id = 4").Scan(&stored); err != nil || len(stored) < 33 || stored[0] != 1 {
		t.Errorf("stored diagnosis: got %x, %v; want pgcloak's format", stored, err)
	}
	containsNone(t, "audit or log", s.stdout.String()+s.stderr.String(), "123-45-6789", "555-12-3456", fmtRolePass, testenv.ScramPassword)
}
