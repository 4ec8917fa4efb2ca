package proxy

import (
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestDeallocateRewrittenStatement: DEALLOCATE name (SQL, as psycopg 3
// evicts its prepared statements) drops a statement pgcloak prepared
// upstream under its own name, and the name can be prepared again.
func TestDeallocateRewrittenStatement(t *testing.T) {
	conn := aliceConn(t)
	ctx := ctxT(t)
	const search = `select name from patients where ssn = $1`
	find := func(stmt string) (string, error) {
		res := conn.ExecPrepared(ctx, stmt, [][]byte{[]byte("123-45-6789")}, nil, nil).Read()
		if res.Err != nil {
			return "", res.Err
		}
		if len(res.Rows) != 1 {
			t.Fatalf("%s: %d rows", stmt, len(res.Rows))
		}
		return string(res.Rows[0][0]), nil
	}
	_, err := conn.Prepare(ctx, "keep", search, nil)
	fatalIf(t, err, "prepare keep")
	for _, sql := range []string{`DEALLOCATE _pg3_0`, `deallocate prepare "_pg3_0"`} {
		_, err := conn.Prepare(ctx, "_pg3_0", search, nil)
		fatalIf(t, err, "prepare before %s", sql)
		name, err := find("_pg3_0")
		fatalIf(t, err, "execute")
		mustEqual(t, "found", name, "alice")

		_, err = conn.Exec(ctx, sql).ReadAll()
		fatalIf(t, err, "%s", sql)
		_, err = find("_pg3_0")
		mustEqual(t, "execute after "+sql, pgCode(err), "26000")
		// Another rewritten statement is untouched.
		name, err = find("keep")
		fatalIf(t, err, "execute keep after %s", sql)
		mustEqual(t, "keep", name, "alice")
	}
	// A name pgcloak did not rewrite still gets PostgreSQL's own answer,
	// and drops nothing of pgcloak's.
	_, err = conn.Exec(ctx, `DEALLOCATE nosuch`).ReadAll()
	mustEqual(t, "DEALLOCATE of an unknown name", pgCode(err), "26000")
	_, err = find("keep")
	fatalIf(t, err, "execute keep after DEALLOCATE nosuch")
	// DEALLOCATE ALL drops them all; the names can be prepared again.
	_, err = conn.Exec(ctx, `DEALLOCATE ALL`).ReadAll()
	fatalIf(t, err, "DEALLOCATE ALL")
	_, err = conn.Prepare(ctx, "keep", search, nil)
	fatalIf(t, err, "prepare keep again")
	_, err = find("keep")
	fatalIf(t, err, "execute keep again")
}

// aliceConn is a protocol-level connection of tenant acme through the proxy,
// with one patient, alice (ssn 123-45-6789).
func aliceConn(t *testing.T) *pgconn.PgConn {
	t.Helper()
	env := startEncrypted(t)
	insertPatient(t, env.tenantConn(t, acmeRole), "alice", "123-45-6789", "alice@example.com", "flu", "1980-01-02")
	return connect(t, env.proxy.url(acmeRole, rolePassword, env.db)).PgConn()
}
