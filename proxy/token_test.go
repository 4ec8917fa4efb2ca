package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgcloak/pgcloak/config"
)

const (
	poolRole    = "app_pool"
	tokenSecret = "test-hs256-secret-of-at-least-32-bytes!"
)

// hsVerifier verifies HS256 tokens with golang-jwt, as package tenanttoken
// does for a configured secret (its own tests cover the claims' rules).
type hsVerifier struct{}

// VerifyTokenAtOnce: an HS256 check waits for nothing.
func (v hsVerifier) VerifyTokenAtOnce(raw string) (TokenClaims, error, bool) {
	c, err := v.VerifyToken(context.Background(), raw)
	return c, err, true
}

func (hsVerifier) VerifyToken(_ context.Context, raw string) (TokenClaims, error) {
	var c jwt.RegisteredClaims
	var tenant struct {
		jwt.RegisteredClaims
		Tenant string `json:"tenant_id"`
	}
	_, err := jwt.ParseWithClaims(raw, &tenant, func(*jwt.Token) (any, error) { return []byte(tokenSecret), nil },
		jwt.WithValidMethods([]string{"HS256"}), jwt.WithExpirationRequired())
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return TokenClaims{}, errors.New("tenant token refused: expired")
	case err != nil:
		return TokenClaims{}, errors.New("tenant token refused: bad signature")
	case tenant.Tenant == "":
		return TokenClaims{}, errors.New("tenant token refused: no tenant claim")
	}
	c = tenant.RegisteredClaims
	return TokenClaims{Tenant: tenant.Tenant, Subject: c.Subject, ID: c.ID, Expiry: c.ExpiresAt.Time}, nil
}

func mintToken(t testing.TB, tenant string, ttl time.Duration) string {
	t.Helper()
	now := time.Now()
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"tenant_id": tenant, "sub": "user-of-" + tenant, "jti": fmt.Sprintf("j%d", now.UnixNano()),
		"exp": now.Add(ttl).Unix(), "iat": now.Unix(),
	})
	s, err := tok.SignedString([]byte(tokenSecret))
	fatalIf(t, err, "sign")
	return s
}

// startTokenEnv is the encrypted patients table with app_pool as a token
// role.
func startTokenEnv(t *testing.T, mutate ...func(*Config)) *encryptedEnv {
	t.Helper()
	return startTokenEnvDeps(t, nil, mutate...)
}

// startTokenEnvDeps is startTokenEnv with withDeps applied to its Deps
// (Tokens is hsVerifier) before the proxy starts.
func startTokenEnvDeps(t *testing.T, withDeps func(*Deps), mutate ...func(*Config)) *encryptedEnv {
	t.Helper()
	pg := startEncryptedDeps(t, func(d *Deps) {
		d.Tokens = hsVerifier{}
		if withDeps != nil {
			withDeps(d)
		}
	}, append([]func(*Config){func(c *Config) {
		c.Tenancy.TokenRoles = []string{poolRole}
	}}, mutate...)...)
	ctx := ctxT(t)
	pg.pg.Exec(ctx, "", fmt.Sprintf(`create role %s login password '%s'`, poolRole, rolePassword))
	fatalIf(t, pg.pg.Exec(ctx, pg.db, `grant select, insert, update, delete on patients to `+poolRole+`;
		grant usage on sequence patients_id_seq to `+poolRole), "grant")
	return pg
}

func names(t *testing.T, conn *pgx.Conn, sql string, args ...any) []string {
	t.Helper()
	rows, err := conn.Query(ctxT(t), sql, args...)
	fatalIf(t, err, "query %s", sql)
	var got []string
	for rows.Next() {
		vals, err := rows.Values()
		fatalIf(t, err, "row of %s", sql)
		parts := make([]string, len(vals))
		for i, v := range vals {
			parts[i] = fmt.Sprint(v)
		}
		got = append(got, strings.Join(parts, ":"))
	}
	fatalIf(t, rows.Err(), "rows of %s", sql)
	return got
}

