package proxy

import (
	"testing"
	"time"
)

// TestTenantTokenStateOutlivingTransaction: in a token role's session, a
// statement that would leave rows past its transaction outside row-level
// security (a WITH HOLD cursor, a temporary table not dropped on commit,
// however spelt) is refused with 0A000 before it reaches PostgreSQL, in
// the simple and the extended protocol, with a token and without; the
// forms that end with the transaction work, and a login-mapped tenant
// (whose tenant never changes) may still use WITH HOLD and temporary
// tables.
func TestTenantTokenStateOutlivingTransaction(t *testing.T) {
	env := startTokenEnv(t)
	ctx := ctxT(t)
	fatalIf(t, env.pg.Exec(ctx, env.db, `create table notes (id int, body text); insert into notes values (1, 'a note');
		grant select on notes to `+poolRole+`, `+acmeRole), "notes")
	acme := mintToken(t, "acme", time.Hour)
	refused := []string{
		`declare c cursor with hold for select body from notes`,
		`DECLARE c NO SCROLL CURSOR WITH HOLD FOR SELECT 1`,
		`create temp table t1 (x int)`,
		`CREATE TEMPORARY TABLE t2 AS SELECT body FROM notes`,
		`create table pg_temp.t3 (x text)`,
		`create table "pg_temp".t4 (x text)`,
		`select body into temp t5 from notes`,
		`explain analyze create temp table t6 as select 1`,
		`create temp table t7 (x int) on commit delete rows`,
	}
	for _, mode := range []string{"simple_protocol", "exec"} {
		conn := env.tenantConn(t, poolRole, "default_query_exec_mode="+mode)
		for _, withToken := range []bool{false, true} {
			for _, sql := range refused {
				tx, err := conn.Begin(ctx)
				fatalIf(t, err, "begin")
				if withToken {
					_, err = tx.Exec(ctx, `SET LOCAL pgcloak.tenant_token = '`+acme+`'`)
					fatalIf(t, err, "token")
				}
				_, err = tx.Exec(ctx, sql)
				if pgCode(err) != "0A000" {
					t.Errorf("%s, token %v: %q: %v, want 0A000", mode, withToken, sql, err)
				}
				tx.Rollback(ctx)
			}
		}
		// What ends with the transaction is allowed.
		tx, err := conn.Begin(ctx)
		fatalIf(t, err, "begin")
		_, err = tx.Exec(ctx, `SET LOCAL pgcloak.tenant_token = '`+acme+`'`)
		fatalIf(t, err, "token")
		_, err = tx.Exec(ctx, `declare c cursor for select body from notes`)
		fatalIf(t, err, "cursor without hold")
		_, err = tx.Exec(ctx, `create temp table t8 (x int) on commit drop`)
		fatalIf(t, err, "temp table on commit drop")
		fatalIf(t, tx.Commit(ctx), "commit")
		// Nothing of it is left for the next transaction.
		_, err = conn.Exec(ctx, `select * from t8`)
		if pgCode(err) != "42P01" {
			t.Errorf("%s: the temporary table outlived its transaction: %v", mode, err)
		}
	}
	// A login-mapped tenant keeps its tenant for the whole session.
	c := env.tenantConn(t, acmeRole)
	tx, err := c.Begin(ctx)
	fatalIf(t, err, "begin")
	_, err = tx.Exec(ctx, `declare h cursor with hold for select body from notes`)
	fatalIf(t, err, "login tenant: WITH HOLD")
	fatalIf(t, tx.Commit(ctx), "commit")
	var body string
	fatalIf(t, c.QueryRow(ctx, `fetch next from h`).Scan(&body), "fetch after commit")
	mustEqual(t, "held cursor", body, "a note")
	mustExec(t, c, `create temp table t9 (x int)`)
}
