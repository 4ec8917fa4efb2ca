package proxy

import (
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Fifth review of 2026-12-08, kept as tests. Rows read under one token's
// tenant could be read on after a switch in the same transaction: a SQL
// cursor whose sort had read acme's rows, fetched after a switch to
// globex; an extended-protocol portal suspended under acme and executed
// again. A token statement in a transaction that may hold rows to read on
// (an open cursor, a suspended portal, a table made in it) is refused
// (0A000).

// swSeed adds a second acme row, so that a cursor has more to give.
func swSeed(t *testing.T, env *encryptedEnv) {
	t.Helper()
	atkSeed(t, env)
	conn := atkRaw(t, env)
	_, err := atkExec(t, conn, `SET pgcloak.tenant_token = '`+mintToken(t, "acme", time.Hour)+`'`)
	fatalIf(t, err, "token")
	_, err = conn.ExecParams(ctxT(t), atkInsert, [][]byte{[]byte("seed-acme-2"), []byte("111-22-3333")}, nil, nil, nil).Close()
	fatalIf(t, err, "insert")
}

// swNoAcme fails when a read through conn, whose transaction must have no
// globex-readable acme rows, returns one of acme's.
func swNoAcme(t *testing.T, rows [][]string, how string) {
	t.Helper()
	for _, r := range rows {
		if len(r) > 0 && strings.HasPrefix(r[0], "seed-acme") {
			t.Errorf("%s: read acme's row %q after the switch to globex", how, r[0])
		}
	}
}

func TestSwitchReviewCursorFetchedAfterSwitch(t *testing.T) {
	env := startTokenEnv(t)
	swSeed(t, env)
	conn := atkRaw(t, env)
	acme, globex := mintToken(t, "acme", time.Hour), mintToken(t, "globex", time.Hour)
	for _, q := range []string{`BEGIN`, `SET LOCAL pgcloak.tenant_token = '` + acme + `'`,
		`DECLARE c CURSOR FOR SELECT name FROM patients ORDER BY name`, `FETCH 1 FROM c`} {
		_, err := atkExec(t, conn, q)
		fatalIf(t, err, "%s", q)
	}
	_, err := atkExec(t, conn, `SET LOCAL pgcloak.tenant_token = '`+globex+`'`)
	if pgCode(err) != "0A000" {
		t.Errorf("a token switch after a cursor was fetched in the transaction: %v, want 0A000", err)
	}
	res, err := atkExec(t, conn, `FETCH ALL FROM c`)
	if err == nil {
		var rows [][]string
		for _, r := range res[0].Rows {
			rows = append(rows, []string{string(r[0])})
		}
		t.Logf("fetch after the refused switch: %v", rows)
		if _, err := atkExec(t, conn, `SELECT 1 WHERE pgcloak.current_tenant() = 'globex'`); err == nil {
			res2, _ := atkExec(t, conn, `SELECT coalesce(pgcloak.current_tenant(), '<null>')`)
			if len(res2) > 0 && string(res2[0].Rows[0][0]) == "globex" {
				swNoAcme(t, rows, "cursor")
			}
		}
	}
	atkExec(t, conn, `ROLLBACK`)
	// A new transaction may take any token.
	res, err = atkExec(t, conn, `BEGIN; SET LOCAL pgcloak.tenant_token = '`+globex+`'; SELECT name FROM patients; COMMIT`)
	if err != nil || len(res) < 3 || len(res[2].Rows) != 1 || string(res[2].Rows[0][0]) != "seed-globex" {
		t.Errorf("globex's own transaction after the refused switch: %v", err)
	}
}

func TestSwitchReviewSuspendedPortalAfterSwitch(t *testing.T) {
	env := startTokenEnv(t)
	swSeed(t, env)
	conn := atkRaw(t, env)
	acme, globex := mintToken(t, "acme", time.Hour), mintToken(t, "globex", time.Hour)
	_, err := atkExec(t, conn, `BEGIN; SET LOCAL pgcloak.tenant_token = '`+acme+`'`)
	fatalIf(t, err, "begin")
	r := pipeline(t, conn,
		&pgproto3.Parse{Name: "zs", Query: `SELECT name FROM patients ORDER BY name`},
		&pgproto3.Bind{DestinationPortal: "zp", PreparedStatement: "zs"},
		&pgproto3.Execute{Portal: "zp", MaxRows: 1},
		&pgproto3.Sync{})
	if len(r.errors) != 0 || len(r.rows) != 1 {
		t.Fatalf("first batch: rows %v errors %v", r.rows, r.errors)
	}
	for _, same := range []bool{false, true} {
		msgs := []pgproto3.FrontendMessage{
			&pgproto3.Parse{Query: `SELECT pg_catalog.set_config('pgcloak.tenant_token', $1, true)`},
			&pgproto3.Bind{Parameters: [][]byte{[]byte(globex)}},
			&pgproto3.Execute{},
			&pgproto3.Execute{Portal: "zp"},
			&pgproto3.Sync{},
		}
		if same { // the suspended Execute and the switch in one round
			msgs = append([]pgproto3.FrontendMessage{&pgproto3.Execute{Portal: "zp", MaxRows: 1}}, msgs...)
		}
		r = pipeline(t, conn, msgs...)
		t.Logf("switch (same round %v): rows %v errors %v", same, r.rows, r.errors)
		if len(r.errors) == 0 || !strings.HasPrefix(r.errors[0], "0A000") {
			t.Errorf("a token switch after a portal ran in the transaction (same round %v): errors %v, want 0A000", same, r.errors)
		}
		if same {
			r.rows = r.rows[1:] // the Execute before the switch, under acme
		}
		swNoAcme(t, r.rows, "suspended portal")
		atkExec(t, conn, `ROLLBACK`)
		_, err := atkExec(t, conn, `BEGIN; SET LOCAL pgcloak.tenant_token = '`+acme+`'`)
		fatalIf(t, err, "begin again")
		pipeline(t, conn, &pgproto3.Bind{DestinationPortal: "zp", PreparedStatement: "zs"},
			&pgproto3.Execute{Portal: "zp", MaxRows: 1}, &pgproto3.Sync{})
	}
	atkExec(t, conn, `ROLLBACK`)
}

// What the rule leaves alone: a token at the start of every transaction,
// autocommit statements between session tokens, a switch after statements
// that leave nothing to read on (GORM reads pg_backend_pid() first), and
// pipelines across Syncs.
func TestSwitchReviewAllowed(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	conn := atkRaw(t, env)
	acme, globex := mintToken(t, "acme", time.Hour), mintToken(t, "globex", time.Hour)
	for _, q := range []string{
		`SET pgcloak.tenant_token = '` + acme + `'`,
		`SELECT name FROM patients`,
		`SET pgcloak.tenant_token = '` + globex + `'`,
		`BEGIN; SET LOCAL pgcloak.tenant_token = '` + acme + `'; SAVEPOINT a; SET LOCAL pgcloak.tenant_token = '` + globex + `'; SELECT name FROM patients; COMMIT`,
		`BEGIN`, `SHOW search_path`, `SELECT pg_backend_pid()`, `SET LOCAL pgcloak.tenant_token = '` + acme + `'`, `SELECT name FROM patients`, `COMMIT`,
	} {
		if _, err := atkExec(t, conn, q); err != nil {
			t.Errorf("%.80s: %v", q, err)
		}
	}
	var pc *pgconn.PgConn = conn
	r := pipeline(t, pc,
		&pgproto3.Parse{Query: `SELECT name FROM patients`}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{},
		&pgproto3.Parse{Query: `SELECT pg_catalog.set_config('pgcloak.tenant_token', $1, false)`},
		&pgproto3.Bind{Parameters: [][]byte{[]byte(globex)}}, &pgproto3.Execute{}, &pgproto3.Sync{},
		&pgproto3.Parse{Query: `SELECT name FROM patients`}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if len(r.errors) != 0 || len(r.rows) < 2 || r.rows[len(r.rows)-1][0] != "seed-globex" {
		t.Errorf("autocommit pipeline with a session token between Syncs: rows %v errors %v", r.rows, r.errors)
	}
}
