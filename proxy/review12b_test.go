package proxy

// Review 12B (2026-12-08): attacks around the review-11B fix (column
// alias lists, casts that change a value, query texts), by a tenant
// session (alice, tenant acme).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// A numeric constant written to (or compared with) the text column ssn is
// converted by PostgreSQL: numeric's output text, not the constant's
// spelling (1e3 is 1000, 007.50 is 7.50, .5 is 0.5, -0.0 is 0.0, an
// integer too big for int4 keeps its leading zeros in the parser's text
// but not in numeric). checkType (plainNumber) and checkCasts (a number
// cast to text or varchar "keeps its text") accept these, and
// classifyValue/constValue seal the text as written: the stored value is
// not what PostgreSQL would have stored, and a search finds nothing
// where PostgreSQL's semantics find the row.
// FIXED (review 12): such a number is refused (0A000) unless written as
// PostgreSQL prints it (rewrite.numberTextIsPG).
func TestReview12BNumberTextChangesValue(t *testing.T) {
	env := startAdversarial(t)
	r := newReviewDB(t, env)
	conn, err := r.connect(t, nil)
	fatalIf(t, err, "connect")
	q := func(sql string) pipelineResult { return pipeline(t, conn, &pgproto3.Query{String: sql}) }
	for i, expr := range []string{
		`1e3::text`, `1.5e1::varchar`, `.5::text`, `007.50`, `0012345678901`, `-0.0`,
	} {
		name := fmt.Sprintf("r12b-num-%d", i)
		var want string
		fatalIf(t, r.pool.QueryRow(ctxT(t), `SELECT (`+expr+`)::text`, pgx.QueryExecModeSimpleProtocol).Scan(&want), "PostgreSQL's value of %s", expr)
		ins := q(fmt.Sprintf(`INSERT INTO patients (name, ssn) VALUES ('%s', %s)`, name, expr))
		if len(ins.errors) > 0 {
			t.Logf("%s: refused %q", expr, ins.errors)
			continue
		}
		back := q(fmt.Sprintf(`SELECT ssn FROM patients WHERE name = '%s'`, name))
		if len(back.rows) != 1 || back.rows[0][0] != want {
			t.Errorf("INSERT ... VALUES (%s) into ssn stored %q; PostgreSQL stores %q for that expression", expr, back.rows, want)
		}
	}
	// A search: the row holds 1000 (written as a string); ssn = 1e3::text
	// is true in PostgreSQL.
	if res := q(`INSERT INTO patients (name, ssn) VALUES ('r12b-1000', '1000')`); len(res.errors) > 0 {
		t.Fatalf("insert: %q", res.errors)
	}
	for _, sql := range []string{
		`SELECT name FROM patients WHERE ssn = 1e3::text`,
		`SELECT name FROM patients WHERE ssn IN (1e3::text)`,
		`SELECT name FROM patients WHERE ssn = ANY(ARRAY[1e3::text])`,
	} {
		res := q(sql)
		t.Logf("%s: rows %q errors %q", sql, res.rows, res.errors)
		if len(res.errors) == 0 && (len(res.rows) != 1 || res.rows[0][0] != "r12b-1000") {
			t.Errorf("%s: silently rows %q; PostgreSQL's 1e3::text is '1000', r12b-1000's ssn (want that row or an error)", sql, res.rows)
		}
	}
}

// table_to_xml and its siblings read a declared table named by a string
// or an OID (schema_to_xml and database_to_xml every table) and return
// its rows as XML: ssn's ciphertext and the index column ssn_bidx reach
// the client inside a value with no RowDescription origin, undecrypted.
// The 11B fix refuses query_to_xml* over a declared table but leaves
// these (precheck's list and dynamicSQLArgs name only the query forms).
// FIXED (review 12): refused (0A000) with declared tables, nested
// queries included (rewrite tableExport).
func TestReview12BTableToXML(t *testing.T) {
	env := startAdversarial(t)
	r := newReviewDB(t, env)
	conn, err := r.connect(t, nil)
	fatalIf(t, err, "connect")
	for _, sql := range []string{
		`SELECT table_to_xml('patients', true, false, '')`,
		`SELECT table_to_xml('public.patients'::regclass::oid::regclass, false, true, '')`,
		`SELECT table_to_xml_and_xmlschema('patients', true, false, '')`,
		`SELECT schema_to_xml('public', true, false, '')`,
		`SELECT database_to_xml(true, false, '')`,
		`BEGIN; DECLARE r12bc CURSOR FOR SELECT * FROM patients; SELECT cursor_to_xml('r12bc', 10, true, false, ''); COMMIT`,
	} {
		res := pipeline(t, conn, &pgproto3.Query{String: sql})
		t.Logf("%s: errors %q", sql, res.errors)
		for _, row := range res.rows {
			for _, v := range row {
				if strings.Contains(v, "<ssn_bidx>") {
					t.Errorf("%s: the blind index ssn_bidx reached the client: %.120s...", sql, v[strings.Index(v, "<ssn_bidx>"):])
				}
				if i := strings.Index(v, "<ssn>"); i >= 0 {
					t.Errorf("%s: ssn reached the client undecrypted (ciphertext as XML): %.80s...", sql, v[i:])
				}
			}
		}
	}
}

