package rewrite

import (
	"container/list"
	"fmt"
	"strings"
	"sync"

	pg_query "github.com/pganalyze/pg_query_go/v5"
	"google.golang.org/protobuf/proto"

	"github.com/pgcloak/pgcloak/config"
)

// CatalogViews shows a tenant session the schema as the application
// declared it. PostgreSQL stores a declared column as bytea beside its
// blind-index column, each with pgcloak's format CHECK, and an index on
// each index column; ORMs, drivers and psql that read the catalog would
// see exactly that. CatalogViews rewrites every reference in a FROM
// clause (joins and subqueries included) to the catalog relations that
// describe columns, indexes and constraints into a derived table of the
// same name and columns over the real one, in which:
//
//   - pg_catalog.pg_attribute gives each declared column its declared type
//     (atttypid, atttypmod, attlen, attbyval, attalign, attstorage,
//     attcollation, attndims) and has no row for an index column;
//   - information_schema.columns gives it the declared type's data_type,
//     udt_name and their lengths and precisions, and has no row for an
//     index column;
//   - pg_catalog.pg_index has no index that covers an index column;
//   - pg_catalog.pg_constraint has no format CHECK of pgcloak's on a
//     declared table;
//   - pg_catalog.pg_indexes has no index that covers an index column,
//     nor pg_catalog.pg_class a row for one (psql's \di);
//   - information_schema.table_constraints, check_constraints and
//     constraint_column_usage have no format CHECK of pgcloak's, and
//     constraint_column_usage, key_column_usage and column_privileges no
//     row for an index column.
//
// It works on the statement's tree, not on known query texts, so it holds
// for catalog queries it has never seen. The declarations come from the
// configuration that the session runs under (SIGHUP gives new sessions
// new ones), written into the derived tables as constants, so replicas
// share no state. Unqualified names count as the catalog's: pg_catalog
// comes first in every search_path unless placed later explicitly.
type CatalogViews struct {
	subs map[string]*pg_query.Node // "pg_catalog.pg_attribute" -> its SelectStmt

	mu    sync.Mutex
	cache map[string]*list.Element
	order *list.List
}

// CatalogColumnsQuery lists the columns, in order, of the relations whose
// column lists the derived tables must repeat; feed its rows to
// NewCatalogViews. The lists differ between PostgreSQL versions.
const CatalogColumnsQuery = `SELECT attrelid::regclass::text, attname::text FROM pg_catalog.pg_attribute
WHERE attrelid IN ('pg_catalog.pg_attribute'::regclass, 'information_schema.columns'::regclass)
  AND attnum > 0 AND NOT attisdropped ORDER BY attrelid, attnum`

// CatalogColumns are the column names of pg_catalog.pg_attribute and of
// information_schema.columns, in order, as the server has them.
type CatalogColumns struct {
	Attribute []string
	Columns   []string
}

// Add records one row of CatalogColumnsQuery.
func (c *CatalogColumns) Add(relation, column string) {
	switch relation {
	case "pg_attribute", "pg_catalog.pg_attribute":
		c.Attribute = append(c.Attribute, column)
	case "information_schema.columns":
		c.Columns = append(c.Columns, column)
	}
}

const catalogCacheSize = 256

