package proxy

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Eighth review of 2026-12-08, kept as a test: a local pin's proof names
// its transaction's start (transaction_timestamp()). Could a transaction
// started by a Describe right after a globex client's one-query transaction
// (BEGIN; SET LOCAL token; ...; COMMIT) have the same start time, so that
// run() setting the settings again verifies globex's pin? It held: the
// Describe draws a new statement timestamp.
func TestDesyncReview8DescribeReusesGlobexTxStart(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	drRun(t, env)
	conn := atkRaw(t, env) // the pooled pgcloak session
	spy := atkRaw(t, env)
	// The attacker's earlier transaction on this connection: a named statement.
	r := pipeline(t, conn, &pgproto3.Parse{Name: "zzd", Query: "select 1"}, &pgproto3.Sync{})
	t.Logf("prepare: %v", r.errors)
	// The globex client's transaction, as docs/tenant-tokens.md shows it.
	_, err := atkExec(t, conn, `BEGIN; SET LOCAL pgcloak.tenant_token = '`+mintToken(t, "globex", time.Hour)+`'; SELECT name FROM patients; COMMIT`)
	fatalIf(t, err, "globex transaction")
	pin := rvSpyPin(t, spy, conn)
	qs, _ := atkExec(t, spy, fmt.Sprintf(`select (extract(epoch from query_start)*1000000)::bigint::text from pg_stat_activity where pid = %d`, conn.PID()))
	t.Logf("globex query_start %s", qs[0].Rows[0][0])
	// The attacker's next round starts with a Describe.
	set := `select pg_catalog.set_config('app.tenant_id', '` + pin[0] + `', false), pg_catalog.set_config('pgcloak.tenant_proof', '` +
		pin[1] + `:' || (extract(epoch FROM transaction_timestamp()) * 1000000)::bigint::text, false)`
	r = pipeline(t, conn,
		&pgproto3.Describe{ObjectType: 'S', Name: "zzd"},
		&pgproto3.Parse{Query: `SELECT public.run(` + rvQuoteChunks(set) + `)`},
		&pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: `select coalesce(pgcloak.current_tenant(), '<null>'), (select string_agg(name, ',') from patients), (extract(epoch FROM transaction_timestamp()) * 1000000)::bigint::text`},
		&pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Sync{})
	t.Logf("attack: errors %v rows %v", r.errors, r.rows)
	for _, row := range r.rows {
		if len(row) >= 2 && (row[0] == "globex" || strings.Contains(row[1], "globex")) {
			t.Errorf("acme-only client read globex's rows after a Describe-started transaction: %v", row)
		}
	}
	_ = fmt.Sprint
}
