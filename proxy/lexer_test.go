package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pgcloak/pgcloak/audit"
	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/testenv"
)

// A server of its own that logs every statement and every error with its
// statement, for tests that check what reaches PostgreSQL's log.
var logged struct {
	once sync.Once
	pg   *testenv.Postgres
	err  error
}

// Roles of the logged server besides the encryption tests' own.
const (
	sjisRole     = "sjis_app"     // tenant "sjis", role default client_encoding SJIS
	scsRole      = "scs_app"      // tenant "scs", role default standard_conforming_strings off
	upstreamRole = "pgcloak_self" // the proxy's upstream.user in these tests
)

func loggedPostgres(t testing.TB) *testenv.Postgres {
	t.Helper()
	logged.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		logged.pg, logged.err = testenv.Start(ctx, testenv.Options{ExtraConf: map[string]string{
			"log_statement":            "all",
			"log_min_error_statement":  "error",
			"log_min_messages":         "warning",
			"log_error_verbosity":      "verbose",
			"log_parameter_max_length": "-1",
		}})
		if logged.err != nil {
			return
		}
		for _, r := range []string{acmeRole, globexRole, migratorRole, sjisRole, scsRole, upstreamRole} {
			if logged.err = logged.pg.Exec(ctx, "", fmt.Sprintf(`create role %s login password '%s'`, r, rolePassword)); logged.err != nil {
				return
			}
		}
		logged.err = logged.pg.Exec(ctx, "", `alter role sjis_app set client_encoding = 'SJIS';
			alter role scs_app set standard_conforming_strings = off`)
	})
	if logged.err != nil {
		t.Fatal(logged.err)
	}
	return logged.pg
}

// startLogged is startEncrypted on the logged server, with the roles above
// as tenants and upstream.user set to upstreamRole (which the unscoped glob
// "pgcloak_*" also matches).
func startLogged(t *testing.T) *encryptedEnv {
	t.Helper()
	pg := loggedPostgres(t)
	ctx := ctxT(t)
	db := testenv.NewDatabase(t, pg)
	pool, err := pgxpool.New(ctx, pg.SuperuserURL(db))
	fatalIf(t, err, "pool")
	t.Cleanup(pool.Close)
	pinner := installPin(t, pool)
	fatalIf(t, pg.Exec(ctx, db, patientsDDL+`
		grant select, insert on patients to sjis_app, scs_app;
		grant usage on sequence patients_id_seq to sjis_app, scs_app;
		create function lex_sjis() returns void language plpgsql
			as $$ begin perform pg_catalog.set_config('client_encoding', 'SJIS', false); end $$;
		create function lex_scs_off() returns void language plpgsql
			as $$ begin perform pg_catalog.set_config('standard_conforming_strings', 'off', false); end $$;
		grant execute on function lex_sjis(), lex_scs_off() to public;`), "schema")
	env := &encryptedEnv{pg: pg, db: db, pool: pool, audit: &syncBuffer{b: &bytes.Buffer{}}, logs: &syncBuffer{b: &bytes.Buffer{}}}
	env.proxy = startProxyDeps(t, pg, Deps{Pool: pool, Keys: newTestKeys(t, pool), Pinner: pinner, Audit: audit.New(env.audit)}, env.logs, func(c *Config) {
		c.Upstream.User = upstreamRole
		c.Tenancy = config.Tenancy{
			Setting: "app.tenant_id",
			Mode:    config.ModeLogin,
			Login: config.LoginTenancy{Roles: map[string]string{
				acmeRole: "acme", globexRole: "globex", sjisRole: "sjis", scsRole: "scs",
			}},
			UnscopedRoles: []string{migratorRole, "postgres", testenv.TrustUser, "pgcloak_*"},
		}
		c.Encrypt = patientsDecl()
	})
	return env
}

// pgConnect logs in through the proxy with pgconn, with the startup
// parameters params on top of pgconn's (a "" value removes one).
func (e *encryptedEnv) pgConnect(t *testing.T, role string, params map[string]string) (*pgconn.PgConn, error) {
	t.Helper()
	cfg, err := pgconn.ParseConfig(e.proxy.url(role, rolePassword, e.db))
	fatalIf(t, err, "parse config")
	for k, v := range params {
		if v == "" {
			delete(cfg.RuntimeParams, k)
		} else {
			cfg.RuntimeParams[k] = v
		}
	}
	conn, err := pgconn.ConnectConfig(ctxT(t), cfg)
	if err == nil {
		t.Cleanup(func() { conn.Close(context.Background()) })
	}
	return conn, err
}

