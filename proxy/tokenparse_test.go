package proxy

import (
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v5"
)

// TestParseTokenStatementAgrees: the fast path for the plain SET form
// recognises exactly what PostgreSQL's grammar (pg_query) does, and
// leaves every other text to the parser.
func TestParseTokenStatementAgrees(t *testing.T) {
	for _, text := range []string{
		`SET LOCAL pgcloak.tenant_token = 'eyJh.eyJz.sig-_'`,
		`set local pgcloak.tenant_token='a.b.c'`,
		` SET  SESSION  pgcloak.tenant_token  TO  'a.b.c' `,
		"\nSET\tpgcloak.tenant_token\n=\n'abc'\n",
		`SET pgcloak.tenant_token TO''`,
		`SET LOCAL pgcloak.tenant_token = 'ab''c'`,
		`SET LOCAL pgcloak.tenant_token = E'a\x62c'`,
		`SET LOCAL pgcloak.tenant_token = /* c */ 'abc'`,
		`SET LOCAL pgcloak . tenant_token = 'abc'`,
		`SET LOCAL "pgcloak".tenant_token = 'abc'`,
		`SET LOCAL pgcloak.tenant_token = U&'abc'`,
		`SET LOCAL pgcloak.tenant_token = 'a b'`,
		`SET LOCAL pgcloak.tenant_tokens = 'abc'`,
		`RESET pgcloak.tenant_token`,
		`SET LOCAL pgcloak.tenant_token TO DEFAULT`,
		`SELECT pg_catalog.set_config('pgcloak.tenant_token', 'abc', true)`,
		`select set_config('pgcloak.tenant_token', $1, true)`,
		` SELECT pg_catalog . set_config ( 'PGCLOAK.TENANT_TOKEN' , $12 , FALSE ) `,
		`SELECT pg_catalog.set_config('pgcloak.tenant_token', 'a.b-c_d', false)`,
		`SELECT pg_catalog.set_config('pgcloak.tenant_token', $1::text, true)`,
		`SELECT pg_catalog.set_config('pgcloak.tenant_token', $1, true) AS x`,
		`SELECT pg_catalog.set_config('pgcloak.tenant_token', $1, 't')`,
		`SELECT pg_catalog.set_config('pgcloak.tenant_token', 'a''b', true)`,
		`SELECT pg_catalog.set_config('pgcloak.tenant_token', $1, true), 1`,
		`SELECT "set_config"('pgcloak.tenant_token', $1, true)`,
		`SELECT pg_catalog.set_config('pgcloak.tenant_token', $1, true) FROM t`,
	} {
		fast, fastErr := parseTokenStatement(text)
		var want *tokenStmt
		var wantErr error
		res, err := pg_query.Parse(text)
		if err != nil || len(res.Stmts) != 1 {
			t.Errorf("%q: pg_query: %v", text, err)
			continue
		}
		want, wantErr = tokenStatement(res.Stmts[0].Stmt)
		if (fastErr == nil) != (wantErr == nil) {
			t.Errorf("%q: error %v, the parser's %v", text, fastErr, wantErr)
			continue
		}
		if (fast == nil) != (want == nil) || fast != nil && *fast != *want {
			t.Errorf("%q: got %+v, the parser's %+v", text, fast, want)
		}
		if plainTokenSet.MatchString(text) && (want == nil || want.form != tokenSet) {
			t.Errorf("%q: the fast path took a text the parser does not read as SET", text)
		}
		if plainTokenSetConfig.MatchString(text) && (want == nil || want.form != tokenSetConfig) {
			t.Errorf("%q: the fast path took a text the parser does not read as set_config", text)
		}
	}
	// The fast path is taken for the usual forms.
	for _, text := range []string{`SELECT pg_catalog.set_config('pgcloak.tenant_token', $1, true)`, `select set_config('pgcloak.tenant_token', 'a.b.c', false)`} {
		if !plainTokenSetConfig.MatchString(text) {
			t.Errorf("%q: not on the fast path", text)
		}
	}
	for _, text := range []string{`SET LOCAL pgcloak.tenant_token = 'a.b.c'`, `set pgcloak.tenant_token to 'a.b.c'`} {
		if !plainTokenSet.MatchString(text) {
			t.Errorf("%q: not on the fast path", text)
		}
	}
}