// TestTenantTokensSimple switches one pooled connection between tenants
// with tokens in the simple protocol, and checks that each transaction
// writes and reads its own tenant's rows and plaintext only.
func TestTenantTokensSimple(t *testing.T) {
	env := startTokenEnv(t)
	ctx := ctxT(t)
	acme, globex := mintToken(t, "acme", time.Hour), mintToken(t, "globex", time.Hour)
	conn := env.tenantConn(t, poolRole)

	// No tenant yet: declared columns refused, RLS shows nothing.
	_, err := conn.Exec(ctx, `insert into patients (name, ssn) values ('x', '111-11-1111')`)
	if pgCode(err) != "42501" {
		t.Fatalf("insert without a tenant: %v, want 42501", err)
	}
	if got := names(t, conn, `select ssn from patients`); len(got) != 0 {
		t.Fatalf("select ssn without a tenant: %v, want no rows", got)
	}

	// Each tenant writes in its own transaction, with SET LOCAL.
	for _, c := range []struct{ tok, name, ssn string }{{acme, "Ann", "123-45-6789"}, {globex, "Gus", "987-65-4321"}} {
		tx, err := conn.Begin(ctx)
		fatalIf(t, err, "begin")
		_, err = tx.Exec(ctx, `SET LOCAL pgcloak.tenant_token = '`+c.tok+`'`)
		fatalIf(t, err, "SET LOCAL token")
		_, err = tx.Exec(ctx, `insert into patients (name, ssn) values ('`+c.name+`', '`+c.ssn+`')`)
		fatalIf(t, err, "insert")
		fatalIf(t, tx.Commit(ctx), "commit")
	}
	// After the transaction, no tenant again.
	if got := names(t, conn, `select name from patients`); len(got) != 0 {
		t.Fatalf("after the local token's transaction the session sees %v, want nothing", got)
	}
	// One simple query: BEGIN; SET LOCAL; SELECT; COMMIT.
	res, err := conn.PgConn().Exec(ctx, `BEGIN; SET LOCAL pgcloak.tenant_token = '`+globex+`'; SELECT name, ssn FROM patients WHERE ssn = '987-65-4321'; COMMIT`).ReadAll()
	fatalIf(t, err, "one-query transaction")
	if len(res) != 4 || string(res[1].CommandTag.String()) != "SET" || len(res[2].Rows) != 1 || string(res[2].Rows[0][0])+":"+string(res[2].Rows[0][1]) != "Gus:987-65-4321" {
		t.Fatalf("one-query transaction: %+v", res)
	}
	// A session-level token lasts; acme sees Ann only, searched by SSN.
	_, err = conn.Exec(ctx, `SET pgcloak.tenant_token = '`+acme+`'`)
	fatalIf(t, err, "SET token")
	if got := names(t, conn, `select name, ssn from patients where ssn = '123-45-6789'`); len(got) != 1 || got[0] != "Ann:123-45-6789" {
		t.Fatalf("acme by ssn: %v", got)
	}
	if got := names(t, conn, `select name from patients where ssn = '987-65-4321'`); len(got) != 0 {
		t.Fatalf("acme searching globex's ssn: %v", got)
	}
	// A local token inside the session token's lifetime, then back.
	tx, err := conn.Begin(ctx)
	fatalIf(t, err, "begin")
	_, err = tx.Exec(ctx, `select pg_catalog.set_config('pgcloak.tenant_token', '`+globex+`', true)`)
	fatalIf(t, err, "set_config local")
	if got := names(t, conn, `select name from patients`); len(got) != 1 || got[0] != "Gus" {
		t.Fatalf("local globex inside session acme: %v", got)
	}
	fatalIf(t, tx.Commit(ctx), "commit")
	if got := names(t, conn, `select name, ssn from patients`); len(got) != 1 || got[0] != "Ann:123-45-6789" {
		t.Fatalf("back to session acme: %v", got)
	}
	// RESET: no tenant.
	_, err = conn.Exec(ctx, `RESET pgcloak.tenant_token`)
	fatalIf(t, err, "RESET")
	if got := names(t, conn, `select name from patients`); len(got) != 0 {
		t.Fatalf("after RESET: %v", got)
	}
	// A bad token: 28000, session without a tenant.
	_, err = conn.Exec(ctx, `SET pgcloak.tenant_token = '`+acme+`'`)
	fatalIf(t, err, "SET token")
	_, err = conn.Exec(ctx, `SET pgcloak.tenant_token = '`+acme[:len(acme)-3]+`abc'`)
	if pgCode(err) != "28000" || !strings.Contains(pgMessage(err), "tenant token refused") {
		t.Fatalf("bad token: %v", err)
	}
	if got := names(t, conn, `select name from patients`); len(got) != 0 {
		t.Fatalf("after a refused token: %v", got)
	}
	// An expired token.
	_, err = conn.Exec(ctx, `SET pgcloak.tenant_token = '`+mintToken(t, "acme", -time.Minute)+`'`)
	if pgCode(err) != "28000" || !strings.Contains(pgMessage(err), "expired") {
		t.Fatalf("expired token: %v", err)
	}
	// The stored rows belong to their tenants.
	var stamps []string
	rows, err := env.pool.Query(ctx, `select tenant_id || ':' || name from patients order by name`)
	fatalIf(t, err, "direct")
	stamps, err = pgx.CollectRows(rows, pgx.RowTo[string])
	fatalIf(t, err, "direct rows")
	if strings.Join(stamps, ",") != "acme:Ann,globex:Gus" {
		t.Fatalf("stored tenants: %v", stamps)
	}
	// Tokens never reach the audit or the logs.
	for _, tok := range []string{acme, globex} {
		if strings.Contains(env.audit.String(), tok) || strings.Contains(env.logs.String(), tok) {
			t.Fatal("a token reached the audit or the log")
		}
	}
	if !strings.Contains(env.audit.String(), `"tenant_token_accepted"`) || !strings.Contains(env.audit.String(), `"tenant_token_refused"`) {
		t.Fatalf("audit lacks token events:\n%s", env.audit.String())
	}
}

