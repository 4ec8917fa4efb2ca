package proxy

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Adversarial review of the tenant promise (review of 2026-12-07): a
// client's SQL must not change the tenant PostgreSQL's
// pgcloak.current_tenant() returns, and a session pgcloak holds to have no
// tenant must not see another tenant's rows.

// rvQuoteChunks spells text as a concatenation of string constants of at
// most three characters, so that no constant contains set_config, the
// tenant setting's name, or pgcloak with pin_ / tenant_proof.
func rvQuoteChunks(text string) string {
	var parts []string
	for len(text) > 0 {
		n := min(3, len(text))
		parts = append(parts, "'"+strings.ReplaceAll(text[:n], "'", "''")+"'")
		text = text[n:]
	}
	return "(" + strings.Join(parts, " || ") + ")"
}

// rvTsRewrite is a statement that makes PostgreSQL run the SELECT inner
// (which must return two tsquery columns) through ts_rewrite(tsquery,
// text): dynamic SQL that rewrite's tenancy checks do not look into.
func rvTsRewrite(inner string) string {
	return `SELECT pg_catalog.ts_rewrite('a'::tsquery, ` + rvQuoteChunks(inner) + `)::text`
}

// rvSetBoth returns the inner SELECT for rvTsRewrite that sets the tenant
// setting and the proof setting (session-level) to tenant and proofExpr (an
// SQL expression).
func rvSetBoth(tenant, proofExpr string) string {
	return `SELECT 'a'::tsquery, 'a'::tsquery WHERE pg_catalog.set_config('app.tenant_id', '` + tenant +
		`', false) IS NOT NULL AND pg_catalog.set_config('pgcloak.tenant_proof', ` + proofExpr + `, false) IS NOT NULL`
}

// rvSees returns current_tenant() and the names the session can read.
func rvSees(t *testing.T, conn *pgconn.PgConn) (string, []string) {
	t.Helper()
	res, err := atkExec(t, conn, `select coalesce(pgcloak.current_tenant(), '<null>')`)
	fatalIf(t, err, "current_tenant")
	ct := string(res[0].Rows[0][0])
	res, err = atkExec(t, conn, `select name from patients order by name`)
	fatalIf(t, err, "select names")
	var names []string
	for _, r := range res[0].Rows {
		names = append(names, string(r[0]))
	}
	return ct, names
}

var rvPinNextRE = regexp.MustCompile(`pgcloak\.pin_next\('([^']*)'::pg_catalog\.text, '([^']*)'::pg_catalog\.text, '(\d+)'::pg_catalog\.int8, '(\d+)'::pg_catalog\.int8, (true|false), '([0-9a-f]+)'::pg_catalog\.text\)`)

// rvUnexecutedPin makes a victim's simple-protocol pin fail before it runs
// (an earlier statement of its query fails) and reads its arguments, MAC
// included, from pg_stat_activity through a second session of the role.
func rvUnexecutedPin(t *testing.T, env *encryptedEnv) (*pgconn.PgConn, []string) {
	t.Helper()
	victim := atkRaw(t, env)
	spy := atkRaw(t, env)
	// A token statement may follow only statements that run no code; a
	// SET of a bad value fails all the same.
	_, err := atkExec(t, victim, `SET statement_timeout = 'never'; SET pgcloak.tenant_token = '`+mintToken(t, "acme", time.Hour)+`'`)
	t.Logf("victim's failing query: %v", err)
	pin := rvSpyPin(t, spy, victim)
	ct, names := rvSees(t, victim)
	t.Logf("after the failed query: current_tenant %s, names %v", ct, names)
	return victim, pin
}

// rvSeesNothing fails the test when victim, a session pgcloak holds to
// have no tenant, reads any patient row after an attack (how).
func rvSeesNothing(t *testing.T, victim *pgconn.PgConn, how string) {
	t.Helper()
	ct, names := rvSees(t, victim)
	_, ssnErr := atkExec(t, victim, `select ssn from patients`)
	t.Logf("after %s: current_tenant %s, names %v, ssn read: %v", how, ct, names, ssnErr)
	if len(names) > 0 {
		t.Errorf("a session with no tenant (pgcloak: ssn %v) %s and reads %s's rows %v", ssnErr, how, ct, names)
	}
}

