package rewrite

import (
	"fmt"
	"strings"
	"testing"

	"github.com/pgcloak/pgcloak/config"
)

// TestMightNeedTenantAnalysis tries to hide the keywords of opaque
// statements from the pre-check of sessions with a tenant: every text that
// Analyze reports as Opaque must be analysed.
func TestMightNeedTenantAnalysis(t *testing.T) {
	s := NewSchema(config.Encrypt{}, "app.tenant_id")
	tests := []struct {
		sql  string
		want bool
	}{
		{"SELECT * FROM docs", false},
		{"SELECT current_user", false},
		{"SELECT * FROM users WHERE viewed", false},
		{"SELECT * FROM reviews_view_x", false},
		{"INSERT INTO todo (done) VALUES (true)", false},
		{"DO $$BEGIN NULL; END$$", true},
		{"/**/DO/**/$$BEGIN NULL; END$$", true},
		{"dO$x$BEGIN NULL; END$x$", true},
		{"--c\nDo $$ $$", true},
		{"SELECT 1;DO $$ $$", true},
		{"CREATE/**/FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql", true},
		{"create or replace procedure p() language sql as 'select 1'", true},
		{"ALTER ROUTINE r() SECURITY DEFINER", true},
		{"CREATE RULE r AS ON INSERT TO t DO INSTEAD NOTHING", true},
		{"CREATE TRIGGER t BEFORE INSERT ON x FOR EACH ROW EXECUTE FUNCTION f()", true},
		{"CREATE MATERIALIZED VIEW m AS SELECT 1", true},
		{"CREATE VIEW\tv AS SELECT 1", true},
		{"ALTER USER u SET work_mem = '1MB'", true},
		{"ALTER DATABASE d SET work_mem = '1MB'", true},
		{"ALTER ROLE r SET work_mem = '1MB'", true},
		{"CREATE AGGREGATE x(text, boolean) (SFUNC = set_config, STYPE = text)", true},
		{"create operator === (leftarg = text, rightarg = text, function = texteq)", true},
		{"CREATE CAST (int4 AS text) WITH FUNCTION f(int4)", true},
		{"select 1 from x where y=1do", true}, // digits separate: errs towards parsing
	}
	for _, tt := range tests {
		if got := s.MightNeedTenantAnalysis(tt.sql); got != tt.want {
			t.Errorf("MightNeedTenantAnalysis(%q) = %v, want %v", tt.sql, got, tt.want)
		}
		if tt.want {
			continue
		}
		plan, err := s.Analyze(tt.sql)
		if err == nil && plan.Opaque != nil {
			t.Errorf("%q: skipped by the pre-check but Opaque", tt.sql)
		}
	}
	if n := testing.AllocsPerRun(100, func() { s.MightNeedTenantAnalysis(passthroughQuery) }); n != 0 {
		t.Errorf("MightNeedTenantAnalysis allocates %v times per run, want 0", n)
	}
}

// TestLexerChangeWithoutTables: without declared tables a change of a lexer
// setting is not refused by Analyze (unscoped sessions may make it) but
// reported in Plan.LexerChange, and the plan is not passthrough.
func TestLexerChangeWithoutTables(t *testing.T) {
	s := NewSchema(config.Encrypt{}, "app.tenant_id")
	tests := []struct {
		sql       string
		construct string
	}{
		{"SET client_encoding TO 'SJIS'", "SET client_encoding"},
		{"SET NAMES 'GBK'", "SET client_encoding"},
		{"SET standard_conforming_strings = off", "SET standard_conforming_strings"},
		{"SELECT 1; SELECT pg_catalog.set_config('standard_conforming_strings', 'off', false)", "set_config() of standard_conforming_strings"},
		{"SET client_encoding = 'utf8'", ""},
	}
	for _, tt := range tests {
		plan, err := s.Analyze(tt.sql)
		if err != nil {
			t.Errorf("%q: %v", tt.sql, err)
			continue
		}
		switch {
		case tt.construct == "" && (plan.LexerChange != nil || !plan.Passthrough):
			t.Errorf("%q: LexerChange %v, passthrough %v; want none, true", tt.sql, plan.LexerChange, plan.Passthrough)
		case tt.construct != "" && (plan.LexerChange == nil || plan.Passthrough):
			t.Errorf("%q: LexerChange %v, passthrough %v; want one, false", tt.sql, plan.LexerChange, plan.Passthrough)
		case tt.construct != "" && plan.LexerChange.Construct != tt.construct:
			t.Errorf("%q: construct %q, want %q", tt.sql, plan.LexerChange.Construct, tt.construct)
		}
	}
}

