package proxy

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgcloak/pgcloak/config"
)

// A second round of adversarial tests of signed tenant tokens (SPEC §5.2,
// §5.3), after token_attack_test.go's. Each tries to make a statement run
// with one tenant's keys while pgcloak.current_tenant() is another, to get
// another tenant's rows, to replay or forge a pin, to get a token into
// PostgreSQL or a log, or to hang or desynchronise a session.

// a2EveSSN is the SSN Eve writes in these tests.
const a2EveSSN = "555-55-5555"

// a2Super runs sql as the superuser in env's database.
func a2Super(t *testing.T, env *encryptedEnv, sql string) {
	t.Helper()
	_, err := env.pool.Exec(ctxT(t), sql)
	fatalIf(t, err, "superuser: %.60s", sql)
}

// a2Set presents tok as a session-level token.
func a2Set(t *testing.T, conn *pgconn.PgConn, tok string) {
	t.Helper()
	_, err := atkExec(t, conn, `SET pgcloak.tenant_token = '`+tok+`'`)
	fatalIf(t, err, "SET token")
}

// a2Until reads messages until one satisfies stop, with a deadline, and
// returns what it read as atkRound does.
func a2Until(t *testing.T, conn *pgconn.PgConn, d time.Duration, stop func(pgproto3.BackendMessage) bool) ([]string, error) {
	t.Helper()
	fe := conn.Frontend()
	conn.Conn().SetReadDeadline(time.Now().Add(d))
	defer conn.Conn().SetReadDeadline(time.Time{})
	var out []string
	for {
		msg, err := fe.Receive()
		if err != nil {
			return out, err
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			vals := make([]string, len(m.Values))
			for i, v := range m.Values {
				vals[i] = string(v)
			}
			out = append(out, "D:"+strings.Join(vals, "|"))
		case *pgproto3.ErrorResponse:
			out = append(out, "E:"+m.Code+" "+m.Message)
		case *pgproto3.CommandComplete:
			out = append(out, "C:"+string(m.CommandTag))
		case *pgproto3.CopyInResponse:
			out = append(out, "G")
		case *pgproto3.ReadyForQuery:
			out = append(out, "Z:"+string(m.TxStatus))
		case *pgproto3.RowDescription:
			out = append(out, "T")
		}
		if stop(msg) {
			return out, nil
		}
	}
}

func isRFQ(m pgproto3.BackendMessage) bool { _, ok := m.(*pgproto3.ReadyForQuery); return ok }

// a2Tenant returns what pgcloak.current_tenant() says in conn, "<null>"
// for NULL.
func a2Tenant(t *testing.T, conn *pgconn.PgConn) string {
	t.Helper()
	res, err := atkExec(t, conn, `select coalesce(pgcloak.current_tenant(), '<null>')`)
	fatalIf(t, err, "current_tenant")
	return string(res[0].Rows[0][0])
}

// a2TimedExec runs sql with a deadline; a timeout means the session hung.
func a2TimedExec(t *testing.T, conn *pgconn.PgConn, sql string, d time.Duration) ([]*pgconn.Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return conn.Exec(ctx, sql).ReadAll()
}

// 1. A token portal closed with Close 'P' and its name taken by a cursor
// (DECLARE p): the proxy still holds the token's pin under the name, so
// the cursor's Execute switches the client goroutine to the token's tenant
// although PostgreSQL never ran the pin. The INSERT pipelined behind it is
// sealed with acme's keys and stored by PostgreSQL as globex's row.
func TestTokenAttack2_CursorTakesTokenPortal(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	conn := atkRaw(t, env)
	a2Set(t, conn, mintToken(t, "globex", time.Hour))
	out, err := atkRound(t, conn,
		&pgproto3.Parse{Name: "tok", Query: atkSetConfig},
		&pgproto3.Bind{PreparedStatement: "tok", DestinationPortal: "p", Parameters: atkBytes(mintToken(t, "acme", time.Hour))},
		&pgproto3.Close{ObjectType: 'P', Name: "p"},
		&pgproto3.Parse{Query: `BEGIN`}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: `DECLARE p CURSOR FOR SELECT 'not a pin'::text`}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Execute{Portal: "p"},
		&pgproto3.Parse{Query: atkInsert}, &pgproto3.Bind{Parameters: atkBytes("Eve", a2EveSSN)}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: `COMMIT`}, &pgproto3.Bind{}, &pgproto3.Execute{},
	)
	t.Logf("round: %v (err %v)", out, err)
	var owner string
	if err := env.pool.QueryRow(ctxT(t), `select tenant_id from patients where name = 'Eve'`).Scan(&owner); err == nil {
		t.Logf("Eve's row is stored as tenant %s's", owner)
	}
	atkCheckStored(t, env)
}

