package rewrite

import (
	pg_query "github.com/pganalyze/pg_query_go/v5"

	"github.com/pgcloak/pgcloak/config"
)

// qctx says where a query sits and so whether its select list (or
// RETURNING) may name declared columns. Only the top level may: the proxy
// decrypts result columns whose RowDescription origin is a declared column,
// and only a plain column reference at the top level keeps that origin.
type qctx struct {
	top       bool
	kind      *refusalKind // the refusal for exposing a declared column
	construct string
}

var (
	qTop      = qctx{top: true}
	qExists   = qctx{top: true} // EXISTS (...) ignores its select list
	qSubquery = qctx{kind: kindSubqueryOutput, construct: "exposing it from a subquery"}
	qCTE      = qctx{kind: kindSubqueryOutput, construct: "exposing it from a CTE"}
	qCopyOut  = qctx{kind: kindInsertSelect, construct: "copying it with INSERT ... SELECT"}
)

// query analyses a statement that can appear as a (sub)query: SELECT,
// VALUES, and data-modifying INSERT / UPDATE / DELETE in CTEs.
func (a *analyzer) query(n *pg_query.Node, parent *scope, q qctx) error {
	if n == nil {
		return nil
	}
	switch x := n.Node.(type) {
	case *pg_query.Node_SelectStmt:
		return a.selectStmt(x.SelectStmt, parent, q)
	case *pg_query.Node_InsertStmt:
		return a.insert(x.InsertStmt, parent, q)
	case *pg_query.Node_UpdateStmt:
		return a.update(x.UpdateStmt, parent, q)
	case *pg_query.Node_DeleteStmt:
		return a.delete(x.DeleteStmt, parent, q)
	}
	if t := a.touches(n); t != nil {
		return a.refuseTable(kindStatement, t, statementName(inner(n)), -1)
	}
	return nil
}

func setOpName(s *pg_query.SelectStmt) string {
	name := map[pg_query.SetOperation]string{
		pg_query.SetOperation_SETOP_UNION:     "UNION",
		pg_query.SetOperation_SETOP_INTERSECT: "INTERSECT",
		pg_query.SetOperation_SETOP_EXCEPT:    "EXCEPT",
	}[s.Op]
	if s.All {
		name += " ALL"
	}
	return name
}

func (a *analyzer) selectStmt(s *pg_query.SelectStmt, parent *scope, q qctx) error {
	if s == nil {
		return nil
	}
	sc := newScope(parent)
	if err := a.with(s.WithClause, sc); err != nil {
		return err
	}
	if s.Op != pg_query.SetOperation_SETOP_NONE && s.Op != pg_query.SetOperation_SET_OPERATION_UNDEFINED {
		// The set operation's result loses the columns' origin, and
		// UNION/INTERSECT/EXCEPT compare rows: arms must not expose
		// declared columns.
		arm := qctx{kind: kindSetOperation, construct: setOpName(s)}
		if err := a.selectStmt(s.Larg, sc, arm); err != nil {
			return err
		}
		if err := a.selectStmt(s.Rarg, sc, arm); err != nil {
			return err
		}
		// ORDER BY and LIMIT see the output columns, none of them declared.
		out := newScope(sc)
		out.rels = []*relEntry{{}}
		if err := a.sortExprs(s.SortClause, out, usage{kindOrderBy, "ORDER BY"}); err != nil {
			return err
		}
		if err := a.expr(s.LimitCount, out, useValue); err != nil {
			return err
		}
		return a.expr(s.LimitOffset, out, useValue)
	}
	for _, row := range s.ValuesLists {
		if err := a.expr(row, sc, useValue); err != nil {
			return err
		}
	}
	for _, f := range s.FromClause {
		if err := a.fromItem(f, sc); err != nil {
			return err
		}
	}
	if err := a.expr(s.WhereClause, sc, useCondition); err != nil {
		return err
	}
	distinct := len(s.DistinctClause) > 0 && s.DistinctClause[0].GetNode() == nil
	if err := a.targetList(s.TargetList, sc, q, distinct); err != nil {
		return err
	}
	for _, g := range s.GroupClause {
		if err := a.groupItem(g, sc, s.TargetList); err != nil {
			return err
		}
	}
	if err := a.expr(s.HavingClause, sc, useCondition); err != nil {
		return err
	}
	for _, w := range s.WindowClause {
		wd := w.GetWindowDef()
		if wd == nil {
			continue
		}
		if err := a.windowDef(wd, sc, usage{kindWindow, "window definition"}); err != nil {
			return err
		}
	}
	if !distinct {
		for _, d := range s.DistinctClause {
			if err := a.outputRef(d, s.TargetList, sc, kindDistinct, "DISTINCT ON"); err != nil {
				return err
			}
			if err := a.expr(d, sc, usage{kindDistinct, "DISTINCT ON"}); err != nil {
				return err
			}
		}
	}
	for _, n := range s.SortClause {
		sb := n.GetSortBy()
		if sb == nil {
			continue
		}
		if err := a.outputRef(sb.Node, s.TargetList, sc, kindOrderBy, "ORDER BY"); err != nil {
			return err
		}
		if err := a.expr(sb.Node, sc, usage{kindOrderBy, "ORDER BY"}); err != nil {
			return err
		}
	}
	if err := a.expr(s.LimitCount, sc, useValue); err != nil {
		return err
	}
	return a.expr(s.LimitOffset, sc, useValue)
}

