package proxy

import (
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgcloak/pgcloak/rewrite"
)

// Second adversarial review of 2026-12-07 (after 51f9193, 7bf5a0f).

// r2Rows runs sql and returns the first column of the last result's rows.
func r2Rows(t *testing.T, conn *pgconn.PgConn, sql string) ([]string, error) {
	t.Helper()
	res, err := atkExec(t, conn, sql)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, r := range res[len(res)-1].Rows {
		out = append(out, string(r[0]))
	}
	return out, nil
}

// CREATE AGGREGATE names its state function in a DefElem (a TypeName, not
// a FuncCall), so an aggregate whose SFUNC is pg_catalog.set_config calls
// set_config with a name the statement gives as INITCOND (a String, not an
// A_Const): tenancy sees neither. A login role's session (pg_temp is
// allowed there) sets the bare tenant setting.
func TestTokenAttack4_AggregateSetConfigLoginRole(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	acme, err := pgconn.Connect(ctxT(t), env.proxy.url(acmeRole, rolePassword, env.db))
	fatalIf(t, err, "connect acme")
	defer acme.Close(ctxT(t))
	for _, q := range []string{
		`CREATE AGGREGATE pg_temp.sc(text, boolean) (SFUNC = pg_catalog.set_config, STYPE = text, INITCOND = 'app.tenant_id')`,
		`SELECT pg_temp.sc('globex', false)`,
	} {
		_, err := atkExec(t, acme, q)
		t.Logf("acme: %.90s: %v", q, err)
	}
	got, err := r2Rows(t, acme, `select current_setting('app.tenant_id', true) || '|' || coalesce(pgcloak.current_tenant(), '<null>')`)
	fatalIf(t, err, "read")
	t.Logf("acme's session: app.tenant_id|current_tenant() = %v", got)
	if len(got) == 1 && got[0][:6] == "globex" {
		t.Errorf("a login role's session set app.tenant_id to globex through an aggregate whose SFUNC is set_config: %v", got)
	}
}

// The same in a token role's session with CREATE on a schema (pgcloak check
// only warns): the aggregates reach set_config of both settings and
// pgcloak.pin_next, so a pin that never ran (its MAC in pg_stat_activity)
// is replayed by a later client of the connection, whose SQL never names
// pin_next as a function, set_config, or the proof setting.
func TestTokenAttack4_AggregatePinNextReplay(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	fatalIf(t, env.pg.Exec(ctxT(t), env.db, `create schema scratch; grant usage, create on schema scratch to `+poolRole), "grant")
	victim, pin := rvUnexecutedPin(t, env)
	// The next client of the connection, no token.
	for _, q := range []string{
		`CREATE AGGREGATE scratch.a1(text, boolean) (SFUNC = pg_catalog.set_config, STYPE = text, INITCOND = 'app.tenant_id')`,
		`CREATE AGGREGATE scratch.a2(text, boolean) (SFUNC = pg_catalog.set_config, STYPE = text, INITCOND = 'pgcloak.tenant_proof')`,
		`CREATE AGGREGATE scratch.a3(text, int8, int8, boolean, text) (SFUNC = pgcloak.pin_next, STYPE = text, INITCOND = '` + pin[0] + `')`,
		`SELECT scratch.a1('` + pin[0] + `', false)`,
		fmt.Sprintf(`SELECT scratch.a2(p, false) FROM (SELECT scratch.a3('%s', %s, %s, %s, '%s') AS p) s`, pin[1], pin[2], pin[3], pin[4], pin[5]),
	} {
		_, err := atkExec(t, victim, q)
		t.Logf("attacker: %.100s: %v", q, err)
	}
	rvSeesNothing(t, victim, "replayed an unexecuted pin through aggregates")
}

// Startup options are checked for the tenant setting, pgcloak.* and the
// lexer settings only: search_path=pg_temp at startup is accepted in a
// token role's session, so an unqualified CREATE TABLE makes a temporary
// table (Plan.Outlives sees no TEMP and no pg_temp) and an unqualified
// CREATE AGGREGATE lands in pg_temp, with no CREATE granted anywhere.
func TestTokenAttack4_StartupSearchPathTemp(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	for _, opts := range []string{"options=-c%20search_path%3Dpg_temp,public", "search_path=pg_temp,public"} {
		conn, err := pgconn.Connect(ctxT(t), env.proxy.url(poolRole, rolePassword, env.db, opts))
		if err != nil {
			t.Logf("%s: refused: %v", opts, err)
			continue
		}
		for _, q := range []string{
			`CREATE TABLE leftover (v text)`,
			`CREATE AGGREGATE a1(text, boolean) (SFUNC = pg_catalog.set_config, STYPE = text, INITCOND = 'app.tenant_id')`,
			`SELECT pg_temp.a1('globex', false)`,
		} {
			_, err := atkExec(t, conn, q)
			t.Logf("%s: %.80s: %v", opts, q, err)
		}
		got, err := r2Rows(t, conn, `select (select count(*) from pg_class where relname = 'leftover' and relpersistence = 't')::text || '|' || coalesce(current_setting('app.tenant_id', true), '')`)
		fatalIf(t, err, "check")
		t.Logf("%s: temporary leftover tables | app.tenant_id = %v", opts, got)
		if len(got) == 1 && (got[0][:1] == "1" || got[0][2:] == "globex") {
			t.Errorf("token session started with %s: a temporary table outliving the transaction and/or app.tenant_id set through a pg_temp aggregate: %v", opts, got)
		}
		conn.Close(ctxT(t))
	}
}

