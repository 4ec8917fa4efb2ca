package proxy

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgcloak/pgcloak/testenv"
)

// TestCatalogViews: in a tenant session the catalog shows the declared
// schema: pg_attribute, format_type and information_schema.columns give
// each declared column its declared type and have no index columns;
// pg_index and pg_constraint (so psql's \d) list neither the index
// columns' indexes nor the format CHECKs. In the simple and the extended
// protocol. An unscoped session keeps the real catalog.
func TestCatalogViews(t *testing.T) {
	env := startEncrypted(t)
	ctx := ctxT(t)
	fatalIf(t, env.pg.Exec(ctx, env.db, `
		create index patients_ssn_bidx_idx on patients (ssn_bidx);
		create index patients_name_idx on patients (name);
		alter table patients add constraint patients_ssn_pgcloak_format check (ssn is null or length(ssn) > 0);
		alter table patients add constraint patients_name_check check (name <> '')`), "indexes and checks")

	const attrs = `select a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attlen::int
		from pg_catalog.pg_attribute a
		where a.attrelid = 'public.patients'::regclass and a.attnum > 0 and not a.attisdropped
		order by a.attnum`
	const infoSchema = `select column_name::text, data_type::text, udt_name::text
		from information_schema.columns where table_name = $1 order by ordinal_position`
	const indexes = `select c2.relname::text from pg_catalog.pg_class c, pg_catalog.pg_class c2, pg_index i
		where c.oid = 'public.patients'::regclass and c.oid = i.indrelid and i.indexrelid = c2.oid order by 1`
	const checks = `select conname::text from pg_constraint where conrelid = 'patients'::regclass and contype = 'c' order by 1`
	const pgIndexes = `select indexname::text from pg_indexes where tablename = 'patients' order by 1`
	const tableConstraints = `select tc.constraint_name::text, coalesce(k.column_name::text, '')
		from information_schema.table_constraints tc left join information_schema.key_column_usage k using (constraint_schema, constraint_name)
		where tc.table_name = 'patients' and tc.constraint_name::text not like '%not_null' order by 1`
	const columnPrivileges = `select distinct column_name::text from information_schema.column_privileges
		where table_name = 'patients' and grantee = 'acme_app' order by 1`
	// Only the table's owner sees rows in these; the tenant role sees none,
	// as directly, and the views must still run.
	const ownerOnly = `select (select count(*) from information_schema.check_constraints where constraint_name::text like 'patients%'),
		(select count(*) from information_schema.constraint_column_usage where table_name = 'patients')`

	lines := func(t *testing.T, conn *pgx.Conn, sql string, args ...any) string {
		t.Helper()
		rows, err := conn.Query(ctx, sql, args...)
		fatalIf(t, err, "%s", sql)
		defer rows.Close()
		var out []string
		for rows.Next() {
			vals, err := rows.Values()
			fatalIf(t, err, "values")
			var parts []string
			for _, v := range vals {
				parts = append(parts, strings.TrimSpace(strings.ReplaceAll(strings.ReplaceAll(toString(v), "\n", " "), "  ", " ")))
			}
			out = append(out, strings.Join(parts, " "))
		}
		fatalIf(t, rows.Err(), "%s", sql)
		return strings.Join(out, "\n")
	}

	wantTenant := map[string]string{
		attrs: strings.Join([]string{
			"id integer 4", "tenant_id text -1", "name text -1", "ssn text -1", "email text -1",
			"diagnosis text -1", "birth_date date 4"}, "\n"),
		infoSchema: strings.Join([]string{
			"id integer int4", "tenant_id text text", "name text text", "ssn text text", "email text text",
			"diagnosis text text", "birth_date date date"}, "\n"),
		indexes:          "patients_name_idx\npatients_pkey",
		checks:           "patients_name_check",
		pgIndexes:        "patients_name_idx\npatients_pkey",
		tableConstraints: "patients_name_check \npatients_pkey id",
		columnPrivileges: "birth_date\ndiagnosis\nemail\nid\nname\nssn\ntenant_id",
		ownerOnly:        "0 0",
	}
	for _, mode := range []string{"simple_protocol", "exec", "cache_statement"} {
		t.Run(mode, func(t *testing.T) {
			conn := connect(t, env.proxy.url(acmeRole, rolePassword, env.db, "default_query_exec_mode="+mode))
			for sql, want := range wantTenant {
				var got string
				if sql == infoSchema {
					got = lines(t, conn, sql, "patients")
				} else {
					got = lines(t, conn, sql)
				}
				if got != want {
					t.Errorf("as a tenant:\n%s\ngot:\n%s\nwant:\n%s", sql, got, want)
				}
			}
			// The table itself still reads and searches as before.
			insertPatient(t, conn, "alice", "123-45-6789", "a@example.com", "flu", "1980-01-02")
			var ssn string
			fatalIf(t, conn.QueryRow(ctx, "select ssn from patients where ssn = $1", "123-45-6789").Scan(&ssn), "search")
			mustEqual(t, "ssn", ssn, "123-45-6789")
		})
	}

	t.Run("tenant role owning the table", func(t *testing.T) {
		fatalIf(t, env.pg.Exec(ctx, env.db, `alter table patients owner to `+acmeRole), "owner")
		t.Cleanup(func() { env.pg.Exec(ctx, env.db, `alter table patients owner to `+testenv.SuperuserName) })
		conn := connect(t, env.proxy.url(acmeRole, rolePassword, env.db))
		const q = `select constraint_name::text, check_clause::text from information_schema.check_constraints
			where constraint_name::text like 'patients%' order by 1`
		mustEqual(t, "information_schema.check_constraints", lines(t, conn, q), "patients_name_check ((name <> ''::text))")
		const u = `select constraint_name::text, column_name::text from information_schema.constraint_column_usage
			where table_name = 'patients' order by 1, 2`
		mustEqual(t, "information_schema.constraint_column_usage", lines(t, conn, u), "patients_name_check name\npatients_pkey id")
	})

	t.Run("unscoped sees the real catalog", func(t *testing.T) {
		conn := connect(t, env.proxy.url(migratorRole, rolePassword, env.db))
		got := lines(t, conn, attrs)
		for _, want := range []string{"ssn bytea -1", "ssn_bidx bytea -1", "birth_date bytea -1"} {
			if !strings.Contains(got, want) {
				t.Errorf("unscoped pg_attribute: want %q in\n%s", want, got)
			}
		}
		if got := lines(t, conn, checks); !strings.Contains(got, "patients_ssn_pgcloak_format") {
			t.Errorf("unscoped pg_constraint: %s", got)
		}
		if got := lines(t, conn, pgIndexes); !strings.Contains(got, "patients_ssn_bidx_idx") {
			t.Errorf("unscoped pg_indexes: %s", got)
		}
	})

	t.Run(`psql \d`, func(t *testing.T) {
		psql, err := exec.LookPath("psql")
		if err != nil {
			psql = env.pg.Bin("psql")
		}
		cmd := exec.Command(psql, "-X", "-c", `\d patients`, env.proxy.url(acmeRole, rolePassword, env.db))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("psql \\d through pgcloak: %v\n%s", err, out)
		}
		d := string(out)
		for _, want := range []string{"ssn        | text", "birth_date | date", "patients_name_idx", "patients_name_check", "tenant_isolation"} {
			if !strings.Contains(d, want) {
				t.Errorf("psql \\d patients: want %q in\n%s", want, d)
			}
		}
		for _, not := range []string{"bidx", "bytea", "pgcloak_format"} {
			if strings.Contains(d, not) {
				t.Errorf("psql \\d patients: %q shows:\n%s", not, d)
			}
		}
		// \di lists index relations from pg_class.
		out, err = exec.Command(psql, "-X", "-c", `\di`, env.proxy.url(acmeRole, rolePassword, env.db)).CombinedOutput()
		if err != nil {
			t.Fatalf("psql \\di through pgcloak: %v\n%s", err, out)
		}
		if di := string(out); !strings.Contains(di, "patients_name_idx") || strings.Contains(di, "bidx") {
			t.Errorf("psql \\di as a tenant: want patients_name_idx and no blind-index index:\n%s", di)
		}
		out, err = exec.Command(psql, "-X", "-c", `\di`, env.proxy.url(migratorRole, rolePassword, env.db)).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "patients_ssn_bidx_idx") {
			t.Errorf("psql \\di unscoped: want the real indexes: %v\n%s", err, out)
		}
	})
}

func toString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case nil:
		return "NULL"
	default:
		return strings.TrimSpace(strings.Trim(strings.ReplaceAll(fmtAny(x), "\n", " "), " "))
	}
}

func fmtAny(v any) string { return fmt.Sprint(v) }