// 1b. The same with a RESET portal, whose answer the cursor can imitate
// (one empty value): the session survives, the proxy believes there is no
// tenant, and PostgreSQL still has globex's pin.
func TestTokenAttack2_CursorImitatesReset(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	conn := atkRaw(t, env)
	a2Set(t, conn, mintToken(t, "globex", time.Hour))
	out, err := atkRound(t, conn,
		&pgproto3.Parse{Name: "rst", Query: `RESET pgcloak.tenant_token`},
		&pgproto3.Bind{PreparedStatement: "rst", DestinationPortal: "p"},
		&pgproto3.Close{ObjectType: 'P', Name: "p"},
		&pgproto3.Parse{Query: `BEGIN`}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: `DECLARE p CURSOR FOR SELECT ''::text`}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Execute{Portal: "p"},
		&pgproto3.Parse{Query: `COMMIT`}, &pgproto3.Bind{}, &pgproto3.Execute{},
	)
	t.Logf("round: %v (err %v)", out, err)
	if err != nil {
		return // refused: held
	}
	res, err := atkExec(t, conn, `select pgcloak.current_tenant(), name from patients`)
	fatalIf(t, err, "select")
	t.Logf("after the imitated RESET: %q", res[0].Rows)
	if len(res[0].Rows) > 0 {
		t.Errorf("the proxy answered RESET and takes the session for one without a tenant, but PostgreSQL still pins %s: the session reads its rows", res[0].Rows[0][0])
	}
	atkCheckStored(t, env)
}

// 2. The marker is SHA-256(tenant || '|' || proof): a session pinned as
// tenant "acme|x" that can change its own settings (a function the
// application may call; the pin is meant to hold against any SQL) sets
// the tenant to "acme" and the proof to "x|" || proof, which hashes to the
// same marker: current_tenant() says acme.
func TestTokenAttack2_MarkerCollision(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	a2Super(t, env, `create function public.app_set(name text, value text) returns text
		language sql as $$ select pg_catalog.set_config(name, value, false) $$;
		create function public.app_shift() returns text language plpgsql as $$
		declare t text := current_setting('app.tenant_id', true);
		        p text := current_setting('pgcloak.tenant_proof', true);
		        i int := strpos(t, '|');
		begin
		  perform public.app_set('app.tenant_id', left(t, i - 1));
		  perform public.app_set('pgcloak.tenant_proof', substr(t, i + 1) || '|' || p);
		  return pgcloak.current_tenant();
		end $$;
		grant execute on function public.app_shift() to `+poolRole)
	conn := atkRaw(t, env)
	a2Set(t, conn, mintToken(t, "acme|x", time.Hour))
	mustEqual(t, "tenant before", a2Tenant(t, conn), "acme|x")
	res, err := atkExec(t, conn, `select public.app_shift()`)
	fatalIf(t, err, "shift")
	t.Logf("current_tenant() after the shift: %s", res[0].Rows[0][0])
	res, err = atkExec(t, conn, `select tenant_id, name from patients`)
	fatalIf(t, err, "select")
	if len(res[0].Rows) > 0 {
		t.Errorf("a session pinned as tenant \"acme|x\" reads another tenant's rows: %q", res[0].Rows)
	}
}

// a2Leak closes conn and reports whether its upstream backend outlives it.
func a2Leak(t *testing.T, env *encryptedEnv, conn *pgconn.PgConn, pid uint32) {
	t.Helper()
	conn.Conn().Close()
	time.Sleep(3 * time.Second)
	var n int
	env.pool.QueryRow(ctxT(t), `select count(*) from pg_stat_activity where pid = $1`, pid).Scan(&n)
	if n > 0 {
		t.Errorf("the client disconnected 3 s ago; its upstream backend %d is still there", pid)
	}
}

