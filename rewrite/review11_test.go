package rewrite

import (
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgerrcode"

	"github.com/pgcloak/pgcloak/config"
)

// Review 11B (2026-12-08): column alias lists, window frame offsets,
// unvisited subscripts and type modifiers, queries given as text, and
// casts that change a value. Each case failed before its fix.

// r11Secret stands for plaintext bound for a declared column.
const r11Secret = "S3CRET-111-11-1111"

// r11Want is what Analyze must do with a text.
type r11Want int

const (
	r11Refused     r11Want = iota // a 0A000 refusal
	r11NoPlaintext                // refused, or rewritten without the secret in its text
	r11Rewritten                  // accepted and rewritten (no refusal, not passthrough)
	r11Passthrough                // accepted unchanged
)

type r11Case struct {
	name string
	sql  string // ${S} is r11Secret
	want r11Want
	kind *refusalKind // for r11Refused: the kind, when it matters
}

func r11Check(t *testing.T, s *Schema, cases []r11Case) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sql := strings.ReplaceAll(c.sql, "${S}", r11Secret)
			plan, err := s.Analyze(sql)
			var r *Refusal
			if err != nil && !errors.As(err, &r) {
				t.Fatalf("%s: error %v is not a Refusal", sql, err)
			}
			switch c.want {
			case r11Refused:
				if r == nil {
					t.Fatalf("%s: accepted (passthrough=%v), want a refusal", sql, plan.Passthrough)
				}
				if r.Code != pgerrcode.FeatureNotSupported {
					t.Errorf("%s: refused with %s %q, want 0A000", sql, r.Code, r.Message)
				}
				if c.kind != nil && r.kind != c.kind {
					t.Errorf("%s: refused as %s (%q), want %s", sql, r.kind.id, r.Message, c.kind.id)
				}
				if strings.Contains(r.Message, r11Secret) {
					t.Errorf("%s: the refusal quotes the value: %q", sql, r.Message)
				}
			case r11NoPlaintext:
				if r != nil {
					return
				}
				if plan.Passthrough {
					t.Fatalf("%s: passthrough: the plaintext reaches PostgreSQL", sql)
				}
				if text := strings.Join(plan.Segments, ""); strings.Contains(text, r11Secret) {
					t.Fatalf("%s: the rewritten text holds the plaintext: %s", sql, text)
				}
				checkPlan(t, s, sql, plan)
			case r11Rewritten, r11Passthrough:
				if r != nil {
					t.Fatalf("%s: refused: %s %s", sql, r.Code, r.Message)
				}
				if plan.Passthrough != (c.want == r11Passthrough) {
					t.Fatalf("%s: passthrough = %v", sql, plan.Passthrough)
				}
				if text := strings.Join(plan.Segments, ""); c.want == r11Rewritten && strings.Contains(text, r11Secret) {
					t.Fatalf("%s: the rewritten text holds the plaintext: %s", sql, text)
				}
				checkPlan(t, s, sql, plan)
			}
		})
	}
}