// rvSpyPin reads the pin_next arguments of victim's last simple-protocol
// pin from pg_stat_activity, as any other session of the same role can.
func rvSpyPin(t *testing.T, spy, victim *pgconn.PgConn) []string {
	t.Helper()
	res, err := atkExec(t, spy, fmt.Sprintf(`select query from pg_stat_activity where pid = %d`, victim.PID()))
	fatalIf(t, err, "pg_stat_activity")
	text := string(res[0].Rows[0][0])
	m := rvPinNextRE.FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("no pin_next call in the victim's pg_stat_activity.query: %.300s", text)
	}
	t.Logf("spy read the victim's pin: tenant %s proof %s challenge %s n %s local %s mac %.12s...", m[1], m[2], m[3], m[4], m[5], m[6])
	return m[1:]
}

// ts_rewrite(tsquery, text) runs its text as a query: set_config of the
// tenant setting and of pgcloak.tenant_proof, and calls of pgcloak.*
// functions, pass the tenancy checks when the text is built from pieces
// (SPEC 5.3: "set_config on it anywhere in a statement ... stay refused").
func TestTokenAttack3_TsRewriteSetsTenantSetting(t *testing.T) {
	env := startTokenEnv(t)
	conn := atkRaw(t, env)
	q := rvTsRewrite(rvSetBoth("globex", `'v1:0:00'`))
	_, err := atkExec(t, conn, q)
	t.Logf("token role, ts_rewrite set_config: %v", err)
	if pgCode(err) != "42501" {
		t.Errorf("ts_rewrite running set_config from pieces: %v, want 42501", err)
	}
	res, err := atkExec(t, conn, `select current_setting('app.tenant_id', true), current_setting('pgcl' || 'oak.tenant_proof', true)`)
	fatalIf(t, err, "read settings")
	got := string(res[0].Rows[0][0]) + "|" + string(res[0].Rows[0][1])
	if got == "globex|v1:0:00" {
		t.Errorf("a token role's session set app.tenant_id and pgcloak.tenant_proof through ts_rewrite (not refused): %s", got)
	}
	// A fixed-tenant login role too.
	acme, err := pgconn.Connect(ctxT(t), env.proxy.url(acmeRole, rolePassword, env.db))
	fatalIf(t, err, "connect acme")
	defer acme.Close(ctxT(t))
	_, err = atkExec(t, acme, rvTsRewrite(`SELECT 'a'::tsquery, 'a'::tsquery WHERE pg_catalog.set_config('app.tenant_id', 'globex', false) IS NOT NULL`))
	t.Logf("login role, ts_rewrite set_config: %v", err)
	res, err = atkExec(t, acme, `select current_setting('app.tenant_id', true), coalesce(pgcloak.current_tenant(), '<null>')`)
	fatalIf(t, err, "read settings")
	if string(res[0].Rows[0][0]) == "globex" {
		t.Errorf("acme's login session set app.tenant_id to globex through ts_rewrite (current_tenant %s)", res[0].Rows[0][1])
	}
	// pgcloak.* functions through it (pin_challenge, unpin).
	_, err = atkExec(t, acme, rvTsRewrite(`SELECT 'a'::tsquery, 'a'::tsquery WHERE pgcloak.unpin() IS NULL`))
	t.Logf("login role, ts_rewrite pgcloak.unpin(): %v", err)
	if pgCode(err) != "42501" {
		t.Errorf("ts_rewrite calling pgcloak.unpin(): %v, want 42501", err)
	}
}

