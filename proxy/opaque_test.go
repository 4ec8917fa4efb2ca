package proxy

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/testenv"
)

// protocols runs one statement text over the simple and the extended query
// protocol of a pgconn.
var protocols = []struct {
	name string
	run  func(ctx context.Context, c *pgconn.PgConn, sql string) error
}{
	{"simple", func(ctx context.Context, c *pgconn.PgConn, sql string) error {
		_, err := c.Exec(ctx, sql).ReadAll()
		return err
	}},
	{"extended", func(ctx context.Context, c *pgconn.PgConn, sql string) error {
		return c.ExecParams(ctx, sql, nil, nil, nil, nil).Read().Err
	}},
}

// wantRefusal fails unless err is pgcloak's own refusal with code.
func wantRefusal(t *testing.T, what string, err error, code string) {
	t.Helper()
	if pgCode(err) != code || !strings.HasPrefix(pgMessage(err), "pgcloak: ") {
		t.Errorf("%s: got %v, want pgcloak's refusal %s", what, err, code)
	}
}

// TestOpaqueSQLRefused: in a session with a tenant, SQL whose effect pgcloak
// cannot read is refused by pgcloak (42501, audited) before PostgreSQL runs
// any of it, over both protocols, however the keyword is hidden. Each case
// would leave a trace if PostgreSQL ran it: the tenant role may create
// objects here, so only pgcloak stands in the way.
func TestOpaqueSQLRefused(t *testing.T) {
	env := startEncrypted(t)
	ctx := ctxT(t)
	fatalIf(t, env.pg.Exec(ctx, env.db, `
		grant create on schema public to acme_app;
		create table mine (x text);
		alter table mine owner to acme_app;
		create view v1 as select * from patients;
		grant select, insert on v1 to acme_app;`), "setup")
	count := func(q string) int {
		var n int
		fatalIf(t, env.pool.QueryRow(ctx, q).Scan(&n), "%s", q)
		return n
	}
	cases := []struct {
		name, sql string
		trace     string // a count that must stay 0
	}{
		{"DO with a table name assembled at run time",
			`DO $$BEGIN EXECUTE 'INSERT INTO pat' || 'ients (name, ssn) VALUES (''mark1'', ''plain'')'; END$$`,
			`select count(*) from patients where name = 'mark1'`},
		{"DO with format %I",
			`DO $$BEGIN EXECUTE format('INSERT INTO %I (name, ssn) VALUES (%L, %L)', 'pati' || 'ents', 'mark2', 'plain'); END$$`,
			`select count(*) from patients where name = 'mark2'`},
		{"DO behind comments and in mixed case",
			`/* x */dO/**/$q$BEGIN EXECUTE 'INSERT INTO pat' || 'ients (name) VALUES (''mark3'')'; END$q$`,
			`select count(*) from patients where name = 'mark3'`},
		{"DO that sets the tenant through Unicode escapes",
			`DO $$BEGIN EXECUTE format('SELECT %s(%L, %L, false)', U&'set\005fconfig', 'app.tenant' || '_id', 'globex'); INSERT INTO mine VALUES ('mark4'); END$$`,
			`select count(*) from mine where x = 'mark4'`},
		{"DO after a harmless statement",
			`SELECT 1; DO $$BEGIN INSERT INTO mine VALUES ('mark5'); END$$`,
			`select count(*) from mine where x = 'mark5'`},
		{"CREATE FUNCTION",
			`CREATE FUNCTION evil_f() RETURNS int LANGUAGE sql AS 'select 1'`,
			`select count(*) from pg_proc where proname = 'evil_f'`},
		{"CREATE OR REPLACE PROCEDURE",
			`create or replace procedure evil_p() language sql as 'select 1'`,
			`select count(*) from pg_proc where proname = 'evil_p'`},
		{"CREATE VIEW over a view over a declared table",
			`CREATE VIEW evil_v2 AS SELECT * FROM v1`,
			`select count(*) from pg_class where relname = 'evil_v2'`},
		{"CREATE VIEW over an undeclared table",
			`CREATE VIEW evil_v3 AS SELECT * FROM mine`,
			`select count(*) from pg_class where relname = 'evil_v3'`},
		{"CREATE MATERIALIZED VIEW",
			`CREATE MATERIALIZED VIEW evil_mv AS SELECT 1`,
			`select count(*) from pg_class where relname = 'evil_mv'`},
		{"CREATE RULE",
			`CREATE RULE evil_r AS ON INSERT TO mine DO ALSO NOTHING`,
			`select count(*) from pg_rewrite where rulename = 'evil_r'`},
		{"CREATE TRIGGER",
			`CREATE TRIGGER evil_t BEFORE UPDATE ON mine FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()`,
			`select count(*) from pg_trigger where tgname = 'evil_t'`},
		{"ALTER ROLE ... SET",
			`ALTER ROLE acme_app SET search_path = evil`,
			`select count(*) from pg_db_role_setting s join pg_roles r on r.oid = s.setrole where r.rolname = 'acme_app'`},
		{"ALTER USER ... SET",
			`alter user acme_app set work_mem = '2MB'`,
			`select count(*) from pg_db_role_setting s join pg_roles r on r.oid = s.setrole where r.rolname = 'acme_app'`},
	}
	audited := strings.Count(env.audit.String(), `"event":"tenant_change_refused"`)
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			conn := env.tenantConn(t, acmeRole).PgConn()
			for _, c := range cases {
				err := p.run(ctx, conn, c.sql)
				wantRefusal(t, c.name, err, "42501")
				if n := count(c.trace); n != 0 {
					t.Errorf("%s: PostgreSQL ran it (%s = %d)", c.name, c.trace, n)
				}
			}
			res, err := conn.Exec(ctx, `select current_setting('app.tenant_id')`).ReadAll()
			fatalIf(t, err, "tenant setting")
			mustEqual(t, "tenant setting", string(res[0].Rows[0][0]), "acme")
		})
	}
	if n := strings.Count(env.audit.String(), `"event":"tenant_change_refused"`) - audited; n < 2*len(cases) {
		t.Errorf("audit: %d tenant_change_refused events, want at least %d", n, 2*len(cases))
	}

	t.Run("unscoped sessions are not limited", func(t *testing.T) {
		conn := env.tenantConn(t, migratorRole).PgConn()
		for _, p := range protocols {
			fatalIf(t, p.run(ctx, conn, `DO $$BEGIN PERFORM 1; END$$`), "%s DO", p.name)
		}
	})

	t.Run("statements that merely resemble them pass", func(t *testing.T) {
		conn := env.tenantConn(t, acmeRole).PgConn()
		for _, p := range protocols {
			for _, sql := range []string{
				`select 'do' as "function", 'view' as rule`,
				`insert into mine values ('ok') on conflict do nothing`,
				`create table made_here as select * from mine`,
				`drop table made_here`,
			} {
				fatalIf(t, p.run(ctx, conn, sql), "%s %s", p.name, sql)
			}
		}
	})
}