// with analyses a WITH clause's queries. A CTE name shadows a table of the
// same name from the point where it is visible: inside its own body only
// for WITH RECURSIVE, in later CTEs and the main query always.
func (a *analyzer) with(w *pg_query.WithClause, sc *scope) error {
	if w == nil {
		return nil
	}
	if w.Recursive {
		for _, c := range w.Ctes {
			sc.ctes = append(sc.ctes, c.GetCommonTableExpr().GetCtename())
		}
	}
	for _, c := range w.Ctes {
		cte := c.GetCommonTableExpr()
		if cte == nil {
			continue
		}
		if err := a.query(cte.Ctequery, sc, qCTE); err != nil {
			return err
		}
		if !w.Recursive {
			sc.ctes = append(sc.ctes, cte.Ctename)
		}
	}
	return nil
}

// targetList checks a select list or RETURNING list.
func (a *analyzer) targetList(list []*pg_query.Node, sc *scope, q qctx, distinct bool) error {
	for _, n := range list {
		rt := n.GetResTarget()
		if rt == nil {
			continue
		}
		cr := rt.Val.GetColumnRef()
		if cr == nil {
			if err := a.expr(rt.Val, sc, useValue); err != nil {
				return err
			}
			continue
		}
		use, stars, err := a.resolve(sc, cr)
		if err != nil {
			return err
		}
		var ref ColumnRef
		switch {
		case use != nil:
			ref = use.ref()
		case len(stars) > 0:
			ref = stars[0].ref(&stars[0].cols[0])
		default:
			continue
		}
		if !q.top {
			return a.refuseColumn(q.kind, ref, q.construct, cr.Location)
		}
		if distinct {
			return a.refuseColumn(kindDistinct, ref, "DISTINCT", cr.Location)
		}
	}
	return nil
}

// outputRef refuses ORDER BY / GROUP BY / DISTINCT ON items that name a
// declared output column by position (ORDER BY 1) or by output name
// (SELECT ssn AS s ... ORDER BY s). References by input column are found by
// expr.
func (a *analyzer) outputRef(n *pg_query.Node, targets []*pg_query.Node, sc *scope, k *refusalKind, construct string) error {
	declaredTarget := func(rt *pg_query.ResTarget) (*ColumnRef, error) {
		cr := rt.Val.GetColumnRef()
		if cr == nil {
			return nil, nil
		}
		use, stars, err := a.resolve(sc, cr)
		if err != nil {
			return nil, err
		}
		switch {
		case use != nil:
			r := use.ref()
			return &r, nil
		case len(stars) > 0:
			r := stars[0].ref(&stars[0].cols[0])
			return &r, nil
		}
		return nil, nil
	}
	loc := int32(-1)
	var candidates []*pg_query.ResTarget
	switch {
	case n.GetAConst() != nil && n.GetAConst().GetIval() != nil:
		pos := int(n.GetAConst().GetIval().Ival)
		loc = n.GetAConst().Location
		if pos < 1 {
			return nil
		}
		// A star before the position shifts it by an unknown number of
		// columns: then consider every target from the star on.
		firstStar := -1
		for i, t := range targets {
			if isStarTarget(t) {
				firstStar = i
				break
			}
		}
		switch {
		case firstStar >= 0 && firstStar < pos:
			for _, t := range targets[firstStar:] {
				if rt := t.GetResTarget(); rt != nil {
					candidates = append(candidates, rt)
				}
			}
		case pos <= len(targets):
			if rt := targets[pos-1].GetResTarget(); rt != nil {
				candidates = append(candidates, rt)
			}
		}
	case n.GetColumnRef() != nil && len(n.GetColumnRef().Fields) == 1:
		name := n.GetColumnRef().Fields[0].GetString_().GetSval()
		loc = n.GetColumnRef().Location
		for _, t := range targets {
			if rt := t.GetResTarget(); rt != nil && rt.Name == name && name != "" {
				candidates = append(candidates, rt)
			}
		}
	}
	for _, rt := range candidates {
		ref, err := declaredTarget(rt)
		if err != nil {
			return err
		}
		if ref != nil {
			return a.refuseColumn(k, *ref, construct, loc)
		}
	}
	return nil
}