// A session token, then RESET inside a transaction (or savepoint) that is
// rolled back: PostgreSQL restores the settings, and the marker was never
// moved, so current_tenant() is the session token's tenant again, while
// pgcloak holds the session to have no tenant.
func TestTokenResetRolledBack(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	acme := mintToken(t, "acme", time.Hour)
	for _, steps := range [][]string{
		{`BEGIN`, `RESET pgcloak.tenant_token`, `ROLLBACK`},
		{`BEGIN`, `SAVEPOINT s`, `RESET pgcloak.tenant_token`, `ROLLBACK TO s`, `COMMIT`},
		{`BEGIN; RESET pgcloak.tenant_token; ROLLBACK`},
		{`BEGIN`, `RESET ALL`, `SELECT 1`, `ROLLBACK`},
		{`BEGIN`, `SAVEPOINT s`, `SET pgcloak.tenant_token = 'not.a.token'`, `ROLLBACK TO s`, `SELECT 1`, `ROLLBACK`},
	} {
		conn := atkRaw(t, env)
		_, err := atkExec(t, conn, `SET pgcloak.tenant_token = '`+acme+`'`)
		fatalIf(t, err, "SET acme")
		for _, s := range steps {
			_, err := atkExec(t, conn, s)
			t.Logf("  %s: %v", s, err)
		}
		ct, names := rvSees(t, conn)
		_, ssnErr := atkExec(t, conn, `select ssn from patients`)
		_, insErr := atkExec(t, conn, `insert into patients (name) values ('planted-after-reset')`)
		t.Logf("%v: current_tenant %s, names %v, ssn read: %v, name-only insert: %v", steps, ct, names, ssnErr, insErr)
		if ct != "<null>" || len(names) > 0 {
			if pgCode(ssnErr) == "42501" {
				t.Errorf("%v: pgcloak holds the session to have no tenant (ssn refused 42501) but PostgreSQL's current_tenant() is %s and it reads %v", steps, ct, names)
			} else {
				t.Logf("%v: pgcloak and PostgreSQL agree on %s", steps, ct)
			}
		}
		conn.Close(ctxT(t))
	}
	var planted []string
	rows, err := env.pool.Query(ctxT(t), `select tenant_id from patients where name = 'planted-after-reset'`)
	fatalIf(t, err, "planted")
	for rows.Next() {
		var s string
		rows.Scan(&s)
		planted = append(planted, s)
	}
	if len(planted) > 0 {
		t.Errorf("a session pgcloak holds to have no tenant wrote rows stamped %v", planted)
	}
}

// A session token set with a simple query is pinned with literals: the
// tenant and proof are in pg_stat_activity.query for every session of the
// role. RESET clears the settings but leaves the marker; a later client of
// the same connection (a pooled one) that sets both settings through
// ts_rewrite is that tenant again for PostgreSQL, while pgcloak holds it
// to have none.
func TestTokenAttack3_StaleMarkerProofReplay(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	victim := atkRaw(t, env)
	spy := atkRaw(t, env)
	_, err := atkExec(t, victim, `SET pgcloak.tenant_token = '`+mintToken(t, "acme", time.Hour)+`'`)
	fatalIf(t, err, "victim SET acme")
	pin := rvSpyPin(t, spy, victim)
	_, err = atkExec(t, victim, `RESET pgcloak.tenant_token`)
	fatalIf(t, err, "victim RESET")
	ct, names := rvSees(t, victim)
	t.Logf("after RESET: current_tenant %s, names %v", ct, names)
	if len(names) > 0 {
		t.Fatalf("after RESET the session still reads %v", names)
	}
	// The next client on this connection, with no token.
	_, err = atkExec(t, victim, rvTsRewrite(rvSetBoth(pin[0], "'"+pin[1]+"'")))
	t.Logf("attacker's ts_rewrite: %v", err)
	ct, names = rvSees(t, victim)
	_, ssnErr := atkExec(t, victim, `select ssn from patients`)
	t.Logf("after replaying the proof: current_tenant %s, names %v, ssn read: %v", ct, names, ssnErr)
	if len(names) > 0 {
		t.Errorf("a session with no tenant (pgcloak: ssn %v) reads %s's rows %v after setting the settings to a proof seen in pg_stat_activity", ssnErr, ct, names)
	}
}

// A simple-protocol pin that never ran (an earlier statement of its query
// failed) leaves a MAC for a pin number the session never accepted, in
// pg_stat_activity for every session of the role; pgcloak.pin_next()
// accepts it later on the same backend.
func TestTokenAttack3_UnexecutedPinReplay(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	victim, pin := rvUnexecutedPin(t, env)
	call := fmt.Sprintf(`pgcloak.pin_next('%s', '%s', %s, %s, %s, '%s')`, pin[0], pin[1], pin[2], pin[3], pin[4], pin[5])
	_, err := atkExec(t, victim, rvTsRewrite(rvSetBoth(pin[0], call)))
	t.Logf("attacker's replay of the unexecuted pin: %v", err)
	rvSeesNothing(t, victim, "replayed an unexecuted pin")
}