// TestOpaqueSQLAllowed: tenancy.allow_dynamic_sql lets a session with a
// tenant run DO and create functions.
func TestOpaqueSQLAllowed(t *testing.T) {
	env := startEncrypted(t, func(c *Config) { c.Tenancy.AllowDynamicSQL = true })
	ctx := ctxT(t)
	fatalIf(t, env.pg.Exec(ctx, env.db, `grant create on schema public to acme_app`), "grant")
	conn := env.tenantConn(t, acmeRole).PgConn()
	for _, p := range protocols {
		fatalIf(t, p.run(ctx, conn, `DO $$BEGIN PERFORM 1; END$$`), "%s DO", p.name)
	}
	fatalIf(t, protocols[0].run(ctx, conn, `CREATE FUNCTION ok_f() RETURNS int LANGUAGE sql AS 'select 1'`), "CREATE FUNCTION")
}

// TestLexerSettingsRefused: client_encoding stays UTF8 and
// standard_conforming_strings stays on, in sessions with a tenant and, when
// tables are declared, in unscoped ones, whatever the spelling.
func TestLexerSettingsRefused(t *testing.T) {
	env := startEncrypted(t)
	ctx := ctxT(t)
	bad := []string{
		`SET client_encoding TO 'sjis'`,
		`SET NAMES 'GBK'`,
		`set local "CLIENT_ENCODING" = 'BIG5'`,
		`SET U&"client\005fencoding" TO 'GB18030'`,
		`SET client_encoding = DEFAULT`,
		`RESET client_encoding`,
		`SET standard_conforming_strings = off`,
		`SET standard_conforming_strings = false`,
		`SET standard_conforming_strings = 0`,
		`SELECT set_config('standard_conforming_strings', 'off', false)`,
		`SELECT 1; SELECT pg_catalog.set_config('client_encoding', 'SJIS', false)`,
	}
	good := []string{
		`SET client_encoding = 'UTF-8'`,
		`SET NAMES 'unicode'`,
		`SET standard_conforming_strings = on`,
		`SELECT set_config('client_encoding', 'utf8', false)`,
	}
	for _, role := range []string{acmeRole, migratorRole} {
		for _, p := range protocols {
			t.Run(role+"/"+p.name, func(t *testing.T) {
				conn := env.tenantConn(t, role).PgConn()
				for _, sql := range bad {
					wantRefusal(t, sql, p.run(ctx, conn, sql), "42501")
				}
				for _, sql := range good {
					fatalIf(t, p.run(ctx, conn, sql), "%s", sql)
				}
				res, err := conn.Exec(ctx, `select current_setting('client_encoding'), current_setting('standard_conforming_strings')`).ReadAll()
				fatalIf(t, err, "show settings")
				mustEqual(t, "client_encoding", string(res[0].Rows[0][0]), "UTF8")
				mustEqual(t, "standard_conforming_strings", string(res[0].Rows[0][1]), "on")
			})
		}
	}

	t.Run("without declared tables only sessions with a tenant", func(t *testing.T) {
		p := startProxy(t, env.pg, func(c *Config) {
			c.Tenancy = config.Tenancy{Setting: "app.tenant_id", Mode: config.ModeLogin,
				Login:         config.LoginTenancy{Roles: map[string]string{acmeRole: "acme"}},
				UnscopedRoles: []string{migratorRole}}
		})
		acme := connect(t, p.url(acmeRole, rolePassword, env.db)).PgConn()
		wantRefusal(t, "tenant SET NAMES", protocols[0].run(ctx, acme, `SET NAMES 'SJIS'`), "42501")
		wantRefusal(t, "tenant DO", protocols[0].run(ctx, acme, `DO $$BEGIN NULL; END$$`), "42501")
		migrator := connect(t, p.url(migratorRole, rolePassword, env.db)).PgConn()
		fatalIf(t, protocols[0].run(ctx, migrator, `SET standard_conforming_strings = off`), "unscoped SET standard_conforming_strings")
	})
}

