package proxy

// Review 11B (2026-12-08, "fail closed below the text"): SQL-injection
// attacks by a tenant session (alice, tenant acme) on the promises of
// issue 12, fixed in package rewrite. Each test failed while its attack
// worked.

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// r11bProbe is one simple-protocol attack text; ${S} is plaintext meant
// for the declared column ssn, which must never reach PostgreSQL (its log
// records every statement) nor be stored.
type r11bProbe struct {
	name  string
	setup []string
	sql   string
}

func r11bRun(t *testing.T, probes []r11bProbe) {
	env := startAdversarial(t)
	for _, pr := range probes {
		t.Run(pr.name, func(t *testing.T) {
			r := newReviewDB(t, env, pr.setup...)
			conn, err := r.connect(t, nil)
			fatalIf(t, err, "connect")
			res := pipeline(t, conn, &pgproto3.Query{String: r.mk.expand(pr.sql, r.db)})
			t.Logf("errors %q rows %q", res.errors, res.rows)
			for _, v := range r.secretLeaks(t) {
				t.Error(v)
			}
		})
	}
}

// A relation's column alias list renames its columns positionally
// (FROM patients AS p(i, t, n, s): s is ssn). rewrite's scope ignores
// Alias.Colnames, so s is not a declared column to it: the predicate is
// forwarded with its plaintext, which PostgreSQL compares with ciphertext
// (a silently empty result) and logs.
func TestReview11BColumnAliasList(t *testing.T) {
	r11bRun(t, []r11bProbe{
		{name: "select_where", sql: `SELECT i FROM patients AS p(i, t, n, s) WHERE s = '${S}'`},
		{name: "update_from", sql: `UPDATE patients SET name = 'x' FROM patients AS q(i, t, n, s) WHERE q.s = '${S}'`},
		{name: "delete_using", sql: `DELETE FROM patients USING patients AS q(i, t, n, s) WHERE q.s = '${S}'`},
		{name: "join_alias", sql: `SELECT 1 FROM (patients p CROSS JOIN (SELECT 1 AS k) k) AS j(i, t, n, s) WHERE j.s = '${S}'`},
		{name: "copy_query", sql: `COPY (SELECT i FROM patients p(i, t, n, s) WHERE s IN ('${S}')) TO STDOUT`},
		{name: "rename_onto_other_column", sql: `SELECT 1 FROM patients AS p(i, t, ssn, x) WHERE x = '${S}'`},
	})
}

// The same through the extended protocol: the value bound for s goes to
// PostgreSQL as it came, and the search finds nothing (silently) where
// the same search on ssn finds alice's row.
func TestReview11BColumnAliasListExtended(t *testing.T) {
	env := startAdversarial(t)
	r := newReviewDB(t, env)
	conn, err := r.connect(t, nil)
	fatalIf(t, err, "connect")
	search := func(sql, v string) pipelineResult {
		return pipeline(t, conn,
			&pgproto3.Parse{Query: sql},
			&pgproto3.Bind{Parameters: [][]byte{[]byte(v)}},
			&pgproto3.Execute{},
			&pgproto3.Sync{})
	}
	good := search(`SELECT id FROM patients WHERE ssn = $1`, "111-11-1111")
	aliased := search(`SELECT i FROM patients AS p(i, t, n, s) WHERE s = $1`, "111-11-1111")
	t.Logf("ssn = $1: rows %q errors %q; aliased s = $1: rows %q errors %q", good.rows, good.errors, aliased.rows, aliased.errors)
	if len(good.rows) != 1 {
		t.Fatalf("the plain search found %d rows, want alice's row", len(good.rows))
	}
	if len(aliased.errors) == 0 && len(aliased.rows) != len(good.rows) {
		t.Errorf("a search on ssn renamed by a column alias list was forwarded unrewritten: silently %d rows (want an error or %d rows)", len(aliased.rows), len(good.rows))
	}
	leak := search(`SELECT i FROM patients AS p(i, t, n, s) WHERE s = $1`, r.mk.s)
	t.Logf("leak probe: errors %q", leak.errors)
	for _, v := range r.secretLeaks(t) {
		t.Error(v)
	}
	// Every use of ssn that SPEC §4 refuses (0A000) is open under the
	// alias: a set operation returns the ciphertext without its origin,
	// so it reaches the client undecrypted, as a value.
	union := pipeline(t, conn, &pgproto3.Query{String: `SELECT s FROM patients AS p(i, t, n, s) UNION ALL SELECT NULL ORDER BY 1`})
	t.Logf("union: rows %q errors %q", union.rows, union.errors)
	for _, row := range union.rows {
		if strings.HasPrefix(row[0], `\x01`) {
			t.Errorf("ssn's ciphertext reached the client undecrypted through a column alias and UNION: %.40s...", row[0])
		}
	}
	// The index column, which pgcloak never lets a tenant name, read
	// under another name.
	bidx := pipeline(t, conn, &pgproto3.Query{String: `SELECT b FROM patients AS p(i, t, n, s, b)`})
	if len(bidx.errors) == 0 && len(bidx.rows) > 0 {
		t.Errorf("the index column ssn_bidx was read through a column alias: %d rows (pgcloak refuses naming it)", len(bidx.rows))
	}
}