// TestTenantTokenRefusedForFixedRoles: a login-mapped role may not present
// a token.
func TestTenantTokenRefusedForFixedRoles(t *testing.T) {
	env := startTokenEnv(t)
	conn := env.tenantConn(t, acmeRole)
	_, err := conn.Exec(ctxT(t), `SET pgcloak.tenant_token = '`+mintToken(t, "globex", time.Hour)+`'`)
	if pgCode(err) != "42501" {
		t.Fatalf("token from a login-mapped role: %v, want 42501", err)
	}
}

// TestTenantTokenExtendedLiterals: in the extended protocol, a token
// session's literal for an encrypted column is sealed at Parse under the
// tenant of that moment, so a statement prepared and bound under one
// token works (ActiveRecord without prepared statements sends its values
// so), and a Bind under another tenant than the Parse's is refused
// (0A000), before anything reaches PostgreSQL; parameters work throughout.
func TestTenantTokenExtendedLiterals(t *testing.T) {
	env := startTokenEnv(t)
	ctx := ctxT(t)
	conn := connect(t, env.proxy.url(poolRole, rolePassword, env.db))
	setToken := func(tenant string) {
		t.Helper()
		_, err := conn.Exec(ctx, `SET pgcloak.tenant_token = '`+mintToken(t, tenant, time.Hour)+`'`)
		fatalIf(t, err, "SET token %s", tenant)
	}
	setToken("acme")
	_, err := conn.Exec(ctx, `insert into patients (name, ssn) values ('Ann', $1)`, "123-45-6789")
	fatalIf(t, err, "insert with a parameter")
	// Unnamed statements with literals, parsed and bound under acme.
	_, err = conn.Exec(ctx, `insert into patients (name, ssn) values ('Bob', '555-00-1111')`, pgx.QueryExecModeExec)
	fatalIf(t, err, "insert with a literal (extended protocol)")
	if got := names(t, conn, `select name, ssn from patients where ssn = '555-00-1111'`, pgx.QueryExecModeExec); len(got) != 1 || got[0] != "Bob:555-00-1111" {
		t.Fatalf("search with a literal (extended protocol): %v", got)
	}

	// A named statement with a literal, prepared under acme, bound under
	// globex: refused, and nothing is written.
	pc := conn.PgConn()
	_, err = pc.Prepare(ctx, "lit", `insert into patients (name, ssn) values ('Eve', '999-99-9999')`, nil)
	fatalIf(t, err, "prepare with a literal under acme")
	setToken("globex")
	res := pc.ExecPrepared(ctx, "lit", nil, nil, nil).Read()
	if pgCode(res.Err) != "0A000" {
		t.Fatalf("a statement sealed under acme bound under globex: %v, want 0A000", res.Err)
	}
	var n int
	fatalIf(t, env.pool.QueryRow(ctx, `select count(*) from patients where name = 'Eve'`).Scan(&n), "count")
	mustEqual(t, "rows written by the refused Bind", n, 0)
	// Prepared again under globex, it writes globex's row under globex's key.
	_, err = pc.Exec(ctx, `DEALLOCATE lit`).ReadAll()
	fatalIf(t, err, "deallocate")
	_, err = pc.Prepare(ctx, "lit", `insert into patients (name, ssn) values ('Eve', '999-99-9999')`, nil)
	fatalIf(t, err, "prepare again under globex")
	fatalIf(t, pc.ExecPrepared(ctx, "lit", nil, nil, nil).Read().Err, "bind under globex")
	if got := names(t, conn, `select name, ssn from patients where ssn = $1`, "999-99-9999"); len(got) != 1 || got[0] != "Eve:999-99-9999" {
		t.Fatalf("globex's row: %v", got)
	}
	var tenant string
	fatalIf(t, env.pool.QueryRow(ctx, `select tenant_id from patients where name = 'Eve'`).Scan(&tenant), "stamp")
	mustEqual(t, "Eve's tenant", tenant, "globex")
	setToken("acme")
	if got := names(t, conn, `select name, ssn from patients where ssn = $1`, "999-99-9999"); len(got) != 0 {
		t.Fatalf("acme sees globex's row: %v", got)
	}
}