// checkCasts takes an unqualified type name for pg_catalog's ("a type
// that is not pg_catalog's" is refused only when qualified), but
// pg_catalog is searched first only when search_path does not name it
// later. A tenant may create a domain named text in public (CREATE on
// the schema) and put public first: 'abc   '::text is then a
// varchar(3) value, 'abc' in PostgreSQL, while pgcloak seals or indexes
// 'abc   ' as written.
// FIXED (review 12): the SET is refused (0A000) with declared tables, as
// is a type named like a pg_catalog one in pg_temp (rewrite
// searchPathSet, typeShadow); the test then skips.
func TestReview12BShadowedTextType(t *testing.T) {
	env := startAdversarial(t)
	r := newReviewDB(t, env)
	conn, err := r.connect(t, nil)
	fatalIf(t, err, "connect")
	q := func(sql string) pipelineResult { return pipeline(t, conn, &pgproto3.Query{String: sql}) }
	// The fix refuses the search_path that puts a schema before
	// pg_catalog (0A000), so public.text shadows nothing; were it taken,
	// the values below must still come out as PostgreSQL's.
	res := q(`CREATE DOMAIN public.text AS pg_catalog.varchar(3)`)
	t.Logf("CREATE DOMAIN public.text: errors %q", res.errors)
	res = q(`SET search_path = public, pg_catalog`)
	t.Logf("SET search_path = public, pg_catalog: errors %q", res.errors)
	if len(res.errors) > 0 {
		if !strings.Contains(res.errors[0], "0A000") {
			t.Errorf("SET search_path = public, pg_catalog refused with %q, want 0A000", res.errors)
		}
		return
	}
	want := q(`SELECT ('abc   '::text)::pg_catalog.text`)
	t.Logf("PostgreSQL's value of 'abc   '::text now: %q", want.rows)
	ins := q(`INSERT INTO patients (name, ssn) VALUES ('r12b-dom', 'abc   '::text)`)
	if len(ins.errors) == 0 {
		back := q(`SELECT ssn FROM patients WHERE name = 'r12b-dom'`)
		if len(back.rows) != 1 || len(want.rows) != 1 || back.rows[0][0] != want.rows[0][0] {
			t.Errorf("INSERT ... 'abc   '::text (text a domain over varchar(3)) stored %q; PostgreSQL stores %q", back.rows, want.rows)
		}
	} else {
		t.Logf("insert refused: %q", ins.errors)
	}
	if res := q(`INSERT INTO patients (name, ssn) VALUES ('r12b-abc', 'abc')`); len(res.errors) > 0 {
		t.Fatalf("insert: %q", res.errors)
	}
	res = q(`SELECT name FROM patients WHERE ssn = 'abc   '::text AND name = 'r12b-abc'`)
	t.Logf("search: rows %q errors %q", res.rows, res.errors)
	if len(res.errors) == 0 && len(res.rows) != 1 {
		t.Errorf("ssn = 'abc   '::text (a varchar(3) domain, 'abc' in PostgreSQL) silently found %d rows, want r12b-abc's row or an error", len(res.rows))
	}
}

