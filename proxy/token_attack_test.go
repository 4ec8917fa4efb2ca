package proxy

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Adversarial tests of signed tenant tokens (SPEC §5.2): a client sending
// arbitrary protocol messages, or SQL injected into one tenant's request,
// tries to run a statement with one tenant's keys while PostgreSQL's
// pgcloak.current_tenant() is another, to replay a pin, to get a token to
// PostgreSQL, or to hang the session.

const (
	atkSetConfig = `select pg_catalog.set_config('pgcloak.tenant_token', $1, false)`
	atkInsert    = `insert into patients (name, ssn) values ($1, $2)`
)

// atkRaw opens a pgconn session of the token role through the proxy.
func atkRaw(t *testing.T, env *encryptedEnv) *pgconn.PgConn {
	t.Helper()
	conn, err := pgconn.Connect(ctxT(t), env.proxy.url(poolRole, rolePassword, env.db))
	fatalIf(t, err, "connect")
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func atkExec(t *testing.T, conn *pgconn.PgConn, sql string) ([]*pgconn.Result, error) {
	t.Helper()
	return conn.Exec(ctxT(t), sql).ReadAll()
}

// atkSeed stores one row per tenant, each through its own token session.
func atkSeed(t *testing.T, env *encryptedEnv) {
	t.Helper()
	for tenant, ssn := range map[string]string{"acme": "123-45-6789", "globex": "987-65-4321"} {
		conn := atkRaw(t, env)
		_, err := atkExec(t, conn, `SET pgcloak.tenant_token = '`+mintToken(t, tenant, time.Hour)+`'`)
		fatalIf(t, err, "seed token")
		_, err = conn.ExecParams(ctxT(t), atkInsert, [][]byte{[]byte("seed-" + tenant), []byte(ssn)}, nil, nil, nil).Close()
		fatalIf(t, err, "seed insert")
		conn.Close(ctxT(t))
	}
}

// atkCheckStored asserts the stored-rows promise: every row's tenant_id is
// the tenant whose keys open it, and each tenant reads exactly its rows.
func atkCheckStored(t *testing.T, env *encryptedEnv) {
	t.Helper()
	ctx := ctxT(t)
	rows, err := env.pool.Query(ctx, `select tenant_id, count(*) from patients group by tenant_id`)
	fatalIf(t, err, "stored tenants")
	counts := map[string]int{}
	for rows.Next() {
		var tenant string
		var n int
		fatalIf(t, rows.Scan(&tenant, &n), "scan")
		counts[tenant] = n
	}
	fatalIf(t, rows.Err(), "rows")
	for tenant, n := range counts {
		conn := atkRaw(t, env)
		_, err := atkExec(t, conn, `SET pgcloak.tenant_token = '`+mintToken(t, tenant, time.Hour)+`'`)
		fatalIf(t, err, "check token")
		res, err := atkExec(t, conn, `select name, ssn from patients`)
		if err != nil {
			t.Errorf("tenant %s cannot open its own stored rows: %v", tenant, err)
		} else if len(res[0].Rows) != n {
			t.Errorf("tenant %s reads %d rows, %d are stored under it", tenant, len(res[0].Rows), n)
		}
		conn.Close(ctx)
	}
}

// atkRound sends msgs and a Sync and returns every message up to
// ReadyForQuery (copied), with a deadline.
func atkRound(t *testing.T, conn *pgconn.PgConn, msgs ...pgproto3.FrontendMessage) ([]string, error) {
	t.Helper()
	fe := conn.Frontend()
	for _, m := range msgs {
		fe.Send(m)
	}
	fe.Send(&pgproto3.Sync{})
	if err := fe.Flush(); err != nil {
		return nil, err
	}
	conn.Conn().SetReadDeadline(time.Now().Add(15 * time.Second))
	defer conn.Conn().SetReadDeadline(time.Time{})
	var out []string
	var first error
	for {
		msg, err := fe.Receive()
		if err != nil {
			return out, fmt.Errorf("receive: %w", err)
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
			if first == nil {
				first = fmt.Errorf("%s %s", m.Code, m.Message)
			}
		case *pgproto3.CommandComplete:
			out = append(out, "C:"+string(m.CommandTag))
		case *pgproto3.PortalSuspended:
			out = append(out, "S")
		case *pgproto3.RowDescription:
			out = append(out, "T")
		case *pgproto3.ReadyForQuery:
			out = append(out, "Z:"+string(m.TxStatus))
			return out, first
		}
	}
}

func atkBytes(ss ...string) [][]byte {
	b := make([][]byte, len(ss))
	for i, s := range ss {
		b[i] = []byte(s)
	}
	return b
}

// A token statement bound but never executed: PostgreSQL never pins its
// tenant, so nothing may be encrypted with that tenant's keys.
func TestTokenAttack_BindWithoutExecute(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	conn := atkRaw(t, env)
	_, err := atkExec(t, conn, `SET pgcloak.tenant_token = '`+mintToken(t, "globex", time.Hour)+`'`)
	fatalIf(t, err, "SET globex")
	out, err := atkRound(t, conn,
		&pgproto3.Parse{Name: "tok", Query: atkSetConfig},
		&pgproto3.Bind{PreparedStatement: "tok", DestinationPortal: "p", Parameters: atkBytes(mintToken(t, "acme", time.Hour))},
		&pgproto3.Parse{Query: atkInsert},
		&pgproto3.Bind{Parameters: atkBytes("Eve", "555-55-5555")},
		&pgproto3.Execute{},
	)
	t.Logf("round: %v (err %v)", out, err)
	atkCheckStored(t, env)
}

// A token portal bound in one round of a transaction block and executed in
// a later one: PostgreSQL pins its tenant then, and the keys must follow.
func TestTokenAttackPortalExecutedLater(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	conn := atkRaw(t, env)
	_, err := atkExec(t, conn, `SET pgcloak.tenant_token = '`+mintToken(t, "globex", time.Hour)+`'`)
	fatalIf(t, err, "SET globex")
	_, err = atkExec(t, conn, `BEGIN`)
	fatalIf(t, err, "begin")
	out, err := atkRound(t, conn,
		&pgproto3.Parse{Name: "tok", Query: atkSetConfig},
		&pgproto3.Bind{PreparedStatement: "tok", DestinationPortal: "p", Parameters: atkBytes(mintToken(t, "acme", time.Hour))})
	if !strings.Contains(fmt.Sprint(out), "E:0A000") {
		t.Fatalf("a token bound to a named portal: %v %v, want 0A000 (only the unnamed portal, executed at once)", out, err)
	}
	_, err = atkExec(t, conn, `ROLLBACK`)
	fatalIf(t, err, "rollback")
	_, err = atkExec(t, conn, `BEGIN`)
	fatalIf(t, err, "begin")
	// The unnamed portal, executed in a later round: pgcloak closed it.
	out, err = atkRound(t, conn,
		&pgproto3.Parse{Name: "tok2", Query: atkSetConfig},
		&pgproto3.Bind{PreparedStatement: "tok2", Parameters: atkBytes(mintToken(t, "acme", time.Hour))})
	fatalIf(t, err, "bind round %v", out)
	out, err = atkRound(t, conn, &pgproto3.Execute{})
	if !strings.Contains(fmt.Sprint(out), "E:34000") {
		t.Fatalf("a token portal executed in a later round: %v %v, want 34000 (no such portal)", out, err)
	}
	t.Logf("execute round: %v (err %v)", out, err)
	out, err = atkRound(t, conn,
		&pgproto3.Parse{Query: `select pgcloak.current_tenant()`}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: atkInsert},
		&pgproto3.Bind{Parameters: atkBytes("Eve", "555-55-5555")},
		&pgproto3.Execute{})
	t.Logf("insert round: %v (err %v)", out, err)
	_, err = atkExec(t, conn, `COMMIT`)
	fatalIf(t, err, "commit")
	atkCheckStored(t, env)
}

