package proxy

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestPinSurvivesDiscard: DISCARD ALL (pgbouncer's reset query) and
// DISCARD SEQUENCES forget the session's pin upstream; pgcloak pins the
// session again before the client's next statement, in the simple and the
// extended protocol, pipelined, and after a failed transaction block.
func TestPinSurvivesDiscard(t *testing.T) {
	env := startEncrypted(t)
	ctx := ctxT(t)
	insertPatient(t, env.tenantConn(t, acmeRole), "alice", "123-45-6789", "alice@example.com", "flu", "1980-01-02")

	verified := func(t *testing.T, conn *pgx.Conn, when string) {
		t.Helper()
		var tenant *string
		var n int
		fatalIf(t, conn.QueryRow(ctx, `select pgcloak.current_tenant(), (select count(*) from patients)`).Scan(&tenant, &n), "after %s", when)
		if tenant == nil || *tenant != "acme" || n != 1 {
			t.Fatalf("after %s: current_tenant() %v and %d rows, want acme and 1", when, tenant, n)
		}
	}

	simple := env.tenantConn(t, acmeRole)
	for _, sql := range []string{`discard all`, `DISCARD SEQUENCES`, `select 1; discard sequences; select 2`, `reset all`} {
		_, err := simple.Exec(ctx, sql)
		fatalIf(t, err, "%s", sql)
		verified(t, simple, sql)
	}

	// Extended protocol: Parse of DISCARD ALL, pin renewed after its Sync.
	extended := connect(t, env.proxy.url(acmeRole, rolePassword, env.db))
	_, err := extended.Exec(ctx, `discard all`)
	fatalIf(t, err, "discard all (extended)")
	verified(t, extended, "DISCARD ALL in the extended protocol")

	// Pipelined: DISCARD SEQUENCES and a read in one batch. The read may run
	// before the pin is renewed (it is in the same round); the next round
	// sees the tenant.
	b := &pgx.Batch{}
	b.Queue(`discard sequences`)
	b.Queue(`select 1`)
	fatalIf(t, extended.SendBatch(ctx, b).Close(), "batch")
	verified(t, extended, "a pipelined DISCARD SEQUENCES")

	// In a failed transaction block the renewal waits for the ROLLBACK.
	tx := env.tenantConn(t, acmeRole)
	_, err = tx.Exec(ctx, `begin; discard sequences; select 1/0`)
	if pgCode(err) != "22012" {
		t.Fatalf("division by zero: got %v", err)
	}
	_, err = tx.Exec(ctx, `rollback`)
	fatalIf(t, err, "rollback")
	verified(t, tx, "DISCARD SEQUENCES in a transaction that failed, then ROLLBACK")

	// The client never sees the proxy's own statements.
	var got int
	fatalIf(t, simple.QueryRow(context.Background(), `select 41 + 1`).Scan(&got), "select")
	if got != 42 {
		t.Fatalf("select 41 + 1 = %d after the renewals", got)
	}
}