// TestPurePassthroughRefusesNothing: with no declared tables and no tenant
// roles pgcloak analyses nothing: what PostgreSQL accepts passes (SET role
// in a function definition, SET NAMES, reserved-looking names) and what it
// refuses gets PostgreSQL's own error, position included.
func TestPurePassthroughRefusesNothing(t *testing.T) {
	pg := testenv.Shared(t)
	ctx := ctxT(t)
	db := testenv.NewDatabase(t, pg)
	p := startProxy(t, pg, func(c *Config) { c.Tenancy.UnscopedRoles = []string{"*"} })
	conn := connect(t, p.superURL(db)).PgConn()
	for _, pr := range protocols {
		for _, sql := range []string{
			`CREATE OR REPLACE FUNCTION f_role() RETURNS int LANGUAGE sql SET role = postgres AS 'select 1'`,
			`DO $$BEGIN PERFORM set_config('app.tenant_id', 'x', false); END$$`,
			`SET app.tenant_id = 'x'`,
			`SELECT 'tenant_token'`,
			`SET client_encoding = 'UTF8'`,
		} {
			fatalIf(t, pr.run(ctx, conn, sql), "%s %s", pr.name, sql)
		}
		err := pr.run(ctx, conn, `EXECUTE "pgcloak:nosuch"`)
		if pgCode(err) != "26000" || strings.HasPrefix(pgMessage(err), "pgcloak") {
			t.Errorf("%s EXECUTE of a reserved name: got %v, want PostgreSQL's 26000", pr.name, err)
		}
		err = pr.run(ctx, conn, `SELEC 1`)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "42601" || pe.Position != 1 || strings.HasPrefix(pe.Message, "pgcloak") {
			t.Errorf("%s syntax error: got %v, want PostgreSQL's 42601 at position 1", pr.name, err)
		}
	}
	if _, err := conn.Prepare(ctx, "pgcloak:mine", `select 1`, nil); err != nil {
		t.Errorf("Parse of a pgcloak: name in pure passthrough: %v", err)
	}
}