// The victim makes no mistake: the previous client of the pooled
// connection leaves default_transaction_read_only on, so the victim's
// pin (pin_next's setval) fails after its MAC is checked and before the
// counter moves. Its MAC is in pg_stat_activity; the attacker, back on the
// connection, turns read-only off and replays it with aggregates (CREATE
// on a schema, as in TestTokenAttack4_AggregatePinNextReplay).
func TestTokenAttack4_ReadOnlyCapturesPin(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	fatalIf(t, env.pg.Exec(ctxT(t), env.db, `create schema scratch; grant usage, create on schema scratch to `+poolRole), "grant")
	conn := atkRaw(t, env)
	spy := atkRaw(t, env)
	for _, q := range []string{
		`CREATE AGGREGATE scratch.a1(text, boolean) (SFUNC = pg_catalog.set_config, STYPE = text, INITCOND = 'app.tenant_id')`,
		`CREATE AGGREGATE scratch.a2(text, boolean) (SFUNC = pg_catalog.set_config, STYPE = text, INITCOND = 'pgcloak.tenant_proof')`,
		`SET default_transaction_read_only = on`,
	} {
		_, err := atkExec(t, conn, q)
		t.Logf("attacker: %.100s: %v", q, err)
	}
	_, err := atkExec(t, conn, `BEGIN; SET LOCAL pgcloak.tenant_token = '`+mintToken(t, "acme", time.Hour)+`'; SELECT name FROM patients; COMMIT`)
	t.Logf("victim's transaction: %v", err)
	pin := rvSpyPin(t, spy, conn)
	for _, q := range []string{
		`ROLLBACK`,
		`SET default_transaction_read_only = off`,
		`CREATE AGGREGATE scratch.a3(text, int8, int8, boolean, text) (SFUNC = pgcloak.pin_next, STYPE = text, INITCOND = '` + pin[0] + `')`,
	} {
		_, err := atkExec(t, conn, q)
		t.Logf("attacker: %.100s: %v", q, err)
	}
	res, err := atkExec(t, conn, fmt.Sprintf(`BEGIN; SELECT scratch.a1('%s', %s); SELECT scratch.a2(p, %s) FROM (SELECT scratch.a3('%s', %s, %s, %s, '%s') AS p) s; SELECT coalesce(pgcloak.current_tenant(), '<null>'); SELECT name FROM patients; COMMIT`,
		pin[0], pin[4], pin[4], pin[1], pin[2], pin[3], pin[4], pin[5]))
	if err != nil {
		t.Logf("attacker's replay: %v", err)
		return
	}
	var names []string
	for _, r := range res[4].Rows {
		names = append(names, string(r[0]))
	}
	t.Logf("attacker's transaction (no token): current_tenant %s, names %v", res[3].Rows[0][0], names)
	if len(names) > 0 {
		t.Errorf("a later client of the connection, without a token, reads %s's rows %v by replaying the victim's pin that read-only mode kept from running", res[3].Rows[0][0], names)
	}
}

