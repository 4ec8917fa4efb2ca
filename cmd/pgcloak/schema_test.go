package main

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/testenv"
)

// schemaConfig declares public.patients with a default and a custom index
// column, a plain column, and a second table in another schema.
func schemaConfig(pgAddr string) string {
	return fmt.Sprintf(`upstream:
  address: %s
  user: %s
keys:
  local:
    master_key_file: master.key
encrypt:
  tables:
    - name: patients
      columns:
        - name: ssn
          type: text
          search: equality
        - name: email
          type: text
          search: equality
          index_column: email_lookup
          normalize: lower
        - name: diagnosis
          type: text
          key_class: phi
    - name: billing.invoices
      columns:
        - name: amount
          type: numeric
`, pgAddr, testenv.ScramUser)
}

// TestSchema applies the printed DDL twice to a table that exists with
// only plain columns, then checks that PostgreSQL rejects plaintext and
// accepts values in pgcloak's format.
func TestSchema(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	r := pgcloak(t, "schema", "-c", writeFile(t, "pgcloak.yaml", schemaConfig(pg.Addr())), "--keystore")
	if r.code != 0 {
		t.Fatalf("exit code: got %d, want 0", r.code)
	}
	containsAll(t, "stdout", r.stdout,
		`ALTER TABLE "public"."patients" ADD COLUMN IF NOT EXISTS "ssn" bytea;`,
		`ALTER TABLE "public"."patients" ADD COLUMN IF NOT EXISTS "ssn_bidx" bytea;`,
		`ALTER TABLE "public"."patients" ADD COLUMN IF NOT EXISTS "email_lookup" bytea;`,
		`CREATE INDEX IF NOT EXISTS "patients_ssn_bidx_idx" ON "public"."patients" ("ssn_bidx");`,
		`CREATE INDEX IF NOT EXISTS "patients_email_lookup_idx" ON "public"."patients" ("email_lookup");`,
		`ADD CONSTRAINT "patients_ssn_pgcloak_next" CHECK ("ssn" IS NULL OR (length("ssn") >= 33 AND get_byte("ssn", 0) = 1 AND substr("ssn", 2, 4) >= '\x00000001'::bytea AND substr("ssn", 2, 4) <= '\x7fffffff'::bytea)) NOT VALID;`,
		`ADD CONSTRAINT "patients_ssn_bidx_pgcloak_next" CHECK ("ssn_bidx" IS NULL OR length("ssn_bidx") = 16) NOT VALID;`,
		`RENAME CONSTRAINT "patients_ssn_pgcloak_next" TO "patients_ssn_pgcloak_format";`,
		`ALTER TABLE "billing"."invoices" ADD COLUMN IF NOT EXISTS "amount" bytea;`,
		`CREATE TABLE IF NOT EXISTS pgcloak.data_keys`,
		`GRANT SELECT, INSERT, UPDATE ON pgcloak.data_keys TO "`+testenv.ScramUser+`";`,
	)
	if strings.Contains(r.stdout, "amount_bidx") || strings.Contains(r.stdout, "diagnosis_bidx") {
		t.Errorf("stdout: an index column for a column without search")
	}

	if err := pg.Exec(ctx, db, `create table patients (id serial primary key, name text);
		create schema billing; create table billing.invoices (id int)`); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := pg.Exec(ctx, db, r.stdout); err != nil {
			t.Fatalf("applying the DDL, time %d: %v", i+1, err)
		}
	}

	conn, err := pgx.Connect(ctx, pg.SuperuserURL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())

	var types string
	err = conn.QueryRow(ctx, `select string_agg(column_name || ' ' || data_type, ', ' order by ordinal_position)
		from information_schema.columns where table_name = 'patients'`).Scan(&types)
	if want := "id integer, name text, ssn bytea, ssn_bidx bytea, email bytea, email_lookup bytea, diagnosis bytea"; err != nil || types != want {
		t.Errorf("columns: got %q, %v; want %q", types, err, want)
	}
	var nCheck, nIndex int
	err = conn.QueryRow(ctx, `select
		(select count(*) from pg_constraint where conrelid = 'patients'::regclass and contype = 'c'),
		(select count(*) from pg_indexes where tablename = 'patients' and indexname like '%\_idx')`).Scan(&nCheck, &nIndex)
	if err != nil || nCheck != 5 || nIndex != 2 {
		t.Errorf("after two runs: got %d CHECK constraints and %d indexes (%v), want 5 and 2", nCheck, nIndex, err)
	}

	sealed := append([]byte{1, 0, 0, 0, 1}, bytes.Repeat([]byte{0xab}, 12+16+3)...)
	index := bytes.Repeat([]byte{0xcd}, 16)
	for _, tt := range []struct {
		name  string
		sql   string
		args  []any
		valid bool
	}{
		{"plaintext", `insert into patients (ssn) values ($1)`, []any{[]byte("123-45-6789")}, false},
		{"plaintext as long as a sealed value", `insert into patients (diagnosis) values ($1)`, []any{bytes.Repeat([]byte("x"), 40)}, false},
		{"empty", `insert into patients (ssn) values ($1)`, []any{[]byte{}}, false},
		{"short index", `insert into patients (ssn_bidx) values ($1)`, []any{index[:15]}, false},
		{"long index", `insert into patients (ssn_bidx) values ($1)`, []any{append(index, 0)}, false},
		{"key version 0", `insert into patients (ssn) values ($1)`, []any{withVersion(sealed, 0, 0, 0, 0)}, false},
		{"key version 2^31", `insert into patients (ssn) values ($1)`, []any{withVersion(sealed, 0x80, 0, 0, 0)}, false},
		{"format byte 2", `insert into patients (ssn) values ($1)`, []any{append([]byte{2}, sealed[1:]...)}, false},
		{"one byte short", `insert into patients (ssn) values ($1)`, []any{sealed[:32]}, false},
		{"key version 2^31-1", `insert into patients (ssn) values ($1)`, []any{withVersion(sealed, 0x7f, 0xff, 0xff, 0xff)}, true},
		{"key version 256", `insert into patients (ssn) values ($1)`, []any{withVersion(sealed, 0, 0, 1, 0)}, true},
		{"plaintext numeric", `insert into billing.invoices (amount) values ($1)`, []any{[]byte("12.50")}, false},
		{"pgcloak format", `insert into patients (ssn, ssn_bidx, email, email_lookup, diagnosis) values ($1, $2, $1, $2, $1)`, []any{sealed, index}, true},
		{"shortest sealed value", `insert into patients (ssn) values ($1)`, []any{sealed[:33]}, true},
		{"nulls", `insert into patients (name) values ('nobody')`, nil, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := conn.Exec(ctx, tt.sql, tt.args...)
			switch {
			case tt.valid && err != nil:
				t.Errorf("got %v, want it accepted", err)
			case !tt.valid && sqlstate(err) != "23514":
				t.Errorf("got %v, want a check violation (23514)", err)
			}
		})
	}
}

