package proxy

import (
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgcloak/pgcloak/keystore"
)

// Review 12A of 2026-12-08.

// r12aMidRound leaves pgcloak's view "in the middle of an extended-protocol
// round" (a Parse, Bind, Execute without Sync), then ends PostgreSQL's
// round with a simple Query: ReadyForQuery 'I' goes back to the client
// (a pooler hands the connection on), but pgcloak's midRound stays true
// until a Sync, and beforeTokenMessage skips every owed burn, clear and
// re-pin while it is.
func r12aMidRound(t *testing.T, conn *pgconn.PgConn, how, q string) pipelineResult {
	t.Helper()
	if strings.HasPrefix(how, "flush") {
		// One Flush, which drivers send to read a Parse's answer early.
		return pipeline(t, conn, &pgproto3.Flush{}, &pgproto3.Query{String: q})
	}
	return pipeline(t, conn,
		&pgproto3.Parse{Query: `select 1`}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Query{String: q})
}

// A pooled connection. The attacker (no token) leaves the session read-only
// by default and "mid-round" for pgcloak; the victim (globex) runs its
// documented `BEGIN; SET LOCAL token; ...; COMMIT`, whose literal pin fails
// (read-only) and whose MAC a spy reads from pg_stat_activity; the victim
// rolls back. pgcloak owes a burn of the pin's number but never runs it
// (midRound), and the attacker replays the pin through a statement a DBA's
// function PREPAREd with pgcloak's pin text.
func TestReview12AMidRoundSkipsBurnPinReplay(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	drRun(t, env)
	globex := mintToken(t, "globex", time.Hour)
	for _, how := range []string{"flush", "parse_bind_execute", "flush_cursor"} {
		t.Run(how, func(t *testing.T) { r12aReplay(t, env, globex, how) })
	}
	atkCheckStored(t, env)
}