// sharedParam: a parameter bound for a declared column and used as it is
// elsewhere must be refused (or the statement refused for another reason).
// Logs each case's outcome; fails on any that is accepted with the
// parameter sent both sealed and plain.
func TestTokenAttack4_SharedParamVariants(t *testing.T) {
	s := rewrite.NewSchema(patientsDecl(), "app.tenant_id")
	for _, q := range []string{
		`INSERT INTO patients (name, ssn) VALUES ($1, $1)`,
		`INSERT INTO patients (ssn) VALUES ($1) RETURNING $1::text`,
		`WITH x AS (SELECT $1::text AS v) INSERT INTO patients (ssn, name) VALUES ($1, (SELECT v FROM x))`,
		`INSERT INTO patients (ssn, name) VALUES ($1, (SELECT $1::text))`,
		`INSERT INTO patients (ssn) VALUES ($1) ON CONFLICT (id) DO UPDATE SET name = $1`,
		`INSERT INTO patients (ssn, name) SELECT $1, $1`,
		`UPDATE patients SET ssn = $1, name = $1 WHERE id = 1`,
		`UPDATE patients SET (ssn, name) = ($1, $1) WHERE id = 1`,
		`UPDATE patients SET ssn = $1 WHERE name = $1`,
		`UPDATE patients SET ssn = $1 WHERE id = 1 RETURNING $1`,
		`SELECT name FROM patients WHERE ssn = $1 OR name = $1`,
		`SELECT name FROM patients WHERE ssn = ANY($1) OR name = ANY($1)`,
		`SELECT name FROM patients WHERE ssn = $1 LIMIT length($1)`,
		`SELECT name FROM patients WHERE ssn IN ($1, $2) AND name IN ($2)`,
		`SELECT $1::text, name FROM patients WHERE ssn = $1`,
		`DELETE FROM patients WHERE ssn = $1 RETURNING $1`,
		`SELECT name FROM patients WHERE ssn = $1 AND EXISTS (SELECT 1 FROM patients p2 WHERE p2.name = $1)`,
		`SELECT name FROM patients WHERE ssn = $1 UNION ALL SELECT $1::text`,
		`SELECT name FROM patients p WHERE p.ssn = $1 AND p.email = $1`,
		`SELECT name FROM patients WHERE ssn = $1 ORDER BY $1`,
		`INSERT INTO patients (ssn, email) VALUES ($1, $1)`,
		`SELECT name FROM patients WHERE ssn = $1 AND ssn_bidx IS NOT NULL AND $1 IS NOT NULL`,
		`SELECT name FROM patients WHERE ssn = $1::text AND name = $1::varchar`,
	} {
		plan, err := s.Analyze(q)
		if err != nil {
			t.Logf("refused: %.90s: %v", q, err)
			continue
		}
		sealed, plain := map[int]bool{}, map[int]bool{}
		for _, p := range plan.Params {
			if p.Kind == rewrite.ParamPlain {
				plain[p.Param] = true
			} else {
				sealed[p.Param] = true
			}
		}
		both := false
		for n := range sealed {
			both = both || plain[n]
		}
		t.Logf("accepted: %.90s: params %+v", q, plan.Params)
		if both {
			t.Errorf("accepted with a parameter both sealed and plain: %s", q)
		}
	}
}

// Plan.Outlives in a token role's session (no startup options): what is
// refused, and what a serial column of an ON COMMIT DROP table leaves
// behind once its sequence is disowned.
func TestTokenAttack4_OutlivesVariants(t *testing.T) {
	env := startTokenEnv(t)
	conn := atkRaw(t, env)
	for _, q := range []string{
		`CREATE AGGREGATE pg_temp.a1(text, boolean) (SFUNC = pg_catalog.set_config, STYPE = text, INITCOND = 'app.tenant_id')`,
		`CREATE COLLATION pg_temp.c FROM "C"`,
		`CREATE TEXT SEARCH CONFIGURATION pg_temp.ts (COPY = english)`,
		`CREATE CONVERSION pg_temp.cv FOR 'LATIN1' TO 'UTF8' FROM iso8859_1_to_utf8`,
		`CREATE STATISTICS pg_temp.st ON name, ssn FROM patients`,
		`BEGIN; CREATE TEMP TABLE t (id serial, v text) ON COMMIT DROP; ALTER SEQUENCE t_id_seq OWNED BY NONE; ALTER SEQUENCE t_id_seq RENAME TO patients_id_seq; COMMIT`,
	} {
		_, err := atkExec(t, conn, q)
		t.Logf("%.110s: %v", q, err)
	}
	atkExec(t, conn, `ROLLBACK`) // the refused query's prefix opened a transaction
	got, err := r2Rows(t, conn, `select n.nspname || '.' || c.relname || ':' || c.relkind::text from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.oid = pg_my_temp_schema()`)
	fatalIf(t, err, "temp objects")
	t.Logf("relations left in the session's temporary schema: %v", got)
	if len(got) > 0 {
		t.Errorf("a token session left temporary relations behind: %v", got)
	}
	got, err = r2Rows(t, conn, `select pg_catalog.nextval('patients_id_seq')::text`)
	t.Logf("nextval('patients_id_seq') by name now: %v %v", got, err)
}

