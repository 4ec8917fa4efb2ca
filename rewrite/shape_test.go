package rewrite

import (
	"fmt"
	"strings"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v5"
	"github.com/pgcloak/pgcloak/config"
)

func shapeTestSchema() *Schema {
	return NewSchema(config.Encrypt{Tables: []config.Table{{
		Schema: "public", Name: "patients",
		Columns: []config.Column{
			{Name: "ssn", Type: "text", Search: config.SearchEquality, IndexColumn: "ssn_bidx"},
			{Name: "email", Type: "text", Search: config.SearchEquality, IndexColumn: "email_bidx", Normalize: config.NormalizeLower},
			{Name: "diagnosis", Type: "text", KeyClass: "phi"},
			{Name: "age", Type: "int4"},
		},
	}}}, "app.tenant_id")
}

func TestShapeOf(t *testing.T) {
	cases := []struct {
		sql, key string
		values   []string
		ok       bool
	}{
		{`select * from t where a = 'x' and b = 42`, `select * from t where a = $1 and b = $2`, []string{"x", "42"}, true},
		{`insert into t values ('O''Brien', 1.5e3, .5)`, `insert into t values ($1, $2, $3)`, []string{"O'Brien", "1.5e3", ".5"}, true},
		{`select t1.c2 from t1 -- 'not a literal' 3`, `select t1.c2 from t1 -- 'not a literal' 3`, nil, true},
		{`select "a""b'" from t /* 'x' /* 1 */ */ where c = 'y'`, `select "a""b'" from t /* 'x' /* 1 */ */ where c = $1`, []string{"y"}, true},
		{`select a from t order by 1 limit 5`, `select a from t order by 1 limit 5`, nil, true},
		{`select a from t where a = 'x' group by 1`, `select a from t where a = $1 group by 1`, []string{"x"}, true},
		{`select E'x\n'`, "", nil, false},
		{`select 'a\b'`, "", nil, false},
		{`select U&'d\0061t'`, "", nil, false},
		{`select x'1f'`, "", nil, false},
		{`select $$x$$`, "", nil, false},
		{`select $1`, "", nil, false},
		{`select 0x1f`, "", nil, false},
		{`select 'unterminated`, "", nil, false},
	}
	for _, c := range cases {
		t.Run(c.sql, func(t *testing.T) {
			key, lits, ok := shapeOf(c.sql)
			if ok != c.ok {
				t.Fatalf("ok: got %v, want %v", ok, c.ok)
			}
			if !ok {
				return
			}
			if key != c.key {
				t.Errorf("key: got %q, want %q", key, c.key)
			}
			var values []string
			for _, l := range lits {
				values = append(values, l.Value)
			}
			if fmt.Sprint(values) != fmt.Sprint(c.values) {
				t.Errorf("values: got %q, want %q", values, c.values)
			}
		})
	}
}

// renderMarker renders a keyed value as a string constant naming what the
// proxy would compute, so texts from both paths can be compared.
func renderMarker(kind string, c ColumnRef, value string) string {
	return "'<" + kind + " " + c.String() + " " + strings.ReplaceAll(value, "'", "''") + ">'"
}

func renderExact(p *Plan) string {
	var b strings.Builder
	for i, seg := range p.Segments {
		b.WriteString(seg)
		if i < len(p.Slots) {
			b.WriteString(renderMarker(p.Slots[i].Kind.String(), p.Slots[i].Column, *p.Slots[i].Value))
		}
	}
	return b.String()
}

func renderShape(sp *ShapePlan, lits []Literal) string {
	var b strings.Builder
	for i, part := range sp.Parts {
		b.WriteString(part)
		if i < len(sp.Refs) {
			ps := sp.Plan.Params[sp.Refs[i]]
			lit := lits[ps.Param-1]
			if ps.Kind == ParamPlain {
				b.WriteString(lit.Text)
			} else {
				b.WriteString(renderMarker(map[ParamKind]string{ParamData: "data", ParamIndex: "index"}[ps.Kind], ps.Column, lit.Value))
			}
		}
	}
	return b.String()
}

func canonical(t *testing.T, sql string) string {
	t.Helper()
	tree, err := pg_query.Parse(sql)
	if err != nil {
		t.Fatalf("parse %q: %v", sql, err)
	}
	out, err := pg_query.Deparse(tree)
	if err != nil {
		t.Fatalf("deparse %q: %v", sql, err)
	}
	return out
}