// Startup options are refused when they name the tenant setting or a
// pgcloak.* setting as written; PostgreSQL reads options with backslash
// escapes and dashes for underscores, so app.tenant-id and
// pgcloak\.tenant_proof set them all the same (SPEC 5.3: "startup
// parameters and options naming it ... stay refused").
func TestTokenAttack3_StartupOptionsSetTenantSetting(t *testing.T) {
	env := startTokenEnv(t)
	for _, opts := range []string{
		`-c%20app.tenant-id%3Dglobex`,
		`-c%20app.tenant%5C_id%3Dglobex`,
		`-c%20pgcloak%5C.tenant_proof%3Dv1:0:00`,
		`--app.tenant-id%3Dglobex`,
	} {
		conn, err := pgconn.Connect(ctxT(t), env.proxy.url(poolRole, rolePassword, env.db, "options="+opts))
		if err != nil {
			t.Logf("options %s: refused: %v", opts, err)
			continue
		}
		res, err := atkExec(t, conn, `select coalesce(current_setting('app.tenant_id', true), '<unset>'), coalesce(current_setting('pgcl' || 'oak.tenant_proof', true), '<unset>')`)
		fatalIf(t, err, "settings")
		got := string(res[0].Rows[0][0]) + "|" + string(res[0].Rows[0][1])
		t.Logf("options %s: accepted, settings %s", opts, got)
		if strings.Contains(got, "globex") || strings.Contains(got, "v1:0:00") {
			t.Errorf("startup options %s set %s (not refused)", opts, got)
		}
		conn.Close(ctxT(t))
	}
}

// A token session sets search_path to pg_temp with plain SQL that pgcloak
// reads, then a plain CREATE TABLE makes a temporary table that shadows
// the declared table for the rest of the connection: the next client on
// it (another tenant's transaction) writes into the attacker's table.
// (docs/tenant-tokens.md names only search_path set by SQL pgcloak cannot
// read; with TEMP granted to PUBLIC, the default.)
func TestTokenAttack3_SearchPathTempShadow(t *testing.T) {
	env := startTokenEnv(t)
	conn := atkRaw(t, env)
	for _, q := range []string{
		`SET search_path = pg_temp, public`,
		`CREATE TABLE patients (id serial, tenant_id text default 'x', name text, ssn bytea, ssn_bidx bytea, email bytea, email_bidx bytea, diagnosis bytea, birth_date bytea)`,
		`RESET search_path`,
	} {
		_, err := atkExec(t, conn, q)
		t.Logf("attacker: %.60s: %v", q, err)
	}
	res, err := atkExec(t, conn, `select n.nspname from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.relname = 'patients' and c.relpersistence = 't'`)
	fatalIf(t, err, "temp?")
	if len(res[0].Rows) == 0 {
		t.Logf("no temporary patients table was made: held")
		return
	}
	// The next client of the pooled connection: tenant globex's transaction.
	_, err = atkExec(t, conn, `BEGIN; SET LOCAL pgcloak.tenant_token = '`+mintToken(t, "globex", time.Hour)+`'; INSERT INTO patients (name, ssn) VALUES ('globex-victim', '999-99-9999'); COMMIT`)
	t.Logf("victim's transaction: %v", err)
	// The attacker again, with no token.
	res, err = atkExec(t, conn, `select name, tenant_id from pg_temp.patients`)
	t.Logf("attacker reads its temporary table: %v %v", func() any {
		if err != nil {
			return nil
		}
		return res[0].Rows
	}(), err)
	if err == nil && len(res[0].Rows) > 0 {
		t.Errorf("another tenant's write landed in a temporary table the token session made and reads: %q", res[0].Rows)
	}
}

// CREATE TEMP VIEW outlives the transaction too (Plan.Outlives names
// temporary tables and WITH HOLD cursors only).
func TestTokenAttack3_TempViewShadow(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	conn := atkRaw(t, env)
	_, err := atkExec(t, conn, `CREATE TEMP VIEW patients AS SELECT 1 AS id, 'acme'::text AS tenant_id, 'planted-by-attacker'::text AS name, NULL::bytea AS ssn`)
	t.Logf("CREATE TEMP VIEW patients: %v", err)
	if err != nil {
		return
	}
	res, err := atkExec(t, conn, `BEGIN; SET LOCAL pgcloak.tenant_token = '`+mintToken(t, "acme", time.Hour)+`'; SELECT name FROM patients; COMMIT`)
	if err == nil {
		t.Logf("acme's transaction reads: %q", res[2].Rows)
		for _, r := range res[2].Rows {
			if string(r[0]) == "planted-by-attacker" {
				t.Errorf("a temporary view made before the token shadows the declared table in acme's transaction")
			}
		}
	} else {
		t.Logf("acme's transaction: %v", err)
	}
}