// HELD (review 12B): PostgreSQL leaves the DETAIL out for a table with
// row-level security enabled.
// An error PostgreSQL raises about a row (a NOT NULL or CHECK violation)
// carries the row in its DETAIL ("Failing row contains (...)"), written
// with the stored values: ssn's ciphertext and the index column ssn_bidx.
// pgcloak relays upstream ErrorResponses as they are (results.go
// rewrites only its own refusals), so both reach the client as text.
func TestReview12BErrorDetailRow(t *testing.T) {
	env := startAdversarial(t)
	r := newReviewDB(t, env)
	conn, err := r.connect(t, nil)
	fatalIf(t, err, "connect")
	for _, sql := range []string{
		`UPDATE patients SET id = NULL WHERE name = 'alice-row'`,
		`UPDATE patients SET name = name, id = NULL`,
	} {
		_, err := conn.Exec(context.Background(), sql).ReadAll()
		var pe *pgconn.PgError
		if !errors.As(err, &pe) {
			t.Logf("%s: %v", sql, err)
			continue
		}
		t.Logf("%s: %s %s DETAIL %.200s", sql, pe.Code, pe.Message, pe.Detail)
		if strings.Contains(pe.Detail, `\x01`) {
			t.Errorf("%s: the error's DETAIL carries ssn's ciphertext and its blind index to the client: %.160s...", sql, pe.Detail)
		}
	}
}

// A column qualified by a name that is no relation in scope (an alias
// typed in another case, the table's name after an alias, a USING join's
// alias that exposes only the join columns) cannot be resolved: rewrite
// leaves the comparison as written and the statement goes through
// unrewritten. PostgreSQL refuses it after log_statement has written its
// text, plaintext of ssn included, to the log. rewrite knows every
// relation in scope: such a reference is one it cannot analyse, and should
// be refused rather than forwarded.
// FIXED (review 12): refused (42P01, rewrite unresolvedQualifier).
func TestReview12BUnresolvedQualifier(t *testing.T) {
	r11bRun(t, []r11bProbe{
		{name: "alias_case", sql: `SELECT id FROM patients AS "P" WHERE p.ssn = '${S}'`},
		{name: "table_name_after_alias", sql: `SELECT id FROM patients AS pt WHERE patients.ssn = '${S}'`},
		{name: "join_using_alias", sql: `SELECT 1 FROM patients p JOIN patients q USING (id) AS j WHERE j.ssn = '${S}'`},
	})
}

// HELD (review 12B): every form below came back decrypted, without the
// index column.
// COPY (query) TO STDOUT has no RowDescription: pgcloak must itself find
// which output columns are ssn (and the index column) to decrypt or drop.
func TestReview12BCopyQueryOut(t *testing.T) {
	env := startAdversarial(t)
	r := newReviewDB(t, env)
	conn, err := r.connect(t, nil)
	fatalIf(t, err, "connect")
	for _, sql := range []string{
		`COPY (SELECT * FROM patients) TO STDOUT`,
		`COPY (TABLE patients) TO STDOUT`,
		`COPY (SELECT ssn, ssn FROM patients) TO STDOUT`,
		`COPY (SELECT p.ssn AS x, q.ssn FROM patients p, patients q) TO STDOUT`,
		`COPY (WITH a AS (SELECT 1) SELECT ssn FROM patients) TO STDOUT`,
		`COPY (UPDATE patients SET name = name RETURNING ssn) TO STDOUT`,
		`COPY (UPDATE patients SET name = name RETURNING *) TO STDOUT`,
		`COPY (SELECT * FROM patients p JOIN patients q USING (id)) TO STDOUT`,
		`COPY (SELECT * FROM patients p, LATERAL (SELECT p.id) l) TO STDOUT`,
		`COPY (SELECT p.* FROM patients p) TO STDOUT (FORMAT csv)`,
	} {
		var buf bytes.Buffer
		_, err := conn.CopyTo(context.Background(), &buf, sql)
		t.Logf("%s: err %v out %.200q", sql, err, buf.String())
		if err == nil && strings.Contains(buf.String(), `\\x`) {
			t.Errorf("%s: ciphertext or the blind index reached the client: %.200q", sql, buf.String())
		}
	}
}

