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

// Tenant role of TestServeRotateAfterEncryptions (roles are cluster-wide).
const (
	limitAcmeRole = "cmd_limit_acme"
	limitRolePass = "cmd-limit-tenant-pw"
)

// TestServeRotateAfterEncryptions runs serve with
// keys.rotate_after_encryptions: 3. The fourth value sealed for a tenant is
// sealed under version 2, and the rotation is audited with its reason.
func TestServeRotateAfterEncryptions(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	setup := tenantRolesSQL(limitRolePass, limitAcmeRole) +
		rlsTableSQL("patients", `id int primary key,
	tenant_id text not null default pgcloak.current_tenant(),
	diagnosis bytea`) +
		fmt.Sprintf(`grant select, insert on patients to %[1]s;
grant select, update on patients to %[3]s;
grant create on database %[2]s to %[3]s;`, limitAcmeRole, db, testenv.ScramUser)
	if err := pg.Exec(ctx, db, setup); err != nil {
		t.Fatal(err)
	}
	keyFile := initLocalKey(t)
	s := startServe(t, pg, db, schemaApplied(t, pg, db, func(cfg string) string {
		cfg = strings.Replace(useKeyFile(cfg, keyFile), "keys:\n", "keys:\n  rotate_after_encryptions: 3\n", 1)
		return cfg + fmt.Sprintf(`tenancy:
  login:
    roles:
      %s: acme
encrypt:
  tables:
    - name: patients
      columns:
        - name: diagnosis
          type: text
audit:
  output: stdout
`, limitAcmeRole)
	}))
	acme := s.connectAs(t, limitAcmeRole, limitRolePass, db)
	for id := 1; id <= 4; id++ {
		if _, err := acme.Exec(ctx, fmt.Sprintf("insert into patients (id, diagnosis) values (%d, 'dx-%d')", id, id)); err != nil {
			t.Fatalf("insert %d: %v", id, err)
		}
	}
	direct, err := pgx.Connect(ctx, pg.SuperuserURL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(context.Background())
	for id, want := range map[int]uint32{1: 1, 3: 1, 4: 2} {
		var v []byte
		if err := direct.QueryRow(ctx, "select diagnosis from patients where id = $1", id).Scan(&v); err != nil {
			t.Fatal(err)
		}
		if got := storedVersion(t, v); got != want {
			t.Errorf("row %d: sealed under version %d, want %d", id, got, want)
		}
	}
	var dx string
	if err := acme.QueryRow(ctx, "select diagnosis from patients where id = 1").Scan(&dx); err != nil || dx != "dx-1" {
		t.Errorf("read of a version 1 value: got %q, %v", dx, err)
	}
	if audit := s.stdout.String(); !strings.Contains(audit, `"event":"key_rotated"`) || !strings.Contains(audit, "encryption limit") {
		t.Errorf("audit: no key_rotated event for the encryption limit")
	}

	// A migration seals under the same limit and audits its rotations
	// the same way: reencrypt moves rows 1-3 off version 1, and version 2
	// has no encryptions left to give.
	r := pgcloak(t, "reencrypt", "-c", s.path)
	if r.code != 0 {
		t.Fatalf("reencrypt: exit %d", r.code)
	}
	if !strings.Contains(r.stdout, `"event":"key_rotated"`) || !strings.Contains(r.stdout, "encryption limit") {
		t.Errorf("reencrypt's audit: no key_rotated event for the encryption limit")
	}
}
