package proxy

import (
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgcloak/pgcloak/keystore"
)

// Review 11A of 2026-12-08, kept as tests: around review 10's fixes (fixed
// statement names, the pin statement prepared again, the lone ROLLBACK
// after a refused token). Each break failed before its fix.

const r11aTok = `select pg_catalog.set_config('pgcloak.tenant_token', $1, true)`

// After a refused token in an aborted transaction, pgcloak takes only a
// lone ROLLBACK (TO SAVEPOINT): each Parse and Bind is checked, but not an
// Execute of a portal bound before the refusal (before the savepoint, so
// ROLLBACK TO keeps it). In the same round as the ROLLBACK TO, it runs
// with the earlier pin (acme) verified while pgcloak holds no tenant: the
// state review 10A's fix was to prevent.
func TestReview11ARefusedTokenPortalBoundBefore(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	acme := mintToken(t, "acme", time.Hour)
	conn := atkRaw(t, env)
	fatalIf(t, r9Exec(t, conn, `SET pgcloak.tenant_token = '`+acme+`'`), "session token")
	r := pipeline(t, conn,
		&pgproto3.Parse{Name: "zzb", Query: `BEGIN`}, &pgproto3.Bind{PreparedStatement: "zzb"}, &pgproto3.Execute{},
		&pgproto3.Parse{Name: "zzsee", Query: `select coalesce(pgcloak.current_tenant(), '<null>'), coalesce((select string_agg(name, ',' order by name) from patients), '')`},
		&pgproto3.Bind{PreparedStatement: "zzsee", DestinationPortal: "psee"},
		&pgproto3.Parse{Name: "zzins", Query: `insert into patients (name) values ('r11a-none')`},
		&pgproto3.Bind{PreparedStatement: "zzins", DestinationPortal: "pins"},
		&pgproto3.Parse{Name: "zzssn", Query: `select 'ssn:' || name, ssn from patients`},
		&pgproto3.Bind{PreparedStatement: "zzssn", DestinationPortal: "pssn"},
		&pgproto3.Parse{Name: "zzsp", Query: `SAVEPOINT s`}, &pgproto3.Bind{PreparedStatement: "zzsp"}, &pgproto3.Execute{},
		&pgproto3.Sync{})
	t.Logf("bind portals before the savepoint: %v", r.errors)
	err := r9Exec(t, conn, `SET LOCAL pgcloak.tenant_token = 'not-a-token'`)
	if pgCode(err) != "28000" {
		t.Fatalf("refused token: %v", err)
	}
	r = pipeline(t, conn,
		&pgproto3.Parse{Name: "zzrb", Query: `ROLLBACK TO s`}, &pgproto3.Bind{PreparedStatement: "zzrb"}, &pgproto3.Execute{},
		&pgproto3.Execute{Portal: "psee"},
		&pgproto3.Execute{Portal: "pins"},
		&pgproto3.Execute{Portal: "pssn"},
		&pgproto3.Sync{})
	t.Logf("ROLLBACK TO s, Execute psee, Execute pins: errors %v rows %v", r.errors, r.rows)
	r9Exec(t, conn, `COMMIT`)
	stored := r10aStoredAs(t, env, "r11a-none")
	t.Logf("stored %v", stored)
	for _, row := range r.rows {
		if len(row) == 2 && strings.HasPrefix(row[0], "ssn:") {
			t.Errorf("after a refused token (pgcloak: no tenant) a portal bound before returned ssn %q of row %s", row[1], row[0])
		} else if len(row) == 2 && (row[0] != "<null>" || row[1] != "") {
			t.Errorf("after a refused token (pgcloak: no tenant) a portal bound before ran with PostgreSQL pinning %q and read rows %q", row[0], row[1])
		}
	}
	for _, s := range stored {
		if !strings.HasPrefix(s, "<null>:") {
			t.Errorf("a session pgcloak holds to have no tenant stored row %s", s)
		}
	}
}