// 5. CALL of a procedure that commits: the transaction of a token
// statement ends inside CALL, with no COMMIT tag.
func TestTokenAttack2_CallCommits(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	a2Super(t, env, `create procedure public.commit_now() language plpgsql as $$ begin commit; end $$;
		grant execute on procedure public.commit_now() to `+poolRole)
	acme, globex := mintToken(t, "acme", time.Hour), mintToken(t, "globex", time.Hour)
	const localSetConfig = `select pg_catalog.set_config('pgcloak.tenant_token', $1, true)`
	for i, tc := range []struct {
		name  string
		start string // session token before, "" for none
		msgs  []pgproto3.FrontendMessage
	}{
		{"local token, CALL commits, insert", "globex", []pgproto3.FrontendMessage{
			&pgproto3.Parse{Query: localSetConfig}, &pgproto3.Bind{Parameters: atkBytes(acme)}, &pgproto3.Execute{},
			&pgproto3.Parse{Query: `CALL public.commit_now()`}, &pgproto3.Bind{}, &pgproto3.Execute{},
			&pgproto3.Parse{Query: atkInsert}, &pgproto3.Bind{Parameters: atkBytes("Eve1", a2EveSSN)}, &pgproto3.Execute{},
		}},
		{"session token, CALL commits, error", "globex", []pgproto3.FrontendMessage{
			&pgproto3.Parse{Query: atkSetConfig}, &pgproto3.Bind{Parameters: atkBytes(acme)}, &pgproto3.Execute{},
			&pgproto3.Parse{Query: `CALL public.commit_now()`}, &pgproto3.Bind{}, &pgproto3.Execute{},
			&pgproto3.Parse{Query: `select 1/0`}, &pgproto3.Bind{}, &pgproto3.Execute{},
		}},
		{"session token, CALL commits, error, no tenant before", "", []pgproto3.FrontendMessage{
			&pgproto3.Parse{Query: atkSetConfig}, &pgproto3.Bind{Parameters: atkBytes(acme)}, &pgproto3.Execute{},
			&pgproto3.Parse{Query: `CALL public.commit_now()`}, &pgproto3.Bind{}, &pgproto3.Execute{},
			&pgproto3.Parse{Query: `select 1/0`}, &pgproto3.Bind{}, &pgproto3.Execute{},
		}},
	} {
		conn := atkRaw(t, env)
		if tc.start != "" {
			a2Set(t, conn, globex)
		}
		out, err := atkRound(t, conn, tc.msgs...)
		t.Logf("%s: %v (err %v)", tc.name, out, err)
		// What the proxy believes against what PostgreSQL pins: a write
		// and a read of the declared column.
		pgTenant := a2Tenant(t, conn)
		_, werr := conn.ExecParams(ctxT(t), atkInsert, atkBytes(fmt.Sprintf("Eve-%d", i), a2EveSSN), nil, nil, nil).Close()
		res, rerr := atkExec(t, conn, `select name from patients`)
		var seen [][][]byte
		if rerr == nil {
			seen = res[0].Rows
		}
		t.Logf("  then: current_tenant %s; insert %v; names %q (%v)", pgTenant, werr, seen, rerr)
		if pgTenant != "<null>" && werr != nil && pgCode(werr) == "42501" && len(seen) > 0 {
			t.Errorf("%s: the proxy refuses declared columns as if the session had no tenant, but PostgreSQL pins %s and shows its rows %q", tc.name, pgTenant, seen)
		}
		conn.Close(ctxT(t))
	}
	atkCheckStored(t, env)
}

// 6. PREPARE TRANSACTION in a transaction that set a session token: the
// shared test server runs with max_prepared_transactions = 0, so PREPARE
// TRANSACTION fails there and the transaction is rolled back; the test
// checks that path and that the tenant is consistent after it.
func TestTokenAttack2_PrepareTransaction(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	conn := atkRaw(t, env)
	a2Set(t, conn, mintToken(t, "globex", time.Hour))
	res, err := atkExec(t, conn, `BEGIN; SET pgcloak.tenant_token = '`+mintToken(t, "acme", time.Hour)+`'; PREPARE TRANSACTION 'a2'`)
	t.Logf("PREPARE TRANSACTION: %d results, %v", len(res), err)
	atkExec(t, conn, `ROLLBACK`)
	atkExec(t, conn, `ROLLBACK PREPARED 'a2'`)
	pgTenant := a2Tenant(t, conn)
	_, werr := conn.ExecParams(ctxT(t), atkInsert, atkBytes("Eve", a2EveSSN), nil, nil, nil).Close()
	t.Logf("after: current_tenant %s, insert %v", pgTenant, werr)
	atkCheckStored(t, env)
}

// 7. RESET ALL and DISCARD ALL through the extended protocol, with writes
// pipelined behind them in the same round and in the next.
func TestTokenAttack2_ResetDiscardExtended(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	for i, stmt := range []string{`RESET ALL`, `DISCARD ALL`, `DISCARD SEQUENCES`, `RESET app.tenant_id`} {
		conn := atkRaw(t, env)
		a2Set(t, conn, mintToken(t, "globex", time.Hour))
		out, err := atkRound(t, conn,
			&pgproto3.Parse{Query: stmt}, &pgproto3.Bind{}, &pgproto3.Execute{},
			&pgproto3.Parse{Query: atkInsert}, &pgproto3.Bind{Parameters: atkBytes(fmt.Sprintf("Eve-%d-a", i), a2EveSSN)}, &pgproto3.Execute{})
		t.Logf("%s + insert: %v (err %v)", stmt, out, err)
		pgTenant := a2Tenant(t, conn)
		_, werr := conn.ExecParams(ctxT(t), atkInsert, atkBytes(fmt.Sprintf("Eve-%d-b", i), a2EveSSN), nil, nil, nil).Close()
		t.Logf("  next round: current_tenant %s, insert %v", pgTenant, werr)
		conn.Close(ctxT(t))
	}
	atkCheckStored(t, env)
}