// A token portal executed with a row limit answers PortalSuspended, not
// CommandComplete; PostgreSQL has pinned the tenant all the same.
func TestTokenAttackPortalSuspended(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	conn := atkRaw(t, env)
	_, err := atkExec(t, conn, `SET pgcloak.tenant_token = '`+mintToken(t, "globex", time.Hour)+`'`)
	fatalIf(t, err, "SET globex")
	out, err := atkRound(t, conn,
		&pgproto3.Parse{Name: "tok", Query: atkSetConfig},
		&pgproto3.Bind{PreparedStatement: "tok", DestinationPortal: "p", Parameters: atkBytes(mintToken(t, "acme", time.Hour))},
		&pgproto3.Execute{Portal: "p", MaxRows: 1})
	t.Logf("token round: %v (err %v)", out, err)
	out, err = atkRound(t, conn,
		&pgproto3.Parse{Query: `select pgcloak.current_tenant()`}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: atkInsert},
		&pgproto3.Bind{Parameters: atkBytes("Eve", "555-55-5555")},
		&pgproto3.Execute{})
	t.Logf("insert round: %v (err %v)", out, err)
	atkCheckStored(t, env)
}

var atkAliasRE = regexp.MustCompile(`"(pgcloak:pin:[0-9a-f]+:)"`)

