package rewrite

import (
	"slices"
	"strings"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v5"
	"google.golang.org/protobuf/proto"

	"github.com/pgcloak/pgcloak/config"
)

func testCatalogViews(t *testing.T) *CatalogViews {
	t.Helper()
	enc := config.Encrypt{Tables: []config.Table{{Schema: "public", Name: "patients", Columns: []config.Column{
		{Name: "ssn", Type: "text", Search: config.SearchEquality, IndexColumn: "ssn_bidx"},
		{Name: "birth_date", Type: "date"},
	}}}}
	v, err := NewCatalogViews(enc, CatalogColumns{
		Attribute: []string{"attrelid", "attname", "atttypid", "attlen", "attnum", "atttypmod"},
		Columns:   []string{"table_schema", "table_name", "column_name", "data_type", "udt_name"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestCatalogViewsRewrite: every FROM reference to a replaced catalog
// relation, however written (qualified or not, aliased or not, in a join,
// a subquery or a CTE), becomes a derived table under the name the query
// uses; other relations and other uses of the names stay as written.
func TestCatalogViewsRewrite(t *testing.T) {
	v := testCatalogViews(t)
	for _, c := range []struct {
		sql     string
		derived int // derived tables expected
		aliases []string
	}{
		{"SELECT attname FROM pg_attribute WHERE attrelid = 1", 1, []string{"pg_attribute"}},
		{"SELECT a.attname FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid", 2, []string{"a", "c"}},
		{"SELECT * FROM information_schema.columns WHERE table_name = $1", 1, []string{"columns"}},
		{"WITH x AS (SELECT * FROM pg_index) SELECT * FROM x, pg_constraint k WHERE k.conrelid = x.indrelid", 2, []string{"pg_index", "k"}},
		{"SELECT (SELECT count(*) FROM PG_ATTRIBUTE) FROM pg_class WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_index i)", 3, []string{"pg_attribute", "i", "pg_class"}},
		{"SELECT * FROM myschema.pg_attribute", 0, nil},
		{"WITH pg_index AS (SELECT 1) SELECT * FROM pg_index", 0, nil},
		{"WITH pg_index AS (SELECT 1) SELECT * FROM pg_index, pg_catalog.pg_index j", 1, []string{"j"}},
		{"SELECT indexname FROM pg_indexes WHERE tablename = 'patients'", 1, []string{"pg_indexes"}},
		{"SELECT * FROM information_schema.table_constraints tc JOIN information_schema.key_column_usage k USING (constraint_name)", 2, []string{"k", "tc"}},
		{"SELECT * FROM information_schema.check_constraints, information_schema.constraint_column_usage u, information_schema.column_privileges", 3, []string{"check_constraints", "column_privileges", "u"}},
		{"SELECT * FROM information_schema.tables", 0, nil},
		{"SELECT * FROM table_constraints", 0, nil},
		{"SELECT * FROM columns", 0, nil},
		{"SELECT 'pg_attribute', pg_index_column_has_property(1, 1, 'asc')", 0, nil},
		{"SELECT * FROM pg_type", 0, nil},
		{"SELECT FROM", 0, nil}, // does not parse: left to PostgreSQL
	} {
		out, changed, err := v.Rewrite(c.sql)
		if err != nil {
			t.Errorf("%s: %v", c.sql, err)
			continue
		}
		if changed != (c.derived > 0) {
			t.Errorf("%s: changed %v, want %v", c.sql, changed, c.derived > 0)
		}
		if c.derived == 0 {
			if out != c.sql {
				t.Errorf("%s: got %s, want it unchanged", c.sql, out)
			}
			continue
		}
		tree, err := pg_query.Parse(out)
		if err != nil {
			t.Errorf("%s: the output does not parse: %v\n%s", c.sql, err, out)
			continue
		}
		var aliases []string
		_ = visit(tree, func(m proto.Message) (bool, error) {
			// The inputs have none; the views' own VALUES lists are d and h.
			if rs, ok := m.(*pg_query.RangeSubselect); ok && rs.Alias.Aliasname != "d" && rs.Alias.Aliasname != "h" {
				aliases = append(aliases, rs.Alias.Aliasname)
			}
			return true, nil
		})
		slices.Sort(aliases)
		slices.Sort(c.aliases)
		if strings.Join(aliases, ",") != strings.Join(c.aliases, ",") {
			t.Errorf("%s: derived tables named %v, want %v\n%s", c.sql, aliases, c.aliases, out)
		}
		// Cached: the same text gives the same answer.
		if again, _, _ := v.Rewrite(c.sql); again != out {
			t.Errorf("%s: a second rewrite differs", c.sql)
		}
	}
}
