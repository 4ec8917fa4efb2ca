package rewrite

import (
	"errors"
	"strings"
	"testing"

	"github.com/pgcloak/pgcloak/config"
)

// Review 12: the fixes for the breaks of review 12B.

// r12Analyze analyses sql and returns the refusal's SQLSTATE ("" when the
// text is accepted) and the plan.
func r12Analyze(t *testing.T, s *Schema, sql string) (string, *Plan) {
	t.Helper()
	plan, err := s.Analyze(sql)
	if err == nil {
		return "", plan
	}
	var r *Refusal
	if !errors.As(err, &r) {
		t.Fatalf("%s: %v is not a Refusal", sql, err)
	}
	return r.Code, nil
}

// TestReview12NumberText: a number bound for a string column is accepted
// only when written as PostgreSQL prints it, in the exact and the shape
// path; number columns are unchanged.
func TestReview12NumberText(t *testing.T) {
	s := testSchema(t)
	for _, c := range []struct {
		sql  string
		code string // "" when accepted
		seal string // the value sealed or indexed when accepted
	}{
		{`INSERT INTO patients (name, ssn) VALUES ('n', 1e3::text)`, "0A000", ""},
		{`INSERT INTO patients (ssn) VALUES (1.5e1::varchar)`, "0A000", ""},
		{`INSERT INTO patients (ssn) VALUES (.5::text)`, "0A000", ""},
		{`INSERT INTO patients (ssn) VALUES (007.50)`, "0A000", ""},
		{`INSERT INTO patients (ssn) VALUES (0012345678901)`, "0A000", ""},
		{`INSERT INTO patients (ssn) VALUES (-0.0)`, "0A000", ""},
		{`INSERT INTO patients (ssn) VALUES (-0.0::text)`, "0A000", ""},
		{`INSERT INTO patients (ssn) VALUES (1.50e0)`, "0A000", ""},
		{`UPDATE patients SET ssn = 1e3::text WHERE id = 1`, "0A000", ""},
		{`SELECT 1 FROM patients WHERE ssn = 1e3::text`, "0A000", ""},
		{`SELECT 1 FROM patients WHERE ssn IN (1e3::text)`, "0A000", ""},
		{`SELECT 1 FROM patients WHERE ssn = ANY(ARRAY[1e3::text])`, "0A000", ""},
		{`SELECT 1 FROM patients WHERE ssn = 007.5::text`, "0A000", ""},
		{`INSERT INTO patients (ssn) VALUES (7.50)`, "", "7.50"},
		{`INSERT INTO patients (ssn) VALUES (-7.50)`, "", "-7.50"},
		{`INSERT INTO patients (ssn) VALUES (0.5::text)`, "", "0.5"},
		{`INSERT INTO patients (ssn) VALUES (12345678901)`, "", "12345678901"},
		{`INSERT INTO patients (ssn) VALUES (007)`, "", "7"},
		{`INSERT INTO patients (ssn) VALUES (0)`, "", "0"},
		{`SELECT 1 FROM patients WHERE ssn = 1000::text`, "", "1000"},
		{`SELECT 1 FROM patients WHERE ssn IN (0.0::varchar)`, "", "0.0"},
	} {
		code, plan := r12Analyze(t, s, c.sql)
		if code != c.code {
			t.Errorf("%s: refusal %q, want %q", c.sql, code, c.code)
			continue
		}
		if plan == nil {
			continue
		}
		for _, sl := range plan.Slots {
			if sl.Value == nil || *sl.Value != c.seal {
				t.Errorf("%s: seals %v, want %q", c.sql, sl.Value, c.seal)
			}
		}
	}
	for _, c := range []struct {
		text string
		ok   bool
	}{
		{"0", true}, {"10", true}, {"-10", true}, {"0.0", true}, {"1.50", true}, {"-0.5", true},
		{"00", false}, {"007", false}, {"1e3", false}, {".5", false}, {"5.", false}, {"-0", false},
		{"-0.0", false}, {"-00.000", false}, {"+1", false}, {"0x1F", false}, {"1_000", false},
		{strings.Repeat("9", numericMaxIntDigits), true}, {strings.Repeat("9", numericMaxIntDigits+1), false},
		{"0." + strings.Repeat("1", numericMaxFracDigits), true}, {"0." + strings.Repeat("1", numericMaxFracDigits+1), false},
	} {
		if got := numberTextIsPG(c.text); got != c.ok {
			t.Errorf("numberTextIsPG(%.20q) = %v, want %v", c.text, got, c.ok)
		}
	}
	// The shape path: a number for a string column whose text is not
	// PostgreSQL's goes down the exact path (which refuses it); number
	// columns keep using shapes.
	cache := NewCache(16)
	for _, c := range []struct {
		sql   string
		shape bool
	}{
		{`INSERT INTO patients (name, ssn) VALUES ('n', 1e3::text)`, false},
		{`INSERT INTO patients (name, ssn) VALUES ('n', .5)`, false},
		{`INSERT INTO patients (name, ssn) VALUES ('n', 1.0e1)`, false},
		{`SELECT 1 FROM patients WHERE ssn = 1e3::varchar`, false},
		{`INSERT INTO patients (name, ssn) VALUES ('n', 0012345678901::text)`, false},
		{`INSERT INTO patients (name, ssn) VALUES ('n', 1000::text)`, true},
		{`INSERT INTO patients (name, ssn) VALUES ('n', 7.50::varchar)`, true},
	} {
		for range 2 {
			sp, lits := s.AnalyzeShape(cache, c.sql)
			if (sp != nil) != c.shape {
				t.Errorf("%s: shape %v, want %v (literals %d)", c.sql, sp != nil, c.shape, len(lits))
			}
		}
	}
}