// atkEscaped spells an identifier with a Unicode escape for each colon, so
// that the text no longer contains it as written.
func atkEscaped(ident string) string {
	return `U&"` + strings.ReplaceAll(ident, ":", `\003A`) + `"`
}

// atkAlias reads the session's pin alias from current_query() in a query
// that carries a token statement.
func atkAlias(t *testing.T, conn *pgconn.PgConn, tok string) (alias, text string) {
	t.Helper()
	res, err := atkExec(t, conn, `SET pgcloak.tenant_token = '`+tok+`'; SELECT current_query()`)
	fatalIf(t, err, "current_query")
	text = string(res[len(res)-1].Rows[0][0])
	m := atkAliasRE.FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("no alias in current_query(): %s", text)
	}
	return m[1], text
}

// The pin's alias leaks through current_query(); a statement of the
// client's own answering under it must not be taken for a pin.
func TestTokenAttack_FakeAlias(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	conn := atkRaw(t, env)
	alias, _ := atkAlias(t, conn, mintToken(t, "globex", time.Hour))
	acme := mintToken(t, "acme", time.Hour)
	// As written, the alias is refused; escaped, it reaches PostgreSQL
	// and must not be taken for the pin.
	_, err := atkExec(t, conn, `BEGIN; SELECT 'x' AS "`+alias+`"; COMMIT; SELECT 1/0; SET pgcloak.tenant_token = '`+acme+`'`)
	if pgCode(err) != "42501" {
		t.Fatalf("the pin alias as written: %v, want 42501", err)
	}
	// Before a token statement, no statement that runs code is sent at
	// all; after the pin, a statement answering under the alias is the
	// client's.
	res, err := atkExec(t, conn, `BEGIN; SELECT 'x' AS `+atkEscaped(alias)+`; COMMIT; SELECT 1/0; SET pgcloak.tenant_token = '`+acme+`'`)
	t.Logf("fake alias before the pin: %d results, err %v", len(res), err)
	if pgCode(err) != "0A000" {
		t.Errorf("a statement before a token statement in one query: %v, want 0A000", err)
	}
	res, err = atkExec(t, conn, `SET pgcloak.tenant_token = '`+acme+`'; SELECT 'x' AS `+atkEscaped(alias))
	t.Logf("fake alias after the pin: %d results, err %v", len(res), err)
	if err != nil || len(res) != 2 || string(res[0].CommandTag.String()) != "SET" || len(res[1].Rows) != 1 || string(res[1].Rows[0][0]) != "x" {
		t.Errorf("a statement answering under the pin's alias after the pin: %v %v, want SET then the client's row x", res, err)
	}
	res, err = atkExec(t, conn, `select pgcloak.current_tenant()`)
	if err == nil {
		t.Logf("current_tenant after: %s", res[0].Rows[0][0])
	}
	_, err = conn.ExecParams(ctxT(t), atkInsert, atkBytes("Eve", "555-55-5555"), nil, nil, nil).Close()
	t.Logf("insert: %v", err)
	atkCheckStored(t, env)
}