// 8. A mode-jwt session keeps its login tenant across DISCARD ALL and
// RESET ALL, as SPEC §5.3 promises ("RESET ALL/DISCARD ALL keep the
// tenant"); pgbouncer sends DISCARD ALL between its clients.
func TestTokenAttack2_JWTDiscardAll(t *testing.T) {
	env := a2JWTEnv(t)
	ctx := ctxT(t)
	for _, stmt := range []string{`DISCARD ALL`, `RESET ALL`} {
		conn, err := pgconn.Connect(ctx, env.proxy.url("alice", mintToken(t, "acme", time.Hour), env.db))
		fatalIf(t, err, "jwt login")
		_, err = atkExec(t, conn, stmt)
		fatalIf(t, err, "%s", stmt)
		got := a2Tenant(t, conn)
		_, werr := conn.ExecParams(ctx, atkInsert, atkBytes("Ann", "123-45-6789"), nil, nil, nil).Close()
		if got != "acme" || werr != nil {
			t.Errorf("mode jwt, acme's login, after %s: current_tenant %s, insert %v; want acme's tenant kept", stmt, got, werr)
		}
		conn.Close(ctx)
	}
}

func a2JWTEnv(t *testing.T) *encryptedEnv {
	t.Helper()
	return startTokenEnv(t, func(c *Config) {
		c.Tenancy.TokenRoles = nil
		c.Tenancy.Mode = config.ModeJWT
		c.Tenancy.JWT.UpstreamUser = poolRole
		c.Tenancy.JWT.UpstreamPassword = rolePassword
	})
}

// 9. Mode jwt: no login without a valid token (none, empty, expired, of
// another key, a token of the right key with no tenant), and no session
// as upstream.user or with the token as a startup parameter that reaches
// PostgreSQL.
func TestTokenAttack2_JWTLogin(t *testing.T) {
	env := a2JWTEnv(t)
	ctx := ctxT(t)
	for name, pw := range map[string]string{
		"empty":         "",
		"expired":       mintToken(t, "acme", -time.Hour),
		"garbage":       "a.b.c",
		"no tenant":     mintToken(t, "", time.Hour),
		"alg none":      "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJ0ZW5hbnRfaWQiOiJhY21lIiwiZXhwIjo0MTAyNDQ0ODAwfQ.",
		"truncated sig": mintToken(t, "acme", time.Hour)[:60],
	} {
		c, err := pgconn.Connect(ctx, env.proxy.url("alice", pw, env.db))
		if err == nil {
			c.Close(ctx)
			t.Errorf("mode jwt accepted a login with password %s", name)
		}
	}
	// Whatever user name is asked for, the session runs as jwt.upstream_user.
	for _, user := range []string{"postgres", testenvSuperuser(env), poolRole + `"; drop table patients; --`} {
		c, err := pgconn.Connect(ctx, env.proxy.url(user, mintToken(t, "acme", time.Hour), env.db))
		if err != nil {
			t.Logf("user %q: %v", user, err)
			continue
		}
		res, err := atkExec(t, c, `select current_user::text, session_user::text`)
		if err == nil && (string(res[0].Rows[0][0]) != poolRole || string(res[0].Rows[0][1]) != poolRole) {
			t.Errorf("mode jwt login as %q runs as %s/%s", user, res[0].Rows[0][0], res[0].Rows[0][1])
		}
		c.Close(ctx)
	}
	// Startup options that would change the role.
	for _, opt := range []string{"options=-c%20role%3Dpostgres", "options=-c%20session_authorization%3Dpostgres", "role=postgres"} {
		c, err := pgconn.Connect(ctx, env.proxy.url("alice", mintToken(t, "acme", time.Hour), env.db, opt))
		if err != nil {
			t.Logf("%s: %v", opt, err)
			continue
		}
		res, err := atkExec(t, c, `select current_user::text`)
		if err == nil && string(res[0].Rows[0][0]) != poolRole {
			t.Errorf("mode jwt with %s runs as %s", opt, res[0].Rows[0][0])
		}
		c.Close(ctx)
	}
}

func testenvSuperuser(env *encryptedEnv) string {
	var u string
	env.pool.QueryRow(context.Background(), `select current_user::text`).Scan(&u)
	return u
}

