package proxy

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// A portal bound under one token's tenant and executed after a switch to
// another would stamp its row with the new tenant while its values are
// sealed for the old one (unreadable by either), or search with the old
// tenant's blind index among the new tenant's rows (silently nothing).
// pgcloak refuses that Execute (0A000); bound again, it runs.
func TestTokenPortalBoundForEarlierTenant(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	conn, err := pgconn.Connect(ctxT(t), env.proxy.url(poolRole, rolePassword, env.db))
	fatalIf(t, err, "connect")
	defer conn.Close(ctxT(t))
	tokA, tokB := mintToken(t, "acme", time.Hour), mintToken(t, "globex", time.Hour)
	insert := &pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "ins", Parameters: [][]byte{[]byte("late"), []byte("555-55-5555")}}
	search := &pgproto3.Bind{DestinationPortal: "q", PreparedStatement: "find", Parameters: [][]byte{[]byte("987-65-4321")}}
	r := pipeline(t, conn,
		&pgproto3.Query{String: `BEGIN; SET LOCAL pgcloak.tenant_token = '` + tokA + `'`},
		&pgproto3.Parse{Name: "ins", Query: `INSERT INTO patients (name, ssn) VALUES ($1, $2)`},
		&pgproto3.Parse{Name: "find", Query: `SELECT name FROM patients WHERE ssn = $1`},
		insert, search, &pgproto3.Sync{},
		&pgproto3.Query{String: `SET LOCAL pgcloak.tenant_token = '` + tokB + `'`},
		&pgproto3.Execute{Portal: "p"}, &pgproto3.Sync{})
	t.Logf("insert bound under acme, executed under globex: %v", r.errors)
	if len(r.errors) != 1 || r.errors[0][:5] != "0A000" {
		t.Errorf("Execute of a portal sealed for acme after switching to globex: errors %v, want one 0A000", r.errors)
	}
	r = pipeline(t, conn, &pgproto3.Query{String: `ROLLBACK`},
		&pgproto3.Query{String: `BEGIN; SET LOCAL pgcloak.tenant_token = '` + tokA + `'`},
		search, &pgproto3.Sync{},
		&pgproto3.Query{String: `SET LOCAL pgcloak.tenant_token = '` + tokB + `'`},
		&pgproto3.Execute{Portal: "q"}, &pgproto3.Sync{}, &pgproto3.Query{String: `ROLLBACK`})
	t.Logf("search bound under acme, executed under globex: %v rows %v", r.errors, r.rows)
	if len(r.errors) != 1 || r.errors[0][:5] != "0A000" {
		t.Errorf("Execute of a search indexed for acme after switching to globex: errors %v rows %v, want one 0A000 (not a silently empty result)", r.errors, r.rows)
	}
	// Bound again under the tenant of the moment, both run.
	r = pipeline(t, conn,
		&pgproto3.Query{String: `BEGIN; SET LOCAL pgcloak.tenant_token = '` + tokB + `'`},
		search, &pgproto3.Execute{Portal: "q"}, insert, &pgproto3.Execute{Portal: "p"}, &pgproto3.Sync{},
		&pgproto3.Query{String: `SELECT ssn FROM patients WHERE name = 'late'; COMMIT`})
	if len(r.errors) != 0 || len(r.rows) != 2 || r.rows[0][0] != "seed-globex" || r.rows[1][0] != "555-55-5555" {
		t.Errorf("bound under globex: errors %v rows %v, want [[seed-globex] [555-55-5555]]", r.errors, r.rows)
	}
}