// Held: names that held a token statement or encrypted-column values stay
// fixed whatever frees them (DISCARD ALL, DEALLOCATE ALL) and however the
// attacker prepares them again (SQL in either case, a DBA's function):
// the victim's next Bind of either name is 26000 and neither its token nor
// its ssn reaches PostgreSQL.
func TestReview11AHeldFixedNamesAfterDiscard(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	drRun(t, env)
	globex := mintToken(t, "globex", time.Hour)
	for _, how := range []string{"discard_all", "deallocate_all_dynamic"} {
		t.Run(how, func(t *testing.T) {
			pooled := atkRaw(t, env)
			victim := func(label string, parse bool) pipelineResult {
				var msgs []pgproto3.FrontendMessage
				if parse {
					msgs = append(msgs, &pgproto3.Parse{Name: "VTOK", Query: r11aTok})
				}
				msgs = append(msgs, &pgproto3.Bind{PreparedStatement: "VTOK", Parameters: atkBytes(globex)}, &pgproto3.Execute{})
				if parse {
					msgs = append(msgs, &pgproto3.Parse{Name: "vins", Query: atkInsert})
				}
				msgs = append(msgs, &pgproto3.Bind{PreparedStatement: "vins", Parameters: atkBytes("r11a-held-"+label, "444-55-6666")}, &pgproto3.Execute{},
					&pgproto3.Sync{})
				r := pipeline(t, pooled, msgs...)
				t.Logf("victim %s: errors %v", label, r.errors)
				return r
			}
			victim("first", true)
			if how == "discard_all" {
				_, err := atkExec(t, pooled, `DISCARD ALL`)
				t.Logf("DISCARD ALL: %v", err)
			} else {
				_, err := atkExec(t, pooled, `select public.run(`+rvQuoteChunks(`DEALLOCATE ALL`)+`)`)
				t.Logf("DEALLOCATE ALL through public.run: %v", err)
			}
			for _, q := range []string{
				`PREPARE "VTOK"(text) AS select pg_catalog.set_config('zz.stolen', $1, false)`,
				`PREPARE vins(text, text) AS select pg_catalog.set_config('zz.stolen', $2, false), $1`,
			} {
				_, err := atkExec(t, pooled, q)
				t.Logf("%.40s: %v", q, err)
				_, err = atkExec(t, pooled, `select public.run(`+rvQuoteChunks(q)+`)`)
				t.Logf("through public.run: %v", err)
			}
			r := pipeline(t, pooled, &pgproto3.Parse{Name: "vtok", Query: `select pg_catalog.set_config('zz.stolen', $1, false)`}, &pgproto3.Sync{})
			t.Logf("Parse of lower-case vtok: %v", r.errors)
			victim("second", false)
			res, err := atkExec(t, pooled, `select coalesce(current_setting('zz.stolen', true), '')`)
			fatalIf(t, err, "read zz.stolen")
			if got := string(res[0].Rows[0][0]); got != "" {
				t.Errorf("the victim's token or ssn reached PostgreSQL through a fixed name: %.40q", got)
			}
		})
	}
	atkCheckStored(t, env)
}

