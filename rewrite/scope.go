package rewrite

import (
	pg_query "github.com/pganalyze/pg_query_go/v5"

	"github.com/pgcloak/pgcloak/config"
)

// relEntry is one relation visible in a query level: a table, a subquery,
// a function, a CTE reference or a join alias.
type relEntry struct {
	name    string     // the name it is referenced by: alias, else relation name
	schema  string     // schema as written, for unaliased relations
	relname string     // relation name, for unaliased relations
	table   *declTable // the declared table, or nil
	// children are the relations inside a join with an alias; PostgreSQL
	// resolves alias.col against them.
	children []*relEntry
	excluded bool  // ON CONFLICT's EXCLUDED pseudo-relation
	loc      int32 // where it is named, for refusals
	// unnamed is set for a relation whose name PostgreSQL derives in a
	// way rewrite does not follow (ROWS FROM without an alias, XMLTABLE):
	// a qualifier that matches nothing else might name it.
	unnamed bool
}

// tables returns the declared tables the entry covers.
func (e *relEntry) tables() []*declTable {
	if e.table != nil {
		return []*declTable{e.table}
	}
	var ts []*declTable
	for _, c := range e.children {
		ts = append(ts, c.tables()...)
	}
	return ts
}

// scope is one query level's relations, linked to the enclosing levels for
// correlated references, plus the CTE names visible from it.
type scope struct {
	parent *scope
	rels   []*relEntry
	ctes   []string
}

func newScope(parent *scope) *scope { return &scope{parent: parent} }

// isCTE reports whether an unqualified relation name refers to a CTE.
func (sc *scope) isCTE(name string) bool {
	for l := sc; l != nil; l = l.parent {
		for _, c := range l.ctes {
			if c == name {
				return true
			}
		}
	}
	return false
}

// colUse is a resolved reference to a declared column.
type colUse struct {
	t     *declTable
	col   *config.Column
	entry *relEntry
}

func (u *colUse) ref() ColumnRef { return u.t.ref(u.col) }

// resolve resolves a column reference. It returns the declared column it
// names (nil for anything else), or, for t.* and *, the declared tables the
// star covers. Naming an index column, a whole-row reference to a declared
// table and an unqualified name that rewrite cannot attribute are refused.
//
// Resolution follows PostgreSQL: innermost level first; col, rel.col,
// schema.rel.col, db.schema.rel.col. rewrite only knows the declared columns
// of declared tables, so it is conservative where the catalog would decide:
// an unqualified name that a declared table at the same level declares is
// that column; one that a declared table of an enclosing level declares,
// while the inner level has relations of its own (which might have such a
// column), is refused as ambiguous.
func (a *analyzer) resolve(sc *scope, cr *pg_query.ColumnRef) (*colUse, []*declTable, error) {
	names := make([]string, 0, len(cr.Fields))
	star := false
	for i, f := range cr.Fields {
		switch x := f.Node.(type) {
		case *pg_query.Node_String_:
			names = append(names, x.String_.Sval)
		case *pg_query.Node_AStar:
			if i != len(cr.Fields)-1 {
				return nil, nil, nil
			}
			star = true
		default:
			return nil, nil, nil
		}
	}
	if star {
		if len(names) == 0 {
			var ts []*declTable
			if sc != nil {
				for _, e := range sc.rels {
					if e.excluded {
						continue
					}
					ts = append(ts, e.tables()...)
				}
			}
			return nil, ts, nil
		}
		if e := sc.findEntry(names); e != nil {
			return nil, e.tables(), nil
		}
		return nil, nil, nil
	}
	if len(names) == 0 {
		return nil, nil, nil
	}
	col := names[len(names)-1]
	if len(names) == 1 {
		return a.resolveUnqualified(sc, col, cr.Location)
	}
	e := sc.findEntry(names[:len(names)-1])
	if e == nil {
		// rel.col where rel is no relation: PostgreSQL tries column rel
		// with field col. A field of a declared column is refused.
		if len(names) == 2 {
			u, _, err := a.resolveUnqualified(sc, names[0], cr.Location)
			if err != nil {
				return nil, nil, err
			}
			if u != nil {
				return nil, nil, a.refuseColumn(kindExpression, u.ref(), "field selection", cr.Location)
			}
		}
		return nil, nil, a.unresolvedQualifier(sc, col, cr.Location)
	}
	return a.columnOf(e, col, cr.Location)
}