// ROLLBACK TO SAVEPOINT answers "ROLLBACK" but ends no transaction: a
// local token set before the savepoint still holds.
func TestTokenAttack_RollbackToSavepoint(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	conn := atkRaw(t, env)
	_, err := atkExec(t, conn, `SET pgcloak.tenant_token = '`+mintToken(t, "globex", time.Hour)+`'`)
	fatalIf(t, err, "SET globex")
	res, err := atkExec(t, conn, `BEGIN; SET LOCAL pgcloak.tenant_token = '`+mintToken(t, "acme", time.Hour)+`'; SAVEPOINT a; ROLLBACK TO a; SELECT pgcloak.current_tenant(), name, ssn FROM patients; COMMIT`)
	if err != nil {
		t.Fatalf("select after ROLLBACK TO in acme's local token: %v", err)
	}
	if rows := res[4].Rows; len(rows) != 1 || string(rows[0][2]) != "123-45-6789" {
		t.Fatalf("select after ROLLBACK TO: %q", rows)
	}
	atkCheckStored(t, env)
}

// ROLLBACK TO in its own round, then a write with parameters.
func TestTokenAttackRollbackToSavepointRounds(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	conn := atkRaw(t, env)
	ctx := ctxT(t)
	_, err := atkExec(t, conn, `BEGIN`)
	fatalIf(t, err, "begin")
	_, err = atkExec(t, conn, `SET LOCAL pgcloak.tenant_token = '`+mintToken(t, "acme", time.Hour)+`'`)
	fatalIf(t, err, "SET LOCAL")
	_, err = atkExec(t, conn, `SAVEPOINT a`)
	fatalIf(t, err, "savepoint")
	_, err = atkExec(t, conn, `ROLLBACK TO a`)
	fatalIf(t, err, "rollback to")
	r := conn.ExecParams(ctx, `select pgcloak.current_tenant()::text, count(*)::text from patients where ssn = $1`, atkBytes("123-45-6789"), nil, nil, nil).Read()
	t.Logf("after ROLLBACK TO: %q %v", r.Rows, r.Err)
	_, err = conn.ExecParams(ctx, atkInsert, atkBytes("Eve", "555-55-5555"), nil, nil, nil).Close()
	t.Logf("insert: %v", err)
	_, err = atkExec(t, conn, `COMMIT`)
	t.Logf("commit: %v", err)
	atkCheckStored(t, env)
}

// Transaction ends inside one simple query, around a local or a session
// token: whatever PostgreSQL's tenant becomes, a write must be stored
// under the tenant whose keys sealed it.
func TestTokenAttackTransactionEndsInQuery(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	acme, globex := mintToken(t, "acme", time.Hour), mintToken(t, "globex", time.Hour)
	ins := `INSERT INTO patients (name, ssn) VALUES ('Eve', '555-55-5555')`
	for _, q := range []string{
		`BEGIN; SET LOCAL pgcloak.tenant_token = '` + acme + `'; COMMIT; ` + ins,
		`BEGIN; SET pgcloak.tenant_token = '` + acme + `'; ROLLBACK; ` + ins,
		`BEGIN; SET LOCAL pgcloak.tenant_token = '` + acme + `'; COMMIT AND CHAIN; ` + ins + `; COMMIT`,
		`SET pgcloak.tenant_token = '` + acme + `'; COMMIT; ` + ins,
		`SET pgcloak.tenant_token = '` + acme + `'; SELECT 1/0; ` + ins,
		`BEGIN; SAVEPOINT s; SET pgcloak.tenant_token = '` + acme + `'; ROLLBACK TO s; ` + ins + `; COMMIT`,
		`BEGIN; SET pgcloak.tenant_token = '` + acme + `'; SAVEPOINT s; SELECT 1; ROLLBACK TO s; ` + ins + `; COMMIT`,
		`BEGIN; SET LOCAL pgcloak.tenant_token = '` + acme + `'; DISCARD SEQUENCES; ` + ins + `; COMMIT`,
		`SET pgcloak.tenant_token = '` + acme + `'; RESET ALL; ` + ins,
		`BEGIN; SET LOCAL pgcloak.tenant_token = '` + acme + `'; RELEASE SAVEPOINT x; ` + ins,
	} {
		conn := atkRaw(t, env)
		_, err := atkExec(t, conn, `SET pgcloak.tenant_token = '`+globex+`'`)
		fatalIf(t, err, "SET globex")
		_, err = atkExec(t, conn, q)
		t.Logf("%.60s...: %v", q, err)
		atkExec(t, conn, `ROLLBACK`)
		_, err = conn.ExecParams(ctxT(t), atkInsert, atkBytes("Eve2", "555-55-5556"), nil, nil, nil).Close()
		t.Logf("  next insert: %v", err)
		conn.Close(ctxT(t))
	}
	atkCheckStored(t, env)
}