// TestTenantTokensExtended presents tokens through the extended protocol:
// set_config with a bound token in pgx's five exec modes, a statement
// prepared once and bound with each tenant's token, SET LOCAL with a
// literal through Parse/Bind, and a pipelined batch.
func TestTenantTokensExtended(t *testing.T) {
	env := startTokenEnv(t)
	ctx := ctxT(t)
	tokens := map[string]string{"acme": mintToken(t, "acme", time.Hour), "globex": mintToken(t, "globex", time.Hour)}
	ssn := map[string]string{"acme": "123-45-6789", "globex": "987-65-4321"}
	modes := []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe,
		pgx.QueryExecModeDescribeExec, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol}
	for i, mode := range modes {
		conn := connect(t, env.proxy.url(poolRole, rolePassword, env.db))
		for _, tenant := range []string{"acme", "globex"} {
			tx, err := conn.Begin(ctx)
			fatalIf(t, err, "begin")
			var echoed string
			err = tx.QueryRow(ctx, `select pg_catalog.set_config('pgcloak.tenant_token', $1, true)`, mode, tokens[tenant]).Scan(&echoed)
			fatalIf(t, err, "set_config token (%v)", mode)
			if echoed != tokens[tenant] {
				t.Fatalf("%v: set_config returned something else than the value set", mode)
			}
			_, err = tx.Exec(ctx, `insert into patients (name, ssn) values ($1, $2)`, mode, fmt.Sprintf("%s-%d", tenant, i), ssn[tenant])
			fatalIf(t, err, "insert (%v)", mode)
			var got []string
			rows, err := tx.Query(ctx, `select name, ssn from patients where ssn = $1`, mode, ssn[tenant])
			fatalIf(t, err, "select (%v)", mode)
			for rows.Next() {
				var n, s string
				fatalIf(t, rows.Scan(&n, &s), "scan")
				got = append(got, n+":"+s)
			}
			fatalIf(t, rows.Err(), "rows (%v)", mode)
			if len(got) != i+1 || got[i] != fmt.Sprintf("%s-%d:%s", tenant, i, ssn[tenant]) {
				t.Fatalf("%v: %s sees %v", mode, tenant, got)
			}
			fatalIf(t, tx.Commit(ctx), "commit")
			if got := names(t, conn, `select name from patients`); len(got) != 0 {
				t.Fatalf("%v: after the transaction the session sees %v", mode, got)
			}
		}
		conn.Close(ctx)
	}

	conn := connect(t, env.proxy.url(poolRole, rolePassword, env.db))
	// One prepared statement, bound with each tenant's token in turn.
	_, err := conn.Prepare(ctx, "tok", `select pg_catalog.set_config('pgcloak.tenant_token', $1, false)`)
	fatalIf(t, err, "prepare")
	for _, tenant := range []string{"globex", "acme", "globex"} {
		_, err := conn.Exec(ctx, "tok", tokens[tenant])
		fatalIf(t, err, "exec tok")
		if got := names(t, conn, `select ssn from patients`); !allAre(got, ssn[tenant]) {
			t.Fatalf("prepared token statement for %s: %v", tenant, got)
		}
	}
	// SET LOCAL with a literal, through Parse/Bind/Execute.
	tx, err := conn.Begin(ctx)
	fatalIf(t, err, "begin")
	res := conn.PgConn().ExecParams(ctx, `SET LOCAL pgcloak.tenant_token = '`+tokens["acme"]+`'`, nil, nil, nil, nil).Read()
	fatalIf(t, res.Err, "SET LOCAL through the extended protocol")
	if res.CommandTag.String() != "SET" {
		t.Fatalf("SET LOCAL tag: %q", res.CommandTag.String())
	}
	if got := names(t, conn, `select ssn from patients`); !allAre(got, ssn["acme"]) {
		t.Fatalf("after SET LOCAL through Parse/Bind: %v", got)
	}
	fatalIf(t, tx.Commit(ctx), "commit")
	if got := names(t, conn, `select ssn from patients`); !allAre(got, ssn["globex"]) {
		t.Fatalf("back to the session token (globex): %v", got)
	}
	// A pipeline: token, then a search, in one batch of one transaction.
	tx, err = conn.Begin(ctx)
	fatalIf(t, err, "begin")
	b := &pgx.Batch{}
	b.Queue(`select pg_catalog.set_config('pgcloak.tenant_token', $1, true)`, tokens["acme"])
	b.Queue(`select count(*) from patients where ssn = $1`, ssn["acme"])
	br := tx.SendBatch(ctx, b)
	_, err = br.Exec()
	fatalIf(t, err, "batch token")
	var n int
	fatalIf(t, br.QueryRow().Scan(&n), "batch search")
	fatalIf(t, br.Close(), "batch close")
	if n != len(modes) {
		t.Fatalf("pipelined search after a pipelined token: %d rows, want %d", n, len(modes))
	}
	fatalIf(t, tx.Commit(ctx), "commit")
	// A bad bound token: 28000, and no tenant after it.
	_, err = conn.Exec(ctx, `select pg_catalog.set_config('pgcloak.tenant_token', $1, false)`, "not.a.token")
	if pgCode(err) != "28000" {
		t.Fatalf("bad bound token: %v, want 28000", err)
	}
	if got := names(t, conn, `select name from patients`); len(got) != 0 {
		t.Fatalf("after a refused bound token: %v", got)
	}
	for _, tok := range tokens {
		if strings.Contains(env.logs.String(), tok) || strings.Contains(env.audit.String(), tok) {
			t.Fatal("a token reached the log or the audit")
		}
	}
}