// withVersion is sealed with its key version bytes replaced.
func withVersion(sealed []byte, v ...byte) []byte {
	out := append([]byte(nil), sealed...)
	copy(out[1:5], v)
	return out
}

// TestSchemaReplaces runs pgcloak schema over CHECKs of pgcloak's names
// that earlier versions wrote (without the key version) or that check
// something else, and over a NOT VALID one: it replaces or validates each,
// and a second run changes nothing.
func TestSchemaReplaces(t *testing.T) {
	pg := testenv.Shared(t)
	db := testenv.NewDatabase(t, pg)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.SuperuserURL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())

	checks := formatChecks(formatTable)
	if _, err := conn.Exec(ctx, fmt.Sprintf(`create table fc (id int, ssn bytea, ssn_bidx bytea, notes bytea);
		alter table fc add constraint fc_ssn_pgcloak_format check (%s);
		alter table fc add constraint fc_ssn_bidx_pgcloak_format check (%s) not valid;
		alter table fc add constraint fc_notes_pgcloak_format check (notes is null or true);`,
		checks[0].legacyExpr(), checks[1].expr())); err != nil {
		t.Fatal(err)
	}
	defs := func() map[string]string {
		t.Helper()
		rows, err := conn.Query(ctx, `select conname || ' ' || oid, pg_get_constraintdef(oid) from pg_constraint where conrelid = 'fc'::regclass`)
		if err != nil {
			t.Fatal(err)
		}
		m, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (kv [2]string, err error) {
			err = r.Scan(&kv[0], &kv[1])
			return kv, err
		})
		if err != nil {
			t.Fatal(err)
		}
		out := make(map[string]string)
		for _, kv := range m {
			out[kv[0]] = kv[1]
		}
		return out
	}
	ddl := schemaDDL(t, formatTable)
	if _, err := conn.Exec(ctx, ddl); err != nil {
		t.Fatal(err)
	}
	first := defs()
	got, err := verifyFormatChecks(ctx, conn, []config.Table{formatTable})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range got {
		if s.state != formatOK || s.constraint != s.check.name() {
			t.Errorf("%s after pgcloak schema: got state %d, constraint %q; want OK, %q", s.check.where(), s.state, s.constraint, s.check.name())
		}
	}
	if len(first) != 3 {
		t.Errorf("constraints after pgcloak schema: got %v, want 3", first)
	}
	if _, err := conn.Exec(ctx, ddl); err != nil {
		t.Fatal(err)
	}
	// Names and OIDs unchanged: the second run dropped only its own
	// temporary constraints.
	if second := defs(); !maps.Equal(first, second) {
		t.Errorf("a second run changed the constraints: before %v, after %v", first, second)
	}

	// A row the replaced CHECK would refuse makes the script fail rather
	// than leave the looser CHECK in place.
	if _, err := conn.Exec(ctx, `alter table fc drop constraint fc_notes_pgcloak_format;
		insert into fc (notes) values ('plaintext')`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, ddl); sqlstate(err) != "23514" {
		t.Errorf("pgcloak schema over a plaintext row: got %v, want a check violation (23514)", err)
	}
}