// NewCatalogViews builds the derived tables for the declared tables of
// enc.
func NewCatalogViews(enc config.Encrypt, cols CatalogColumns) (*CatalogViews, error) {
	if len(cols.Attribute) == 0 || len(cols.Columns) == 0 {
		return nil, fmt.Errorf("rewrite: the catalog's column lists are empty")
	}
	var attrRows, colRows, hidden, hiddenCols []string
	var relids, tables []string
	for _, t := range enc.Tables {
		relid := "pg_catalog.to_regclass(" + quoteLiteral(quoteIdent(t.Schema)+"."+quoteIdent(t.Name)) + ")"
		relids = append(relids, relid)
		tables = append(tables, fmt.Sprintf("(%s, %s)", quoteLiteral(t.Schema), quoteLiteral(t.Name)))
		for _, c := range t.Columns {
			// The configuration names types as PostgreSQL does (int4,
			// timestamptz, ...), and they are all built in.
			oid := "pg_catalog.to_regtype(" + quoteLiteral(c.Type) + ")::pg_catalog.oid"
			attrRows = append(attrRows, fmt.Sprintf("(%s, %s::pg_catalog.name, %s, false)", relid, quoteLiteral(c.Name), oid))
			colRows = append(colRows, fmt.Sprintf("(%s, %s, %s, %s, false)", quoteLiteral(t.Schema), quoteLiteral(t.Name), quoteLiteral(c.Name), oid))
			if c.IndexColumn != "" {
				attrRows = append(attrRows, fmt.Sprintf("(%s, %s::pg_catalog.name, NULL::pg_catalog.oid, true)", relid, quoteLiteral(c.IndexColumn)))
				colRows = append(colRows, fmt.Sprintf("(%s, %s, %s, NULL::pg_catalog.oid, true)", quoteLiteral(t.Schema), quoteLiteral(t.Name), quoteLiteral(c.IndexColumn)))
				hidden = append(hidden, fmt.Sprintf("(%s, %s::pg_catalog.name)", relid, quoteLiteral(c.IndexColumn)))
				hiddenCols = append(hiddenCols, fmt.Sprintf("(%s, %s, %s)", quoteLiteral(t.Schema), quoteLiteral(t.Name), quoteLiteral(c.IndexColumn)))
			}
		}
	}
	v := &CatalogViews{subs: map[string]*pg_query.Node{}, cache: map[string]*list.Element{}, order: list.New()}
	if len(attrRows) == 0 {
		return v, nil // nothing declared: nothing to show differently
	}

	// pg_attribute: the declared type's facts for a declared column.
	attrOverride := map[string]string{
		"atttypid":     "d.typid",
		"atttypmod":    "-1",
		"attlen":       "t.typlen",
		"attbyval":     "t.typbyval",
		"attalign":     "t.typalign",
		"attstorage":   "t.typstorage",
		"attcollation": "t.typcollation",
		"attndims":     "0",
	}
	var sel []string
	for _, c := range cols.Attribute {
		if e, ok := attrOverride[c]; ok {
			sel = append(sel, fmt.Sprintf("CASE WHEN d.typid IS NULL THEN a.%[1]s ELSE %[2]s END AS %[1]s", quoteIdent(c), e))
		} else {
			sel = append(sel, "a."+quoteIdent(c))
		}
	}
	attr := "SELECT " + strings.Join(sel, ", ") + " FROM pg_catalog.pg_attribute a" +
		" LEFT JOIN (VALUES " + strings.Join(attrRows, ", ") + ") d(relid, attname, typid, hide) ON d.relid = a.attrelid AND d.attname = a.attname" +
		" LEFT JOIN pg_catalog.pg_type t ON t.oid = d.typid WHERE d.hide IS NOT TRUE"

	// information_schema.columns: the declared type as the view would
	// describe a column of it (the view's own functions).
	colOverride := map[string]string{
		"data_type":                "pg_catalog.format_type(d.typid, NULL)::information_schema.character_data",
		"character_maximum_length": "information_schema._pg_char_max_length(d.typid, -1)::information_schema.cardinal_number",
		"character_octet_length":   "information_schema._pg_char_octet_length(d.typid, -1)::information_schema.cardinal_number",
		"numeric_precision":        "information_schema._pg_numeric_precision(d.typid, -1)::information_schema.cardinal_number",
		"numeric_precision_radix":  "information_schema._pg_numeric_precision_radix(d.typid, -1)::information_schema.cardinal_number",
		"numeric_scale":            "information_schema._pg_numeric_scale(d.typid, -1)::information_schema.cardinal_number",
		"datetime_precision":       "information_schema._pg_datetime_precision(d.typid, -1)::information_schema.cardinal_number",
		"interval_type":            "information_schema._pg_interval_type(d.typid, -1)::information_schema.character_data",
		"udt_schema":               "'pg_catalog'::information_schema.sql_identifier",
		"udt_name":                 "t.typname::information_schema.sql_identifier",
	}
	sel = sel[:0]
	for _, c := range cols.Columns {
		if e, ok := colOverride[c]; ok {
			sel = append(sel, fmt.Sprintf("CASE WHEN d.typid IS NULL THEN c.%[1]s ELSE %[2]s END AS %[1]s", quoteIdent(c), e))
		} else {
			sel = append(sel, "c."+quoteIdent(c))
		}
	}
	columns := "SELECT " + strings.Join(sel, ", ") + " FROM information_schema.columns c" +
		" LEFT JOIN (VALUES " + strings.Join(colRows, ", ") + ") d(sch, tbl, col, typid, hide)" +
		" ON d.sch = c.table_schema::text AND d.tbl = c.table_name::text AND d.col = c.column_name::text" +
		" LEFT JOIN pg_catalog.pg_type t ON t.oid = d.typid WHERE d.hide IS NOT TRUE"

	// pg_index, pg_indexes: no index over an index column. pg_constraint:
	// no format CHECK of pgcloak's on a declared table.
	index := "SELECT i.* FROM pg_catalog.pg_index i"
	indexes := "SELECT x.* FROM pg_catalog.pg_indexes x"
	class := "SELECT r.* FROM pg_catalog.pg_class r"
	if len(hidden) > 0 {
		// coversIndexColumn is true of an index (its OID) whose key has an
		// index column.
		coversIndexColumn := func(index string) string {
			return "EXISTS (SELECT FROM pg_catalog.pg_index hi JOIN (VALUES " + strings.Join(hidden, ", ") + ") h(relid, attname) ON h.relid = hi.indrelid" +
				" JOIN pg_catalog.pg_attribute ha ON ha.attrelid = h.relid AND ha.attname = h.attname" +
				" WHERE hi.indexrelid = " + index + " AND ha.attnum = ANY (hi.indkey::pg_catalog.int2[]))"
		}
		index += " WHERE NOT " + coversIndexColumn("i.indexrelid")
		// pg_class: the index relations themselves (psql's \di lists them).
		class += " WHERE r.relkind NOT IN ('i', 'I') OR NOT " + coversIndexColumn("r.oid")
		indexes += " WHERE NOT " + coversIndexColumn("pg_catalog.to_regclass(pg_catalog.quote_ident(x.schemaname::text) || '.' || pg_catalog.quote_ident(x.indexname::text))::pg_catalog.oid")
	}
	const formatName = "LIKE '%\\_pgcloak\\_format'"
	constraint := "SELECT c.* FROM pg_catalog.pg_constraint c WHERE NOT (c.contype = 'c'" +
		" AND c.conname::text " + formatName + " AND c.conrelid = ANY (ARRAY[" + strings.Join(relids, ", ") + "]))"

	// The information_schema views that name constraints and columns:
	// a format CHECK is a CHECK named so on a declared table; a row of an
	// index column goes.
	declared := "(VALUES " + strings.Join(tables, ", ") + ")"
	isIndexColumn := func(schema, table, column string) string {
		if len(hiddenCols) == 0 {
			return "false"
		}
		return fmt.Sprintf("(%s::text, %s::text, %s::text) IN (VALUES %s)", schema, table, column, strings.Join(hiddenCols, ", "))
	}
	tableConstraints := "SELECT tc.* FROM information_schema.table_constraints tc WHERE (tc.constraint_type::text = 'CHECK'" +
		" AND tc.constraint_name::text " + formatName + " AND (tc.table_schema::text, tc.table_name::text) IN " + declared + ") IS NOT TRUE"
	checkConstraints := "SELECT cc.* FROM information_schema.check_constraints cc WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_constraint k" +
		" JOIN pg_catalog.pg_namespace kn ON kn.oid = k.connamespace" +
		" WHERE kn.nspname::text = cc.constraint_schema::text AND k.conname::text = cc.constraint_name::text AND k.contype = 'c'" +
		" AND k.conname::text " + formatName + " AND k.conrelid = ANY (ARRAY[" + strings.Join(relids, ", ") + "]))"
	constraintColumns := "SELECT u.* FROM information_schema.constraint_column_usage u WHERE (" +
		isIndexColumn("u.table_schema", "u.table_name", "u.column_name") +
		" OR (u.constraint_name::text " + formatName + " AND (u.table_schema::text, u.table_name::text) IN " + declared + ")) IS NOT TRUE"
	keyColumns := "SELECT k.* FROM information_schema.key_column_usage k WHERE " +
		isIndexColumn("k.table_schema", "k.table_name", "k.column_name") + " IS NOT TRUE"
	columnPrivileges := "SELECT p.* FROM information_schema.column_privileges p WHERE " +
		isIndexColumn("p.table_schema", "p.table_name", "p.column_name") + " IS NOT TRUE"

	for name, sql := range map[string]string{
		"pg_catalog.pg_attribute":                    attr,
		"information_schema.columns":                 columns,
		"pg_catalog.pg_index":                        index,
		"pg_catalog.pg_indexes":                      indexes,
		"pg_catalog.pg_class":                        class,
		"pg_catalog.pg_constraint":                   constraint,
		"information_schema.table_constraints":       tableConstraints,
		"information_schema.check_constraints":       checkConstraints,
		"information_schema.constraint_column_usage": constraintColumns,
		"information_schema.key_column_usage":        keyColumns,
		"information_schema.column_privileges":       columnPrivileges,
	} {
		tree, err := pg_query.Parse(sql)
		if err != nil {
			return nil, fmt.Errorf("rewrite: the derived table for %s: %w", name, err)
		}
		v.subs[name] = tree.Stmts[0].Stmt
	}
	return v, nil
}