func isStarTarget(t *pg_query.Node) bool {
	cr := t.GetResTarget().GetVal().GetColumnRef()
	return cr != nil && len(cr.Fields) > 0 && cr.Fields[len(cr.Fields)-1].GetAStar() != nil
}

func (a *analyzer) groupItem(g *pg_query.Node, sc *scope, targets []*pg_query.Node) error {
	if gs := g.GetGroupingSet(); gs != nil {
		for _, c := range gs.Content {
			if err := a.groupItem(c, sc, targets); err != nil {
				return err
			}
		}
		return nil
	}
	if err := a.outputRef(g, targets, sc, kindGroupBy, "GROUP BY"); err != nil {
		return err
	}
	return a.expr(g, sc, usage{kindGroupBy, "GROUP BY"})
}

// fromItem adds a FROM item's relations to sc, analysing what it contains.
func (a *analyzer) fromItem(n *pg_query.Node, sc *scope) error {
	switch x := n.Node.(type) {
	case *pg_query.Node_RangeVar:
		e, err := a.rangeVarEntry(x.RangeVar, sc)
		if err != nil {
			return err
		}
		sc.rels = append(sc.rels, e)
		return nil
	case *pg_query.Node_JoinExpr:
		j := x.JoinExpr
		start := len(sc.rels)
		if err := a.fromItem(j.Larg, sc); err != nil {
			return err
		}
		if err := a.fromItem(j.Rarg, sc); err != nil {
			return err
		}
		added := append([]*relEntry(nil), sc.rels[start:]...)
		for _, e := range added {
			for _, t := range e.tables() {
				if j.IsNatural {
					return a.refuseColumn(kindJoin, t.ref(&t.cols[0]), "NATURAL JOIN", e.loc)
				}
				for _, u := range j.UsingClause {
					name := u.GetString_().GetSval()
					if t.indexColumn(name) != nil {
						return a.refuseIndexColumn(t, name, e.loc)
					}
					if c := t.column(name); c != nil {
						return a.refuseColumn(kindJoin, t.ref(c), "JOIN USING", e.loc)
					}
				}
			}
		}
		a.inJoin++
		err := a.expr(j.Quals, sc, usage{kindJoin, "join condition"})
		a.inJoin--
		if err != nil {
			return err
		}
		if j.Alias != nil {
			if len(j.Alias.Colnames) > 0 {
				// A column alias list renames the join's columns by
				// position, declared ones included: refused like one on
				// a declared table.
				for _, e := range added {
					if ts := e.tables(); len(ts) > 0 {
						return a.refuseTable(kindColumnAlias, ts[0], "", e.loc)
					}
				}
			}
			sc.rels = append(sc.rels, &relEntry{name: j.Alias.Aliasname, children: added, loc: -1})
		}
		return nil
	case *pg_query.Node_RangeSubselect:
		if err := a.query(x.RangeSubselect.Subquery, sc, qSubquery); err != nil {
			return err
		}
		sc.rels = append(sc.rels, &relEntry{name: aliasName(x.RangeSubselect.Alias)})
		return nil
	case *pg_query.Node_RangeFunction:
		for _, f := range x.RangeFunction.Functions {
			if err := a.expr(f, sc, useValue); err != nil {
				return err
			}
		}
		// AS t(a numeric(<expr>)): the column definitions' type
		// modifiers are expressions too.
		if err := a.exprs(x.RangeFunction.Coldeflist, sc, useValue); err != nil {
			return err
		}
		sc.rels = append(sc.rels, functionEntry(x.RangeFunction))
		return nil
	case *pg_query.Node_RangeTableSample:
		ts := x.RangeTableSample
		if err := a.fromItem(ts.Relation, sc); err != nil {
			return err
		}
		if err := a.exprs(ts.Args, sc, useValue); err != nil {
			return err
		}
		return a.expr(ts.Repeatable, sc, useValue)
	}
	// XMLTABLE, JSON_TABLE and anything newer: analyse the expressions,
	// add an opaque relation.
	m := inner(n)
	u := usage{kindExpression, exprName(nodeName(m))}
	if err := childNodes(m, func(c *pg_query.Node) error { return a.expr(c, sc, u) }); err != nil {
		return err
	}
	sc.rels = append(sc.rels, &relEntry{unnamed: true})
	return nil
}

