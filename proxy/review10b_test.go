package proxy

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Review 10B: the extended protocol and pipelining around token switches.
// Most tests model a pooled connection (pgbouncer in transaction mode in
// front of pgcloak): one pgcloak session serves the victim (globex) and
// then the attacker, who holds only acme's token.

const r10bInsertLit = `insert into patients (name, ssn) values ('r10b-victim', '555-12-3456')`

// r10bStored fails the test when a row stamped acme
// does not open under acme's keys, or a row stamped globex not under
// globex's (atkCheckStored), and logs what PostgreSQL holds.
func r10bStored(t *testing.T, env *encryptedEnv) {
	t.Helper()
	rows, err := env.pool.Query(ctxT(t), `select tenant_id, name from patients order by id`)
	fatalIf(t, err, "stored rows")
	var got []string
	for rows.Next() {
		var tenant, name string
		fatalIf(t, rows.Scan(&tenant, &name), "scan")
		got = append(got, tenant+":"+name)
	}
	t.Logf("stored rows (tenant:name): %v", got)
	atkCheckStored(t, env)
}

// r10bParseToken prepares the victim's token statement, named vtok as a
// driver that prepares once names it.
var r10bParseToken = &pgproto3.Parse{Name: "vtok", Query: `select pg_catalog.set_config('pgcloak.tenant_token', $1, true)`}

// The victim's INSERT, whose ssn literal pgcloak sealed under globex at
// Parse, stays prepared after the victim's pipelined transaction. The
// attacker then sends a Parse of the same name that PostgreSQL does not
// carry out: for the unnamed statement one after an error in the same
// batch (skipped), for a named one a second Parse (42P05). pgcloak forgot,
// at that Parse, the tenant the statement was sealed for (before the
// fix). Then, with acme's token, a Bind of the name ran the victim's
// INSERT: a row stamped acme holding a value sealed under globex.
func TestReview10BParseNotCarriedOutForgetsSealed(t *testing.T) {
	for _, c := range []struct {
		name, stmt string
		attack     []pgproto3.FrontendMessage
	}{
		{"skipped_unnamed", "", []pgproto3.FrontendMessage{
			&pgproto3.Parse{Name: "zzerr", Query: `select 1/0`}, &pgproto3.Bind{PreparedStatement: "zzerr"}, &pgproto3.Execute{},
			&pgproto3.Parse{Query: `select 1`}, &pgproto3.Sync{}}},
		{"duplicate_named", "vins", []pgproto3.FrontendMessage{
			&pgproto3.Parse{Name: "vins", Query: `select 1`}, &pgproto3.Sync{}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			env := startTokenEnv(t)
			atkSeed(t, env)
			pooled := atkRaw(t, env)
			globex, acme := mintToken(t, "globex", time.Hour), mintToken(t, "acme", time.Hour)
			// Victim (globex): one pipelined implicit transaction, as a
			// driver's batch sends it: the token bound as a parameter,
			// then an INSERT with its ssn as a literal (ActiveRecord-style).
			r := pipeline(t, pooled,
				r10bParseToken,
				&pgproto3.Bind{PreparedStatement: "vtok", Parameters: atkBytes(globex)}, &pgproto3.Execute{},
				&pgproto3.Parse{Name: c.stmt, Query: r10bInsertLit}, &pgproto3.Bind{PreparedStatement: c.stmt}, &pgproto3.Execute{},
				&pgproto3.Sync{})
			if len(r.errors) > 0 {
				t.Fatalf("victim's batch failed: %v", r.errors)
			}
			r = pipeline(t, pooled, c.attack...)
			t.Logf("attacker's Parse of %q: errors %v", c.stmt, r.errors)
			r = pipeline(t, pooled,
				&pgproto3.Parse{Name: "atok", Query: atkSetConfig},
				&pgproto3.Bind{PreparedStatement: "atok", Parameters: atkBytes(acme)}, &pgproto3.Execute{},
				&pgproto3.Sync{})
			t.Logf("attacker's token: errors %v", r.errors)
			r = pipeline(t, pooled, &pgproto3.Bind{PreparedStatement: c.stmt}, &pgproto3.Execute{}, &pgproto3.Sync{})
			t.Logf("attacker binds %q: errors %v rows %v", c.stmt, r.errors, r.rows)
			if len(r.errors) == 0 {
				t.Errorf("a Bind of %q ran the victim's INSERT, sealed under globex, under acme's token", c.stmt)
			}
			r10bStored(t, env)
		})
	}
}