// allAre reports whether got is not empty and every element is want.
func allAre(got []string, want string) bool {
	for _, g := range got {
		if g != want {
			return false
		}
	}
	return len(got) > 0
}

// TestJWTMode logs in with a tenant token as the password: the session
// has the token's tenant, runs upstream as tenancy.jwt.upstream_user, may
// switch tenant with tokens, and a bad token fails the login as a bad
// password does.
func TestJWTMode(t *testing.T) {
	env := startTokenEnv(t, func(c *Config) {
		c.Tenancy.TokenRoles = nil
		c.Tenancy.Mode = config.ModeJWT
		c.Tenancy.JWT.UpstreamUser = poolRole
		c.Tenancy.JWT.UpstreamPassword = rolePassword
	})
	ctx := ctxT(t)
	acme, globex := mintToken(t, "acme", time.Hour), mintToken(t, "globex", time.Hour)
	seed := connect(t, env.proxy.url("alice", globex, env.db))
	_, err := seed.Exec(ctx, `insert into patients (name, ssn) values ($1, $2)`, "Gus", "987-65-4321")
	fatalIf(t, err, "insert as globex")
	seed.Close(ctx)

	conn := connect(t, env.proxy.url("alice", acme, env.db))
	_, err = conn.Exec(ctx, `insert into patients (name, ssn) values ($1, $2)`, "Ann", "123-45-6789")
	fatalIf(t, err, "insert as acme")
	if got := names(t, conn, `select name, ssn from patients`); strings.Join(got, ",") != "Ann:123-45-6789" {
		t.Fatalf("acme's login sees %v", got)
	}
	if got := names(t, conn, `select current_user`); len(got) != 1 || got[0] != poolRole {
		t.Fatalf("upstream role: %v, want %s", got, poolRole)
	}
	tx, err := conn.Begin(ctx)
	fatalIf(t, err, "begin")
	_, err = tx.Exec(ctx, `SET LOCAL pgcloak.tenant_token = '`+globex+`'`)
	fatalIf(t, err, "switch with a token")
	if got := names(t, conn, `select name, ssn from patients`); strings.Join(got, ",") != "Gus:987-65-4321" {
		t.Fatalf("switched to globex: %v", got)
	}
	fatalIf(t, tx.Commit(ctx), "commit")
	if got := names(t, conn, `select name from patients`); strings.Join(got, ",") != "Ann" {
		t.Fatalf("back to the login's tenant: %v", got)
	}
	_, err = pgx.Connect(ctx, env.proxy.url("alice", acme[:len(acme)-2]+"xx", env.db))
	if pgCode(err) != "28P01" || !strings.Contains(err.Error(), "password authentication failed") {
		t.Fatalf("bad token login: %v, want 28P01", err)
	}
	if strings.Contains(env.logs.String(), acme) || strings.Contains(env.audit.String(), acme) {
		t.Fatal("the login token reached the log or the audit")
	}
}