// functionEntry makes the scope entry for a function in FROM: without an
// alias PostgreSQL names it after the function (FROM unnest(...) is
// unnest), which rewrite follows for a single function call; ROWS FROM
// and other forms get an entry whose name it does not know.
func functionEntry(rf *pg_query.RangeFunction) *relEntry {
	if rf.Alias != nil {
		return &relEntry{name: rf.Alias.Aliasname}
	}
	if len(rf.Functions) == 1 {
		if items := rf.Functions[0].GetList().GetItems(); len(items) > 0 {
			if fc := items[0].GetFuncCall(); fc != nil && !rf.IsRowsfrom {
				return &relEntry{name: lastName(fc.Funcname)}
			}
		}
	}
	return &relEntry{unnamed: true}
}

func aliasName(al *pg_query.Alias) string {
	if al == nil {
		return ""
	}
	return al.Aliasname
}

// rangeVarEntry makes the scope entry for a table reference.
func (a *analyzer) rangeVarEntry(rv *pg_query.RangeVar, sc *scope) (*relEntry, error) {
	e := &relEntry{name: rv.Relname, loc: rv.Location}
	if rv.Alias != nil {
		e.name = rv.Alias.Aliasname
	} else {
		e.schema, e.relname = rv.Schemaname, rv.Relname
	}
	if rv.Schemaname == "" && sc.isCTE(rv.Relname) {
		return e, nil
	}
	t, err := a.s.lookup(rv.Schemaname, rv.Relname, rv.Location, a)
	if err != nil {
		return nil, err
	}
	if t != nil && rv.Alias != nil && len(rv.Alias.Colnames) > 0 {
		// FROM patients AS p(i, t, n, s) renames the columns by
		// position: s would be ssn under a name rewrite does not know.
		return nil, a.refuseTable(kindColumnAlias, t, "", rv.Location)
	}
	e.table = t
	return e, nil
}

// insert analyses INSERT: declared columns of the target get Data values and
// their index columns are appended with Index values.
func (a *analyzer) insert(ins *pg_query.InsertStmt, parent *scope, q qctx) error {
	sc := newScope(parent)
	if err := a.with(ins.WithClause, sc); err != nil {
		return err
	}
	target, err := a.rangeVarEntry(ins.Relation, newScope(nil))
	if err != nil {
		return err
	}
	t := target.table
	src := ins.SelectStmt.GetSelectStmt()
	values := src != nil && isPlainValues(src)

	declared := make([]*config.Column, len(ins.Cols))
	var first *config.Column
	if t != nil {
		if len(ins.Cols) == 0 && ins.SelectStmt != nil {
			return a.refuseTable(kindInsertNoColumns, t, "", ins.Relation.Location)
		}
		for i, c := range ins.Cols {
			rt := c.GetResTarget()
			if t.indexColumn(rt.Name) != nil {
				return a.refuseIndexColumn(t, rt.Name, rt.Location)
			}
			col := t.column(rt.Name)
			if col == nil {
				continue
			}
			if len(rt.Indirection) > 0 {
				return a.refuseColumn(kindAssignment, t.ref(col), "assignment to a subscript or field", rt.Location)
			}
			declared[i] = col
			if first == nil {
				first = col
			}
		}
	}
	// The subscripts of the other target columns (a[<expr>]) are
	// expressions like any other.
	for i, c := range ins.Cols {
		if declared[i] != nil {
			continue
		}
		if rt := c.GetResTarget(); rt != nil {
			if err := a.exprs(rt.Indirection, sc, useSubscript); err != nil {
				return err
			}
		}
	}
	switch {
	case first != nil && !values:
		return a.refuseColumn(kindInsertSelect, t.ref(first), "INSERT ... SELECT into it", ins.Relation.Location)
	case first != nil:
		if err := a.insertValues(ins, src, t, declared, sc); err != nil {
			return err
		}
	case values:
		for _, row := range src.ValuesLists {
			if err := a.expr(row, sc, useValue); err != nil {
				return err
			}
		}
	case src != nil:
		if err := a.selectStmt(src, sc, qCopyOut); err != nil {
			return err
		}
	}

	sc.rels = append(sc.rels, target)
	if oc := ins.OnConflictClause; oc != nil {
		if err := a.onConflict(oc, sc, target); err != nil {
			return err
		}
	}
	return a.targetList(ins.ReturningList, sc, q, false)
}