// A portal bound under acme (its ssn sealed under acme) in a transaction
// survives a ROLLBACK TO SAVEPOINT; a Bind of the same portal name that
// PostgreSQL skipped after an error made pgcloak forget the portal's
// tenant (noteBoundFor at Bind). After a local switch to globex, the
// Execute runs the acme-sealed INSERT stamped globex.
func TestReview10BSkippedBindForgetsBoundPortal(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	conn := atkRaw(t, env)
	acme, globex := mintToken(t, "acme", time.Hour), mintToken(t, "globex", time.Hour)
	_, err := atkExec(t, conn, `BEGIN; SET LOCAL pgcloak.tenant_token = '`+acme+`'`)
	fatalIf(t, err, "begin acme")
	r := pipeline(t, conn,
		&pgproto3.Parse{Name: "zzins", Query: atkInsert},
		&pgproto3.Bind{PreparedStatement: "zzins", DestinationPortal: "p", Parameters: atkBytes("r10b-portal", "111-22-3333")},
		&pgproto3.Sync{})
	t.Logf("bind p under acme: %v", r.errors)
	_, err = atkExec(t, conn, `SAVEPOINT s`)
	fatalIf(t, err, "savepoint")
	r = pipeline(t, conn,
		&pgproto3.Parse{Name: "zzerr", Query: `select 1/0`}, &pgproto3.Bind{PreparedStatement: "zzerr"}, &pgproto3.Execute{},
		&pgproto3.Parse{Name: "zzplain", Query: `select 1`},
		&pgproto3.Bind{PreparedStatement: "zzplain", DestinationPortal: "p"},
		&pgproto3.Sync{})
	t.Logf("skipped rebind of p: %v", r.errors)
	_, err = atkExec(t, conn, `ROLLBACK TO s`)
	fatalIf(t, err, "rollback to")
	_, err = atkExec(t, conn, `SET LOCAL pgcloak.tenant_token = '`+globex+`'`)
	t.Logf("switch to globex: %v", err)
	r = pipeline(t, conn, &pgproto3.Execute{Portal: "p"}, &pgproto3.Sync{})
	t.Logf("execute p under globex: errors %v", r.errors)
	if len(r.errors) == 0 {
		t.Errorf("portal p, bound with ssn sealed under acme, was executed under globex")
	}
	_, err = atkExec(t, conn, `COMMIT`)
	t.Logf("commit: %v", err)
	r10bStored(t, env)
}