// catalogWords are what a text that names one of the replaced relations
// contains, in any case (identifiers fold; a quoted name is spelled
// exactly so); all but information_schema start with "pg_".
var catalogWords = []string{"pg_attribute", "pg_index", "pg_class", "pg_constraint"}

// MentionsCatalog reports, without parsing, whether sql may name one of
// the relations CatalogViews replaces. An application's statements
// usually hold neither "pg_" nor information_schema: two scans.
func MentionsCatalog(sql string) bool {
	if ContainsFold(sql, "information_schema") {
		return true
	}
	if !ContainsFold(sql, "pg_") {
		return false
	}
	for _, w := range catalogWords {
		if ContainsFold(sql, w) {
			return true
		}
	}
	return false
}

// Rewrite returns sql with the catalog relations replaced, and whether it
// replaced any. A text that does not parse is returned unchanged (ok
// false): PostgreSQL reports its error. An error means the replaced tree
// could not be rendered.
func (v *CatalogViews) Rewrite(sql string) (string, bool, error) {
	if v == nil || len(v.subs) == 0 || !MentionsCatalog(sql) {
		return sql, false, nil
	}
	if out, ok := v.cached(sql); ok {
		return out, out != sql, nil
	}
	tree, err := pg_query.Parse(sql)
	if err != nil {
		return sql, false, nil
	}
	// A CTE may take a catalog relation's name; an unqualified reference
	// to that name is then the CTE's.
	ctes := map[string]bool{}
	_ = visit(tree, func(m proto.Message) (bool, error) {
		if c, ok := m.(*pg_query.CommonTableExpr); ok {
			ctes[c.Ctename] = true
		}
		return true, nil
	})
	var targets []*pg_query.Node
	_ = visit(tree, func(m proto.Message) (bool, error) {
		if n, ok := m.(*pg_query.Node); ok {
			if rv := n.GetRangeVar(); rv != nil && v.subFor(rv) != nil && !(rv.Schemaname == "" && ctes[rv.Relname]) {
				targets = append(targets, n)
				return false, nil
			}
		}
		return true, nil
	})
	if len(targets) == 0 {
		v.remember(sql, sql)
		return sql, false, nil
	}
	for _, n := range targets {
		rv := n.GetRangeVar()
		alias := rv.Alias
		if alias == nil {
			alias = &pg_query.Alias{Aliasname: rv.Relname}
		}
		n.Node = &pg_query.Node_RangeSubselect{RangeSubselect: &pg_query.RangeSubselect{
			Subquery: v.subFor(rv),
			Alias:    alias,
		}}
	}
	out, err := pg_query.Deparse(tree)
	if err != nil {
		return "", false, fmt.Errorf("rewrite: cannot render a catalog query with pgcloak's views: %w", err)
	}
	v.remember(sql, out)
	return out, true, nil
}

// subFor returns the derived table that replaces rv, or nil.
func (v *CatalogViews) subFor(rv *pg_query.RangeVar) *pg_query.Node {
	if rv.Catalogname != "" {
		return nil
	}
	schema := rv.Schemaname
	switch rv.Relname {
	case "pg_attribute", "pg_index", "pg_indexes", "pg_class", "pg_constraint":
		if schema == "" {
			schema = "pg_catalog"
		}
	}
	return v.subs[schema+"."+rv.Relname]
}

func (v *CatalogViews) cached(sql string) (string, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	el, ok := v.cache[sql]
	if !ok {
		return "", false
	}
	v.order.MoveToFront(el)
	return el.Value.([2]string)[1], true
}

func (v *CatalogViews) remember(sql, out string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.cache[sql]; ok {
		return
	}
	v.cache[sql] = v.order.PushFront([2]string{sql, out})
	for v.order.Len() > catalogCacheSize {
		old := v.order.Back()
		v.order.Remove(old)
		delete(v.cache, old.Value.([2]string)[0])
	}
}

// quoteLiteral quotes a string constant (standard_conforming_strings on).
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