// TestPreparedUses: Plan.Prepared lists every use of a prepared statement
// name in text order, passthrough plans included.
func TestPreparedUses(t *testing.T) {
	s := testSchema(t)
	plan, err := s.Analyze(`PREPARE p AS SELECT 1; EXECUTE p; EXECUTE "Q"(1); DEALLOCATE p; CREATE TABLE x AS EXECUTE r('a'); EXPLAIN EXECUTE s(2); DEALLOCATE ALL; DISCARD ALL`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, u := range plan.Prepared {
		got = append(got, fmt.Sprintf("%d %s %v", u.Op, u.Name, u.Args))
	}
	want := []string{"1 p false", "2 p false", "2 Q true", "3 p false", "2 r true", "2 s true", "3  false", "3  false"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("Prepared = %q, want %q", got, want)
	}
	if plan, err := s.Analyze(`EXECUTE p(1)`); err != nil || !plan.Passthrough || len(plan.Prepared) != 1 {
		t.Errorf("EXECUTE p(1): %+v, %v; want a passthrough plan with one use", plan, err)
	}
}

// TestOutlives: the statements that leave rows past their transaction
// outside row-level security, however spelt and wherever nested, are named
// by Plan.Outlives and reach the analysis in token sessions; the forms
// that end with the transaction are not.
func TestOutlives(t *testing.T) {
	s := NewSchema(config.Encrypt{}, "app.tenant_id")
	tests := []struct {
		sql, want string
	}{
		{"DECLARE c CURSOR WITH HOLD FOR SELECT 1", "DECLARE ... WITH HOLD"},
		{"declare c binary no scroll cursor with hold for select 1", "DECLARE ... WITH HOLD"},
		{"create temp table t (x int)", "CREATE TEMPORARY TABLE"},
		{"CREATE LOCAL TEMPORARY TABLE t (x int)", "CREATE TEMPORARY TABLE"},
		{"create table pg_temp.t (x int)", "CREATE TEMPORARY TABLE"},
		{`create table "pg_temp".t (x int)`, "CREATE TEMPORARY TABLE"},
		{"create temp table t (x int) on commit delete rows", "CREATE TEMPORARY TABLE"},
		{"create temp table t as select 1", "a temporary table made by CREATE TABLE AS or SELECT INTO"},
		{"select 1 as x into temporary t", "a temporary table made by CREATE TABLE AS or SELECT INTO"},
		{"explain analyze create temp table t as select 1", "a temporary table made by CREATE TABLE AS or SELECT INTO"},
		{"select 1; create temp table t (x int)", "CREATE TEMPORARY TABLE"},
		{"create temp sequence q", "CREATE TEMPORARY SEQUENCE"},
		{"create sequence pg_temp.q", "CREATE TEMPORARY SEQUENCE"},
		{"CREATE SEQUENCE pg_temp_3.q", "CREATE TEMPORARY SEQUENCE"},
		{"create domain pg_temp.text as pg_catalog.text check (value <> '')", "a domain in pg_temp"},
		{`CREATE DOMAIN "pg_temp".int8 AS bigint`, "a domain in pg_temp"},
		{"create type pg_temp.t as (a int)", "a type in pg_temp"},
		{"create type pg_temp.e as enum ('a')", "a type in pg_temp"},
		{"create type pg_temp.r as range (subtype = int4)", "a type in pg_temp"},
		{"create type pg_temp.b", "an object in pg_temp"},
		{"set search_path = pg_temp, public", "a search_path that names pg_temp"},
		{"SET LOCAL search_path TO public, PG_TEMP", "a search_path that names pg_temp"},
		{"set search_path = pg_temp_3", "a search_path that names pg_temp"},
		{"select set_config('search_path', 'pg_temp,public', false)", "a search_path that names pg_temp"},
		{"select set_config('search_path', current_setting('x'), false)", "a search_path that names pg_temp"},
		{"set search_path = public, \"$user\"", ""},
		{"select set_config('search_path', 'public', false)", ""},
		{"alter sequence t_id_seq owned by none", "ALTER SEQUENCE ... OWNED BY"},
		{"create temp table t (id serial) on commit drop; alter sequence pg_temp.t_id_seq owned by none", "ALTER SEQUENCE ... OWNED BY"},
		{"alter sequence q restart", ""},
		{"create sequence q", ""},
		{"create domain d as text", ""},
		{"DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1", ""},
		{"declare c cursor for select 1", ""},
		{"create temp table t (x int) on commit drop", ""},
		{"create temp table t on commit drop as select 1", ""},
		{"create table t (x int)", ""},
		{"select * from holdings", ""},
	}
	for _, tt := range tests {
		plan, err := s.Analyze(tt.sql)
		if err != nil {
			t.Errorf("%q: %v", tt.sql, err)
			continue
		}
		if plan.Outlives != tt.want {
			t.Errorf("%q: Outlives %q, want %q", tt.sql, plan.Outlives, tt.want)
		}
		if tt.want != "" && !s.MightNeedTokenAnalysis(tt.sql) {
			t.Errorf("%q: skipped by the token sessions' pre-check", tt.sql)
		}
	}
	if s.MightNeedTokenAnalysis("select * from holdings where temperature > 3") {
		t.Errorf("the token pre-check matches words inside other words")
	}
}