// A pooled connection: the victim's driver prepared its token statement
// once (named, as pgx does) and binds it in every transaction. The
// attacker, between two of the victim's transactions, closes that name
// and prepares it again as a plain statement that keeps its parameter in
// a session setting. The victim's next Bind carries globex's token to
// PostgreSQL, where the attacker reads it and presents it.
func TestReview10BRedefinedTokenStatementStealsToken(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	pooled := atkRaw(t, env)
	globex := mintToken(t, "globex", time.Hour)
	victim := func(label string, parse bool) pipelineResult {
		var msgs []pgproto3.FrontendMessage
		if parse {
			msgs = append(msgs, r10bParseToken)
		}
		msgs = append(msgs,
			&pgproto3.Bind{PreparedStatement: "vtok", Parameters: atkBytes(globex)}, &pgproto3.Execute{},
			&pgproto3.Parse{Query: `select name from patients`}, &pgproto3.Bind{}, &pgproto3.Execute{},
			&pgproto3.Sync{})
		r := pipeline(t, pooled, msgs...)
		t.Logf("victim %s: errors %v rows %v", label, r.errors, r.rows)
		return r
	}
	victim("first transaction", true)
	drRun(t, env)
	for _, how := range []string{"extended", "sql", "dynamic"} {
		t.Run(how, func(t *testing.T) {
			atkExec(t, pooled, `RESET zz.stolen`)
			if how == "extended" {
				r := pipeline(t, pooled,
					&pgproto3.Close{ObjectType: 'S', Name: "vtok"},
					&pgproto3.Parse{Name: "vtok", Query: `select pg_catalog.set_config('zz.stolen', $1, false)`},
					&pgproto3.Sync{})
				t.Logf("attacker redefines vtok (Close, Parse): %v", r.errors)
			} else if how == "dynamic" {
				// PREPARE through a DBA's function that runs any text:
				// pgcloak never sees it.
				_, err := atkExec(t, pooled, `DEALLOCATE vtok`)
				t.Logf("attacker DEALLOCATE vtok: %v", err)
				_, err = atkExec(t, pooled, `select public.run('PRE' || 'PARE vtok(text) AS select pg_catalog.set_' || 'config(''zz.stolen'', $1, false)')`)
				t.Logf("attacker PREPARE vtok through public.run: %v", err)
			} else {
				_, err := atkExec(t, pooled, `DEALLOCATE vtok`)
				t.Logf("attacker DEALLOCATE vtok: %v", err)
				_, err = atkExec(t, pooled, `PREPARE vtok(text) AS select pg_catalog.set_config('zz.stolen', $1, false)`)
				t.Logf("attacker PREPARE vtok: %v", err)
			}
			victim("next transaction", false)
			res, err := atkExec(t, pooled, `select coalesce(current_setting('zz.stolen', true), '')`)
			fatalIf(t, err, "read zz.stolen")
			stolen := string(res[0].Rows[0][0])
			t.Logf("attacker reads zz.stolen: %.40s...", stolen)
			if stolen == globex {
				t.Errorf("globex's token reached PostgreSQL through a redefined statement name, and the attacker read it")
				_, err := atkExec(t, pooled, `SET pgcloak.tenant_token = '`+stolen+`'`)
				ct, names := rvSees(t, pooled)
				t.Logf("attacker presents it: %v; current_tenant %s, names %v", err, ct, names)
				atkExec(t, pooled, `RESET pgcloak.tenant_token`)
			}
			// Prepare the victim's statement again for the next case.
			atkExec(t, pooled, `DEALLOCATE ALL`)
			victim("re-prepares", true)
		})
	}
}

// r10bVictimInsert is the victim's transaction on a pooled connection:
// its token (globex) bound to vtok, then its INSERT vins with ssn
// 444-55-6666; parse prepares both first.
func r10bVictimInsert(t *testing.T, pooled *pgconn.PgConn, token, label string, parse bool) {
	t.Helper()
	var msgs []pgproto3.FrontendMessage
	if parse {
		msgs = append(msgs, r10bParseToken)
	}
	msgs = append(msgs, &pgproto3.Bind{PreparedStatement: "vtok", Parameters: atkBytes(token)}, &pgproto3.Execute{})
	if parse {
		msgs = append(msgs, &pgproto3.Parse{Name: "vins", Query: atkInsert})
	}
	msgs = append(msgs, &pgproto3.Bind{PreparedStatement: "vins", Parameters: atkBytes("r10b-"+label, "444-55-6666")}, &pgproto3.Execute{},
		&pgproto3.Sync{})
	r := pipeline(t, pooled, msgs...)
	t.Logf("victim %s: errors %v", label, r.errors)
}