// TestTenantTokenSetLocalOutsideTransaction: SET LOCAL outside a
// transaction block warns as PostgreSQL does and changes nothing.
func TestTenantTokenSetLocalOutsideTransaction(t *testing.T) {
	env := startTokenEnv(t)
	ctx := ctxT(t)
	cfg, err := pgconn.ParseConfig(env.proxy.url(poolRole, rolePassword, env.db))
	fatalIf(t, err, "config")
	var notices []string
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		notices = append(notices, n.Severity+" "+n.Code+" "+n.Message)
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	fatalIf(t, err, "connect")
	defer conn.Close(ctx)
	res, err := conn.Exec(ctx, `SET LOCAL pgcloak.tenant_token = '`+mintToken(t, "acme", time.Hour)+`'`).ReadAll()
	fatalIf(t, err, "SET LOCAL outside a transaction")
	if len(res) != 1 || res[0].CommandTag.String() != "SET" {
		t.Fatalf("answer: %+v", res)
	}
	if len(notices) != 1 || notices[0] != "WARNING 25P01 SET LOCAL can only be used in transaction blocks" {
		t.Fatalf("notices: %q", notices)
	}
	_, err = conn.Exec(ctx, `insert into patients (name, ssn) values ('x', '111-11-1111')`).ReadAll()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "42501" {
		t.Fatalf("after SET LOCAL outside a transaction the session has a tenant: %v", err)
	}
}

// TestCopyMentioningDiscard: a COPY FROM STDIN whose text mentions DISCARD
// or RESET does not make the proxy send its own statements while
// PostgreSQL expects COPY data (login-mapped and token sessions).
func TestCopyMentioningDiscard(t *testing.T) {
	env := startTokenEnv(t)
	ctx := ctxT(t)
	for _, role := range []string{acmeRole, poolRole} {
		conn := env.tenantConn(t, role)
		// A table of no tenant, one per role (token sessions may make
		// no temporary table).
		fatalIf(t, env.pg.Exec(ctx, env.db, `drop table if exists notes; create table notes (discard_at text, reset_at text); grant insert, select on notes to `+role), "notes")
		tag, err := conn.PgConn().CopyFrom(ctx, strings.NewReader("a\tb\nc\td\n"), `copy notes (discard_at, reset_at) from stdin`)
		fatalIf(t, err, "copy (%s)", role)
		if tag.RowsAffected() != 2 {
			t.Fatalf("%s: copied %d rows", role, tag.RowsAffected())
		}
		if got := names(t, conn, `select count(*)::text from notes`); len(got) != 1 || got[0] != "2" {
			t.Fatalf("%s: notes %v", role, got)
		}
	}
}

// remoteListener makes every accepted connection look as if it came from
// a host other than this one.
type remoteListener struct{ net.Listener }

type remoteConn struct{ net.Conn }

func (l remoteListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return remoteConn{c}, nil
}

func (remoteConn) RemoteAddr() net.Addr { return &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 5555} }

// TestJWTModeRemotePlaintext: mode jwt never asks a remote client for its
// token over plaintext (28000 before the password exchange).
func TestJWTModeRemotePlaintext(t *testing.T) {
	env := startTokenEnv(t, func(c *Config) {
		c.Tenancy.TokenRoles = nil
		c.Tenancy.Mode = config.ModeJWT
		c.Tenancy.JWT.UpstreamUser = poolRole
		c.Tenancy.JWT.UpstreamPassword = rolePassword
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	fatalIf(t, err, "listen")
	go env.proxy.srv.Serve(remoteListener{ln}) // ended by the proxy's Close
	url := fmt.Sprintf("postgres://alice@%s/%s?sslmode=disable", ln.Addr(), env.db)
	cfg, err := pgconn.ParseConfig(url)
	fatalIf(t, err, "config")
	// Without a password: had the proxy asked, the empty token would fail
	// as a bad password (28P01), not with 28000.
	cfg.Password = ""
	_, err = pgconn.ConnectConfig(ctxT(t), cfg)
	if pgCode(err) != "28000" || !strings.Contains(err.Error(), "TLS") {
		t.Fatalf("remote plaintext jwt login: %v, want 28000 naming TLS", err)
	}
}