// TestReview11ColumnAliasList: a column alias list renames a declared
// table's columns by position (FROM patients AS p(i, t, n, s): s is ssn),
// which rewrite's scope does not follow. Refused on a declared table and
// on a join alias over one.
func TestReview11ColumnAliasList(t *testing.T) {
	r11Check(t, testSchema(t), []r11Case{
		{name: "select_where", sql: `SELECT i FROM patients AS p(i, t, n, s) WHERE s = '${S}'`, kind: kindColumnAlias},
		{name: "update_from", sql: `UPDATE patients SET name = 'x' FROM patients AS q(i, t, n, s) WHERE q.s = '${S}'`, kind: kindColumnAlias},
		{name: "delete_using", sql: `DELETE FROM patients USING patients AS q(i, t, n, s) WHERE q.s = '${S}'`, kind: kindColumnAlias},
		{name: "join_alias", sql: `SELECT 1 FROM (patients p CROSS JOIN (SELECT 1 AS k) k) AS j(i, t, n, s) WHERE j.s = '${S}'`, kind: kindColumnAlias},
		{name: "nested_join_alias", sql: `SELECT 1 FROM ((patients p CROSS JOIN visits v) AS j1 CROSS JOIN visits w) AS j2(a, b) WHERE j2.b = '${S}'`, kind: kindColumnAlias},
		{name: "copy_query", sql: `COPY (SELECT i FROM patients p(i, t, n, s) WHERE s IN ('${S}')) TO STDOUT`, kind: kindColumnAlias},
		{name: "rename_onto_other_column", sql: `SELECT 1 FROM patients AS p(i, t, ssn, x) WHERE x = '${S}'`, kind: kindColumnAlias},
		{name: "parameter", sql: `SELECT i FROM patients AS p(i, t, n, s) WHERE s = $1`, kind: kindColumnAlias},
		{name: "union", sql: `SELECT s FROM patients AS p(i, t, n, s) UNION ALL SELECT NULL ORDER BY 1`, kind: kindColumnAlias},
		{name: "index_column", sql: `SELECT b FROM patients AS p(i, t, n, s, b)`, kind: kindColumnAlias},
		{name: "tablesample", sql: `SELECT s FROM patients AS p(i, t, n, s) TABLESAMPLE SYSTEM (10)`, kind: kindColumnAlias},
		{name: "lateral_subquery", sql: `SELECT 1 FROM visits v, LATERAL (SELECT 1 FROM patients p(i, t, n, s) WHERE s = '${S}') q`, kind: kindColumnAlias},

		// Still fine: an alias without a list, a list on a plain table or
		// on a subquery (whose select list cannot expose a declared column).
		{name: "alias_without_list", sql: `SELECT p.id FROM patients AS p WHERE p.ssn = '${S}'`, want: r11Rewritten},
		{name: "plain_table_list", sql: `SELECT a FROM visits AS v(a, b)`, want: r11Passthrough},
		{name: "join_alias_plain", sql: `SELECT 1 FROM (visits v CROSS JOIN visits w) AS j(a, b)`, want: r11Passthrough},
		{name: "subquery_list", sql: `SELECT a FROM (SELECT id FROM patients WHERE ssn = '${S}') AS q(a)`, want: r11Rewritten},
		{name: "subquery_exposing", sql: `SELECT a FROM (SELECT ssn FROM patients) AS q(a)`, kind: kindSubqueryOutput},
	})
}

// TestReview11WindowFrameOffset: a window frame's offsets may hold a
// subquery; they were not analysed.
func TestReview11WindowFrameOffset(t *testing.T) {
	r11Check(t, testSchema(t), []r11Case{
		{name: "inline_over", want: r11NoPlaintext, sql: `SELECT count(*) OVER (ORDER BY id ROWS BETWEEN (SELECT count(*) FROM patients WHERE ssn = '${S}') PRECEDING AND CURRENT ROW) FROM patients`},
		{name: "named_window", want: r11NoPlaintext, sql: `SELECT count(*) OVER w FROM patients WINDOW w AS (ORDER BY id ROWS (SELECT count(*) FROM patients WHERE ssn = '${S}') PRECEDING)`},
		{name: "inline_over_refname", want: r11NoPlaintext, sql: `SELECT count(*) OVER (w ROWS (SELECT count(*) FROM patients WHERE ssn = '${S}') PRECEDING) FROM patients WINDOW w AS (ORDER BY id)`},
		{name: "no_declared_from", want: r11NoPlaintext, sql: `SELECT sum(x) OVER (ORDER BY x ROWS BETWEEN CURRENT ROW AND (SELECT count(*) FROM patients WHERE ssn IN ('${S}')) FOLLOWING) FROM (VALUES (1), (2)) v(x)`},
		{name: "rewritten", want: r11Rewritten, sql: `SELECT count(*) OVER (ORDER BY id ROWS (SELECT count(*) FROM patients WHERE ssn = '${S}') PRECEDING) FROM visits`},
		{name: "declared_column_offset", sql: `SELECT count(*) OVER (ORDER BY id ROWS ssn PRECEDING) FROM patients`, kind: kindWindow},
		{name: "range_offset_end", sql: `SELECT count(*) OVER (ORDER BY id RANGE BETWEEN CURRENT ROW AND p.ssn FOLLOWING) FROM patients p`, kind: kindWindow},
	})
}