// TestReview12SearchPath: with declared tables a search_path that puts
// pg_catalog after another schema, or whose value is not a constant, is
// refused in every form; and a type named like a pg_catalog one cannot be
// made where it would be found first.
func TestReview12SearchPath(t *testing.T) {
	s := testSchema(t)
	for _, c := range []struct {
		sql     string
		refused bool
	}{
		{`SET search_path = public, pg_catalog`, true},
		{`SET search_path TO "$user", public, "pg_catalog"`, true},
		{`SET LOCAL search_path = public, PG_CATALOG`, true},
		{`SET SESSION search_path = 'public', 'pg_catalog'`, true},
		{`SELECT set_config('search_path', 'public,pg_catalog', false)`, true},
		{`SELECT pg_catalog.set_config('SEARCH_PATH', 'public , "pg_catalog"', true)`, true},
		{`SELECT set_config('search_path', current_setting('x'), false)`, true},
		{`SELECT set_config('search_path', 'pg_catalog'::text, false)`, true},
		{`SELECT set_config('search_path', 'public, "pg_catalog', false)`, true},
		{`CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = public, pg_catalog AS 'SELECT 1'`, true},
		{`ALTER FUNCTION f() SET search_path = public, pg_catalog`, true},
		{`SELECT query_to_xml('SET search_path = public, pg_catalog', true, false, '')`, true},
		{`CREATE DOMAIN pg_temp.text AS pg_catalog.varchar(3)`, true},
		{`CREATE DOMAIN text AS pg_catalog.varchar(3)`, true},
		{`CREATE TYPE pg_temp.int4 AS ENUM ('a')`, true},
		{`CREATE TYPE pg_temp_3.uuid AS (a int)`, true},
		{`ALTER TYPE pg_temp.x RENAME TO _text`, true},
		{`SET search_path = pg_catalog, public`, false},
		{`SET search_path = public, "$user"`, false},
		{`SET search_path = "pg_catalog"`, false},
		{`SET search_path TO DEFAULT`, false},
		{`RESET search_path`, false},
		{`SELECT set_config('search_path', '', false)`, false},
		{`SELECT set_config('search_path', ' pg_catalog , public', false)`, false},
		{`SELECT set_config('search_path', 'public', false)`, false},
		{`CREATE DOMAIN public.text AS pg_catalog.varchar(3)`, false},
		{`CREATE DOMAIN pg_temp.ssn_t AS pg_catalog.text`, false},
		{`ALTER TABLE visits RENAME COLUMN note TO text`, false},
	} {
		code, _ := r12Analyze(t, s, c.sql)
		if (code != "") != c.refused {
			t.Errorf("%s: refusal %q, want refused %v", c.sql, code, c.refused)
		}
		if c.refused && code != "" && code != "0A000" {
			t.Errorf("%s: refused with %s, want 0A000", c.sql, code)
		}
		if c.refused && !s.MightNeedAnalysis(c.sql) {
			t.Errorf("%s: skipped by the pre-check", c.sql)
		}
	}
	// Without declared tables nothing depends on type names.
	none := NewSchema(config.Encrypt{}, "app.tenant_id")
	if _, err := none.Analyze(`SET search_path = public, pg_catalog`); err != nil {
		t.Errorf("without declared tables: %v", err)
	}
	for _, c := range []struct {
		in   string
		want []string
		ok   bool
	}{
		{``, nil, true},
		{`  `, nil, true},
		{`a, B ,"C"`, []string{"a", "b", "C"}, true},
		{`"a""b",c`, []string{`a"b`, "c"}, true},
		{`a,,b`, nil, false},
		{`a,`, nil, false},
		{`"a`, nil, false},
		{`a b`, nil, false},
	} {
		got, ok := splitIdentifierList(c.in)
		if ok != c.ok || strings.Join(got, "|") != strings.Join(c.want, "|") {
			t.Errorf("splitIdentifierList(%q) = %q, %v; want %q, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

// TestReview12TableExport: table_to_xml and its siblings are refused with
// declared tables wherever they appear, and the pre-check sees them.
func TestReview12TableExport(t *testing.T) {
	s := testSchema(t)
	for _, sql := range []string{
		`SELECT table_to_xml('patients', true, false, '')`,
		`SELECT table_to_xml('public.patients'::regclass::oid::regclass, false, true, '')`,
		`SELECT table_to_xmlschema('patients', true, false, '')`,
		`SELECT pg_catalog.table_to_xml_and_xmlschema('patients', true, false, '')`,
		`SELECT schema_to_xml('public', true, false, '')`,
		`SELECT Schema_To_Xmlschema('public', true, false, '')`,
		`SELECT schema_to_xml_and_xmlschema('public', true, false, '')`,
		`SELECT database_to_xml(true, false, '')`,
		`SELECT database_to_xmlschema(true, false, '')`,
		`SELECT database_to_xml_and_xmlschema(true, false, '')`,
		`SELECT cursor_to_xml('c', 10, true, false, '')`,
		`SELECT cursor_to_xmlschema('c', true, false, '')`,
		`SELECT * FROM visits v, LATERAL table_to_xml('patients', true, false, '') x`,
		`SELECT query_to_xml('SELECT table_to_xml(''patients'', true, false, '''')', true, false, '')`,
		`SELECT query_to_xml('SELECT query_to_xml(''SELECT database_to_xml(true, false, '''''''')'', true, false, '''')', true, false, '')`,
		`DO $$BEGIN PERFORM schema_to_xml('public', true, false, ''); END$$`,
		`CREATE FUNCTION f() RETURNS xml LANGUAGE sql AS $$SELECT database_to_xml(true, false, '')$$`,
		`CREATE FUNCTION f() RETURNS xml LANGUAGE sql BEGIN ATOMIC SELECT database_to_xml(true, false, ''); END`,
	} {
		code, _ := r12Analyze(t, s, sql)
		if code != "0A000" {
			t.Errorf("%s: refusal %q, want 0A000", sql, code)
		}
		if !s.MightNeedAnalysis(sql) {
			t.Errorf("%s: skipped by the pre-check", sql)
		}
	}
	for _, sql := range []string{
		`SELECT query_to_xml('SELECT 1', true, false, '')`,
		`SELECT xmlelement(name x, 'y')`,
	} {
		if code, _ := r12Analyze(t, s, sql); code != "" {
			t.Errorf("%s: refused %q", sql, code)
		}
	}
	none := NewSchema(config.Encrypt{}, "app.tenant_id")
	if _, err := none.Analyze(`SELECT table_to_xml('t', true, false, '')`); err != nil {
		t.Errorf("without declared tables: %v", err)
	}
}

// TestReview12UnresolvedQualifier: in a statement over a declared table a
// qualified reference named like a declared or index column whose
// qualifier names no relation in scope is refused; references that do
// resolve (outer queries included) and other names are not.
func TestReview12UnresolvedQualifier(t *testing.T) {
	s := testSchema(t)
	for _, c := range []struct {
		sql     string
		refused bool
	}{
		{`SELECT id FROM patients AS "P" WHERE p.ssn = 'x'`, true},
		{`SELECT id FROM patients AS pt WHERE patients.ssn = 'x'`, true},
		{`SELECT id FROM patients AS pt WHERE public.patients.ssn = 'x'`, true},
		{`SELECT 1 FROM patients p JOIN patients q USING (id) AS j WHERE j.ssn = 'x'`, true},
		{`SELECT 1 FROM patients p WHERE q.email IN ('a')`, true},
		{`SELECT 1 FROM patients p WHERE q.ssn_bidx IS NULL`, true},
		{`SELECT x.ssn FROM patients p`, true},
		{`SELECT 1 FROM patients p ORDER BY q.ssn`, true},
		{`UPDATE patients p SET name = 'n' WHERE patients.ssn = 'x'`, true},
		{`DELETE FROM patients p WHERE pp.ssn = 'x'`, true},
		{`SELECT 1 FROM visits v WHERE EXISTS (SELECT 1 FROM patients p WHERE z.ssn = 'x')`, true},
		{`INSERT INTO patients AS p (ssn) VALUES ('x') ON CONFLICT (id) DO UPDATE SET name = 'n' WHERE q.ssn IS NULL`, true},
		{`SELECT p.id FROM patients p WHERE p.ssn = 'x'`, false},
		{`SELECT j.id FROM patients p JOIN patients q USING (id) AS j WHERE p.ssn = 'x'`, false},
		{`SELECT 1 FROM patients p WHERE EXISTS (SELECT 1 FROM visits v WHERE p.ssn = 'x')`, false},
		{`SELECT 1 FROM patients p WHERE EXISTS (SELECT 1 FROM visits v WHERE EXISTS (SELECT 1 WHERE p.ssn = 'x'))`, false},
		{`SELECT 1 FROM patients p, LATERAL (SELECT p.id) l WHERE p.ssn = 'x'`, false},
		{`SELECT generate_series.ssn FROM patients p, generate_series(1, 2) WHERE p.ssn = 'x'`, false},
		{`SELECT 1 FROM patients p, ROWS FROM (generate_series(1, 2), unnest(ARRAY[1])) WHERE r.ssn = 'x'`, false},
		{`SELECT 1 FROM patients AS pt WHERE patients.name = 'x'`, false},
		{`SELECT x.ssn FROM visits v WHERE x.ssn = 'x'`, false},
		{`WITH c AS (SELECT id FROM patients) SELECT c.ssn FROM c`, false},
	} {
		code, _ := r12Analyze(t, s, c.sql)
		if (code != "") != c.refused {
			t.Errorf("%s: refusal %q, want refused %v", c.sql, code, c.refused)
		}
		if c.refused && code != "" && code != "42P01" {
			t.Errorf("%s: refused with %s, want 42P01", c.sql, code)
		}
	}
}
