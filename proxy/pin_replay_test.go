package proxy

import (
	"fmt"
	"testing"
	"time"

	"github.com/pgcloak/pgcloak/keystore"
	"github.com/pgcloak/pgcloak/rewrite"
)

// A pin that did not run leaves its MAC in pg_stat_activity, readable by
// every session of the role. A function that runs any text it is given
// (one a DBA made: pgcloak cannot see into it, and check only warns) then
// lets a later client of the connection replay it with text assembled at
// run time, which no text check can see. PostgreSQL refuses the replay:
// pin_next() accepts a MAC only while the top-level text is pgcloak's.
func TestPinReplayThroughDBAFunction(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	drRun(t, env) // a DBA's function that runs any text
	victim, pin := rvUnexecutedPin(t, env)
	call := fmt.Sprintf(`pgcloak.pin_next('%s', '%s', %s, %s, %s, '%s')`, pin[0], pin[1], pin[2], pin[3], pin[4], pin[5])
	set := `SELECT pg_catalog.set_config('app.tenant_id', '` + pin[0] + `', false), pg_catalog.set_config('pgcloak.tenant_proof', ` + call + `, false)`
	for _, q := range []string{
		`SELECT public.run(` + rvQuoteChunks(set) + `)`,
		// The marker built at run time is not in the top-level text either.
		`SELECT public.run(` + rvQuoteChunks(keystore.LiteralPin(pin[5], set)) + `)`,
	} {
		_, err := atkExec(t, victim, q)
		t.Logf("replay through public.run(): %v", err)
		if err == nil {
			t.Errorf("the replay through a DBA's dynamic-SQL function ran without error: %.120s", q)
		}
	}
	rvSeesNothing(t, victim, "replayed an unexecuted pin through a DBA's dynamic-SQL function")
}

// The byte check that keeps a MAC's marker out of every client text, in
// both protocols, as written and as rewritten, in every kind of session
// that has a tenant: 42501 before anything reaches PostgreSQL.
func TestPinWordRefused(t *testing.T) {
	if rewrite.PinWord != keystore.PinWord {
		t.Fatalf("rewrite.PinWord %q and keystore.PinWord %q differ: the proxy would let through the text pin_next() trusts", rewrite.PinWord, keystore.PinWord)
	}
	env := startTokenEnv(t)
	atkSeed(t, env)
	conn := atkRaw(t, env)
	_, err := atkExec(t, conn, `BEGIN; SET LOCAL pgcloak.tenant_token = '`+mintToken(t, "acme", time.Hour)+`'; SELECT name FROM patients; COMMIT`)
	fatalIf(t, err, "token transaction")
	for _, q := range []string{
		`/*pgcloak.pin:00*/ SELECT 1`,
		`SELECT 'PgCloak.Pin_next' AS x`,
		`SELECT 1 AS "pgcloak.pin"`,
		`SELECT ssn AS U&"pgcloak\002epin" FROM patients WHERE ssn = '1'`,
	} {
		_, err := atkExec(t, conn, q)
		if pgCode(err) != "42501" {
			t.Errorf("simple Query %q: %v, want 42501", q, err)
		}
		rr := conn.ExecParams(ctxT(t), q, nil, nil, nil, nil).Read()
		if pgCode(rr.Err) != "42501" {
			t.Errorf("extended Parse %q: %v, want 42501", q, rr.Err)
		}
	}
	// A tenant claim is written into the pin's text: one holding the word
	// is refused whatever verifier accepted the token (here the tests').
	_, err = atkExec(t, conn, `SET pgcloak.tenant_token = '`+mintToken(t, "x/*PGCLOAK.PIN:00*/", time.Hour)+`'`)
	if pgCode(err) != "28000" {
		t.Errorf("a token whose tenant holds the pin's word: %v, want 28000", err)
	}
	ct, _ := rvSees(t, conn)
	if ct != "<null>" {
		t.Errorf("after the refusals the session's current_tenant() is %s, want none", ct)
	}
}

// Code that runs before pgcloak's pin in the same top-level text could
// take the pin out of current_query() and run it first (found by review:
// pgcloak's own pin then failed, and the session that pgcloak held to
// have no tenant read acme's rows once the settings were set through a
// DBA's dynamic-SQL function). A token statement may follow only
// statements that run no code; the usual forms still work.
func TestTokenCodeBeforeTokenRefused(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	drRun(t, env) // a DBA's function that runs any text
	conn := atkRaw(t, env)
	tok := mintToken(t, "acme", time.Hour)
	runPin := `SELECT public.run(substring(pg_catalog.current_query() from ` + rvQuoteChunks(`\*/ (SELECT pg_catalog[.]textcat[(].*[)]) AS "`) + `))`
	for _, q := range []string{
		runPin + `; SET pgcloak.tenant_token = '` + tok + `'`,
		`BEGIN; ` + runPin + `; SET LOCAL pgcloak.tenant_token = '` + tok + `'; COMMIT`,
		`SELECT 1; SET pgcloak.tenant_token = '` + tok + `'`,
		`BEGIN; COMMIT; SET pgcloak.tenant_token = '` + tok + `'`, // COMMIT fires deferred triggers
		`SET LOCAL pgcloak.tenant_token = '` + tok + `'; SELECT 1; SELECT pg_catalog.set_config('pgcloak.tenant_token', '` + tok + `', true)`,
	} {
		_, err := atkExec(t, conn, q)
		if pgCode(err) != "0A000" {
			t.Errorf("%.80s...: %v, want 0A000", q, err)
		}
		atkExec(t, conn, `ROLLBACK`)
		rvSeesNothing(t, conn, "sent code before a token statement")
	}
	for _, q := range []string{
		`BEGIN; SET LOCAL pgcloak.tenant_token = '` + tok + `'; SELECT name FROM patients; COMMIT`,
		`BEGIN; SAVEPOINT a; SET LOCAL statement_timeout = 0; SET LOCAL pgcloak.tenant_token = '` + tok + `'; SELECT name FROM patients; RELEASE a; COMMIT`,
		`START TRANSACTION; SET LOCAL pgcloak.tenant_token = '` + tok + `'; SET LOCAL pgcloak.tenant_token = '` + tok + `'; SELECT name FROM patients; ROLLBACK`,
	} {
		res, err := atkExec(t, conn, q)
		if err != nil {
			t.Errorf("%.80s...: %v", q, err)
			continue
		}
		var names []string
		for _, r := range res {
			for _, row := range r.Rows {
				names = append(names, string(row[0]))
			}
		}
		if fmt.Sprint(names) != "[seed-acme]" {
			t.Errorf("%.80s...: read %v, want [seed-acme]", q, names)
		}
	}
}
