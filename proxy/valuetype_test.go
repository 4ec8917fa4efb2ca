package proxy

import (
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestValueTypesAsPostgreSQL: a value of another type written to or
// compared with a declared column gets the SQLSTATE PostgreSQL gives the
// same statement on a plaintext table with the declared types (42883 for
// a comparison no operator serves, 42804 for an assignment PostgreSQL
// refuses, 22007/22008 for a date it cannot read), never a silent search
// or write of its text; values PostgreSQL reads as the declared type work
// the same through pgcloak. In the simple protocol, with literals in the
// text, as ORMs that inline values send them.
func TestValueTypesAsPostgreSQL(t *testing.T) {
	env := startEncrypted(t)
	ctx := ctxT(t)
	fatalIf(t, env.pg.Exec(ctx, env.db, `
		create table patients_plain (id serial primary key, name text, ssn text, email text, diagnosis text, birth_date date);
		grant select, insert, update on patients_plain to acme_app;
		grant usage on sequence patients_plain_id_seq to acme_app`), "plaintext twin")
	direct := connect(t, env.pg.URL(acmeRole, rolePassword, env.db)+"&default_query_exec_mode=simple_protocol")
	proxied := env.tenantConn(t, acmeRole)
	for _, conn := range []*pgx.Conn{direct, proxied} {
		table := "patients"
		if conn == direct {
			table = "patients_plain"
		}
		_, err := conn.Exec(ctx, "insert into "+table+" (name, ssn, email, birth_date) values ('alice', '123456789', 'a@example.com', '1990-05-06')")
		fatalIf(t, err, "seed %s", table)
	}
	for _, c := range []struct{ sql, want string }{
		{`select name from %s where ssn = '\x31'::bytea`, "42883"},
		{`select name from %s where ssn = 123456789`, "42883"},
		{`select name from %s where ssn in ('1', 2)`, "42883"},
		{`select name from %s where ssn = any('{1,2}'::int[])`, "42883"},
		{`select name from %s where ssn = '123456789'::varchar`, ""},
		{`select name from %s where ssn = '123456789'`, ""},
		{`insert into %s (name, birth_date) values ('x', '1990-05-06'::text)`, "42804"},
		{`insert into %s (name, birth_date) values ('x', 19900506)`, "42804"},
		{`update %s set birth_date = '1990-05-06'::varchar where name = 'alice'`, "42804"},
		{`insert into %s (name, birth_date) values ('x', '1990-13-45')`, "22008"},
		{`insert into %s (name, birth_date) values ('x', 'tomorrowish')`, "22007"},
		{`insert into %s (name, ssn) values ('x', 987654321)`, ""},
		{`insert into %s (name, ssn) values ('x', true)`, ""},
		{`insert into %s (name, birth_date) values ('x', DATE '1991-02-03')`, ""},
	} {
		codes := map[string]string{}
		for name, conn := range map[string]*pgx.Conn{"directly": direct, "through pgcloak": proxied} {
			table := "patients"
			if conn == direct {
				table = "patients_plain"
			}
			sql := strings.Replace(c.sql, "%s", table, 1)
			_, err := conn.Exec(ctx, sql)
			codes[name] = pgCode(err)
			if err != nil && codes[name] == "" {
				t.Fatalf("%s %s: %v", name, sql, err)
			}
		}
		if codes["directly"] != c.want || codes["through pgcloak"] != c.want {
			t.Errorf("%s: SQLSTATE directly %q, through pgcloak %q; want %q", c.sql, codes["directly"], codes["through pgcloak"], c.want)
		}
	}
	// What was written reads back the same both ways.
	read := func(conn *pgx.Conn, table string) string {
		rows, err := conn.Query(ctx, "select name, ssn, birth_date from "+table+" order by id")
		fatalIf(t, err, "read %s", table)
		defer rows.Close()
		var out []string
		for rows.Next() {
			vals, err := rows.Values()
			fatalIf(t, err, "values")
			out = append(out, fmt.Sprint(vals...))
		}
		return strings.Join(out, ",")
	}
	mustEqual(t, "rows through pgcloak", read(proxied, "patients"), read(direct, "patients_plain"))
}