// TestReview11UnvisitedExpressions: subscripts of assignment targets of
// undeclared columns, type modifiers and a function's column definition
// list were never analysed.
func TestReview11UnvisitedExpressions(t *testing.T) {
	r11Check(t, testSchema(t), []r11Case{
		{name: "update_target_subscript", want: r11NoPlaintext, sql: `UPDATE visits SET a[(SELECT count(*) FROM patients WHERE ssn = '${S}')] = 1`},
		{name: "update_target_slice", want: r11NoPlaintext, sql: `UPDATE visits SET a[1:(SELECT count(*) FROM patients WHERE ssn = '${S}')] = '{1}'`},
		{name: "update_declared_table", want: r11NoPlaintext, sql: `UPDATE patients SET a[(SELECT count(*) FROM patients q WHERE q.ssn = '${S}')] = 1`},
		{name: "update_subscript_declared_column", sql: `UPDATE patients SET a[ssn] = 1`, kind: kindExpression},
		{name: "on_conflict_subscript", want: r11NoPlaintext, sql: `INSERT INTO visits (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET a[(SELECT count(*) FROM patients WHERE ssn = '${S}')] = 1`},
		{name: "insert_target_subscript", want: r11NoPlaintext, sql: `INSERT INTO visits (id, a[(SELECT count(*) FROM patients WHERE ssn = '${S}')]) VALUES (1, 1)`},
		{name: "insert_declared_table", want: r11NoPlaintext, sql: `INSERT INTO patients (id, a[(SELECT count(*) FROM patients WHERE ssn = '${S}')]) VALUES (1, 1)`},
		{name: "type_modifier", want: r11NoPlaintext, sql: `SELECT 1::numeric((SELECT count(*) FROM patients WHERE ssn = '${S}'))`},
		{name: "type_modifier_cast", want: r11NoPlaintext, sql: `SELECT CAST(1 AS numeric((SELECT count(*) FROM patients WHERE ssn = '${S}')))`},
		{name: "coldeflist", want: r11NoPlaintext, sql: `SELECT * FROM f() AS t(a numeric((SELECT count(*) FROM patients WHERE ssn = '${S}')))`},
		{name: "copy_where", sql: `COPY visits FROM STDIN WHERE id IN (SELECT id FROM patients WHERE ssn = '${S}')`, kind: kindCopy},

		{name: "plain_subscript", want: r11Passthrough, sql: `UPDATE visits SET a[1] = 2`},
		{name: "plain_typmod", want: r11Passthrough, sql: `SELECT 1::numeric(10, 2)`},
	})
}

// TestReview11QueryTextFunctions: the statements in the query text of
// query_to_xml, ts_stat, ts_rewrite and crosstab run unrewritten; one that
// names a declared table is refused.
func TestReview11QueryTextFunctions(t *testing.T) {
	s := testSchema(t)
	r11Check(t, s, []r11Case{
		{name: "query_to_xml", sql: `SELECT query_to_xml('SELECT id FROM patients WHERE ssn = ''${S}''', true, false, '')`, kind: kindStatement},
		{name: "query_to_xmlschema", sql: `SELECT query_to_xmlschema('SELECT ssn FROM patients', true, false, '')`, kind: kindStatement},
		{name: "ts_stat", sql: `SELECT * FROM ts_stat('SELECT to_tsvector(name) FROM patients WHERE ssn IN (''${S}'')')`, kind: kindStatement},
		{name: "ts_rewrite", sql: `SELECT ts_rewrite('a'::tsquery, 'SELECT t, s FROM public.patients')`, kind: kindStatement},
		{name: "crosstab", sql: `SELECT * FROM crosstab('SELECT name, ssn, ssn FROM patients') AS t(a text)`, kind: kindStatement},
		{name: "nested", sql: `SELECT query_to_xml('SELECT query_to_xml(''SELECT 1 FROM patients'', true, false, '''')', true, false, '')`, kind: kindStatement},
		{name: "in_subquery", sql: `SELECT 1 FROM visits WHERE EXISTS (SELECT query_to_xml('TABLE patients', true, false, ''))`, kind: kindStatement},
		{name: "plain_table", want: r11Passthrough, sql: `SELECT query_to_xml('SELECT id FROM visits', true, false, '')`},
	})
	// A query that is not a constant is refused as before (42501).
	if _, err := s.Analyze(`SELECT query_to_xml($1, true, false, '')`); err == nil || err.(*Refusal).Code != pgerrcode.InsufficientPrivilege {
		t.Errorf("query_to_xml($1): %v, want a 42501 refusal", err)
	}
}

