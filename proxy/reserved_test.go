package proxy

import (
	"testing"
)

// TestReservedNamesFromSQL: pgcloak's own prepared statements (which take
// ciphertext for declared columns) and portals cannot be reached from SQL,
// in any quoting, over either protocol, in sessions with a tenant or
// without: a client that could EXECUTE one would store what it likes in a
// declared column, and one that could DEALLOCATE and PREPARE one would swap
// the statement a later Bind runs.
func TestReservedNamesFromSQL(t *testing.T) {
	env := startEncrypted(t)
	ctx := ctxT(t)
	conn := env.tenantConn(t, acmeRole).PgConn()
	const insert = `insert into patients (name, ssn) values ($1, $2)`
	_, err := conn.Prepare(ctx, "ins", insert, nil)
	fatalIf(t, err, "prepare ins")
	store := func(name, ssn string) error {
		return conn.ExecPrepared(ctx, "ins", [][]byte{[]byte(name), []byte(ssn)}, nil, nil).Read().Err
	}
	fatalIf(t, store("first", "111-11-1111"), "insert through ins")
	res, err := conn.Exec(ctx, `select name from pg_prepared_statements where name like 'pgcloak:%' order by name`).ReadAll()
	fatalIf(t, err, "pg_prepared_statements")
	if len(res[0].Rows) == 0 {
		t.Fatal("pgcloak prepared no statement of its own upstream")
	}
	own := string(res[0].Rows[0][0]) // e.g. pgcloak:s1
	suffix := own[len("pgcloak:"):]

	stmts := []string{
		`EXECUTE "` + own + `"('mallory', 'zz-plain-1', '\\x00')`,
		`execute U&"\0070gcloak:` + suffix + `"('mallory', 'zz-plain-2', '\\x00')`,
		`EXECUTE U&"pgcloak\003a` + suffix + `"('mallory', 'zz-plain-3', '\\x00')`,
		`SELECT 1; EXECUTE "` + own + `"('mallory', 'zz-plain-4', '\\x00')`,
		`DEALLOCATE "` + own + `"`,
		`DEALLOCATE PREPARE "` + own + `"`,
		`PREPARE "pgcloak:s999" AS SELECT 1`,
		`DECLARE "pgcloak:c" CURSOR FOR SELECT 1`,
		`FETCH ALL FROM "pgcloak:c"`,
		`MOVE NEXT IN "pgcloak:c"`,
		`CLOSE "pgcloak:c"`,
		`SELECT query_to_xml('EXECUTE "` + own + `"(''mallory'', ''zz-plain-5'', ''x'')', true, true, '')`,
	}
	for _, role := range []string{acmeRole, migratorRole} {
		c := conn
		if role != acmeRole {
			c = env.tenantConn(t, role).PgConn()
		}
		for _, p := range protocols {
			for _, sql := range stmts {
				wantRefusal(t, role+" "+p.name+" "+sql, p.run(ctx, c, sql), "42501")
			}
		}
	}
	var n int
	fatalIf(t, env.pool.QueryRow(ctx, `select count(*) from patients where name = 'mallory' or position('zz-plain' in encode(ssn, 'escape')) > 0`).Scan(&n), "count")
	mustEqual(t, "rows stored through pgcloak's statement", n, 0)
	// pgcloak's statement is still there, and still the client's.
	fatalIf(t, store("second", "222-22-2222"), "insert through ins afterwards")
	fatalIf(t, env.pool.QueryRow(ctx, `select count(*) from patients where name in ('first', 'second')`).Scan(&n), "count")
	mustEqual(t, "rows stored through ins", n, 2)
}

// TestExecuteOfUnknownStatement: an EXECUTE with arguments of a statement
// name the session has not prepared (a PREPARE pgcloak refused, a
// statement pgcloak prepared under a name of its own, one deallocated) is
// refused by pgcloak as PostgreSQL would refuse it, 26000, without
// reaching PostgreSQL, whose log would keep the arguments.
func TestExecuteOfUnknownStatement(t *testing.T) {
	env := startEncrypted(t)
	ctx := ctxT(t)
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			conn := env.tenantConn(t, acmeRole).PgConn()
			_, err := conn.Prepare(ctx, "pp", `select $1::int + 1`, nil)
			fatalIf(t, err, "prepare pp")
			_, err = conn.Prepare(ctx, "ins", `insert into patients (name, ssn) values ('x', $1)`, nil)
			fatalIf(t, err, "prepare ins")
			wantRefusal(t, "PREPARE of a write", p.run(ctx, conn, `PREPARE p(text) AS INSERT INTO patients (ssn) VALUES ($1)`), "0A000")
			for _, sql := range []string{
				`EXECUTE p('zz-secret-1')`,
				`EXECUTE ins('zz-secret-2')`,
				`EXECUTE "P"('zz-secret-3')`,
				`CREATE TABLE leak AS EXECUTE p('zz-secret-4')`,
			} {
				wantRefusal(t, sql, p.run(ctx, conn, sql), "26000")
			}
			for _, sql := range []string{
				`EXECUTE pp(1)`,
				`PREPARE q(int) AS SELECT $1`,
				`EXECUTE q(2)`,
				`DEALLOCATE q`,
			} {
				fatalIf(t, p.run(ctx, conn, sql), "%s", sql)
			}
			wantRefusal(t, "EXECUTE after DEALLOCATE", p.run(ctx, conn, `EXECUTE q(3)`), "26000")
			if p.name == "simple" {
				fatalIf(t, p.run(ctx, conn, `PREPARE r(int) AS SELECT $1; EXECUTE r(4); DEALLOCATE r`), "prepare and execute in one text")
				wantRefusal(t, "DEALLOCATE then EXECUTE in one text", p.run(ctx, conn, `PREPARE r(int) AS SELECT $1; DEALLOCATE r; EXECUTE r(5)`), "26000")
			}
		})
	}
}