// COPY FROM STDIN in a transaction with a local token: the proxy must not
// wait for the COPY's ReadyForQuery before passing its data on.
func TestTokenAttack_CopyAfterLocalToken(t *testing.T) {
	env := startTokenEnv(t)
	// A table of no tenant (token sessions may make no temporary table).
	fatalIf(t, env.pg.Exec(ctxT(t), env.db, `create table notes (body text); grant insert, select on notes to `+poolRole), "notes")
	conn := atkRaw(t, env)
	_, err := atkExec(t, conn, `BEGIN`)
	fatalIf(t, err, "begin")
	_, err = atkExec(t, conn, `SET LOCAL pgcloak.tenant_token = '`+mintToken(t, "acme", time.Hour)+`'`)
	fatalIf(t, err, "SET LOCAL")
	ctx, cancel := context.WithTimeout(ctxT(t), 10*time.Second)
	defer cancel()
	tag, err := conn.CopyFrom(ctx, strings.NewReader("a\nb\n"), `copy notes (body) from stdin`)
	if err != nil {
		t.Fatalf("COPY FROM STDIN after SET LOCAL token: %v", err)
	}
	mustEqual(t, "copy tag", tag.String(), "COPY 2")
}

// A COPY FROM STDIN whose text mentions "reset" (a column reset_at): the
// proxy's own statements after it must not be sent into the COPY.
func TestTokenAttack_CopyMentioningReset(t *testing.T) {
	env := startTokenEnv(t)
	conn := atkRaw(t, env)
	fatalIf(t, env.pg.Exec(ctxT(t), env.db, `create table notes (reset_at text); grant insert, select on notes to `+poolRole), "notes")
	_, err := atkExec(t, conn, `SET pgcloak.tenant_token = '`+mintToken(t, "acme", time.Hour)+`'`)
	fatalIf(t, err, "SET token")
	ctx, cancel := context.WithTimeout(ctxT(t), 10*time.Second)
	defer cancel()
	tag, err := conn.CopyFrom(ctx, strings.NewReader("a\nb\n"), `copy notes (reset_at) from stdin`)
	if err != nil {
		t.Fatalf("COPY FROM STDIN naming reset_at in a token session: %v", err)
	}
	mustEqual(t, "copy tag", tag.String(), "COPY 2")
}