// TestReview11CastChangesValue: a cast that converts a value bound for a
// declared column ('...'::varchar(11) truncates, a char(n) cast to text
// loses trailing blanks, '0012'::int4::text is 12) made pgcloak seal or
// index another value than PostgreSQL's.
func TestReview11CastChangesValue(t *testing.T) {
	r11Check(t, testSchema(t), []r11Case{
		{name: "varchar_n", sql: `SELECT id FROM patients WHERE ssn = '${S}-x'::varchar(11)`, kind: kindTypeConvert},
		{name: "char_n_text", sql: `SELECT id FROM patients WHERE ssn IN ('${S}   '::char(14)::text)`, kind: kindTypeConvert},
		{name: "array_element", sql: `SELECT id FROM patients WHERE ssn = ANY(ARRAY['${S}-x'::varchar(11)])`, kind: kindTypeConvert},
		{name: "insert_nested", sql: `INSERT INTO patients (name, ssn) VALUES ('cast-row', '0012'::int4::text)`, kind: kindTypeConvert},
		{name: "update_name", sql: `UPDATE patients SET ssn = '${S}'::name`, kind: kindTypeConvert},
		{name: "bpchar", sql: `SELECT id FROM patients WHERE ssn = '${S} '::bpchar`, kind: kindTypeConvert},
		{name: "char", sql: `SELECT id FROM patients WHERE ssn = '${S}'::char`, kind: kindTypeConvert},
		{name: "character_n", sql: `SELECT id FROM patients WHERE ssn <> '${S}'::character(3)`, kind: kindTypeConvert},
		{name: "internal_char", sql: `SELECT id FROM patients WHERE ssn = '${S}'::"char"`, kind: kindTypeConvert},
		{name: "other_schema_type", sql: `SELECT id FROM patients WHERE ssn = '${S}'::myschema.text`, kind: kindTypeConvert},
		{name: "param_varchar_n", sql: `SELECT id FROM patients WHERE ssn = $1::varchar(11)`, kind: kindTypeConvert},
		{name: "param_bpchar", sql: `INSERT INTO patients (ssn) VALUES ($1::bpchar)`, kind: kindTypeConvert},
		{name: "param_nested", sql: `SELECT id FROM patients WHERE ssn = $1::int4::text`, kind: kindTypeConvert},
		{name: "array_literal_typmod", sql: `SELECT id FROM patients WHERE ssn = ANY('{a,b}'::varchar(3)[])`, kind: kindTypeConvert},
		{name: "array_literal_nested", sql: `SELECT id FROM patients WHERE ssn = ANY('{a,b}'::bpchar[]::text[])`, kind: kindTypeConvert},
		{name: "array_underscore_bpchar", sql: `SELECT id FROM patients WHERE ssn = ANY('{a,b}'::_bpchar)`, kind: kindTypeConvert},
		{name: "array_underscore_int4", sql: `SELECT id FROM patients WHERE ssn = ANY('{1,2}'::_int4)`, kind: kindTypeConvert},
		{name: "array_scalar_cast", sql: `SELECT id FROM patients WHERE ssn = ANY('{a,b}'::text)`, kind: kindTypeConvert},
		// NULL stays NULL through a cast, but = ANY refuses a NULL array as before.
		{name: "array_null", sql: `SELECT id FROM patients WHERE ssn = ANY(NULL::varchar(3)[])`, kind: kindArrayLiteral},
		{name: "array_param_typmod", sql: `SELECT id FROM patients WHERE ssn = ANY($1::varchar(3)[])`, kind: kindTypeConvert},
		{name: "in_list_typmod", sql: `SELECT id FROM patients WHERE email IN ('a', 'b'::varchar(1))`, kind: kindTypeConvert},
		{name: "on_conflict", sql: `INSERT INTO patients (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET ssn = '${S}'::varchar(3)`, kind: kindTypeConvert},

		// What worked keeps working.
		{name: "plain", want: r11Rewritten, sql: `SELECT id FROM patients WHERE ssn = '${S}'`},
		{name: "text", want: r11Rewritten, sql: `SELECT id FROM patients WHERE ssn = '${S}'::text`},
		{name: "pg_catalog_text", want: r11Rewritten, sql: `SELECT id FROM patients WHERE ssn = '${S}'::pg_catalog.text`},
		{name: "varchar", want: r11Rewritten, sql: `SELECT id FROM patients WHERE ssn = '${S}'::varchar`},
		{name: "param", want: r11Rewritten, sql: `SELECT id FROM patients WHERE ssn = $1`},
		{name: "param_text", want: r11Rewritten, sql: `SELECT id FROM patients WHERE ssn = $1::text`},
		{name: "number_text", want: r11Rewritten, sql: `SELECT id FROM patients WHERE ssn = 123456789::text`},
		{name: "null_typmod", want: r11Rewritten, sql: `SELECT id FROM patients WHERE ssn = NULL::varchar(5)`},
		{name: "array_text", want: r11Rewritten, sql: `SELECT id FROM patients WHERE ssn = ANY('{a,b}'::text[])`},
		{name: "array_underscore_text", want: r11Rewritten, sql: `SELECT id FROM patients WHERE ssn = ANY('{a,b}'::_text)`},
		{name: "array_param_text", want: r11Rewritten, sql: `SELECT id FROM patients WHERE ssn = ANY($1::text[])`},
		{name: "array_elements_text", want: r11Rewritten, sql: `SELECT id FROM patients WHERE ssn = ANY(ARRAY['a'::text, $1])`},
		{name: "insert_text", want: r11Rewritten, sql: `INSERT INTO patients (ssn, email) VALUES ('${S}'::text, $1::varchar)`},
		{name: "insert_date", want: r11Rewritten, sql: `INSERT INTO patients (birth_date) VALUES ('1990-05-06'::date)`},
		{name: "update_number", want: r11Rewritten, sql: `UPDATE patients SET ssn = 42::varchar`},
	})
}

