package proxy

import (
	"slices"
	"strings"
	"testing"
)

// TestAnyArray: col = ANY(array) on a searchable column, with an array
// parameter in every pgx mode (the simple protocol inlines it as an array
// literal) and with array literals written in SQL.
func TestAnyArray(t *testing.T) {
	env := startEncrypted(t)
	ctx := ctxT(t)
	acme := env.tenantConn(t, acmeRole)
	insertPatient(t, acme, "alice", "111", "Alice@Example.com", "flu", "1980-01-02")
	insertPatient(t, acme, "bob", "2 2", "bob@example.com", "flu", "1980-01-02")
	insertPatient(t, acme, "carol", `3"3`, "carol@example.com", "flu", "1980-01-02")

	names := func(t *testing.T, sql string, args ...any) []string {
		t.Helper()
		rows, err := acme.Query(ctx, sql, args...)
		fatalIf(t, err, "%s", sql)
		var out []string
		for rows.Next() {
			var n string
			fatalIf(t, rows.Scan(&n), "scan")
			out = append(out, n)
		}
		fatalIf(t, rows.Err(), "%s", sql)
		slices.Sort(out)
		return out
	}
	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			acme = connect(t, env.proxy.url(acmeRole, rolePassword, env.db, "default_query_exec_mode="+queryExecModeParam(mode)))
			got := names(t, `select name from patients where ssn = any($1)`, []string{"111", `3"3`, "nobody"})
			mustEqual(t, "= ANY($1)", slices.Equal(got, []string{"alice", "carol"}), true)
			got = names(t, `select name from patients where ssn = any($1)`, []*string{nil})
			mustEqual(t, "= ANY($1) of a NULL", len(got), 0)
			got = names(t, `select name from patients where email = any($1)`, []string{"BOB@EXAMPLE.COM"})
			mustEqual(t, "= ANY($1), normalize lower", slices.Equal(got, []string{"bob"}), true)
		})
	}

	acme = env.tenantConn(t, acmeRole) // simple protocol: the SQL as written
	for _, tc := range []struct {
		sql  string
		want []string
	}{
		{`select name from patients where ssn = any('{111,"2 2"}')`, []string{"alice", "bob"}},
		{`select name from patients where ssn = any('{"3\"3",NULL}'::text[])`, []string{"carol"}},
		{`select name from patients where ssn <> all('{111}')`, []string{"bob", "carol"}},
		{`select name from patients where ssn <> all('{}')`, []string{"alice", "bob", "carol"}},
		{`select name from patients where ssn = any('{}')`, nil},
	} {
		got := names(t, tc.sql)
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.sql, got, tc.want)
		}
	}

	_, err := acme.Exec(ctx, `select name from patients where ssn = any('{111')`)
	mustEqual(t, "malformed array literal SQLSTATE", pgCode(err), "22P02")
	mustEqual(t, "session still usable", len(names(t, `select name from patients where ssn = any('{111}')`)), 1)

	// PostgreSQL saw only index values: the last statement of acme's
	// backend is the rewritten search.
	names(t, `select name from patients where ssn = any('{111,"2 2"}')`)
	var last string
	fatalIf(t, env.pool.QueryRow(ctx, `select query from pg_stat_activity where pid = $1`, acme.PgConn().PID()).Scan(&last), "pg_stat_activity")
	if !strings.Contains(last, "ssn_bidx") || strings.Contains(last, "111") || strings.Contains(last, "2 2") {
		t.Errorf("PostgreSQL ran: %s", last)
	}
}