// pgErr returns err's *pgconn.PgError, failing the test when there is none.
func pgErr(t *testing.T, err error) *pgconn.PgError {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		t.Fatalf("got %v, want a PostgreSQL error", err)
	}
	return pe
}

// logHas reports whether the logged server's log contains s, after the
// server has had a moment to write what it was sent.
func logHas(t *testing.T, pg *testenv.Postgres, s string) bool {
	t.Helper()
	time.Sleep(200 * time.Millisecond)
	b, err := os.ReadFile(pg.LogFile)
	fatalIf(t, err, "read the server log")
	return bytes.Contains(b, []byte(s))
}

func TestLexerGuardStartupParameters(t *testing.T) {
	env := startLogged(t)
	refused := []struct {
		name   string
		role   string
		params map[string]string
		want   string
	}{
		{"client_encoding SJIS", acmeRole, map[string]string{"client_encoding": "SJIS"}, "client_encoding"},
		{"client_encoding big5, lower case", acmeRole, map[string]string{"client_encoding": "big5"}, "client_encoding"},
		{"standard_conforming_strings off", acmeRole, map[string]string{"standard_conforming_strings": "off"}, "standard_conforming_strings"},
		{"parameter name in upper case", acmeRole, map[string]string{"STANDARD_CONFORMING_STRINGS": "false"}, "standard_conforming_strings"},
		{"options -c", acmeRole, map[string]string{"options": "-c client_encoding=sjis"}, "client_encoding"},
		{"options -cNAME", acmeRole, map[string]string{"options": "-cclient_encoding=GBK"}, "client_encoding"},
		{"options --NAME with dashes", acmeRole, map[string]string{"options": "--client-encoding=sjis"}, "client_encoding"},
		{"options after another setting", acmeRole, map[string]string{"options": "-c search_path=public   -c\tstandard_conforming_strings=off"}, "standard_conforming_strings"},
		{"options grouped flags", acmeRole, map[string]string{"options": "-ec CLIENT_ENCODING=gb18030"}, "client_encoding"},
		{"options escaped space in the value", acmeRole, map[string]string{"options": `-c application_name=a\ b -c client_encoding=SJIS`}, "client_encoding"},
		{"unscoped role when tables are declared", migratorRole, map[string]string{"options": "-c standard_conforming_strings=off"}, "standard_conforming_strings"},
	}
	for _, c := range refused {
		t.Run("refused/"+c.name, func(t *testing.T) {
			_, err := env.pgConnect(t, c.role, c.params)
			pe := pgErr(t, err)
			mustEqual(t, "SQLSTATE", pe.Code, "0A000")
			mustEqual(t, "severity", pe.Severity, "FATAL")
			if !strings.HasPrefix(pe.Message, "pgcloak: ") || !strings.Contains(pe.Message, c.want) {
				t.Errorf("message: got %q, want pgcloak: ...%s...", pe.Message, c.want)
			}
		})
	}
	t.Run("refused only after authentication", func(t *testing.T) {
		cfg, err := pgconn.ParseConfig(env.proxy.url(acmeRole, "wrong", env.db))
		fatalIf(t, err, "parse config")
		cfg.RuntimeParams["client_encoding"] = "SJIS"
		_, err = pgconn.ConnectConfig(ctxT(t), cfg)
		mustEqual(t, "SQLSTATE with a wrong password", pgErr(t, err).Code, "28P01")
	})
	accepted := []struct {
		name   string
		params map[string]string
		want   string // client_encoding
	}{
		{"utf-8", map[string]string{"client_encoding": "utf-8"}, "UTF8"},
		{"Unicode", map[string]string{"client_encoding": "Unicode"}, "UTF8"},
		{"SQL_ASCII", map[string]string{"client_encoding": "SQL_ASCII"}, "SQL_ASCII"},
		{"scs yes", map[string]string{"standard_conforming_strings": "yes"}, "UTF8"},
		{"options on", map[string]string{"options": "-c standard_conforming_strings=on -c client_encoding=UTF8"}, "UTF8"},
		// One argument: application_name is set to all of it.
		{"options escaped", map[string]string{"options": `-c application_name=x\ -c\ client_encoding=SJIS`}, "UTF8"},
	}
	for _, c := range accepted {
		t.Run("accepted/"+c.name, func(t *testing.T) {
			conn, err := env.pgConnect(t, acmeRole, c.params)
			fatalIf(t, err, "connect")
			res, err := conn.Exec(ctxT(t), `show client_encoding`).ReadAll()
			fatalIf(t, err, "show client_encoding")
			mustEqual(t, "client_encoding", string(res[0].Rows[0][0]), c.want)
		})
	}
}