// TestReview11CastNumberShape: for a number column, a cast to an integer
// type keeps an integer's text but rounds a decimal constant
// (1.5::int4 is 2): the exact path refuses it, and the shape path must
// not accept it by the cast's family alone.
func TestReview11CastNumberShape(t *testing.T) {
	s := NewSchema(config.Encrypt{Tables: []config.Table{{Schema: "public", Name: "accounts", Columns: []config.Column{
		{Name: "balance", Type: "int8", Search: config.SearchEquality, Normalize: config.NormalizeNone},
	}}}}, "app.tenant_id")
	r11Check(t, s, []r11Case{
		{name: "decimal_to_int", sql: `SELECT id FROM accounts WHERE balance = 1.5::int4`, kind: kindTypeConvert},
		{name: "string_to_numeric", sql: `SELECT id FROM accounts WHERE balance = '1.5'::numeric`, kind: kindTypeConvert},
		{name: "float4", sql: `INSERT INTO accounts (balance) VALUES ('12'::float4)`, kind: kindTypeConvert},
		{name: "int_to_int", want: r11Rewritten, sql: `SELECT id FROM accounts WHERE balance = 15::int4`},
		{name: "identity", want: r11Rewritten, sql: `SELECT id FROM accounts WHERE balance = '15'::int8`},
		{name: "param_int4", want: r11Rewritten, sql: `SELECT id FROM accounts WHERE balance = $1::int4`},
	})
	cache := NewCache(64)
	for _, sql := range []string{`SELECT id FROM accounts WHERE balance = 1.5::int4`, `SELECT id FROM accounts WHERE balance = 1.5::int8`} {
		// First an accepted text of the same shape, so that the shape is
		// cached as accepted.
		if sp, _ := s.AnalyzeShape(cache, strings.Replace(sql, "1.5", "15", 1)); sp == nil {
			t.Fatalf("%s: the integer text has no shape", sql)
		}
		if sp, lits := s.AnalyzeShape(cache, sql); sp != nil {
			t.Errorf("%s: the shape path accepts a decimal cast to an integer type (%q)", sql, lits)
		}
	}
}
