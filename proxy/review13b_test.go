package proxy

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// A search_path given at login with pg_catalog after another schema, in
// which the tenant made a domain named text: pgcloak read '...'::text as
// pg_catalog's text while PostgreSQL used the domain (review 13B of
// 2026-12-08). The login is refused now.
func TestReview13BStartupSearchPath(t *testing.T) {
	env := startAdversarial(t)
	for _, sp := range []map[string]string{
		{"search_path": "public, pg_catalog"},
		{"options": "-c search_path=public,pg_catalog"},
	} {
		r := newReviewDB(t, env)
		setup, err := r.connect(t, nil)
		fatalIf(t, err, "connect")
		res := pipeline(t, setup, &pgproto3.Query{String: `CREATE DOMAIN public.text AS pg_catalog.varchar(3)`})
		t.Logf("domain: %q", res.errors)
		conn, err := r.connect(t, sp)
		if err != nil {
			t.Logf("%v refused: %v", sp, err)
			if !strings.Contains(err.Error(), "search_path") {
				t.Errorf("%v refused for another reason: %v", sp, err)
			}
			continue
		}
		t.Errorf("a login with %v was accepted", sp)
		q := func(sql string) pipelineResult { return pipeline(t, conn, &pgproto3.Query{String: sql}) }
		t.Logf("search_path: %q", q(`SHOW search_path`).rows)
		want := q(`SELECT ('abc   '::text)::pg_catalog.text`)
		ins := q(`INSERT INTO patients (name, ssn) VALUES ('r13b-sp', 'abc   '::text)`)
		back := q(`SELECT ssn FROM patients WHERE name = 'r13b-sp'`)
		t.Logf("%v want %q insert %q stored %q %q", sp, want.rows, ins.errors, back.rows, back.errors)
		if len(ins.errors) == 0 && len(want.rows) == 1 && len(back.rows) == 1 && back.rows[0][0] != want.rows[0][0] {
			t.Errorf("%v: stored %q, PostgreSQL stores %q", sp, back.rows[0][0], want.rows[0][0])
		}
	}
}