// pin_next() trusts a MAC while the top-level text holds its bound form
// (pgcloak.pin_next($1::pg_catalog.text ...), and pgcloak keeps that word
// out of every client text. But current_query() of a protocol Execute is
// the source text of the prepared statement, and a DBA's function that
// runs text can PREPARE one with pgcloak's pin text, which the client then
// binds by name (a plain name pgcloak has never seen) with values of its
// own. On a pooled connection, the attacker makes the victim's
// simple-protocol token transaction fail before its pin runs
// (default_transaction_read_only: pin_next's setval fails, 25006), reads
// the unconsumed globex MAC from pg_stat_activity through a second
// connection of the role, and replays it on the pooled connection with no
// token: PostgreSQL pins globex while pgcloak holds none.
func TestReview11APinReplayThroughPreparedPinText(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	drRun(t, env)
	globex, acme := mintToken(t, "globex", time.Hour), mintToken(t, "acme", time.Hour)
	// (With acme's session token set before, pgcloak's re-pin after the
	// victim's ROLLBACK draws a higher n and the replay is refused: held.)
	for _, how := range []string{"no_token"} {
		t.Run(how, func(t *testing.T) {
			pooled, spy := atkRaw(t, env), atkRaw(t, env)
			if how == "acme_session" {
				fatalIf(t, r9Exec(t, pooled, `SET pgcloak.tenant_token = '`+acme+`'`), "acme session token")
			}
			var err error
			if how == "no_token" {
				// Attacker: session state for the next client of the
				// connection.
				fatalIf(t, r9Exec(t, pooled, `SET default_transaction_read_only = on`), "read only")
				// Victim (globex), pgcloak's documented form.
				_, err = atkExec(t, pooled, `BEGIN; SET LOCAL pgcloak.tenant_token = '`+globex+`'; SELECT name FROM patients; COMMIT`)
			} else {
				// With a session token, the ROLLBACK's re-pin would fail in a
				// read-only default (the session ends): here the victim's own
				// query fails before its pin (a bad SET before the token).
				_, err = atkExec(t, pooled, `BEGIN; SET LOCAL lock_timeout = 'bogus'; SET LOCAL pgcloak.tenant_token = '`+globex+`'; SELECT name FROM patients; COMMIT`)
			}
			t.Logf("victim's transaction: %v", err)
			pin := rvSpyPin(t, spy, pooled)
			r9Exec(t, pooled, `ROLLBACK`)

			// Attacker, back on the pooled connection.
			if how == "no_token" {
				fatalIf(t, r9Exec(t, pooled, `SET default_transaction_read_only = off`), "read write")
			}
			text := keystore.NextStatement(pin[4] == "true", `"zz"`)
			_, err = atkExec(t, pooled, `select public.run(`+rvQuoteChunks(`PREPARE zzpin AS `+text)+`)`)
			t.Logf("PREPARE zzpin (pgcloak's pin text) through public.run: %v", err)
			params := [][]byte{[]byte(pin[0]), []byte(pin[1]), []byte(pin[2]), []byte(pin[3]), []byte(pin[5]),
				[]byte("app.tenant_id"), []byte("pgcloak.tenant_" + "proof")}
			name := "r11a-replayed-" + how
			r := pipeline(t, pooled,
				&pgproto3.Parse{Name: "zzb", Query: `BEGIN`}, &pgproto3.Bind{PreparedStatement: "zzb"}, &pgproto3.Execute{},
				&pgproto3.Bind{PreparedStatement: "zzpin", Parameters: params}, &pgproto3.Execute{},
				&pgproto3.Parse{Name: "zzsee", Query: `select coalesce(pgcloak.current_tenant(), '<null>'), coalesce((select string_agg(name, ',' order by name) from patients), '')`},
				&pgproto3.Bind{PreparedStatement: "zzsee"}, &pgproto3.Execute{},
				&pgproto3.Sync{})
			t.Logf("replay: errors %v rows %v", r.errors, r.rows)
			for _, row := range r.rows {
				if len(row) == 2 && row[0] != "<null>" && row[0] != "acme" {
					t.Errorf("the attacker (%s) replayed the victim's pin: PostgreSQL pins %q and the attacker read rows %q", how, row[0], row[1])
				}
			}
			if how == "no_token" {
				r = pipeline(t, pooled,
					&pgproto3.Parse{Name: "zzins", Query: `insert into patients (name) values ('` + name + `')`},
					&pgproto3.Bind{PreparedStatement: "zzins"}, &pgproto3.Execute{}, &pgproto3.Sync{})
			} else {
				r = pipeline(t, pooled,
					&pgproto3.Parse{Name: "zzins", Query: atkInsert + ` returning pgcloak.current_tenant()`},
					&pgproto3.Bind{PreparedStatement: "zzins", Parameters: atkBytes(name, "000-11-2222")}, &pgproto3.Execute{}, &pgproto3.Sync{})
			}
			t.Logf("insert: errors %v rows %v", r.errors, r.rows)
			r9Exec(t, pooled, `COMMIT`)
			stored := r10aStoredAs(t, env, name)
			t.Logf("stored %v", stored)
			for _, s := range stored {
				if strings.HasPrefix(s, "globex:") {
					t.Errorf("the attacker (%s) stored a row stamped %s", how, s)
				}
			}
		})
	}
	atkCheckStored(t, env)
}

// r11aLeakSQL is the attacker's text: it copies whatever rows the pinned
// tenant can read into a session setting, which survives the victim's
// transaction on the shared connection.
const r11aLeakSQL = `select pg_catalog.set_config('zz.leak', coalesce((select string_agg(name, ',' order by name) from patients), '<none>'), false) as name`

// r11aPlantSQL also writes a row under the pinned tenant.
const r11aPlantSQL = `with i as (insert into patients (name) values ('r11a-planted') returning 1) select pg_catalog.set_config('zz.leak', coalesce((select string_agg(name, ',' order by name) from patients), '<none>'), false) || (select count(*) from i)::text as name`