// isPlainValues reports whether an INSERT source is a bare VALUES list.
func isPlainValues(s *pg_query.SelectStmt) bool {
	return len(s.ValuesLists) > 0 && len(s.TargetList) == 0 && len(s.FromClause) == 0 &&
		len(s.SortClause) == 0 && s.LimitCount == nil && s.LimitOffset == nil &&
		s.WithClause == nil && (s.Op == pg_query.SetOperation_SETOP_NONE || s.Op == pg_query.SetOperation_SET_OPERATION_UNDEFINED)
}

func (a *analyzer) insertValues(ins *pg_query.InsertStmt, src *pg_query.SelectStmt, t *declTable, declared []*config.Column, sc *scope) error {
	for _, row := range src.ValuesLists {
		list := row.GetList()
		if list == nil {
			return a.refuseColumn(kindComputedValue, t.ref(firstDeclared(declared)), "a computed value", -1)
		}
		var idx []*pg_query.Node
		for i, item := range list.Items {
			if i >= len(declared) || declared[i] == nil {
				if err := a.expr(item, sc, useValue); err != nil {
					return err
				}
				continue
			}
			col := declared[i]
			ref := t.ref(col)
			v, ok := classifyValue(item)
			if !ok {
				if v.kind == valBits {
					return a.refuseColumn(kindLiteral, ref, "a bit-string constant", v.loc)
				}
				return a.refuseColumn(kindComputedValue, ref, "a computed value", exprLocation(item))
			}
			if r := a.checkValueType(item, ref, true, ""); r != nil {
				return r
			}
			a.dataValue(v, ref, item)
			if searchable(col) {
				idx = append(idx, a.indexValue(v, ref))
			}
		}
		list.Items = append(list.Items, idx...)
	}
	for _, col := range declared {
		if col != nil && searchable(col) {
			ins.Cols = append(ins.Cols, pg_query.MakeResTargetNodeWithName(col.IndexColumn, -1))
			a.edit(t.ref(col))
		}
	}
	return nil
}

func firstDeclared(cols []*config.Column) *config.Column {
	for _, c := range cols {
		if c != nil {
			return c
		}
	}
	return nil
}

// exprLocation returns a node's location when it has one at the top.
func exprLocation(n *pg_query.Node) int32 {
	m := inner(n)
	if m == nil {
		return -1
	}
	fd := m.ProtoReflect().Descriptor().Fields().ByName("location")
	if fd == nil {
		return -1
	}
	return int32(m.ProtoReflect().Get(fd).Int())
}

// onConflict handles ON CONFLICT: the arbiter on a searchable column becomes
// its index column; DO UPDATE SET follows the UPDATE rules plus
// col = EXCLUDED.col.
func (a *analyzer) onConflict(oc *pg_query.OnConflictClause, sc *scope, target *relEntry) error {
	t := target.table
	isc := newScope(sc.parent)
	isc.ctes = sc.ctes
	isc.rels = []*relEntry{target}
	if inf := oc.Infer; inf != nil {
		for _, n := range inf.IndexElems {
			ie := n.GetIndexElem()
			if ie == nil {
				continue
			}
			if t != nil && ie.Name != "" {
				if t.indexColumn(ie.Name) != nil {
					return a.refuseIndexColumn(t, ie.Name, inf.Location)
				}
				if col := t.column(ie.Name); col != nil {
					if !searchable(col) {
						return a.refuseColumn(kindOnConflict, t.ref(col), "ON CONFLICT on a column without search", inf.Location)
					}
					ie.Name = col.IndexColumn
					a.edit(t.ref(col))
				}
			}
			if err := a.expr(ie.Expr, isc, usage{kindOnConflict, "ON CONFLICT index expression"}); err != nil {
				return err
			}
		}
		if err := a.expr(inf.WhereClause, isc, useCondition); err != nil {
			return err
		}
	}
	if oc.Action != pg_query.OnConflictAction_ONCONFLICT_UPDATE {
		return nil
	}
	usc := newScope(sc.parent)
	usc.ctes = sc.ctes
	usc.rels = []*relEntry{target, {name: "excluded", table: t, excluded: true}}
	list, err := a.assignments(oc.TargetList, t, usc, true)
	if err != nil {
		return err
	}
	oc.TargetList = list
	return a.expr(oc.WhereClause, usc, useCondition)
}