// The proxy's pin statement casts with unqualified type names ($1::text);
// PostgreSQL searches the session's temporary schema first for types. A
// token session (no token) makes a temporary domain "text" whose CHECK
// records the proof and MAC of the next pin on the connection into
// temporary sequences (not undone by a rollback) and fails, so the pin
// never runs; the attacker then replays it (pgcloak.pin_next through
// ts_rewrite) in its own transaction: another tenant's rows, with local
// tokens and no victim mistake.
func TestTokenAttack3_TempDomainCapturesPin(t *testing.T) {
	for _, extended := range []bool{false, true} {
		t.Run(fmt.Sprintf("extended=%v", extended), func(t *testing.T) { rvTempDomainCapture(t, extended) })
	}
}

func rvTempDomainCapture(t *testing.T, extended bool) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	conn := atkRaw(t, env)
	// The attacker's own token once, to learn the session's challenge
	// and pin number from its own pin's text.
	res, err := atkExec(t, conn, `BEGIN; SET LOCAL pgcloak.tenant_token = '`+mintToken(t, "acme", time.Hour)+`'; SELECT current_query(); COMMIT`)
	fatalIf(t, err, "attacker's own token")
	own := rvPinNextRE.FindStringSubmatch(string(res[2].Rows[0][0]))
	if own == nil {
		t.Fatalf("no pin in current_query()")
	}
	c, n := own[3], own[4]
	t.Logf("attacker's own pin: challenge %s n %s", c, n)
	setup := []string{}
	for _, s := range []string{"p_exp", "p_n1", "p_n2", "m1", "m2", "m3", "m4"} {
		setup = append(setup, `CREATE TEMP SEQUENCE `+s+` MINVALUE -9223372036854775808`)
	}
	hex := func(seq, src string, from int) string {
		return fmt.Sprintf(`pg_catalog.setval('pg_temp.%s', ('x' || pg_catalog.substr(%s, %d, 16))::pg_catalog.bit(64)::pg_catalog.int8)`, seq, src, from)
	}
	check := `CASE WHEN VALUE ~ '^v1:[0-9]+:[0-9a-f]{32}$' THEN ` +
		`pg_catalog.setval('pg_temp.p_exp', pg_catalog.split_part(VALUE, ':', 2)::pg_catalog.int8) IS NOT NULL AND ` +
		hex("p_n1", `pg_catalog.split_part(VALUE, ':', 3)`, 1) + ` IS NOT NULL AND ` +
		hex("p_n2", `pg_catalog.split_part(VALUE, ':', 3)`, 17) + ` IS NOT NULL ` +
		`WHEN VALUE ~ '^[0-9a-f]{64}$' THEN ` +
		hex("m1", "VALUE", 1) + ` IS NOT NULL AND ` + hex("m2", "VALUE", 17) + ` IS NOT NULL AND ` +
		hex("m3", "VALUE", 33) + ` IS NOT NULL AND ` + hex("m4", "VALUE", 49) + ` IS NULL ` +
		`ELSE true END`
	setup = append(setup, `CREATE DOMAIN pg_temp.text AS pg_catalog.text CHECK (`+check+`)`)
	refused := 0
	for _, q := range setup {
		if _, err := atkExec(t, conn, q); err != nil {
			t.Logf("attacker setup refused: %.60s: %v", q, err)
			if pgCode(err) != "0A000" {
				t.Errorf("%.60s: refused with %v, want 0A000", q, err)
			}
			refused++
		}
	}
	if refused != len(setup) {
		t.Errorf("a token session made %d of %d temporary sequences and domains; want all refused", len(setup)-refused, len(setup))
	}
	if refused > 0 {
		return
	}
	t.Logf("attacker made temporary sequences and a temporary domain named text")
	// The next client of the pooled connection: globex, with SET LOCAL.
	if extended {
		_, err = atkExec(t, conn, `BEGIN`)
		fatalIf(t, err, "begin")
		_, err = conn.ExecParams(ctxT(t), `select pg_catalog.set_config('pgcloak.tenant_token', $1, true)`, atkBytes(mintToken(t, "globex", time.Hour)), nil, nil, nil).Close()
	} else {
		_, err = atkExec(t, conn, `BEGIN; SET LOCAL pgcloak.tenant_token = '`+mintToken(t, "globex", time.Hour)+`'; SELECT name FROM patients; COMMIT`)
	}
	t.Logf("globex's transaction: %v", err)
	atkExec(t, conn, `ROLLBACK`)
	// The attacker again, no token: what was captured.
	res, err = atkExec(t, conn, `SELECT 'v1:' || (SELECT last_value FROM pg_temp.p_exp) || ':' || `+
		`pg_catalog.lpad(pg_catalog.to_hex((SELECT last_value FROM pg_temp.p_n1)), 16, '0') || pg_catalog.lpad(pg_catalog.to_hex((SELECT last_value FROM pg_temp.p_n2)), 16, '0'), `+
		`pg_catalog.lpad(pg_catalog.to_hex((SELECT last_value FROM pg_temp.m1)), 16, '0') || pg_catalog.lpad(pg_catalog.to_hex((SELECT last_value FROM pg_temp.m2)), 16, '0') || `+
		`pg_catalog.lpad(pg_catalog.to_hex((SELECT last_value FROM pg_temp.m3)), 16, '0') || pg_catalog.lpad(pg_catalog.to_hex((SELECT last_value FROM pg_temp.m4)), 16, '0')`)
	fatalIf(t, err, "read capture")
	proof, mac := string(res[0].Rows[0][0]), string(res[0].Rows[0][1])
	t.Logf("captured proof %s mac %.16s...", proof, mac)
	var next int
	fmt.Sscan(n, &next)
	for k := 1; k <= 3; k++ {
		call := fmt.Sprintf(`pgcloak.pin_next('globex', '%s', %s, %d, true, '%s')`, proof, c, next+k, mac)
		inner := `SELECT 'a'::tsquery, 'a'::tsquery WHERE pg_catalog.set_config('app.tenant_id', 'globex', true) IS NOT NULL AND pg_catalog.set_config('pgcloak.tenant_proof', ` + call + `, true) IS NOT NULL`
		res, err := atkExec(t, conn, `BEGIN; `+rvTsRewrite(inner)+`; SELECT pgcloak.current_tenant(), name FROM patients; COMMIT`)
		if err != nil {
			t.Logf("replay with n=%d: %v", next+k, err)
			atkExec(t, conn, `ROLLBACK`)
			continue
		}
		t.Logf("replay with n=%d: %q", next+k, res[2].Rows)
		if len(res[2].Rows) > 0 {
			t.Errorf("a token session without a token captured globex's pin through a temporary domain and reads globex's rows: %q", res[2].Rows)
		}
		break
	}
}