// r12aRoundEnds sends Parse, Bind, Execute and then a Query without a Sync
// between, and checks that pgcloak ends the session with 08P01 and that
// the Query's text did not run (it would have set q).
func r12aRoundEnds(t *testing.T, conn *pgconn.PgConn, q string) {
	t.Helper()
	fe := conn.Frontend()
	for _, m := range []pgproto3.FrontendMessage{&pgproto3.Parse{Query: `select 1`}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Query{String: q}} {
		fe.Send(m)
	}
	fatalIf(t, fe.Flush(), "send")
	var codes []string
	for {
		msg, err := fe.Receive()
		if err != nil {
			break
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			codes = append(codes, e.Severity+" "+e.Code)
			if e.Severity == "FATAL" {
				break
			}
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	t.Logf("a Query inside an unsynced round: %v", codes)
	if len(codes) == 0 || codes[len(codes)-1] != "FATAL 08P01" {
		t.Errorf("a Query inside an unsynced extended round: %v, want the session ended with 08P01", codes)
	}
}

func r12aReplay(t *testing.T, env *encryptedEnv, globex, how string) {
	pooled, spy := atkRaw(t, env), atkRaw(t, env)

	if how == "parse_bind_execute" {
		// A Query inside an unsynced extended round ends the session
		// (08P01): nothing it sends runs before what pgcloak owes.
		r12aRoundEnds(t, pooled, `SET default_transaction_read_only = on`)
		return
	}
	// Attacker's transaction: ends with ReadyForQuery 'I'.
	r := r12aMidRound(t, pooled, how, `SET default_transaction_read_only = on`)
	t.Logf("attacker: mid-round + read only: errors %v", r.errors)

	// Victim (globex), pgcloak's documented form.
	_, err := atkExec(t, pooled, `BEGIN; SET LOCAL pgcloak.tenant_token = '`+globex+`'; SELECT name FROM patients; COMMIT`)
	t.Logf("victim's transaction: %v", err)
	pin := rvSpyPin(t, spy, pooled)
	r9Exec(t, pooled, `ROLLBACK`)

	// Attacker, back on the pooled connection.
	r9Exec(t, pooled, `SET default_transaction_read_only = off`)
	text := keystore.NextStatement(pin[4] == "true", `"zz"`)
	params := [][]byte{[]byte(pin[0]), []byte(pin[1]), []byte(pin[2]), []byte(pin[3]), []byte(pin[5]),
		[]byte("app.tenant_id"), []byte("pgcloak.tenant_" + "proof")}
	replay := []pgproto3.FrontendMessage{&pgproto3.Bind{PreparedStatement: "zzpin", Parameters: params}, &pgproto3.Execute{}}
	if how == "flush_cursor" {
		// A cursor a DBA's function declares with the pin's literal text:
		// an Execute of its portal runs with that text as current_query().
		strs := make([]string, len(params))
		for i, p := range params {
			strs[i] = string(p)
		}
		lit := keystore.LiteralPin(pin[5], literalSQL(text, strs...))
		r9Exec(t, pooled, `BEGIN`)
		_, err = atkExec(t, pooled, `select public.run(`+rvQuoteChunks(`DECLARE zzc CURSOR FOR `+lit)+`)`)
		t.Logf("DECLARE zzc through public.run: %v", err)
		replay = []pgproto3.FrontendMessage{&pgproto3.Execute{Portal: "zzc"}}
	} else {
		_, err = atkExec(t, pooled, `select public.run(`+rvQuoteChunks(`PREPARE zzpin AS `+text)+`)`)
		t.Logf("PREPARE zzpin through public.run: %v", err)
		replay = append([]pgproto3.FrontendMessage{&pgproto3.Parse{Name: "zzb", Query: `BEGIN`}, &pgproto3.Bind{PreparedStatement: "zzb"}, &pgproto3.Execute{}}, replay...)
	}
	r = pipeline(t, pooled, append(replay,
		&pgproto3.Parse{Name: "zzsee", Query: `select coalesce(pgcloak.current_tenant(), '<null>'), coalesce((select string_agg(name, ',' order by name) from patients), '')`},
		&pgproto3.Bind{PreparedStatement: "zzsee"}, &pgproto3.Execute{},
		&pgproto3.Parse{Name: "zzins", Query: `insert into patients (name) values ('r12a-replayed-` + how + `')`},
		&pgproto3.Bind{PreparedStatement: "zzins"}, &pgproto3.Execute{},
		&pgproto3.Sync{})...)
	t.Logf("replay: errors %v rows %v", r.errors, r.rows)
	for _, row := range r.rows {
		if len(row) == 2 && row[0] != "<null>" {
			t.Errorf("the attacker (no token) replayed the victim's failed pin: PostgreSQL pins %q while pgcloak holds none; rows read %q", row[0], row[1])
		}
	}
	r9Exec(t, pooled, `COMMIT`)
	for _, s := range r10aStoredAs(t, env, "r12a-replayed-"+how) {
		if strings.HasPrefix(s, "globex:") {
			t.Errorf("the attacker (no token) stored a row stamped %s", s)
		}
	}
}

// A pooled connection. The victim (globex) prepared a plain named statement
// vsel once. The attacker (no token) redefines vsel through public.run
// (DEALLOCATE, PREPARE): pgcloak prepares vsel again at its first Bind
// after the session was idle, but only in that Bind's round. When an
// earlier message of that round fails (here a division by zero; a unique
// violation in an ORM's get-or-create savepoint is the common case),
// PostgreSQL skips the Close and Parse, yet pgcloak takes vsel as prepared
// again; after ROLLBACK TO SAVEPOINT, in the same transaction, the
// victim's next Bind of vsel runs the attacker's text under globex's pin.
func TestReview12AReprepareSkippedInFailedRound(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	drRun(t, env)
	globex := mintToken(t, "globex", time.Hour)
	const vsel = `select name from patients order by name`
	pooled := atkRaw(t, env)
	r11aVictim(t, pooled, "first", globex, "vsel", vsel, nil, true)

	r11aRedefineRun(t, pooled, "vsel", "")

	// Victim's second transaction.
	r9Exec(t, pooled, `BEGIN`)
	r := pipeline(t, pooled,
		&pgproto3.Bind{PreparedStatement: "vtok", Parameters: atkBytes(globex)}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: `SAVEPOINT sp`}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Sync{})
	t.Logf("victim: token, savepoint: errors %v", r.errors)
	r = pipeline(t, pooled,
		&pgproto3.Parse{Query: `select 1/0`}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "vsel"}, &pgproto3.Execute{},
		&pgproto3.Sync{})
	t.Logf("victim: failing statement, vsel: errors %v rows %v", r.errors, r.rows)
	r9Exec(t, pooled, `ROLLBACK TO SAVEPOINT sp`)
	r = pipeline(t, pooled, &pgproto3.Bind{PreparedStatement: "vsel"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	t.Logf("victim: vsel again: errors %v rows %v", r.errors, r.rows)
	r9Exec(t, pooled, `COMMIT`)

	r11aNoGlobexLeak(t, pooled, "its text ran under globex's pin through the victim's Bind of vsel, whose re-Parse PostgreSQL skipped")
}

// A pooled connection. The victim (globex) prepares vq with SQL PREPARE
// (which pgcloak reads) and binds it through the protocol in each of its
// transactions. The attacker (no token) redefines vq through public.run.
// pgcloak prepares again only protocol-prepared names (plainNamed, ps.up),
// so the victim's next Bind runs the attacker's text under globex's pin.
func TestReview12ASQLPreparedBoundByProtocol(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	drRun(t, env)
	globex := mintToken(t, "globex", time.Hour)
	pooled := atkRaw(t, env)
	r := pipeline(t, pooled,
		&pgproto3.Parse{Name: "vtok", Query: r11aTok},
		&pgproto3.Bind{PreparedStatement: "vtok", Parameters: atkBytes(globex)}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: `PREPARE vq AS select name from patients order by name`}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "vq"}, &pgproto3.Execute{},
		&pgproto3.Sync{})
	t.Logf("victim first: errors %v rows %v", r.errors, r.rows)

	r11aRedefineRun(t, pooled, "vq", "")

	r = pipeline(t, pooled,
		&pgproto3.Bind{PreparedStatement: "vtok", Parameters: atkBytes(globex)}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "vq"}, &pgproto3.Execute{},
		&pgproto3.Sync{})
	t.Logf("victim second: errors %v rows %v", r.errors, r.rows)
	r11aNoGlobexLeak(t, pooled, "its text ran under globex's pin through the victim's protocol Bind of a SQL-prepared name")
}

