package rewrite

import (
	"strings"

	"github.com/pgcloak/pgcloak/config"
)

// defaultSchema is the schema of a declared table whose Schema is empty.
const defaultSchema = "public"

// Schema is rewrite's read-only view of the declared tables and the tenant
// setting. It is immutable after NewSchema and safe for concurrent use; a
// configuration reload builds a new Schema (and a new Cache).
type Schema struct {
	tables  []*declTable
	setting string // the tenant GUC as configured, e.g. "app.tenant_id"

	// byFirst holds the MightNeedAnalysis tokens, lower-case ASCII, keyed
	// by their first byte.
	byFirst [256][]string
}

// declTable is one declared table with its own copy of the column
// declarations; ColumnRef.Column points into cols.
type declTable struct {
	schema string
	name   string
	cols   []config.Column
}

// qualified returns schema.name as messages show it.
func (t *declTable) qualified() string { return t.schema + "." + t.name }

// column returns the declared column named name, or nil. Names compare
// case-insensitively so that a declaration written in another case can never
// let a column slip through as undeclared.
func (t *declTable) column(name string) *config.Column {
	for i := range t.cols {
		if strings.EqualFold(t.cols[i].Name, name) {
			return &t.cols[i]
		}
	}
	return nil
}

// indexColumn returns the declared column whose index column is named name,
// or nil.
func (t *declTable) indexColumn(name string) *config.Column {
	for i := range t.cols {
		c := &t.cols[i]
		if searchable(c) && strings.EqualFold(c.IndexColumn, name) {
			return c
		}
	}
	return nil
}

func (t *declTable) ref(c *config.Column) ColumnRef {
	return ColumnRef{Schema: t.schema, Table: t.name, Column: c}
}

// searchable reports whether c has a blind index.
func searchable(c *config.Column) bool { return c.Search == config.SearchEquality }

// NewSchema builds the rewrite view of enc. tenantSetting is the GUC the
// proxy pins on every upstream session (tenancy.setting, e.g.
// "app.tenant_id"). NewSchema copies what it keeps; enc may be reused.
func NewSchema(enc config.Encrypt, tenantSetting string) *Schema {
	s := &Schema{setting: tenantSetting}
	for _, t := range enc.Tables {
		if len(t.Columns) == 0 {
			continue // nothing to protect
		}
		dt := &declTable{schema: t.Schema, name: t.Name, cols: make([]config.Column, len(t.Columns))}
		if dt.schema == "" {
			dt.schema = defaultSchema
		}
		copy(dt.cols, t.Columns)
		for i := range dt.cols {
			c := &dt.cols[i]
			if searchable(c) && c.IndexColumn == "" {
				c.IndexColumn = c.Name + "_bidx"
			}
		}
		s.tables = append(s.tables, dt)
	}
	s.buildTokens()
	return s
}

// lookup resolves a table name as written in SQL (schema may be empty) to a
// declared table. An unqualified name that matches declared tables in more
// than one schema cannot be resolved without the session's search_path and
// is refused.
func (s *Schema) lookup(schema, name string, loc int32, a *analyzer) (*declTable, error) {
	var found *declTable
	for _, t := range s.tables {
		if !strings.EqualFold(t.name, name) {
			continue
		}
		if schema != "" {
			if strings.EqualFold(t.schema, schema) {
				return t, nil
			}
			continue
		}
		if found != nil {
			return nil, a.refuseAmbiguousTable(name, found, t, loc)
		}
		found = t
	}
	return found, nil
}

// anyTableNamed returns a declared table called name in any schema (or the
// given one), ignoring ambiguity; it answers "might this touch a declared
// table".
func (s *Schema) anyTableNamed(schema, name string) *declTable {
	for _, t := range s.tables {
		if strings.EqualFold(t.name, name) && (schema == "" || strings.EqualFold(t.schema, schema)) {
			return t
		}
	}
	return nil
}
