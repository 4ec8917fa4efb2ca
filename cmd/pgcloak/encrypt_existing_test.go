package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgcloak/pgcloak/crypto"
	"github.com/pgcloak/pgcloak/testenv"
)

// Tenant roles of TestEncryptExisting (roles are cluster-wide).
var eeRoles = map[string]string{"cmd_ee_acme": "acme", "cmd_ee_globex": "globex", "cmd_ee_initech": "initech"}

const eeRolePass = "cmd-ee-tenant-pw"

// eeDecl declares the table of TestEncryptExisting.
const eeDecl = `encrypt:
  tables:
    - name: patients
      columns:
        - name: ssn
          type: text
          search: equality
        - name: email
          type: text
          search: equality
          normalize: lower
        - name: birth_date
          type: date
audit:
  output: stdout
`

// TestEncryptExisting runs the whole documented migration on a table of
// 50,000 plaintext rows of three tenants: prepare; finish, refused while
// plaintext is left; a write through the proxy, which the trigger keeps;
// encrypt-existing in batches of 2000; finish; then reads through the
// proxy.
func TestEncryptExisting(t *testing.T) {
	start := time.Now()
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	roles := slices.Sorted(maps.Keys(eeRoles))
	setup := rlsTableSQL("patients", `id bigint primary key,
	tenant_id text not null default pgcloak.current_tenant(),
	name text,
	ssn text not null,
	email text,
	birth_date date`) + tenantRolesSQL(eeRolePass, roles...) +
		fmt.Sprintf("grant select, insert, update on patients to %s;\n", strings.Join(roles, ", "))
	if err := pg.Exec(ctx, db, setup); err != nil {
		t.Fatal(err)
	}
	direct, err := pgx.Connect(ctx, pg.SuperuserURL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(context.Background())
	const n = 50000
	tenants := []string{"acme", "globex", "initech"}
	ssn := func(i int) string { return fmt.Sprintf("%03d-%02d-%04d", i%997, i%89, i%9973) }
	email := func(i int) string { return fmt.Sprintf("User%d@Example.COM", i) }
	birth := func(i int) string {
		return time.Date(1940, 1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, i%20000).Format("2006-01-02")
	}
	rows := make([][]any, n)
	for i := range rows {
		rows[i] = []any{int64(i + 1), tenants[i%3], fmt.Sprintf("patient %d", i+1), ssn(i + 1), email(i + 1), birth(i + 1)}
	}
	// birth_date goes in as text: COPY's text format parses it.
	if _, err := direct.CopyFrom(ctx, pgx.Identifier{"patients"}, []string{"id", "tenant_id", "name", "ssn", "email", "birth_date"}, pgx.CopyFromRows(rows)); err != nil {
		t.Fatal(err)
	}
	t.Logf("loaded %d rows in %s", n, time.Since(start))

	keyFile := initLocalKey(t)
	// upstream.user is the superuser here: it bypasses row-level security,
	// so encrypt-existing visits every tenant's rows in one run.
	base := useKeyFile(checkConfig(pg.Addr(), "disable", "", testenv.SuperuserName, testenv.SuperuserPassword, db), keyFile)
	tenancy := "tenancy:\n  login:\n    roles:\n"
	for role, tenant := range eeRoles {
		tenancy += fmt.Sprintf("      %s: %s\n", role, tenant)
	}
	cfg := writeFile(t, "pgcloak.yaml", base+tenancy+eeDecl)

	// Step 1.
	r := pgcloak(t, "encrypt-existing", "-c", cfg, "--table", "patients", "--print-prepare")
	if r.code != 0 {
		t.Fatalf("--print-prepare: exit %d", r.code)
	}
	if err := pg.Exec(ctx, db, r.stdout); err != nil {
		t.Fatalf("prepare: %v", err)
	}
	if err := pg.Exec(ctx, db, r.stdout); err != nil {
		t.Fatalf("prepare, run again: %v", err)
	}

	// Step 3 refuses while plaintext is left.
	r = pgcloak(t, "encrypt-existing", "-c", cfg, "--table", "patients", "--print-finish")
	if r.code != 0 {
		t.Fatalf("--print-finish: exit %d", r.code)
	}
	finish := r.stdout
	if err := pg.Exec(ctx, db, finish); sqlstate(err) != "P0001" || !strings.Contains(err.Error(), "still holds plaintext") {
		t.Errorf("finish before encrypt-existing: got %v, want its refusal (P0001, still holds plaintext)", err)
	}

	// The application, pointed at pgcloak after step 1, writes an ssn: the
	// trigger clears the row's plaintext ssn, so that step 2 keeps the new
	// value.
	serveEdit := func(c string) string {
		c = strings.Replace(c, fmt.Sprintf("user: %s\n  password: %q", testenv.ScramUser, testenv.ScramPassword),
			fmt.Sprintf("user: %s\n  password: %q", testenv.SuperuserName, testenv.SuperuserPassword), 1)
		return useKeyFile(c, keyFile) + tenancy + eeDecl
	}
	const writtenID, writtenSSN = 7, "900-07-0007" // acme's row
	early := startServe(t, pg, db, serveEdit)
	if _, err := early.connectAs(t, "cmd_ee_acme", eeRolePass, db).Exec(ctx, fmt.Sprintf("update patients set ssn = '%s' where id = %d", writtenSSN, writtenID)); err != nil {
		t.Fatalf("update of row %d through the proxy: %v", writtenID, err)
	}
	var (
		plainSSN   *string
		written    []byte
		plainEmail *string
	)
	if err := direct.QueryRow(ctx, "select ssn_plain, ssn, email_plain from patients where id = $1", writtenID).Scan(&plainSSN, &written, &plainEmail); err != nil {
		t.Fatal(err)
	}
	if plainSSN != nil || plainEmail == nil {
		t.Errorf("row %d after an ssn written through the proxy: ssn_plain cleared %v, email_plain kept %v; want both", writtenID, plainSSN == nil, plainEmail != nil)
	}
	if _, err := crypto.KeyVersion(written); err != nil {
		t.Errorf("row %d: stored ssn %x is not in pgcloak's format", writtenID, written)
	}
	if code := early.shutdown(t); code != 0 {
		t.Fatalf("serve after step 1: exit code %d, want 0", code)
	}

	// Step 2.
	t.Setenv("PGCLOAK_ACTOR", "dba (CHG-9)")
	r = pgcloak(t, "encrypt-existing", "-c", cfg, "--table", "patients", "--batch-size", "2000", "--pause", "0s")
	if r.code != 0 {
		t.Fatalf("encrypt-existing: exit %d", r.code)
	}
	wantActor(t, r.stdout, "encrypt_existing_started", "dba (CHG-9)")
	wantActor(t, r.stdout, "encrypt_existing_finished", "dba (CHG-9)")
	if evs := auditEvents(t, r.stdout, "encrypt_existing_finished"); len(evs) != 1 || evs[0]["table"] != "public.patients" || evs[0]["updated"] != 50000.0 || evs[0]["outcome"] != "complete" {
		t.Errorf("encrypt_existing_finished: got %v, want public.patients, 50000 updated, complete", evs)
	}
	if want := "encrypt-existing: public.patients: encrypted 50000 rows in 25 batches"; !strings.Contains(r.stdout, want) {
		t.Errorf("stdout: missing %q", want)
	}
	for i := 1; i <= 50; i++ {
		if strings.Contains(r.output(), ssn(i)) || strings.Contains(r.output(), email(i)) {
			t.Fatalf("output contains plaintext")
		}
	}
	var left, sealed int
	if err := direct.QueryRow(ctx, `select count(*) filter (where ssn_plain is not null or email_plain is not null or birth_date_plain is not null),
		count(*) filter (where get_byte(ssn, 0) = 1 and length(ssn_bidx) = 16 and length(email_bidx) = 16 and birth_date is not null)
		from patients`).Scan(&left, &sealed); err != nil {
		t.Fatal(err)
	}
	if left != 0 || sealed != n {
		t.Errorf("after encrypt-existing: %d rows with plaintext, %d fully sealed; want 0 and %d", left, sealed, n)
	}
	t.Logf("encrypted in %s", time.Since(start))

	// Step 3.
	if err := pg.Exec(ctx, db, finish); err != nil {
		t.Fatalf("finish: %v", err)
	}
	var plainCols int
	if err := direct.QueryRow(ctx, `select count(*) from pg_attribute where attrelid = 'patients'::regclass and attname like '%_plain' and not attisdropped`).Scan(&plainCols); err != nil || plainCols != 0 {
		t.Errorf("plaintext columns after finish: %d, %v; want none", plainCols, err)
	}

	// Read back through the proxy.
	s := startServe(t, pg, db, serveEdit)
	acme := s.connectAs(t, "cmd_ee_acme", eeRolePass, db)
	globex := s.connectAs(t, "cmd_ee_globex", eeRolePass, db)
	for _, id := range []int{1, 4, 30001, 49999} { // acme's: i%3 == 0 for i = id-1
		var (
			gotSSN, gotEmail, gotBirth string
			bd                         time.Time
		)
		err := acme.QueryRow(ctx, fmt.Sprintf("select ssn, email, birth_date from patients where id = %d", id)).Scan(&gotSSN, &gotEmail, &bd)
		gotBirth = bd.Format("2006-01-02")
		if err != nil || gotSSN != ssn(id) || gotEmail != email(id) || gotBirth != birth(id) {
			t.Errorf("row %d through the proxy: got %v, same values %v", id, err, gotSSN == ssn(id) && gotEmail == email(id) && gotBirth == birth(id))
		}
	}
	var gotSSN, gotEmail string
	if err := acme.QueryRow(ctx, "select ssn, email from patients where id = $1", writtenID).Scan(&gotSSN, &gotEmail); err != nil || gotSSN != writtenSSN || gotEmail != email(writtenID) {
		t.Errorf("row %d, its ssn written through the proxy before step 2: got %v, same values %v; want the written ssn kept", writtenID, err, gotSSN == writtenSSN && gotEmail == email(writtenID))
	}
	var id int
	if err := acme.QueryRow(ctx, fmt.Sprintf("select id from patients where ssn = '%s' and id > 40000", ssn(40003))).Scan(&id); err != nil || id != 40003 {
		t.Errorf("blind-index search on ssn: got %d, %v; want 40003", id, err)
	}
	if err := acme.QueryRow(ctx, fmt.Sprintf("select id from patients where email = '%s'", strings.ToLower(email(12346)))).Scan(&id); err != nil || id != 12346 {
		t.Errorf("case-insensitive search on email: got %d, %v; want 12346", id, err)
	}
	var count int
	if err := globex.QueryRow(ctx, fmt.Sprintf("select count(*) from patients where email = '%s'", email(12346))).Scan(&count); err != nil || count != 0 {
		t.Errorf("globex searching acme's email: got %d, %v; want 0", count, err)
	}
	if _, err := acme.Exec(ctx, "insert into patients (id, ssn, email) values (60000, '999-99-9999', 'new@example.com')"); err != nil {
		t.Errorf("insert after the migration: %v", err)
	}
	if err := acme.QueryRow(ctx, "select id from patients where ssn = '999-99-9999'").Scan(&id); err != nil || id != 60000 {
		t.Errorf("reading the new row: got %d, %v", id, err)
	}
	t.Logf("whole path in %s", time.Since(start))
}

// TestEncryptExistingRefusals: what encrypt-existing refuses, and how.
func TestEncryptExistingRefusals(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	if err := pg.Exec(t.Context(), db, `create table patients (id int primary key, ssn_plain text, ssn bytea, ssn_bidx bytea)`); err != nil {
		t.Fatal(err)
	}
	base := useKeyFile(checkConfig(pg.Addr(), "disable", "", testenv.SuperuserName, testenv.SuperuserPassword, db), initLocalKey(t))
	cfg := writeFile(t, "pgcloak.yaml", base+patientsSSNDecl)
	noTables := writeFile(t, "none.yaml", base)
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no table flag", []string{"-c", cfg}, 2, `required flag(s) "table" not set`},
		{"no tables declared", []string{"-c", noTables, "--table", "patients"}, 1, "declares no encrypted tables"},
		{"table not declared", []string{"-c", cfg, "--table", "visits"}, 2, `table "visits" is not declared`},
		{"tenant column missing", []string{"-c", cfg, "--table", "patients"}, 1, "public.patients.tenant_id: no such column"},
		{"two steps at once", []string{"-c", cfg, "--table", "patients", "--print-prepare", "--print-finish"}, 2, "give one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := pgcloak(t, append([]string{"encrypt-existing"}, tc.args...)...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("got exit %d, stderr %q; want exit %d and %q", r.code, r.stderr, tc.code, tc.want)
			}
		})
	}
}