// roundTrip sends msgs and a Sync on conn's raw frontend and returns the
// text of the first field of each DataRow up to ReadyForQuery, and the
// first error.
func roundTrip(t *testing.T, conn *pgconn.PgConn, msgs ...pgproto3.FrontendMessage) ([]string, *pgproto3.ErrorResponse) {
	t.Helper()
	fe := conn.Frontend()
	for _, m := range msgs {
		fe.Send(m)
	}
	fe.Send(&pgproto3.Sync{})
	fatalIf(t, fe.Flush(), "flush")
	var rows []string
	var first *pgproto3.ErrorResponse
	for {
		msg, err := fe.Receive()
		fatalIf(t, err, "receive")
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			rows = append(rows, string(m.Values[0]))
		case *pgproto3.ErrorResponse:
			if first == nil {
				e := *m
				first = &e
			}
		case *pgproto3.ReadyForQuery:
			return rows, first
		}
	}
}

// TestRedefinedByOpaqueSQL: a statement or portal the client uses, redefined
// by SQL the proxy did not follow message by message (DEALLOCATE and
// PREPARE sent as extended-protocol statements, CLOSE and DECLARE of a
// portal, a cursor DECLAREd in SQL and executed through the protocol, a DO
// block when allowed), is described again before pgcloak decrypts by it:
// the client gets the new definition's plaintext, never ciphertext or a
// decryption under the old column.
func TestRedefinedByOpaqueSQL(t *testing.T) {
	for _, allow := range []bool{false, true} {
		t.Run(map[bool]string{false: "default", true: "allow_dynamic_sql"}[allow], func(t *testing.T) {
			testRedefined(t, allow)
		})
	}
}