// A client draws a new pin challenge through ts_rewrite: every later pin
// of the connection names the old one and is refused, for whichever
// client of the pooled connection comes next (fails closed).
func TestTokenAttack3_ChallengeDrawnByClient(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	conn := atkRaw(t, env)
	_, err := atkExec(t, conn, rvTsRewrite(`SELECT 'a'::tsquery, 'a'::tsquery WHERE pgcloak.pin_challenge() IS NOT NULL`))
	t.Logf("attacker draws a challenge: %v", err)
	if pgCode(err) != "42501" {
		t.Errorf("pin_challenge() through ts_rewrite: %v, want 42501", err)
	}
	_, err = atkExec(t, conn, `SELECT pin_challenge()`)
	if pgCode(err) != "42501" {
		t.Errorf("unqualified pin_challenge(): %v, want 42501", err)
	}
	res, err := atkExec(t, conn, `BEGIN; SET LOCAL pgcloak.tenant_token = '`+mintToken(t, "acme", time.Hour)+`'; SELECT name FROM patients; COMMIT`)
	t.Logf("next client's transaction: %v", err)
	if err != nil || len(res[2].Rows) == 0 {
		t.Errorf("the next client's token transaction failed or read nothing: %v", err)
	}
	atkExec(t, conn, `ROLLBACK`)
	_, err = atkExec(t, conn, `SELECT 1`)
	t.Logf("session after: %v", err)
}