// HELD (review 12B): CREATE OPERATOR is refused in a tenant session.
// The rewritten search compares the index column with an unqualified
// operator (ssn_bidx = '\x..'::pg_catalog.bytea). Under a search_path that
// puts public before pg_catalog, a tenant's CREATE OPERATOR public.=
// (bytea, bytea) over an existing function (byteane) takes its place: the
// search on ssn (text = unknown, which the operator does not touch in
// PostgreSQL's own semantics) silently returns the rows that do not
// match.
func TestReview12BShadowedIndexOperator(t *testing.T) {
	env := startAdversarial(t)
	r := newReviewDB(t, env)
	conn, err := r.connect(t, nil)
	fatalIf(t, err, "connect")
	q := func(sql string) pipelineResult { return pipeline(t, conn, &pgproto3.Query{String: sql}) }
	q(`INSERT INTO patients (name, ssn) VALUES ('r12b-other', '999-99-9999')`)
	for _, sql := range []string{
		`CREATE OPERATOR public.= (LEFTARG = bytea, RIGHTARG = bytea, FUNCTION = pg_catalog.byteane)`,
		`SET search_path = public, pg_catalog`,
	} {
		if res := q(sql); len(res.errors) > 0 {
			t.Logf("held: %s refused: %q", sql, res.errors)
			return
		}
	}
	res := q(`SELECT name FROM patients WHERE ssn = '111-11-1111'`)
	t.Logf("search: rows %q errors %q", res.rows, res.errors)
	if len(res.errors) == 0 && (len(res.rows) != 1 || res.rows[0][0] != "alice-row") {
		t.Errorf("ssn = '111-11-1111' under a tenant's operator public.=(bytea, bytea) returned %q, want alice-row (or an error)", res.rows)
	}
}

// A parameter the client's Parse types as another type than the declared
// column's (numeric, int4, bool for the text column ssn) is converted by
// PostgreSQL before it meets the column (assignment: numeric's output
// text). keyedParam/paramText take a text-format value as written,
// whatever its OID, and seal that: the stored value is not PostgreSQL's.
func TestReview12BTypedParamChangesValue(t *testing.T) {
	env := startAdversarial(t)
	r := newReviewDB(t, env)
	conn, err := r.connect(t, nil)
	fatalIf(t, err, "connect")
	for i, c := range []struct {
		oid     uint32
		v, want string
		sql     string
	}{
		{1700, "007.50", "7.50", `INSERT INTO patients (name, ssn) VALUES ($1, $2)`},
		{23, "0012", "12", `INSERT INTO patients (name, ssn) VALUES ($1, $2)`},
		{16, "yes", "true", `INSERT INTO patients (name, ssn) VALUES ($1, $2)`},
		{1700, "1e3", "1000", `INSERT INTO patients (name, ssn) VALUES ($1, $2::text)`},
	} {
		name := fmt.Sprintf("r12b-param-%d", i)
		res := pipeline(t, conn,
			&pgproto3.Parse{Query: c.sql, ParameterOIDs: []uint32{25, c.oid}},
			&pgproto3.Bind{Parameters: [][]byte{[]byte(name), []byte(c.v)}},
			&pgproto3.Execute{},
			&pgproto3.Sync{})
		if len(res.errors) > 0 {
			t.Logf("%s with $2 of type %d = %q: refused %q", c.sql, c.oid, c.v, res.errors)
			continue
		}
		back := pipeline(t, conn, &pgproto3.Query{String: fmt.Sprintf(`SELECT ssn FROM patients WHERE name = '%s'`, name)})
		if len(back.rows) != 1 || back.rows[0][0] != c.want {
			t.Errorf("%s with $2 typed %d bound %q: stored %q; PostgreSQL stores %q", c.sql, c.oid, c.v, back.rows, c.want)
		}
	}
	// A search: r12b-param-twelve holds 12; $1::text with $1 an int4
	// 0012 is '12' in PostgreSQL.
	pipeline(t, conn, &pgproto3.Query{String: `INSERT INTO patients (name, ssn) VALUES ('r12b-param-twelve', '12')`})
	res := pipeline(t, conn,
		&pgproto3.Parse{Query: `SELECT name FROM patients WHERE ssn = $1::text AND name = 'r12b-param-twelve'`, ParameterOIDs: []uint32{23}},
		&pgproto3.Bind{Parameters: [][]byte{[]byte("0012")}},
		&pgproto3.Execute{},
		&pgproto3.Sync{})
	t.Logf("search: rows %q errors %q", res.rows, res.errors)
	if len(res.errors) == 0 && len(res.rows) != 1 {
		t.Errorf("ssn = $1::text with $1 int4 0012 (12 in PostgreSQL) silently found %d rows, want r12b-param-twelve's row or an error", len(res.rows))
	}
}