// A cast with a type modifier, or a cast of a cast, converts a constant in
// PostgreSQL ('111-11-1111-x'::varchar(11) is '111-11-1111'; a char(n)
// cast to text loses its trailing blanks; '0012'::int4::text is '12'),
// but valueType reads only the outermost cast's type name and
// classifyValue the innermost constant's text: pgcloak seals, or indexes,
// another value than the one the statement means, and the result is
// silently wrong (no row where PostgreSQL's semantics find alice's).
func TestReview11BCastChangesValue(t *testing.T) {
	env := startAdversarial(t)
	r := newReviewDB(t, env)
	conn, err := r.connect(t, nil)
	fatalIf(t, err, "connect")
	q := func(sql string) pipelineResult { return pipeline(t, conn, &pgproto3.Query{String: sql}) }
	if res := q(`SELECT id FROM patients WHERE ssn = '111-11-1111'`); len(res.rows) != 1 {
		t.Fatalf("plain search: %q %q", res.rows, res.errors)
	}
	for _, sql := range []string{
		`SELECT id FROM patients WHERE ssn = '111-11-1111-x'::varchar(11)`,
		`SELECT id FROM patients WHERE ssn IN ('111-11-1111   '::char(14)::text)`,
		`SELECT id FROM patients WHERE ssn = ANY(ARRAY['111-11-1111-x'::varchar(11)])`,
	} {
		res := q(sql)
		t.Logf("%s: rows %q errors %q", sql, res.rows, res.errors)
		if len(res.errors) == 0 && len(res.rows) != 1 {
			t.Errorf("%s: silently %d rows; PostgreSQL's value of the cast is alice's ssn (want 1 row or an error)", sql, len(res.rows))
		}
	}
	// A write: PostgreSQL's value is '12', pgcloak seals '0012'.
	res := q(`INSERT INTO patients (name, ssn) VALUES ('cast-row', '0012'::int4::text)`)
	t.Logf("insert: errors %q", res.errors)
	if len(res.errors) == 0 {
		back := q(`SELECT ssn FROM patients WHERE name = 'cast-row'`)
		if len(back.rows) != 1 || back.rows[0][0] != "12" {
			t.Errorf("INSERT ... '0012'::int4::text stored %q; PostgreSQL's value of the expression is 12", back.rows)
		}
	}
}

// A window frame's offsets (ROWS/RANGE/GROUPS <expr> PRECEDING or
// FOLLOWING) may hold a subquery. selectStmt analyses a named window's
// PARTITION BY and ORDER BY, and funcCall an inline OVER's, but neither
// looks at WindowDef.StartOffset/EndOffset: a search on ssn inside the
// offset is forwarded with its plaintext, compared with ciphertext.
func TestReview11BWindowFrameOffset(t *testing.T) {
	r11bRun(t, []r11bProbe{
		{name: "inline_over", sql: `SELECT count(*) OVER (ORDER BY id ROWS BETWEEN (SELECT count(*) FROM patients WHERE ssn = '${S}') PRECEDING AND CURRENT ROW) FROM patients`},
		{name: "named_window", sql: `SELECT count(*) OVER w FROM patients WINDOW w AS (ORDER BY id ROWS (SELECT count(*) FROM patients WHERE ssn = '${S}') PRECEDING)`},
		{name: "inline_over_refname", sql: `SELECT count(*) OVER (w ROWS (SELECT count(*) FROM patients WHERE ssn = '${S}') PRECEDING) FROM patients WINDOW w AS (ORDER BY id)`},
		{name: "no_declared_from", sql: `SELECT sum(x) OVER (ORDER BY x ROWS BETWEEN CURRENT ROW AND (SELECT count(*) FROM patients WHERE ssn IN ('${S}')) FOLLOWING) FROM (VALUES (1), (2)) v(x)`},
	})
}

// Expressions rewrite never visits: the subscripts of an assignment target
// of a column that is not declared (UPDATE ... SET a[<expr>], INSERT INTO
// t (a[<expr>])), which assignments() and insert() skip, and a type
// modifier (TypeCast analyses only its argument). A subquery there that
// searches ssn is forwarded with its plaintext.
func TestReview11BUnvisitedExpressions(t *testing.T) {
	setup := []string{`CREATE TABLE rev_arr (id int, a int[])`, `GRANT ALL ON rev_arr TO alice`}
	r11bRun(t, []r11bProbe{
		{name: "update_target_subscript", setup: setup, sql: `UPDATE rev_arr SET a[(SELECT count(*) FROM patients WHERE ssn = '${S}')] = 1`},
		{name: "insert_target_subscript", setup: setup, sql: `INSERT INTO rev_arr (id, a[(SELECT count(*) FROM patients WHERE ssn = '${S}')]) VALUES (1, 1)`},
		{name: "type_modifier", sql: `SELECT 1::numeric((SELECT count(*) FROM patients WHERE ssn = '${S}'))`},
	})
}

// Functions that run a query given as text (query_to_xml, ts_stat,
// ts_rewrite, crosstab): dynamicQuery applies only the tenancy checks to
// the statements in the constant, not the encryption analysis, so a
// search on ssn in them runs unrewritten, its plaintext sent to
// PostgreSQL and compared with ciphertext (silently no row).
func TestReview11BQueryTextFunctions(t *testing.T) {
	r11bRun(t, []r11bProbe{
		{name: "query_to_xml", sql: `SELECT query_to_xml('SELECT id FROM patients WHERE ssn = ''${S}''', true, false, '')`},
		{name: "ts_stat", sql: `SELECT * FROM ts_stat('SELECT to_tsvector(name) FROM patients WHERE ssn IN (''${S}'')')`},
	})
}

// Probes that held in this review (representatives): a computed value for
// ssn, an IN over a subquery, and a subquery that exposes ssn through *.
func TestReview11BHeld(t *testing.T) {
	r11bRun(t, []r11bProbe{
		{name: "update_set_lower", sql: `UPDATE patients SET ssn = lower('${S}')`},
		{name: "in_values_sublink", sql: `SELECT id FROM patients WHERE ssn IN (VALUES ('${S}'))`},
		{name: "subquery_star", sql: `SELECT q.id FROM (SELECT * FROM patients) q WHERE q.ssn = '${S}'`},
	})
}
