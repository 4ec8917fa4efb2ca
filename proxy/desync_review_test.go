package proxy

import (
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Adversarial review of 2026-12-08 (desyncs between pgcloak's tenant and
// PostgreSQL's), kept as tests: each failed before its fix.

// drRun creates public.run(q text), a function a DBA made that EXECUTEs
// any text it is given, which the pool role may call: SQL pgcloak cannot
// read into.
func drRun(t *testing.T, env *encryptedEnv) {
	t.Helper()
	for _, sql := range []string{
		`CREATE FUNCTION public.run(q text) RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE q; END $$`,
		`GRANT EXECUTE ON FUNCTION public.run(text) TO ` + poolRole,
	} {
		fatalIf(t, env.pg.Exec(ctxT(t), env.db, sql), "%s", sql)
	}
}

// drStaleUnnamed leaves PostgreSQL's unnamed statement holding pgcloak's
// NextStatement (local or not) while pgcloak forgets it: the Close of ""
// is skipped by PostgreSQL after an error in the same batch.
func drStaleUnnamed(t *testing.T, conn *pgconn.PgConn, local bool) pipelineResult {
	t.Helper()
	return pipeline(t, conn,
		&pgproto3.Parse{Name: "", Query: fmt.Sprintf(`SELECT pg_catalog.set_config('pgcloak.tenant_token', $1, %t)`, local)},
		&pgproto3.Bind{DestinationPortal: "zzp", PreparedStatement: "zz_no_such_statement"},
		&pgproto3.Close{ObjectType: 'S', Name: ""},
		&pgproto3.Sync{},
	)
}

// drReplay binds PostgreSQL's unnamed statement (pgcloak's NextStatement)
// with the attacker's own values: a MAC read from pg_stat_activity.
func drReplay(t *testing.T, conn *pgconn.PgConn, pin []string, begin bool) pipelineResult {
	t.Helper()
	params := [][]byte{[]byte(pin[0]), []byte(pin[1]), []byte(pin[2]), []byte(pin[3]), []byte(pin[5]),
		[]byte("app.tenant_id"), []byte("pgcloak.tenant_" + "proof")}
	var msgs []pgproto3.FrontendMessage
	if begin {
		msgs = append(msgs, &pgproto3.Parse{Name: "zzbegin", Query: "BEGIN"},
			&pgproto3.Bind{PreparedStatement: "zzbegin"}, &pgproto3.Execute{})
	}
	msgs = append(msgs, &pgproto3.Bind{PreparedStatement: "", Parameters: params}, &pgproto3.Execute{}, &pgproto3.Sync{})
	return pipeline(t, conn, msgs...)
}

// The attacker's own unexecuted pin (acme, session form) replayed through
// the stale unnamed statement: pgcloak holds the session to have no
// tenant, PostgreSQL then has acme.
func TestDesyncReviewUnnamedStatementReplayOwnPin(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	victim, pin := rvUnexecutedPin(t, env)
	r := drStaleUnnamed(t, victim, pin[4] == "true")
	t.Logf("stale unnamed batch: errors %v", r.errors)
	r = drReplay(t, victim, pin, false)
	t.Logf("replay batch: errors %v rows %v", r.errors, r.rows)
	if len(r.errors) == 0 {
		t.Errorf("a Bind of the unnamed statement after pgcloak's token statement was closed ran: rows %v", r.rows)
	}
	rvSeesNothing(t, victim, "replayed its unexecuted pin through PostgreSQL's unnamed statement left holding pgcloak's NextStatement")
}

// pgbouncer transaction mode: one pgcloak session serves the attacker
// (acme) and then a globex client. The attacker leaves the connection
// read-only; globex's SET LOCAL pin then fails after pin_next() checked its
// MAC (setval in a read-only transaction), so the MAC is unspent and its
// literal stays in pg_stat_activity while globex's transaction is aborted.
// The attacker, back on the connection, binds PostgreSQL's unnamed
// statement (pgcloak's NextStatement, forgotten by pgcloak) with globex's
// MAC: PostgreSQL pins globex, pgcloak holds the session to have no tenant.
func TestDesyncReviewUnnamedStatementReplayGlobex(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	pooled := atkRaw(t, env) // the one pgcloak session pgbouncer hands out
	spy := atkRaw(t, env)    // the attacker's other connection

	// Attacker's transaction on the pooled connection (acme).
	_, err := atkExec(t, pooled, `BEGIN; SET LOCAL pgcloak.tenant_token = '`+mintToken(t, "acme", time.Hour)+`'; SELECT name FROM patients; COMMIT`)
	fatalIf(t, err, "attacker's acme transaction")
	_, err = atkExec(t, pooled, `SET default_transaction_read_only = on`)
	t.Logf("attacker SET default_transaction_read_only = on: %v", err)

	// globex's client gets the connection next.
	_, err = atkExec(t, pooled, `BEGIN; SET LOCAL pgcloak.tenant_token = '`+mintToken(t, "globex", time.Hour)+`'; SELECT name FROM patients; COMMIT`)
	t.Logf("globex's transaction: %v", err)
	if err == nil {
		t.Fatalf("the setup failed: globex's pin ran in a read-only transaction (the test relies on it failing after pin_next() checked its MAC)")
	}
	pin := rvSpyPin(t, spy, pooled) // while globex's transaction is aborted
	_, err = atkExec(t, pooled, `ROLLBACK`)
	fatalIf(t, err, "globex's ROLLBACK")

	// Attacker again.
	_, err = atkExec(t, pooled, `SET default_transaction_read_only = off`)
	fatalIf(t, err, "read write again")
	r := drStaleUnnamed(t, pooled, pin[4] == "true")
	t.Logf("stale unnamed batch: errors %v", r.errors)
	r = drReplay(t, pooled, pin, pin[4] == "true")
	t.Logf("replay batch: errors %v rows %v", r.errors, r.rows)
	if len(r.errors) == 0 {
		t.Errorf("a Bind of the unnamed statement with globex's pin values ran: rows %v", r.rows)
	}
	atkExec(t, pooled, `ROLLBACK`)
	rvSeesNothing(t, pooled, "replayed globex's pin, read from pg_stat_activity, through the unnamed statement")
}

// SET CONSTRAINTS ALL IMMEDIATE fires deferred triggers; it is not a
// VariableSetStmt, so it must not count as running no code.
func TestDesyncReviewSetConstraintsBeforeToken(t *testing.T) {
	env := startTokenEnv(t)
	conn := atkRaw(t, env)
	tok := mintToken(t, "acme", time.Hour)
	for _, q := range []string{
		`BEGIN; SET CONSTRAINTS ALL IMMEDIATE; SET LOCAL pgcloak.tenant_token = '` + tok + `'; COMMIT`,
		`BEGIN; PREPARE TRANSACTION 'x'; SET pgcloak.tenant_token = '` + tok + `'`,
		`BEGIN; COMMIT AND CHAIN; SET LOCAL pgcloak.tenant_token = '` + tok + `'; COMMIT`,
		`DISCARD ALL; SET pgcloak.tenant_token = '` + tok + `'`,
		`BEGIN; END; SET pgcloak.tenant_token = '` + tok + `'`,
	} {
		_, err := atkExec(t, conn, q)
		t.Logf("%.60s: %v", q, err)
		if pgCode(err) != "0A000" {
			t.Errorf("%.80s: %v, want 0A000", q, err)
		}
		atkExec(t, conn, `ROLLBACK`)
	}
}

// Two transactions in one simple Query share transaction_timestamp()
// (statement_timestamp is the Query message's): a local pin's proof names
// the first one's start, which the second one has too. After the COMMIT
// pgcloak holds the session to have no tenant; the settings set again
// through a DBA's function make current_tenant() the local pin's tenant.
func TestDesyncReviewLocalPinSurvivesCommitInSameQuery(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	drRun(t, env)
	conn := atkRaw(t, env)
	set := `select pg_catalog.set_config('app.tenant_id', 'acme', true), pg_catalog.set_config('pgcloak.tenant_proof', ` +
		`substring(pg_catalog.current_query() from 'v1:[0-9]+:[0-9a-f]{32}') || ':' || ` +
		`(extract(epoch FROM transaction_timestamp()) * 1000000)::bigint::text, true)`
	q := `BEGIN; SET LOCAL pgcloak.tenant_token = '` + mintToken(t, "acme", time.Hour) + `'; COMMIT; BEGIN; SELECT public.run(` +
		rvQuoteChunks(set) + `); SELECT coalesce(pgcloak.current_tenant(), '<null>'); SELECT name FROM patients`
	_, err := atkExec(t, conn, q)
	t.Logf("query: %v", err)
	if pgCode(err) != "0A000" {
		t.Errorf("statements after the end of a local token's transaction in the same query: %v, want 0A000", err)
	}
	atkExec(t, conn, `ROLLBACK`)
	rvSeesNothing(t, conn, "set a local pin's settings again in a later transaction of the same query")
	// What the rule leaves alone.
	tok := mintToken(t, "acme", time.Hour)
	for _, q := range []string{
		`BEGIN; SET LOCAL pgcloak.tenant_token = '` + tok + `'; SAVEPOINT a; SELECT name FROM patients; ROLLBACK TO a; SELECT name FROM patients; COMMIT`,
		`SET LOCAL pgcloak.tenant_token = '` + tok + `'; SELECT name FROM patients`,
	} {
		if _, err := atkExec(t, conn, q); err != nil {
			t.Errorf("%.90s: %v", q, err)
		}
	}
}

// COMMIT AND CHAIN (or END AND CHAIN) as the last statement of a local
// token's query (fourth review): refusing statements after the end was not
// enough, since the chained transaction outlives the query, and it started
// in the same Query message, so transaction_timestamp() is the pinned
// transaction's and the local proof is good in it. The next query sets the settings
// again through a DBA's function (public.run, as in
// TestDesyncReviewLocalPinSurvivesCommitInSameQuery), with the proof read
// from pg_stat_activity: PostgreSQL holds acme, pgcloak (which saw the
// COMMIT tag) holds the session to have no tenant.
func TestDesyncReviewCommitAndChainLocalPin(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	drRun(t, env)
	for _, end := range []string{"COMMIT AND CHAIN", "END AND CHAIN"} {
		conn := atkRaw(t, env)
		spy := atkRaw(t, env)
		_, err := atkExec(t, conn, `BEGIN; SET LOCAL pgcloak.tenant_token = '`+mintToken(t, "acme", time.Hour)+`'; `+end)
		t.Logf("%s: %v", end, err)
		if pgCode(err) == "0A000" {
			continue
		}
		t.Errorf("a local token's query ending %s: %v, want 0A000", end, err)
		pin := rvSpyPin(t, spy, conn)
		set := `select pg_catalog.set_config('app.tenant_id', '` + pin[0] + `', true), pg_catalog.set_config('pgcloak.tenant_proof', '` +
			pin[1] + `' || ':' || (extract(epoch FROM transaction_timestamp()) * 1000000)::bigint::text, true)`
		_, err = atkExec(t, conn, `SELECT public.run(`+rvQuoteChunks(set)+`)`)
		t.Logf("run: %v", err)
		rvSeesNothing(t, conn, "set a local pin's settings again in the transaction chained by its query's "+end)
		atkExec(t, conn, `ROLLBACK`)
	}
}