// r11aLeak reads zz.leak on conn.
func r11aLeak(t *testing.T, conn *pgconn.PgConn) string {
	t.Helper()
	res, err := atkExec(t, conn, `select coalesce(current_setting('zz.leak', true), '')`)
	if err != nil {
		t.Logf("read zz.leak: %v", err)
		return ""
	}
	return string(res[0].Rows[0][0])
}

// r11aRedefineRun has a DBA's function (public.run) deallocate the
// statement name and prepare it again as text (r11aLeakSQL when empty):
// pgcloak sees neither the DEALLOCATE nor the PREPARE.
func r11aRedefineRun(t *testing.T, conn *pgconn.PgConn, name, text string) {
	t.Helper()
	if text == "" {
		text = `PREPARE ` + name + ` AS ` + r11aLeakSQL
	}
	_, err := atkExec(t, conn, `select public.run(`+rvQuoteChunks(`DEALLOCATE `+name)+`), public.run(`+rvQuoteChunks(text)+`)`)
	t.Logf("attacker redefines %s through public.run: %v", name, err)
}

// r11aNoGlobexLeak fails the test when the attacker's setting zz.leak holds
// globex's rows; how says how the attacker's text would have run.
func r11aNoGlobexLeak(t *testing.T, conn *pgconn.PgConn, how string) {
	t.Helper()
	leak := r11aLeak(t, conn)
	t.Logf("attacker (no token) reads zz.leak: %q", leak)
	if strings.Contains(leak, "globex") {
		t.Errorf("the attacker read globex's rows (%q): %s", leak, how)
	}
}

// r11aVictim runs one pooled transaction of the victim (globex): its
// token bound to its named token statement, then a Bind of its named
// statement stmt (parsed the first time with text).
func r11aVictim(t *testing.T, conn *pgconn.PgConn, label, globex, stmt, text string, params [][]byte, parse bool) pipelineResult {
	t.Helper()
	var msgs []pgproto3.FrontendMessage
	if parse {
		msgs = append(msgs, &pgproto3.Parse{Name: "vtok", Query: r11aTok})
	}
	msgs = append(msgs, &pgproto3.Bind{PreparedStatement: "vtok", Parameters: atkBytes(globex)}, &pgproto3.Execute{})
	if parse {
		msgs = append(msgs, &pgproto3.Parse{Name: stmt, Query: text})
	}
	msgs = append(msgs, &pgproto3.Bind{PreparedStatement: stmt, Parameters: params}, &pgproto3.Execute{}, &pgproto3.Sync{})
	r := pipeline(t, conn, msgs...)
	t.Logf("victim %s: errors %v rows %v", label, r.errors, r.rows)
	return r
}

// A pooled connection: the victim's driver prepared a plain statement
// (no encrypted column, so its name is not fixed) once and binds it in
// each of its transactions, after its token. The attacker, with no token
// at all, closes the name and prepares it again as a statement that
// copies the rows the pinned tenant reads into a session setting. The
// victim's next transaction runs it under globex's pin; the attacker
// then reads globex's rows from the setting.
func TestReview11APlainNamedStatementRedefinedLeaksRows(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	globex := mintToken(t, "globex", time.Hour)
	const vsel = `select name from patients order by name`
	drRun(t, env)
	for _, how := range []string{"protocol", "sql", "dynamic"} {
		t.Run(how, func(t *testing.T) {
			pooled := atkRaw(t, env)
			r11aVictim(t, pooled, "first", globex, "vsel", vsel, nil, true)
			if how == "protocol" {
				r := pipeline(t, pooled,
					&pgproto3.Close{ObjectType: 'S', Name: "vsel"},
					&pgproto3.Parse{Name: "vsel", Query: r11aPlantSQL},
					&pgproto3.Sync{})
				t.Logf("attacker redefines vsel (Close, Parse): %v", r.errors)
			} else if how == "sql" {
				_, err := atkExec(t, pooled, `DEALLOCATE vsel; PREPARE vsel AS `+r11aLeakSQL)
				t.Logf("attacker redefines vsel (DEALLOCATE, PREPARE): %v", err)
			} else {
				// Through a DBA's function that runs text: pgcloak sees
				// neither the DEALLOCATE nor the PREPARE.
				r11aRedefineRun(t, pooled, "vsel", "")
			}
			r11aVictim(t, pooled, "second", globex, "vsel", "", nil, false)
			r11aNoGlobexLeak(t, pooled, "its text ran under globex's pin through the victim's Bind of a redefined plain statement name")
			for _, s := range r10aStoredAs(t, env, "r11a-planted") {
				if !strings.HasPrefix(s, "<null>:") {
					t.Errorf("the attacker (no token) wrote a row stamped %s through the victim's Bind", s)
				}
			}
		})
	}
}