// TestShapeMatchesExact renders statements through their shape and through
// the exact-text analysis and requires the same statement either way.
func TestShapeMatchesExact(t *testing.T) {
	s := shapeTestSchema()
	cache := NewCache(64)
	stmts := []string{
		`insert into patients (name, ssn, email, diagnosis, age) values ('alice', '123-45-6789', 'A@x.test', 'flu', 42)`,
		`insert into patients (ssn, name) values ('1', 'a'), ('2', 'b')`,
		`select id, ssn from patients where ssn = '123-45-6789' and id > 10`,
		`select id from patients p where p.email in ('a@x', 'b@x') or name = 'bob'`,
		`update patients set ssn = '999', diagnosis = 'ok' where ssn = '123' returning ssn`,
		`delete from patients where ssn <> '5' and age is null`,
		`select ssn, email, diagnosis from patients where id = 7`,
		`select name from patients where name = 'x' limit 3`,
		// A number cast to a string type keeps its text (pgbench's
		// :n::text in -M simple).
		`select id from patients where ssn = 123456789::text`,
		`insert into patients (name, ssn) values ('a', 42::varchar)`,
	}
	for _, sql := range stmts {
		t.Run(sql, func(t *testing.T) {
			exact, err := s.Analyze(sql)
			if err != nil {
				t.Fatalf("exact: %v", err)
			}
			for round := range 2 { // the second round comes from the cache
				sp, lits := s.AnalyzeShape(cache, sql)
				if sp == nil {
					t.Fatalf("round %d: no shape", round)
				}
				if sp.Plan.Passthrough != exact.Passthrough {
					t.Fatalf("passthrough: shape %v, exact %v", sp.Plan.Passthrough, exact.Passthrough)
				}
				if exact.Passthrough {
					continue
				}
				got, want := canonical(t, renderShape(sp, lits)), canonical(t, renderExact(exact))
				if got != want {
					t.Errorf("round %d:\nshape: %s\nexact: %s", round, got, want)
				}
			}
		})
	}
}

// TestShapeFallsBack checks that texts whose shape would change their
// meaning or analysis go down the exact path.
func TestShapeFallsBack(t *testing.T) {
	s := shapeTestSchema()
	cache := NewCache(64)
	for _, sql := range []string{
		`select set_config('app.tenant_id', 'x', false)`,
		`set app.tenant_id = 'globex'`,
		`select ssn from patients order by 1`,
		`select * from patients where ssn < '5'`,
		`insert into patients (age) values (-5)`,
		`select date '2020-01-01'`,
		// A number for a text column, bare or cast to another type, is the
		// exact path's to judge.
		`select id from patients where ssn = 123456789`,
		`select id from patients where ssn = 123456789::int8`,
		// Tenancy checks read string constants, which a shape has none of.
		`SELECT my_exec('SET app.tenant_id = ''x''')`,
		`SELECT my_exec('select set_config(''app.'' || ''tenant_id'', ''x'', false)')`,
		`SELECT my_exec('update pg_settings set setting = ''x''')`,
		`CREATE FUNCTION t() RETURNS text LANGUAGE sql RETURN current_setting('app.tenant_id')`,
		// Several statements, some rewritten: the untouched ones' literals
		// once went to the rewritten one's parameters ("select 1" ran as
		// "select 'q0'").
		`select 1; insert into patients (name, ssn) values ('q0', '987-65-4300')`,
		`insert into notes values (0, 'n0'); insert into patients (name, ssn) values ('q0', '987-65-4300')`,
		`update patients set name = 'x' where ssn = '1'; delete from notes where id = 5`,
	} {
		t.Run(sql, func(t *testing.T) {
			sp, _ := s.AnalyzeShape(cache, sql)
			if sp != nil && !sp.Plan.Passthrough {
				t.Errorf("got a rewriting shape plan, want the exact path")
			}
			if sp != nil && sp.Plan.Passthrough {
				if _, err := s.Analyze(sql); err != nil {
					t.Errorf("shape passes what the exact analysis refuses: %v", err)
				}
			}
		})
	}
}

// FuzzShape: the lexer never panics, and whenever a text has a rewriting
// shape and the exact analysis accepts it too, both render the same
// statement.
func FuzzShape(f *testing.F) {
	for _, seed := range []string{
		`insert into patients (name, ssn) values ('a''b', '1')`,
		`select * from patients where ssn in ('1', '2') and age = 3`,
		`update patients set email = 'X@y' where ssn = '1'`,
		`select "q""'" from t -- '`,
		`select 1.5e3, .5, 'x' /* /* 'y' */ */`,
		`SELECT my_exec('SET app.tenant_id = ''x''')`,
	} {
		f.Add(seed)
	}
	s := shapeTestSchema()
	f.Fuzz(func(t *testing.T, sql string) {
		if strings.IndexByte(sql, 0) >= 0 {
			return
		}
		_, lits, ok := shapeOf(sql)
		if !ok {
			return
		}
		for _, l := range lits {
			if !strings.Contains(sql, l.Text) {
				t.Fatalf("literal %q not in the text", l.Text)
			}
		}
		sp, lits := s.AnalyzeShape(NewCache(4), sql)
		if sp == nil {
			return
		}
		exact, err := s.Analyze(sql)
		if err != nil {
			// The proxy runs a text with a shape without analysing it
			// again: the shape must never pass what the text refuses.
			t.Fatalf("the shape passes what the exact analysis refuses: %v", err)
		}
		if sp.Plan.Passthrough {
			return
		}
		a, aerr := pg_query.Parse(renderShape(sp, lits))
		b, berr := pg_query.Parse(renderExact(exact))
		if aerr != nil || berr != nil {
			t.Fatalf("rendered text does not parse: %v / %v", aerr, berr)
		}
		da, _ := pg_query.Deparse(a)
		db, _ := pg_query.Deparse(b)
		if da != db {
			t.Fatalf("shape and exact differ:\n%s\n%s", da, db)
		}
	})
}