// As TestReview12ASQLPreparedBoundByProtocol, with the victim's INSERT of an
// encrypted column: the attacker's redefined vi copies the values the
// victim binds into a session setting. The ssn must reach PostgreSQL
// sealed, never as plaintext.
func TestReview12ASQLPreparedInsertBoundByProtocol(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	drRun(t, env)
	globex := mintToken(t, "globex", time.Hour)
	pooled := atkRaw(t, env)
	r := pipeline(t, pooled,
		&pgproto3.Parse{Name: "vtok", Query: r11aTok},
		&pgproto3.Bind{PreparedStatement: "vtok", Parameters: atkBytes(globex)}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: `PREPARE vi (text, text) AS ` + atkInsert}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "vi", Parameters: atkBytes("r12a-vi-1", "123-45-6789")}, &pgproto3.Execute{},
		&pgproto3.Sync{})
	t.Logf("victim first: errors %v rows %v", r.errors, r.rows)

	r11aRedefineRun(t, pooled, "vi", `PREPARE vi (text, text) AS select pg_catalog.set_config('zz.leak', $1 || '|' || $2, false)`)

	r = pipeline(t, pooled,
		&pgproto3.Bind{PreparedStatement: "vtok", Parameters: atkBytes(globex)}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "vi", Parameters: atkBytes("r12a-vi-2", "987-65-4321")}, &pgproto3.Execute{},
		&pgproto3.Sync{})
	t.Logf("victim second: errors %v rows %v", r.errors, r.rows)
	leak := r11aLeak(t, pooled)
	t.Logf("attacker (no token) reads zz.leak: %q", leak)
	if strings.Contains(leak, "987-65-4321") || strings.Contains(leak, "123-45-6789") {
		t.Errorf("the victim's plaintext ssn reached PostgreSQL: %q", leak)
	}
	res, err := env.pool.Query(ctxT(t), `select name, tenant_id, ssn::text from patients where name like 'r12a-vi%'`)
	fatalIf(t, err, "stored")
	for res.Next() {
		var n, tn, ssn string
		fatalIf(t, res.Scan(&n, &tn, &ssn), "scan")
		t.Logf("stored %s %s %.40s", n, tn, ssn)
		if strings.Contains(ssn, "6789") || strings.Contains(ssn, "4321") {
			t.Errorf("plaintext ssn stored: %s %s", n, ssn)
		}
	}
}