// 10. The token as a startup parameter, in mode jwt and mode login: it
// must not reach PostgreSQL (a superuser's function reads the setting).
func TestTokenAttack2_TokenStartupParameter(t *testing.T) {
	for _, mode := range []string{"login", "jwt"} {
		t.Run(mode, func(t *testing.T) {
			var env *encryptedEnv
			user := poolRole
			if mode == "jwt" {
				env = a2JWTEnv(t)
				user = "alice"
			} else {
				env = startTokenEnv(t)
			}
			a2Super(t, env, `create function public.peek_token() returns text language sql
				as $$ select coalesce(current_setting('pgcloak.tenant_token', true), '<unset>') $$;
				grant execute on function public.peek_token() to `+poolRole)
			ctx := ctxT(t)
			tok := mintToken(t, "acme", time.Hour)
			pw := rolePassword
			if mode == "jwt" {
				pw = tok
			}
			for _, p := range []string{"pgcloak.tenant_token=" + tok, "options=-c%20pgcloak.tenant_token%3D" + tok} {
				c, err := pgconn.Connect(ctx, env.proxy.url(user, pw, env.db, p))
				if err != nil {
					t.Logf("%.40s: refused: %v", p, err)
					continue
				}
				res, err := atkExec(t, c, `select public.peek_token()`)
				if err != nil {
					t.Logf("%.40s: peek: %v", p, err)
				} else if strings.Contains(string(res[0].Rows[0][0]), tok[:30]) {
					t.Errorf("mode %s: the token as startup parameter %.30s... reached PostgreSQL's pgcloak.tenant_token", mode, p)
				}
				c.Close(ctx)
			}
		})
	}
}

// 11. Token expiry during a session: a token that expires in 2 s gives
// its tenant until then and nothing after, neither in PostgreSQL nor in
// the proxy's keys.
func TestTokenAttack2_ExpiryDuringSession(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	conn := atkRaw(t, env)
	a2Set(t, conn, mintToken(t, "acme", 2*time.Second))
	mustEqual(t, "tenant while valid", a2Tenant(t, conn), "acme")
	_, err := atkExec(t, conn, `BEGIN`)
	fatalIf(t, err, "begin")
	time.Sleep(3 * time.Second)
	// Inside the same transaction (statement_timestamp moves on) and after it.
	for _, q := range []string{`select name, ssn from patients`, `COMMIT`, `select name, ssn from patients`} {
		res, err := atkExec(t, conn, q)
		if err == nil && len(res[0].Rows) > 0 {
			t.Errorf("after the token expired, %s returns %q", q, res[0].Rows)
		}
	}
	mustEqual(t, "tenant after expiry", a2Tenant(t, conn), "<null>")
	_, err = conn.ExecParams(ctxT(t), atkInsert, atkBytes("Eve", a2EveSSN), nil, nil, nil).Close()
	t.Logf("insert after expiry: %v", err)
	if err == nil {
		t.Error("an insert after the token expired succeeded")
	}
	// A mode-jwt login whose token expires.
	jenv := a2JWTEnv(t)
	jc, err := pgconn.Connect(ctxT(t), jenv.proxy.url("alice", mintToken(t, "acme", 2*time.Second), jenv.db))
	fatalIf(t, err, "jwt login")
	defer jc.Close(ctxT(t))
	time.Sleep(3 * time.Second)
	mustEqual(t, "jwt tenant after expiry", a2Tenant(t, jc), "<null>")
	atkCheckStored(t, env)
}

// 12. Tenant names with quotes, colons, a pipe, backslashes, newlines,
// Unicode and 256 bytes: each pins exactly itself, in the simple and the
// extended protocol, and each reads only its own row.
func TestTokenAttack2_OddTenants(t *testing.T) {
	env := startTokenEnv(t)
	ctx := ctxT(t)
	tenants := []string{`it's`, `a:b:c`, `v1:0:0`, `a|b`, `a`, `back\slash\'`, "new\nline", "ünï✓code", `"quoted"`, `$1`, strings.Repeat("x", 256)}
	for i, tenant := range tenants {
		for j, form := range []string{"simple", "extended"} {
			conn := atkRaw(t, env)
			tok := mintToken(t, tenant, time.Hour)
			if form == "simple" {
				a2Set(t, conn, tok)
			} else {
				_, err := conn.ExecParams(ctx, atkSetConfig, atkBytes(tok), nil, nil, nil).Close()
				fatalIf(t, err, "set_config %q", tenant)
			}
			if got := a2Tenant(t, conn); got != tenant {
				t.Errorf("%s token of tenant %q: current_tenant %q", form, tenant, got)
			}
			ssn := fmt.Sprintf("%03d-00-000%d", i, j)
			_, err := conn.ExecParams(ctx, atkInsert, atkBytes(fmt.Sprintf("t%d-%d", i, j), ssn), nil, nil, nil).Close()
			fatalIf(t, err, "insert as %q", tenant)
			res, err := atkExec(t, conn, `select name from patients`)
			fatalIf(t, err, "select as %q", tenant)
			for _, r := range res[0].Rows {
				if !strings.HasPrefix(string(r[0]), fmt.Sprintf("t%d-", i)) {
					t.Errorf("tenant %q reads row %s", tenant, r[0])
				}
			}
			conn.Close(ctx)
		}
	}
	atkCheckStored(t, env)
}