// The pin statement's text leaks through current_query(); re-running it
// (in the session, after DISCARD SEQUENCES, in another session) must not
// pin its tenant.
func TestTokenAttackPinReplay(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	victim := atkRaw(t, env)
	_, text := atkAlias(t, victim, mintToken(t, "acme", time.Hour))
	pin := strings.TrimSpace(strings.Split(text, ";\n")[0])
	t.Logf("pin text: %.120s...", pin)
	seesAcme := func(conn *pgconn.PgConn) bool {
		res, err := atkExec(t, conn, `select name from patients where tenant_id = 'acme'`)
		return err == nil && len(res[0].Rows) > 0
	}
	attacks := []string{
		pin,
		`select ` + strings.TrimPrefix(regexp.MustCompile(`(?s)^SELECT .*?\|\| `).ReplaceAllString(pin, ""), "SELECT "),
		`select pgcloak.pin_challenge()`,
		`set pgcloak.tenant_proof = 'v1:0:00'`,
		`select set_config('app.tenant_id', 'acme', false)`,
	}
	// In the victim's own session (now acme) after RESET, and in another.
	_, err := atkExec(t, victim, `RESET pgcloak.tenant_token`)
	fatalIf(t, err, "reset")
	other := atkRaw(t, env)
	for _, conn := range []*pgconn.PgConn{victim, other} {
		for _, a := range attacks {
			_, err := atkExec(t, conn, a)
			t.Logf("%.80s: %v", a, err)
			if seesAcme(conn) {
				t.Fatalf("replayed pin gives acme's rows: %.80s", a)
			}
		}
		atkExec(t, conn, `DISCARD SEQUENCES`)
		_, err := atkExec(t, conn, pin)
		t.Logf("after DISCARD SEQUENCES: %v", err)
		if seesAcme(conn) {
			t.Fatal("replayed pin after DISCARD SEQUENCES gives acme's rows")
		}
	}
}

// The token must never reach PostgreSQL: not through Unicode-escaped
// identifiers, a startup parameter, or a statement refused for its form.
func TestTokenAttackTokenToPostgres(t *testing.T) {
	env := startTokenEnv(t)
	ctx := ctxT(t)
	tok := mintToken(t, "acme", time.Hour)
	conn := atkRaw(t, env)
	for _, q := range []string{
		`SET pgcloak.U&"tenant\005Ftoken" = '` + tok + `'`,
		`SET U&"pgcl\006Fak".U&"tenant\005Ftoken" = '` + tok + `'`,
		`SET "pgcloak.tenant_token" = '` + tok + `'`,
		`SELECT set_config(U&'pgcloak.tenant\005Ftoken', '` + tok + `', false)`,
		`SELECT set_config('pgcloak.tenant' || '_token', '` + tok + `', false)`,
	} {
		_, err := atkExec(t, conn, q)
		t.Logf("%.50s: %v", q, err)
	}
	res, err := atkExec(t, conn, `select setting from pg_settings where name like 'pgcloak%'`)
	if err == nil {
		for _, r := range res[0].Rows {
			if strings.Contains(string(r[0]), tok[:20]) {
				t.Fatalf("the token reached PostgreSQL as a setting")
			}
		}
	} else {
		t.Logf("pg_settings: %v", err)
	}
	// A startup parameter.
	c2, err := pgconn.Connect(ctx, env.proxy.url(poolRole, rolePassword, env.db, "pgcloak.tenant_token="+tok))
	if err == nil {
		res, err := c2.Exec(ctx, `select count(*) from pg_settings where name like 'pgcloak%' and setting like '`+tok[:20]+`%'`).ReadAll()
		if err == nil && string(res[0].Rows[0][0]) != "0" {
			t.Fatal("a startup parameter carried the token to PostgreSQL")
		}
		c2.Close(ctx)
	} else {
		t.Logf("startup parameter: %v", err)
	}
	if strings.Contains(env.logs.String(), tok) || strings.Contains(env.audit.String(), tok) {
		t.Fatal("token in the proxy log or audit")
	}
}