// The same redefinition of a name, for the victim's INSERT: its next Bind
// sends the ssn in clear to a plain statement of the attacker's, which
// keeps it in a session setting.
func TestReview10BRedefinedInsertStealsPlaintext(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	pooled := atkRaw(t, env)
	globex := mintToken(t, "globex", time.Hour)
	victim := func(label string, parse bool) { r10bVictimInsert(t, pooled, globex, label, parse) }
	victim("first", true)
	r := pipeline(t, pooled,
		&pgproto3.Close{ObjectType: 'S', Name: "vins"},
		&pgproto3.Parse{Name: "vins", Query: `select pg_catalog.set_config('zz.ssn', $2, false), $1::text`},
		&pgproto3.Sync{})
	t.Logf("attacker redefines vins: %v", r.errors)
	victim("second", false)
	res, err := atkExec(t, pooled, `select coalesce(current_setting('zz.ssn', true), '')`)
	fatalIf(t, err, "read zz.ssn")
	got := string(res[0].Rows[0][0])
	t.Logf("attacker reads zz.ssn: %q", got)
	if got == "444-55-6666" {
		t.Errorf("globex's ssn, bound by the victim for an encrypted column, reached PostgreSQL in clear through a redefined statement name")
	}
}

// The victim's INSERT redefined by the attacker with its parameters
// swapped: both statements seal a value, but the ssn the victim binds
// would be stored in the plain name column.
func TestReview10BRedefinedInsertSwapsParameters(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	pooled := atkRaw(t, env)
	globex := mintToken(t, "globex", time.Hour)
	victim := func(label string, parse bool) { r10bVictimInsert(t, pooled, globex, label, parse) }
	victim("first", true)
	_, err := atkExec(t, pooled, `SET pgcloak.tenant_token = '`+mintToken(t, "acme", time.Hour)+`'`)
	fatalIf(t, err, "attacker's token")
	r := pipeline(t, pooled,
		&pgproto3.Close{ObjectType: 'S', Name: "vins"},
		&pgproto3.Parse{Name: "vins", Query: `insert into patients (name, ssn) values ($2, $1)`},
		&pgproto3.Sync{})
	t.Logf("attacker redefines vins with its parameters swapped: %v", r.errors)
	_, err = atkExec(t, pooled, `RESET pgcloak.tenant_token`)
	fatalIf(t, err, "attacker's reset")
	victim("second", false)
	var n int
	fatalIf(t, env.pool.QueryRow(ctxT(t), `select count(*) from patients where name = '444-55-6666'`).Scan(&n), "count")
	if n > 0 {
		t.Errorf("the ssn the victim bound for an encrypted column is stored in clear in the name column (%d rows)", n)
	}
}