// 13. The token never reaches PostgreSQL's log: with log_statement = all
// for the database, every form of token statement, a refused token, a
// token in a failed transaction, and a mode-jwt login.
func TestTokenAttack2_TokenInPostgresLog(t *testing.T) {
	env := startTokenEnv(t)
	ctx := ctxT(t)
	a2Super(t, env, `alter database "`+env.db+`" set log_statement = 'all'`)
	a2Super(t, env, `alter database "`+env.db+`" set log_min_error_statement = 'debug5'`)
	a2Super(t, env, `alter database "`+env.db+`" set log_min_messages = 'debug1'`)
	var toks []string
	tok := func(tenant string) string { s := mintToken(t, tenant, time.Hour); toks = append(toks, s); return s }
	conn := atkRaw(t, env)
	res, err := atkExec(t, conn, `show log_statement`)
	fatalIf(t, err, "show")
	mustEqual(t, "log_statement", string(res[0].Rows[0][0]), "all")
	for _, q := range []string{
		`SET pgcloak.tenant_token = '` + tok("acme") + `'`,
		`BEGIN; SET LOCAL pgcloak.tenant_token = '` + tok("globex") + `'; SELECT 1/0`,
		`ROLLBACK`,
		`SELECT pg_catalog.set_config('pgcloak.tenant_token', '` + tok("acme") + `', false)`,
		`SET pgcloak.tenant_token = '` + tok("acme")[:40] + `'`,
		`SET pgcloak.tenant_token = '` + tok("acme") + `'; SELEC 1`,
		`SET pgcloak.tenant_token = '` + tok("acme") + `' || 'x'`,
		`SELECT current_setting('pgcloak.tenant_token'), '` + tok("acme") + `'`,
		`SET pgcloak.tenant_token = '` + tok("acme") + `'; SET app.tenant_id = 'x'`,
	} {
		_, err := atkExec(t, conn, q)
		t.Logf("%.50s: %v", q, err)
	}
	_, err = conn.ExecParams(ctx, atkSetConfig, atkBytes(tok("globex")), nil, nil, nil).Close()
	t.Logf("extended: %v", err)
	_, err = conn.ExecParams(ctx, atkSetConfig, atkBytes(tok("globex")[:50]), nil, nil, nil).Close()
	t.Logf("extended, bad: %v", err)
	out, err := atkRound(t, conn,
		&pgproto3.Parse{Name: "tk", Query: `SET pgcloak.tenant_token = '` + tok("acme") + `'`},
		&pgproto3.Describe{ObjectType: 'S', Name: "tk"},
		&pgproto3.Bind{PreparedStatement: "tk"}, &pgproto3.Execute{})
	t.Logf("named SET: %v %v", out, err)
	conn.Close(ctx)
	time.Sleep(500 * time.Millisecond)
	logText, err := os.ReadFile(env.pg.LogFile)
	fatalIf(t, err, "read the server log")
	if !strings.Contains(string(logText), "pgcloak.pin_next") {
		t.Logf("the log does not show the pin statements; log_statement may not apply")
	}
	for i, tk := range toks {
		// A truncated token is still the token's secret part.
		if strings.Contains(string(logText), tk[:40]) || strings.Contains(env.logs.String(), tk[:40]) || strings.Contains(env.audit.String(), tk[:40]) {
			t.Errorf("token %d reached PostgreSQL's log, the proxy log or the audit", i)
		}
	}
}

// 15. Flush between a token's Execute and what follows: the client reads
// the token's answer before its round ends, then writes.
func TestTokenAttack2_FlushMidRound(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	conn := atkRaw(t, env)
	a2Set(t, conn, mintToken(t, "globex", time.Hour))
	fe := conn.Frontend()
	fe.Send(&pgproto3.Parse{Query: atkSetConfig})
	fe.Send(&pgproto3.Bind{Parameters: atkBytes(mintToken(t, "acme", time.Hour))})
	fe.Send(&pgproto3.Execute{})
	fe.Send(&pgproto3.Flush{})
	fatalIf(t, fe.Flush(), "flush")
	out, err := a2Until(t, conn, 10*time.Second, func(m pgproto3.BackendMessage) bool {
		_, ok := m.(*pgproto3.CommandComplete)
		return ok || isRFQ(m)
	})
	t.Logf("token answer after Flush: %v (err %v)", out, err)
	if err != nil {
		t.Fatalf("no answer to a token's Execute after Flush: %v", err)
	}
	out, err = atkRound(t, conn,
		&pgproto3.Parse{Query: `select pgcloak.current_tenant()`}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: atkInsert}, &pgproto3.Bind{Parameters: atkBytes("Ann2", "123-45-0000")}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: `select 1/0`}, &pgproto3.Bind{}, &pgproto3.Execute{})
	t.Logf("rest of the round: %v (err %v)", out, err)
	_, err = conn.ExecParams(ctxT(t), atkInsert, atkBytes("Ann3", "123-45-0001"), nil, nil, nil).Close()
	t.Logf("next insert: %v (current_tenant %s)", err, a2Tenant(t, conn))
	atkCheckStored(t, env)
}