// unresolvedQualifier refuses a qualified reference to col whose qualifier
// names no relation in scope (an alias in another case, the table's name
// after an alias, a JOIN ... USING alias), in a statement that touches a
// declared table, when col is a declared or index column's name: rewrite
// cannot attribute it, so it would go upstream as written, its comparison's
// plaintext with it, and PostgreSQL refuses it only after logging the text.
// A scope with a relation whose name rewrite does not know lets it pass.
func (a *analyzer) unresolvedQualifier(sc *scope, col string, loc int32) error {
	if !a.touchesDeclared {
		return nil
	}
	for l := sc; l != nil; l = l.parent {
		for _, e := range l.rels {
			if e.unnamed {
				return nil
			}
		}
	}
	for _, t := range a.s.tables {
		if c := t.column(col); c != nil {
			return a.refusal(kindUnresolvedQualifier, t.schema, t.name, c.Name, "", loc)
		}
		if c := t.indexColumn(col); c != nil {
			return a.refusal(kindUnresolvedQualifier, t.schema, t.name, c.IndexColumn, "", loc)
		}
	}
	return nil
}

// columnOf resolves col against one relation entry.
func (a *analyzer) columnOf(e *relEntry, col string, loc int32) (*colUse, []*declTable, error) {
	if e.table != nil {
		if c := e.table.indexColumn(col); c != nil {
			return nil, nil, a.refuseIndexColumn(e.table, col, loc)
		}
		if c := e.table.column(col); c != nil {
			return &colUse{t: e.table, col: c, entry: e}, nil, nil
		}
		return nil, nil, nil
	}
	for _, child := range e.children {
		u, _, err := a.columnOf(child, col, loc)
		if err != nil || u != nil {
			return u, nil, err
		}
	}
	return nil, nil, nil
}

func (a *analyzer) resolveUnqualified(sc *scope, col string, loc int32) (*colUse, []*declTable, error) {
	for l := sc; l != nil; l = l.parent {
		for _, e := range l.rels {
			if e.table == nil {
				continue
			}
			u, _, err := a.columnOf(e, col, loc)
			if err != nil || u != nil {
				return u, nil, err
			}
		}
		for _, e := range l.rels {
			if e.name == col && !e.excluded {
				if ts := e.tables(); len(ts) > 0 {
					return nil, nil, a.refuseTable(kindWholeRow, ts[0], "a whole-row reference", loc)
				}
			}
		}
		if len(l.rels) > 0 {
			// The column most likely belongs to a relation of this
			// level; if an enclosing level declares it, rewrite cannot
			// tell which one PostgreSQL will pick.
			for o := l.parent; o != nil; o = o.parent {
				for _, e := range o.rels {
					if e.table == nil {
						continue
					}
					if c := e.table.column(col); c != nil {
						return nil, nil, a.refuseColumn(kindAmbiguousColumn, e.table.ref(c), "an unqualified reference from a subquery", loc)
					}
				}
			}
			return nil, nil, nil
		}
	}
	return nil, nil, nil
}

// findEntry finds the relation a qualifier names, innermost level first:
// [rel], [schema, rel] or [db, schema, rel]. A schema-qualified name that
// matches no relation exactly falls back to one with the same relation name:
// PostgreSQL would reject the reference, and treating it as that relation
// keeps rewrite on the safe side.
func (sc *scope) findEntry(quals []string) *relEntry {
	if len(quals) == 3 {
		quals = quals[1:]
	}
	for _, strict := range []bool{true, false} {
		for l := sc; l != nil; l = l.parent {
			for _, e := range l.rels {
				if e.matches(quals, strict) {
					return e
				}
			}
		}
		if len(quals) == 1 {
			break
		}
	}
	return nil
}

func (e *relEntry) matches(quals []string, strict bool) bool {
	switch len(quals) {
	case 1:
		return e.name == quals[0]
	case 2:
		if e.relname == "" {
			// schema.alias is an error in PostgreSQL.
			return !strict && e.name != "" && e.name == quals[1]
		}
		if e.relname != quals[1] {
			return false
		}
		// An unqualified relation is whichever schema search_path chose,
		// which rewrite cannot know: any schema qualifier may name it.
		return !strict || e.schema == "" || equalFoldASCII(e.schema, quals[0])
	}
	return false
}

func equalFoldASCII(a, b string) bool { return asciiLower(a) == asciiLower(b) }