func testRedefined(t *testing.T, allowDynamicSQL bool) {
	env := startEncrypted(t, func(c *Config) { c.Tenancy.AllowDynamicSQL = allowDynamicSQL })
	ctx := ctxT(t)
	insertPatient(t, env.tenantConn(t, acmeRole), "alice", "123-45-6789", "alice@example.com", "flu", "1980-01-02")
	const (
		selectSSN       = `select ssn from patients where name = 'alice'`
		selectDiagnosis = `SELECT diagnosis FROM patients WHERE name = 'alice'`
	)
	// execS1 binds and executes s1 without describing the portal, as
	// drivers that cache descriptions do.
	execS1 := func(t *testing.T, conn *pgconn.PgConn, formats []int16) string {
		t.Helper()
		rows, e := roundTrip(t, conn, &pgproto3.Bind{PreparedStatement: "s1", ResultFormatCodes: formats}, &pgproto3.Execute{})
		if e != nil {
			t.Fatalf("execute s1: %s", e.Message)
		}
		return strings.Join(rows, ",")
	}
	var id string
	fatalIf(t, env.pool.QueryRow(ctx, `select id::text from patients where name = 'alice'`).Scan(&id), "id")
	redefine := []struct {
		name, sql string
		extended  bool
		want      string
	}{
		{"extended DEALLOCATE and PREPARE", `DEALLOCATE s1;PREPARE s1 AS ` + selectDiagnosis, true, "flu"},
		{"extended DEALLOCATE and PREPARE of a plain column", `DEALLOCATE s1;PREPARE s1 AS SELECT id FROM patients WHERE name = 'alice'`, true, id},
		{"DO block", `DO $$BEGIN EXECUTE 'DEALLOCATE s1'; EXECUTE 'PREPARE s1 AS SELECT diagnosis FROM pati' || 'ents WHERE name = ''alice'''; END$$`, false, "flu"},
		{"DO block, plain column", `DO $$BEGIN EXECUTE 'DEALLOCATE s1'; EXECUTE 'PREPARE s1 AS SELECT id FROM pati' || 'ents WHERE name = ''alice'''; END$$`, false, id},
	}
	for _, r := range redefine {
		if !r.extended && !allowDynamicSQL {
			continue // DO is refused
		}
		t.Run(r.name, func(t *testing.T) {
			conn := env.tenantConn(t, acmeRole).PgConn()
			_, err := conn.Prepare(ctx, "s1", selectSSN, nil)
			fatalIf(t, err, "prepare s1")
			mustEqual(t, "s1 before", execS1(t, conn, nil), "123-45-6789")
			if r.extended {
				for _, sql := range strings.Split(r.sql, ";") {
					fatalIf(t, conn.ExecParams(ctx, sql, nil, nil, nil, nil).Read().Err, "%s", sql)
				}
			} else {
				_, err := conn.Exec(ctx, r.sql).ReadAll()
				fatalIf(t, err, "%s", r.sql)
			}
			mustEqual(t, "s1 redefined", execS1(t, conn, nil), r.want)
			mustEqual(t, "s1 again", execS1(t, conn, nil), r.want)
		})
	}

	t.Run("portal closed and declared again", func(t *testing.T) {
		conn := env.tenantConn(t, acmeRole).PgConn()
		_, err := conn.Prepare(ctx, "s2", selectSSN, nil)
		fatalIf(t, err, "prepare s2")
		_, err = conn.Exec(ctx, `BEGIN`).ReadAll()
		fatalIf(t, err, "begin")
		_, e := roundTrip(t, conn, &pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "s2"})
		if e != nil {
			t.Fatalf("bind p: %s", e.Message)
		}
		_, err = conn.Exec(ctx, `CLOSE p; DECLARE p CURSOR FOR `+selectDiagnosis).ReadAll()
		fatalIf(t, err, "close and declare p")
		rows, e := roundTrip(t, conn, &pgproto3.Execute{Portal: "p"})
		if e != nil {
			t.Fatalf("execute p: %s", e.Message)
		}
		mustEqual(t, "rows", strings.Join(rows, ","), "flu")
		_, err = conn.Exec(ctx, `COMMIT`).ReadAll()
		fatalIf(t, err, "commit")
	})

	t.Run("cursor declared in SQL, executed through the protocol", func(t *testing.T) {
		conn := env.tenantConn(t, acmeRole).PgConn()
		_, err := conn.Exec(ctx, `BEGIN; DECLARE c CURSOR WITH HOLD FOR `+selectSSN).ReadAll()
		fatalIf(t, err, "declare c")
		rows, e := roundTrip(t, conn, &pgproto3.Execute{Portal: "c", MaxRows: 1})
		if e != nil {
			t.Fatalf("execute c: %s", e.Message)
		}
		mustEqual(t, "rows in the transaction", strings.Join(rows, ","), "123-45-6789")
		_, err = conn.Exec(ctx, `COMMIT`).ReadAll()
		fatalIf(t, err, "commit")
		_, err = conn.Exec(ctx, `MOVE ABSOLUTE 0 IN c`).ReadAll()
		fatalIf(t, err, "rewind c")
		rows, e = roundTrip(t, conn, &pgproto3.Execute{Portal: "c"})
		if e != nil {
			t.Fatalf("execute c after commit: %s", e.Message)
		}
		mustEqual(t, "rows of the held cursor", strings.Join(rows, ","), "123-45-6789")
	})
}

// TestSyntaxErrorAsPostgreSQL: a text pgcloak must analyse but cannot parse
// is refused with PostgreSQL's own SQLSTATE, message and position.
func TestSyntaxErrorAsPostgreSQL(t *testing.T) {
	env := startEncrypted(t)
	ctx := ctxT(t)
	conn := env.tenantConn(t, acmeRole).PgConn()
	for _, sql := range []string{
		`SELEC * FROM patients`,
		`SELECT * FROM patients WHERE ssn = 'x' AND`,
		`SELECT 'éé', * FRM patients`,
		`select 1; select * from patients where (`,
	} {
		_, direct := env.pool.Exec(ctx, sql)
		var want *pgconn.PgError
		if !errors.As(direct, &want) {
			t.Fatalf("%s: PostgreSQL accepted it: %v", sql, direct)
		}
		for _, p := range protocols {
			var got *pgconn.PgError
			if err := p.run(ctx, conn, sql); !errors.As(err, &got) {
				t.Errorf("%s %s: got %v, want an error", p.name, sql, err)
				continue
			}
			if got.Code != want.Code || got.Position != want.Position || got.Message != "pgcloak: "+want.Message || got.Hint != want.Hint {
				t.Errorf("%s %s: got %s %q at %d hint %q, want %s %q at %d hint %q", p.name, sql,
					got.Code, got.Message, got.Position, got.Hint, want.Code, "pgcloak: "+want.Message, want.Position, want.Hint)
			}
		}
	}
}