// Cases that held (kept as representatives).
func TestReview10BHeldPipelines(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	acme := mintToken(t, "acme", time.Hour)

	// A portal bound with ssn sealed under acme, then RESET of the token
	// in the same round, then the portal's Execute: refused.
	t.Run("portal_bound_before_reset", func(t *testing.T) {
		conn := atkRaw(t, env)
		_, err := atkExec(t, conn, `SET pgcloak.tenant_token = '`+acme+`'`)
		fatalIf(t, err, "token")
		r := pipeline(t, conn,
			&pgproto3.Parse{Query: `BEGIN`}, &pgproto3.Bind{}, &pgproto3.Execute{},
			&pgproto3.Parse{Name: "zzins", Query: atkInsert},
			&pgproto3.Bind{PreparedStatement: "zzins", DestinationPortal: "p", Parameters: atkBytes("r10b-held-p", "111-00-2222")},
			&pgproto3.Parse{Name: "zzrst", Query: `RESET pgcloak.tenant_token`}, &pgproto3.Bind{PreparedStatement: "zzrst"}, &pgproto3.Execute{},
			&pgproto3.Execute{Portal: "p"},
			&pgproto3.Parse{Name: "zzc", Query: `COMMIT`}, &pgproto3.Bind{PreparedStatement: "zzc"}, &pgproto3.Execute{},
			&pgproto3.Sync{})
		t.Logf("errors %v", r.errors)
		if len(r.errors) == 0 || !strings.HasPrefix(r.errors[0], "0A000") {
			t.Errorf("Execute of a portal sealed under acme after RESET of the token: %v, want 0A000", r.errors)
		}
		atkExec(t, conn, `ROLLBACK`)
		rvSeesNothing(t, conn, "a portal bound before RESET")
	})

	// One round: acme's token, an INSERT ... RETURNING ssn, globex's token
	// (a client holding both), an INSERT ... RETURNING and an UPDATE of
	// ssn ... RETURNING: each sealed and opened under the tenant
	// PostgreSQL pins when it runs. (COPY FROM into patients is refused by
	// PostgreSQL itself under row-level security: 0A000.)
	t.Run("returning_and_update_across_switch", func(t *testing.T) {
		conn := atkRaw(t, env)
		globex := mintToken(t, "globex", time.Hour)
		r := pipeline(t, conn,
			&pgproto3.Parse{Name: "zztok", Query: atkSetConfig},
			&pgproto3.Bind{PreparedStatement: "zztok", Parameters: atkBytes(acme)}, &pgproto3.Execute{},
			&pgproto3.Parse{Name: "zzins", Query: atkInsert + ` returning pgcloak.current_tenant(), ssn`},
			&pgproto3.Parse{Name: "zzupd", Query: `update patients set ssn = $1 where name like 'r10b-r%' returning pgcloak.current_tenant(), name, ssn`},
			&pgproto3.Bind{PreparedStatement: "zzins", Parameters: atkBytes("r10b-r-acme", "100-00-0001")}, &pgproto3.Execute{},
			&pgproto3.Bind{PreparedStatement: "zztok", Parameters: atkBytes(globex)}, &pgproto3.Execute{},
			&pgproto3.Bind{PreparedStatement: "zzins", Parameters: atkBytes("r10b-r-globex", "200-00-0002")}, &pgproto3.Execute{},
			&pgproto3.Bind{PreparedStatement: "zzupd", Parameters: atkBytes("300-00-0003")}, &pgproto3.Execute{},
			&pgproto3.Sync{})
		t.Logf("errors %v rows %v", r.errors, r.rows)
		want := [][]string{{"acme", "100-00-0001"}, {"globex", "200-00-0002"}, {"globex", "r10b-r-globex", "300-00-0003"}}
		var got [][]string
		for _, row := range r.rows {
			if len(row) > 1 {
				got = append(got, row)
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("rows %v, want %v", got, want)
		}
		atkExec(t, conn, `RESET pgcloak.tenant_token`)
		atkCheckStored(t, env)
	})
}

// The extended protocol's form of TestDesyncReviewLocalPinSurvivesCommitInSameQuery:
// one round sets a local token, keeps its proof in a custom setting,
// ends the transaction (COMMIT, COMMIT AND CHAIN, or the implicit
// transaction's COMMIT), and in a later transaction of the same round
// sets the ended pin's settings again through a DBA's function. pgcloak
// then holds the session to have no tenant; PostgreSQL must too.
func TestReview10BLocalPinAfterCommitInRound(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	drRun(t, env)
	acme := mintToken(t, "acme", time.Hour)
	set := `select pg_catalog.set_config('app.tenant_id', 'acme', true), pg_catalog.set_config('pgcloak.tenant_proof', pg_catalog.current_setting('zz.p'), true)`
	run := `select public.run(` + rvQuoteChunks(set) + `)`
	stash := `select pg_catalog.set_config('zz.p', pg_catalog.current_setting(` + rvQuoteChunks("pgcloak.tenant_proof") + `), false)`
	ex := func(name, q string) []pgproto3.FrontendMessage {
		return []pgproto3.FrontendMessage{&pgproto3.Parse{Name: name, Query: q}, &pgproto3.Bind{PreparedStatement: name}, &pgproto3.Execute{}}
	}
	for _, c := range []struct {
		name       string
		begin, end string
		again      string
	}{
		{"commit_begin", "BEGIN", "COMMIT", "BEGIN"},
		{"commit_and_chain", "BEGIN", "COMMIT AND CHAIN", ""},
		{"implicit_commit", "", "COMMIT", ""},
		{"implicit_commit_begin", "", "COMMIT", "BEGIN"},
	} {
		t.Run(c.name, func(t *testing.T) {
			conn := atkRaw(t, env)
			var msgs []pgproto3.FrontendMessage
			if c.begin != "" {
				msgs = append(msgs, ex("zzb", c.begin)...)
			}
			msgs = append(msgs, &pgproto3.Parse{Name: "zztok", Query: `select pg_catalog.set_config('pgcloak.tenant_token', $1, true)`},
				&pgproto3.Bind{PreparedStatement: "zztok", Parameters: atkBytes(acme)}, &pgproto3.Execute{})
			msgs = append(msgs, ex("zzstash", stash)...)
			msgs = append(msgs, ex("zzend", c.end)...)
			if c.again != "" {
				msgs = append(msgs, ex("zzb2", c.again)...)
			}
			msgs = append(msgs, ex("zzrun", run)...)
			msgs = append(msgs, ex("zzsee", `select coalesce(pgcloak.current_tenant(), '<null>'), (select count(*) from patients)::text`)...)
			msgs = append(msgs, &pgproto3.Sync{})
			r := pipeline(t, conn, msgs...)
			t.Logf("errors %v rows %v", r.errors, r.rows)
			for _, row := range r.rows {
				if len(row) == 2 && row[0] != "<null>" {
					t.Errorf("after the local token's transaction ended (%s), PostgreSQL pins %s and the session reads %s rows while pgcloak holds no tenant", c.end, row[0], row[1])
				}
			}
			atkExec(t, conn, `ROLLBACK`)
			rvSeesNothing(t, conn, "re-set an ended local pin in a later transaction of the same round")
		})
	}
}

// Both faults together, by the attacker alone (acme's token) on a pooled
// connection: it redefines the victim's named INSERT as its own with an
// ssn literal sealed under acme, then makes pgcloak forget that seal with
// a Parse PostgreSQL skips. The victim's next Bind runs it under globex's
// pin: a row stamped globex holding a value sealed under acme.
func TestReview10BRedefinedInsertSealedUnderAttacker(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	pooled := atkRaw(t, env)
	globex, acme := mintToken(t, "globex", time.Hour), mintToken(t, "acme", time.Hour)
	victim := func(label string, parse bool) pipelineResult {
		var msgs []pgproto3.FrontendMessage
		if parse {
			msgs = append(msgs, r10bParseToken)
		}
		msgs = append(msgs, &pgproto3.Bind{PreparedStatement: "vtok", Parameters: atkBytes(globex)}, &pgproto3.Execute{})
		if parse {
			msgs = append(msgs, &pgproto3.Parse{Name: "vins", Query: atkInsert})
		}
		msgs = append(msgs,
			&pgproto3.Bind{PreparedStatement: "vins", Parameters: atkBytes("r10b-"+label, "444-55-6666")}, &pgproto3.Execute{},
			&pgproto3.Sync{})
		r := pipeline(t, pooled, msgs...)
		t.Logf("victim %s: errors %v", label, r.errors)
		return r
	}
	victim("first", true)
	r := pipeline(t, pooled,
		&pgproto3.Parse{Name: "atok", Query: `select pg_catalog.set_config('pgcloak.tenant_token', $1, true)`},
		&pgproto3.Bind{PreparedStatement: "atok", Parameters: atkBytes(acme)}, &pgproto3.Execute{},
		&pgproto3.Close{ObjectType: 'S', Name: "vins"},
		&pgproto3.Parse{Name: "vins", Query: `insert into patients (name, ssn) values ($1, '999-99-9999') returning $2::text`},
		&pgproto3.Sync{})
	t.Logf("attacker redefines vins with an acme-sealed literal: %v", r.errors)
	r = pipeline(t, pooled,
		&pgproto3.Parse{Name: "zzerr", Query: `select 1/0`}, &pgproto3.Bind{PreparedStatement: "zzerr"}, &pgproto3.Execute{},
		&pgproto3.Parse{Name: "vins", Query: `select 1`},
		&pgproto3.Sync{})
	t.Logf("attacker's skipped Parse of vins: %v", r.errors)
	r = victim("second", false)
	if len(r.errors) == 0 {
		t.Errorf("the victim's Bind under globex ran a statement whose ssn literal pgcloak sealed under acme")
	}
	r10bStored(t, env)
}

// pgcloak's own pin statement, prepared upstream as pgcloak:s<n> for the
// victim's named token statement, redefined through a DBA's function
// (dynamic SQL pgcloak cannot read) as a statement that answers what
// pgcloak checks of a pin's answer (the tenant and proof it was bound
// with) without pinning. The victim's next token Bind then switches
// pgcloak to globex while PostgreSQL keeps the attacker's acme pin.
func TestReview10BRedefinedPinStatementFakesPin(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	drRun(t, env)
	pooled := atkRaw(t, env)
	globex, acme := mintToken(t, "globex", time.Hour), mintToken(t, "acme", time.Hour)
	victim := func(label string, parse bool) pipelineResult {
		var msgs []pgproto3.FrontendMessage
		if parse {
			msgs = append(msgs, r10bParseToken)
		}
		msgs = append(msgs, &pgproto3.Bind{PreparedStatement: "vtok", Parameters: atkBytes(globex)}, &pgproto3.Execute{},
			&pgproto3.Parse{Query: atkInsert}, &pgproto3.Bind{Parameters: atkBytes("r10b-victim-"+label, "444-55-6666")}, &pgproto3.Execute{},
			&pgproto3.Parse{Query: `select coalesce(pgcloak.current_tenant(), '<null>')`}, &pgproto3.Bind{}, &pgproto3.Execute{},
			&pgproto3.Sync{})
		r := pipeline(t, pooled, msgs...)
		t.Logf("victim %s: errors %v rows %v", label, r.errors, len(r.rows))
		return r
	}
	victim("first", true)

	// Attacker: acme for the session, then the DBA's function.
	_, err := atkExec(t, pooled, `SET pgcloak.tenant_token = '`+acme+`'`)
	fatalIf(t, err, "acme")
	res, err := atkExec(t, pooled, `select name from pg_prepared_statements where statement like '%pin_next%'`)
	fatalIf(t, err, "pg_prepared_statements")
	if len(res[0].Rows) == 0 {
		t.Fatalf("no pin statement in pg_prepared_statements")
	}
	name := string(res[0].Rows[0][0])
	t.Logf("the victim's pin statement upstream: %s", name)
	for _, q := range []string{
		`DEALLOCATE "` + name + `"`,
		`PREPARE "` + name + `"(text, text, text, text, text, text, text) AS SELECT $1 || $2 || pg_catalog.left(pg_catalog.set_config('zz.mac', $5, false), 0)`,
	} {
		_, err := atkExec(t, pooled, `select public.run(`+rvQuoteChunks(q)+`)`)
		t.Logf("public.run(%.40s...): %v", q, err)
	}
	r := victim("second", false)
	var seen []string
	for _, row := range r.rows {
		if len(row) == 1 && len(row[0]) < 40 {
			seen = append(seen, row[0])
		}
	}
	t.Logf("victim's current_tenant() after its token: %v", seen)
	res, err = atkExec(t, pooled, `select coalesce(current_setting('zz.mac', true), '')`)
	fatalIf(t, err, "zz.mac")
	t.Logf("attacker reads the victim's pin MAC: %.16s...", res[0].Rows[0][0])
	ct, names := rvSees(t, pooled)
	t.Logf("attacker (acme) sees: %s %v", ct, names)
	for _, n := range names {
		if n == "r10b-victim-second" {
			t.Errorf("the victim's row, written after its globex token, is stamped acme and read by the attacker")
		}
	}
	for _, v := range seen {
		if v == "acme" {
			t.Errorf("pgcloak held globex for the victim's transaction while PostgreSQL pinned acme")
		}
	}
	atkExec(t, pooled, `RESET pgcloak.tenant_token`)
	r10bStored(t, env)
}