func TestLexerGuardParameterStatus(t *testing.T) {
	env := startLogged(t)
	ctx := ctxT(t)
	// expectRefused runs sql in the simple and then the extended protocol
	// and wants 0A000 naming reason both times, with nothing of sql in the
	// server's log.
	expectRefused := func(t *testing.T, conn *pgconn.PgConn, marker, reason string) {
		t.Helper()
		sql := fmt.Sprintf(`select '%s'`, marker)
		_, err := conn.Exec(ctx, sql).ReadAll()
		pe := pgErr(t, err)
		mustEqual(t, "SQLSTATE (simple)", pe.Code, "0A000")
		if !strings.HasPrefix(pe.Message, "pgcloak: "+reason) {
			t.Errorf("message: got %q, want pgcloak: %s...", pe.Message, reason)
		}
		_, err = conn.ExecParams(ctx, sql+` where $1::int = 1`, [][]byte{[]byte("1")}, nil, nil, nil).Close()
		mustEqual(t, "SQLSTATE (extended)", pgErr(t, err).Code, "0A000")
		_, err = conn.Exec(ctx, `reset client_encoding; reset standard_conforming_strings`).ReadAll()
		mustEqual(t, "SQLSTATE of a reset", pgErr(t, err).Code, "0A000")
		if logHas(t, env.pg, marker) {
			t.Errorf("a refused statement (%s) reached PostgreSQL", marker)
		}
	}
	t.Run("role default client_encoding", func(t *testing.T) {
		conn, err := env.pgConnect(t, sjisRole, map[string]string{"client_encoding": ""})
		fatalIf(t, err, "connect")
		mustEqual(t, "client_encoding reported", conn.ParameterStatus("client_encoding"), "SJIS")
		expectRefused(t, conn, "lexmarker-role-sjis", `client_encoding is "SJIS"`)
	})
	t.Run("role default overridden by the client", func(t *testing.T) {
		conn, err := env.pgConnect(t, sjisRole, map[string]string{"client_encoding": "UTF8"})
		fatalIf(t, err, "connect")
		_, err = conn.Exec(ctx, `select 1`).ReadAll()
		fatalIf(t, err, "select 1")
	})
	t.Run("role default standard_conforming_strings", func(t *testing.T) {
		conn, err := env.pgConnect(t, scsRole, nil)
		fatalIf(t, err, "connect")
		expectRefused(t, conn, "lexmarker-role-scs", `standard_conforming_strings is "off"`)
	})
	t.Run("function sets client_encoding", func(t *testing.T) {
		conn, err := env.pgConnect(t, acmeRole, nil)
		fatalIf(t, err, "connect")
		_, err = conn.Exec(ctx, `select lex_sjis()`).ReadAll()
		fatalIf(t, err, "select lex_sjis()")
		expectRefused(t, conn, "lexmarker-fn-sjis", `client_encoding is "SJIS"`)
	})
	t.Run("function sets standard_conforming_strings", func(t *testing.T) {
		conn, err := env.pgConnect(t, acmeRole, nil)
		fatalIf(t, err, "connect")
		_, err = conn.ExecParams(ctx, `select lex_scs_off()`, nil, nil, nil, nil).Close()
		fatalIf(t, err, "select lex_scs_off()")
		expectRefused(t, conn, "lexmarker-fn-scs", `standard_conforming_strings is "off"`)
	})
	t.Run("other sessions are not affected", func(t *testing.T) {
		conn, err := env.pgConnect(t, acmeRole, nil)
		fatalIf(t, err, "connect")
		_, err = conn.Exec(ctx, `select 'lexmarker-fine'`).ReadAll()
		fatalIf(t, err, "select")
		if !logHas(t, env.pg, "lexmarker-fine") {
			t.Error("the server log does not show an accepted statement; is log_statement on?")
		}
	})
}

