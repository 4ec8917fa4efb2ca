package proxy

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// A named statement whose rewritten Parse PostgreSQL skipped (an error
// earlier before the same Sync) leaves its name free upstream: parsed
// again as a plain statement, it is bound and run as PostgreSQL has it.
func TestSkippedRewrittenParseThenPlain(t *testing.T) {
	env := startVisits(t)
	conn := connect(t, env.proxy.url(acmeRole, rolePassword, env.db))
	pc := conn.PgConn()
	r := pipeline(t, pc,
		&pgproto3.Bind{PreparedStatement: "nope"},
		&pgproto3.Parse{Name: "s", Query: `insert into visits (id, ssn) values ($1, $2)`},
		&pgproto3.Sync{})
	if len(r.errors) != 1 {
		t.Fatalf("round 1: %v, want the Bind's error only", r.errors)
	}
	r = pipeline(t, pc,
		&pgproto3.Parse{Name: "s", Query: `select $1::text`},
		&pgproto3.Bind{PreparedStatement: "s", Parameters: [][]byte{[]byte("plain")}},
		&pgproto3.Execute{}, &pgproto3.Sync{})
	if len(r.errors) != 0 || len(r.rows) != 1 || r.rows[0][0] != "plain" {
		t.Errorf("the plain statement under the skipped statement's name: errors %v rows %v, want [[plain]]", r.errors, r.rows)
	}
}