// The victim's statement that searches an encrypted column lives
// upstream as pgcloak:s<n> (its name is fixed for pgcloak). SQL pgcloak
// cannot read (a DBA's function that runs text) deallocates pgcloak's
// upstream statement and prepares the attacker's text under the same
// name and parameter types. Unlike a token statement, pgcloak does not
// prepare it again at the Bind: the victim's next Bind runs the
// attacker's text under globex's pin.
func TestReview11ARewrittenUpstreamNameRedefinedLeaksRows(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	drRun(t, env)
	pooled := atkRaw(t, env)
	globex := mintToken(t, "globex", time.Hour)
	const vfind = `select name from patients where ssn = $1`
	r11aVictim(t, pooled, "first", globex, "vfind", vfind, atkBytes("987-65-4321"), true)

	// The attacker learns pgcloak's upstream names and types, as any SQL
	// of the session can.
	_, err := atkExec(t, pooled, `select public.run(`+rvQuoteChunks(`select pg_catalog.set_config('zz.ps', (select string_agg(name || '=' || parameter_types::text, ';') from pg_prepared_statements), false)`)+`)`)
	fatalIf(t, err, "list prepared statements")
	res, err := atkExec(t, pooled, `select current_setting('zz.ps')`)
	fatalIf(t, err, "read zz.ps")
	ps := string(res[0].Rows[0][0])
	t.Logf("upstream statements: %s", ps)
	redefined := 0
	for _, e := range strings.Split(ps, ";") {
		name, types, ok := strings.Cut(e, "=")
		if !ok || !strings.HasPrefix(name, "pgcloak:s") || types == "{}" {
			continue
		}
		types = strings.Trim(types, "{}")
		sql := `DEALLOCATE "` + name + `"; PREPARE "` + name + `"(` + types + `) AS ` + r11aLeakSQL + ` where $1 is not null or true`
		_, err := atkExec(t, pooled, `select public.run(`+rvQuoteChunks(sql)+`)`)
		t.Logf("redefine %s(%s): %v", name, types, err)
		if err == nil {
			redefined++
		}
	}
	if redefined == 0 {
		t.Fatalf("found no pgcloak statement with parameters to redefine")
	}
	r11aVictim(t, pooled, "second", globex, "vfind", "", atkBytes("987-65-4321"), false)
	r11aNoGlobexLeak(t, pooled, "the victim's Bind of its encrypted-column statement ran the attacker's text under globex's pin")
}

// The same primitive carries a value sealed under acme into a row stamped
// globex: the attacker (acme's token) keeps the raw ciphertext of its own
// row's ssn in a session setting, and its text, run by the victim's Bind
// under globex's pin, inserts it (through a DBA's function pgcloak
// cannot read into).
func TestReview11APlainNamedStatementRedefinedCrossSeal(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	drRun(t, env)
	globex, acme := mintToken(t, "globex", time.Hour), mintToken(t, "acme", time.Hour)
	pooled := atkRaw(t, env)
	r11aVictim(t, pooled, "first", globex, "vsel", `select name from patients order by name`, nil, true)
	stash := `select pg_catalog.set_config('zz.ct', (select encode(ssn, 'hex') from patients where name = 'seed-acme'), false)`
	_, err := atkExec(t, pooled, `BEGIN; SET LOCAL pgcloak.tenant_token = '`+acme+`'; select public.run(`+rvQuoteChunks(stash)+`); COMMIT`)
	t.Logf("attacker stashes acme's ciphertext: %v", err)
	ins := `insert into patients (name, ssn) values ('r11a-cross', decode(current_setting('zz.ct'), 'hex'))`
	redefine := `PREPARE vsel AS select public.run(` + rvQuoteChunks(ins) + `)::text as name`
	r11aRedefineRun(t, pooled, "vsel", redefine)
	r11aVictim(t, pooled, "second", globex, "vsel", "", nil, false)
	stored := r10aStoredAs(t, env, "r11a-cross")
	t.Logf("stored %v", stored)
	for _, s := range stored {
		if strings.HasPrefix(s, "globex:") {
			t.Errorf("a value sealed under acme is stored in a row stamped globex (%s)", s)
		}
	}
	atkCheckStored(t, env)
}