// 16. Describe-only token portals, a portal rebound under the same name
// with another tenant's token, a token Bind closed before Execute, and a
// token statement executed twice through two portals.
func TestTokenAttack2_PortalGames(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	acme, globex := mintToken(t, "acme", time.Hour), mintToken(t, "globex", time.Hour)
	ins := func(name string) []pgproto3.FrontendMessage {
		return []pgproto3.FrontendMessage{&pgproto3.Parse{Query: atkInsert}, &pgproto3.Bind{Parameters: atkBytes(name, a2EveSSN)}, &pgproto3.Execute{}}
	}
	for i, msgs := range [][]pgproto3.FrontendMessage{
		// Describe only, never executed.
		append([]pgproto3.FrontendMessage{
			&pgproto3.Parse{Name: "tok", Query: atkSetConfig},
			&pgproto3.Bind{PreparedStatement: "tok", DestinationPortal: "p", Parameters: atkBytes(acme)},
			&pgproto3.Describe{ObjectType: 'P', Name: "p"}}, ins("Eve-describe")...),
		// Rebound with globex's token, then executed.
		append([]pgproto3.FrontendMessage{
			&pgproto3.Parse{Name: "tok", Query: atkSetConfig},
			&pgproto3.Bind{PreparedStatement: "tok", DestinationPortal: "p", Parameters: atkBytes(acme)},
			&pgproto3.Close{ObjectType: 'P', Name: "p"},
			&pgproto3.Bind{PreparedStatement: "tok", DestinationPortal: "p", Parameters: atkBytes(globex)},
			&pgproto3.Execute{Portal: "p"}}, ins("Eve-rebound")...),
		// Bound to the unnamed portal, which a later Bind replaces.
		append([]pgproto3.FrontendMessage{
			&pgproto3.Parse{Name: "tok", Query: atkSetConfig},
			&pgproto3.Bind{PreparedStatement: "tok", Parameters: atkBytes(acme)},
			&pgproto3.Parse{Name: "s1", Query: `select 1`},
			&pgproto3.Bind{PreparedStatement: "s1"},
			&pgproto3.Execute{}}, ins("Eve-unnamed")...),
		// Closed before Execute.
		append([]pgproto3.FrontendMessage{
			&pgproto3.Parse{Name: "tok", Query: atkSetConfig},
			&pgproto3.Bind{PreparedStatement: "tok", DestinationPortal: "p", Parameters: atkBytes(acme)},
			&pgproto3.Close{ObjectType: 'P', Name: "p"},
			&pgproto3.Execute{Portal: "p"}}, ins("Eve-closed")...),
		// Two portals of one statement, executed in reverse order.
		append([]pgproto3.FrontendMessage{
			&pgproto3.Parse{Name: "tok", Query: atkSetConfig},
			&pgproto3.Bind{PreparedStatement: "tok", DestinationPortal: "pa", Parameters: atkBytes(acme)},
			&pgproto3.Bind{PreparedStatement: "tok", DestinationPortal: "pg", Parameters: atkBytes(globex)},
			&pgproto3.Execute{Portal: "pg"},
			&pgproto3.Execute{Portal: "pa"}}, ins("Eve-twoportals")...),
	} {
		conn := atkRaw(t, env)
		a2Set(t, conn, globex)
		out, err := atkRound(t, conn, msgs...)
		t.Logf("case %d: %v (err %v)", i, out, err)
		if err == nil || !strings.Contains(err.Error(), "receive") {
			_, werr := conn.ExecParams(ctxT(t), atkInsert, atkBytes(fmt.Sprintf("Eve-next-%d", i), a2EveSSN), nil, nil, nil).Close()
			t.Logf("  next: current_tenant %s, insert %v", a2Tenant(t, conn), werr)
		}
		conn.Close(ctxT(t))
	}
	atkCheckStored(t, env)
}

// 17. A token Bind followed by a Query message in the same round (a Query
// ends the unnamed portal and commits) and an Execute after it.
func TestTokenAttack2_QueryInsideRound(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	conn := atkRaw(t, env)
	a2Set(t, conn, mintToken(t, "globex", time.Hour))
	fe := conn.Frontend()
	fe.Send(&pgproto3.Parse{Name: "tok", Query: atkSetConfig})
	fe.Send(&pgproto3.Bind{PreparedStatement: "tok", Parameters: atkBytes(mintToken(t, "acme", time.Hour))})
	fe.Send(&pgproto3.Query{String: `select 1`})
	fe.Send(&pgproto3.Execute{})
	fe.Send(&pgproto3.Parse{Query: atkInsert})
	fe.Send(&pgproto3.Bind{Parameters: atkBytes("Eve", a2EveSSN)})
	fe.Send(&pgproto3.Execute{})
	fe.Send(&pgproto3.Sync{})
	fatalIf(t, fe.Flush(), "flush")
	// Since review 13 the Query inside the unsynced round ends the
	// session (08P01) before anything of the round after it runs.
	out, err := a2Until(t, conn, 10*time.Second, isRFQ)
	t.Logf("answer: %v (err %v)", out, err)
	if !strings.Contains(fmt.Sprint(out), "08P01") {
		t.Errorf("a Query inside a token round: %v %v, want the session ended with 08P01", out, err)
	}
	atkCheckStored(t, env)
}

