package rewrite

import (
	"strings"
	"testing"

	"github.com/pgcloak/pgcloak/config"
)

// TestTenancyBattery: each text must be caught (refused, Opaque, Outlives
// or LexerChange) and the token pre-check must not skip it.
func TestTenancyBattery(t *testing.T) {
	s := NewSchema(config.Encrypt{}, "app.tenant_id")
	caught := []string{
		`CREATE DOMAIN d AS text DEFAULT set_config('app.tenant_id','b',false)`,
		`CREATE DOMAIN d AS text CHECK (set_config('standard_conforming_strings','off',false) IS NOT NULL)`,
		`CREATE TABLE t (a text GENERATED ALWAYS AS (set_config('app.tenant_id','b',false)) STORED)`,
		`CREATE INDEX ON t ((set_config('app.tenant_id', a, false)))`,
		`CREATE POLICY p ON t USING (set_config('app.tenant_id','b',true) = 'b')`,
		`ALTER TABLE t ALTER a TYPE text USING set_config('app.tenant_id', a, false)`,
		`CREATE STATISTICS s ON (set_config('app.tenant_id', a, false)) FROM t`,
		`SELECT pg_catalog."set_config"('app.tenant_id','b',false)`,
		`SELECT db.pg_catalog.set_config('app.tenant_id','b',false)`,
		`SELECT U&"set\005fconfig"('app.tenant_id','b',false)`,
		`SELECT U&"\0073et_config"(U&'app.tenant\005fid','b',false)`,
		`SELECT "SET_CONFIG"('app.tenant_id','b',false)`,
		`SELECT set_config(setting_name => 'app.tenant_id', new_value => 'b', is_local => false)`,
		`SELECT set_config('client_encoding', is_local => false, new_value => 'SJIS')`,
		`SELECT set_config('standard_conforming_strings' COLLATE "C", 'off', false)`,
		`SELECT set_config('standard_conforming_strings', 'of'::"char", false)`,
		`SELECT set_config($$app.tenant_id$$, 'b', false)`,
		`SELECT set_config(E'app.tenant\x5fid', 'b', false)`,
		`SELECT set_config('client_encoding', $1, false)`,
		`SELECT set_config($1, 'off', false)`,
		`SELECT * FROM ROWS FROM (set_config('app.tenant_id','b',false))`,
		`COPY (SELECT set_config('app.tenant_id','b',false)) TO STDOUT`,
		`SELECT (SELECT set_config('app.tenant_id','b',false) OPERATOR(pg_catalog.||) 'x')`,
		`TABLE pg_settings; UPDATE pg_catalog.pg_settings SET setting = 'b' WHERE name = 'app.tenant_id'`,
		`WITH x AS (UPDATE db.pg_catalog.pg_settings SET setting='off' WHERE name='standard_conforming_strings' RETURNING 1) SELECT 1`,
		`SELECT pgcloak.pin_next('a','b',1,2,false,'m')`,
		`SELECT "pgcloak"."pin"('a','b','m')`,
		`SELECT U&"pgcloak".pin('a','b','m')`,
		`SELECT db.pgcloak.pin('a','b','m')`,
		`CALL pgcloak.unpin()`,
		`SELECT pin_challenge()`,
		`SET search_path = "pg_temp", public`,
		`SELECT set_config('search_path', '"pg_temp",public', false)`,
		`SET SCHEMA 'pg_temp'`,
		`CREATE CAST (int4 AS text) WITHOUT FUNCTION`,
		`CREATE OPERATOR === (leftarg = text, rightarg = text, function = texteq)`,
		`CREATE AGGREGATE a (BASETYPE = text, SFUNC = set_config, STYPE = text)`,
		`SET NAMES 'SJIS'`,
		`SET client_encoding TO DEFAULT`,
		`SELECT set_config('session_authorization', 'x', false)`,
		`PREPARE p AS SELECT set_config('app.tenant_id', $1, false)`,
		`EXPLAIN ANALYZE SELECT set_config('app.tenant_id','b',false)`,
		`SELECT ts_stat(E'select set\x5fconfig(...)')`,
		`MERGE INTO pg_settings s USING (SELECT 1) v ON true WHEN MATCHED THEN UPDATE SET setting = 'b'`,
		`CREATE TEMP TABLE x (a int)`,
		`DECLARE c CURSOR WITH HOLD FOR SELECT 1`,
		`CREATE DOMAIN pg_temp.text AS pg_catalog.text`,
		`CREATE COLLATION pg_temp.c (locale = 'C')`,
		`ALTER SEQUENCE s OWNED BY NONE`,
	}
	for _, sql := range caught {
		plan, err := s.Analyze(sql)
		ok := err != nil || (plan != nil && (plan.Opaque != nil || plan.Outlives != "" || plan.LexerChange != nil))
		if !ok {
			t.Errorf("NOT CAUGHT: %q (plan passthrough=%v)", sql, plan.Passthrough)
		} else {
			t.Logf("caught: %q: %v", sql, err)
		}
		if !s.MightNeedTokenAnalysis(sql) {
			t.Errorf("PRECHECK SKIPS: %q", sql)
		}
	}
}

// TestDynamicQueryUnparsable (third review, 2026-12-07): a query for
// query_to_xml (or ts_stat, ts_rewrite, crosstab) that pg_query cannot
// parse because its tree is deeper than protobuf's recursion limit (a
// chain of 5000 ::int casts, which PostgreSQL accepts) was passed by
// dynamicQuery, and its set_config / pin_next, spelled with U& escapes,
// passed tenancyString. It must be refused.
func TestDynamicQueryUnparsable(t *testing.T) {
	s := NewSchema(config.Encrypt{}, "app.tenant_id")
	inner := `SELECT U&"set\005fconfig"(U&'app.tenant\005fid', 'globex', false) WHERE 1 = 1` + strings.Repeat("::int", 5000)
	sql := "SELECT query_to_xml('" + strings.ReplaceAll(inner, "'", "''") + "', true, false, '')"
	q := "'" + strings.ReplaceAll(inner, "'", "''") + "'"
	for _, sql := range []string{sql, "SELECT ts_stat(" + q + ")", "SELECT ts_rewrite('a'::tsquery, " + q + ")", "SELECT * FROM crosstab(" + q + ") AS t(a text)"} {
		plan, err := s.Analyze(sql)
		if err == nil {
			t.Errorf("%.40s... running set_config of the tenant setting passes Analyze (passthrough=%v)", sql, plan.Passthrough)
		}
	}
}