// What the bare setting still guards: a table that is not declared whose
// policy reads current_setting('app.tenant_id') (pgcloak check warns, SPEC
// 5.3). acme's login session sets the setting to globex through a pg_temp
// aggregate and reads globex's rows.
func TestTokenAttack4_AggregateBareSettingPolicy(t *testing.T) {
	env := startTokenEnv(t)
	fatalIf(t, env.pg.Exec(ctxT(t), env.db, `create table notes (tenant_id text not null, body text);
		alter table notes enable row level security;
		create policy by_setting on notes using (tenant_id = current_setting('app.tenant_id', true));
		insert into notes values ('acme', 'acme-note'), ('globex', 'globex-secret-note');
		grant select on notes to `+acmeRole), "notes")
	acme, err := pgconn.Connect(ctxT(t), env.proxy.url(acmeRole, rolePassword, env.db))
	fatalIf(t, err, "connect acme")
	defer acme.Close(ctxT(t))
	before, err := r2Rows(t, acme, `select body from notes`)
	fatalIf(t, err, "before")
	_, err = atkExec(t, acme, `CREATE AGGREGATE pg_temp.sc(text, boolean) (SFUNC = pg_catalog.set_config, STYPE = text, INITCOND = 'app.tenant_id'); SELECT pg_temp.sc('globex', false)`)
	t.Logf("aggregate set_config: %v", err)
	after, err := r2Rows(t, acme, `select body from notes`)
	fatalIf(t, err, "after")
	t.Logf("acme reads notes: before %v, after %v", before, after)
	for _, b := range after {
		if b == "globex-secret-note" {
			t.Errorf("acme's login session reads globex's rows of a table whose policy reads the bare setting, after an aggregate set it: %v", after)
		}
	}
}

// SET ROLE to another tenant's role is refused (SPEC 5.3); set_config('role',
// ...) is the same change by a function, and is not recorded as a
// RoleChange. acme_app is made a member of globex_app (PostgreSQL allows
// the switch; pgcloak is what refuses it).
func TestTokenAttack4_SetConfigRole(t *testing.T) {
	env := startTokenEnv(t)
	fatalIf(t, env.pg.Exec(ctxT(t), env.db, `grant `+globexRole+` to `+acmeRole), "grant membership")
	acme, err := pgconn.Connect(ctxT(t), env.proxy.url(acmeRole, rolePassword, env.db))
	fatalIf(t, err, "connect acme")
	defer acme.Close(ctxT(t))
	_, err = atkExec(t, acme, `SET ROLE `+globexRole)
	t.Logf("SET ROLE %s: %v", globexRole, err)
	_, err = atkExec(t, acme, `RESET ROLE`)
	_, err = atkExec(t, acme, `SELECT pg_catalog.set_config('role', '`+globexRole+`', false)`)
	t.Logf("set_config('role', %s): %v", globexRole, err)
	got, err := r2Rows(t, acme, `select current_user::text`)
	fatalIf(t, err, "current_user")
	t.Logf("current_user now %v", got)
	if len(got) == 1 && got[0] == globexRole {
		t.Errorf("acme's session became %s through set_config('role', ...), which SET ROLE is refused for", globexRole)
	}
}

// unpin() unqualified on a search_path naming pgcloak: marker 0, which no
// tenant and proof hash to. Fail closed expected.
func TestTokenAttack4_UnqualifiedUnpin(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	conn := atkRaw(t, env)
	_, err := atkExec(t, conn, `SET pgcloak.tenant_token = '`+mintToken(t, "acme", time.Hour)+`'`)
	fatalIf(t, err, "SET acme")
	_, err = atkExec(t, conn, `SET search_path = pgcloak, public; SELECT unpin()`)
	t.Logf("unqualified unpin(): %v", err)
	ct, names := rvSees(t, conn)
	_, insErr := atkExec(t, conn, `INSERT INTO patients (name, ssn) VALUES ('after-unpin', '111-22-3333')`)
	t.Logf("after unpin: current_tenant %s, names %v, insert: %v", ct, names, insErr)
	if ct != "<null>" && ct != "acme" {
		t.Errorf("after unpin current_tenant() is %s", ct)
	}
}

// The lexer settings through an aggregate: the name check does not see it;
// the ParameterStatus guard must then refuse every later statement.
func TestTokenAttack4_AggregateLexerSetting(t *testing.T) {
	env := startTokenEnv(t)
	acme, err := pgconn.Connect(ctxT(t), env.proxy.url(acmeRole, rolePassword, env.db))
	fatalIf(t, err, "connect acme")
	defer acme.Close(ctxT(t))
	_, err = atkExec(t, acme, `CREATE AGGREGATE pg_temp.sc(text, boolean) (SFUNC = pg_catalog.set_config, STYPE = text, INITCOND = 'standard_conforming_strings')`)
	t.Logf("create: %v", err)
	if pgCode(err) == "42501" {
		return // refused as opaque SQL: held
	}
	_, err = atkExec(t, acme, `SELECT pg_temp.sc('off', false)`)
	t.Logf("set scs off through the aggregate: %v", err)
	_, err = atkExec(t, acme, `SELECT 1`)
	t.Logf("next statement: %v", err)
	if err == nil {
		t.Errorf("standard_conforming_strings turned off through an aggregate and the session goes on")
	}
}