func TestSchemaNoTables(t *testing.T) {
	r := pgcloak(t, "schema", "-c", writeFile(t, "pgcloak.yaml", "upstream:\n  address: 127.0.0.1:5432\n"))
	if r.code != 0 {
		t.Fatalf("exit code: got %d, want 0", r.code)
	}
	if !strings.Contains(r.stdout, "declares no tables: nothing to do") || strings.Contains(r.stdout, "ALTER") {
		t.Errorf("stdout: got %q, want only a note that nothing is declared", r.stdout)
	}
}

func TestConstraintName(t *testing.T) {
	if got := constraintName("patients", "ssn", "pgcloak_format"); got != "patients_ssn_pgcloak_format" {
		t.Errorf("short name: got %q", got)
	}
	long := strings.Repeat("t", 63)
	a := constraintName(long, strings.Repeat("a", 63), "pgcloak_format")
	b := constraintName(long, strings.Repeat("b", 63), "pgcloak_format")
	if len(a) > 63 || len(b) > 63 || a == b || !strings.HasSuffix(a, "_pgcloak_format") {
		t.Errorf("long names: got %q and %q, want distinct names of at most 63 bytes", a, b)
	}
	if a != constraintName(long, strings.Repeat("a", 63), "pgcloak_format") {
		t.Error("long names: not stable")
	}
}

// TestCommandsWithoutPassword runs the commands that never log in upstream
// (schema, encrypt-existing --print-prepare and --print-finish, token)
// with a configuration whose upstream passwords come from variables that
// are not set, as on a DBA's or developer's machine; check, which logs in,
// still refuses it.
func TestCommandsWithoutPassword(t *testing.T) {
	const unset = "PGCLOAK_TEST_NEVER_SET_PASSWORD"
	if _, ok := os.LookupEnv(unset); ok {
		t.Fatalf("%s is set; unset it to run this test", unset)
	}
	t.Setenv("CMD_OFFLINE_JWT_SECRET", tokenSecret)
	cfg := strings.Replace(schemaConfig("127.0.0.1:5432"), "  user: "+testenv.ScramUser+"\n",
		"  user: "+testenv.ScramUser+"\n  password: ${"+unset+"}\n", 1) + `tenancy:
  mode: jwt
  jwt:
    hs256_secret: ${CMD_OFFLINE_JWT_SECRET}
    upstream_user: app_jwt
    upstream_password: ${` + unset + `}
`
	path := writeFile(t, "pgcloak.yaml", cfg)
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"schema", []string{"schema", "-c", path}, `ALTER TABLE "public"."patients" ADD COLUMN IF NOT EXISTS "ssn" bytea;`},
		{"encrypt-existing --print-prepare", []string{"encrypt-existing", "-c", path, "--table", "patients", "--print-prepare"}, `ALTER TABLE "public"."patients" RENAME COLUMN "ssn" TO "ssn_plain";`},
		{"encrypt-existing --print-finish", []string{"encrypt-existing", "-c", path, "--table", "patients", "--print-finish"}, `ALTER TABLE "public"."patients" DROP COLUMN IF EXISTS "ssn_plain";`},
		{"token", []string{"token", "-c", path, "--tenant", "acme"}, "eyJ"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := pgcloak(t, tt.args...)
			if r.code != 0 {
				t.Fatalf("exit code: got %d, want 0", r.code)
			}
			if !strings.Contains(r.stdout, tt.want) {
				t.Errorf("stdout: missing %q", tt.want)
			}
		})
	}
	t.Run("token needs its secret", func(t *testing.T) {
		os.Unsetenv("CMD_OFFLINE_JWT_SECRET") // t.Setenv restores it
		r := pgcloak(t, "token", "-c", path, "--tenant", "acme")
		if r.code != 1 || !strings.Contains(r.stderr, "tenancy.jwt.hs256_secret: environment variable CMD_OFFLINE_JWT_SECRET is not set") {
			t.Errorf("got exit %d, stderr %q; want 1 and the unset secret", r.code, r.stderr)
		}
	})
	t.Run("check needs the password", func(t *testing.T) {
		r := pgcloak(t, "check", "-c", path)
		if r.code != 1 || !strings.Contains(r.stderr, "upstream.password: environment variable "+unset+" is not set") {
			t.Errorf("got exit %d, stderr %q; want 1 and the unset password", r.code, r.stderr)
		}
	})
}