// TestRefusalsKeepClientTextOutOfTheLog: a refusal is raised through
// PostgreSQL, which logs the raising statement and its error; neither may
// hold the client's text, while the client gets the full message with the
// declared column's SCHEMA, TABLE and COLUMN fields.
func TestRefusalsKeepClientTextOutOfTheLog(t *testing.T) {
	env := startLogged(t)
	ctx := ctxT(t)
	conn, err := env.pgConnect(t, acmeRole, nil)
	fatalIf(t, err, "connect")
	cases := []struct {
		name, sql, marker, contains, column string
	}{
		{"operator", `select * from patients where ssn < 'lexmarker-op'`, "lexmarker-op", `public.patients.ssn is encrypted; operator "<"`, "ssn"},
		{"function", `select upper(diagnosis) || 'lexmarker-fn' from patients`, "lexmarker-fn", "public.patients.diagnosis is encrypted", "diagnosis"},
		// The syntax error's message quotes the client's text.
		{"syntax", `select ssn from patients where ssn = 'x' lexmarkersyntax frm`, "lexmarkersyntax", "lexmarkersyntax", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			check := func(proto string, err error) {
				t.Helper()
				pe := pgErr(t, err)
				if !strings.HasPrefix(pe.Message, "pgcloak: ") || !strings.Contains(pe.Message, c.contains) {
					t.Errorf("%s: message %q, want pgcloak: ...%s...", proto, pe.Message, c.contains)
				}
				if pe.Detail != "" || pe.Where != "" {
					t.Errorf("%s: detail %q, where %q: want the proxy's own raise hidden", proto, pe.Detail, pe.Where)
				}
				if c.column != "" {
					mustEqual(t, proto+" SCHEMA", pe.SchemaName, "public")
					mustEqual(t, proto+" TABLE", pe.TableName, "patients")
					mustEqual(t, proto+" COLUMN", pe.ColumnName, c.column)
				}
			}
			_, err := conn.Exec(ctx, c.sql).ReadAll()
			check("simple", err)
			_, err = conn.Prepare(ctx, "", c.sql, nil)
			check("extended", err)
			_, err = conn.Exec(ctx, `begin; select 1; `+c.sql+`; commit`).ReadAll()
			check("in a multi-statement query", err)
			// As PostgreSQL: a syntax error runs none of the text, a refusal
			// aborts the block the statements before it opened.
			wantTx := byte('E')
			if c.name == "syntax" {
				wantTx = 'I'
			}
			mustEqual(t, "transaction status after the refusal in a block", conn.TxStatus(), wantTx)
			_, err = conn.Exec(ctx, `rollback`).ReadAll()
			fatalIf(t, err, "rollback")
			if logHas(t, env.pg, c.marker) {
				t.Errorf("%s reached PostgreSQL's log", c.marker)
			}
			if !logHas(t, env.pg, raisedMessage) {
				t.Errorf("%q is not in the server log; is log_min_error_statement on?", raisedMessage)
			}
			// The session goes on.
			_, err = conn.Exec(ctx, `select 1`).ReadAll()
			fatalIf(t, err, "after the refusal")
		})
	}
	t.Run("a skipped raise does not shift later messages", func(t *testing.T) {
		// The first statement fails upstream, so the raise after it never
		// runs; the next refusal must still get its own message.
		_, err := conn.Exec(ctx, `select 1/0; select * from patients where ssn < 'x'`).ReadAll()
		mustEqual(t, "first error", pgErr(t, err).Code, "22012")
		_, err = conn.Exec(ctx, `select * from patients order by email`).ReadAll()
		if pe := pgErr(t, err); !strings.Contains(pe.Message, "public.patients.email is encrypted") || pe.ColumnName != "email" {
			t.Errorf("got %q (column %q), want the ORDER BY email refusal", pe.Message, pe.ColumnName)
		}
	})
}

func TestUpstreamUserLoginRefused(t *testing.T) {
	env := startLogged(t)
	t.Run("right password", func(t *testing.T) {
		_, err := env.pgConnect(t, upstreamRole, nil)
		pe := pgErr(t, err)
		mustEqual(t, "SQLSTATE", pe.Code, "28000")
		if !strings.HasPrefix(pe.Message, "pgcloak: ") || !strings.Contains(pe.Message, "upstream.user") {
			t.Errorf("message: got %q, want pgcloak: ...upstream.user...", pe.Message)
		}
		if !strings.Contains(env.audit.String(), `"sqlstate":"28000"`) {
			t.Errorf("audit: no refused login recorded:\n%s", env.audit.String())
		}
	})
	t.Run("wrong password gets PostgreSQL's own error", func(t *testing.T) {
		cfg, err := pgconn.ParseConfig(env.proxy.url(upstreamRole, "wrong", env.db))
		fatalIf(t, err, "parse config")
		_, err = pgconn.ConnectConfig(ctxT(t), cfg)
		mustEqual(t, "SQLSTATE", pgErr(t, err).Code, "28P01")
	})
	t.Run("another role matching the same glob", func(t *testing.T) {
		ctx := ctxT(t)
		fatalIf(t, env.pg.Exec(ctx, "", `do $$ begin create role pgcloak_other login password '`+rolePassword+`'; exception when duplicate_object then null; end $$`), "create role")
		_, err := env.pgConnect(t, "pgcloak_other", nil)
		fatalIf(t, err, "login as an unscoped role that is not upstream.user")
	})
}