// 18. COPY FROM STDIN into the declared table after a token in the same
// extended round, and with a local token in a transaction.
func TestTokenAttack2_TokenThenCopy(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	conn := atkRaw(t, env)
	a2Set(t, conn, mintToken(t, "globex", time.Hour))
	fe := conn.Frontend()
	fe.Send(&pgproto3.Parse{Query: atkSetConfig})
	fe.Send(&pgproto3.Bind{Parameters: atkBytes(mintToken(t, "acme", time.Hour))})
	fe.Send(&pgproto3.Execute{})
	fe.Send(&pgproto3.Parse{Query: `copy patients (name, ssn) from stdin`})
	fe.Send(&pgproto3.Bind{})
	fe.Send(&pgproto3.Execute{})
	fatalIf(t, fe.Flush(), "flush")
	out, err := a2Until(t, conn, 10*time.Second, func(m pgproto3.BackendMessage) bool {
		_, ok := m.(*pgproto3.CopyInResponse)
		_, e := m.(*pgproto3.ErrorResponse)
		return ok || e || isRFQ(m)
	})
	t.Logf("token + extended COPY: %v (err %v)", out, err)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	if out[len(out)-1] == "G" {
		fe.Send(&pgproto3.CopyData{Data: []byte("Ann-copy\t123-45-9999\n")})
		fe.Send(&pgproto3.CopyDone{})
	}
	fe.Send(&pgproto3.Sync{})
	fatalIf(t, fe.Flush(), "flush")
	out, err = a2Until(t, conn, 10*time.Second, isRFQ)
	t.Logf("end: %v (err %v)", out, err)
	if err != nil {
		t.Fatalf("hang after COPY: %v", err)
	}
	res, err := a2TimedExec(t, conn, `BEGIN; SET LOCAL pgcloak.tenant_token = '`+mintToken(t, "acme", time.Hour)+`'`, 10*time.Second)
	fatalIf(t, err, "local token %v", res)
	ctx, cancel := context.WithTimeout(ctxT(t), 10*time.Second)
	defer cancel()
	tag, err := conn.CopyFrom(ctx, strings.NewReader("Ann-copy2\t123-45-9998\n"), `copy patients (name, ssn) from stdin`)
	t.Logf("COPY in a local token's transaction: %v %v", tag, err)
	_, err = a2TimedExec(t, conn, `COMMIT`, 10*time.Second)
	fatalIf(t, err, "commit")
	atkCheckStored(t, env)
}

// 5b. CALL of a procedure that commits, after two session tokens in one
// implicit transaction, then an error: PostgreSQL keeps the second pin
// (the CALL committed it), the proxy takes the round for rolled back and
// goes back to the tenant before the transaction (acme) without pinning it
// again, because its client goroutine remembers another previous tenant
// (globex, the first token's) than its upstream goroutine does.
func TestTokenAttack2_CallCommitTwoPins(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	a2Super(t, env, `create procedure public.commit_now() language plpgsql as $$ begin commit; end $$;
		grant execute on procedure public.commit_now() to `+poolRole)
	conn := atkRaw(t, env)
	a2Set(t, conn, mintToken(t, "acme", time.Hour))
	globex := mintToken(t, "globex", time.Hour)
	out, err := atkRound(t, conn,
		&pgproto3.Parse{Name: "tok", Query: atkSetConfig},
		&pgproto3.Bind{PreparedStatement: "tok", Parameters: atkBytes(globex)}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "tok", Parameters: atkBytes(globex)}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: `CALL public.commit_now()`}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: `select 1/0`}, &pgproto3.Bind{}, &pgproto3.Execute{})
	t.Logf("round: %.300v (err %v)", out, err)
	pgTenant := a2Tenant(t, conn)
	_, werr := conn.ExecParams(ctxT(t), atkInsert, atkBytes("Eve", a2EveSSN), nil, nil, nil).Close()
	t.Logf("then: current_tenant %s, insert %v", pgTenant, werr)
	r := conn.ExecParams(ctxT(t), `select name, ssn from patients where ssn = $1`, atkBytes("123-45-6789"), nil, nil, nil).Read()
	t.Logf("search for acme's ssn: %q %v", r.Rows, r.Err)
	atkCheckStored(t, env)
}