// assignments handles UPDATE SET and ON CONFLICT DO UPDATE SET lists and
// returns the rewritten list: a declared column set to a constant, a
// parameter, NULL or DEFAULT gets a Data value and its index column is set
// in step.
func (a *analyzer) assignments(list []*pg_query.Node, t *declTable, sc *scope, onConflict bool) ([]*pg_query.Node, error) {
	out := make([]*pg_query.Node, 0, len(list))
	for _, n := range list {
		rt := n.GetResTarget()
		if rt == nil {
			out = append(out, n)
			continue
		}
		var col *config.Column
		if t != nil {
			if t.indexColumn(rt.Name) != nil {
				return nil, a.refuseIndexColumn(t, rt.Name, rt.Location)
			}
			col = t.column(rt.Name)
		}
		if col == nil {
			if err := a.exprs(rt.Indirection, sc, useSubscript); err != nil {
				return nil, err
			}
			if err := a.expr(rt.Val, sc, useValue); err != nil {
				return nil, err
			}
			out = append(out, n)
			continue
		}
		ref := t.ref(col)
		if len(rt.Indirection) > 0 {
			return nil, a.refuseColumn(kindAssignment, ref, "assignment to a subscript or field", rt.Location)
		}
		if rt.Val.GetMultiAssignRef() != nil {
			return nil, a.refuseColumn(kindAssignment, ref, "multi-column assignment", rt.Location)
		}
		if cr := rt.Val.GetColumnRef(); onConflict && cr != nil {
			use, _, err := a.resolve(sc, cr)
			if err != nil {
				return nil, err
			}
			if use != nil && use.entry.excluded {
				if use.col != col {
					return nil, a.refuseColumn(kindOnConflict, ref, "SET from EXCLUDED of another column", cr.Location)
				}
				out = append(out, n)
				if searchable(col) {
					fields := append([]*pg_query.Node(nil), cr.Fields[:len(cr.Fields)-1]...)
					fields = append(fields, pg_query.MakeStrNode(col.IndexColumn))
					out = append(out, pg_query.MakeResTargetNodeWithNameAndVal(col.IndexColumn,
						pg_query.MakeColumnRefNode(fields, -1), rt.Location))
					a.edit(ref)
				}
				continue
			}
		}
		v, ok := classifyValue(rt.Val)
		if !ok {
			if v.kind == valBits {
				return nil, a.refuseColumn(kindLiteral, ref, "a bit-string constant", v.loc)
			}
			return nil, a.refuseColumn(kindComputedValue, ref, "a computed value", rt.Location)
		}
		if r := a.checkValueType(rt.Val, ref, true, ""); r != nil {
			return nil, r
		}
		a.dataValue(v, ref, rt.Val)
		out = append(out, n)
		if searchable(col) {
			out = append(out, pg_query.MakeResTargetNodeWithNameAndVal(col.IndexColumn, a.indexValue(v, ref), rt.Location))
			a.edit(ref)
		}
	}
	return out, nil
}

func (a *analyzer) update(u *pg_query.UpdateStmt, parent *scope, q qctx) error {
	sc := newScope(parent)
	if err := a.with(u.WithClause, sc); err != nil {
		return err
	}
	target, err := a.rangeVarEntry(u.Relation, newScope(nil))
	if err != nil {
		return err
	}
	sc.rels = append(sc.rels, target)
	for _, f := range u.FromClause {
		if err := a.fromItem(f, sc); err != nil {
			return err
		}
	}
	list, err := a.assignments(u.TargetList, target.table, sc, false)
	if err != nil {
		return err
	}
	u.TargetList = list
	if err := a.expr(u.WhereClause, sc, useCondition); err != nil {
		return err
	}
	return a.targetList(u.ReturningList, sc, q, false)
}

func (a *analyzer) delete(d *pg_query.DeleteStmt, parent *scope, q qctx) error {
	sc := newScope(parent)
	if err := a.with(d.WithClause, sc); err != nil {
		return err
	}
	target, err := a.rangeVarEntry(d.Relation, newScope(nil))
	if err != nil {
		return err
	}
	sc.rels = append(sc.rels, target)
	for _, f := range d.UsingClause {
		if err := a.fromItem(f, sc); err != nil {
			return err
		}
	}
	if err := a.expr(d.WhereClause, sc, useCondition); err != nil {
		return err
	}
	return a.targetList(d.ReturningList, sc, q, false)
}