// An application transaction with SET LOCAL on a session that has a
// session-level tenant (a mode-jwt login, or a pooled connection whose
// earlier request used SET): ROLLBACK TO SAVEPOINT recovers from an error
// inside the transaction, and the transaction must still be the local
// token's tenant.
func TestTokenAttack_RollbackToSwitchesTenant(t *testing.T) {
	env := startTokenEnv(t)
	atkSeed(t, env)
	conn := atkRaw(t, env)
	ctx := ctxT(t)
	_, err := atkExec(t, conn, `SET pgcloak.tenant_token = '`+mintToken(t, "globex", time.Hour)+`'`)
	fatalIf(t, err, "SET globex")
	for _, q := range []string{`BEGIN`, `SET LOCAL pgcloak.tenant_token = '` + mintToken(t, "acme", time.Hour) + `'`, `SAVEPOINT s`} {
		_, err = atkExec(t, conn, q)
		fatalIf(t, err, "%.30s", q)
	}
	_, err = atkExec(t, conn, `SELECT 1/0`)
	if err == nil {
		t.Fatal("1/0 succeeded")
	}
	_, err = atkExec(t, conn, `ROLLBACK TO SAVEPOINT s`)
	fatalIf(t, err, "rollback to")
	r := conn.ExecParams(ctx, `select pgcloak.current_tenant()::text, name, ssn from patients`, nil, nil, nil, nil).Read()
	fatalIf(t, r.Err, "select in acme's transaction")
	for _, row := range r.Rows {
		if string(row[0]) != "acme" {
			t.Errorf("in acme's SET LOCAL transaction after ROLLBACK TO: current_tenant %s, row %s:%s", row[0], row[1], row[2])
		}
	}
	_, err = conn.ExecParams(ctx, atkInsert, atkBytes("acme-data", "111-22-3333"), nil, nil, nil).Close()
	fatalIf(t, err, "insert in acme's transaction")
	_, err = atkExec(t, conn, `COMMIT`)
	fatalIf(t, err, "commit")
	var owner string
	fatalIf(t, env.pool.QueryRow(ctx, `select tenant_id from patients where name = 'acme-data'`).Scan(&owner), "owner")
	if owner != "acme" {
		t.Fatalf("a row written in acme's SET LOCAL transaction is stored as %s's", owner)
	}
}

// The same through COMMIT AND CHAIN: the proxy takes it for the end of the
// local token's transaction and re-pins the session token inside the
// chained transaction; an error there must not kill the session.
func TestTokenAttack_ChainedTransactionError(t *testing.T) {
	env := startTokenEnv(t)
	conn := atkRaw(t, env)
	_, err := atkExec(t, conn, `SET pgcloak.tenant_token = '`+mintToken(t, "globex", time.Hour)+`'`)
	fatalIf(t, err, "SET globex")
	_, err = atkExec(t, conn, `BEGIN; SET LOCAL pgcloak.tenant_token = '`+mintToken(t, "acme", time.Hour)+`'; COMMIT AND CHAIN; SELECT 1/0`)
	t.Logf("chained error: %v", err)
	_, err = atkExec(t, conn, `ROLLBACK`)
	fatalIf(t, err, "ROLLBACK after an error in a chained transaction")
	_, err = atkExec(t, conn, `SELECT 1`)
	fatalIf(t, err, "session usable")
}

// The alias of the proxy's pin statements is readable by any session of
// the same role in pg_stat_activity; a client statement answering under it
// must not corrupt the protocol.
func TestTokenAttack_AliasProtocol(t *testing.T) {
	env := startTokenEnv(t)
	victim := atkRaw(t, env)
	_, err := atkExec(t, victim, `SET pgcloak.tenant_token = '`+mintToken(t, "globex", time.Hour)+`'`)
	fatalIf(t, err, "SET globex")
	spy := atkRaw(t, env)
	res, err := atkExec(t, spy, fmt.Sprintf(`select query from pg_stat_activity where pid = %d`, victim.PID()))
	fatalIf(t, err, "pg_stat_activity")
	m := atkAliasRE.FindStringSubmatch(string(res[0].Rows[0][0]))
	if m == nil {
		t.Logf("alias not visible in pg_stat_activity: %s", res[0].Rows[0][0])
		_, text := atkAlias(t, victim, mintToken(t, "globex", time.Hour))
		m = atkAliasRE.FindStringSubmatch(text)
	} else {
		t.Logf("victim's pin (alias %s) read from another session in pg_stat_activity", m[1])
	}
	out, err := atkRound(t, victim, &pgproto3.Query{String: `SELECT 'x' AS ` + atkEscaped(m[1])})
	t.Logf("answer: %v %v", out, err)
	if len(out) < 3 || out[0] != "T" {
		t.Fatalf("a client's own SELECT answered without its RowDescription: %v", out)
	}
}
