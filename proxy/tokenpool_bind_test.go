package proxy

import (
	"testing"
	"time"
)

// TestTokenPoolBindWithoutTenant: a pooled connection's statement that
// seals a parameter, prepared while a tenant's token was in force, is
// bound again after that token's transaction ended: the session has no
// tenant, and the Bind is refused with 42501 as a Parse would be, writing
// nothing.
func TestTokenPoolBindWithoutTenant(t *testing.T) {
	env := startTokenEnv(t)
	ctx := ctxT(t)
	conn := connect(t, env.proxy.url(poolRole, rolePassword, env.db))
	const insert = `insert into patients (name, ssn) values ($1, $2)`
	tx, err := conn.Begin(ctx)
	fatalIf(t, err, "begin")
	fatalIf(t, setLocalToken(ctx, tx, mintToken(t, "acme", time.Hour)), "token")
	_, err = tx.Exec(ctx, insert, "acme/1", "acme-ssn-1")
	fatalIf(t, err, "insert as acme")
	fatalIf(t, tx.Commit(ctx), "commit")

	_, err = conn.Exec(ctx, insert, "nobody/1", "nobody-ssn-1") // the cached statement, no tenant
	if pgCode(err) != "42501" {
		t.Errorf("insert without a tenant through a statement prepared under one: got %v (%s), want 42501", err, pgCode(err))
	}
	var n int
	fatalIf(t, env.pool.QueryRow(ctx, `select count(*) from patients`).Scan(&n), "count")
	mustEqual(t, "stored rows", n, 1)
}
