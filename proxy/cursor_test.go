package proxy

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestCursors: server-side cursors over declared columns are rewritten
// like the SELECT they wrap, in the simple and the extended protocol, and
// what FETCH returns is decrypted: a search on an encrypted column finds
// the tenant's own row only (globex has a row with the same ssn), SELECT *
// leaves the index columns out, and SCROLL, WITH HOLD, FETCH n, FETCH
// BACKWARD, MOVE and CLOSE behave as in PostgreSQL. A cursor over what a
// plain SELECT may not do stays refused.
func TestCursors(t *testing.T) {
	env := startEncrypted(t)
	ctx := ctxT(t)
	acme := env.tenantConn(t, acmeRole)
	insertPatient(t, acme, "alice", "123-45-6789", "Alice@Example.com", "influenza", "1980-01-02")
	insertPatient(t, acme, "carol", "555-00-1111", "carol@example.com", "asthma", "1990-03-04")
	insertPatient(t, acme, "dave", "555-00-2222", "dave@example.com", "gout", "1970-05-06")
	insertPatient(t, env.tenantConn(t, globexRole), "bob", "123-45-6789", "bob@globex.test", "fractured femur", "1975-06-30")

	rowsOf := func(t *testing.T, conn *pgx.Conn, sql string, args ...any) (fields []string, rows []string) {
		t.Helper()
		rs, err := conn.Query(ctx, sql, args...)
		fatalIf(t, err, "%s", sql)
		defer rs.Close()
		for _, f := range rs.FieldDescriptions() {
			fields = append(fields, f.Name)
		}
		for rs.Next() {
			vals, err := rs.Values()
			fatalIf(t, err, "values of %s", sql)
			var parts []string
			for _, v := range vals {
				if s, ok := v.(string); ok {
					parts = append(parts, s)
				}
			}
			rows = append(rows, strings.Join(parts, "|"))
		}
		fatalIf(t, rs.Err(), "%s", sql)
		return fields, rows
	}
	exec := func(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
		t.Helper()
		_, err := conn.Exec(ctx, sql, args...)
		fatalIf(t, err, "%s", sql)
	}

	for _, mode := range []string{"simple_protocol", "exec", "cache_describe", "cache_statement"} {
		t.Run(mode, func(t *testing.T) {
			conn := connect(t, env.proxy.url(acmeRole, rolePassword, env.db, "default_query_exec_mode="+mode))

			// A search through a cursor, the value bound (a literal in
			// the simple protocol).
			exec(t, conn, "BEGIN")
			exec(t, conn, "DECLARE c CURSOR FOR SELECT name, ssn, diagnosis FROM patients WHERE ssn = $1", "123-45-6789")
			_, rows := rowsOf(t, conn, "FETCH ALL FROM c")
			mustEqual(t, "search by ssn through a cursor", strings.Join(rows, ","), "alice|123-45-6789|influenza")
			exec(t, conn, "CLOSE c")
			exec(t, conn, "COMMIT")

			// SCROLL WITH HOLD over SELECT *, IN on a searchable column,
			// FETCH n, FETCH BACKWARD, MOVE, after COMMIT.
			exec(t, conn, "BEGIN")
			exec(t, conn, "DECLARE h SCROLL CURSOR WITH HOLD FOR SELECT * FROM patients WHERE email IN ('carol@example.com', 'DAVE@example.com', 'bob@globex.test') ORDER BY name")
			exec(t, conn, "COMMIT")
			fields, rows := rowsOf(t, conn, "FETCH 2 FROM h")
			for _, f := range fields {
				if strings.HasSuffix(f, "_bidx") {
					t.Errorf("FETCH of SELECT *: index column %s reached the client (fields %v)", f, fields)
				}
			}
			mustEqual(t, "FETCH 2", strings.Join(rows, ","), "acme|carol|555-00-1111|carol@example.com|asthma,acme|dave|555-00-2222|dave@example.com|gout")
			_, rows = rowsOf(t, conn, "FETCH BACKWARD 1 FROM h")
			mustEqual(t, "FETCH BACKWARD 1", strings.Join(rows, ","), "acme|carol|555-00-1111|carol@example.com|asthma")
			exec(t, conn, "MOVE ABSOLUTE 0 IN h")
			_, rows = rowsOf(t, conn, "FETCH NEXT FROM h")
			mustEqual(t, "FETCH NEXT after MOVE", strings.Join(rows, ","), "acme|carol|555-00-1111|carol@example.com|asthma")
			exec(t, conn, "CLOSE h")
			_, err := conn.Exec(ctx, "FETCH NEXT FROM h")
			mustEqual(t, "FETCH from a closed cursor", pgCode(err), "34000")

			// Refused as the plain SELECT would be, nothing reaches PostgreSQL.
			_, err = conn.Exec(ctx, "DECLARE bad CURSOR WITH HOLD FOR SELECT name FROM patients ORDER BY ssn")
			mustEqual(t, "cursor ordering by an encrypted column", pgCode(err), "0A000")
			_, err = conn.Exec(ctx, "DECLARE bad2 CURSOR WITH HOLD FOR SELECT name FROM patients WHERE ssn LIKE '123%'")
			mustEqual(t, "cursor with LIKE on an encrypted column", pgCode(err), "0A000")
		})
	}

	// What PostgreSQL stored and received: no plaintext anywhere.
	var n int
	fatalIf(t, env.pool.QueryRow(ctx, `select count(*) from patients where ssn::text like '%123-45%' or encode(ssn, 'escape') like '%123-45%'`).Scan(&n), "stored")
	mustEqual(t, "rows storing plaintext", n, 0)
}

// TestCursorsPsycopg: psycopg 3's server-side (named) cursors, which send
// DECLARE with bound parameters through the extended protocol, search an
// encrypted column and fetch in batches through the proxy.
func TestCursorsPsycopg(t *testing.T) {
	needPsycopg(t)
	env := startEncrypted(t)
	acme := env.tenantConn(t, acmeRole)
	for i, name := range []string{"alice", "carol", "dave", "erin", "frank"} {
		insertPatient(t, acme, name, "555-00-000"+string(rune('0'+i)), name+"@example.com", "flu", "1980-01-02")
	}
	insertPatient(t, env.tenantConn(t, globexRole), "bob", "555-00-0000", "bob@globex.test", "fractured femur", "1975-06-30")
	script := `
import os, psycopg
with psycopg.connect(os.environ["PGCLOAK_URL"]) as conn:
    with conn.cursor(name="by_ssn") as cur:
        cur.execute("select name, ssn from patients where ssn = %s", ("555-00-0000",))
        print("search", cur.fetchall())
    with conn.cursor(name="all", scrollable=True, withhold=True) as cur:
        cur.itersize = 2
        cur.execute("select name, email from patients where email = any(%s) order by name", (["carol@example.com", "erin@example.com", "bob@globex.test"],))
        print("any", list(cur))
        cur.scroll(0, mode="absolute")
        print("again", cur.fetchmany(1))
`
	cmd := exec.Command(python3, "-c", script)
	cmd.Env = append(cmd.Environ(), "PGCLOAK_URL="+env.proxy.url(acmeRole, rolePassword, env.db))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("psycopg named cursors through the proxy: %v\n%s", err, out)
	}
	mustEqual(t, "psycopg output", strings.TrimSpace(string(out)), strings.Join([]string{
		"search [('alice', '555-00-0000')]",
		"any [('carol', 'carol@example.com'), ('erin', 'erin@example.com')]",
		"again [('carol', 'carol@example.com')]",
	}, "\n"))
}
